"""What every fit shares: Lightning kept quiet, the CSV (and W&B) loggers of a run folder,
progress lines for logs, the step timer, and W&B's one run per experiment."""

from __future__ import annotations

import logging
import time
import warnings
from pathlib import Path

import pandas as pd
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import CSVLogger
from omegaconf import DictConfig

from ..config import config_hash, run_spec
from ..errors import ConfigError
from .store import load_curves


def quiet_lightning() -> None:
    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.WARNING)
    # In-memory datasets are fed without worker processes on purpose (DESIGN: no workers for
    # in-memory data); Lightning's advice to add workers does not apply.
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")  # raised inside Lightning 2.6 itself
    # The data modules keep the training order in the checkpoint themselves (data/sampler.py), so a
    # mid-epoch resume is exact although the loader has no state_dict of its own.
    warnings.filterwarnings("ignore", message=".*your dataloader is not resumable.*")
    # A resumed run writes into its own checkpoint folder on purpose.
    warnings.filterwarnings("ignore", message=".*Checkpoint directory .* exists and is not empty.*")


def run_loggers(cfg: DictConfig, directory: Path, name: str = "logs") -> list:
    """CSV logs in `directory`/`name`/attempt-<n> (a resumed run is the next attempt), and W&B if asked."""
    attempt = 1 + sum(1 for _ in (directory / name).glob("attempt-*"))
    loggers = [CSVLogger(save_dir=str(directory), name=name, version=f"attempt-{attempt}")]
    if cfg.logger.name == "wandb":
        loggers.append(wandb_logger(cfg, directory, name[len("logs"):]))
    elif cfg.logger.name != "csv":
        raise ConfigError(f"logger={cfg.logger.name!r} is not supported. Allowed: csv, wandb.")
    return loggers


def progress_log(cfg: DictConfig, recipe: DictConfig, stage: str = "") -> list[Callback]:
    """Progress as lines (`ProgressLog`) when Lightning's progress bar is off, as it is by default."""
    if cfg.trainer.get("enable_progress_bar"):
        return []
    from ..progress import ProgressLog

    return [ProgressLog(f"{cfg.paper.id}/{cfg.experiment}{stage}", recipe.max_steps, recipe.batch_size)]


def wandb_id(cfg: DictConfig, stage: str = "") -> str:
    """The experiment's W&B run id: stable (the config hash), so a resumed run continues its own
    W&B run; `stage` ("/step1"...) names one fit of a multi-fit training (Faster R-CNN's 4 steps)."""
    return f"{cfg.paper.id}-{cfg.experiment}-{config_hash(cfg)}{stage.replace('/', '-')}"


def wandb_logger(cfg: DictConfig, directory: Path, stage: str = ""):
    """One W&B run per experiment (and per fit of a multi-fit training): its id from the config
    hash, grouped by paper, tagged with the profile and experiment, holding the experiment's own
    config (what its hash covers), not the paper's tables. A run still open in this process (the
    previous experiment of a notebook) is finished first rather than written into."""
    from lightning.pytorch.loggers import WandbLogger

    return WandbLogger(project=cfg.logger.project, mode=cfg.logger.mode, save_dir=str(directory),
                       id=wandb_id(cfg, stage), resume="allow", name=f"{cfg.paper.id}/{cfg.experiment}{stage}",
                       group=cfg.paper.id, tags=[cfg.profile.name, cfg.experiment], config=run_spec(cfg),
                       reinit="finish_previous")


def finish_wandb(cfg: DictConfig) -> None:
    """Close the W&B run of an experiment that logged to one (a no-op otherwise)."""
    if cfg.logger.name == "wandb":
        import wandb

        wandb.finish()


def log_cached_to_wandb(cfg: DictConfig, result: dict) -> None:
    """Upload a cached run's stored curves (its CSV logs) and final metrics to its own W&B run
    (the same id it had, or would have had, when it trained)."""
    import wandb

    directory = Path(result["run_dir"])
    with wandb.init(project=cfg.logger.project, mode=cfg.logger.mode, dir=str(directory), id=wandb_id(cfg),
                    resume="allow", name=f"{cfg.paper.id}/{cfg.experiment}", group=cfg.paper.id,
                    tags=[cfg.profile.name, cfg.experiment, "from-cache"], config=run_spec(cfg),
                    reinit="finish_previous") as logged:
        curves = load_curves(result)
        for step, row in curves.set_index("step").iterrows():
            values = {k: float(v) for k, v in row.items() if pd.notna(v) and k not in ("epoch",)}
            if values:
                logged.log(values, step=int(step))
        logged.summary.update({k: v for k, v in result.items() if isinstance(v, (int, float)) and k != "cached"})


def step_seconds(callback_times: list[float]) -> float | None:
    return round(sum(callback_times) / len(callback_times), 4) if callback_times else None


class StepTimer(Callback):
    """Seconds of each training step (forward, backward, update), wall clock and the process's
    CPU time (all its threads: on a shared machine the wall clock overstates a quiet one's)."""

    def __init__(self):
        self.times: list[float] = []
        self.cpu_times: list[float] = []
        self._start = self._cpu = 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self._start, self._cpu = time.perf_counter(), time.process_time()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.times.append(time.perf_counter() - self._start)
        self.cpu_times.append(time.process_time() - self._cpu)
