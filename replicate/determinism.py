"""Same seed, same numbers: what a run fixes before it trains, and what it records.

A reduced run is deterministic on a CPU when every random draw comes from a seeded stream, the
kernels are the deterministic ones, and the thread count is the profile's rather than whatever
the machine or its load offers (a reduction split over another number of threads rounds
differently). Each result records the threads and the CPU it ran on: CPUs of other kinds
dispatch to other kernels and may differ in the last bits, which the floors leave room for.
"""

from __future__ import annotations

import platform
from functools import cache

import lightning as L
import torch
from omegaconf import DictConfig


def prepare(cfg: DictConfig) -> None:
    """Seed every generator (Python, NumPy, torch, data-loader workers) with `cfg.seed` and use the
    profile's thread count (`profile.threads`; null: torch's default, all cores)."""
    threads = cfg.profile.get("threads")
    if threads:
        torch.set_num_threads(int(threads))
    L.seed_everything(cfg.seed, workers=True, verbose=False)


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
