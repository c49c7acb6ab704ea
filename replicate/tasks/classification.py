"""`ClassificationTask`: one LightningModule for every image-classification paper's recipe.

The recipe config (conf/recipe/*.yaml) chooses the optimizer and the schedule; this module only
turns it into torch objects and logs top-1/top-5 error in percent, as the papers report it.
"""

from __future__ import annotations

from collections import deque

import lightning as L
import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import nn
from torchmetrics.classification import MulticlassAccuracy

from ..errors import ConfigError


class ClassificationTask(L.LightningModule):
    """Trains `model` with the paper's recipe.

    Logs `train/loss`, `train/err` (%), `lr`, and `val/top1_acc`, `val/top5_acc`, `test/...`
    (fractions, accumulated exactly over the whole split by torchmetrics, across devices).
    """

    def __init__(self, model: nn.Module, recipe: DictConfig, *, num_classes: int, channels_last: bool = False,
                 compile_model: bool = False):
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

    def configure_model(self) -> None:
        if self.compile_model and not isinstance(self.model, torch._dynamo.eval_frame.OptimizedModule):
            self.model = torch.compile(self.model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last and x.ndim == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.model(x)

    # -- training -----------------------------------------------------------------------------
    def training_step(self, batch, batch_idx):
        x, y = batch
        logits = self(x)
        loss = F.cross_entropy(logits, y, label_smoothing=float(self.recipe.get("label_smoothing", 0.0)))
        # Kept on the device and read once per logging interval: no GPU sync on every step.
        self._pending_errors.append((logits.detach().argmax(1) != y).float().mean())
        if len(self._pending_errors) >= self.trainer.log_every_n_steps or self.global_step + 1 >= self.recipe.max_steps:
            self._track_training_error([100.0 * e for e in torch.stack(self._pending_errors).tolist()])
            self._pending_errors.clear()
        self.log("train/loss", loss, on_step=True, on_epoch=False)
        self.log("lr", self.optimizers().param_groups[0]["lr"], on_step=True, on_epoch=False)
        return loss

    def _track_training_error(self, errors: list[float]) -> None:
        """Called once per logging interval with that interval's batch errors (%)."""
        # Fig. 6's training curves: error averaged over each logging interval, not one batch.
        self.log("train/err", sum(errors) / len(errors), on_step=True)
        # The final training error averages the last tenth of the iterations.
        first_step = self.global_step + 1 - len(errors)
        self._tail_errors += [e for i, e in enumerate(errors) if first_step + i >= 0.9 * self.recipe.max_steps]
        self._recent_errors.extend(errors)
        window = self._recent_errors
        if self.warming_up and len(window) == window.maxlen:
            if sum(window) / len(window) < 100.0 * self.recipe.warmup.until_train_error:
                self.warming_up = False

    def on_train_end(self) -> None:
        if self._tail_errors:
            self.final_train_error = sum(self._tail_errors) / len(self._tail_errors)

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
        if r.optimizer != "sgd":
            raise ConfigError(f"recipe.optimizer={r.optimizer!r} is not supported. Allowed: sgd.")
        optimizer = torch.optim.SGD(self.parameters(), lr=r.lr, momentum=r.momentum,
                                    nesterov=bool(r.get("nesterov", False)), weight_decay=r.weight_decay)
        if r.schedule == "multistep":
            milestones = [round(f * r.max_steps) for f in r.milestones]
            warmup_factor = float(r.warmup.lr) / r.lr if r.get("warmup") else 1.0

            def factor(step: int) -> float:
                decay = r.gamma ** sum(step >= m for m in milestones)
                return decay * (warmup_factor if self.warming_up else 1.0)

            scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
            return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
        if r.schedule == "plateau":
            # Stepped once per epoch, after that epoch's validation (recipe.val_every_steps: null);
            # a step-interval frequency would count batches within an epoch, not across them.
            p = r.plateau
            scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
                optimizer, mode="max", factor=p.factor, patience=p.patience, threshold=p.threshold)
            return {"optimizer": optimizer,
                    "lr_scheduler": {"scheduler": scheduler, "monitor": p.monitor, "interval": "epoch",
                                     "frequency": 1, "strict": True}}
        raise ConfigError(f"recipe.schedule={r.schedule!r} is not supported. Allowed: multistep, plateau.")

    # The warm-up state decides the learning rate, so it must survive a resume.
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["warming_up"] = self.warming_up
        checkpoint["tail_errors"] = list(self._tail_errors)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.warming_up = checkpoint.get("warming_up", self.warming_up)
        self._tail_errors = list(checkpoint.get("tail_errors", []))
