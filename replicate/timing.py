"""Times measured on the hardware present, for the papers' speed tables (`kind: speed`, compared
as ratios by `tables.Report.speed`, since absolute times depend on the hardware).

On a GPU a stage's time is wall clock, synchronised before each reading. On a CPU it is the
process's CPU time on one thread: the machine may be shared, and CPU time is what a quiet one
would take.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from contextlib import contextmanager

import torch
from torch import nn

__all__ = ["Clock", "hardware", "one_thread_on_cpu", "detector_fps", "classifier_fps"]


class Clock:
    """Readings in seconds: synchronised wall clock on CUDA, process time elsewhere."""

    def __init__(self, device: torch.device | str):
        self.cuda = torch.device(device).type == "cuda"

    def now(self) -> float:
        if self.cuda:
            torch.cuda.synchronize()
            return time.perf_counter()
        return time.process_time()


def hardware() -> str:
    """What the times were measured on, for the tables' notes."""
    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"one CPU thread, process time ({os.cpu_count()} cores present)"


@contextmanager
def one_thread_on_cpu(device: torch.device | str):
    """On a CPU, run the timed code on one thread (process time then equals a quiet core's time)."""
    threads = torch.get_num_threads()
    cpu = torch.device(device).type != "cuda"
    if cpu:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if cpu:
            torch.set_num_threads(threads)


@torch.no_grad()
def detector_fps(model: nn.Module, images: Sequence[torch.Tensor], input_sizes: Mapping[int, int] | Sequence[int], *,
                 warmup: int = 2) -> dict[str, float]:
    """Frames per second of a YOLO detector at each network input size, one image at a time
    (batch 1, as YOLOv2 Table 3 and YOLOv4 Table 10), resizing, network, decoding and NMS
    included. `input_sizes` maps the paper's sizes to the sizes run (the reduced profile scales
    them; `replicate.experiment_detection.test_input_sizes`) or lists sizes run as they are;
    returns `{"fps_<paper size>": ...}`. `model.input_size` is restored afterwards."""
    sizes = dict(input_sizes) if isinstance(input_sizes, Mapping) else {int(s): int(s) for s in input_sizes}
    device = next(model.parameters()).device
    clock = Clock(device)
    original = model.input_size
    out = {}
    model.eval()
    try:
        with one_thread_on_cpu(device):
            for label, size in sizes.items():
                model.input_size = int(size)
                for image in images[:warmup]:
                    model([image.to(device)])
                start = clock.now()
                for image in images:
                    model([image.to(device)])
                out[f"fps_{int(label)}"] = len(images) / max(clock.now() - start, 1e-9)
    finally:
        model.input_size = original
    return out


@torch.no_grad()
def classifier_fps(models: dict[str, nn.Module], input_size: int, *, batch_size: int = 1, repeats: int = 5,
                   warmup: int = 1) -> dict[str, float]:
    """Images per second of each classifier on [batch_size, 3, input_size, input_size] inputs
    (YOLOv3 Table 2's backbone comparison at 256 x 256): `{"fps_<name>": ...}`."""
    out = {}
    for name, model in models.items():
        device = next(model.parameters()).device
        clock = Clock(device)
        x = torch.randn(batch_size, 3, input_size, input_size, device=device)
        model.eval()
        with one_thread_on_cpu(device):
            for _ in range(warmup):
                model(x)
            start = clock.now()
            for _ in range(repeats):
                model(x)
            out[f"fps_{name}"] = repeats * batch_size / max(clock.now() - start, 1e-9)
    return out
