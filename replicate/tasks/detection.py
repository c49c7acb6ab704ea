"""`DetectionTask`: one LightningModule for every detector family (R-CNN, Fast/Faster R-CNN,
YOLO), which differ in their models and losses, not in how they are trained or scored.

The model contract (torchvision's detection API):

    model.train(); losses = model(images, targets)   # dict of scalar losses, already weighted
    model.eval();  detections = model(images)        # one {"boxes", "scores", "labels"} per image

with `images` a list of float [3, H_i, W_i] tensors and `targets` the readers' dicts
(`replicate.data.detection`). The training loss is the sum of the dict's values (each family's
paper fixes its weights, e.g. Fast R-CNN Eq. 1's lambda = 1, and applies them in its model);
each term is logged as `train/<name>`. Validation and test collect the detections, map them and
the ground truth back to the stored image sizes, and score them with
`replicate.metrics.evaluate_detections` under the paper's protocol (`val/map`, `test/map`,
fractions; COCO adds `map_50`, `map_75`, `map_small`...). The last result, per-class APs included,
stays in `task.results[stage]`, its detections in `task.detections[stage]` (for the plots).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import lightning as L
import torch
import torch.distributed as dist
from omegaconf import DictConfig
from torch import nn

from ..errors import ConfigError
from ..metrics.detection import PROTOCOLS, evaluate_detections


def to_cpu(item: Mapping) -> dict:
    """Tensors on the CPU, floating ones as float32 (bf16 autocast leaves some in bfloat16)."""
    def move(v):
        v = v.detach().to("cpu").as_subclass(torch.Tensor)
        return v.float() if v.is_floating_point() else v

    return {k: (move(v) if isinstance(v, torch.Tensor) else v) for k, v in item.items()}


def to_original_size(item: Mapping, image_hw: tuple[int, int]) -> dict:
    """`item` (a target or a detection dict) with its boxes scaled from an image of size
    `image_hw` (H, W) back to the target's `orig_size` (the file as stored)."""
    out = dict(item)
    orig = item.get("orig_size")
    if orig is None or "boxes" not in item:
        return out
    oh, ow = (float(v) for v in orig)
    h, w = image_hw
    scale = torch.tensor([ow / w, oh / h, ow / w, oh / h], dtype=torch.float32)
    out["boxes"] = item["boxes"].as_subclass(torch.Tensor).float() * scale
    return out


class DetectionTask(L.LightningModule):
    """Trains `model` with `recipe` (SGD with momentum, multistep schedule, as the R-CNN and
    YOLO papers) and scores it with mAP under `protocol` ("voc07", "voc" or "coco")."""

    def __init__(self, model: nn.Module, recipe: DictConfig | Mapping, *, num_classes: int,
                 class_names: list[str] | None = None, protocol: str = "voc07"):
        super().__init__()
        if protocol not in PROTOCOLS:
            raise ConfigError(f"protocol={protocol!r} is not supported. Allowed: {', '.join(PROTOCOLS)}.")
        self.model = model
        self.recipe = recipe
        self.num_classes = int(num_classes)
        self.class_names = list(class_names) if class_names is not None else None
        self.protocol = protocol
        self._outputs: dict[str, list[tuple[dict, dict]]] = {"val": [], "test": []}
        self.results: dict[str, dict] = {}
        self.detections: dict[str, tuple[list[dict], list[dict]]] = {}

    def forward(self, images, targets=None):
        return self.model(images, targets) if targets is not None else self.model(images)

    def setup(self, stage: str) -> None:
        # The datamodule knows the class names once it has read its data.
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        names = getattr(datamodule, "class_names", None)
        if self.class_names is None and names:
            self.class_names = list(names)

    # -- training -----------------------------------------------------------------------------
    def training_step(self, batch, batch_idx):
        images, targets = batch
        if not images:  # every image of the batch was unreadable (dropped by `collate`): no step
            return None
        losses = self.model(images, targets)
        if not isinstance(losses, Mapping) or not losses:
            raise TypeError(f"{type(self.model).__name__} must return a dict of losses in training mode, "
                            f"got {type(losses).__name__}.")
        loss = sum(losses.values())
        n = len(images)
        for name, value in losses.items():
            self.log(f"train/{name}", value.detach(), on_step=True, on_epoch=False, batch_size=n)
        self.log("train/loss", loss.detach(), on_step=True, on_epoch=False, batch_size=n, prog_bar=True)
        self.log("lr", self.optimizers().param_groups[0]["lr"], on_step=True, on_epoch=False, batch_size=n)
        return loss

    # -- evaluation ---------------------------------------------------------------------------
    def _collect(self, batch, stage: str) -> None:
        images, targets = batch
        if not images:  # only unreadable images (dropped): nothing to score
            return
        detections = self.model(images)
        for image, detection, target in zip(images, detections, targets):
            hw = (int(image.shape[-2]), int(image.shape[-1]))
            detection = {**to_cpu(detection), "orig_size": target.get("orig_size")}
            self._outputs[stage].append((to_original_size(to_cpu(detection), hw),
                                         to_original_size(to_cpu(target), hw)))

    def validation_step(self, batch, batch_idx):
        self._collect(batch, "val")

    def test_step(self, batch, batch_idx):
        self._collect(batch, "test")

    def _score(self, stage: str) -> None:
        pairs, self._outputs[stage] = self._outputs[stage], []
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            gathered: list = [None] * dist.get_world_size()
            dist.all_gather_object(gathered, pairs)
            pairs = [p for part in gathered for p in part]
        if not pairs:
            return
        predictions = [p for p, _ in pairs]
        targets = [t for _, t in pairs]
        result = evaluate_detections(predictions, targets, self.protocol, class_names=self.class_names,
                                     num_classes=None if self.class_names else self.num_classes)
        self.results[stage] = result
        self.detections[stage] = (predictions, targets)
        for key, value in result.items():
            if key.startswith("map") and not math.isnan(value):
                # Every rank computed the same value from the gathered lists: no reduction.
                self.log(f"{stage}/{key}", float(value), on_epoch=True, rank_zero_only=False, sync_dist=False)

    def on_validation_epoch_end(self) -> None:
        self._score("val")

    def on_test_epoch_end(self) -> None:
        self._score("test")

    # -- optimisation -------------------------------------------------------------------------
    def configure_optimizers(self):
        r = self.recipe
        if r.get("optimizer", "sgd") != "sgd":
            raise ConfigError(f"recipe.optimizer={r.get('optimizer')!r} is not supported for detection. Allowed: sgd.")
        # Caffe's convention in the R-CNN code: biases at `bias_lr_factor` x the rate, and
        # (with no_decay_norm_and_bias) without weight decay.
        bias_factor = float(r.get("bias_lr_factor", 1.0))
        no_decay = bool(r.get("no_decay_norm_and_bias", False))
        weights, biases = [], []
        for name, p in self.model.named_parameters():
            if p.requires_grad:
                (biases if p.ndim <= 1 else weights).append(p)
        groups = [{"params": weights}]
        if biases:
            groups.append({"params": biases, "lr": r.lr * bias_factor,
                           "weight_decay": 0.0 if no_decay else r.weight_decay})
        optimizer = torch.optim.SGD(groups, lr=r.lr, momentum=r.get("momentum", 0.9), weight_decay=r.weight_decay)
        return {"optimizer": optimizer,
                "lr_scheduler": {"scheduler": torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(r)),
                                 "interval": "step"}}


SCHEDULES = ("multistep", "cosine")


def lr_factor(recipe: DictConfig | Mapping):
    """The learning rate's factor at each step: a warm-up (`warmup_steps_fraction` of
    `max_steps`, from `warmup_start_factor` of the rate, raised as (t / T)^`warmup_power`: 1 is
    linear, YOLOv1 Sec. 2.2's "slowly raise"; 4 is Darknet's burn-in) and then the schedule:
    `multistep` (x `gamma` at each of `milestones`, fractions of `max_steps`: the R-CNN papers,
    YOLO v1-v3) or `cosine` (to zero at `max_steps`: YOLOv4's bag of freebies, Sec. 3.2)."""
    schedule = recipe.get("schedule", "multistep")
    if schedule not in SCHEDULES:
        raise ConfigError(f"recipe.schedule={schedule!r} is not supported for detection. "
                          f"Allowed: {', '.join(SCHEDULES)}.")
    total = int(recipe.max_steps)
    milestones = [round(f * total) for f in recipe.get("milestones", [])]
    gamma = float(recipe.get("gamma", 0.1))
    warmup = round(float(recipe.get("warmup_steps_fraction", 0.0)) * total)
    start = float(recipe.get("warmup_start_factor", 0.0))
    power = float(recipe.get("warmup_power", 1.0))

    def factor(step: int) -> float:
        if step < warmup:
            return start + (1.0 - start) * (step / warmup) ** power
        if schedule == "cosine":
            span = max(1, total - warmup)
            return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (step - warmup) / span)))
        return gamma ** sum(step >= m for m in milestones)

    return factor
