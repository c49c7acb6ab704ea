"""The detection data sets (VOC 2007/2012, COCO 2017, the generated reduced set) behind two calls:

    dm = build_detection_datamodule(cfg.data, data_dir=..., batch_size=..., seed=..., augment=...)
    folder = prepare("voc2007", data_dir, download=False)   # DVC preparation stages

The package, bottom up: `base` (the sample format every set shares, skipped files, collation),
the readers `voc`, `coco` and `synth` (the generated set, written in VOC and COCO layout so the
same readers serve both profiles), `augment` (the YOLO papers' training augmentation),
`proposals` (selective search for R-CNN and Fast R-CNN), `datamodule` (`DetectionDataModule`),
and this factory on top."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from torch.utils.data import ConcatDataset, Dataset

from ...errors import ConfigError, choices
from . import coco, synth, voc
from .augment import DetectionAugment
from .base import DetectionDataset, Record, batch_images, collate, make_target, skipped_files
from .datamodule import PAPER_MAX_SIZE, PAPER_MIN_SIZE, DetectionDataModule, build_transform


DATASETS = ("voc2007", "voc2012", "voc0712", "coco", "synth_detection")


FORMATS = ("voc", "coco")


__all__ = [
    "DATASETS", "DetectionDataset", "DetectionDataModule", "Record", "collate", "batch_images", "build_transform",
    "build_detection_datamodule", "make_target", "prepare", "skipped_files",
]


def _positive(key: str, value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(f"{key}={value!r} must be a positive integer or null.")
    return value


def _voc_factory(data_dir: Path, spec: str | Sequence[str], download: bool) -> Callable[[Callable], Dataset]:
    specs = [spec] if isinstance(spec, str) else list(spec)
    parsed = []
    for s in specs:
        year, _, image_set = str(s).partition("/")
        if year not in voc.YEARS or not image_set:
            raise ConfigError(f"VOC split {s!r} must read '<year>/<image set>' with year in {voc.YEARS}, "
                              "e.g. '2007/trainval' or '2007/test'.")
        parsed.append((year, image_set))

    def make(transforms: Callable) -> Dataset:
        sets = [voc.VOCDetection(voc.locate(data_dir, year, image_set, download), image_set, transforms=transforms)
                for year, image_set in parsed]
        if len(sets) == 1:
            return sets[0]
        joined = ConcatDataset(sets)
        joined.class_names = sets[0].class_names  # type: ignore[attr-defined]
        return joined

    return make


def build_detection_datamodule(data_cfg: Mapping, *, data_dir: str | Path, batch_size: int, seed: int = 0,
                               num_workers: int = 0, augment: Mapping | None = None) -> DetectionDataModule:
    """The datamodule `data_cfg` (conf/data/{voc2007,coco,synth_detection}.yaml) describes, with
    the training augmentation `augment` (`recipe.detection_augment`, see `DetectionAugment`);
    nothing is read until `setup()` (the generated set is written then if absent)."""
    name = data_cfg.get("name", None)
    if name not in DATASETS:
        raise ConfigError(f"data.name={name!r} is not a detection data set.{choices(str(name), DATASETS)}")
    fmt = data_cfg.get("format", "coco" if name == "coco" else "voc")
    if fmt not in FORMATS or (name == "coco" and fmt != "coco") or (name.startswith("voc") and fmt != "voc"):
        raise ConfigError(f"data.format={fmt!r} cannot read {name}. Allowed: "
                          f"{'voc, coco' if name == 'synth_detection' else ('coco' if name == 'coco' else 'voc')}.")
    num_classes = _positive("data.num_classes", data_cfg.get("num_classes", None))
    if num_classes is None:
        raise ConfigError("data.num_classes is required (a positive integer).")
    if _positive("batch_size", batch_size) is None:
        raise ConfigError("batch_size must be a positive integer.")
    train_augment = DetectionAugment.from_config(augment)
    data_dir = Path(data_dir)
    download = bool(data_cfg.get("download", False))
    train_spec, test_spec = data_cfg.get("train", None), data_cfg.get("test", None)
    if not train_spec or not test_spec:
        raise ConfigError("data.train and data.test must name the splits to read (e.g. '2007/trainval', '2007/test').")

    if name == "synth_detection":
        params = synth.params_from_config(data_cfg.get("synth", None) or {})
        for spec in (train_spec, test_spec):
            if spec not in synth.SPLITS:
                raise ConfigError(f"split {spec!r} of synth_detection is not one of {synth.SPLITS}.")

        def factory(split: str) -> Callable[[Callable], Dataset]:
            return lambda transforms: synth.open_split(data_dir, split, fmt=fmt, params=params, transforms=transforms)

        make_train, make_test = factory(train_spec), factory(test_spec)
    elif name == "coco":
        def factory(split: str) -> Callable[[Callable], Dataset]:
            def make(transforms: Callable) -> Dataset:
                images, annotations = coco.locate(data_dir, split)
                return coco.COCODetection(images, annotations, transforms=transforms)
            return make

        make_train, make_test = factory(str(train_spec)), factory(str(test_spec))
    else:
        make_train = _voc_factory(data_dir, train_spec, download)
        make_test = _voc_factory(data_dir, test_spec, download)

    return DetectionDataModule(
        make_train=make_train, make_test=make_test, num_classes=num_classes, batch_size=batch_size,
        min_size=_positive("data.min_size", data_cfg.get("min_size", PAPER_MIN_SIZE)),
        max_size=_positive("data.max_size", data_cfg.get("max_size", PAPER_MAX_SIZE)),
        flip=bool(data_cfg.get("flip", True)), normalize=str(data_cfg.get("normalize", "none")),
        augment=train_augment, train_drop=tuple(data_cfg.get("train_drop", ("difficult", "iscrowd"))),
        train_subset=_positive("data.train_subset", data_cfg.get("train_subset", None)),
        test_subset=_positive("data.test_subset", data_cfg.get("test_subset", None)),
        seed=seed, num_workers=num_workers,
    )


def prepare(name: str, data_dir: str | Path, download: bool = False) -> Path:
    """Make sure detection data set `name` is on disk (downloading VOC where allowed, generating
    the reduced set) and return its folder; `DatasetMissingError` with the fix otherwise."""
    if name not in DATASETS:
        raise ConfigError(f"{name!r} is not a detection data set.{choices(str(name), DATASETS)}")
    if name == "synth_detection":
        return synth.ensure(data_dir)
    if name == "coco":
        return coco.prepare(data_dir)
    if name == "voc0712":  # trained on both years' trainval, tested on 2007 test
        voc.prepare(data_dir, "2012", download)
        return voc.prepare(data_dir, "2007", download)
    return voc.prepare(data_dir, name[3:], download)
