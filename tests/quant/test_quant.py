"""replicate.quant: quantizers, Quant-Noise, iPQ and the size accounting (Fan, Stock et al. 2021)."""

import math

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

from replicate.config import compose, config_hash
from replicate.quant import ipq, noise, pq, scalar
from replicate.quant.size import MB, model_size


# -- scalar intN -----------------------------------------------------------------------------------

@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("granularity", ["channel", "layer"])
def test_scalar_round_trip_within_half_a_step(bits, granularity):
    ranges = torch.linspace(0.1, 3, 16)[:, None, None, None]
    w = torch.randn(16, 8, 3, 3, generator=torch.Generator().manual_seed(0)) * ranges
    w_hat = scalar.fake_quantize(w, bits, granularity)
    scale, _ = scalar.qparams(w, bits, granularity)
    assert torch.all((w - w_hat).abs() <= scale / 2 + 1e-6)
    # at most 2^N values per quantization group, and the extremes survive within half a step
    groups = w_hat.reshape(16, -1) if granularity == "channel" else w_hat.reshape(1, -1)
    assert max(len(torch.unique(g)) for g in groups) <= 2**bits
    if granularity == "channel":  # per-channel steps follow each channel's range: finer for small ones
        assert scale.flatten()[0] < scale.flatten()[-1] / 10


def test_scalar_step_is_the_range_over_2n_minus_1():
    w = torch.tensor([[-1.0, 0.0, 2.0]])
    scale, zero = scalar.qparams(w, 4, "layer")
    assert scale.item() == pytest.approx(3.0 / 15) and zero.item() == 5.0
    q, _, _ = scalar.quantize(w, 4, "layer")
    assert q.tolist() == [[0.0, 5.0, 15.0]]


# -- product quantization ------------------------------------------------------------------------------

def test_pq_recovers_known_clusters():
    g = torch.Generator().manual_seed(1)
    truth = torch.randn(8, 4, generator=g) * 5
    labels = torch.randint(0, 8, (512,), generator=g)
    labels[:8] = torch.arange(8)  # every codeword in use
    w = (truth[labels] + 0.01 * torch.randn(512, 4, generator=g)).reshape(64, 32)  # rows of 8 blocks of 4
    code = pq.quantize(w, block_size=4, n_centroids=8, iters=50)
    # each true codeword is matched by one found codeword, and the blocks are grouped as in truth
    distance = torch.cdist(truth, code.centroids)
    assert distance.min(1).values.max() < 0.05
    assert len(set(distance.argmin(1).tolist())) == 8
    assert torch.equal(distance.argmin(1)[labels], code.assignments)
    assert (code.weight() - w).abs().max() < 0.1


def test_pq_blocks_follow_the_input_dimension_and_whole_kernels():
    conv = nn.Conv2d(4, 2, 3)
    blocks = pq.to_blocks(conv.weight, 9)
    assert torch.equal(blocks[1], conv.weight[0, 1].flatten())  # one block = one 3x3 kernel
    linear = nn.Linear(16, 3)
    assert torch.equal(pq.to_blocks(linear.weight, 8)[1], linear.weight[0, 8:])
    assert torch.equal(pq.from_blocks(pq.to_blocks(conv.weight, 9), conv.weight.shape), conv.weight)


def test_block_sizes_per_layer_type():
    assert pq.block_size_for(nn.Linear(1536, 1000)) == 8
    assert pq.block_size_for(nn.Conv2d(40, 24, 1)) == 4
    assert pq.block_size_for(nn.Conv2d(16, 32, 3)) == 9
    assert pq.block_size_for(nn.Conv2d(144, 144, 5, groups=144)) == 25  # depthwise: one 5x5 kernel
    assert pq.block_size_for(nn.Conv2d(34, 816, 1)) == 2  # squeeze-excitation width 34: largest divisor
    assert pq.block_size_for(nn.Conv2d(7, 8, 1)) is None  # prime width: stays in fp32
    assert pq.block_size_for(nn.BatchNorm2d(8)) is None


# -- Quant-Noise ----------------------------------------------------------------------------------------

def _weight(seed=0):
    return torch.randn(8, 16, generator=torch.Generator().manual_seed(seed), requires_grad=True)


@pytest.mark.parametrize("make", [lambda p: noise.ScalarNoise(p, 4), lambda p: noise.PQNoise(p, 4, "proxy"),
                                  lambda p: noise.PQNoise(p, 4, "exact", n_centroids=4)])
def test_noise_rate_zero_is_the_identity_and_eval_is_full_precision(make):
    w = _weight()
    assert torch.equal(make(0.0).train()(w), w)
    assert torch.equal(make(0.5).eval()(w), w)


def test_noise_rate_one_is_full_quantization():
    w = _weight()
    # w + (phi(w) - w): phi(w) up to float rounding
    out = noise.ScalarNoise(1.0, 4, "channel").train()(w)
    assert torch.allclose(out, scalar.fake_quantize(w, 4, "channel"), atol=1e-6)
    exact = noise.PQNoise(1.0, 4, "exact", n_centroids=4).train()
    out = exact(w)
    assert torch.allclose(out, pq.nearest(w, exact.codebook))
    assert len(torch.unique(pq.to_blocks(out, 4).detach().round(decimals=4), dim=0)) <= 4
    with pytest.raises(ValueError, match="p=1"):
        noise.PQNoise(1.0, 4, "proxy")


def test_noise_selects_about_p_of_the_blocks():
    torch.manual_seed(0)
    w = torch.randn(256, 64)
    dropped = (noise.PQNoise(0.25, 8, "proxy").train()(w) == 0).reshape(-1, 8).all(1).float().mean()
    assert dropped == pytest.approx(0.25, abs=0.02)
    changed = (noise.ScalarNoise(0.25, 4).train()(w) != w).float().mean()
    assert changed == pytest.approx(0.25 * (1 - 1 / 16), abs=0.03)  # a few weights are already on the grid


def test_straight_through_gradients():
    c = torch.randn(8, 16)
    for layer in (noise.ScalarNoise(1.0, 4), noise.ScalarNoise(0.5, 4), noise.PQNoise(1.0, 4, "exact", n_centroids=4)):
        w = _weight()
        (layer.train()(w) * c).sum().backward()
        assert torch.equal(w.grad, c)  # the quantizer is skipped by the gradient: identity
    torch.manual_seed(0)
    w = _weight()
    out = noise.PQNoise(0.5, 4, "proxy").train()(w)
    (out * c).sum().backward()
    kept = out != 0
    assert torch.allclose(w.grad[kept], 2 * c[kept]) and torch.all(w.grad[~kept] == 0)


def test_quant_noise_on_a_registry_model_trains_with_the_standard_task():
    from replicate.runs import build_model
    from replicate.tasks import ClassificationTask

    cfg = compose("quant_noise", "reduced", ["experiment=resnet20_qn_pq"])
    model = build_model(cfg)
    noisy = [m for m in model.modules() if parametrize.is_parametrized(m, "weight")]
    assert len(noisy) == 20  # 19 convolutions and the classifier of ResNet-20
    task = ClassificationTask(model, cfg.recipe, num_classes=10)
    task.train()
    loss = nn.functional.cross_entropy(task(torch.randn(4, 1, 14, 14)), torch.tensor([0, 1, 2, 3]))
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())
    noise.strip_quant_noise(model)
    assert not any(parametrize.is_parametrized(m) for m in model.modules())
    assert not any(parametrize.is_parametrized(m) for m in build_model(compose("quant_noise", "reduced",
                                                                         ["experiment=resnet20_fp32"])).modules())


def test_quant_settings_are_part_of_the_run_hash():
    hashes = {config_hash(compose("quant_noise", "reduced", [f"experiment={name}"]))
              for name in ("resnet20_fp32", "resnet20_qn_int4", "resnet20_qn_int8", "resnet20_qn_pq")}
    assert len(hashes) == 4
    base = compose("quant_noise", "reduced", ["experiment=resnet20_qn_pq"])
    stronger = compose("quant_noise", "reduced", ["experiment=resnet20_qn_pq", "quant.noise=0.2"])
    assert config_hash(base) != config_hash(stronger)


# -- iPQ --------------------------------------------------------------------------------------------------

def test_ipq_layer_trains_its_codewords_with_the_mean_gradient():
    torch.manual_seed(0)
    layer = nn.Linear(16, 8, bias=False)
    ipq.quantize_layer(layer, block_size=4, n_centroids=4)
    codebook = ipq.codebook_of(layer)
    assert codebook.shape == (4, 4) and [n for n, _ in layer.named_parameters()] == ["parametrizations.weight.original"]
    assignments = layer.parametrizations.weight[0].assignments
    assert torch.equal(layer.weight, codebook[assignments].reshape(8, 16))
    c = torch.randn(8, 16)
    (layer.weight * c).sum().backward()
    blocks = pq.to_blocks(c, 4)
    for k in range(4):
        assert torch.allclose(codebook.grad[k], blocks[assignments == k].mean(0))


def test_ipq_quantizes_groups_in_order_and_finetunes_between():
    model = nn.Sequential(nn.Conv2d(8, 16, 3), nn.Conv2d(16, 16, 1), nn.Flatten(), nn.Linear(16 * 4 * 4, 10))
    groups = ipq.layer_groups(model, None, 2)
    assert groups == [["0", "1"], ["3"]]
    seen = []
    ipq.ipq(model, groups, lambda m, i: seen.append([ipq.is_quantized(x) for x in (m[0], m[1], m[3])]), n_centroids=16)
    assert seen == [[True, True, False], [True, True, True]]
    ipq.int8_codebooks(model)
    assert len(torch.unique(ipq.codebook_of(model[3]))) <= 256


# -- sizes ------------------------------------------------------------------------------------------------

def test_sizes_of_one_layer_worked_by_hand():
    layer = nn.Sequential(nn.Linear(512, 64))  # 32,768 weights + 64 biases
    fp32 = (32768 + 64) * 4
    assert model_size(layer).total_bytes == fp32 == 131_328
    # int8 per channel: 1 byte a weight, a fp32 scale and zero point per output row, fp32 biases
    assert model_size(layer, "int8").total_bytes == 32768 + 64 * 8 + 64 * 4
    assert model_size(layer, "int4", granularity="layer").total_bytes == 32768 / 2 + 8 + 64 * 4
    # iPQ, blocks of 8: 4,096 one-byte indices, 256 codewords of 8 fp16 values, fp32 biases
    ipq_size = model_size(layer, "ipq")
    assert ipq_size.total_bytes == 4096 + 256 * 8 * 2 + 64 * 4 == 8448
    assert ipq_size.mb == 8448 / 2**20 and ipq_size.ratio == pytest.approx(131_328 / 8448)
    assert model_size(layer, "ipq_int8").total_bytes == 4096 + 256 * 8 + 8 + 64 * 4
    # a 3x3 convolution: whole kernels as blocks; fewer blocks than 256 keep one codeword each
    conv = nn.Sequential(nn.Conv2d(4, 8, 3, bias=False))  # 32 kernels of 9
    assert model_size(conv, "ipq").total_bytes == 32 + 32 * 9 * 2


def test_efficientnet_b3_size_convention():
    from replicate.quant.networks import build_meta

    model = build_meta("torchvision:efficientnet_b3")
    assert sum(p.numel() for p in model.parameters()) == 12_233_232
    assert model_size(model).mb == pytest.approx(12_233_232 * 4 / MB) and round(model_size(model).mb, 1) == 46.7
    sizes = {m: model_size(model, m).mb for m in ("int8", "int4", "ipq", "ipq_int8")}
    assert sizes["ipq_int8"] < sizes["ipq"] < sizes["int4"] < sizes["int8"] < 46.7 / 3.5
    assert math.isclose(model_size(model, "int8").ratio * sizes["int8"], 46.666, rel_tol=1e-3)
