"""The model matches Table 1 (paper) and torchvision's layout exactly."""

import json
import math
from pathlib import Path

import pytest
import torch

from converters.googlenet import (
    INCEPTION_CONFIG,
    GoogLeNet,
    GoogLeNetOutputs,
    count_parameters,
    googlenet_loss,
)

TORCHVISION_KEYS = Path(__file__).with_name("torchvision_googlenet_keys.json")

# Table 1: output (channels, spatial) after each stage for a 224 x 224 input.
TABLE1 = {
    "conv1": (64, 112), "maxpool1": (64, 56), "conv3": (192, 56), "maxpool2": (192, 28),
    "inception3a": (256, 28), "inception3b": (480, 28), "maxpool3": (480, 14),
    "inception4a": (512, 14), "inception4b": (512, 14), "inception4c": (512, 14),
    "inception4d": (528, 14), "inception4e": (832, 14), "maxpool4": (832, 7),
    "inception5a": (832, 7), "inception5b": (1024, 7),
}


@pytest.mark.parametrize("layout", ["paper", "torchvision"])
def test_stage_shapes_follow_table_1(layout):
    model = GoogLeNet(layout).eval()
    shapes = {}
    for name in TABLE1:
        getattr(model, name).register_forward_hook(lambda m, i, o, name=name: shapes.__setitem__(name, tuple(o.shape)))
    with torch.inference_mode():
        logits = model(torch.randn(2, 3, 224, 224))
    assert logits.shape == (2, 1000)
    for name, (channels, size) in TABLE1.items():
        assert shapes[name] == (2, channels, size, size), name


def test_inception_channels_are_the_sum_of_branches():
    for name, (cin, c1, _, c3, _, c5, proj) in INCEPTION_CONFIG.items():
        assert TABLE1[f"inception{name}"][0] == c1 + c3 + c5 + proj


def test_paper_layout_details():
    model = GoogLeNet("paper")
    assert model.inception3a.branch3[1].conv.kernel_size == (5, 5)
    assert model.conv1.bn is None and model.conv1.conv.bias is not None
    assert isinstance(model.lrn1, torch.nn.LocalResponseNorm) and model.lrn1.size == 5
    assert (model.lrn1.alpha, model.lrn1.beta) == (1e-4, 0.75)
    assert isinstance(model.aux1.pool, torch.nn.AvgPool2d) and model.aux1.pool.kernel_size == 5
    assert model.dropout.p == 0.4 and model.aux1.dropout.p == 0.7


def test_torchvision_parameter_counts():
    assert count_parameters(GoogLeNet("torchvision")) == 13_004_888
    assert count_parameters(GoogLeNet("torchvision", aux_logits=False)) == 6_624_904
    assert len(GoogLeNet("torchvision").state_dict()) == 364


def test_torchvision_state_dict_keys_and_shapes_match_torchvision():
    """Recorded from torchvision 0.29.1's googlenet(aux_logits=True, init_weights=True)."""
    expected = json.loads(TORCHVISION_KEYS.read_text())
    ours = {k: list(v.shape) for k, v in GoogLeNet("torchvision").state_dict().items()}
    assert ours == expected


def test_torchvision_quirks():
    model = GoogLeNet("torchvision")
    assert model.inception3a.branch3[1].conv.kernel_size == (3, 3)  # pytorch/vision#906
    assert model.conv1.bn.eps == 1e-3 and model.conv1.conv.bias is None
    assert model.maxpool1.ceil_mode and model.inception3a.branch4[0].ceil_mode
    assert model.dropout.p == 0.2 and model.lrn1 is None


def test_transform_input_maps_imagenet_normalization_to_minus_one_one():
    model = GoogLeNet("torchvision", transform_input=True)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    pixels = torch.rand(1, 3, 8, 8)
    mapped = model._transform_input((pixels - mean) / std)
    torch.testing.assert_close(mapped, pixels * 2 - 1, atol=1e-5, rtol=0)


def test_training_returns_main_and_both_aux_eval_returns_logits():
    model = GoogLeNet("paper", num_classes=7)
    x = torch.randn(2, 3, 224, 224)
    out = model.train()(x)
    assert [t.shape for t in out] == [(2, 7)] * 3
    assert torch.is_tensor(model.eval()(x))
    assert torch.is_tensor(GoogLeNet("paper", num_classes=7, aux_logits=False).train()(x))


def test_loss_discounts_aux_losses():
    # Uniform logits cost ln(C) each; the main head is exact, so only the aux heads count.
    uniform = torch.zeros(2, 5)
    exact = torch.tensor([[9.0e3, 0, 0, 0, 0], [0, 9.0e3, 0, 0, 0]])
    target = torch.tensor([0, 1])
    loss = googlenet_loss(GoogLeNetOutputs(logits=exact, aux_logits2=uniform, aux_logits1=uniform), target)
    torch.testing.assert_close(loss, torch.tensor(0.3 * 2 * math.log(5)))
    torch.testing.assert_close(googlenet_loss(uniform, target), torch.tensor(math.log(5)))  # eval-mode logits


def test_unknown_layout_is_rejected():
    with pytest.raises(ValueError, match="known: paper, torchvision"):
        GoogLeNet("resnet")
