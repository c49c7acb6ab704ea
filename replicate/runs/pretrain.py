"""Where a network's starting weights come from: another run's trained network
(`model.backbone_weights`, `initial_weights`) or, for the reduced profile's detectors, their
trunk pre-trained on Fashion-MNIST classification and cached (`pretrain_or_load`), as the papers
pre-train on ImageNet."""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Mapping
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from ..config.hashing import TRAINING_CODE, code_fingerprint
from ..errors import ConfigError
from ..models.protocols import Detector


def initial_weights(cfg: DictConfig) -> dict | None:
    """The state dict `model.backbone_weights` names, or None without one. An unresolved
    `model.backbone_from` and a missing file are `ConfigError`s that say what to do."""
    weights, source = cfg.model.get("backbone_weights"), cfg.model.get("backbone_from")
    if source and not weights:
        raise ConfigError(f"model.backbone_from={source!r} is resolved by replicate.runs.run_all (the "
                          f"notebook) or `python -m replicate run`, which train {source} first; here give "
                          "model.backbone_weights=<state dict> instead.")
    if not weights:
        return None
    path = Path(str(weights)).expanduser()
    if not path.is_file():
        raise ConfigError(f"model.backbone_weights={weights!r}: no such file. Give the path of a state dict of "
                          f"{cfg.model.name} or of the part it starts from (replicate.runs.store.save_weights writes one), "
                          "or null to start afresh.")
    state = torch.load(path, map_location="cpu", weights_only=True)
    return state.get("state_dict", state)


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
    process or loaded from the cache (`pretrain_or_load`)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        return _pretrain(trunk, spec, data_dir, seed, subtract_mean)


def _pretrain(trunk: torch.nn.Module, spec: Mapping, data_dir, seed: int, subtract_mean: bool) -> dict:
    import torch.nn.functional as F

    from ..data import fashion_mnist
    from ..data.transforms import IMAGENET_RGB_MEAN

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


def pretrained_part(model: torch.nn.Module) -> torch.nn.Module:
    """The part of a detector that its paper pre-trains on ImageNet, as the detector declares it
    (`models.protocols.Detector.pretrained_part`): VGG-16's conv layers, R-CNN's CNN, YOLO's Darknet."""
    name = model.pretrained_part if isinstance(model, Detector) else None
    if not name:
        raise ConfigError(f"recipe.pretrain / model.backbone_weights: {type(model).__name__} declares no pre-trained "
                          "part (models.protocols.Detector.pretrained_part); set recipe.pretrain=null for it.")
    return model.get_submodule(name)


def _deepest(features):
    return features[-1] if isinstance(features, (list, tuple)) else features


def pretrain_or_load(trunk: torch.nn.Module, spec: Mapping, cfg: DictConfig) -> dict:
    """`pretrain_trunk`, done once per (trunk, stage settings, seed) and kept in
    `<run_dir>/_pretrained/`: the experiments of a paper (and the papers sharing the VGG-16
    trunk) start from the same weights without paying for them again. Its code key is all of
    models/ (not one detector's files) so that Fast and Faster R-CNN share one trunk."""
    spec = OmegaConf.to_container(spec, resolve=True) if isinstance(spec, DictConfig) else dict(spec)
    subtract_mean = cfg.data.get("normalize", "channel_mean") == "channel_mean"
    code = code_fingerprint(("models", *TRAINING_CODE))
    key = json.dumps({"spec": spec, "trunk": repr(trunk), "seed": int(cfg.seed), "code": code,
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
