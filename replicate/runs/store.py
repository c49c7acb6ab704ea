"""A run's folder and what is kept in it: `run_dir(cfg)` (under the hash of the resolved config),
its lock (`hold`), result.json written atomically (`write_result`, `load_result`), the checkpoints'
step, the trained weights as a plain state dict (`save_weights`), and the logged curves and saved
detections the notebooks read back.

A run lives in `<paths.run_dir>/<paper>/<experiment>/<hash>/`:

    config.yaml          the resolved config
    checkpoints/last.ckpt  written every `recipe.checkpoint_every_steps`; a rerun resumes from it
    checkpoints/best.ckpt  the best validation top-1 (classifiers; `evaluate(cfg, "best")` tests it)
    logs/attempt-N/metrics.csv  Lightning's CSV log of each attempt (a resume starts a new one)
    detections.pt        detectors: the detections of the first test images, for the plots
    result.json          written last and atomically: its presence means the run is finished

So a notebook executed after a cluster run (`python -m replicate run ...`) finds result.json and
trains nothing; a run killed half-way continues from its last checkpoint.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import socket
from collections.abc import Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

import pandas as pd
import torch
from omegaconf import DictConfig, OmegaConf

from ..config import config_hash
from ..errors import ConfigError, CorruptFileError, IncompleteRunError, RunLockedError


log = logging.getLogger(__name__)


def run_dir(cfg: DictConfig) -> Path:
    return Path(cfg.paths.run_dir) / cfg.paper.id / (cfg.experiment or "adhoc") / config_hash(cfg)


def seed_results(cfg: DictConfig) -> dict[int, dict]:
    """The finished runs of `cfg`'s experiment that differ from it in the seed alone (made by
    `python -m replicate run paper=... experiment=... -m seed=0,1,2`), by seed, `cfg`'s own
    included when it has finished: the folders beside its run folder whose config, given their
    seed, is `cfg`'s (the same hash)."""
    own = run_dir(cfg)
    found = {}
    for folder in sorted(own.parent.iterdir()) if own.parent.is_dir() else []:
        if not (folder / "result.json").is_file() or not (folder / "config.yaml").is_file():
            continue
        seed = _seed_of(folder / "config.yaml")
        if seed is None:
            continue
        same_config = (folder == own) if seed == cfg.seed else (config_hash(_with_seed(cfg, seed)) == folder.name)
        if same_config:
            found[seed] = load_result(folder)
    return dict(sorted(found.items()))


def _seed_of(config: Path) -> int | None:
    # config.yaml is OmegaConf's dump: the top-level `seed: N` line, read without parsing the rest.
    for line in config.read_text().splitlines():
        if line.startswith("seed: "):
            value = line[len("seed: "):].strip()
            return int(value) if value.lstrip("-").isdigit() else None
    return None


def _with_seed(cfg: DictConfig, seed: int) -> DictConfig:
    other = copy.deepcopy(cfg)
    OmegaConf.set_readonly(other, False)
    other.seed = seed
    return other


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


def load_detections(result: Mapping) -> list[dict]:
    """The detections (original image coordinates) of the first test images of a finished run."""
    return torch.load(os.path.join(result["run_dir"], "detections.pt"), map_location="cpu", weights_only=True)
