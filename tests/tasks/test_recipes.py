"""The recipe features the classification papers need: optimizers and their parameter groups,
per-step schedules, mixup/cutmix, auxiliary-classifier losses, and the batch augmentations."""

import math

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from replicate.data import transforms as T
from replicate.errors import ConfigError
from replicate.tasks.classification import (
    ClassificationTask, Mosaic, build_optimizer, parameter_groups, step_schedule,
)


def recipe(**kw):
    base = dict(optimizer="sgd", lr=0.1, momentum=0.9, weight_decay=1e-4, batch_size=8, max_steps=100,
                schedule="multistep", milestones=[0.5, 0.75], gamma=0.1)
    return OmegaConf.create({**base, **kw})


class DepthwiseNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.full = nn.Conv2d(1, 8, 3, padding=1)
        self.depthwise = nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False)
        self.pointwise = nn.Conv2d(8, 8, 1, bias=False)
        self.norm = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        x = self.norm(self.pointwise(self.depthwise(self.full(x))))
        return self.fc(x.mean((2, 3)))


def decay_of(groups, param):
    return next(g["weight_decay"] for g in groups if any(p is param for p in g["params"]))


def test_depthwise_filters_get_their_own_weight_decay():
    net = DepthwiseNet()
    groups = parameter_groups(net, recipe(weight_decay=4e-5, weight_decay_depthwise=0.0))
    assert decay_of(groups, net.depthwise.weight) == 0.0
    assert decay_of(groups, net.pointwise.weight) == 4e-5 and decay_of(groups, net.full.weight) == 4e-5
    assert sum(len(g["params"]) for g in groups) == len(list(net.parameters()))


def test_adamw_recipes_exempt_norms_and_biases():
    net = DepthwiseNet()
    groups = parameter_groups(net, recipe(optimizer="adamw", weight_decay=0.05, no_decay_norm_and_bias=True))
    assert decay_of(groups, net.norm.weight) == 0.0 and decay_of(groups, net.fc.bias) == 0.0
    assert decay_of(groups, net.fc.weight) == 0.05 and decay_of(groups, net.depthwise.weight) == 0.05


@pytest.mark.parametrize("name,cls", [("sgd", torch.optim.SGD), ("rmsprop", torch.optim.RMSprop),
                                      ("adamw", torch.optim.AdamW)])
def test_optimizers(name, cls):
    opt = build_optimizer(DepthwiseNet(), recipe(optimizer=name, rmsprop={"alpha": 0.9, "eps": 0.002}))
    assert isinstance(opt, cls)
    if name == "rmsprop":
        assert opt.defaults["alpha"] == 0.9 and opt.defaults["momentum"] == 0.9 and opt.defaults["eps"] == 0.002


def test_unknown_optimizer_and_schedule_name_the_choices():
    with pytest.raises(ConfigError, match="Allowed: sgd, rmsprop, adamw"):
        build_optimizer(DepthwiseNet(), recipe(optimizer="lamb"))
    with pytest.raises(ConfigError, match="Allowed: multistep"):
        step_schedule(recipe(schedule="polynomial"))


def test_exponential_schedule_is_a_staircase():
    # MobileNet V2: x0.98 per epoch; here an "epoch" of 10 iterations.
    f = step_schedule(recipe(schedule="exponential", gamma=0.98, decay_every_steps=10))
    assert [f(s) for s in (0, 9, 10, 25)] == pytest.approx([1, 1, 0.98, 0.98 ** 2])


def test_cosine_schedule_warms_up_linearly_then_decays_to_zero():
    f = step_schedule(recipe(schedule="cosine", warmup_steps_fraction=0.2, max_steps=100))
    assert f(0) == pytest.approx(1 / 20) and f(19) == pytest.approx(1.0)
    assert f(20) == pytest.approx(1.0) and f(60) == pytest.approx(0.5) and f(100) == pytest.approx(0.0)
    assert all(f(s) >= f(s + 1) for s in range(20, 99))


def test_poly_schedule_burns_in_then_decays_as_a_power():
    # YOLOv4's classifier (Sec. 4.1): burn-in (t / T)^4, then (1 - t / max_steps)^4.
    f = step_schedule(recipe(schedule="poly", power=4.0, warmup_steps_fraction=0.1, warmup_power=4.0, max_steps=100))
    assert f(0) == pytest.approx((1 / 10) ** 4) and f(4) == pytest.approx(0.5 ** 4) and f(9) == pytest.approx(1.0)
    assert f(10) == pytest.approx(0.9 ** 4) and f(50) == pytest.approx(0.5 ** 4) and f(100) == 0.0
    assert all(f(s) >= f(s + 1) for s in range(10, 99))


def test_mosaic_labels_follow_the_pixels():
    """Each pixel of a mosaic comes from one image of the batch; an image's target is the share
    of its pixels taken from each image's class."""
    n, h, w = 5, 12, 16
    images = torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1).expand(n, 2, h, w).clone()  # image i is all i
    labels = torch.tensor([3, 0, 2, 3, 1])
    torch.manual_seed(0)
    for _ in range(5):
        mixed, target = Mosaic(num_classes=4)(images, labels)
        assert mixed.shape == images.shape and target.shape == (n, 4)
        assert torch.allclose(target.sum(1), torch.ones(n))
        for i in range(n):
            sources = mixed[i, 0].long().flatten()
            assert torch.equal(mixed[i, 0], mixed[i, 1])  # the same cut in every channel
            expected = torch.zeros(4).index_add_(0, labels[sources], torch.ones(sources.numel())) / (h * w)
            assert torch.allclose(target[i], expected)
            assert len(sources.unique()) == 4  # four images, none of them empty (centre in the middle half)
    task = ClassificationTask(nn.Sequential(nn.Flatten(), nn.Linear(2 * h * w, 4)),
                              recipe(cutmix_alpha=1.0, mosaic=True), num_classes=4)
    x, y = task.batch_mix(images, labels)  # one of CutMix and Mosaic per batch
    assert y.shape == (n, 4) and math.isfinite(task.loss(task(x), y)[0].item())


def test_multistep_schedule():
    f = step_schedule(recipe())
    assert [f(s) for s in (49, 50, 75)] == pytest.approx([1, 0.1, 0.01])


class WithAux(nn.Module):
    """Returns (main, aux) in training, as GoogLeNet does."""

    def __init__(self):
        super().__init__()
        self.main, self.aux = nn.Linear(4, 3), nn.Linear(4, 3)

    def forward(self, x):
        x = x.flatten(1)
        return (self.main(x), self.aux(x)) if self.training else self.main(x)


def test_auxiliary_losses_are_weighted():
    torch.manual_seed(0)
    model = WithAux().train()
    x, y = torch.randn(6, 1, 2, 2), torch.tensor([0, 1, 2, 0, 1, 2])
    main, aux = model(x)
    expected = nn.functional.cross_entropy(main, y) + 0.3 * nn.functional.cross_entropy(aux, y)
    task = ClassificationTask(model, recipe(aux_loss_weight=0.3), num_classes=3)
    loss, logits = task.loss(task(x), y)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6) and logits is not None
    assert torch.equal(logits, main)


def test_mixup_trains_on_soft_targets():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
    x, y = torch.randn(6, 1, 2, 2), torch.tensor([0, 1, 2, 0, 1, 2])
    plain = ClassificationTask(model, recipe(), num_classes=3)
    mixed = ClassificationTask(model, recipe(mixup_alpha=0.8, cutmix_alpha=1.0, label_smoothing=0.1), num_classes=3)
    assert plain.batch_mix is None and mixed.batch_mix is not None
    xm, ym = mixed.batch_mix(x, y)
    assert ym.shape == (6, 3) and torch.allclose(ym.sum(1), torch.ones(6))
    loss, _ = mixed.loss(mixed(xm), ym)
    assert math.isfinite(loss.item())
    # With one-hot targets the soft-target loss is the hard-label loss.
    onehot = nn.functional.one_hot(y, 3).float()
    assert plain.loss(plain(x), onehot)[0].item() == pytest.approx(plain.loss(plain(x), y)[0].item(), rel=1e-6)


def test_random_resized_crop_keeps_shape_and_draws_per_sample():
    g = torch.Generator().manual_seed(0)
    x = torch.arange(16 * 16, dtype=torch.float32).view(1, 1, 16, 16).repeat(8, 1, 1, 1)
    out = T.random_resized_crop_flip(x, generator=g)
    assert out.shape == x.shape
    assert len({tuple(o.flatten()[:5].tolist()) for o in out}) > 1
    # A full-area, unit-ratio crop without flip is the identity.
    same = T.random_resized_crop_flip(x[:1], area=(1.0, 1.0), ratio=(1.0, 1.0), generator=torch.Generator().manual_seed(1))
    assert torch.allclose(same, x[:1], atol=1e-3) or torch.allclose(same, x[:1].flip(-1), atol=1e-3)


@pytest.mark.parametrize("setting,mode", [(True, None), ("reduce-overhead", "reduce-overhead")])
def test_speed_compile_names_torch_compiles_mode(monkeypatch, setting, mode):
    """speed.compile: true compiles in torch.compile's default mode; a mode's name is passed on
    (reduce-overhead: CUDA graphs for launch-bound steps)."""
    from omegaconf import OmegaConf

    from replicate.tasks import ClassificationTask

    seen = []
    monkeypatch.setattr(torch, "compile", lambda model, mode=None: seen.append(mode) or model)
    recipe = OmegaConf.create({"lr": 0.1})
    task = ClassificationTask(nn.Linear(4, 3), recipe, num_classes=3, compile_model=setting)
    task.configure_model()
    assert seen == [mode]
