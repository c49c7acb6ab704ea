"""A classifier's run: its network (`build_model`) trained and tested in its run folder
(`train_classifier`, the classification branch of `runs.run`, on the skeleton `runs.trainer`
shares with the detectors')."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from omegaconf import DictConfig, OmegaConf

from .. import models, quant
from ..data import build_datamodule
from ..errors import ConfigError
from ..tasks import ClassificationTask
from .pretrain import initial_weights
from .trainer import StepTimer, begin_run, finish_run, fit_resumed, make_trainer, run_result, write_config


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
    begin_run(cfg)
    write_config(cfg, directory)
    recipe = cfg.recipe
    # The best validation score's weights too (checkpoints/best.ckpt), for a user who selects on
    # validation. The tables report the last weights: our validation set is the test set, as in
    # the paper's curves, and selecting on it would flatter the result.
    best = ModelCheckpoint(dirpath=directory / "checkpoints", filename="best", monitor="val/top1_acc", mode="max",
                           save_top_k=1, save_last=False, enable_version_counter=False, save_on_train_epoch_end=False)
    # Validate every val_every_steps iterations counted across epochs, or (null) once an epoch.
    validation = {"val_check_interval": recipe.val_every_steps or 1.0,
                  "check_val_every_n_epoch": None if recipe.val_every_steps else 1}
    timer = StepTimer()
    trainer = make_trainer(cfg, directory, recipe, checkpoints=directory / "checkpoints", validation=validation,
                           extra=[best, timer], callbacks=callbacks)
    datamodule = build_datamodule(
        cfg.data, data_dir=cfg.paths.data_dir, batch_size=recipe.batch_size // trainer.world_size,
        augment=recipe.augment, normalize=recipe.normalize, seed=cfg.seed,
        num_workers=min(8, os.cpu_count() or 1) if cfg.data.name == "imagenet" else 0,
        randaugment=recipe.get("randaugment"), random_erasing=recipe.get("random_erasing", 0.0) or 0.0,
    )
    model = build_model(cfg)
    task = ClassificationTask(model, recipe, num_classes=cfg.data.num_classes, channels_last=cfg.speed.channels_last,
                              compile_model=cfg.speed.compile)
    resumed_step, train_seconds = fit_resumed(trainer, task, datamodule, directory / "checkpoints")
    tested = trainer.test(task, datamodule=datamodule, verbose=False)[0]
    scores = {
        "test_top1_err": 100.0 * (1.0 - float(tested["test/top1_acc"])),
        "test_top5_err": 100.0 * (1.0 - float(tested["test/top5_acc"])),
        "train_err_final": task.final_train_error,
        **timer.speed(),
    }
    result = run_result(cfg, model, directory, steps=trainer.global_step, train_seconds=train_seconds,
                        resumed_step=resumed_step, scores=scores)
    return finish_run(trainer, result, directory, ("test_top1_err", "test_top5_err", "train_err_final"))
