"""`ClassificationTask`: one LightningModule for every image-classification paper's recipe.

The recipe config (conf/recipe/*.yaml) chooses the optimizer (SGD, RMSProp, AdamW), its
parameter groups (no decay on depthwise filters for MobileNet V1; none on norms and biases for
the AdamW recipes), the schedule (multistep, plateau, exponential, cosine with linear warm-up, polynomial with
Darknet's burn-in), mixup/cutmix/mosaic and label smoothing, and the weight of auxiliary classifiers (GoogLeNet); this
module only turns it into torch objects and logs top-1/top-5 error in percent, as the papers
report it.
"""

from __future__ import annotations

import math
from collections import deque

import lightning as L
import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import nn
from torchmetrics.classification import MulticlassAccuracy
from torchvision.transforms import v2

from ..errors import ConfigError

OPTIMIZERS = ("sgd", "rmsprop", "adamw")
SCHEDULES = ("multistep", "plateau", "exponential", "cosine", "poly")


class ClassificationTask(L.LightningModule):
    """Trains `model` with the paper's recipe.

    Logs `train/loss`, `train/err` (%), `lr`, and `val/top1_acc`, `val/top5_acc`, `test/...`
    (fractions, accumulated exactly over the whole split by torchmetrics, across devices).
    """

    def __init__(self, model: nn.Module, recipe: DictConfig, *, num_classes: int, channels_last: bool = False,
                 compile_model: bool | str = False):
        super().__init__()
        self.model = model
        top5 = min(5, num_classes)
        self.metrics = nn.ModuleDict({
            f"{stage}_top{k}": MulticlassAccuracy(num_classes, top_k=kk, average="micro")
            for stage in ("val", "test") for k, kk in ((1, 1), (5, top5))
        })
        self.recipe = recipe
        self.channels_last = channels_last
        self.compile_model = compile_model
        if channels_last:
            self.model.to(memory_format=torch.channels_last)
        warmup = recipe.get("warmup") or {}
        self.warming_up = bool(warmup.get("enabled", False))
        self._recent_errors: deque[float] = deque(maxlen=int(warmup.get("window", 20)))
        self._pending_errors: list[torch.Tensor] = []
        self._tail_errors: list[float] = []
        self.batch_mix = _batch_mix(recipe, num_classes)

    def configure_model(self) -> None:
        if self.compile_model and not isinstance(self.model, torch._dynamo.eval_frame.OptimizedModule):
            # true: torch.compile's default mode; a string names the mode (speed.compile, validate.COMPILE_MODES)
            mode = None if self.compile_model is True else self.compile_model
            self.model = torch.compile(self.model, mode=mode)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last and x.ndim == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.model(x)

    # -- training -----------------------------------------------------------------------------
    def training_step(self, batch, batch_idx):
        x, y = batch
        target = y
        if self.batch_mix is not None:  # mixup / cutmix: soft targets, the error is counted on y
            x, target = self.batch_mix(x, y)
        loss, logits = self.loss(self(x), target)
        # Kept on the device and read once per logging interval: no GPU sync on every step.
        self._pending_errors.append((logits.detach().argmax(1) != y).float().mean())
        if len(self._pending_errors) >= self.trainer.log_every_n_steps or self.global_step + 1 >= self.recipe.max_steps:
            errors = torch.stack([e.to(logits.device) for e in self._pending_errors])  # some restored on the CPU
            self._track_training_error([100.0 * e for e in errors.tolist()])
            self._pending_errors.clear()
        self.log("train/loss", loss, on_step=True, on_epoch=False)
        self.log("lr", self.optimizers().param_groups[0]["lr"], on_step=True, on_epoch=False)
        return loss

    def loss(self, output, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The training loss and the main logits. `target` holds class indices or, after
        mixup/cutmix, class probabilities; label smoothing applies to either."""
        smoothing = float(self.recipe.get("label_smoothing", 0.0))
        if isinstance(output, (tuple, list)):
            # Auxiliary classifiers (GoogLeNet, Sec. 5): their losses are added with a weight.
            logits, *aux = output
            weight = float(self.recipe.get("aux_loss_weight", 0.0) or 0.0)
            loss = F.cross_entropy(logits, target, label_smoothing=smoothing)
            return loss + weight * sum(F.cross_entropy(a, target, label_smoothing=smoothing) for a in aux), logits
        return F.cross_entropy(output, target, label_smoothing=smoothing), output

    def _track_training_error(self, errors: list[float]) -> None:
        """Called once per logging interval with that interval's batch errors (%)."""
        # Fig. 6's training curves: error averaged over each logging interval, not one batch.
        self.log("train/err", sum(errors) / len(errors), on_step=True)
        # The final training error averages the last tenth of the iterations (at least the last one).
        first_step = self.global_step + 1 - len(errors)
        tail = math.floor(0.9 * self.recipe.max_steps)
        self._tail_errors += [e for i, e in enumerate(errors) if first_step + i >= tail]
        self._recent_errors.extend(errors)
        window = self._recent_errors
        if self.warming_up and len(window) == window.maxlen:
            if sum(window) / len(window) < 100.0 * self.recipe.warmup.until_train_error:
                self.warming_up = False

    @property
    def final_train_error(self) -> float | None:
        """The training error (%) over the last tenth of the iterations, None before any. Kept in
        the checkpoint: a run resumed at its last step (nothing left to train) still has it."""
        return sum(self._tail_errors) / len(self._tail_errors) if self._tail_errors else None

    # -- evaluation ---------------------------------------------------------------------------
    def _evaluate(self, batch, stage: str):
        x, y = batch
        if x.ndim == 5:  # multi-crop testing (Tables 2-3: 10 crops): average the softmax scores
            b, n = x.shape[:2]
            probs = F.softmax(self(x.flatten(0, 1)), dim=1).view(b, n, -1).mean(1)
            loss = F.nll_loss(probs.clamp_min(1e-12).log(), y)
            scores = probs
        else:
            scores = self(x)
            loss = F.cross_entropy(scores, y)
        self.log(f"{stage}/loss", loss, on_epoch=True, sync_dist=True)
        for k in (1, 5):
            metric = self.metrics[f"{stage}_top{k}"]
            metric.update(scores, y)
            self.log(f"{stage}/top{k}_acc", metric, on_epoch=True)

    def validation_step(self, batch, batch_idx):
        self._evaluate(batch, "val")

    def test_step(self, batch, batch_idx):
        self._evaluate(batch, "test")

    # -- optimisation -------------------------------------------------------------------------
    def configure_optimizers(self):
        r = self.recipe
        optimizer = build_optimizer(self.model, r)
        if r.schedule == "plateau":
            # Stepped once per epoch, after that epoch's validation (recipe.val_every_steps: null);
            # a step-interval frequency would count batches within an epoch, not across them.
            p = r.plateau
            scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
                optimizer, mode="max", factor=p.factor, patience=p.patience, threshold=p.threshold)
            return {"optimizer": optimizer,
                    "lr_scheduler": {"scheduler": scheduler, "monitor": p.monitor, "interval": "epoch",
                                     "frequency": 1, "strict": True}}
        schedule = step_schedule(r)
        warmup_factor = float(r.warmup.lr) / r.lr if r.get("warmup") else 1.0

        def factor(step: int) -> float:
            return schedule(step) * (warmup_factor if self.warming_up else 1.0)

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # The warm-up state and its window decide the learning rate, and the errors not yet logged
    # decide the curves: all survive a resume, so that it continues as if never interrupted.
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["warming_up"] = self.warming_up
        checkpoint["recent_errors"] = list(self._recent_errors)
        checkpoint["pending_errors"] = [float(e) for e in self._pending_errors]
        checkpoint["tail_errors"] = list(self._tail_errors)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.warming_up = checkpoint.get("warming_up", self.warming_up)
        self._recent_errors.extend(checkpoint.get("recent_errors", []))
        self._pending_errors = [torch.tensor(e) for e in checkpoint.get("pending_errors", [])]
        self._tail_errors = list(checkpoint.get("tail_errors", []))


def _is_depthwise(module: nn.Module) -> bool:
    return isinstance(module, nn.Conv2d) and module.groups > 1 and module.groups == module.in_channels


_NORMS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm, nn.LocalResponseNorm)


def parameter_groups(model: nn.Module, recipe: DictConfig) -> list[dict]:
    """Parameters split by the weight decay the recipe gives them.

    `weight_decay_depthwise` (MobileNet V1, Sec. 3: "very little or no weight decay (l2
    regularization) on the depthwise filters") applies to depthwise convolution weights;
    `no_decay_norm_and_bias` (the AdamW recipes) exempts normalisation parameters, biases and
    anything a model marks with `no_weight_decay = True` (e.g. layer scale).
    """
    decay = float(recipe.weight_decay)
    depthwise = recipe.get("weight_decay_depthwise", None)
    exempt_norm_bias = bool(recipe.get("no_decay_norm_and_bias", False))
    groups: dict[float, list] = {}
    seen: set[int] = set()
    for module in model.modules():
        for name, param in module.named_parameters(recurse=False):
            if id(param) in seen or not param.requires_grad:
                continue
            seen.add(id(param))
            wd = decay
            if exempt_norm_bias and (isinstance(module, _NORMS) or name == "bias" or param.ndim <= 1
                                     or getattr(param, "no_weight_decay", False)):
                wd = 0.0
            elif depthwise is not None and _is_depthwise(module) and name == "weight":
                wd = float(depthwise)
            groups.setdefault(wd, []).append(param)
    return [{"params": params, "weight_decay": wd} for wd, params in sorted(groups.items(), reverse=True)]


def build_optimizer(model: nn.Module, r: DictConfig) -> torch.optim.Optimizer:
    """The recipe's optimizer over `parameter_groups`."""
    groups = parameter_groups(model, r)
    if r.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=r.lr, momentum=r.momentum, nesterov=bool(r.get("nesterov", False)))
    if r.optimizer == "rmsprop":
        # TensorFlow's RMSProp (the MobileNets' optimizer) puts epsilon inside the square root;
        # torch adds it outside. recipe.rmsprop.eps is torch's, chosen in each recipe to match.
        opts = r.get("rmsprop") or {}
        return torch.optim.RMSprop(groups, lr=r.lr, alpha=float(opts.get("alpha", 0.9)),
                                   eps=float(opts.get("eps", 1e-3)), momentum=float(r.get("momentum", 0.0)))
    if r.optimizer == "adamw":
        betas = tuple(r.get("betas") or (0.9, 0.999))
        return torch.optim.AdamW(groups, lr=r.lr, betas=betas)
    raise ConfigError(f"recipe.optimizer={r.optimizer!r} is not supported. Allowed: {', '.join(OPTIMIZERS)}.")


def step_schedule(r: DictConfig):
    """The learning-rate factor at each iteration, for the per-step schedules.

    multistep: x gamma at each milestone (fractions of max_steps); exponential: x gamma every
    `decay_every_steps` (MobileNet V2's 0.98 per epoch, GoogLeNet's 4% every 8 epochs), staircase;
    cosine: linear warm-up over `warmup_steps_fraction` of max_steps, then half a cosine to 0;
    poly: (1 - t / max_steps)^`power` after a (t / T)^`warmup_power` burn-in (YOLOv4's classifier).
    """
    if r.schedule == "multistep":
        milestones = [round(f * r.max_steps) for f in r.milestones]
        return lambda step: r.gamma ** sum(step >= m for m in milestones)
    if r.schedule == "exponential":
        every = int(r.decay_every_steps)
        if every <= 0:
            raise ConfigError(f"recipe.decay_every_steps={every} must be a positive number of iterations.")
        return lambda step: r.gamma ** (step // every)
    if r.schedule == "cosine":
        warmup = round(float(r.get("warmup_steps_fraction", 0.0)) * r.max_steps)
        total = max(1, r.max_steps - warmup)

        def cosine(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (step - warmup) / total)))

        return cosine
    if r.schedule == "poly":
        # YOLOv4 Sec. 4.1's classifier: "polynomial decay learning rate scheduling strategy",
        # after a burn-in of `warmup_steps_fraction` of max_steps raised as (t / T)^warmup_power.
        warmup = round(float(r.get("warmup_steps_fraction", 0.0)) * r.max_steps)
        power, burn_in = float(r.get("power", 1.0)), float(r.get("warmup_power", 1.0))

        def poly(step: int) -> float:
            if step < warmup:
                return ((step + 1) / warmup) ** burn_in
            return max(0.0, 1.0 - step / r.max_steps) ** power

        return poly
    raise ConfigError(f"recipe.schedule={r.schedule!r} is not supported. Allowed: {', '.join(SCHEDULES)}.")


class Mosaic:
    """Mosaic for a classifier (YOLOv4 Sec. 3.2, Tables 2-3): each training image becomes four
    images of the batch, one per quadrant around a random centre (each quadrant keeps that
    image's pixels at the same place), and its target the four one-hot labels weighted by the
    quadrants' areas. The centre is drawn uniformly in the middle half of each side (Mosaic's
    quadrants, unlike CutMix's box, are never empty)."""

    def __init__(self, num_classes: int, low: float = 0.25, high: float = 0.75):
        self.num_classes, self.low, self.high = int(num_classes), float(low), float(high)

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h, w = images.shape[-2:]
        cy = int(round(h * float(torch.empty(()).uniform_(self.low, self.high))))
        cx = int(round(w * float(torch.empty(()).uniform_(self.low, self.high))))
        onehot = F.one_hot(labels, self.num_classes).to(images.dtype)
        out = images.clone()
        target = torch.zeros_like(onehot)
        quadrants = ((slice(0, cy), slice(0, cx)), (slice(0, cy), slice(cx, w)),
                     (slice(cy, h), slice(0, cx)), (slice(cy, h), slice(cx, w)))
        for shift, (rows, cols) in enumerate(quadrants):  # the image i + shift of the batch (cyclic)
            source = images.roll(shift, 0) if shift else images
            out[..., rows, cols] = source[..., rows, cols]
            area = (rows.stop - rows.start) * (cols.stop - cols.start) / (h * w)
            target += area * (onehot.roll(shift, 0) if shift else onehot)
        return out, target


def _batch_mix(recipe: DictConfig, num_classes: int):
    """torchvision's MixUp and/or CutMix, and/or `Mosaic` (recipe.mosaic), on the training batch
    (one of them per batch when several are on), or None."""
    mixup, cutmix = float(recipe.get("mixup_alpha", 0.0) or 0.0), float(recipe.get("cutmix_alpha", 0.0) or 0.0)
    chosen = [t for alpha, t in ((mixup, v2.MixUp), (cutmix, v2.CutMix)) if alpha > 0
              for t in [t(alpha=alpha, num_classes=num_classes)]]
    if recipe.get("mosaic", False):
        chosen.append(Mosaic(num_classes))
    if not chosen:
        return None
    # Darknet's classifier picks CutMix or Mosaic per batch when both are on, as the DeiT recipes MixUp or CutMix.
    return chosen[0] if len(chosen) == 1 else v2.RandomChoice(chosen)
