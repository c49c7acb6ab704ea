"""`ProgressLog`: progress as plain lines, for logs that are not a terminal (papermill, DVC
stages, cluster jobs), where a progress bar either floods or sits still.

One line after the first step (so a job shows life within seconds), then one per interval of wall
time and one at the last step:

    resnet/resnet20_cifar10  step 40/240  loss 1.2345  812 img/s  ETA 0:00:25
"""

from __future__ import annotations

import datetime
import sys
import time
from typing import TextIO

from lightning.pytorch.callbacks import Callback


class ProgressLog(Callback):
    """Prints step/total, the training loss, images per second and the time left, at most once
    every `every_seconds` (and at the first and last steps). Added by the runners whenever
    Lightning's progress bar is off (`trainer.enable_progress_bar=false`, the default)."""

    def __init__(self, label: str, total_steps: int, batch_size: int, every_seconds: float = 30.0,
                 stream: TextIO | None = None):
        self.label, self.total, self.batch_size = label, int(total_steps), int(batch_size)
        self.every = float(every_seconds)
        self.stream = stream
        self._start: float | None = None
        self._start_step = 0
        self._last: float | None = None

    def on_train_start(self, trainer, pl_module) -> None:
        self._start, self._start_step, self._last = time.monotonic(), trainer.global_step, None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        now, step = time.monotonic(), trainer.global_step
        if self._last is not None and now - self._last < self.every and step < self.total:
            return
        self._last = now
        if self._start is None:
            self._start, self._start_step = now, step
        done, elapsed = step - self._start_step, max(now - self._start, 1e-9)
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        parts = [self.label, f"step {step}/{self.total}"]
        if loss is not None:
            parts.append(f"loss {float(loss):.4f}")
        if done > 0:
            rate = done / elapsed
            parts.append(f"{rate * self.batch_size:.0f} img/s")
            parts.append(f"ETA {datetime.timedelta(seconds=round(max(self.total - step, 0) / rate))}")
        print("  ".join(parts), file=self.stream or sys.stdout, flush=True)
