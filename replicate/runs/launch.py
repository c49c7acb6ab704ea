"""`run(cfg)`: train and test one experiment, cached under the hash of its resolved config (the
run folder: `runs.store`); `evaluate(cfg)`: test a classifier's checkpoint again."""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import Callback
from omegaconf import DictConfig, OmegaConf

from .. import determinism
from ..config import is_detection_data
from ..data import DOWNLOADABLE, build_datamodule, prepare
from ..errors import ConfigError, DatasetMissingError, ReplicateError
from ..tasks import ClassificationTask
from .classification import build_model, train_classifier
from .detection import train_detector
from .store import checkpoint_step, hold, load_result, run_dir
from .trainer import finish_wandb, log_cached_to_wandb, quiet_lightning


def run(cfg: DictConfig, *, force: bool = False, callbacks: Sequence[Callback] = (), log_cached: bool = False) -> dict:
    """Train and test the experiment `cfg` describes and return its metrics (errors in percent;
    detectors: `detection.train_detector`, test mAP).

    A finished run with the same config hash is returned from disk without training
    (`force=True` trains again); an unfinished one resumes from its last checkpoint. One process
    writes a run folder at a time (`hold`): a second launch of the same config waits for the
    first and then returns its result, and `force` refuses to delete a folder another process
    is writing.

    With `logger=wandb`, the run logs to its own W&B run (`wandb_logger`). A cached run trains
    nothing and so logs nothing: it says so, and `log_cached=True` uploads its stored metrics.
    """
    if cfg.experiment is None:
        raise ConfigError("run() needs an experiment: compose(paper, profile, ['experiment=<name>']).")
    directory = run_dir(cfg)
    if (directory / "result.json").exists() and not force:
        return _cached(cfg, directory, log_cached)
    require_data(cfg)  # before the lock: a run without its data leaves nothing behind
    with hold(directory, force=force):
        if (directory / "result.json").exists() and not force:  # finished while we waited
            return _cached(cfg, directory, log_cached)
        if force:  # start clean: no stale checkpoint to resume from, no old curves to merge
            shutil.rmtree(directory, ignore_errors=True)
        train = train_detector if is_detection_data(cfg.data.get("name")) else train_classifier
        try:
            return train(cfg, directory, callbacks)
        finally:
            finish_wandb(cfg)


_LOOKED_FOR: ContextVar[dict | None] = ContextVar("looked_for", default=None)


@contextmanager
def each_dataset_looked_for_once():
    """Within this block, each data set is looked for (and its download tried) once: a paper's
    plan reads one set in up to 30 runs, and a cluster node without a network would otherwise wait
    out a failed download for each of them."""
    token = _LOOKED_FOR.set({})
    try:
        yield
    finally:
        _LOOKED_FOR.reset(token)


def require_data(cfg: DictConfig) -> None:
    """Make sure the run's data set is on disk before a network, a trainer or a run folder is
    made: a set that may be downloaded (`data.download`, `DOWNLOADABLE`) is downloaded now, by
    the launching process only (the ranks a multi-GPU run starts later find it there). Raises
    `DatasetMissingError` (with where to get it) when it is absent and cannot be fetched:
    ImageNet and COCO never are, and a machine without a network cannot fetch any."""
    looked_for = _LOOKED_FOR.get()
    key = (cfg.data.name, str(cfg.paths.data_dir), bool(cfg.data.get("download")))
    if looked_for is not None and key in looked_for:
        if looked_for[key] is not None:
            raise DatasetMissingError(looked_for[key])
        return
    try:
        _fetch_if_missing(cfg)
    except DatasetMissingError as exc:
        if looked_for is not None:
            looked_for[key] = str(exc)
        raise
    if looked_for is not None:
        looked_for[key] = None


def _fetch_if_missing(cfg: DictConfig) -> None:
    try:
        prepare(cfg.data.name, cfg.paths.data_dir, download=False)
    except DatasetMissingError:
        if not (cfg.data.get("download") and cfg.data.name in DOWNLOADABLE):
            raise
        if os.environ.get("LOCAL_RANK", "0") == "0":
            prepare(cfg.data.name, cfg.paths.data_dir, download=True)


def _cached(cfg: DictConfig, directory: Path, log_cached: bool) -> dict:
    result = load_result(directory)
    if cfg.logger.name == "wandb":
        if log_cached:
            log_cached_to_wandb(cfg, result)
        else:
            print(f"{cfg.paper.id}/{cfg.experiment}: cached in {directory}, so nothing was logged to W&B now. "
                  "Upload its stored metrics with `python -m replicate run ... logger=wandb --log-cached`.", flush=True)
    return result


def evaluate(cfg: DictConfig, checkpoint: str = "last") -> dict:
    """Test a classifier's trained weights on its test set: the run's `last` or `best` checkpoint
    (checkpoints/last.ckpt, best.ckpt), or a checkpoint file. Nothing is cached or written."""
    if cfg.experiment is None:
        raise ConfigError("evaluate needs an experiment: paper=<id> experiment=<name>.")
    if is_detection_data(cfg.data.get("name")):
        raise ConfigError(f"{cfg.experiment} is a detector: its run scores it on the test set (test mAP, detections.pt); "
                          "the notebooks reload it with replicate.runs.detection.load_trained.")
    directory = run_dir(cfg)
    path = directory / "checkpoints" / f"{checkpoint}.ckpt" if checkpoint in ("last", "best") else Path(checkpoint)
    if not path.is_file():
        raise ReplicateError(f"{path}: no such checkpoint. Train the run first (python -m replicate run "
                             f"paper={cfg.paper.id} experiment={cfg.experiment} ...), or name a checkpoint file.")
    quiet_lightning()
    determinism.prepare(cfg)
    step = checkpoint_step(str(path))
    datamodule = build_datamodule(
        cfg.data, data_dir=cfg.paths.data_dir, batch_size=cfg.recipe.batch_size, augment=cfg.recipe.augment,
        normalize=cfg.recipe.normalize, seed=cfg.seed, num_workers=min(8, os.cpu_count() or 1)
        if cfg.data.name == "imagenet" else 0)
    task = ClassificationTask(build_model(cfg), cfg.recipe, num_classes=cfg.data.num_classes,
                              channels_last=cfg.speed.channels_last)
    trainer_args = {k: v for k, v in OmegaConf.to_container(cfg.trainer, resolve=True).items()
                    if k in ("accelerator", "precision", "deterministic")}
    trainer = L.Trainer(**trainer_args, devices=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    tested = trainer.test(task, datamodule=datamodule, ckpt_path=str(path), verbose=False)[0]
    return {"experiment": cfg.experiment, "checkpoint": str(path), "step": step,
            "test_top1_err": 100.0 * (1.0 - float(tested["test/top1_acc"])),
            "test_top5_err": 100.0 * (1.0 - float(tested["test/top5_acc"]))}
