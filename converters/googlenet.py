"""GoogLeNet (Inception v1) in the two layouts real checkpoints come in.

``layout="paper"`` is Table 1 of Szegedy et al., "Going Deeper with Convolutions"
(CVPR 2015): biased convolutions with ReLU, LRN after the stem, true 5x5 branches,
aux heads with a fixed 5x5/3 average pool.

``layout="torchvision"`` reproduces ``torchvision.models.googlenet`` exactly, so its
state dicts load unchanged: Conv(bias=False) -> BatchNorm(eps=1e-3) -> ReLU, a 3x3
kernel on the "5x5" branch (pytorch/vision#906, kept upstream for weight
compatibility), ceil-mode pools, a 2x2 pool4, adaptive pools and ``transform_input``.

Module names follow torchvision's in both layouts (``conv1``..``conv3``,
``inception3a``..``inception5b``, ``aux1``, ``aux2``, ``fc``), so one set of key
rules serves checkpoint intake for both.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from runtimes.spec import IMAGENET_MEAN, IMAGENET_STD

LAYOUTS = ("paper", "torchvision")
AUX_LOSS_WEIGHT = 0.3  # the paper's discount on each auxiliary loss
AUX_PREFIXES = ("aux1.", "aux2.")

# (in, #1x1, #3x3 reduce, #3x3, #5x5 reduce, #5x5, pool proj): Table 1.
INCEPTION_CONFIG = {
    "3a": (192, 64, 96, 128, 16, 32, 32),
    "3b": (256, 128, 128, 192, 32, 96, 64),
    "4a": (480, 192, 96, 208, 16, 48, 64),
    "4b": (512, 160, 112, 224, 24, 64, 64),
    "4c": (512, 128, 128, 256, 24, 64, 64),
    "4d": (512, 112, 144, 288, 32, 64, 64),
    "4e": (528, 256, 160, 320, 32, 128, 128),
    "5a": (832, 256, 160, 320, 32, 128, 128),
    "5b": (832, 384, 192, 384, 48, 128, 128),
}


class GoogLeNetOutputs(NamedTuple):
    """Training-mode outputs, in torchvision's order."""

    logits: torch.Tensor
    aux_logits2: torch.Tensor
    aux_logits1: torch.Tensor


class ConvReLU(nn.Module):
    """Conv -> ReLU (paper) or Conv(bias=False) -> BN(eps=1e-3) -> ReLU (torchvision).

    Named ``conv``/``bn`` like torchvision's BasicConv2d so its keys load unchanged.
    """

    def __init__(self, cin: int, cout: int, layout: str, **conv_kwargs) -> None:
        super().__init__()
        batchnorm = layout == "torchvision"
        self.conv = nn.Conv2d(cin, cout, bias=not batchnorm, **conv_kwargs)
        self.bn = nn.BatchNorm2d(cout, eps=0.001) if batchnorm else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        if self.bn is not None:
            x = self.bn(x)
        return F.relu(x, inplace=True)


class LocalResponseNorm(nn.LocalResponseNorm):
    """LRN that exports as ONNX's single ``LRN`` op.

    PyTorch's tracer otherwise spells LRN as ~20 nodes (Pad, AveragePool, Pow and a
    batch-dependent Reshape) that TensorRT and OpenCV DNN handle worse than the
    native op. Both compute x / (k + alpha/size * sum(x^2))^beta with zero padding.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.onnx.is_in_onnx_export():
            return _OnnxLRN.apply(x, self.size, self.alpha, self.beta, self.k)
        return super().forward(x)


class _OnnxLRN(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, size, alpha, beta, k):  # noqa: ARG004 - export only
        return F.local_response_norm(x, size, alpha, beta, k)

    @staticmethod
    def symbolic(g, x, size, alpha, beta, k):
        return g.op("LRN", x, size_i=size, alpha_f=alpha, beta_f=beta, bias_f=k)


class Inception(nn.Module):
    """Four parallel branches concatenated along channels."""

    def __init__(self, cin, c1x1, c3x3red, c3x3, c5x5red, c5x5, pool_proj, layout) -> None:
        super().__init__()
        # torchvision's "5x5" branch is really 3x3 (pytorch/vision#906).
        k5 = 5 if layout == "paper" else 3
        self.branch1 = ConvReLU(cin, c1x1, layout, kernel_size=1)
        self.branch2 = nn.Sequential(
            ConvReLU(cin, c3x3red, layout, kernel_size=1),
            ConvReLU(c3x3red, c3x3, layout, kernel_size=3, padding=1),
        )
        self.branch3 = nn.Sequential(
            ConvReLU(cin, c5x5red, layout, kernel_size=1),
            ConvReLU(c5x5red, c5x5, layout, kernel_size=k5, padding=k5 // 2),
        )
        self.branch4 = nn.Sequential(
            nn.MaxPool2d(kernel_size=3, stride=1, padding=1, ceil_mode=True),
            ConvReLU(cin, pool_proj, layout, kernel_size=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branches = (self.branch1(x), self.branch2(x), self.branch3(x), self.branch4(x))
        return torch.cat(branches, 1)


class InceptionAux(nn.Module):
    """Auxiliary classifier on 4a (512 ch) or 4d (528 ch); training only."""

    def __init__(self, cin: int, num_classes: int, layout: str) -> None:
        super().__init__()
        if layout == "paper":
            self.pool = nn.AvgPool2d(kernel_size=5, stride=3)  # 14x14 -> 4x4
        else:
            self.pool = nn.AdaptiveAvgPool2d((4, 4))
        self.conv = ConvReLU(cin, 128, layout, kernel_size=1)
        self.fc1 = nn.Linear(2048, 1024)
        self.fc2 = nn.Linear(1024, num_classes)
        self.dropout = nn.Dropout(p=0.7)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(x)  # N x C x 4 x 4
        x = self.conv(x)  # N x 128 x 4 x 4
        x = torch.flatten(x, 1)  # N x 2048
        x = F.relu(self.fc1(x), inplace=True)  # N x 1024
        x = self.dropout(x)
        return self.fc2(x)  # N x num_classes


class GoogLeNet(nn.Module):
    """GoogLeNet with optional aux heads.

    Eval mode returns the main logits; training mode with aux heads returns
    :class:`GoogLeNetOutputs`. ``transform_input``, in either layout, makes forward()
    first turn its ImageNet-normalized input ((v - mean) / std per channel) into
    (v - 0.5) / 0.5, the [-1, 1] input torchvision's ImageNet weights expect; the
    exporter turns it on by default for the torchvision layout.
    """

    def __init__(
        self,
        layout: str = "paper",
        num_classes: int = 1000,
        aux_logits: bool = True,
        transform_input: bool = False,
    ) -> None:
        super().__init__()
        if layout not in LAYOUTS:
            raise ValueError(f"unknown layout {layout!r}; known: {', '.join(LAYOUTS)}")
        if num_classes < 1:
            raise ValueError(f"num_classes must be positive, got {num_classes}")
        self.layout = layout
        self.num_classes = num_classes
        self.aux_logits = aux_logits
        self.transform_input = transform_input
        paper = layout == "paper"

        self.conv1 = ConvReLU(3, 64, layout, kernel_size=7, stride=2, padding=3)
        self.maxpool1 = nn.MaxPool2d(3, stride=2, ceil_mode=True)
        self.conv2 = ConvReLU(64, 64, layout, kernel_size=1)
        self.conv3 = ConvReLU(64, 192, layout, kernel_size=3, padding=1)
        self.maxpool2 = nn.MaxPool2d(3, stride=2, ceil_mode=True)
        # The original release's LRN; torchvision has none.
        self.lrn1 = LocalResponseNorm(5, alpha=1e-4, beta=0.75) if paper else None
        self.lrn2 = LocalResponseNorm(5, alpha=1e-4, beta=0.75) if paper else None

        for name, cfg in INCEPTION_CONFIG.items():
            setattr(self, f"inception{name}", Inception(*cfg, layout=layout))
        self.maxpool3 = nn.MaxPool2d(3, stride=2, ceil_mode=True)
        # torchvision pools 4e with 2x2/2; the paper with 3x3/2. Both give 7x7.
        self.maxpool4 = nn.MaxPool2d(3 if paper else 2, stride=2, ceil_mode=True)

        if aux_logits:
            self.aux1 = InceptionAux(512, num_classes, layout)
            self.aux2 = InceptionAux(528, num_classes, layout)
        else:
            self.aux1 = self.aux2 = None

        self.avgpool = nn.AvgPool2d(7, stride=1) if paper else nn.AdaptiveAvgPool2d((1, 1))
        self.dropout = nn.Dropout(p=0.4 if paper else 0.2)
        self.fc = nn.Linear(1024, num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        # He init: with PyTorch's default init the paper layout's activations
        # vanish after a dozen ReLUs (measured: near-constant features at 4e).
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=0.01)
                nn.init.zeros_(m.bias)

    def _transform_input(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` unchanged, or with ``transform_input`` re-scaled from ImageNet normalization to [-1, 1]."""
        if not self.transform_input:
            return x
        # Channel c: x * (std_c / 0.5) + (mean_c - 0.5) / 0.5, as torchvision does.
        scale = torch.tensor([s / 0.5 for s in IMAGENET_STD], dtype=x.dtype, device=x.device)
        shift = torch.tensor([(m - 0.5) / 0.5 for m in IMAGENET_MEAN], dtype=x.dtype, device=x.device)
        return x * scale.view(1, 3, 1, 1) + shift.view(1, 3, 1, 1)

    def stem(self, x: torch.Tensor) -> torch.Tensor:
        """Input to the output of pool2: N x 192 x 28 x 28."""
        x = self._transform_input(x)
        x = self.maxpool1(self.conv1(x))  # N x 64 x 56 x 56
        if self.lrn1 is not None:
            x = self.lrn1(x)
        x = self.conv3(self.conv2(x))  # N x 192 x 56 x 56
        if self.lrn2 is not None:
            x = self.lrn2(x)
        return self.maxpool2(x)  # N x 192 x 28 x 28

    def head(self, x: torch.Tensor) -> torch.Tensor:
        """Output of 5b (N x 1024 x 7 x 7) to logits."""
        x = torch.flatten(self.avgpool(x), 1)  # N x 1024
        return self.fc(self.dropout(x))  # N x num_classes

    def forward(self, x: torch.Tensor):
        x = self.stem(x)
        x = self.inception3b(self.inception3a(x))  # N x 480 x 28 x 28
        x = self.maxpool3(x)  # N x 480 x 14 x 14
        x = self.inception4a(x)  # N x 512 x 14 x 14
        aux1 = self.aux1(x) if self.aux1 is not None and self.training else None
        x = self.inception4d(self.inception4c(self.inception4b(x)))  # N x 528 x 14 x 14
        aux2 = self.aux2(x) if self.aux2 is not None and self.training else None
        x = self.inception4e(x)  # N x 832 x 14 x 14
        x = self.maxpool4(x)  # N x 832 x 7 x 7
        x = self.inception5b(self.inception5a(x))  # N x 1024 x 7 x 7
        logits = self.head(x)
        if aux1 is not None:
            return GoogLeNetOutputs(logits, aux2, aux1)
        return logits


def googlenet_loss(outputs, target: torch.Tensor) -> torch.Tensor:
    """Main cross-entropy plus 0.3 x each aux loss (plain CE for eval-mode logits)."""
    if isinstance(outputs, GoogLeNetOutputs):
        main = F.cross_entropy(outputs.logits, target)
        aux = F.cross_entropy(outputs.aux_logits1, target) + F.cross_entropy(outputs.aux_logits2, target)
        return main + AUX_LOSS_WEIGHT * aux
    return F.cross_entropy(outputs, target)


def count_parameters(model: nn.Module) -> int:
    """Elements in all of ``model``'s parameters, frozen ones too; buffers (BatchNorm running statistics) are not counted."""
    return sum(p.numel() for p in model.parameters())
