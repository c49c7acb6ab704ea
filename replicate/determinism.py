"""Same seed, same numbers: what a run fixes before it trains, and what it records.

A reduced run is deterministic on a CPU when every random draw comes from a seeded stream, the
kernels are the deterministic ones, and the thread count is the profile's rather than whatever
the machine or its load offers (a reduction split over another number of threads rounds
differently). Each result records the threads and the CPU it ran on: CPUs of other kinds
dispatch to other kernels and may differ in the last bits, which the floors leave room for.
"""

from __future__ import annotations

import platform
import random
from functools import cache

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from omegaconf import DictConfig


def prepare(cfg: DictConfig) -> None:
    """Seed every generator (Python, NumPy, torch, data-loader workers) with `cfg.seed` and use the
    profile's thread count (`profile.threads`; null: torch's default, all cores)."""
    threads = cfg.profile.get("threads")
    if threads:
        torch.set_num_threads(int(threads))
    L.seed_everything(cfg.seed, workers=True, verbose=False)


class RngState(Callback):
    """Keeps the global random streams (torch's CPU and CUDA, NumPy's, Python's) in each checkpoint
    and restores them on resume: dropout, mixup and the detection augmentations draw from them,
    so a run resumed mid-training draws what the uninterrupted run drew."""

    def state_dict(self) -> dict:
        kind, keys, position, has_gauss, gauss = np.random.get_state()
        return {
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            # Plain lists and numbers: the checkpoint stays loadable with weights_only=True.
            "numpy": [kind, keys.tolist(), position, has_gauss, gauss],
            "python": random.getstate(),
        }

    def load_state_dict(self, state: dict) -> None:
        torch.set_rng_state(state["torch"])
        if state["cuda"] and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(state["cuda"])
        kind, keys, position, has_gauss, gauss = state["numpy"]
        np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), position, has_gauss, gauss))
        version, internal, gauss_next = state["python"]
        random.setstate((version, tuple(internal), gauss_next))


@cache
def cpu_name() -> str:
    """The CPU's model name (/proc/cpuinfo on Linux), or what `platform` knows elsewhere."""
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict:
    """What a result was computed on: {threads, cpu, torch}."""
    return {"threads": torch.get_num_threads(), "cpu": cpu_name(), "torch": torch.__version__}
