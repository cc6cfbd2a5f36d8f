"""A Triton Inference Server model repository for an exported model.

    python -m deploy.triton --model artifacts/googlenet.onnx --out REPO
        [--name googlenet] [--max-batch 32] [--instances 1] [--gpu] [--tensorrt-fp16]

writes::

    REPO/googlenet/config.pbtxt   onnxruntime backend, dynamic batching, instance groups, warm-up, labels
    REPO/googlenet/1/model.onnx   the model, unchanged
    REPO/googlenet/labels.txt     one label per line, for the output's label_filename

A graph whose batch size is fixed (the ONNX Model Zoo's GoogLeNet takes 1 x 3 x 224 x 224)
cannot be batched by Triton: its config gets ``max_batch_size: 0``, the full input shape
and no dynamic batching, as Triton requires for such a model.

The config is built as Triton's own ``ModelConfig`` protobuf (from ``tritonclient``) and
printed in protobuf text format, so a field Triton does not know cannot slip in. The
TensorRT accelerator's parameters are not checked by the protobuf; their names are the
ones the onnxruntime backend reads (``precision_mode``, ``max_workspace_size_bytes``,
``trt_engine_cache_enable``, ``trt_engine_cache_path``).
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

from runtimes.atomic import check_replaceable, replace_dir
from runtimes.cli import positive_int, run_cli
from runtimes.errors import BundleError
from runtimes.spec import DEFAULT_MODEL, ModelSpec

QUEUE_DELAY_US = 500  # how long Triton may hold a request to batch it with others
TRT_WORKSPACE_BYTES = 1 << 30
TRT_CACHE = "/tmp/triton-trt-cache"
DEFAULT_MAX_BATCH = 32


def _model_config_pb2():
    try:
        from tritonclient.grpc import model_config_pb2
    except ImportError:
        raise BundleError("deploy.triton needs tritonclient: pip install -e '.[serve]' in a clone of googlenet-deploy") from None
    return model_config_pb2


def model_config(spec: ModelSpec, *, name: str, max_batch: int, instances: int, gpu: bool, tensorrt_fp16: bool,
                 fixed_batch: int | None = None):
    """Triton's ``ModelConfig`` for ``spec``'s model.

    With a free batch axis, dims exclude it and Triton batches up to ``max_batch``; a
    graph fixed at ``fixed_batch`` gets max_batch_size 0 and dims that include it.
    """
    pb = _model_config_pb2()
    config = pb.ModelConfig(name=name, backend="onnxruntime", max_batch_size=0 if fixed_batch else max_batch)
    batch_dims = [fixed_batch] if fixed_batch else []
    image_dims = [*batch_dims, 3, spec.crop_size, spec.crop_size]
    config.input.add(name=spec.input_name, data_type=pb.TYPE_FP32, dims=image_dims)
    config.output.add(name=spec.output_name, data_type=pb.TYPE_FP32, dims=[*batch_dims, spec.num_classes],
                      label_filename="labels.txt")
    if not fixed_batch:
        config.dynamic_batching.max_queue_delay_microseconds = QUEUE_DELAY_US
        config.dynamic_batching.preferred_batch_size.extend(sorted({b for b in (4, 8, max_batch) if b <= max_batch}))
    kind = pb.ModelInstanceGroup.KIND_GPU if gpu else pb.ModelInstanceGroup.KIND_CPU
    config.instance_group.add(count=instances, kind=kind)
    if tensorrt_fp16:
        accelerator = config.optimization.execution_accelerators.gpu_execution_accelerator.add(name="tensorrt")
        accelerator.parameters.update({
            "precision_mode": "FP16",
            "max_workspace_size_bytes": str(TRT_WORKSPACE_BYTES),
            "trt_engine_cache_enable": "1",
            "trt_engine_cache_path": TRT_CACHE,
        })
    warmup = config.model_warmup.add(name="zeros", batch_size=1)
    warmup.inputs[spec.input_name].data_type = pb.TYPE_FP32
    warmup.inputs[spec.input_name].dims.extend(image_dims)
    warmup.inputs[spec.input_name].zero_data = True
    return config


def write_repository(
    model: str | Path = DEFAULT_MODEL,
    out: str | Path = "artifacts/triton",
    *,
    name: str = "googlenet",
    max_batch: int | None = None,
    instances: int = 1,
    gpu: bool = False,
    tensorrt_fp16: bool = False,
) -> Path:
    """Write ``out/name``, or replace it when it is empty or an earlier output of this tool; returns that folder.

    ``max_batch`` defaults to 32 for a graph with a free batch axis; a graph fixed at one
    batch size takes none.
    """
    from google.protobuf import text_format

    from runtimes.graph import read_graph_io

    model, out = Path(model), Path(out)
    if not name or name in (".", "..") or "/" in name or "\\" in name:
        raise BundleError(f"--name {name!r} must be a plain folder name, such as googlenet")
    if tensorrt_fp16 and not gpu:
        raise BundleError("--tensorrt-fp16 needs --gpu: TensorRT runs on GPU instances only")
    if (max_batch is not None and max_batch < 1) or instances < 1:
        raise BundleError(f"--max-batch and --instances must be at least 1, got {max_batch} and {instances}")
    spec = ModelSpec.from_onnx(model)
    fixed = read_graph_io(model).fixed_batch
    if fixed and max_batch is not None:
        raise BundleError(
            f"{model.name} is fixed at batch {fixed}, so Triton cannot batch it: drop --max-batch "
            "(the config gets max_batch_size 0), or export the model with a free batch axis"
        )
    config = model_config(spec, name=name, max_batch=max_batch or DEFAULT_MAX_BATCH, instances=instances, gpu=gpu,
                          tensorrt_fp16=tensorrt_fp16, fixed_batch=fixed)
    if out.exists() and not out.is_dir():
        raise BundleError(f"--out {out} exists and is not a folder; give a model repository folder")
    check_replaceable(out / name, [model], what="an earlier deploy.triton model folder", files_of=_own_files)
    out.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=out, prefix=f".{name}."))
    try:
        (staging / "1").mkdir()
        shutil.copyfile(model, staging / "1" / "model.onnx")
        (staging / "labels.txt").write_text("\n".join(spec.labels) + "\n", encoding="utf-8")
        (staging / "config.pbtxt").write_text(text_format.MessageToString(config), encoding="utf-8")
        staging.chmod(0o755)
        target = out / name
        replace_dir(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def _own_files(folder: Path) -> set[str] | None:
    """The files deploy.triton writes into ``folder``, when its config.pbtxt parses as Triton's ModelConfig
    and every one of them is there; None otherwise."""
    from google.protobuf import text_format

    try:
        config = text_format.Parse((folder / "config.pbtxt").read_text(encoding="utf-8"), _model_config_pb2().ModelConfig())
    except (OSError, UnicodeDecodeError, text_format.ParseError):
        return None
    files = {"config.pbtxt", "1/model.onnx", *(output.label_filename for output in config.output if output.label_filename)}
    return files if all((folder / name).is_file() for name in files) else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deploy.triton", description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL, help=f"the exported model (default: {DEFAULT_MODEL})")
    parser.add_argument("--out", type=Path, required=True, help="the model repository folder")
    parser.add_argument("--name", default="googlenet", help="the model's name in the repository (default: googlenet)")
    parser.add_argument("--max-batch", type=positive_int,
                        help=f"max_batch_size (default: {DEFAULT_MAX_BATCH}; none for a graph fixed at one batch size)")
    parser.add_argument("--instances", type=positive_int, default=1, help="instances per device (default: 1)")
    parser.add_argument("--gpu", action="store_true", help="GPU instances (default: CPU)")
    parser.add_argument("--tensorrt-fp16", action="store_true", help="with --gpu: ONNX Runtime's TensorRT accelerator in fp16, engines cached")
    args = parser.parse_args(argv)
    folder = write_repository(args.model, args.out, name=args.name, max_batch=args.max_batch, instances=args.instances,
                              gpu=args.gpu, tensorrt_fp16=args.tensorrt_fp16)
    print(f"wrote {folder}: config.pbtxt, 1/model.onnx, labels.txt; serve with `tritonserver --model-repository {args.out}`")
    return 0


if __name__ == "__main__":
    run_cli(main)
