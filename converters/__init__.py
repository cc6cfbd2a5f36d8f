"""GoogLeNet checkpoint intake and verified ONNX export (needs torch)."""
