"""Quant-Noise's runs: train (with or without Quant-Noise), compress, evaluate the rows of the
paper's Table 1 (`report.compression` makes its tables and plots from them).

A row of the table is a training experiment of `paper.experiments` (run and cached by
`replicate.runs.run`, the Quant-Noise settings `cfg.quant` being part of its hash) and a
compression applied after training (`paper.compression.rows`):

    rows:
      int4:    {train: fp32,    method: int4}   # trained without noise, quantized after training
      int4_qn: {train: qn_int4, method: int4}   # trained with int4 Quant-Noise, then quantized

`compress_all` returns, per row, a result dict like `runs.run`'s (`test_top1_err`, ...)
plus `size_mb` and `compression_ratio`, so that `replicate.report.Report` builds the measured
tables and claims from it. A compressed result is cached beside its training run
(`<run_dir>/compressed/<method>-<hash>.json`), keyed by the training run's hash, the compression
settings and the source of this package: re-executing the notebook recomputes nothing.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from omegaconf import DictConfig, OmegaConf, open_dict
from torch import nn

from ..config import compose, config_hash
from ..config.hashing import code_fingerprint
from ..data import build_datamodule
from ..errors import ConfigError, DatasetMissingError
from ..quant import ipq as ipq_lib
from ..quant.noise import METHODS, PQ_METHODS, SCALAR_METHODS, strip_quant_noise
from ..quant.size import model_size
from ..tasks import ClassificationTask
from .classification import build_model
from .launch import run
from .trainer import quiet_lightning

FINAL_WEIGHTS = "final_model.pt"


class SaveFinalWeights(Callback):
    """Keeps the network's weights at the end of training: the compression starts from them."""

    def on_train_end(self, trainer, pl_module) -> None:
        if trainer.is_global_zero:
            path = Path(trainer.default_root_dir) / FINAL_WEIGHTS
            torch.save({"step": trainer.global_step, "state_dict": pl_module.model.state_dict()}, path)


# -- configuration ------------------------------------------------------------------------------

def training_experiment(cfg: DictConfig, row: str) -> str:
    spec = cfg.paper.compression
    network = spec.network[cfg.profile.name]
    return f"{network}_{spec.rows[row].train}"


def planned_rows(cfg: DictConfig) -> list[str]:
    return list(cfg.paper.compression.rows)


def _settings(cfg: DictConfig, method: str) -> dict:
    """Everything besides the trained weights that decides a compressed row's result."""
    quant = OmegaConf.to_container(cfg.quant, resolve=True)
    settings = {"method": method, "granularity": quant["scalar"]["granularity"]}
    if method in PQ_METHODS:
        settings.update(pq=quant["pq"], ipq=OmegaConf.to_container(cfg.paper.compression.ipq, resolve=True))
    return settings


def _key(cfg: DictConfig, settings: Mapping) -> str:
    blob = json.dumps({"run": config_hash(cfg), "settings": settings, "code": code_fingerprint(("quant", "runs/compression.py"))}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


# -- model, data, training helpers ----------------------------------------------------------------

def trained_model(cfg: DictConfig, result: Mapping) -> nn.Module:
    """The network of a finished training run, with its Quant-Noise removed (plain fp32 weights)."""
    directory = Path(result["run_dir"])
    model = build_model(cfg)
    path = directory / FINAL_WEIGHTS
    if path.exists():
        saved = torch.load(path, map_location="cpu", weights_only=False)
        state, step = saved["state_dict"], saved["step"]
    else:  # trained without the pipeline's callback (e.g. from the CLI): the last checkpoint
        ckpt = directory / "checkpoints" / "last.ckpt"
        if not ckpt.exists():
            raise ConfigError(f"{directory} holds no trained weights: rerun the experiment with force=True.")
        saved = torch.load(ckpt, map_location="cpu", weights_only=False)
        state = {k[len("model."):]: v for k, v in saved["state_dict"].items() if k.startswith("model.")}
        step = saved["global_step"]
    if step != result["steps"]:
        raise ConfigError(f"{directory}: saved weights are from step {step}, the run ended at {result['steps']}; "
                          "rerun it with force=True.")
    # A run trained with speed.compile saved the compiled wrapper's names.
    state = {k.removeprefix("_orig_mod."): v for k, v in state.items()}
    model.load_state_dict(state)
    return strip_quant_noise(model).float()


def _datamodule(cfg: DictConfig, world_size: int = 1):
    recipe = cfg.recipe
    return build_datamodule(
        cfg.data, data_dir=cfg.paths.data_dir, batch_size=recipe.batch_size // world_size,
        augment=recipe.augment, normalize=recipe.normalize, seed=cfg.seed,
        num_workers=min(8, os.cpu_count() or 1) if cfg.data.name == "imagenet" else 0,
        randaugment=recipe.get("randaugment"), random_erasing=recipe.get("random_erasing", 0.0) or 0.0,
    )


def _trainer(cfg: DictConfig, **kwargs) -> L.Trainer:
    settings = OmegaConf.to_container(cfg.trainer, resolve=True)
    settings.update(logger=False, enable_checkpointing=False, num_sanity_val_steps=0, **kwargs)
    return L.Trainer(**settings)


def _finetune_recipe(cfg: DictConfig, steps: int, lr: float) -> DictConfig:
    """The training recipe at a constant learning rate `lr` for `steps` iterations."""
    recipe = OmegaConf.create(OmegaConf.to_container(cfg.recipe, resolve=True))
    with open_dict(recipe):
        recipe.update(lr=float(lr), max_steps=int(steps), schedule="multistep", milestones=[], gamma=1.0)
        if "warmup" in recipe:
            recipe.warmup.enabled = False
        for key in ("warmup_steps_fraction", "decay_every_steps"):
            recipe.pop(key, None)
    return recipe


def evaluate(cfg: DictConfig, model: nn.Module, datamodule) -> float:
    """Test top-1 error (%) of `model` on the run's test split."""
    task = ClassificationTask(model, cfg.recipe, num_classes=cfg.data.num_classes,
                              channels_last=cfg.speed.channels_last)
    tested = _trainer(cfg).test(task, datamodule=datamodule, verbose=False)[0]
    return 100.0 * (1.0 - float(tested["test/top1_acc"]))


def _test_images(datamodule) -> int | None:
    try:
        return len(datamodule.test_dataloader().dataset)
    except (TypeError, AttributeError):
        return None


def finetune(cfg: DictConfig, model: nn.Module, datamodule, steps: int, lr: float) -> None:
    """`steps` iterations of the recipe at learning rate `lr` (iPQ: codewords and the layers not
    yet quantized); the same ClassificationTask as training."""
    if steps <= 0:
        return
    recipe = _finetune_recipe(cfg, steps, lr)
    task = ClassificationTask(model, recipe, num_classes=cfg.data.num_classes, channels_last=cfg.speed.channels_last)
    _trainer(cfg, max_steps=int(steps), max_epochs=-1, limit_val_batches=0).fit(task, datamodule=datamodule)


# -- compression ------------------------------------------------------------------------------------

def _compress(cfg: DictConfig, result: Mapping, methods: Sequence[str]) -> dict[str, dict]:
    """Compress the trained network of `result` with each of `methods`; iPQ and iPQ & int8 share
    one iPQ pass (the int8 codebooks are taken from the finished iPQ)."""
    quiet_lightning()
    datamodule = _datamodule(cfg)
    datamodule.setup("test")
    n_test = _test_images(datamodule)
    quant = cfg.quant
    out: dict[str, dict] = {}
    for method in methods:
        if method in out:
            continue
        start = time.perf_counter()
        L.seed_everything(cfg.seed, workers=True, verbose=False)
        model = trained_model(cfg, result)
        sizes = {m: model_size(model, m, granularity=quant.scalar.granularity, block_sizes=quant.pq.block_sizes,
                               n_centroids=quant.pq.n_centroids) for m in (method, *PQ_METHODS)}
        if method in PQ_METHODS:
            spec = cfg.paper.compression.ipq
            groups = ipq_lib.layer_groups(model, quant.pq.block_sizes, spec.groups)
            ipq_lib.ipq(model, groups, lambda m, i: finetune(cfg, m, datamodule, spec.finetune_steps, spec.lr),
                        block_sizes=quant.pq.block_sizes, n_centroids=quant.pq.n_centroids,
                        iters=spec.kmeans_iters, seed=cfg.seed)
            extra_steps = len(groups) * int(spec.finetune_steps)
            errors = {"ipq": evaluate(cfg, model, datamodule)}
            ipq_lib.int8_codebooks(model)
            errors["ipq_int8"] = evaluate(cfg, model, datamodule)
            seconds = time.perf_counter() - start
            for m in PQ_METHODS:
                out[m] = _row_result(result, m, errors[m], sizes[m], extra_steps, seconds, n_test)
            continue
        if method in SCALAR_METHODS:
            ipq_lib.fake_quantize_weights(model, SCALAR_METHODS[method], quant.scalar.granularity)
        err = evaluate(cfg, model, datamodule)
        out[method] = _row_result(result, method, err, sizes[method], 0, time.perf_counter() - start, n_test)
    return out


def _row_result(result: Mapping, method: str, err: float, size, extra_steps: int, seconds: float,
                n_test: int | None) -> dict:
    return {
        "paper": result["paper"], "experiment": result["experiment"], "profile": result["profile"],
        "dataset": result["dataset"], "model": result["model"], "method": method,
        "train_config_hash": result["config_hash"], "run_dir": result["run_dir"],
        "steps": int(result["steps"]) + extra_steps, "finetune_steps": extra_steps,
        "test_top1_err": float(err), "test_top1_err_uncompressed": float(result["test_top1_err"]),
        "size_mb": size.mb, "compression_ratio": size.ratio,
        "train_err_final": result.get("train_err_final"), "train_seconds": result.get("train_seconds"),
        "compress_seconds": round(seconds, 2), "test_images": n_test,
    }


def compress(cfg: DictConfig, result: Mapping, methods: Sequence[str]) -> dict[str, dict]:
    """The compressed rows of one training run, from the cache when already computed."""
    directory = Path(result["run_dir"]) / "compressed"
    paths = {m: directory / f"{m}-{_key(cfg, _settings(cfg, m))}.json" for m in methods}
    todo = [m for m in methods if not paths[m].exists()]
    # The stored rows hold no path: the training run's folder is wherever it is now.
    out = {m: {**json.loads(paths[m].read_text()), "run_dir": result["run_dir"], "cached": True}
           for m in methods if m not in todo}
    if todo:
        fresh = _compress(cfg, result, todo)
        directory.mkdir(parents=True, exist_ok=True)
        for m, row in fresh.items():
            path = directory / f"{m}-{_key(cfg, _settings(cfg, m))}.json"
            tmp = path.with_suffix(".json.tmp")
            tmp.write_text(json.dumps({k: v for k, v in row.items() if k != "run_dir"}, indent=2))
            os.replace(tmp, path)
            if m in methods:
                out[m] = {**row, "cached": False}
    return out


def _save_weights_run(cfg: DictConfig) -> dict:
    return run(cfg, callbacks=[SaveFinalWeights()])


def compress_all(paper: str, profile: str, overrides: Sequence[str] = (), rows: Sequence[str] | None = None,
                 *, verbose: bool = True) -> dict[str, dict]:
    """Train (or load) every training experiment the rows need, then compress them.

    Returns {row: compressed result} for the rows of `paper.compression.rows` and
    {experiment: training result} for the trainings behind them (their uncompressed test error).
    """
    base = compose(paper, profile, overrides)
    rows = list(rows) if rows is not None else planned_rows(base)
    by_training: dict[str, list[str]] = {}
    for row in rows:
        if row not in base.paper.compression.rows:
            known = ", ".join(base.paper.compression.rows)
            raise ConfigError(f"Unknown row {row!r} of paper.compression.rows. Known: {known}.")
        method = base.paper.compression.rows[row].method
        if method not in METHODS:
            raise ConfigError(f"paper.compression.rows.{row}.method={method!r} is not one of {', '.join(METHODS)}.")
        by_training.setdefault(training_experiment(base, row), []).append(row)
    results: dict[str, dict] = {}
    for name, row_names in by_training.items():
        cfg = compose(paper, profile, [*overrides, f"experiment={name}"])
        try:
            trained = _save_weights_run(cfg)
        except DatasetMissingError as exc:
            results[name] = {"experiment": name, "profile": profile, "dataset": cfg.data.name, "not_run": str(exc)}
            for row in row_names:
                results[row] = {**results[name], "row": row}
            if verbose:
                print(f"{name:<26} not run: {cfg.data.name} is missing (see the table notes)")
            continue
        results[name] = trained
        if verbose:
            how = ("cached" if trained["cached"]
                   else f"trained {trained['steps']} steps in {trained['train_seconds']:.0f} s")
            print(f"{name:<26} {how:<28} test top-1 error {trained['test_top1_err']:.2f}% (uncompressed)")
        methods = [base.paper.compression.rows[row].method for row in row_names]
        compressed = compress(cfg, trained, methods)
        for row in row_names:
            results[row] = {**compressed[base.paper.compression.rows[row].method], "row": row}
            if verbose:
                r = results[row]
                how = "cached" if r["cached"] else f"{r['compress_seconds']:.0f} s"
                print(f"  {row:<24} {how:<8} {r['size_mb']:7.3f} MB  test top-1 error {r['test_top1_err']:.2f}%")
    return results


__all__ = ["compress_all", "compress", "planned_rows", "training_experiment", "trained_model", "evaluate"]
