"""The ResNet family against the paper's tables, and the registry's contract."""

import pytest
import torch

from replicate import models
from replicate.measure.complexity import count
from replicate.errors import UnknownModelError

# Counted with biases and batch-norm parameters; the paper prints them rounded (Table 6).
CIFAR_PARAMS = {"resnet20": 269_722, "resnet32": 464_154, "resnet44": 658_586, "resnet56": 853_018,
                "resnet110": 1_727_962, "resnet1202": 19_421_274}
# Multiply-adds at 224x224 in the paper's layout (stride on the bottleneck's first 1x1).
IMAGENET_GMACS = {"resnet18": 1.814, "resnet34": 3.664, "resnet50": 3.858, "resnet101": 7.570, "resnet152": 11.282}


@pytest.mark.parametrize("name,params", CIFAR_PARAMS.items())
def test_cifar_resnet_parameters(name, params):
    assert count(models.build(name), (3, 32, 32)).params == params


@pytest.mark.parametrize("name,gmacs", IMAGENET_GMACS.items())
def test_imagenet_resnet_multiply_adds(name, gmacs):
    assert count(models.build(name), (3, 224, 224)).gmacs == pytest.approx(gmacs, abs=5e-4)


def test_torchvision_v15_layout_costs_more():
    """Stride on the 3x3 (torchvision's v1.5) is what the paper's 3.8 GFLOPs rules out."""
    assert count(models.build("resnet50", downsample_on="3x3"), (3, 224, 224)).gmacs == pytest.approx(4.089, abs=1e-3)


def test_torchvision_resnet50_agrees_with_our_v15_count():
    from torchvision.models import resnet50

    ours = count(models.build("resnet50", downsample_on="3x3"), (3, 224, 224))
    theirs = count(resnet50(), (3, 224, 224))
    assert (ours.params, ours.macs) == (theirs.params, theirs.macs)


def test_shortcut_options_parameter_order():
    """Option A adds no parameters, B adds projections where dimensions change, C everywhere (Sec. 3.3)."""
    a, b, c = (count(models.build("resnet34", shortcut=o), (3, 224, 224)).params for o in "ABC")
    assert count(models.build("plain34"), (3, 224, 224)).params == a < b < c


def test_plain_nets_match_resnets_without_shortcuts():
    for depth in (20, 32, 44, 56):
        plain, res = models.build(f"plain{depth}"), models.build(f"resnet{depth}")
        assert sum(p.numel() for p in plain.parameters()) == sum(p.numel() for p in res.parameters())
        assert all(block.shortcut is None for stage in plain.stages for block in stage)


@pytest.mark.parametrize("name,size,classes", [("resnet20", 32, 10), ("plain56", 32, 10), ("resnet18", 224, 1000),
                                               ("resnet50", 224, 1000), ("plain34", 224, 1000)])
def test_forward_shapes(name, size, classes):
    model = models.build(name).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, size, size)).shape == (2, classes)


def test_in_channels_and_num_classes_knobs():
    model = models.build("resnet20", in_channels=1, num_classes=7).eval()
    with torch.no_grad():
        assert model(torch.randn(3, 1, 16, 16)).shape == (3, 7)


def test_zero_padding_shortcut_pads_and_subsamples():
    from replicate.models.resnet import ZeroPadShortcut

    x = torch.randn(2, 16, 8, 8)
    y = ZeroPadShortcut(16, 32, 2)(x)
    assert y.shape == (2, 32, 4, 4)
    assert torch.equal(y[:, :16], x[:, :, ::2, ::2]) and not y[:, 16:].any()


def test_cifar_depth_must_be_6n_plus_2():
    from replicate.models.resnet import cifar_net

    with pytest.raises(ValueError, match="6n\\+2"):
        cifar_net(21, residual=True)


def test_registry_lists_and_rejects():
    names = models.available()
    for name in [*CIFAR_PARAMS, *IMAGENET_GMACS, "plain18", "plain34", "plain20", "plain32", "plain44", "plain56"]:
        assert name in names
    with pytest.raises(UnknownModelError, match="Unknown model 'resnet05'. Did you mean .*'resnet50'.*Allowed:"):
        models.build("resnet05")


def test_per_module_counts_and_pointwise_share():
    from torch import nn

    from replicate.measure.complexity import count

    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.Conv2d(8, 16, 1))
    whole = count(model, (3, 10, 10))
    # Worked by hand on 10x10 maps: 3*8*9, 8*9 and 8*16 weights (plus biases) per position.
    assert whole.macs == 100 * (3 * 8 * 9 + 8 * 9 + 8 * 16)
    assert whole.pointwise_macs == 100 * 8 * 16 and whole.pointwise_params == 8 * 16 + 16
    assert whole.pointwise_macs_pct == pytest.approx(100 * 128 / (216 + 72 + 128))
    part = count(model, (3, 10, 10), module="1")
    assert (part.params, part.macs) == (8 * 9 + 8, 100 * 8 * 9)
    assert part.gops == pytest.approx(2 * 7200 / 1e9) and whole.mb_fp32 == pytest.approx(4 * whole.params / 2**20)
