"""The classification data sets (Fashion-MNIST, CIFAR-10/100, ImageNet) behind two calls:

    dm = build_datamodule(cfg.data, data_dir=..., batch_size=..., augment=..., normalize=...)
    folder = prepare("cifar10", data_dir, download=False)   # DVC preparation stages

Fashion-MNIST and CIFAR-10/100 are held in memory and augmented per batch on the device
(`TensorDataModule`: ResNet Sec. 4.2's pad-crop-flip, the Inception crop, RandAugment...);
ImageNet is read from class folders with ResNet Sec. 3.4's pipeline in worker processes
(`ImageNetDataModule`). The detection sets (VOC, COCO, the generated one) are in `detection`.
A missing data set raises `DatasetMissingError` saying what to get and where to put it; the
training order resumes mid-epoch (`sampler`)."""

from __future__ import annotations

from collections.abc import Mapping
from functools import partial
from pathlib import Path
from typing import Any

import lightning as L

from ..errors import ConfigError, choices
from . import cifar, fashion_mnist, imagenet
from .imagenet import ImageNetDataModule
from .tensor_datamodule import Splits, TensorDataModule
from .transforms import PAPER_CROP

DATASETS = ("fashion_mnist", "cifar10", "cifar100", "imagenet")
AUGMENTATIONS = ("none", "cifar", "imagenet", "inception")
NORMALIZATIONS = ("per_pixel_mean", "channel_mean", "none")
# The sets `prepare(..., download=True)` can fetch (torchvision's downloaders); ImageNet and COCO
# are never downloaded.
DOWNLOADABLE = ("fashion_mnist", "cifar10", "cifar100", "voc2007", "voc2012", "voc0712")
CHANNELS = {"fashion_mnist": 1, "cifar10": 3, "cifar100": 3, "imagenet": 3}
NATIVE_SIZE = {"fashion_mnist": fashion_mnist.NATIVE_SIZE, "cifar10": cifar.NATIVE_SIZE, "cifar100": cifar.NATIVE_SIZE}

__all__ = [
    "DATASETS", "DOWNLOADABLE", "AUGMENTATIONS", "NORMALIZATIONS", "build_datamodule", "prepare",
    "TensorDataModule", "ImageNetDataModule", "Splits",
]


def _check_name(name: Any) -> str:
    if name not in DATASETS:
        raise ConfigError(f"data.name={name!r} is not a data set this workbook reads.{choices(str(name), DATASETS)}")
    return name


def _check_choice(key: str, value: Any, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise ConfigError(f"{key}={value!r} is not supported.{choices(str(value), allowed)}")
    return value


def _optional_positive(key: str, value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(f"{key}={value!r} must be a positive integer or null.")
    return value


def _scale_range(cfg: Mapping, minimum: int) -> tuple[int, int]:
    value = cfg.get("scale_range", None)
    value = [256, 480] if value is None else list(value)
    if len(value) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) for v in value) \
            or not minimum <= value[0] <= value[1]:
        raise ConfigError(
            f"data.scale_range={value!r} must be two integers [low, high] with {minimum} <= low <= high "
            "(the shorter side's range, e.g. [256, 480] for a 224 crop)."
        )
    return value[0], value[1]


def build_datamodule(
    data_cfg: Mapping,
    *,
    data_dir: str | Path,
    batch_size: int,
    augment: str,
    normalize: str,
    seed: int = 0,
    num_workers: int = 0,
    randaugment: Mapping | None = None,
    random_erasing: float = 0.0,
) -> L.LightningDataModule:
    """The datamodule `data_cfg` (conf/data/*.yaml) describes; nothing is read until `setup()`.

    `num_classes` and `input_size` (C, H, W) are set at once; val and test loaders both give
    the test split, since the paper reports and plots test error.
    """
    name = _check_name(data_cfg.get("name", None))
    _check_choice("recipe.augment", augment, AUGMENTATIONS)
    _check_choice("recipe.normalize", normalize, NORMALIZATIONS)
    channels = data_cfg.get("channels", CHANNELS[name])
    if channels != CHANNELS[name]:
        raise ConfigError(f"data.channels={channels!r} but {name} has {CHANNELS[name]} channel(s).")
    num_classes = _optional_positive("data.num_classes", data_cfg.get("num_classes", None))
    if num_classes is None:
        raise ConfigError("data.num_classes is required (a positive integer).")
    image_size = _optional_positive("data.image_size", data_cfg.get("image_size", None))
    train_subset = _optional_positive("data.train_subset", data_cfg.get("train_subset", None))
    test_subset = _optional_positive("data.test_subset", data_cfg.get("test_subset", None))
    if _optional_positive("batch_size", batch_size) is None:
        raise ConfigError("batch_size must be a positive integer.")
    download = bool(data_cfg.get("download", False))
    if randaugment is not None and not (isinstance(randaugment, Mapping) and set(randaugment) <= {"num_ops", "magnitude"}):
        raise ConfigError(f"recipe.randaugment={randaugment!r} must be null or {{num_ops: N, magnitude: M}}.")
    if not 0.0 <= float(random_erasing) <= 1.0:
        raise ConfigError(f"recipe.random_erasing={random_erasing!r} must be a probability in [0, 1].")
    extra = {"randaugment": dict(randaugment) if randaugment else None, "random_erasing": float(random_erasing)}

    if name == "imagenet":
        image_size = image_size or PAPER_CROP
        eval_crops = data_cfg.get("eval_crops", 1)
        if eval_crops not in (1, 10):
            raise ConfigError(f"data.eval_crops={eval_crops!r} is not supported. Allowed: 1, 10.")
        eval_resize = _optional_positive("data.eval_resize", data_cfg.get("eval_resize", 256)) or 256
        if eval_resize < image_size:
            raise ConfigError(f"data.eval_resize={eval_resize} is smaller than the crop data.image_size={image_size}.")
        return ImageNetDataModule(
            data_dir=data_dir, num_classes=num_classes, image_size=image_size,
            # Only Sec. 3.4's scale augmentation reads the range; other crops ignore it.
            scale_range=_scale_range(data_cfg, image_size) if augment == "imagenet" else (image_size, image_size),
            eval_resize=eval_resize, eval_crops=eval_crops,
            batch_size=batch_size, augment=augment, normalize=normalize, seed=seed, num_workers=num_workers,
            train_subset=train_subset, test_subset=test_subset, **extra,
        )

    load = (
        partial(fashion_mnist.load, data_dir, download) if name == "fashion_mnist"
        else partial(cifar.load, name, data_dir, download)
    )
    return TensorDataModule(
        load, name=name, num_classes=num_classes, channels=channels, native_size=NATIVE_SIZE[name],
        image_size=image_size, batch_size=batch_size, augment=augment, normalize=normalize, seed=seed,
        train_subset=train_subset, test_subset=test_subset,
        # In memory the range is a zoom relative to Sec. 3.4's 224 crop, hence at least 224.
        scale_range=_scale_range(data_cfg, PAPER_CROP), **extra,
    )


def prepare(name: str, data_dir: str | Path, download: bool = False) -> Path:
    """Make sure data set `name` is on disk (copying or downloading it if allowed) and return
    its folder; raises `DatasetMissingError` with the fix otherwise. Detection sets (voc2007,
    voc2012, coco, synth_detection: generated from Fashion-MNIST) are handled by `.detection`."""
    from . import detection

    if name in detection.DATASETS:
        return detection.prepare(name, data_dir, download)
    name = _check_name(name)
    if name == "fashion_mnist":
        return fashion_mnist.prepare(data_dir, download)
    if name == "imagenet":
        return imagenet.prepare(data_dir, download)
    return cifar.prepare(name, data_dir, download)
