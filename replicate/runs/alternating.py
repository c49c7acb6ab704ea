"""Faster R-CNN's 4-step alternating training (Sec. 3.2 (i)): four fits, each its own checkpoint
folder, sharing the conv layers from step 3 on."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from ..errors import ConfigError


log = logging.getLogger(__name__)


# Faster R-CNN Sec. 3.2 (i): what each of the four fits trains, from which weights.
ALTERNATING_STEPS = (
    "1: the RPN, from the ImageNet model",
    "2: a separate Fast R-CNN on step 1's proposals, from the ImageNet model",
    "3: the RPN's own layers on step 2's conv layers, which stay fixed",
    "4: Fast R-CNN's own layers on step 3's proposals, conv layers fixed",
)


def alternating_steps(recipe: DictConfig) -> list[int]:
    """`recipe.alternating_steps`: the training steps of the four fits (checked at compose:
    `validate.check_values`)."""
    return [int(n) for n in recipe.alternating_steps]


def fit_alternating(cfg: DictConfig, model: torch.nn.Module, make_model, fit, checkpoints: Path):
    """Faster R-CNN's 4-step alternating training (Sec. 3.2 (i), `ALTERNATING_STEPS`), each step
    a fit of `recipe.alternating_steps[k]` steps under the recipe's schedule:

    1. `model` (ImageNet-initialised) learns the RPN's losses alone;
    2. a second network from `make_model()` (ImageNet-initialised again: no shared layers yet)
       learns Fast R-CNN's losses on step 1's proposals, step 1's network held fixed;
    3. the second network's conv layers are frozen from here on; its RPN layers (never trained)
       learn the RPN's losses: the two tasks now share the conv layers;
    4. with the RPN frozen too, Fast R-CNN's own layers are fine-tuned on its proposals.

    `fit(model, recipe, folder)` is `train_detector`'s trainer; each step checkpoints in
    `checkpoints/step<k>/`, so an interrupted run resumes in the step it stopped in. Returns the
    last trainer and task (the unified network, ready to test), the steps restored from
    checkpoints (None: none) and the step counts."""
    steps = alternating_steps(cfg.recipe)
    resumed: list[int] = []

    def step(k: int, network: torch.nn.Module, stage: str):
        network.train_stage = stage
        folder = checkpoints / f"step{k}"
        trainer, task, resumed_step = fit(network, OmegaConf.merge(cfg.recipe, {"max_steps": steps[k - 1]}), folder,
                                          f"logs/step{k}")
        trainer.save_checkpoint(folder / "last.ckpt")  # complete, whatever checkpoint_every_steps
        if resumed_step:
            resumed.append(resumed_step)
        log.info("alternating training, step %s: done (%d steps)", ALTERNATING_STEPS[k - 1], steps[k - 1])
        return trainer, task

    if not model.training_stages:
        raise ConfigError(f"recipe.training=alternating: {cfg.model.name} has no separate RPN and detector "
                          "losses; it applies to Faster R-CNN only. Use recipe.training=joint.")
    model.head.requires_grad_(False)
    step(1, model, "rpn")
    detector = make_model()
    detector.rpn.requires_grad_(False)
    detector.use_proposer(model)
    step(2, detector, "detector")
    detector.use_proposer(None)
    detector.trunk.requires_grad_(False)
    detector.head.requires_grad_(False)
    detector.rpn.requires_grad_(True)
    step(3, detector, "rpn")
    detector.rpn.requires_grad_(False)
    detector.head.requires_grad_(True)
    trainer, task = step(4, detector, "detector")
    detector.train_stage = "joint"
    trainer.save_checkpoint(checkpoints / "last.ckpt")  # the unified network, for load_trained
    return trainer, task, (sum(resumed) if resumed else None), steps
