"""A classifier's run: its network (`build_model`) trained and tested in its run folder
(`train_classifier`, the classification branch of `runs.run`), and a checkpoint tested again
(`evaluate_classifier`)."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from omegaconf import DictConfig, OmegaConf

from .. import determinism, models, quant
from ..config import config_hash
from ..data import build_datamodule
from ..errors import ConfigError
from ..guard import RefuseFullOnCpu
from ..measure.complexity import count_params
from ..tasks import ClassificationTask
from .pretrain import initial_weights
from .store import checkpoint_step, write_result
from .trainer import progress_log, quiet_lightning, run_loggers


def build_model(cfg: DictConfig):
    """The experiment's network, sized for the dataset in use (classes, input channels), with
    Quant-Noise on its weights when `cfg.quant` asks for it (conf/quant/, replicate.quant).

    `model.backbone_weights` (a state dict of the same network, e.g. written by `save_weights`)
    starts it from trained weights: a fine-tuning run (YOLOv2's Darknet-19 at 448 from its 224
    run, through `model.backbone_from`)."""
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


def train_classifier(cfg: DictConfig, directory: Path, callbacks: Sequence[Callback]) -> dict:
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
