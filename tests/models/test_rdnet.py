"""RDNet-T/S/B/L (Kim, Heo & Han, ECCV 2024) against the paper's table, and the pilot-study knob."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import StochasticDepth

from replicate import models
from replicate.measure.complexity import count
from replicate.models.rdnet import EffectiveSE, FeatureMixer, MixingBlock, plan_params

# Counted at 224x224 (parameters with biases, layer norms and layer scales; multiply-adds of the
# convolutions and the classifier, one per multiply-add).
COUNTS = {
    "rdnet_tiny": (23_863_008, 5_032_673_424),
    "rdnet_small": (50_436_448, 8_706_216_840),
    "rdnet_base": (87_451_096, 15_358_159_296),
    "rdnet_large": (186_269_632, 34_675_293_792),
}
# The paper's table (Table 8a): parameters (M) and FLOPs (G, multiply-adds) at 224 px.
PAPER = {"rdnet_tiny": (23.9, 5.0), "rdnet_small": (50.4, 8.7), "rdnet_base": (86.2, 15.4), "rdnet_large": (186, 34.7)}
REDUCED = dict(num_classes=10, in_channels=1, width_mult=0.25, kernel_size=3)  # conf/paper/rdnet.yaml's scale


def on_meta(name, **kw):
    with torch.device("meta"):  # counting needs shapes only
        return models.build(name, **kw)


def rounds_to(value, printed, digits):
    """`value` printed with `digits` decimals is `printed` (half a unit of the last digit)."""
    return abs(value - printed) <= 0.5 * 10 ** -digits + 1e-9


@pytest.mark.parametrize("name", COUNTS)
def test_counts(name):
    c = count(on_meta(name), (3, 224, 224))
    assert (c.params, c.macs) == COUNTS[name]


@pytest.mark.parametrize("name", COUNTS)
def test_table_multiply_adds_to_the_printed_digit(name):
    assert rounds_to(COUNTS[name][1] / 1e9, PAPER[name][1], 1)


@pytest.mark.parametrize("name,digits", [("rdnet_tiny", 1), ("rdnet_small", 1), ("rdnet_large", 0)])
def test_table_parameters_to_the_printed_digit(name, digits):
    assert rounds_to(COUNTS[name][0] / 1e6, PAPER[name][0], digits)


def test_rdnet_base_parameters_are_counted_without_channel_rescaling():
    """The paper's 86.2 M for RDNet-B is our count without the effective-SE modules; the released
    model has them (87.45 M; the authors' README and model card print 87 M). T, S and L include them:
    without, T would be 23.5 M, not 23.9 M."""
    assert not rounds_to(COUNTS["rdnet_base"][0] / 1e6, 86.2, 1)
    assert round(COUNTS["rdnet_base"][0] / 1e6) == 87
    without = count(on_meta("rdnet_base", channel_rescaling=False), (3, 224, 224))
    assert rounds_to(without.params / 1e6, 86.2, 1)
    assert without.macs == pytest.approx(COUNTS["rdnet_base"][1], rel=1e-4)  # SE costs no multiply-adds to speak of
    tiny_without = count(on_meta("rdnet_tiny", channel_rescaling=False), (3, 224, 224)).params
    assert rounds_to(tiny_without / 1e6, 23.5, 1)


def test_readme_tiny_row_is_not_the_released_tiny():
    """The authors' README lists RDNet-T at 22 M / 4.0 G; the paper's table and the released
    model's card (rdnet_tiny.nv_in1k: 24 M, 5.0 GMACs) agree with our 23.9 M / 5.03 G."""
    params, macs = COUNTS["rdnet_tiny"]
    assert round(params / 1e6) == 24 and round(macs / 1e9, 1) == 5.0
    assert abs(params / 1e6 - 22) > 1.5 and abs(macs / 1e9 - 4.0) > 0.9


def test_rdnet_large_at_384():
    """RDNet-L fine-tuned at 384 px: 101.9 G (Table 8a)."""
    assert rounds_to(count(on_meta("rdnet_large"), (3, 384, 384)).macs / 1e9, 101.9, 1)


def test_tiny_structure():
    """Fig. 1 / Sec. 3.2: 4x4 patch stem, mixing blocks of three mixers (1, 1, 4, 1 per stage),
    2x2/2 transitions between stages and 1x1 inside, effective SE in stages 3-4 only, 4x expansion
    of each mixer's input, 7x7 depthwise kernels, layer scale initialised at 1e-6."""
    model = on_meta("rdnet_tiny")
    stem = model.stem[0]
    assert (stem.kernel_size, stem.stride, stem.out_channels) == ((4, 4), (4, 4), 64)
    blocks = [m for m in model.features if isinstance(m, MixingBlock)]
    transitions = [m for m in model.features if isinstance(m, nn.Sequential)]
    assert len(blocks) == 7 and all(len(b.mixers) == 3 for b in blocks)
    assert [t[1].kernel_size for t in transitions] == [(2, 2), (2, 2), (1, 1), (1, 1), (1, 1), (2, 2)]
    assert [b.out_channels for b in blocks] == [256, 440, 600, 680, 720, 744, 1040]  # the released feature widths
    assert [t[1].out_channels for t in transitions] == [128, 216, 296, 336, 360, 368]  # halved, multiples of 8
    assert [any(isinstance(m, EffectiveSE) for m in b.modules()) for b in blocks] == [False] * 2 + [True] * 5
    for mixer in (m for m in model.modules() if isinstance(m, FeatureMixer)):
        dw, _, expand, _, project = list(mixer.layers)[:5]
        assert dw.groups == dw.in_channels and dw.kernel_size == (7, 7)
        assert expand.out_channels == 4 * dw.in_channels
        assert mixer.gamma.shape == (project.out_channels,)
    assert model.fc.in_features == 1040


def test_layer_scale_init():
    model = models.build("rdnet_tiny", **REDUCED)
    assert all(torch.all(m.gamma == 1e-6) for m in model.modules() if isinstance(m, FeatureMixer))


@pytest.mark.parametrize("name", ["rdnet_tiny", "rdnet_small"])
def test_forward_shape_224(name):
    model = models.build(name).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 224, 224)).shape == (1, 1000)


@pytest.mark.parametrize("mix", ["concat", "add"])
def test_forward_shape_32_reduced(mix):
    model = models.build("rdnet_tiny", mix=mix, **REDUCED).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 1, 32, 32)).shape == (2, 10)


def test_drop_path_only_in_training():
    torch.manual_seed(0)
    model = models.build("rdnet_tiny", drop_path_rate=0.5, **REDUCED)
    rates = [m.p for m in model.modules() if isinstance(m, StochasticDepth)]
    assert len(rates) == 21 and rates[0] == 0.0 and rates[-1] == pytest.approx(0.5)
    assert rates == sorted(rates)  # the linear rule
    for m in model.modules():  # layer scale 1 so that dropped features show in the output
        if isinstance(m, FeatureMixer):
            nn.init.ones_(m.gamma)
    reference = models.build("rdnet_tiny", drop_path_rate=0.0, **REDUCED)
    reference.load_state_dict(model.state_dict())
    x = torch.randn(8, 1, 32, 32)
    model.eval()
    reference.eval()
    with torch.no_grad():
        assert torch.equal(model(x), reference(x))
        model.train()
        reference.train()
        assert not torch.allclose(model(x), reference(x))
        assert not torch.allclose(model(x), model(x))


def test_concatenation_keeps_the_input_and_grows_by_the_growth_rate():
    model = models.build("rdnet_tiny", **REDUCED).eval()
    block = model.features[0]
    assert [m.layers[0].in_channels for m in block.mixers] == [16, 32, 48]  # 16 + i x 16
    x = torch.randn(2, 16, 8, 8)
    with torch.no_grad():
        y = block(x)
    assert y.shape == (2, 64, 8, 8) and torch.equal(y[:, :16], x)


def test_addition_keeps_one_width_and_adds():
    model = models.build("rdnet_tiny", mix="add", **REDUCED).eval()
    blocks = [m for m in model.features if isinstance(m, MixingBlock)]
    for block in blocks:
        assert all(m.layers[0].in_channels == m.gamma.numel() == block.out_channels for m in block.mixers)
    block = blocks[0]
    for m in block.mixers:
        nn.init.zeros_(m.gamma)
    x = torch.randn(2, block.out_channels, 8, 8)
    with torch.no_grad():
        assert torch.equal(block(x), x)  # X + f(X) with f scaled to zero


@pytest.mark.parametrize("name,kw,size", [("rdnet_tiny", {}, 224), ("rdnet_base", {}, 224),
                                          ("rdnet_tiny", REDUCED, 32)])
def test_additive_counterpart_has_the_same_budget(name, kw, size):
    """Equal parameters (to the widths' multiple of 8: within 2%), multiply-adds within 11%, and
    the closed-form count used to size it agrees with the built model."""
    channels = kw.get("in_channels", 3)
    concat, add = on_meta(name, **kw), on_meta(name, mix="add", **kw)
    c, a = count(concat, (channels, size, size)), count(add, (channels, size, size))
    assert a.params == pytest.approx(c.params, rel=0.02)
    assert a.macs == pytest.approx(c.macs, rel=0.11) and a.macs < c.macs
    for model, counted in ((concat, c), (add, a)):
        patch, kernel = model.stem[0].kernel_size[0], model.features[0].mixers[0].layers[0].kernel_size[0]
        assert plan_params(model.plan, channels, model.fc.out_features, patch, kernel) == counted.params


def test_bad_mix_is_refused():
    with pytest.raises(ValueError, match="concat"):
        models.build("rdnet_tiny", mix="sum")


def test_training_steps_lower_the_loss():
    torch.manual_seed(0)
    model = models.build("rdnet_tiny", drop_path_rate=0.1, **REDUCED).to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.05)
    x, y = torch.randn(16, 1, 32, 32), torch.randint(0, 10, (16,))
    losses = []
    for _ in range(5):
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        losses.append(loss.item())
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
        optimizer.step()
    assert losses[-1] < losses[0]
