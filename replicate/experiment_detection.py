"""Detection experiments: `run_detection(cfg)`, the detection branch of `experiment.run(cfg)`.

A config whose `data` is a detection set (conf/data/{voc2007,coco,synth_detection}.yaml) trains
the registry's detector with `DetectionTask` (or `ProposalDetectionTask` for detectors fed
selective-search proposals: Fast R-CNN, R-CNN) and scores it with mAP under the data set's
protocol. The run directory, the result cache under the config hash, checkpoints and resuming
are those of `replicate.experiment` (its docstring); the result holds

    test_map        test mAP in percent (VOC07 11-point on VOC and the generated set)
    test_map_50/75  COCO only (percent)
    per_class_ap    {class: AP in percent}
    steps, train_seconds, seconds_per_step, params, ...

and `detections.pt` in the run directory keeps the detections of the first test images, so a
notebook can draw them from a cached run (`load_detections`).

Also here: the rows of the R-CNN papers' tables that `tables.Report.exact` cannot count (anchor
counts, parameters of weight matrices after truncated SVD: `exact_value`, the counter that
`Report.exact` takes) and the stage times behind the speed tables, measured on the hardware
present (`time_two_stage`, `time_fast_rcnn`, `time_rcnn_vs_fast`; `Report.speed` turns them into
the papers' ratios). The mAP floors of the reduced profile are `floors` in conf/paper/<id>.yaml,
checked by `Report.check` as the classification papers' accuracy floors.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from omegaconf import DictConfig, OmegaConf

from . import determinism, models
from .complexity import count_params
from .config import config_hash
from .data.detection import DATASETS, build_detection_datamodule, skipped_files
from .errors import ConfigError
from .guard import RefuseFullOnCpu
from .tasks.detection import DetectionTask, to_cpu, to_original_size
from .timing import Clock, hardware, one_thread_on_cpu  # noqa: F401  (hardware: the notebooks' notes)

log = logging.getLogger(__name__)

SAVED_DETECTIONS = 16  # test images whose detections are kept for the plots


def is_detection(cfg: DictConfig) -> bool:
    return cfg.data.get("name") in DATASETS


class ProposalDetectionTask(DetectionTask):
    """`DetectionTask` for detectors fed external proposals: the targets carry them
    (`replicate.proposals.attach_proposals`) and evaluation passes them to the model."""

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
    loads ImageNet-trained weights into the part the papers pre-train (`_pretrained_part`): that
    part's state dict, or a whole classifier's whose `backbone` it is."""
    kwargs = {k: v for k, v in OmegaConf.to_container(cfg.model, resolve=True).items()
              if k not in ("name", "proposals", "backbone_weights", "backbone_from")}
    from .experiment import initial_weights

    state = initial_weights(cfg)
    weights = cfg.model.get("backbone_weights")
    model = models.build(cfg.model.name, num_classes=cfg.data.num_classes, in_channels=cfg.data.channels, **kwargs)
    if state is not None:
        part = _pretrained_part(model)
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


def _attach(datamodule, cfg: DictConfig) -> None:
    """Wrap the datamodule's data set factories so that every sample carries its selective
    search proposals (computed once per stored image and cached under data_dir/proposals)."""
    from . import proposals

    spec = OmegaConf.to_container(cfg.model.get("proposals") or {}, resolve=True)
    settings = {"mode": spec.get("mode", "fast"), "max_proposals": int(spec.get("max_proposals", 2000)),
                "min_size": float(spec.get("min_size", 0.0))}
    from .data.tensor_datamodule import subset_indices

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


def pretrain_trunk(trunk: torch.nn.Module, spec: Mapping, data_dir, seed: int = 0, subtract_mean: bool = True) -> dict:
    """The reduced profile's stand-in for the papers' ImageNet pre-training (R-CNN Sec. 2.3,
    Fast R-CNN Sec. 2.2, Faster R-CNN Sec. 3.1.3): `trunk` learns to classify Fashion-MNIST
    training items (the objects the generated canvases are made of, never its test items),
    each tinted with a random colour on a random plain background and scaled to
    `image_size` (at least 64: smaller inputs leave conv5 with 1x1 maps), for `steps` Adam steps
    of `batch_size` at `lr`, through global average pooling and a linear classifier that is then
    dropped.
    The inputs are prepared as the detector's (`subtract_mean`: the data's `channel_mean`
    normalisation; YOLO's inputs stay in [0, 1]); a trunk that returns several feature maps
    (YOLOv3/v4's backbones) is classified from its last, deepest one. With `unit_features` the
    last conv layer is then rescaled so that its feature map has unit RMS (the detector's new fc
    layers start from initialisations that assume unit-scale inputs; the papers' come pre-trained).
    Returns the pre-training's final accuracy on its batches and its duration.

    It draws from its own random stream (seeded by `seed`) and leaves the global one as it found
    it, so the detector trained afterwards is the same whether its trunk was pre-trained in this
    process or loaded from the cache (`pretrained_trunk`)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        return _pretrain_trunk(trunk, spec, data_dir, seed, subtract_mean)


def _pretrain_trunk(trunk: torch.nn.Module, spec: Mapping, data_dir, seed: int, subtract_mean: bool) -> dict:
    import torch.nn.functional as F

    from .data import fashion_mnist
    from .data.transforms import IMAGENET_RGB_MEAN

    images, labels = fashion_mnist.read_split(fashion_mnist.locate(data_dir), "train")
    generator = torch.Generator().manual_seed(int(seed))
    size, batch, steps = int(spec.get("image_size", 64)), int(spec.get("batch_size", 64)), int(spec["steps"])
    was_training = trunk.training
    with torch.no_grad():  # the width of the trunk's (last) feature map
        channels = _deepest(trunk.eval()(torch.zeros(1, 3, size, size))).shape[1]
    classifier = torch.nn.Linear(channels, int(labels.max()) + 1)
    params = [p for p in trunk.parameters() if p.requires_grad] + list(classifier.parameters())
    # Adam, not the papers' SGD: this stage only stands in for pre-trained weights, and SGD does
    # not move a plain 13-layer ReLU stack from its initialisation within a few hundred steps
    # (measured: chance accuracy after 120 steps at learning rates 0.003-0.1; Adam: 81%).
    optimizer = torch.optim.Adam(params, lr=float(spec.get("lr", 1e-3)))
    mean = torch.tensor(IMAGENET_RGB_MEAN).view(1, 3, 1, 1) if subtract_mean else torch.zeros(1, 3, 1, 1)
    trunk.train()
    start, correct, seen = time.perf_counter(), 0, 0
    for step in range(steps):
        index = torch.randint(0, len(images), (batch,), generator=generator)
        ink = images[index].float() / 255.0
        colour = torch.rand(batch, 3, 1, 1, generator=generator)
        background = torch.rand(batch, 3, 1, 1, generator=generator)
        x = F.interpolate(ink * colour + (1 - ink) * background, size=(size, size), mode="bilinear",
                          align_corners=False) - mean
        logits = classifier(_deepest(trunk(x)).mean((2, 3)))
        loss = F.cross_entropy(logits, labels[index])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step >= steps - max(1, steps // 10):  # accuracy over the last tenth of the steps
            correct += int((logits.argmax(1) == labels[index]).sum())
            seen += batch
    feature_scale = None
    if spec.get("unit_features"):
        # The papers' fc6 (and fc7) come pre-trained with the conv layers; here they start new, from
        # He et al.'s scaling, which assumes unit-scale inputs. Adam leaves conv5_3 at whatever scale
        # its global-average-pooled classifier liked (RMS ~3.7 after 200 steps: fc7 norms ~120, and
        # SGD at the papers' rates then diverges in the new head and collapses the trunk). Dividing
        # the last conv layer's weights and bias by the feature map's RMS (a ReLU stack is
        # positively homogeneous: the same features, rescaled) gives the new layers unit inputs.
        convs = [m for m in trunk.modules() if isinstance(m, torch.nn.Conv2d)]
        with torch.no_grad():
            trunk.eval()
            feature_scale = float(_deepest(trunk(x)).pow(2).mean().sqrt())
            convs[-1].weight.div_(feature_scale)
            if convs[-1].bias is not None:
                convs[-1].bias.div_(feature_scale)
    trunk.train(was_training)
    stats = {"pretrain_top1_acc": round(100.0 * correct / max(1, seen), 2),
             "pretrain_seconds": round(time.perf_counter() - start, 2), "pretrain_steps": steps}
    return stats if feature_scale is None else {**stats, "pretrain_feature_rms": round(feature_scale, 3)}


PRETRAINED_PARTS = ("trunk", "features", "backbone", "network.backbone")


def _pretrained_part(model: torch.nn.Module) -> torch.nn.Module:
    """The part of a detector that the papers pre-train on ImageNet: VGG-16's conv layers
    (`trunk`), R-CNN's CNN (`features`), YOLO's Darknet (`backbone`, `network.backbone`)."""
    for name in PRETRAINED_PARTS:
        try:
            return model.get_submodule(name)
        except AttributeError:
            continue
    raise ConfigError(f"recipe.pretrain: {type(model).__name__} has none of the submodules "
                      f"{', '.join(PRETRAINED_PARTS)}; set recipe.pretrain=null for it.")


def _deepest(features):
    return features[-1] if isinstance(features, (list, tuple)) else features


def pretrained_trunk(trunk: torch.nn.Module, spec: Mapping, cfg: DictConfig) -> dict:
    """`pretrain_trunk`, done once per (trunk, stage settings, seed) and kept in
    `<run_dir>/_pretrained/`: the experiments of a paper (and the papers sharing the VGG-16
    trunk) start from the same weights without paying for them again."""
    from .config import code_fingerprint

    spec = OmegaConf.to_container(spec, resolve=True) if isinstance(spec, DictConfig) else dict(spec)
    subtract_mean = cfg.data.get("normalize", "channel_mean") == "channel_mean"
    key = json.dumps({"spec": spec, "trunk": repr(trunk), "seed": int(cfg.seed), "code": code_fingerprint(),
                      "subtract_mean": subtract_mean}, sort_keys=True)
    path = Path(cfg.paths.run_dir) / "_pretrained" / f"{hashlib.sha256(key.encode()).hexdigest()[:12]}.pt"
    if path.exists():
        stored = torch.load(path, map_location="cpu", weights_only=True)
        trunk.load_state_dict(stored["state_dict"])
        return {**stored["stats"], "pretrain_cached": True}
    stats = pretrain_trunk(trunk, spec, cfg.paths.data_dir, cfg.seed, subtract_mean)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp-{os.getpid()}")
    torch.save({"state_dict": trunk.state_dict(), "stats": stats}, tmp)
    os.replace(tmp, path)
    return {**stats, "pretrain_cached": False}


def _step_seconds(callback_times: list[float]) -> float | None:
    return round(sum(callback_times) / len(callback_times), 4) if callback_times else None


class _StepTimer(Callback):
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


def run_detection(cfg: DictConfig, directory: Path, callbacks: Sequence[Callback] = ()) -> dict:
    """Train and test the detection experiment `cfg` in its run folder `directory`: the detection
    branch of `experiment.run`, which owns the cache, the lock and `--force`."""
    from .experiment import checkpoint_step, progress_log, quiet_lightning, run_loggers, write_result

    result_path = directory / "result.json"
    quiet_lightning()
    determinism.prepare(cfg)
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
            stats = pretrained_trunk(_pretrained_part(model), recipe.pretrain, cfg)
            if not pretrained:  # alternating training builds two networks from the same weights
                pretrained.update(stats)
        return model

    model = make_model()
    task_class = DetectionTask
    if getattr(model, "needs_proposals", False):
        _attach(datamodule, cfg)
        task_class = ProposalDetectionTask
    datamodule.setup()

    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    untrained = score_untrained(cfg, model, task_class, datamodule, directory)
    timer = _StepTimer()

    def fit(model: torch.nn.Module, stage_recipe, checkpoints: Path, logs: str = "logs"):
        """A trainer and task for `model` under `stage_recipe`, fitted (resumed from
        `checkpoints`/last.ckpt when there is one) and logging to `logs`; returns them with the
        step it resumed from."""
        checkpoint = ModelCheckpoint(dirpath=checkpoints, save_last=True, save_top_k=0,
                                     every_n_train_steps=stage_recipe.checkpoint_every_steps)
        validate = bool(stage_recipe.get("val_every_steps"))
        trainer = L.Trainer(
            **OmegaConf.to_container(cfg.trainer, resolve=True),
            max_steps=stage_recipe.max_steps, max_epochs=-1,
            # Scoring mAP on the whole test set is costly: detection runs validate only when asked.
            val_check_interval=stage_recipe.val_every_steps if validate else None,
            check_val_every_n_epoch=None, limit_val_batches=1.0 if validate else 0,
            num_sanity_val_steps=0,
            callbacks=[checkpoint, timer, determinism.RngState(), *progress_log(cfg, stage_recipe, logs[len("logs"):]),
                       *callbacks, RefuseFullOnCpu(cfg)],
            logger=run_loggers(cfg, directory, logs), default_root_dir=str(directory),
        )
        world = trainer.world_size
        if stage_recipe.batch_size % world:
            raise ConfigError(f"recipe.batch_size={stage_recipe.batch_size} does not split over {world} devices.")
        datamodule.batch_size = stage_recipe.batch_size // world
        task = task_class(model, stage_recipe, num_classes=cfg.data.num_classes,
                          protocol=cfg.data.get("protocol", "voc07"))
        last_path = checkpoints / "last.ckpt"
        resumed = str(last_path) if last_path.exists() else None
        resumed_step = checkpoint_step(resumed)
        trainer.fit(task, datamodule=datamodule, ckpt_path=resumed)
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
    fit_post_hoc = getattr(model, "fit_post_hoc", None)  # R-CNN's SVMs and box regressors
    if callable(fit_post_hoc):
        start = time.perf_counter()
        fit_post_hoc(datamodule.train_dataloader())
        post_hoc["post_hoc_seconds"] = round(time.perf_counter() - start, 2)
        trainer.save_checkpoint(directory / "checkpoints" / "last.ckpt")  # with the SVMs and regressors
    start = time.perf_counter()
    trainer.test(task, datamodule=datamodule, verbose=False)
    test_seconds = time.perf_counter() - start
    scored = task.results["test"]
    predictions = task.detections["test"][0][:SAVED_DETECTIONS]
    sizes = test_input_sizes(cfg)
    if sizes and not hasattr(model, "input_size"):
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
    if hasattr(model, "box_regression"):  # R-CNN: also scored without its box regression (Table 2)
        model.box_regression = False
        trainer.test(task, datamodule=datamodule, verbose=False)
        model.box_regression = True
        post_hoc["test_map_no_bb"] = 100.0 * float(task.results["test"]["map"])

    result = {
        "paper": cfg.paper.id, "experiment": cfg.experiment, "profile": cfg.profile.name,
        "config_hash": config_hash(cfg), "model": cfg.model.name, "dataset": cfg.data.name,
        "protocol": scored["protocol"], "params": count_params(model),
        "steps": sum(post_hoc["stage_steps"]) if "stage_steps" in post_hoc else trainer.global_step,
        "test_map": 100.0 * float(scored["map"]),
        **{f"test_{k}": 100.0 * float(scored[k]) for k in ("map_50", "map_75") if k in scored},
        "per_class_ap": {k: round(100.0 * float(v), 2) for k, v in scored["per_class"].items()},
        "train_seconds": round(train_seconds, 2), "seconds_per_step": _step_seconds(timer.times[5:] or timer.times),
        "cpu_seconds_per_step": _step_seconds(timer.cpu_times[5:] or timer.cpu_times),
        "test_seconds": round(test_seconds, 2), "test_images": len(task.detections["test"][1]),
        "resumed_from_step": resumed_step, "run_dir": str(directory), **pretrained, **post_hoc, **untrained,
        "skipped_files": skipped_files(datamodule.train_set, datamodule.test_set),
        **determinism.machine(),
    }
    if trainer.is_global_zero:
        torch.save([{k: v for k, v in p.items() if k in ("boxes", "scores", "labels")} for p in predictions],
                   directory / "detections.pt")
        write_result(result, result_path, ("test_map", *(k for k in ("test_map_50", "test_map_75") if k in result)))
    return {**result, "cached": False}


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


# Faster R-CNN Sec. 3.2 (i): what each of the four fits trains, from which weights.
ALTERNATING_STEPS = (
    "1: the RPN, from the ImageNet model",
    "2: a separate Fast R-CNN on step 1's proposals, from the ImageNet model",
    "3: the RPN's own layers on step 2's conv layers, which stay fixed",
    "4: Fast R-CNN's own layers on step 3's proposals, conv layers fixed",
)


def alternating_steps(recipe: DictConfig) -> list[int]:
    """`recipe.alternating_steps`: the training steps of the four fits (checked at compose:
    `validate.check_values`)."""
    return [int(n) for n in recipe.alternating_steps]


def fit_alternating(cfg: DictConfig, model: torch.nn.Module, make_model, fit, checkpoints: Path):
    """Faster R-CNN's 4-step alternating training (Sec. 3.2 (i), `ALTERNATING_STEPS`), each step
    a fit of `recipe.alternating_steps[k]` steps under the recipe's schedule:

    1. `model` (ImageNet-initialised) learns the RPN's losses alone;
    2. a second network from `make_model()` (ImageNet-initialised again: no shared layers yet)
       learns Fast R-CNN's losses on step 1's proposals, step 1's network held fixed;
    3. the second network's conv layers are frozen from here on; its RPN layers (never trained)
       learn the RPN's losses: the two tasks now share the conv layers;
    4. with the RPN frozen too, Fast R-CNN's own layers are fine-tuned on its proposals.

    `fit(model, recipe, folder)` is `run_detection`'s trainer; each step checkpoints in
    `checkpoints/step<k>/`, so an interrupted run resumes in the step it stopped in. Returns the
    last trainer and task (the unified network, ready to test), the steps restored from
    checkpoints (None: none) and the step counts."""
    steps = alternating_steps(cfg.recipe)
    resumed: list[int] = []

    def step(k: int, network: torch.nn.Module, stage: str):
        network.train_stage = stage
        folder = checkpoints / f"step{k}"
        trainer, task, resumed_step = fit(network, OmegaConf.merge(cfg.recipe, {"max_steps": steps[k - 1]}), folder,
                                          f"logs/step{k}")
        trainer.save_checkpoint(folder / "last.ckpt")  # complete, whatever checkpoint_every_steps
        if resumed_step:
            resumed.append(resumed_step)
        log.info("alternating training, step %s: done (%d steps)", ALTERNATING_STEPS[k - 1], steps[k - 1])
        return trainer, task

    if not hasattr(model, "train_stage"):
        raise ConfigError(f"recipe.training=alternating: {cfg.model.name} has no separate RPN and detector "
                          "losses; it applies to Faster R-CNN only. Use recipe.training=joint.")
    model.head.requires_grad_(False)
    step(1, model, "rpn")
    detector = make_model()
    detector.rpn.requires_grad_(False)
    detector.use_proposer(model)
    step(2, detector, "detector")
    detector.use_proposer(None)
    detector.trunk.requires_grad_(False)
    detector.head.requires_grad_(False)
    detector.rpn.requires_grad_(True)
    step(3, detector, "rpn")
    detector.rpn.requires_grad_(False)
    detector.head.requires_grad_(True)
    trainer, task = step(4, detector, "detector")
    detector.train_stage = "joint"
    trainer.save_checkpoint(checkpoints / "last.ckpt")  # the unified network, for load_trained
    return trainer, task, (sum(resumed) if resumed else None), steps


def test_input_sizes(cfg: DictConfig) -> dict[int, int]:
    """The input sizes a YOLO network is evaluated at after training (YOLOv2 Table 3, YOLOv3
    Fig. 1, YOLOv4 Table 10), keyed by the paper's size: `recipe.test_input_sizes` times
    `recipe.test_input_scale` (the reduced profile's smaller canvases), rounded to the networks'
    stride of 32 (at least 32). Results are stored under the paper's sizes (`test_map_<size>`)."""
    scale = float(cfg.recipe.get("test_input_scale", 1.0))
    return {int(s): max(32, int(round(int(s) * scale / 32)) * 32) for s in cfg.recipe.get("test_input_sizes") or []}


def load_detections(result: Mapping) -> list[dict]:
    """The detections (original image coordinates) of the first test images of a finished run."""
    return torch.load(os.path.join(result["run_dir"], "detections.pt"), map_location="cpu", weights_only=True)


def train_dataset(cfg: DictConfig):
    """The experiment's training set as stored (no transforms, difficult objects kept): its boxes
    for statistics such as YOLOv2's dimension clusters (Table 1)."""
    datamodule = build_detection_datamodule(cfg.data, data_dir=cfg.paths.data_dir, batch_size=1, seed=cfg.seed)
    return datamodule.make_train(None)


def test_dataset(cfg: DictConfig):
    """The experiment's test set as stored (no transforms): images and targets for the plots."""
    datamodule = build_detection_datamodule(cfg.data, data_dir=cfg.paths.data_dir, batch_size=1, seed=cfg.seed)
    return datamodule.make_test(None)


# -- exact cells the generic counter cannot express ------------------------------------------------
EXACT_QUANTITIES = ("params", "weights", "anchors", "pool5", "out_channels", "output_elements")


def exact_value(cell: Mapping, spec: Mapping) -> float:
    """One exact cell of a detection paper (`Report.exact(table_id, counter=exact_value)`), of
    the registry model `model` built with `model_kwargs` on the meta device:

    * `params` (all parameters) or `weights` (weight matrices and kernels only, the papers'
      "u x v" counts) of `module` (a dotted name, or a list of them: summed), optionally after
      `truncated_svd` (ranks as `svd_ranks: [fc6, fc7]`, applied to the module named by `svd_head`);
    * `anchors`: the anchors of an image of `image_size` [H, W] (Faster R-CNN);
    * `pool5`: R-CNN's pool5 feature size;
    * `out_channels`: the filters of the convolution `module` (YOLOv2's 125-filter VOC head);
    * `output_elements`: the values the network (or `module`) outputs per image of
      `input_size` [C, H, W] (YOLOv1's 7 x 7 x 30);
    * any quantity of `replicate.complexity` (`gops`, `mparams`, ...) for `input_size`.

    The value is divided by `divide_by` (the paper's units, e.g. 1e4 for "2.8 x 10^4")."""
    from .complexity import QUANTITIES, count
    from .models.fast_rcnn import truncated_svd

    quantity = cell.get("quantity", spec.get("quantity"))
    known = EXACT_QUANTITIES + tuple(q for q in QUANTITIES if q not in EXACT_QUANTITIES)
    if quantity not in known:
        raise ConfigError(f"table {spec['id']}, row {cell['row']!r}: quantity {quantity!r} is not one of "
                          f"{', '.join(known)}.")
    kwargs = {**spec.get("model_kwargs", {}), **cell.get("model_kwargs", {})}
    divide_by = float(cell.get("divide_by", 1))
    input_size = cell.get("input_size", spec.get("input_size"))
    names = cell.get("module")
    with torch.device("meta"):  # shapes only: nothing is allocated
        model = models.build(cell["model"], **kwargs)
        if quantity == "pool5":  # R-CNN: the dimension of a region's pool5 feature
            return float(torch.Size(model.pool5_shape).numel()) / divide_by
        if quantity == "anchors":
            return float(model.num_anchors(tuple(cell.get("image_size", spec.get("image_size"))))) / divide_by
        if quantity == "out_channels":
            return float(model.get_submodule(names).weight.shape[0]) / divide_by
        if quantity == "output_elements":
            target = model.get_submodule(names) if names else model
            with torch.no_grad():
                output = target.eval()(torch.zeros(1, *input_size))
            return float(output.numel()) / divide_by
        if quantity not in EXACT_QUANTITIES:
            return float(getattr(count(model.eval(), input_size, module=names), quantity)) / divide_by
        if cell.get("svd_ranks"):
            head = cell.get("svd_head", "head")
            setattr(model, head, truncated_svd(model.get_submodule(head), *cell["svd_ranks"]))
    targets = [model.get_submodule(n) for n in ([names] if isinstance(names, str) else names)] if names else [model]
    tensors = [p for t in targets for p in t.parameters() if quantity == "params" or p.ndim >= 2]
    return float(sum(p.numel() for p in tensors)) / divide_by


# -- the speed tables, measured on the hardware present --------------------------------------------
def load_trained(cfg: DictConfig, result: Mapping) -> torch.nn.Module:
    """The detector of a finished run, with its trained weights (the last checkpoint), in eval mode."""
    model = build_detector(cfg)
    checkpoint = torch.load(os.path.join(result["run_dir"], "checkpoints", "last.ckpt"), map_location="cpu",
                            weights_only=False)
    model.load_state_dict({k[len("model."):]: v for k, v in checkpoint["state_dict"].items() if k.startswith("model.")})
    return model.eval()


@torch.no_grad()
def time_two_stage(model: torch.nn.Module, images: Sequence, stored: Sequence, *, selective_search_mode: str = "fast",
                   max_proposals: int = 2000) -> dict[str, float]:
    """Milliseconds per image of the stages of Faster R-CNN Table 4 (NIPS; Table 5 in arXiv v3),
    one image at a time: `conv` (the shared VGG-16 layers), `rpn` (the RPN and its proposal
    selection), `region_rpn` (RoI pooling, fc layers, softmax, per-class NMS on the RPN's
    proposals), `selective_search` (on the stored image) and `region_ss` (the same region-wise
    stage on its proposals, i.e. "SS + Fast R-CNN"). `model` is a FasterRCNN; `images` the
    network's inputs and `stored` the same images as stored (uint8) for selective search."""
    from . import proposals as P

    device = next(model.parameters()).device
    clock = Clock(device)
    totals = dict.fromkeys(("conv", "rpn", "region_rpn", "selective_search", "region_ss"), 0.0)
    counts = {"rpn": 0, "selective_search": 0}
    with one_thread_on_cpu(device):
        model.eval()
        for image, raw in zip(images, stored):
            image = image.to(device)
            t0 = clock.now()
            features, sizes = model.features([image])
            t1 = clock.now()
            _, _, _, proposals = model.propose(features, sizes)
            t2 = clock.now()
            model.detect(features, proposals, sizes)
            t3 = clock.now()
            start = time.process_time()  # selective search runs on the CPU, one thread
            boxes = P.selective_search(raw, selective_search_mode, max_proposals)
            ss = time.process_time() - start
            scale = torch.tensor([image.shape[-1] / raw.shape[-1], image.shape[-2] / raw.shape[-2]] * 2)
            t4 = clock.now()
            model.detect(features, [(boxes * scale).to(device)], sizes)
            t5 = clock.now()
            for key, value in (("conv", t1 - t0), ("rpn", t2 - t1), ("region_rpn", t3 - t2),
                               ("selective_search", ss), ("region_ss", t5 - t4)):
                totals[key] += value
            counts["rpn"] += len(proposals[0])
            counts["selective_search"] += len(boxes)
    n = max(1, len(images))
    out = {k: 1000.0 * v / n for k, v in totals.items()}
    out.update({f"{k}_proposals": c / n for k, c in counts.items()})
    return out


@torch.no_grad()
def time_fast_rcnn(model: torch.nn.Module, images: Sequence, proposals: Sequence, svd_ranks=(1024, 256)
                   ) -> dict[str, float]:
    """Milliseconds per image of Fast R-CNN's test stages (Table 4, Fig. 2; proposals excluded),
    one image at a time: `conv`, `region` (RoI pooling, fc layers, softmax, per-class NMS),
    `fc` (fc6 and fc7 alone) and `region_svd` (the region-wise stage with fc6 and fc7 compressed
    by `truncated_svd` to `svd_ranks`, scaled down with the model's widths)."""
    import torch.nn.functional as F

    from .models.fast_rcnn import postprocess, truncated_svd
    from .ops import boxes as B

    device = next(model.parameters()).device
    clock = Clock(device)
    head = model.head
    scale = head.fc7.in_features / 4096  # the paper's ranks are for VGG16's 4096-wide layers
    compressed = truncated_svd(head, max(1, round(svd_ranks[0] * scale)), max(1, round(svd_ranks[1] * scale))).eval()
    totals = dict.fromkeys(("conv", "region", "fc", "region_svd"), 0.0)
    with one_thread_on_cpu(device):
        model.eval()
        for image, boxes in zip(images, proposals):
            image = image.to(device)
            t0 = clock.now()
            features, sizes = model.features([image])
            t1 = clock.now()
            rois = [B.clip_boxes_to_image(torch.as_tensor(boxes).float().to(device), sizes[0])]
            for name, h in (("region", head), ("region_svd", compressed)):
                start = clock.now()
                logits, deltas = h(features, rois)
                postprocess(logits, deltas, rois, sizes)
                totals[name] += clock.now() - start
            pooled = B.roi_pool(features, rois, head.pool_size, head.spatial_scale).flatten(1)
            t2 = clock.now()
            F.relu(head.fc7(F.relu(head.fc6(pooled))))
            totals["fc"] += clock.now() - t2
            totals["conv"] += t1 - t0
    n = max(1, len(images))
    return {k: 1000.0 * v / n for k, v in totals.items()}


def timing_images(cfg: DictConfig, count: int = 10) -> tuple[list, list, object]:
    """The first `count` test images as the network sees them (the test transform) and as
    stored (uint8, for selective search), and the stored test set itself."""
    datamodule = build_detection_datamodule(cfg.data, data_dir=cfg.paths.data_dir, batch_size=1, seed=cfg.seed)
    stored_set = datamodule.make_test(None)
    indices = range(min(count, len(stored_set)))
    stored = [stored_set.read_image(i) for i in indices]
    inputs = [datamodule.test_tf(image, stored_set.target(i))[0].as_subclass(torch.Tensor)
              for i, image in zip(indices, stored)]
    return inputs, stored, stored_set


@torch.no_grad()
def time_rcnn_vs_fast(rcnn: torch.nn.Module, fast: torch.nn.Module, images: Sequence, proposals: Sequence
                      ) -> dict[str, float]:
    """Milliseconds per image of R-CNN's detection (every proposal warped and through the CNN,
    SVMs, regressors, NMS) and Fast R-CNN's (conv layers once, RoI pooling, fc layers, NMS) on
    the same images and proposals, proposal time excluded (Fast R-CNN Table 4)."""
    device = next(fast.parameters()).device
    clock = Clock(device)
    totals = {"rcnn": 0.0, "fast_rcnn": 0.0}
    with one_thread_on_cpu(device):
        rcnn.eval()
        fast.eval()
        for image, boxes in zip(images, proposals):
            image, boxes = image.to(device), torch.as_tensor(boxes).float().to(device)
            for name, model in (("rcnn", rcnn), ("fast_rcnn", fast)):
                start = clock.now()
                model([image], proposals=[boxes])
                totals[name] += clock.now() - start
    n = max(1, len(images))
    return {k: 1000.0 * v / n for k, v in totals.items()}
