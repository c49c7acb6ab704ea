"""`RefuseFullOnCpu`: the full profile's recipes take GPU-days; started by mistake on a machine
without a GPU (once the real datasets are there), they would run for months. The run stops
before its first step with the expected duration, unless forced with `profile.allow_cpu=true`.
"""

from __future__ import annotations

import datetime
import time

import torch
from lightning.pytorch.callbacks import Callback
from omegaconf import DictConfig

from .measure.complexity import count
from .errors import ConfigError


def cpu_gflops(size: int = 512, repeats: int = 5) -> float:
    """This CPU's measured float32 matrix-multiply throughput (GFLOP/s), the best of `repeats`."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best / 1e9


def expected_seconds(model: torch.nn.Module, input_size, steps: int, batch_size: int) -> float:
    """A training's duration on this CPU at its measured matmul speed: forward and backward are
    about three times the forward's multiply-adds, two FLOPs each. Real runs are slower (memory,
    convolutions below matmul speed): this is a lower bound."""
    macs = count(model, input_size).macs
    return 3 * 2 * macs * batch_size * steps / (cpu_gflops() * 1e9)


def full_profile_on_cpu(cfg: DictConfig, device_type: str | None = None) -> bool:
    """Whether `cfg` is the full profile about to run on a CPU (`device_type`, by default this
    machine's best: cuda when present) without `profile.allow_cpu`: its trainings are refused, and
    its timings, made for the paper's GPU, are not taken either."""
    if device_type is None:
        device_type = "cuda" if torch.cuda.is_available() else "cpu"
    return cfg.profile.name == "full" and not cfg.profile.get("allow_cpu") and device_type == "cpu"


class RefuseFullOnCpu(Callback):
    """Raises `ConfigError` at the start of a full-profile fit on a CPU (after the data loaded, so a
    missing dataset is still reported as such), unless `profile.allow_cpu` is true. The message
    estimates the training's duration where the data module knows its input size (classifiers)."""

    def __init__(self, cfg: DictConfig):
        self.cfg = cfg

    def on_fit_start(self, trainer, pl_module) -> None:
        cfg = self.cfg
        if not full_profile_on_cpu(cfg, trainer.strategy.root_device.type):
            return
        recipe = cfg.recipe
        estimate = ""
        input_size = getattr(trainer.datamodule, "input_size", None)
        if input_size is not None:
            seconds = expected_seconds(pl_module.model, input_size, recipe.max_steps, recipe.batch_size)
            estimate = f" At this CPU's measured speed that is at least {datetime.timedelta(seconds=round(seconds))}."
        raise ConfigError(
            f"{cfg.paper.id}/{cfg.experiment}: the full profile trains {recipe.max_steps} iterations of "
            f"{recipe.batch_size} images, and this machine has no GPU.{estimate} Run it where a GPU is, use "
            "profile=reduced, or force it with profile.allow_cpu=true.")
