"""`run(cfg)`: train and evaluate one experiment, cached under the hash of its resolved config.

A run lives in `<paths.run_dir>/<paper>/<experiment>/<hash>/`:

    config.yaml          the resolved config
    checkpoints/last.ckpt  written every `recipe.checkpoint_every_steps`; a rerun resumes from it
    checkpoints/best.ckpt  the best validation top-1 (classifiers; `evaluate(cfg, "best")` tests it)
    logs/attempt-N/metrics.csv  Lightning's CSV log of each attempt (a resume starts a new one)
    result.json          written last and atomically: its presence means the run is finished

So a notebook executed after a cluster run (`python -m replicate run ...`) finds result.json and
trains nothing; a run killed half-way continues from its last checkpoint.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import socket
import time
import warnings
from collections.abc import Sequence
from contextlib import contextmanager
from pathlib import Path

import lightning as L
import pandas as pd
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from omegaconf import DictConfig, OmegaConf

from . import determinism, models
from .complexity import count_params
from .config import compose, config_hash
from .data import build_datamodule
from .errors import (ConfigError, CorruptFileError, DatasetMissingError, IncompleteRunError, ReplicateError,
                     RunLockedError, choices)
from .guard import RefuseFullOnCpu
from .tasks import ClassificationTask

log = logging.getLogger(__name__)


def run_dir(cfg: DictConfig) -> Path:
    return Path(cfg.paths.run_dir) / cfg.paper.id / (cfg.experiment or "adhoc") / config_hash(cfg)


def initial_weights(cfg: DictConfig) -> dict | None:
    """The state dict `model.backbone_weights` names, or None without one. An unresolved
    `model.backbone_from` and a missing file are `ConfigError`s that say what to do."""
    weights, source = cfg.model.get("backbone_weights"), cfg.model.get("backbone_from")
    if source and not weights:
        raise ConfigError(f"model.backbone_from={source!r} is resolved by replicate.experiment.run_all (the "
                          f"notebook) or `python -m replicate run`, which train {source} first; here give "
                          "model.backbone_weights=<state dict> instead.")
    if not weights:
        return None
    path = Path(str(weights)).expanduser()
    if not path.is_file():
        raise ConfigError(f"model.backbone_weights={weights!r}: no such file. Give the path of a state dict of "
                          f"{cfg.model.name} or of the part it starts from (experiment.save_weights writes one), "
                          "or null to start afresh.")
    state = torch.load(path, map_location="cpu", weights_only=True)
    return state.get("state_dict", state)


def build_model(cfg: DictConfig):
    """The experiment's network, sized for the dataset in use (classes, input channels), with
    Quant-Noise on its weights when `cfg.quant` asks for it (conf/quant/, replicate.quant).

    `model.backbone_weights` (a state dict of the same network, e.g. written by `save_weights`)
    starts it from trained weights: a fine-tuning run (YOLOv2's Darknet-19 at 448 from its 224
    run, through `model.backbone_from`)."""
    from . import quant  # imported here: replicate.quant imports this module's neighbours

    chain = ("backbone_weights", "backbone_from")
    kwargs = {k: v for k, v in OmegaConf.to_container(cfg.model, resolve=True).items() if k not in ("name", *chain)}
    model = models.build(cfg.model.name, num_classes=cfg.data.num_classes, in_channels=cfg.data.channels, **kwargs)
    state = initial_weights(cfg)
    if state is not None:
        try:
            model.load_state_dict(state)
        except RuntimeError as error:
            raise ConfigError(f"model.backbone_weights={cfg.model.backbone_weights!r} is not a state dict of this "
                              f"{cfg.model.name} "
                              f"(same width and classes): {str(error).splitlines()[0]}") from None
    return quant.apply_training_noise(model, cfg.get("quant"))


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
    from .progress import ProgressLog

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

    from .config import run_spec

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
    from .config import run_spec

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


def run(cfg: DictConfig, *, force: bool = False, callbacks: Sequence[Callback] = (), log_cached: bool = False) -> dict:
    """Train and test the experiment `cfg` describes and return its metrics (errors in percent;
    detectors: `experiment_detection.run_detection`, test mAP).

    A finished run with the same config hash is returned from disk without training
    (`force=True` trains again); an unfinished one resumes from its last checkpoint. One process
    writes a run folder at a time (`hold`): a second launch of the same config waits for the
    first and then returns its result, and `force` refuses to delete a folder another process
    is writing.

    With `logger=wandb`, the run logs to its own W&B run (`wandb_logger`). A cached run trains
    nothing and so logs nothing: it says so, and `log_cached=True` uploads its stored metrics.
    """
    from . import experiment_detection  # detection data sets: their own branch (test mAP)

    if cfg.experiment is None:
        raise ConfigError("run() needs an experiment: compose(paper, profile, ['experiment=<name>']).")
    directory = run_dir(cfg)
    if (directory / "result.json").exists() and not force:
        return _cached(cfg, directory, log_cached)
    with hold(directory, force=force):
        if (directory / "result.json").exists() and not force:  # finished while we waited
            return _cached(cfg, directory, log_cached)
        if force:  # start clean: no stale checkpoint to resume from, no old curves to merge
            shutil.rmtree(directory, ignore_errors=True)
        require_data(cfg)
        train = experiment_detection.run_detection if experiment_detection.is_detection(cfg) else _run_classifier
        try:
            return train(cfg, directory, callbacks)
        finally:
            finish_wandb(cfg)


def require_data(cfg: DictConfig) -> None:
    """Raise `DatasetMissingError` (with where to get it) before a network, a trainer or a run
    folder is made, when the run's data set is absent and will not be downloaded (ImageNet and
    COCO never are). Where it may be, the data module downloads it in its own `prepare_data`."""
    from .data import DOWNLOADABLE, prepare

    try:
        prepare(cfg.data.name, cfg.paths.data_dir, download=False)
    except DatasetMissingError:
        if not (cfg.data.get("download") and cfg.data.name in DOWNLOADABLE):
            raise


def _cached(cfg: DictConfig, directory: Path, log_cached: bool) -> dict:
    result = load_result(directory)
    if cfg.logger.name == "wandb":
        if log_cached:
            log_cached_to_wandb(cfg, result)
        else:
            print(f"{cfg.paper.id}/{cfg.experiment}: cached in {directory}, so nothing was logged to W&B now. "
                  "Upload its stored metrics with `python -m replicate run ... logger=wandb --log-cached`.", flush=True)
    return result


@contextmanager
def hold(directory: Path, *, force: bool = False):
    """The run folder's lock (`<folder>.lock` beside it, filelock): one writer at a time. Held by
    another process, it is waited for (and who holds it is said), or, with `force`, refused."""
    from filelock import FileLock, Timeout

    directory.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(directory.with_name(directory.name + ".lock"))
    owner = directory.with_name(directory.name + ".owner")
    try:
        lock.acquire(timeout=0)
    except Timeout:
        holder = owner.read_text().strip() if owner.exists() else "another process"
        if force:
            raise RunLockedError(f"{directory} is being written by {holder}: --force does not delete a run in "
                                 "progress. Stop that process first, or wait for it.") from None
        log.warning("%s is being written by %s: waiting for it to finish.", directory, holder)
        print(f"{directory} is being written by {holder}: waiting for it to finish.", flush=True)
        lock.acquire()
    try:
        owner.write_text(f"process {os.getpid()} on {socket.gethostname()}\n")
        yield
    finally:
        owner.unlink(missing_ok=True)
        lock.release()


def _run_classifier(cfg: DictConfig, directory: Path, callbacks: Sequence[Callback]) -> dict:
    """`run`'s classification branch: train and test in `directory` (resumed from its checkpoint)."""
    result_path = directory / "result.json"
    quiet_lightning()
    determinism.prepare(cfg)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    recipe = cfg.recipe
    checkpoint = ModelCheckpoint(dirpath=directory / "checkpoints", save_last=True, save_top_k=0,
                                 every_n_train_steps=recipe.checkpoint_every_steps)
    # The best validation score's weights too (checkpoints/best.ckpt), for a user who selects on
    # validation. The tables report the last weights: our validation set is the test set, as in
    # the paper's curves, and selecting on it would flatter the result.
    best = ModelCheckpoint(dirpath=directory / "checkpoints", filename="best", monitor="val/top1_acc", mode="max",
                           save_top_k=1, save_last=False, enable_version_counter=False, save_on_train_epoch_end=False)
    trainer = L.Trainer(
        **OmegaConf.to_container(cfg.trainer, resolve=True),
        max_steps=recipe.max_steps,
        max_epochs=-1,
        # Validate every val_every_steps iterations counted across epochs, or (null) once an epoch.
        val_check_interval=recipe.val_every_steps if recipe.val_every_steps else 1.0,
        check_val_every_n_epoch=None if recipe.val_every_steps else 1,
        num_sanity_val_steps=0,
        callbacks=[checkpoint, best, determinism.RngState(), *progress_log(cfg, recipe), *callbacks],
        logger=run_loggers(cfg, directory),
        default_root_dir=str(directory),
    )
    if recipe.batch_size % trainer.world_size:
        raise ConfigError(f"recipe.batch_size={recipe.batch_size} does not split over {trainer.world_size} devices.")
    datamodule = build_datamodule(
        cfg.data, data_dir=cfg.paths.data_dir, batch_size=recipe.batch_size // trainer.world_size,
        augment=recipe.augment, normalize=recipe.normalize, seed=cfg.seed,
        num_workers=min(8, os.cpu_count() or 1) if cfg.data.name == "imagenet" else 0,
        randaugment=recipe.get("randaugment"), random_erasing=recipe.get("random_erasing", 0.0) or 0.0,
    )
    trainer.callbacks.append(RefuseFullOnCpu(cfg, getattr(datamodule, "input_size", None)))
    model = build_model(cfg)
    task = ClassificationTask(model, recipe, num_classes=cfg.data.num_classes, channels_last=cfg.speed.channels_last, compile_model=cfg.speed.compile)
    last = directory / "checkpoints" / "last.ckpt"
    resumed_from = str(last) if last.exists() else None
    resumed_step = checkpoint_step(resumed_from)  # read now: fit() overwrites last.ckpt
    start = time.perf_counter()
    trainer.fit(task, datamodule=datamodule, ckpt_path=resumed_from)
    train_seconds = time.perf_counter() - start
    tested = trainer.test(task, datamodule=datamodule, verbose=False)[0]

    result = {
        "paper": cfg.paper.id,
        "experiment": cfg.experiment,
        "profile": cfg.profile.name,
        "config_hash": config_hash(cfg),
        "model": cfg.model.name,
        "dataset": cfg.data.name,
        "params": count_params(model),
        "steps": trainer.global_step,
        "test_top1_err": 100.0 * (1.0 - float(tested["test/top1_acc"])),
        "test_top5_err": 100.0 * (1.0 - float(tested["test/top5_acc"])),
        "train_err_final": task.final_train_error,
        "train_seconds": round(train_seconds, 2),
        "resumed_from_step": resumed_step,
        "run_dir": str(directory),
        **determinism.machine(),
    }
    if trainer.is_global_zero:
        write_result(result, result_path, ("test_top1_err", "test_top5_err", "train_err_final"))
    return {**result, "cached": False}


def write_result(result: dict, path: Path, required: Sequence[str]) -> None:
    """`result.json`, written atomically, and only for a complete run: every field in `required`
    (what the tables read) present and finite, and at least one training step. Otherwise nothing
    is cached and `IncompleteRunError` names the run folder."""
    bad = [k for k in required if not isinstance(result.get(k), (int, float)) or not math.isfinite(result[k])]
    if not result.get("steps"):
        bad.append("steps")
    if bad:
        raise IncompleteRunError(
            f"{path.parent}: the run ended without finite {', '.join(bad)} "
            f"({', '.join(f'{k}={result.get(k)!r}' for k in bad)}); nothing was cached. Run it again with "
            "--force (python -m replicate run ... --force), or delete that folder.")
    tmp = path.with_suffix(".json.tmp")
    # No absolute path inside: the folder may be moved or copied (runs/ from a cluster to a
    # workstation); `load_result` tells where it is now.
    tmp.write_text(json.dumps({k: v for k, v in result.items() if k != "run_dir"}, indent=2))
    os.replace(tmp, path)


def load_result(directory: Path) -> dict:
    """A finished run's result.json, with `run_dir` where the folder is now and `cached` set."""
    return {**json.loads((Path(directory) / "result.json").read_text()), "run_dir": str(directory), "cached": True}


def checkpoint_step(path: str | None) -> int | None:
    """The step a checkpoint was written at; a file that cannot be read is a `CorruptFileError`
    that names it and the fix (a run killed while writing it leaves one)."""
    if path is None:
        return None
    try:
        return int(torch.load(path, map_location="cpu", weights_only=False)["global_step"])
    except Exception as exc:  # torch raises RuntimeError, EOFError, UnpicklingError... for a bad file
        raise CorruptFileError(f"{path} cannot be read ({type(exc).__name__}: {str(exc).splitlines()[0][:120]}); "
                               "the run cannot resume from it. Run it again with --force, or delete that "
                               "checkpoint to start the run afresh.") from exc


def save_weights(result: dict, path: str | os.PathLike) -> Path:
    """The trained network of a finished run (its last checkpoint) as a plain state dict at
    `path`, the form `model.backbone_weights` loads (e.g. YOLOv4 Table 6: the detector from a
    Table 3 classifier; the classifier's own layers are skipped there)."""
    checkpoint = Path(result["run_dir"]) / "checkpoints" / "last.ckpt"
    if not checkpoint.is_file():
        raise ConfigError(f"{result.get('experiment')}: no checkpoint at {checkpoint}; run the experiment first.")
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)["state_dict"]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save({k[len("model."):]: v for k, v in state.items() if k.startswith("model.")}, tmp)
    os.replace(tmp, path)
    return path


def with_backbone_from(cfg: DictConfig, paper: str, profile: str, overrides: Sequence[str] = (),
                       results: dict[str, dict] | None = None, _chain: tuple[str, ...] = ()) -> DictConfig:
    """`cfg` itself, or, when its `model.backbone_from` names another experiment of the paper
    (YOLOv4 Table 6: the detector from a Table 2 or 3 classifier), `cfg` composed again with
    `model.backbone_weights` set to that experiment's trained network. The source is taken from
    `results`, or run (a finished run is only loaded from its cache); its weights are written once,
    atomically, as `backbone_weights.pt` in its run directory; a source with a source of its own
    (YOLOv2: the detector from Darknet-19 at 448, itself from the 224 run) is resolved first. A
    source that cannot run (missing data) raises its `DatasetMissingError`."""
    source = cfg.model.get("backbone_from") if "model" in cfg else None
    if not source or cfg.model.get("backbone_weights"):
        return cfg
    known = cfg.paper.get("experiments") or {}
    if source not in known:
        raise ConfigError(f"model.backbone_from={source!r} is not an experiment of {paper}.{choices(source, known)}")
    if source in _chain or source == cfg.get("experiment"):
        raise ConfigError(f"model.backbone_from: {' -> '.join([*_chain, source])} goes round in a circle.")
    result = (results or {}).get(source)
    if result is None or "not_run" in result:
        try:
            upstream = compose(paper, profile, [*overrides, f"experiment={source}"])
            chain = (*_chain, cfg.get("experiment") or "adhoc")
            result = run(with_backbone_from(upstream, paper, profile, overrides, results, chain))
        except DatasetMissingError as exc:
            raise DatasetMissingError(f"{source}, whose network model.backbone_from starts this run from, cannot "
                                      f"run: {exc}") from exc
    weights = Path(result["run_dir"]) / "backbone_weights.pt"
    if not weights.is_file():
        save_weights(result, weights)
    chosen = [f"experiment={cfg.experiment}"] if cfg.get("experiment") else []
    return compose(paper, profile, [*overrides, *chosen, f"model.backbone_weights={weights}"])


def run_all(paper: str, profile: str, overrides: Sequence[str] = (), experiments: Sequence[str] | None = None,
            *, verbose: bool = True) -> dict[str, dict]:
    """Run (or load) every experiment the paper lists for `profile` (or those named)."""
    names = list(experiments) if experiments is not None else None
    if names is None:
        names = list(compose(paper, profile, overrides).paper.runs[profile])
    results = {}
    for name in names:
        cfg = compose(paper, profile, [*overrides, f"experiment={name}"])
        try:
            cfg = with_backbone_from(cfg, paper, profile, overrides, results)
            result = run(cfg)
        except DatasetMissingError as exc:
            # One absent dataset (say ImageNet) leaves its rows `not_run`; the others still run.
            results[name] = {"experiment": name, "profile": profile, "dataset": cfg.data.name, "not_run": str(exc)}
            if verbose:
                print(f"{name:<22} not run: {str(exc).splitlines()[0]}")
            continue
        results[name] = result
        if verbose:
            how = "cached" if result["cached"] else f"trained {result['steps']} steps in {result['train_seconds']:.0f} s"
            score = (f"test mAP {result['test_map']:.2f}%" if "test_map" in result
                     else f"test top-1 error {result['test_top1_err']:.2f}%")
            if "test_map_50" in result:
                score += f", AP@0.5 {result['test_map_50']:.2f}%"
            if "untrained_map" in result:  # the detector's chance level, before its detection training
                chance = result.get("untrained_map_50", result["untrained_map"])
                score += f" (untrained: {chance:.2f}%)"
            print(f"{name:<22} {how:<28} {score}")
            if result.get("skipped_files"):  # unreadable images, dropped from training and testing
                skipped = result["skipped_files"]
                print(f"{'':<22} skipped {len(skipped)} unreadable file(s): {', '.join(skipped[:3])}"
                      + (" ..." if len(skipped) > 3 else ""))
    return results


def evaluate(cfg: DictConfig, checkpoint: str = "last") -> dict:
    """Test a classifier's trained weights on its test set: the run's `last` or `best` checkpoint
    (checkpoints/last.ckpt, best.ckpt), or a checkpoint file. Nothing is cached or written."""
    from . import experiment_detection

    if cfg.experiment is None:
        raise ConfigError("evaluate needs an experiment: paper=<id> experiment=<name>.")
    if experiment_detection.is_detection(cfg):
        raise ConfigError(f"{cfg.experiment} is a detector: its run scores it on the test set (test mAP, detections.pt); "
                          "the notebooks reload it with experiment_detection.load_trained.")
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


def load_curves(result: dict) -> pd.DataFrame:
    """The run's logged metrics by step, attempts merged; `val/top1_err` (%) derived from the accuracy."""
    frames = []
    for attempt in sorted(Path(result["run_dir"]).glob("logs/attempt-*/metrics.csv"),
                          key=lambda p: int(p.parent.name.split("-")[1])):
        frames.append(pd.read_csv(attempt))
    if not frames:
        return pd.DataFrame(columns=["step"])
    df = pd.concat(frames, ignore_index=True)
    # A resumed attempt re-logs from its checkpoint's step: keep the latest value per step.
    df = df.groupby("step", as_index=False).last().sort_values("step")
    if "val/top1_acc" in df:
        df["val/top1_err"] = 100.0 * (1.0 - df["val/top1_acc"])
    return df
