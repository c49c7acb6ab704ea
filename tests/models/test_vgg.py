"""VGG configurations A-E (Simonyan & Zisserman 2015) against the paper's Table 2."""

import pytest
import torch
from torch import nn

from replicate import models
from replicate.measure.complexity import count

# Table 2 prints 133 / 133 / 134 / 138 / 144 million; counted with biases.
PARAMS = {"vgg11": 132_863_336, "vgg11_lrn": 132_863_336, "vgg13": 133_047_848, "vgg16_c": 133_638_952,
          "vgg16": 138_357_544, "vgg19": 143_667_240}
REPORTED_M = {"vgg11": 133, "vgg11_lrn": 133, "vgg13": 133, "vgg16_c": 134, "vgg16": 138, "vgg19": 144}


def on_meta(name):
    with torch.device("meta"):  # counting needs shapes only: no weights, no arithmetic
        return models.build(name)


@pytest.mark.parametrize("name", PARAMS)
def test_parameters_match_table_2(name):
    params = count(on_meta(name), (3, 224, 224)).params
    assert params == PARAMS[name]
    assert round(params / 1e6) == REPORTED_M[name]


def test_vgg19_multiply_adds_are_the_resnet_papers_19_6_billion():
    # He et al. 2016, Sec. 3.3: "VGG-19 ... (19.6 billion FLOPs)".
    assert count(on_meta("vgg19"), (3, 224, 224)).gmacs == pytest.approx(19.6, abs=0.05)


def test_vgg16_agrees_with_torchvision():
    from torchvision.models import vgg16

    ours, theirs = count(on_meta("vgg16"), (3, 224, 224)), count(vgg16(), (3, 224, 224))
    assert (ours.params, ours.macs) == (theirs.params, theirs.macs)


def test_configuration_specifics():
    a_lrn, c, a = models.build("vgg11_lrn"), models.build("vgg16_c"), models.build("vgg11")
    assert isinstance(a_lrn.features[2], nn.LocalResponseNorm) and not any(
        isinstance(m, nn.LocalResponseNorm) for m in a.modules())
    assert sum(m.kernel_size == (1, 1) for m in c.modules() if isinstance(m, nn.Conv2d)) == 3
    assert not any(isinstance(m, nn.BatchNorm2d) for m in models.build("vgg19").modules())
    assert sum(isinstance(m, nn.Dropout) for m in a.modules()) == 2


def test_forward_shape_and_knobs():
    model = models.build("vgg11", num_classes=10, in_channels=1).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 1, 32, 32)).shape == (2, 10)


def test_width_mult_scales_convolutions_and_hidden_fc_layers():
    # 1/8 of the widths: filters 8/16/32/64/64, FC 64*7*7 -> 512 -> 512 -> 10 (the reduced profile's A).
    with torch.device("meta"):
        model = models.build("vgg11", num_classes=10, in_channels=1, width_mult=0.125)
    convs = [m.out_channels for m in model.features if isinstance(m, nn.Conv2d)]
    assert convs == [8, 16, 32, 32, 64, 64, 64, 64]
    widths = [(m.in_features, m.out_features) for m in model.classifier if isinstance(m, nn.Linear)]
    assert widths == [(64 * 49, 512), (512, 512), (512, 10)]
    conv_params = sum(9 * i * o + o for i, o in zip([1, *convs[:-1]], convs))
    assert count(model, (1, 32, 32)).params == conv_params + 64 * 49 * 512 + 512 + 512 * 512 + 512 + 5130
    with torch.device("meta"):
        assert count(models.build("vgg16", width_mult=1.0), (3, 224, 224)).params == PARAMS["vgg16"]


def test_reduced_profile_input_reaches_one_pixel():
    model = models.build("vgg16", num_classes=10, in_channels=1, width_mult=0.125).eval()
    with torch.no_grad():
        assert model.features(torch.randn(2, 1, 32, 32)).shape == (2, 64, 1, 1)
        assert model(torch.randn(2, 1, 32, 32)).shape == (2, 10)
