"""Torch-free runtimes for the exported GoogLeNet: ONNX Runtime, OpenVINO, OpenCV."""
