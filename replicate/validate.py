"""Types and ranges of the values a run reads, checked when an experiment is composed: a bad
override fails at once, naming the key, the value and what is allowed, before any folder or file
is written (Hydra's own checks cover the names of keys and groups, not their values)."""

from __future__ import annotations

import math
from collections.abc import Callable

from omegaconf import DictConfig, OmegaConf

from .errors import ConfigError

TRAINING_SCHEMES = ("joint", "alternating")  # recipe.training of the two-stage detectors

# Lightning's precision flags (lightning.pytorch.trainer.connectors.accelerator_connector).
PRECISIONS = ("64-true", "32-true", "16-mixed", "bf16-mixed", "16-true", "bf16-true", "64", "32", "16", "bf16",
              "transformer-engine", "transformer-engine-float16")


# speed.compile: off, on (torch.compile's default mode), or one of its modes by name;
# reduce-overhead records CUDA graphs (the small CIFAR networks' steps are bound by kernel launches).
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _integer(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# (dotted key, test, what is allowed, may it be null)
RULES: tuple[tuple[str, Callable, str, bool], ...] = (
    ("seed", _integer, "an integer", False),
    ("recipe.lr", lambda v: _number(v) and v > 0, "a number > 0", False),
    ("recipe.max_steps", lambda v: _integer(v) and v >= 1, "an integer >= 1 (training steps)", False),
    ("recipe.batch_size", lambda v: _integer(v) and v >= 1, "an integer >= 1", False),
    ("recipe.weight_decay", lambda v: _number(v) and v >= 0, "a number >= 0", True),
    ("recipe.momentum", lambda v: _number(v) and 0 <= v < 1, "a number in [0, 1)", True),
    ("recipe.val_every_steps", lambda v: _integer(v) and v >= 1, "an integer >= 1, or null", True),
    ("recipe.checkpoint_every_steps", lambda v: _integer(v) and v >= 1, "an integer >= 1", True),
    ("recipe.warmup_steps_fraction", lambda v: _number(v) and 0 <= v < 1, "a number in [0, 1)", True),
    ("data.train_subset", lambda v: _integer(v) and v >= 1, "an integer >= 1, or null (all)", True),
    ("data.test_subset", lambda v: _integer(v) and v >= 1, "an integer >= 1, or null (all)", True),
    ("data.image_size", lambda v: _integer(v) and v >= 1, "an integer >= 1 (pixels)", True),
    ("trainer.precision", lambda v: str(v) in PRECISIONS, "one of " + ", ".join(PRECISIONS), False),
    ("trainer.num_nodes", lambda v: _integer(v) and v >= 1, "an integer >= 1", True),
    ("speed.compile", lambda v: isinstance(v, bool) or v in COMPILE_MODES,
     "true, false or one of torch.compile's modes: " + ", ".join(COMPILE_MODES), False),
)


def check_values(cfg: DictConfig) -> None:
    """Raise `ConfigError` for the first value outside its rule (`RULES`), and for a training subset
    smaller than one batch (a run would train zero steps)."""
    for key, test, allowed, nullable in RULES:
        node, _, leaf = key.rpartition(".")
        parent = OmegaConf.select(cfg, node) if node else cfg
        if parent is None or leaf not in parent:
            continue
        value = parent[leaf]
        if value is None and nullable:
            continue
        if not test(value):
            raise ConfigError(f"{key}={value!r} is not allowed: it must be {allowed}.")
    training = OmegaConf.select(cfg, "recipe.training")
    if training is not None and training not in TRAINING_SCHEMES:
        raise ConfigError(f"recipe.training={training!r} is not supported. Allowed: {', '.join(TRAINING_SCHEMES)} "
                          "(alternating: Faster R-CNN's 4-step scheme, Sec. 3.2).")
    if training == "alternating":
        steps = OmegaConf.select(cfg, "recipe.alternating_steps")
        if steps is None or len(steps) != 4 or not all(_integer(n) and n >= 1 for n in steps):
            raise ConfigError(f"recipe.alternating_steps={steps!r}: recipe.training=alternating needs four positive "
                              "step counts, one per step of Sec. 3.2 (RPN, Fast R-CNN, RPN, Fast R-CNN), "
                              "e.g. [80000, 40000, 80000, 40000].")
    subset, batch = OmegaConf.select(cfg, "data.train_subset"), OmegaConf.select(cfg, "recipe.batch_size")
    if _integer(subset) and _integer(batch) and subset < batch:
        raise ConfigError(f"data.train_subset={subset} is less than one batch (recipe.batch_size={batch}): "
                          "give at least one batch of images, or null for all.")
