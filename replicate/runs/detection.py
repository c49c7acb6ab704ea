"""A detector's run: `train_detector(cfg, directory)`, the detection branch of `runs.run`.

A config whose `data` is a detection set (conf/data/{voc2007,coco,synth_detection}.yaml) trains
the registry's detector with `DetectionTask` (or `ProposalDetectionTask` for detectors fed
selective-search proposals: Fast R-CNN, R-CNN) and scores it with mAP under the data set's
protocol. The run folder, the cache, checkpoints and resuming are `runs.store`'s; the result holds

    test_map        test mAP in percent (VOC07 11-point on VOC and the generated set)
    test_map_50/75  COCO only (percent)
    per_class_ap    {class: AP in percent}
    untrained_map   the same network scored before its detection training (its chance level)
    fit_post_hoc's statistics (R-CNN: the SVMs' and regressors' average feature norms before
                    their rescaling to 20, the hard negatives per class), post_hoc_seconds
    steps, train_seconds, seconds_per_step, data_wait_share (the loop's time waiting for batches), params, ...

and `detections.pt` keeps the detections of the first test images, so a notebook can draw them
from a cached run (`store.load_detections`). The mAP floors of the reduced profile are `floors`
in conf/paper/<id>.yaml, checked by `Report.check`.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from omegaconf import DictConfig, OmegaConf

from .. import models
from ..data.detection import build_detection_datamodule, proposals, skipped_files
from ..data.tensor_datamodule import subset_indices
from ..errors import ConfigError
from ..models.protocols import Detector
from ..tasks.detection import DetectionTask, to_cpu, to_original_size
from .alternating import fit_alternating
from .pretrain import initial_weights, pretrained_part, pretrain_or_load
from .trainer import StepTimer, begin_run, finish_run, fit_resumed, make_trainer, run_result, write_config


log = logging.getLogger(__name__)


SAVED_DETECTIONS = 16  # test images whose detections are kept for the plots


class ProposalDetectionTask(DetectionTask):
    """`DetectionTask` for detectors fed external proposals: the targets carry them
    (`data.detection.proposals.attach_proposals`) and evaluation passes them to the model."""

    def _collect(self, batch, stage: str) -> None:
        images, targets = batch
        if not images:  # only unreadable images (dropped): nothing to score
            return
        detections = self.model(images, proposals=[t["proposals"] for t in targets])
        for image, detection, target in zip(images, detections, targets):
            hw = (int(image.shape[-2]), int(image.shape[-1]))
            detection = {**to_cpu(detection), "orig_size": target.get("orig_size")}
            plain = {k: v for k, v in target.items() if k != "proposals"}
            self._outputs[stage].append((to_original_size(to_cpu(detection), hw),
                                         to_original_size(to_cpu(plain), hw)))


def build_detector(cfg: DictConfig) -> torch.nn.Module:
    """The experiment's detector: `cfg.model` minus `name` (and the proposal settings) as the
    builder's keyword arguments, sized for the data set's classes. `backbone_weights` (a path)
    loads ImageNet-trained weights into the part the papers pre-train (`pretrained_part`): that
    part's state dict, or a whole classifier's whose `backbone` it is."""
    kwargs = {k: v for k, v in OmegaConf.to_container(cfg.model, resolve=True).items()
              if k not in ("name", "proposals", "backbone_weights", "backbone_from")}
    state = initial_weights(cfg)
    weights = cfg.model.get("backbone_weights")
    model = models.build(cfg.model.name, num_classes=cfg.data.num_classes, in_channels=cfg.data.channels, **kwargs)
    if not isinstance(model, Detector):
        raise ConfigError(f"model={cfg.model.name}: data={cfg.data.name} is a detection set and {cfg.model.name} is "
                          "not a detector (models.protocols.Detector); choose a detection model config.")
    if state is not None:
        part = pretrained_part(model)
        wanted = set(part.state_dict())
        if not wanted <= set(state) and all(f"backbone.{k}" in state for k in wanted):
            # A whole classifier (Darknet-19, YOLOv1's trunk: its trunk is its `backbone`).
            state = {k[len("backbone."):]: v for k, v in state.items() if k.startswith("backbone.")}
        missing, unexpected = part.load_state_dict(state, strict=False)
        if missing:
            raise ConfigError(f"model.backbone_weights={weights!r} lacks {len(missing)} of the backbone's tensors "
                              f"(first: {missing[0]}); was it saved from {cfg.model.name}'s backbone?")
        if unexpected:
            log.info("backbone_weights: %d tensors not used (e.g. the classifier): %s", len(unexpected), unexpected[:3])
    return model


def attach_proposals(datamodule, cfg: DictConfig) -> None:
    """Wrap the datamodule's data set factories so that every sample carries its selective
    search proposals (computed once per stored image and cached under data_dir/proposals)."""
    spec = OmegaConf.to_container(cfg.model.get("proposals") or {}, resolve=True)
    settings = {"mode": spec.get("mode", "fast"), "max_proposals": int(spec.get("max_proposals", 2000)),
                "min_size": float(spec.get("min_size", 0.0))}
    for attr, subset in (("make_train", "train_subset"), ("make_test", "test_subset")):
        make = getattr(datamodule, attr)

        def wrapped(transforms, make=make, subset=subset):
            dataset = make(transforms)
            # Only the images the datamodule will keep (`data.train_subset`, `data.test_subset`:
            # the same draw as DetectionDataModule.setup's) are searched.
            indices = subset_indices(len(dataset), cfg.data.get(subset), cfg.seed)
            return proposals.attach_proposals(dataset, cfg.paths.data_dir, **settings,
                                              indices=None if indices is None else indices.tolist())

        setattr(datamodule, attr, wrapped)


def train_detector(cfg: DictConfig, directory: Path, callbacks: Sequence[Callback] = ()) -> dict:
    """Train and test the detection experiment `cfg` in its run folder `directory`: the detection
    branch of `runs.run`, which owns the cache, the lock and `--force`."""
    begin_run(cfg)
    recipe = cfg.recipe
    training = recipe.get("training", "joint")  # one of validate.TRAINING_SCHEMES, checked at compose
    # Build the data first: a missing data set raises before anything is written.
    datamodule = build_detection_datamodule(
        cfg.data, data_dir=cfg.paths.data_dir, batch_size=recipe.batch_size, seed=cfg.seed,
        num_workers=min(8, os.cpu_count() or 1) if cfg.data.name != "synth_detection" else 0,
        augment=recipe.get("detection_augment"))
    pretrained = {}

    def make_model() -> torch.nn.Module:
        model = build_detector(cfg)
        if recipe.get("pretrain") and not (directory / "checkpoints" / "last.ckpt").exists():
            # (a resumed run takes its weights from the checkpoint)
            stats = pretrain_or_load(pretrained_part(model), recipe.pretrain, cfg)
            if not pretrained:  # alternating training builds two networks from the same weights
                pretrained.update(stats)
        return model

    model = make_model()
    task_class = DetectionTask
    if model.needs_proposals:
        attach_proposals(datamodule, cfg)
        task_class = ProposalDetectionTask
    datamodule.setup()

    write_config(cfg, directory)
    untrained = score_untrained(cfg, model, task_class, datamodule, directory)
    timer = StepTimer()

    def fit(model: torch.nn.Module, stage_recipe, checkpoints: Path, logs: str = "logs"):
        """A trainer and task for `model` under `stage_recipe`, fitted (resumed from
        `checkpoints`/last.ckpt when there is one) and logging to `logs`; returns them with the
        step it resumed from."""
        validate = bool(stage_recipe.get("val_every_steps"))
        # Scoring mAP on the whole test set is costly: detection runs validate only when asked.
        validation = {"val_check_interval": stage_recipe.val_every_steps if validate else None,
                      "check_val_every_n_epoch": None, "limit_val_batches": 1.0 if validate else 0}
        trainer = make_trainer(cfg, directory, stage_recipe, checkpoints=checkpoints, validation=validation,
                               extra=[timer], callbacks=callbacks, logs=logs)
        datamodule.batch_size = stage_recipe.batch_size // trainer.world_size
        task = task_class(model, stage_recipe, num_classes=cfg.data.num_classes,
                          protocol=cfg.data.get("protocol", "voc07"))
        resumed_step, _ = fit_resumed(trainer, task, datamodule, checkpoints)
        return trainer, task, resumed_step

    start = time.perf_counter()
    if training == "alternating":
        trainer, task, resumed_step, stage_steps = fit_alternating(cfg, model, make_model, fit,
                                                                   directory / "checkpoints")
        model = task.model
        post_hoc = {"stage_steps": stage_steps}
    else:
        trainer, task, resumed_step = fit(model, recipe, directory / "checkpoints")
        post_hoc = {}
    train_seconds = time.perf_counter() - start
    if model.post_hoc_fit:  # R-CNN's SVMs and box regressors
        start = time.perf_counter()
        post_hoc.update(model.fit_post_hoc(datamodule.train_dataloader()))
        post_hoc["post_hoc_seconds"] = round(time.perf_counter() - start, 2)
        trainer.save_checkpoint(directory / "checkpoints" / "last.ckpt")  # with the SVMs and regressors
    start = time.perf_counter()
    trainer.test(task, datamodule=datamodule, verbose=False)
    test_seconds = time.perf_counter() - start
    scored = task.results["test"]
    predictions = task.detections["test"][0][:SAVED_DETECTIONS]
    sizes = test_input_sizes(cfg)
    if sizes and not model.resizable_input:
        raise ConfigError(f"recipe.test_input_sizes: {cfg.model.name} has no input size to change; "
                          "leave test_input_sizes empty for it.")
    for paper_size, size in sizes.items():  # YOLO: one trained network, several input sizes
        trained_size, model.input_size = model.input_size, size
        trainer.test(task, datamodule=datamodule, verbose=False)
        model.input_size = trained_size
        for key in ("map", "map_50", "map_75"):
            if key in task.results["test"]:
                post_hoc[f"test_{key}_{paper_size}"] = 100.0 * float(task.results["test"][key])
        post_hoc[f"input_size_{paper_size}"] = size
    if model.optional_box_regression:  # R-CNN: also scored without its box regression (Table 2)
        model.box_regression = False
        trainer.test(task, datamodule=datamodule, verbose=False)
        model.box_regression = True
        post_hoc["test_map_no_bb"] = 100.0 * float(task.results["test"]["map"])

    scores = {
        "protocol": scored["protocol"],
        "test_map": 100.0 * float(scored["map"]),
        **{f"test_{k}": 100.0 * float(scored[k]) for k in ("map_50", "map_75") if k in scored},
        "per_class_ap": {k: round(100.0 * float(v), 2) for k, v in scored["per_class"].items()},
        **timer.speed(),
        "test_seconds": round(test_seconds, 2), "test_images": len(task.detections["test"][1]),
        **pretrained, **post_hoc, **untrained,
        "skipped_files": skipped_files(datamodule.train_set, datamodule.test_set),
    }
    steps = sum(post_hoc["stage_steps"]) if "stage_steps" in post_hoc else trainer.global_step
    result = run_result(cfg, model, directory, steps=steps, train_seconds=train_seconds, resumed_step=resumed_step,
                        scores=scores)
    if trainer.is_global_zero:
        torch.save([{k: v for k, v in p.items() if k in ("boxes", "scores", "labels")} for p in predictions],
                   directory / "detections.pt")
    return finish_run(trainer, result, directory,
                      ("test_map", *(k for k in ("test_map_50", "test_map_75") if k in result)))


def score_untrained(cfg: DictConfig, model: torch.nn.Module, task_class, datamodule, directory: Path) -> dict:
    """The detector's test score before its detection training (its trunk pre-trained where the
    recipe pre-trains it): the chance level a floor must stand well above. Scored once, when the
    run starts, and kept in the run folder for a resumed run; it draws nothing from the random
    streams the training uses."""
    path = directory / "untrained.json"
    if path.is_file():
        return json.loads(path.read_text())
    task = task_class(model, cfg.recipe, num_classes=cfg.data.num_classes, protocol=cfg.data.get("protocol", "voc07"))
    trainer = L.Trainer(accelerator=cfg.trainer.accelerator, devices=1, precision=cfg.trainer.precision,
                        logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=str(directory))
    with torch.random.fork_rng(devices=[]):
        trainer.test(task, datamodule=datamodule, verbose=False)
    model.train()
    scored = task.results["test"]
    score = {f"untrained_{k}": 100.0 * float(scored[k]) for k in ("map", "map_50") if k in scored}
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(score))
    os.replace(tmp, path)
    return score


def test_input_sizes(cfg: DictConfig) -> dict[int, int]:
    """The input sizes a YOLO network is evaluated at after training (YOLOv2 Table 3, YOLOv3
    Fig. 1, YOLOv4 Table 10), keyed by the paper's size: `recipe.test_input_sizes` times
    `recipe.test_input_scale` (the reduced profile's smaller canvases), rounded to the networks'
    stride of 32 (at least 32). Results are stored under the paper's sizes (`test_map_<size>`)."""
    scale = float(cfg.recipe.get("test_input_scale", 1.0))
    return {int(s): max(32, int(round(int(s) * scale / 32)) * 32) for s in cfg.recipe.get("test_input_sizes") or []}


def train_dataset(cfg: DictConfig):
    """The experiment's training set as stored (no transforms, difficult objects kept): its boxes
    for statistics such as YOLOv2's dimension clusters (Table 1)."""
    datamodule = build_detection_datamodule(cfg.data, data_dir=cfg.paths.data_dir, batch_size=1, seed=cfg.seed)
    return datamodule.make_train(None)


def test_dataset(cfg: DictConfig):
    """The experiment's test set as stored (no transforms): images and targets for the plots."""
    datamodule = build_detection_datamodule(cfg.data, data_dir=cfg.paths.data_dir, batch_size=1, seed=cfg.seed)
    return datamodule.make_test(None)


# -- the speed tables, measured on the hardware present --------------------------------------------
def load_trained(cfg: DictConfig, result: Mapping) -> torch.nn.Module:
    """The detector of a finished run, with its trained weights (the last checkpoint), in eval mode."""
    model = build_detector(cfg)
    checkpoint = torch.load(os.path.join(result["run_dir"], "checkpoints", "last.ckpt"), map_location="cpu",
                            weights_only=False)
    model.load_state_dict({k[len("model."):]: v for k, v in checkpoint["state_dict"].items() if k.startswith("model.")})
    return model.eval()
