"""MobileNetV3-Large/-Small (Howard et al. 2019) against the paper's Tables 1-3 and torchvision."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from replicate import models
from replicate.measure.complexity import count
from replicate.models.mobilenet_v3 import Bottleneck, SqueezeExcite

# Counted at 224x224 with batch norm's scale and shift. Small with Table 2's 1024-channel head
# (torchvision's too); SMALL_V1 with arXiv v1's 1280-channel head.
LARGE = (5_483_032, 216_589_760)
SMALL = (2_542_856, 56_510_400)
SMALL_V1 = (2_946_568, 56_913_856)


def on_meta(name, **kw):
    with torch.device("meta"):
        return models.build(name, **kw)


def counted(name, **kw):
    c = count(on_meta(name, **kw), (3, 224, 224))
    return c.params, c.macs


def bn_parameters(model):
    return sum(2 * m.num_features for m in model.modules() if isinstance(m, nn.BatchNorm2d))


def test_counts():
    assert counted("mobilenet_v3_large") == LARGE
    assert counted("mobilenet_v3_small") == SMALL
    assert counted("mobilenet_v3_small", last_channels=1280) == SMALL_V1


def test_table_3_parameters():
    """Table 3 (final text): Large 5.4 M, Small 2.5 M: the authors count without batch norm and
    truncate (as in MobileNetV2's Table 4). Rounding ours would give 5.5 M for Large. arXiv v1's
    2.9 M is its earlier Small with a 1280-channel head."""
    for name, printed in (("mobilenet_v3_large", 5.4), ("mobilenet_v3_small", 2.5)):
        model = on_meta(name)
        without_bn = count(model, (3, 224, 224)).params - bn_parameters(model)
        assert math.floor(without_bn / 1e5) / 10 == printed
    v1 = on_meta("mobilenet_v3_small", last_channels=1280)
    assert math.floor((SMALL_V1[0] - bn_parameters(v1)) / 1e5) / 10 == 2.9


def test_table_3_multiply_adds():
    """Large: Table 3 prints 219 M, the authors' TF-Slim README 217 M for the same model; we count
    216.6 M. Small: Table 3 prints 56 M; we count 56.51 M (truncated, as its parameters)."""
    assert round(LARGE[1] / 1e6) == 217 and abs(LARGE[1] / 1e6 - 219) < 2.5
    assert math.floor(SMALL[1] / 1e6) == 56
    # Large over Small: 3.8x the multiply-adds for 7.8 points of top-1 (Table 3: 219 / 56 = 3.9).
    assert LARGE[1] / SMALL[1] == pytest.approx(3.83, abs=0.01)


def test_agrees_with_torchvision():
    from torchvision.models import mobilenet_v3_large, mobilenet_v3_small

    with torch.device("meta"):
        large, small = mobilenet_v3_large(), mobilenet_v3_small()
    assert (count(large, (3, 224, 224)).params, count(large, (3, 224, 224)).macs) == LARGE
    assert (count(small, (3, 224, 224)).params, count(small, (3, 224, 224)).macs) == SMALL


def blocks(model):
    return [m for m in model.features if isinstance(m, Bottleneck)]


def test_table_1_large_layout():
    model = on_meta("mobilenet_v3_large")
    bs = blocks(model)
    assert len(bs) == 15
    stem = model.features[0]
    assert (stem[0].out_channels, stem[0].stride, type(stem[2])) == (16, (2, 2), nn.Hardswish)
    assert [b.depthwise[0].kernel_size[0] for b in bs] == [3, 3, 3, 5, 5, 5, 3, 3, 3, 3, 3, 3, 5, 5, 5]
    assert [b.depthwise[0].in_channels for b in bs] == [16, 64, 72, 72, 120, 120, 240, 200, 184, 184, 480, 672,
                                                       672, 960, 960]
    assert [b.project[0].out_channels for b in bs] == [16, 24, 24, 40, 40, 40, 80, 80, 80, 80, 112, 112, 160, 160, 160]
    assert [b.depthwise[0].stride[0] for b in bs] == [1, 2, 1, 2, 1, 1, 2, 1, 1, 1, 1, 1, 2, 1, 1]
    assert [isinstance(b.se, SqueezeExcite) for b in bs] == [False] * 3 + [True] * 3 + [False] * 4 + [True] * 5
    assert [isinstance(b.depthwise[2], nn.Hardswish) for b in bs] == [False] * 6 + [True] * 9
    assert isinstance(bs[0].expand, nn.Identity)  # exp size 16 = input: no expansion layer
    assert model.features[-1][0].out_channels == 960


def test_table_2_small_layout():
    model = on_meta("mobilenet_v3_small")
    bs = blocks(model)
    assert len(bs) == 11
    assert [b.depthwise[0].in_channels for b in bs] == [16, 72, 88, 96, 240, 240, 120, 144, 288, 576, 576]
    assert [b.project[0].out_channels for b in bs] == [16, 24, 24, 40, 40, 40, 48, 48, 96, 96, 96]
    assert [b.depthwise[0].stride[0] for b in bs] == [2, 2, 1, 2, 1, 1, 1, 1, 2, 1, 1]
    assert [isinstance(b.se, SqueezeExcite) for b in bs] == [True, False, False] + [True] * 8
    assert [isinstance(b.depthwise[2], nn.Hardswish) for b in bs] == [False] * 3 + [True] * 8
    assert model.features[-1][0].out_channels == 576 and model.num_features == 1024
    assert not any(isinstance(m, SqueezeExcite) for m in model.features[-1].modules())
    assert isinstance(on_meta("mobilenet_v3_small", se_last_conv=True).features[-1], SqueezeExcite)


def test_efficient_last_stage_has_no_batch_norm():
    """Fig. 5 and the NBN rows: after pooling, two 1x1 layers on a 1x1 map, with biases, no BN;
    h-swish after the 1280-channel one, dropout (keep 0.8) before the classifier."""
    model = on_meta("mobilenet_v3_large")
    head = model.classifier
    assert not any(isinstance(m, nn.BatchNorm2d | nn.BatchNorm1d) for m in head.modules())
    assert [type(m) for m in head] == [nn.Linear, nn.Hardswish, nn.Dropout, nn.Linear]
    assert (head[0].in_features, head[0].out_features, head[3].out_features) == (960, 1280, 1000)
    assert head[2].p == pytest.approx(0.2)
    # Every convolution has batch norm with the paper's average decay 0.99 (momentum 0.01).
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert norms and all(m.momentum == pytest.approx(0.01) for m in norms)
    # Convolutions followed by batch norm carry no bias; only the SE layers (no BN) have one.
    se_convs = {id(c) for se in model.modules() if isinstance(se, SqueezeExcite) for c in (se.reduce, se.expand)}
    convs = [m for m in model.features.modules() if isinstance(m, nn.Conv2d)]
    assert all((m.bias is not None) == (id(m) in se_convs) for m in convs)


def test_bn_momentum_knob():
    model = on_meta("mobilenet_v3_small", bn_momentum=0.1)
    assert {m.momentum for m in model.modules() if isinstance(m, nn.BatchNorm2d)} == {0.1}


def test_squeeze_excite_and_hard_nonlinearities():
    se = SqueezeExcite(72)
    assert se.reduce.out_channels == 24  # 72 / 4 = 18, rounded to a multiple of 8
    assert SqueezeExcite(960).reduce.out_channels == 240
    x = torch.linspace(-5, 5, 101)
    assert torch.allclose(F.hardsigmoid(x), F.relu6(x + 3) / 6)  # Sec. 5.2
    assert torch.allclose(nn.Hardswish()(x), x * F.relu6(x + 3) / 6)
    # The gate scales each channel by a value in [0, 1].
    torch.manual_seed(0)
    y = torch.rand(2, 72, 5, 5) + 0.1
    with torch.no_grad():
        ratio = se(y) / y
    assert ratio.min() >= 0 and ratio.max() <= 1
    assert torch.allclose(ratio, ratio[:, :, :1, :1].expand_as(ratio))


def test_residuals_where_shapes_agree():
    for name, expected in (("mobilenet_v3_large", 10), ("mobilenet_v3_small", 6)):
        assert sum(b.residual for b in blocks(on_meta(name))) == expected


def test_width_multiplier():
    model = on_meta("mobilenet_v3_large", width_mult=0.5)
    assert all(m.out_channels % 8 == 0 for m in model.modules() if isinstance(m, nn.Conv2d))
    assert model.num_features == 640
    assert counted("mobilenet_v3_large", width_mult=0.5)[1] < LARGE[1] / 2


@pytest.mark.parametrize("name,kw,size,classes", [
    ("mobilenet_v3_large", {}, 224, 1000),
    ("mobilenet_v3_small", {}, 224, 1000),
    ("mobilenet_v3_small", {"in_channels": 1, "num_classes": 10, "width_mult": 0.5}, 32, 10),
    ("mobilenet_v3_large", {"in_channels": 1, "num_classes": 10}, 32, 10),
])
def test_forward_shapes(name, kw, size, classes):
    model = models.build(name, **kw).eval()
    with torch.no_grad():
        assert model(torch.randn(2, kw.get("in_channels", 3), size, size)).shape == (2, classes)


def test_training_steps_lower_the_loss():
    torch.manual_seed(0)
    model = models.build("mobilenet_v3_small", in_channels=1, num_classes=10, dropout=0.0, width_mult=0.5)
    x, y = torch.randn(16, 1, 32, 32), torch.randint(0, 10, (16,))
    optimizer = torch.optim.RMSprop(model.parameters(), lr=1e-3, alpha=0.9, momentum=0.9, eps=1.0)
    losses = []
    for _ in range(6):
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


def test_registered():
    for name in ("mobilenet_v3_large", "mobilenet_v3_small"):
        assert name in models.available()
        assert models.default_input_size(name) == (3, 224, 224)
