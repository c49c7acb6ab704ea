"""DenseNet (Huang et al. 2017) against the paper's Tables 1-2 and Sec. 3-4."""

import pytest
import torch
from torch import nn

from replicate import models
from replicate.measure.complexity import count

# Table 2 prints 1.0 / 7.0 / 27.2 / 0.8 / 15.3 / 25.6 M; counted for 10 classes with batch norm.
CIFAR_PARAMS = {"densenet40_k12": 1_019_722, "densenet100_k12": 6_979_642, "densenet100_k24": 27_249_082,
                "densenet_bc100_k12": 769_162, "densenet_bc250_k24": 15_324_406, "densenet_bc190_k40": 25_624_430}
CIFAR_PRINTED_M = {"densenet40_k12": 1.0, "densenet100_k12": 7.0, "densenet100_k24": 27.2,
                   "densenet_bc100_k12": 0.8, "densenet_bc250_k24": 15.3, "densenet_bc190_k40": 25.6}
# Depth L of each network (Sec. 3 and Table 1): convolutions plus the classifier.
DEPTH = {"densenet40_k12": 40, "densenet100_k12": 100, "densenet100_k24": 100, "densenet_bc100_k12": 100,
         "densenet_bc250_k24": 250, "densenet_bc190_k40": 190, "densenet121": 121, "densenet169": 169,
         "densenet201": 201, "densenet264": 265}  # Table 1's "264" column has 2*(6+12+64+48)+5 = 265
IMAGENET_PARAMS = {"densenet121": 7_978_856, "densenet169": 14_149_480, "densenet201": 20_013_928,
                   "densenet264": 33_337_704}


def on_meta(name, **kw):
    with torch.device("meta"):  # counting needs shapes only
        return models.build(name, **kw)


@pytest.mark.parametrize("name", CIFAR_PARAMS)
def test_cifar_parameters_match_table_2(name):
    params = count(on_meta(name), (3, 32, 32)).params
    assert params == CIFAR_PARAMS[name]
    assert abs(params / 1e6 - CIFAR_PRINTED_M[name]) <= 0.05


@pytest.mark.parametrize("name", IMAGENET_PARAMS)
def test_imagenet_parameters(name):
    assert count(on_meta(name), (3, 224, 224)).params == IMAGENET_PARAMS[name]


def test_densenet201_has_the_20m_parameters_of_sec_4_4():
    # Sec. 4.4: "a DenseNet-201 with 20M parameters" (the only ImageNet count the paper prints).
    assert round(count(on_meta("densenet201"), (3, 224, 224)).params / 1e6) == 20


@pytest.mark.parametrize("name,tv_name", [("densenet121", "densenet121"), ("densenet169", "densenet169"),
                                          ("densenet201", "densenet201")])
def test_imagenet_nets_agree_with_torchvision(name, tv_name):
    import torchvision.models as tvm

    with torch.device("meta"):
        theirs = count(getattr(tvm, tv_name)(), (3, 224, 224))
    ours = count(on_meta(name), (3, 224, 224))
    assert (ours.params, ours.macs) == (theirs.params, theirs.macs)


def test_densenet264_has_growth_rate_32_not_timms_48():
    """Table 1: k = 32 for every ImageNet network (timm's densenet264d uses 48 and a deep stem)."""
    ours = count(on_meta("densenet264"), (3, 224, 224)).params
    assert ours < count(on_meta("densenet264", growth_rate=48), (3, 224, 224)).params
    assert on_meta("densenet264").stem[0].out_channels == 64  # 2k


@pytest.mark.parametrize("name", DEPTH)
def test_depth_counts_convolutions_and_classifier(name):
    model = on_meta(name)
    assert sum(isinstance(m, (nn.Conv2d, nn.Linear)) for m in model.modules()) == DEPTH[name]


def test_table_1_feature_map_sizes_and_widths():
    """224 px in: blocks on 56, 28, 14, 7 maps; DenseNet-121's blocks end with 256, 512, 1024, 1024
    channels (64 + 6k, half of it + 12k, ...), the transitions halve them (theta = 0.5)."""
    from replicate.models.densenet import DenseBlock

    model = on_meta("densenet121")
    shapes = []
    for m in model.modules():
        if isinstance(m, DenseBlock):
            m.register_forward_hook(lambda mod, inp, out: shapes.append(tuple(out.shape[1:])))
    model(torch.empty(1, 3, 224, 224, device="meta"))
    assert shapes == [(256, 56, 56), (512, 28, 28), (1024, 14, 14), (1024, 7, 7)]


def test_cifar_blocks_on_32_16_8_maps_and_stem_widths():
    from replicate.models.densenet import DenseBlock

    for name, stem, per_block in [("densenet40_k12", 16, 12), ("densenet_bc100_k12", 24, 16),
                                  ("densenet_bc190_k40", 80, 31)]:
        model = on_meta(name)
        assert model.stem.out_channels == stem  # Sec. 3: 16, or 2k for DenseNet-BC
        sizes = []
        blocks = [m for m in model.modules() if isinstance(m, DenseBlock)]
        assert [len(b.layers) for b in blocks] == [per_block] * 3
        for b in blocks:
            b.register_forward_hook(lambda mod, inp, out: sizes.append(out.shape[-1]))
        model(torch.empty(1, 3, 32, 32, device="meta"))
        assert sizes == [32, 16, 8]


def test_composite_function_bottleneck_and_compression():
    from replicate.models.densenet import DenseLayer, Transition

    plain = on_meta("densenet40_k12")
    layer = next(m for m in plain.modules() if isinstance(m, DenseLayer))
    assert layer.conv1 is None and layer.conv2.kernel_size == (3, 3) and layer.norm2.num_features == 16
    trans = next(m for m in plain.modules() if isinstance(m, Transition))
    assert trans.conv.out_channels == trans.conv.in_channels == 16 + 12 * 12  # theta = 1

    bc = on_meta("densenet_bc100_k12")
    layer = next(m for m in bc.modules() if isinstance(m, DenseLayer))
    assert layer.conv1.kernel_size == (1, 1) and layer.conv1.out_channels == 4 * 12  # 4k maps
    assert layer.conv2.in_channels == 48 and layer.conv2.out_channels == 12
    trans = next(m for m in bc.modules() if isinstance(m, Transition))
    assert trans.conv.out_channels == (24 + 16 * 12) // 2  # floor(theta * m)
    assert not any(m.bias is not None for m in bc.modules() if isinstance(m, nn.Conv2d))


def test_dropout_after_every_convolution_but_the_first(monkeypatch):
    """Sec. 4.2: with drop_rate = 0.2, one dropout per convolution except the stem's."""
    import replicate.models.densenet as dn

    calls = []
    real = dn.F.dropout

    def counting(x, p, training):
        calls.append(p)
        return real(x, p, training)

    monkeypatch.setattr(dn.F, "dropout", counting)
    for name in ("densenet40_k12", "densenet_bc100_k12"):
        calls.clear()
        model = models.build(name, drop_rate=0.2, depth=40).train()
        convs = sum(isinstance(m, nn.Conv2d) for m in model.modules())
        model(torch.randn(2, 3, 8, 8))
        assert calls == [0.2] * (convs - 1)
    calls.clear()
    models.build("densenet40_k12")(torch.randn(2, 3, 8, 8))
    assert calls == []  # drop_rate 0: no dropout at all (the C10+/C100+ networks)


@pytest.mark.parametrize("name,size,classes", [("densenet40_k12", 32, 10), ("densenet_bc100_k12", 32, 100),
                                               ("densenet121", 224, 1000)])
def test_forward_shapes(name, size, classes):
    model = models.build(name, num_classes=classes).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, size, size)).shape == (1, classes)


def test_knobs_and_odd_sizes():
    """`in_channels`, `num_classes`, `depth`, `block_config`; 14 px (the reduced profile) gives 14/7/4 maps."""
    model = models.build("densenet_bc100_k12", depth=40, in_channels=1, num_classes=7).eval()
    with torch.no_grad():
        assert model(torch.randn(3, 1, 14, 14)).shape == (3, 7)
    small = on_meta("densenet_bc100_k12", block_config=[2, 3, 4], growth_rate=8)
    from replicate.models.densenet import DenseBlock

    assert [len(b.layers) for b in small.modules() if isinstance(b, DenseBlock)] == [2, 3, 4]
    assert small.stem.out_channels == 16  # 2k
    # `null` in conf/model/densenet.yaml keeps the paper's value
    assert count(on_meta("densenet40_k12", growth_rate=None, compression=None), (3, 32, 32)).params == 1_019_722


def test_bad_depth_and_compression_raise():
    with pytest.raises(ValueError, match="3n \\+ 4"):
        models.build("densenet40_k12", depth=41)
    with pytest.raises(ValueError, match="6n \\+ 4"):
        models.build("densenet_bc100_k12", depth=48)
    with pytest.raises(ValueError, match="compression"):
        models.build("densenet121", compression=0.0)


def test_training_steps_reduce_the_loss():
    torch.manual_seed(0)
    model = models.build("densenet_bc100_k12", depth=16, in_channels=1, num_classes=4).train()
    x, y = torch.randn(8, 1, 12, 12), torch.arange(8) % 4
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-4)
    losses = []
    for _ in range(8):
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


def test_every_experiment_composes_and_builds():
    from replicate import config
    from replicate.runs import build_model

    cfg = config.compose("densenet", "full")
    for name in cfg.paper.experiments:
        exp = config.compose("densenet", "full", [f"experiment={name}"])
        with torch.device("meta"):
            model = build_model(exp)
        assert model.fc.out_features == exp.data.num_classes
        if name.endswith(("_c10", "_c100")):  # Sec. 4.2: no augmentation, dropout 0.2
            assert exp.recipe.augment == "none" and exp.model.drop_rate == 0.2
        elif "densenet" in name and "imagenet" not in name:
            assert exp.recipe.augment == "cifar" and exp.model.drop_rate == 0.0
