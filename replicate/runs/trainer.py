"""The training skeleton both runners share (`classification.train_classifier`,
`detection.train_detector`), bottom up: a run begun (`begin_run`: Lightning kept quiet, the random
streams seeded; `write_config`: the resolved config in the run folder), its trainer (`make_trainer`: the last checkpoint
every `checkpoint_every_steps`, the saved random state, progress lines, the CSV and W&B loggers,
the full profile's refusal on a CPU), a fit resumed from the last checkpoint (`fit_resumed`), and
the result written (`run_result`, `finish_run`). Beside them: the step timer and W&B's one run per
experiment."""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import lightning as L
import pandas as pd
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from omegaconf import DictConfig, OmegaConf

from .. import determinism
from ..config import config_hash, run_spec
from ..errors import ConfigError
from ..guard import RefuseFullOnCpu
from ..measure.complexity import count_params
from .store import checkpoint_step, load_curves, write_result


def begin_run(cfg: DictConfig) -> None:
    """Before anything trains: Lightning kept quiet and every random stream seeded."""
    quiet_lightning()
    determinism.prepare(cfg)


def write_config(cfg: DictConfig, directory: Path) -> None:
    """The run folder, with the resolved config the run trains (config.yaml)."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))


def make_trainer(cfg: DictConfig, directory: Path, recipe: DictConfig, *, checkpoints: Path,
                 validation: Mapping, extra: Sequence[Callback] = (), callbacks: Sequence[Callback] = (),
                 logs: str = "logs") -> L.Trainer:
    """A trainer for `recipe` (the run's, or one stage's of a multi-fit training) counted in
    iterations (`max_steps`, epochs unbounded), validating as `validation` says (Lightning's
    val_check_interval, check_val_every_n_epoch, limit_val_batches). Its callbacks, in order: the
    last checkpoint in `checkpoints` every `checkpoint_every_steps`, the runner's `extra`, the
    random state saved with each checkpoint, progress lines, the caller's `callbacks`, and
    `RefuseFullOnCpu`. It logs to `directory`/`logs`. The batch must split over the devices."""
    checkpoint = ModelCheckpoint(dirpath=checkpoints, save_last=True, save_top_k=0,
                                 every_n_train_steps=recipe.checkpoint_every_steps)
    trainer = L.Trainer(
        **OmegaConf.to_container(cfg.trainer, resolve=True),
        max_steps=recipe.max_steps, max_epochs=-1, num_sanity_val_steps=0, **validation,
        callbacks=[checkpoint, *extra, determinism.RngState(), *progress_log(cfg, recipe, logs[len("logs"):]),
                   *callbacks, RefuseFullOnCpu(cfg)],
        logger=run_loggers(cfg, directory, logs), default_root_dir=str(directory),
    )
    if recipe.batch_size % trainer.world_size:
        raise ConfigError(f"recipe.batch_size={recipe.batch_size} does not split over {trainer.world_size} devices.")
    return trainer


def fit_resumed(trainer: L.Trainer, task: L.LightningModule, datamodule, checkpoints: Path) -> tuple[int | None, float]:
    """Fit `task`, resumed from `checkpoints`/last.ckpt when a previous attempt left one; returns
    the step it resumed from (None: from scratch) and the fit's seconds."""
    last = checkpoints / "last.ckpt"
    resumed = str(last) if last.exists() else None
    resumed_step = checkpoint_step(resumed)  # read now: fit() overwrites last.ckpt
    start = time.perf_counter()
    trainer.fit(task, datamodule=datamodule, ckpt_path=resumed)
    return resumed_step, time.perf_counter() - start


def run_result(cfg: DictConfig, model: torch.nn.Module, directory: Path, *, steps: int, train_seconds: float,
               resumed_step: int | None, scores: Mapping) -> dict:
    """result.json's fields: what ran (paper, experiment, profile, config hash, model, data set),
    the network's parameters, `scores` (the runner's metrics and extras), the steps and seconds
    trained, where it resumed, its run folder and the machine (`determinism.machine`)."""
    return {
        "paper": cfg.paper.id, "experiment": cfg.experiment, "profile": cfg.profile.name,
        "config_hash": config_hash(cfg), "model": cfg.model.name, "dataset": cfg.data.name,
        "params": count_params(model), "steps": steps, **scores,
        "train_seconds": round(train_seconds, 2), "resumed_from_step": resumed_step, "run_dir": str(directory),
        **determinism.machine(),
    }


def finish_run(trainer: L.Trainer, result: dict, directory: Path, required: Sequence[str]) -> dict:
    """result.json written (by the first process only; `write_result` refuses an incomplete run
    whose `required` metrics are missing or not finite) and the result returned as trained now."""
    if trainer.is_global_zero:
        write_result(result, directory / "result.json", required)
    return {**result, "cached": False}


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
    CPU time (all its threads: on a shared machine the wall clock overstates a quiet one's), and
    the wall-clock wait before each step for its batch (the loader, the copy to the device and
    the loop's own work between steps): `speed` gives their means and the waiting share."""

    SKIPPED = 5  # the first steps warm up (allocators, oneDNN primitives, cudnn benchmark)

    def __init__(self):
        self.times: list[float] = []
        self.cpu_times: list[float] = []
        self.waits: list[float] = []
        self._start = self._cpu = 0.0
        self._end: float | None = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self._start, self._cpu = time.perf_counter(), time.process_time()
        if self._end is not None:
            self.waits.append(self._start - self._end)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.times.append(time.perf_counter() - self._start)
        self.cpu_times.append(time.process_time() - self._cpu)
        self._end = time.perf_counter()

    def on_train_start(self, trainer, pl_module):
        self._end = None  # a new fit (Faster R-CNN's next stage): its set-up is not waiting for data

    def on_validation_start(self, trainer, pl_module):
        self._end = None  # a validation pass between two steps is not waiting for data

    def speed(self) -> dict:
        """Mean seconds per step (wall and CPU) and the share of the training loop's wall time
        spent waiting for batches (`data_wait_share`: near 0 when the data path keeps up),
        after the warm-up steps."""
        times, cpu, waits = (values[self.SKIPPED:] or values for values in (self.times, self.cpu_times, self.waits))
        busy, waiting = sum(times), sum(waits)
        share = round(waiting / (busy + waiting), 4) if waits and busy + waiting > 0 else None
        return {"seconds_per_step": step_seconds(times), "cpu_seconds_per_step": step_seconds(cpu),
                "data_wait_share": share}
