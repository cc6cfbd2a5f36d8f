"""The PyTorch reference: the source checkpoint run eagerly, to compare runtimes against.

Only this adapter touches torch, and only inside ``_load_impl``: importing this module,
or any other under runtimes/, works on a machine without torch.
"""

from __future__ import annotations

from typing import Any

from runtimes.adapters.base import Runner
from runtimes.errors import ProviderError


class TorchRunner(Runner):
    """Eager PyTorch on CPU from the checkpoint the model was exported from.

    The checkpoint is ``ckpt`` or the path recorded in the model's metadata
    (``spec.extra["checkpoint"]``); its sha256 must match the recorded one.
    """

    name = "torch"
    OPTIONS: dict[str, Any] = {"ckpt": None, "threads": None}
    REQUIRES = (
        "torch",
        "PyTorch is not installed (it is the reference, not a deployment runtime): pip install 'googlenet-deploy[convert]'",
    )

    def _load_impl(self) -> None:
        import torch

        from converters.checkpoint import build_model, load_checkpoint

        spec = self.spec
        ckpt = self.options["ckpt"] or spec.extra.get("checkpoint")
        if not ckpt:
            raise ProviderError(f"torch: {self.model_path} records no source checkpoint; pass ckpt=PATH (--ckpt)")
        loaded = load_checkpoint(ckpt, layout=spec.layout)
        expected = spec.extra.get("checkpoint_sha256")
        if expected and loaded.sha256 != expected:
            raise ProviderError(
                f"torch: {ckpt} has sha256 {loaded.sha256[:12]}..., but {self.model_path} was exported from "
                f"{expected[:12]}...; pass the checkpoint it was exported from"
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
