"""GoogLeNet (Szegedy et al. 2015) against the paper's Table 1 and Sec. 5.

Table 1's "params" column counts weights without biases in units of K = 1024 (its conv2 row,
112K, is 64*64 + 9*64*192 = 114,688 = 112 * 1024; its linear row, 1000K, is 1024*1000); its
"ops" column is multiply-adds (3a: 159.5K weights at 28x28 = 128M; Sec. 1 speaks of "1.5 billion
multiply-adds"). The widths printed in the same table do not reproduce every row of those two
columns; the rows that disagree are tested as such below.
"""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from replicate import models
from replicate.measure.complexity import count

# Table 1 as printed: in channels, #1x1, #3x3 reduce, #3x3, #5x5 reduce, #5x5, pool proj, output
# map side at 224 px, then the "params" (K) and "ops" (M) columns.
TABLE1 = {
    "inception3a": (192, 64, 96, 128, 16, 32, 32, 28, 159, 128),
    "inception3b": (256, 128, 128, 192, 32, 96, 64, 28, 380, 304),
    "inception4a": (480, 192, 96, 208, 16, 48, 64, 14, 364, 73),
    "inception4b": (512, 160, 112, 224, 24, 64, 64, 14, 437, 88),
    "inception4c": (512, 128, 128, 256, 24, 64, 64, 14, 463, 100),
    "inception4d": (512, 112, 144, 288, 32, 64, 64, 14, 580, 119),
    "inception4e": (528, 256, 160, 320, 32, 128, 128, 14, 840, 170),
    "inception5a": (832, 256, 160, 320, 32, 128, 128, 7, 1072, 54),
    "inception5b": (832, 384, 192, 384, 48, 128, 128, 7, 1388, 71),
}
# The other rows with parameters: (weights from the row's own description, map side, params K, ops M).
STEM_AND_HEAD = {
    "conv1": (7 * 7 * 3 * 64, 112, 2.7, 34),   # 7x7/2, 64 filters
    "conv2": (64 * 64 + 9 * 64 * 192, 56, 112, 360),  # 1x1 reduce 64, then 3x3 with 192
    "fc": (1024 * 1000, 1, 1000, 1),            # linear
}
# Rows whose printed params / ops are not what their own widths give (more than one unit of the
# printed last digit away). conv1: 9.2K weights and 118M multiply-adds for a 7x7x3 -> 64
# convolution on a 112x112 output, printed 2.7K / 34M. 5a: printed 1072K / 54M, its widths give
# 1018K / 51.1M. 4a, 4c, 4d, 4e, 5b: params only (their ops agree).
PARAMS_MISPRINTED = {"conv1", "inception4a", "inception4c", "inception4d", "inception4e", "inception5a",
                     "inception5b"}
OPS_MISPRINTED = {"conv1", "inception5a"}


def weights(row: str) -> int:
    """The row's weights computed from Table 1's widths (independently of the model code)."""
    if row in STEM_AND_HEAD:
        return STEM_AND_HEAD[row][0]
    cin, c1, c3r, c3, c5r, c5, pp = TABLE1[row][:7]
    return cin * (c1 + c3r + c5r + pp) + 9 * c3r * c3 + 25 * c5r * c5


def side(row: str) -> int:
    return STEM_AND_HEAD[row][1] if row in STEM_AND_HEAD else TABLE1[row][7]


def printed(row: str) -> tuple[float, float]:
    return STEM_AND_HEAD[row][2:] if row in STEM_AND_HEAD else TABLE1[row][8:]


ROWS = ["conv1", "conv2", *TABLE1, "fc"]


@pytest.fixture(scope="module")
def inference_net():
    with torch.device("meta"):  # counting needs shapes only
        return models.build("googlenet", aux_logits=False)


@pytest.fixture(scope="module")
def counted(inference_net):
    return count(inference_net, (3, 224, 224))


@pytest.mark.parametrize("row", ROWS)
def test_each_row_has_table_1s_weights_and_multiply_adds(inference_net, counted, row):
    module = getattr(inference_net, row)
    ours = sum(p.numel() for name, p in module.named_parameters() if name.endswith("weight"))
    assert ours == weights(row)
    # Every weight is applied once per output position: multiply-adds = weights x map area.
    assert counted.macs_by_module[f"GoogLeNet.{row}"] == weights(row) * side(row) ** 2


@pytest.mark.parametrize("row", ROWS)
def test_rows_against_the_printed_columns(row):
    params_k, ops_m = printed(row)
    ours_k, ours_m = weights(row) / 1024, weights(row) * side(row) ** 2 / 1e6
    # One unit of the last printed digit: the printed values are sometimes rounded (4d: 118.5 -> 119),
    # sometimes truncated (4a: 73.6 -> 73).
    assert (abs(ours_k - params_k) <= 1) == (row not in PARAMS_MISPRINTED)
    assert (abs(ours_m - ops_m) <= 1) == (row not in OPS_MISPRINTED)


def test_totals(counted):
    # All parameters (biases included) and multiply-adds of the inference network (no auxiliary heads).
    assert counted.params == 6_998_552
    assert counted.macs == 1_582_671_872
    # Sec. 1: "a computational budget of 1.5 billion multiply-adds at inference time".
    assert counted.gmacs == pytest.approx(1.5, abs=0.1)
    # MobileNet (Howard et al. 2017) Table 8 quotes GoogLeNet at 1550 M Mult-Adds and 6.8 M parameters.
    # Table 1's own ops column sums to 1502M with conv1 at 34M instead of 118M.
    assert counted.macs / 1e6 == pytest.approx(1550, abs=35)
    # 6.8 M is Table 1's params column summed (6797.7K); in that column's unit (weights, K = 1024)
    # our network has 6826K.
    assert sum(printed(r)[0] for r in ROWS) == pytest.approx(6797.7)
    assert round(sum(weights(r) for r in ROWS) / 1024 / 1000, 1) == 6.8


def test_auxiliary_heads_parameters():
    with torch.device("meta"):
        full = models.build("googlenet")
    # Sec. 5: 5x5/3 pooling to 4x4, 1x1 conv with 128 filters, FC 1024, linear 1000 (with biases).
    head = lambda cin: (cin * 128 + 128) + (128 * 16 * 1024 + 1024) + (1024 * 1000 + 1000)  # noqa: E731
    assert count(full, (3, 224, 224)).params == 6_998_552 + head(512) + head(528)


def test_no_batch_norm_real_5x5_and_lrn_where_figure_3_has_them():
    model = models.build("googlenet")
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    inceptions = [m for name, m in model.named_children() if name.startswith("inception")]
    assert len(inceptions) == 9
    assert all(block.branch5[1][0].kernel_size == (5, 5) for block in inceptions)
    # Fig. 3: conv 7x7/2 -> max pool -> LocalRespNorm -> conv 1x1 -> conv 3x3 -> LocalRespNorm -> max pool.
    assert isinstance(model.norm1, nn.LocalResponseNorm) and isinstance(model.norm2, nn.LocalResponseNorm)
    assert sum(isinstance(m, nn.LocalResponseNorm) for m in model.modules()) == 2
    assert model.dropout.p == 0.4 and model.aux1.dropout.p == 0.7 and model.aux2.dropout.p == 0.7


def test_auxiliary_pooling_is_the_papers_5x5_stride_3_at_224():
    x = torch.randn(2, 512, 14, 14)  # the 4a output at 224 px
    assert torch.allclose(models.build("googlenet").aux1.pool(x), F.avg_pool2d(x, 5, stride=3))
    assert models.build("googlenet").aux1.pool(torch.randn(2, 8, 2, 2)).shape == (2, 8, 4, 4)


def test_forward_shapes_at_224_and_32():
    model = models.build("googlenet").eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 224, 224)).shape == (1, 1000)
        small = models.build("googlenet", num_classes=10, in_channels=1, width_mult=0.25).eval()
        assert small(torch.randn(2, 1, 32, 32)).shape == (2, 10)


def test_auxiliary_outputs_in_training_mode_only():
    model = models.build("googlenet", num_classes=10, in_channels=1, width_mult=0.25)
    x = torch.randn(2, 1, 32, 32)
    main, aux1, aux2 = model.train()(x)
    assert main.shape == aux1.shape == aux2.shape == (2, 10)
    with torch.no_grad():
        assert isinstance(model.eval()(x), torch.Tensor)
    plain = models.build("googlenet", num_classes=10, in_channels=1, width_mult=0.25, aux_logits=False).train()
    assert isinstance(plain(x), torch.Tensor) and plain.aux1 is None


def test_one_training_step_with_the_auxiliary_loss():
    torch.manual_seed(0)
    model = models.build("googlenet", num_classes=10, in_channels=1, width_mult=0.25).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x, y = torch.randn(8, 1, 32, 32), torch.randint(0, 10, (8,))
    main, aux1, aux2 = model(x)
    loss = F.cross_entropy(main, y) + 0.3 * (F.cross_entropy(aux1, y) + F.cross_entropy(aux2, y))  # Sec. 5
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    assert model.aux1.classifier.weight.grad.abs().sum() > 0 and model.conv1[0].weight.grad.abs().sum() > 0
    optimizer.step()


def test_width_mult_scales_every_width():
    with torch.device("meta"):
        quarter = models.build("googlenet", aux_logits=False, width_mult=0.25)
    assert quarter.conv1[0].out_channels == 16 and quarter.fc.in_features == 256
    assert quarter.inception3a.branch5[1][0].out_channels == 8


def test_the_5x5_branch_is_what_separates_us_from_torchvision():
    """torchvision's GoogLeNet convolves with 3x3 in the "5x5" branch (and adds batch norm, which
    costs no multiply-adds): the multiply-add gap is exactly 16 * reduce * filters * area per module."""
    from torchvision.models import googlenet

    theirs = count(googlenet(aux_logits=False, init_weights=False), (3, 224, 224))
    gap = sum(16 * c5r * c5 * s * s for (_, _, _, _, c5r, c5, _, s, _, _) in TABLE1.values())
    assert count(models.build("googlenet", aux_logits=False), (3, 224, 224)).macs - theirs.macs == gap
