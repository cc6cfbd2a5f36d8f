"""The PyTorch reference: the source checkpoint run eagerly, to compare runtimes against.

It lives with the converters because it builds the model from a checkpoint as the
exporter does; ``runtimes`` reaches it only by name, through the registry's "torch"
entry. torch is imported inside ``_load_impl`` only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from runtimes.adapters.base import Runner
from runtimes.errors import ProviderError


class TorchRunner(Runner):
    """Eager PyTorch on CPU from the checkpoint the model was exported from.

    The checkpoint is ``ckpt``, or else the file named in the model's spec
    (``checkpoint_name``) beside the model; its sha256 must match the recorded one.
    """

    name = "torch"
    OPTIONS: dict[str, Any] = {"ckpt": None, "threads": None}
    REQUIRES = (
        "torch",
        "PyTorch is not installed (it is the reference, not a deployment runtime): in a clone of googlenet-deploy: pip install -e '.[convert]'",
    )

    def _checkpoint_path(self) -> Path:
        spec = self.spec
        if self.options["ckpt"]:
            return Path(self.options["ckpt"])
        beside = spec.checkpoint_beside(self.model_path)
        if beside is None:
            recorded = f"{spec.checkpoint_name} (sha256 {spec.checkpoint_sha256[:12]}...)" if spec.checkpoint_name else "none"
            raise ProviderError(
                f"torch: pass the checkpoint {self.model_path} was exported from with ckpt=PATH (--ckpt); "
                f"it records {recorded}, and no such file is beside the model"
            )
        return beside

    def _load_impl(self) -> None:
        import torch

        from converters.checkpoint import build_model, load_checkpoint

        spec = self.spec
        ckpt = self._checkpoint_path()
        loaded = load_checkpoint(ckpt, layout=spec.layout or None)  # an annotated model records no layout
        expected = spec.checkpoint_sha256
        if expected and loaded.sha256 != expected:
            raise ProviderError(
                f"torch: {ckpt} has sha256 {loaded.sha256[:12]}..., but {self.model_path} was exported from "
                f"{spec.checkpoint_name or 'a checkpoint'} with sha256 {expected[:12]}...; pass the checkpoint it was exported from"
            )
        if self.options["threads"]:
            torch.set_num_threads(self.options["threads"])  # process-wide, like every torch setting
        self.model = build_model(loaded, transform_input=spec.transform_input)

    def _infer_impl(self, batch: Any) -> Any:
        import torch

        with torch.inference_mode():
            return self.model(torch.from_numpy(batch)).numpy()

    def _active_providers_impl(self) -> list[str]:
        return ["PyTorch:CPU"]

    def _close_impl(self) -> None:
        self.model = None
