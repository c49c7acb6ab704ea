"""SE networks (Hu et al., arXiv 1709.01507) against the paper's Sec. 3-4, Table 1 and Table 2."""

from functools import lru_cache

import pytest
import torch
from torch import nn

from replicate import models
from replicate.measure.complexity import count
from replicate.models.resnet import ZeroPadShortcut
from replicate.models.senet import PreActBottleneck, SEBasicBlock, SEBottleneck, SqueezeExcitation

# Table 1: output channels and blocks of the four stages of ResNet-50/101/152.
CHANNELS = (256, 512, 1024, 2048)
BLOCKS = {"50": (3, 4, 6, 3), "101": (3, 4, 23, 3), "152": (3, 8, 36, 3)}
# Counted (weights, batch norm and biases): torchvision's resnet50 has the same 25,557,032.
RESNET_PARAMS = {"50": 25_557_032, "101": 44_549_160, "152": 60_192_808}
SE_RESNET_PARAMS = {"50": 28_088_024, "101": 49_326_872, "152": 66_821_848}
# Table 2, GFLOPs of the re-implemented ResNets and of the SENets.
TABLE2_GFLOPS = {"resnet50": 3.86, "resnet101": 7.58, "resnet152": 11.30,
                 "se_resnet50": 3.87, "se_resnet101": 7.60, "se_resnet152": 11.32}


def on_meta(name, **kw):
    with torch.device("meta"):  # counting needs shapes only
        return models.build(name, **kw)


@lru_cache(maxsize=None)
def counted(name, size=224, **kw):
    """Params and multiply-adds, counted once per model for the whole file."""
    return count(on_meta(name, **kw), (3, size, size))


def eq5(blocks, channels=CHANNELS, r=16):
    """Eq. 5: the weights the SE blocks add, (2 / r) * sum_s N_s * C_s^2."""
    return sum(2 * n * c * c // r for n, c in zip(blocks, channels, strict=True))


def se_biases(blocks, channels=CHANNELS, r=16):
    return sum(n * (c // r + c) for n, c in zip(blocks, channels, strict=True))


# -- Sec. 4: model complexity ----------------------------------------------------------------------
def test_se_resnet50_parameters_against_section_4():
    base, se = counted("resnet50").params, counted("se_resnet50").params
    assert (base, se) == (RESNET_PARAMS["50"], SE_RESNET_PARAMS["50"])
    added = se - base
    # Eq. 5 counts the FC weights; our FC layers carry biases as the released models do.
    assert added == eq5(BLOCKS["50"]) + se_biases(BLOCKS["50"]) == 2_514_944 + 16_048
    # "~2.5 million additional parameters beyond the ~25 million required by ResNet-50,
    # corresponding to a ~10% increase".
    assert round(added / 1e6, 1) == 2.5 and 25 <= base / 1e6 < 26 and round(100 * added / base) == 10
    # "this comparatively costly final stage of SE blocks could be removed ... reducing the
    # relative parameter increase to ~4%".
    assert round(100 * eq5(BLOCKS["50"][:3], CHANNELS[:3]) / base) == 4


@pytest.mark.parametrize("depth", BLOCKS)
def test_se_blocks_add_eq5_parameters_and_fc_multiply_adds(depth):
    base, se = counted(f"resnet{depth}"), counted(f"se_resnet{depth}")
    assert base.params == RESNET_PARAMS[depth] and se.params == SE_RESNET_PARAMS[depth]
    assert se.params - base.params == eq5(BLOCKS[depth]) + se_biases(BLOCKS[depth])
    # Each FC layer is applied once per image: its multiply-adds are its weights.
    assert se.macs - base.macs == eq5(BLOCKS[depth])


def test_gflops_against_table_2():
    """Table 2's GFLOPs with the tolerance conf/paper/senet.yaml justifies: the paper's counts run
    0.002 (ResNet-50) to 0.031 (SE-ResNet-152) GFLOPs above ours, which count convolutions and FC
    layers only. ResNet-50 agrees to the printed digit; the stride-on-3x3 layout does not."""
    for name, paper in TABLE2_GFLOPS.items():
        ours = counted(name).gmacs
        assert 0 <= paper - ours <= 0.035, name
    assert round(counted("resnet50").gmacs, 2) == 3.86
    v15 = counted("se_resnet50", downsample_on="3x3").gmacs
    assert v15 - TABLE2_GFLOPS["se_resnet50"] > 0.2


def test_se_cost_is_small_against_section_4():
    """Sec. 4: the SE blocks' cost is slight next to ResNet-50's ~3.86 GFLOPs (0.26% by the
    paper's count, which includes the pooling and scaling; the FC layers alone are 0.07%)."""
    base, se = counted("resnet50").macs, counted("se_resnet50").macs
    assert 0 < (se - base) / base < 0.0026


# -- Sec. 3: the block -----------------------------------------------------------------------------
@pytest.mark.parametrize("channels,reduction", [(256, 16), (2048, 16), (64, 4), (16, 16)])
def test_se_block_shapes_and_parameters(channels, reduction):
    se = SqueezeExcitation(channels, reduction)
    assert (se.reduce.in_features, se.reduce.out_features) == (channels, channels // reduction)
    assert (se.expand.in_features, se.expand.out_features) == (channels // reduction, channels)
    weights = 2 * channels * channels // reduction
    assert sum(p.numel() for p in se.parameters()) == weights + channels // reduction + channels
    assert sum(p.numel() for p in SqueezeExcitation(channels, reduction, bias=False).parameters()) == weights
    u = torch.randn(2, channels, 5, 3)
    s = se.excitation(u)
    assert s.shape == (2, channels) and bool(((s > 0) & (s < 1)).all())
    assert torch.allclose(se(u), u * s[:, :, None, None])


def test_squeeze_is_global_average_pooling():
    se = SqueezeExcitation(32, 16)
    u = torch.randn(1, 32, 4, 4)
    z = u.mean(dim=(2, 3))
    expected = torch.sigmoid(se.expand(torch.relu(se.reduce(z))))
    assert torch.allclose(se.excitation(u), expected)
    # The squeeze sees only each channel's average: moving positions around changes nothing.
    assert torch.allclose(se.excitation(u.flip(-1).flip(-2)), expected, atol=1e-6)


def test_reduction_changes_the_count_as_eq5_says():
    counts = {r: counted("se_resnet50", reduction=r).params for r in (4, 8, 16, 32)}
    for r, params in counts.items():
        assert params - RESNET_PARAMS["50"] == eq5(BLOCKS["50"], r=r) + se_biases(BLOCKS["50"], r=r)
    assert counts[4] > counts[8] > counts[16] > counts[32]
    with pytest.raises(ValueError, match="reduction"):
        models.build("se_resnet50", reduction=3)


def test_table_1_layout():
    """Table 1 (middle): an SE block with fc [C/16, C] in every bottleneck of every stage."""
    model = models.build("se_resnet50")
    for stage, (n, c) in zip(model.stages, zip(BLOCKS["50"], CHANNELS, strict=True), strict=True):
        assert len(stage) == n
        for block in stage:
            assert isinstance(block, SEBottleneck)
            assert (block.se.reduce.out_features, block.se.expand.out_features) == (c // 16, c)
    # The paper's stride placement: the first 1x1 of conv3_1, conv4_1 and conv5_1 (resnet.py).
    assert model.stages[1][0].conv1[0].stride == (2, 2) and model.stages[1][0].conv2[0].stride == (1, 1)


def test_se_acts_on_the_residual_branch_before_the_addition():
    """Fig. 3: with the excitation driven to zero the block passes only its shortcut (then ReLU)."""
    torch.manual_seed(0)
    for block, x in ((SEBottleneck(64, 16, 1, "B"), torch.randn(2, 64, 6, 6)),
                     (SEBasicBlock(16, 16, 1, "A"), torch.randn(2, 16, 6, 6)),
                     (PreActBottleneck(64, 16, 1, "B", reduction=16), torch.randn(2, 64, 6, 6))):
        block.eval()
        with torch.no_grad():
            block.se.expand.bias.fill_(-1e4)
            out = block(x)
        expected = x if isinstance(block, PreActBottleneck) else torch.relu(x)
        assert torch.allclose(out, expected, atol=1e-5)


# -- the networks ----------------------------------------------------------------------------------
def test_forward_shapes_at_224_and_32():
    torch.manual_seed(0)
    with torch.no_grad():
        assert models.build("se_resnet50", num_classes=7).eval()(torch.randn(1, 3, 224, 224)).shape == (1, 7)
        for name in ("se_resnet20", "se_preact_resnet110", "se_resnet164"):
            model = models.build(name, num_classes=100).eval()
            assert model(torch.randn(2, 3, 32, 32)).shape == (2, 100), name
        grey = models.build("se_resnet20", num_classes=10, in_channels=1).eval()
        assert grey(torch.randn(2, 1, 14, 14)).shape == (2, 10)


def test_registered_with_the_paper_input_sizes():
    for name in ("se_resnet50", "se_resnet101", "se_resnet152"):
        assert models.default_input_size(name) == (3, 224, 224)
    for name in ("se_resnet20", "se_resnet32", "se_resnet56", "se_resnet110", "preact_resnet110",
                 "se_preact_resnet110", "resnet164", "se_resnet164"):
        assert models.default_input_size(name) == (3, 32, 32)


def test_cifar_se_resnets_add_eq5_to_he_et_al_counts():
    # He et al. 2016, Table 6 (option A, counted): 269,722 / 853,018 / 1,727,962.
    for depth, base in ((20, 269_722), (56, 853_018), (110, 1_727_962)):
        n = (depth - 2) // 6
        assert count(on_meta(f"resnet{depth}"), (3, 32, 32)).params == base
        se = count(on_meta(f"se_resnet{depth}"), (3, 32, 32)).params
        assert se - base == eq5((n, n, n), (16, 32, 64)) + se_biases((n, n, n), (16, 32, 64))


def test_preact_resnet164_and_110_against_identity_mappings():
    """Identity Mappings, Table 4: ResNet-164 "(1.7M)"; ResNet-110 1.7M as in He et al. 2016."""
    r164, r110 = count(on_meta("resnet164"), (3, 32, 32)).params, count(on_meta("preact_resnet110"), (3, 32, 32)).params
    assert (r164, r110) == (1_703_258, 1_727_962)
    assert round(r164 / 1e6, 1) == round(r110 / 1e6, 1) == 1.7
    se164 = count(on_meta("se_resnet164"), (3, 32, 32)).params
    assert se164 - r164 == eq5((18, 18, 18), (64, 128, 256)) + se_biases((18, 18, 18), (64, 128, 256))
    se110 = count(on_meta("se_preact_resnet110"), (3, 32, 32)).params
    assert se110 - r110 == eq5((18, 18, 18), (16, 32, 64)) + se_biases((18, 18, 18), (16, 32, 64))


def test_preact_structure():
    """Appendix of Identity Mappings: the first unit takes its activation from right after conv1
    and shares it with the shortcut; projections (with pre-activation, no BN after them) where a
    bottleneck net's dimensions increase; BN-ReLU after the last addition."""
    r164, r110 = models.build("resnet164"), models.build("preact_resnet110")
    assert isinstance(r164.stem, nn.Conv2d) and isinstance(r110.stem, nn.Conv2d)
    assert r164.stages[0][0].shares_activation and r110.stages[0][0].shares_activation
    firsts = [stage[0] for stage in r164.stages]
    assert all(isinstance(u.shortcut, nn.Conv2d) and u.shares_activation for u in firsts)
    assert [u.shortcut.stride for u in firsts] == [(1, 1), (2, 2), (2, 2)]
    assert isinstance(r110.stages[1][0].shortcut, ZeroPadShortcut) and not r110.stages[1][0].shares_activation
    assert not r164.stages[0][1].shares_activation
    assert r164.final_bn.num_features == 256 and r110.final_bn.num_features == 64
    # 164 = 3 stages x 18 units x 3 layers + conv1 + fc; the stride sits on the first 1x1.
    assert [len(s) for s in r164.stages] == [18, 18, 18]
    assert r164.stages[1][0].conv1.stride == (2, 2) and r164.stages[1][0].conv2.stride == (1, 1)


def test_a_training_step_updates_the_se_layers():
    torch.manual_seed(0)
    model = models.build("se_resnet20", num_classes=10, in_channels=1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    x, y = torch.randn(16, 1, 14, 14), torch.randint(0, 10, (16,))
    before = model.stages[2][0].se.expand.weight.detach().clone()
    losses = []
    for _ in range(3):
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    assert not torch.equal(before, model.stages[2][0].se.expand.weight)


def test_builders_reject_bad_depths_and_knobs():
    from replicate.models.senet import preact_cifar_net, se_cifar_net

    with pytest.raises(ValueError, match="6n\\+2"):
        se_cifar_net(21)
    with pytest.raises(ValueError, match="9n\\+2"):
        preact_cifar_net(165, bottleneck=True, reduction=None)
    with pytest.raises(TypeError):
        models.build("preact_resnet110", reduction=16)  # the plain net has no SE knob
