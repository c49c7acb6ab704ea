"""What every detection data set shares: the sample format, skipping of corrupt files,
collation of variable-size images, the Fast/Faster R-CNN image scaling, and one
`DetectionDataModule` for VOC, COCO and the generated reduced set.

A sample is `(image, target)`: `image` a `tv_tensors.Image` (uint8 [3, H, W] as read; float in
[0, 1] after the datamodule's transforms) and `target` a dict with

    boxes      tv_tensors.BoundingBoxes [N, 4], XYXY, continuous coordinates (replicate.ops.boxes)
    labels     int64 [N], 1..K (0 is background and never appears)
    difficult  bool [N] (VOC; all False where the source has no such flag)
    iscrowd    bool [N] (COCO; all False elsewhere)
    area       float32 [N], the annotated area in original pixels (COCO; box area elsewhere)
    image_id   int, orig_size int64 [2] = (H, W) as stored on disk

torchvision.transforms.v2 moves `boxes` with the image; the other fields pass through.
A batch is `(list of images, list of targets)`: images keep their own sizes (`collate`), and a
model pads them itself (`batch_images`).

Corrupt files never stop an epoch: an unreadable annotation is skipped when the data set is
indexed, an unreadable image whenever it is read (the sample is None, and `collate` drops it:
no other image takes its place, so none is seen twice); either way a warning names the file,
once, and `dataset.skipped` lists it (a run's result records them: `skipped_files`). An image whose size differs
from its annotation's is used at its real size (boxes clipped), with a warning.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Subset
from torchvision import tv_tensors
from torchvision.transforms import v2

from ..errors import ConfigError, choices
from . import transforms as T
from .detection_augment import DetectionAugment
from .sampler import KeepsTrainOrder, SeededSamples, TrainOrder
from .tensor_datamodule import subset_indices

DATASETS = ("voc2007", "voc2012", "voc0712", "coco", "synth_detection")
FORMATS = ("voc", "coco")
NORMALIZATIONS = ("channel_mean", "none")
# Fast R-CNN Sec. 3.3 / Faster R-CNN Sec. 3.3: shorter side 600 pixels, longer side at most 1000.
PAPER_MIN_SIZE, PAPER_MAX_SIZE = 600, 1000

__all__ = [
    "DATASETS", "DetectionDataset", "DetectionDataModule", "Record", "collate", "batch_images", "build_transform",
    "build_detection_datamodule", "prepare",
]


class SkippedFileWarning(UserWarning):
    """A corrupt image or annotation was skipped."""


class Record(dict):
    """One indexed image: `path` (the image file) and its `target` (boxes as a float tensor)."""


def make_target(boxes: torch.Tensor, labels: torch.Tensor, image_size: tuple[int, int], image_id: int, *,
                difficult: torch.Tensor | None = None, iscrowd: torch.Tensor | None = None,
                area: torch.Tensor | None = None) -> dict[str, Any]:
    """The target dict of one image, every field present (see the module docstring)."""
    boxes = boxes.reshape(-1, 4).to(torch.float32)
    n = boxes.shape[0]
    if area is None:
        area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return {
        "boxes": tv_tensors.BoundingBoxes(boxes, format="XYXY", canvas_size=tuple(image_size)),
        "labels": labels.reshape(-1).to(torch.int64),
        "difficult": torch.zeros(n, dtype=torch.bool) if difficult is None else difficult.to(torch.bool),
        "iscrowd": torch.zeros(n, dtype=torch.bool) if iscrowd is None else iscrowd.to(torch.bool),
        "area": area.to(torch.float32),
        "image_id": int(image_id),
        "orig_size": torch.tensor(image_size, dtype=torch.int64),
    }


def warn_skipped(path: str | Path, reason: str) -> str:
    message = f"skipping {path}: {reason}"
    warnings.warn(message, SkippedFileWarning, stacklevel=3)
    return message


class DetectionDataset(Dataset):
    """Images and targets from a list of `Record`s, with `class_names` (label k is
    `class_names[k - 1]`). Subclasses index their annotations and call `super().__init__`."""

    def __init__(self, records: list[Record], class_names: Sequence[str], transforms: Callable | None = None,
                 skipped: list[str] | None = None):
        self.records = records
        self.class_names = list(class_names)
        self.transforms = transforms
        self.skipped: list[str] = list(skipped or [])
        self._bad: set[int] = set()

    def __len__(self) -> int:
        return len(self.records)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def target(self, index: int) -> dict[str, Any]:
        """The untransformed target of image `index`, without reading the image."""
        target = self.records[index]["target"]
        return {k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in target.items()}

    def read_image(self, index: int) -> tv_tensors.Image:
        path = self.records[index]["path"]
        with Image.open(path) as image:
            image = image.convert("RGB")  # decodes the whole file: truncation raises here
        tensor = torch.from_numpy(np.array(image)).permute(2, 0, 1)
        target = self.records[index]["target"]
        actual = (int(tensor.shape[1]), int(tensor.shape[2]))
        if tuple(target["orig_size"].tolist()) != actual:
            # The pixels are the truth: the boxes are kept (clipped) on the real canvas.
            warnings.warn(f"{path}: the image is {actual} (H, W) but its annotation says "
                          f"{tuple(target['orig_size'].tolist())}; using the image's size.", SkippedFileWarning,
                          stacklevel=2)
            boxes = target["boxes"].as_subclass(torch.Tensor).clone()
            boxes[:, 0::2] = boxes[:, 0::2].clamp(0, actual[1])
            boxes[:, 1::2] = boxes[:, 1::2].clamp(0, actual[0])
            target["boxes"] = tv_tensors.BoundingBoxes(boxes, format="XYXY", canvas_size=actual)
            target["orig_size"] = torch.tensor(actual, dtype=torch.int64)
        return tv_tensors.Image(tensor)

    def __getitem__(self, index: int):
        """(image, target), or None for an image that cannot be read (dropped by `collate`)."""
        if index in self._bad:
            return None
        try:
            image = self.read_image(index)
        except (OSError, ValueError, SyntaxError) as error:  # PIL's errors for broken files
            self._bad.add(index)
            self.skipped.append(warn_skipped(self.records[index]["path"], f"unreadable image ({error})"))
            return None
        target = self.target(index)
        if self.transforms is not None:
            image, target = self.transforms(image, target)
        return image, target


def collate(batch: Sequence[tuple | None]) -> tuple[list, list]:
    """(images, targets) as two lists: detection images keep their own sizes; unreadable images
    (None) are left out."""
    batch = [sample for sample in batch if sample is not None]
    images, targets = zip(*batch) if batch else ((), ())
    return list(images), list(targets)


def skipped_files(*datasets) -> list[str]:
    """The files the data sets (and the sets they wrap: subsets, concatenations) skipped."""
    found: list[str] = []
    for dataset in datasets:
        for part in getattr(dataset, "datasets", None) or [getattr(dataset, "dataset", None) or dataset]:
            if part is not dataset and (hasattr(part, "dataset") or hasattr(part, "datasets")):
                found += skipped_files(part)
            else:
                found += [s for s in getattr(part, "skipped", []) if s not in found]
    return found


def batch_images(images: Sequence[torch.Tensor], size_divisible: int = 1) -> tuple[torch.Tensor, list[tuple[int, int]]]:
    """Zero-pad images [C, H_i, W_i] at the bottom/right into one [B, C, H, W] tensor (H, W
    rounded up to a multiple of `size_divisible`); returns it and the original (H_i, W_i)."""
    sizes = [(int(im.shape[-2]), int(im.shape[-1])) for im in images]
    h = max(s[0] for s in sizes)
    w = max(s[1] for s in sizes)
    h = -(-h // size_divisible) * size_divisible
    w = -(-w // size_divisible) * size_divisible
    batch = torch.stack([F.pad(torch.as_tensor(im), (0, w - s[1], 0, h - s[0])) for im, s in zip(images, sizes)])
    return batch, sizes


def build_transform(*, train: bool, min_size: int | None, max_size: int | None, flip: bool,
                    normalize: str, augment: DetectionAugment | None = None) -> v2.Compose:
    """Scale so the shorter side is `min_size` unless the longer one would exceed `max_size`
    (Fast R-CNN Sec. 3.3's single scale: 600 / 1000; None keeps the stored size), in training
    apply `augment`'s random scaling and translation (the YOLO papers), flip horizontally with
    probability 1/2 (Fast R-CNN Sec. 2.3) and apply `augment`'s HSV jitter, convert to float in
    [0, 1] and subtract the ImageNet RGB mean (`channel_mean`; the pre-trained trunks' input)."""
    if normalize not in NORMALIZATIONS:
        raise ConfigError(f"data.normalize={normalize!r} is not supported.{choices(str(normalize), NORMALIZATIONS)}")
    steps: list = []
    if min_size is not None:
        steps.append(v2.Resize(size=int(min_size), max_size=None if max_size is None else int(max_size),
                               antialias=True))
    if train and augment is not None:
        steps.extend(augment.geometric())
    if train and flip:
        steps.append(v2.RandomHorizontalFlip())
    steps.append(v2.ToDtype(torch.float32, scale=True))
    if train and augment is not None:
        steps.extend(augment.photometric())
    if normalize == "channel_mean":
        # Mean subtraction only, as the Caffe-trained trunks expect (unit std: no division).
        steps.append(v2.Normalize(mean=list(T.IMAGENET_RGB_MEAN), std=[1.0, 1.0, 1.0]))
    return v2.Compose(steps)


def drop_flagged(target: dict[str, Any], keys: Sequence[str] = ("difficult",)) -> dict[str, Any]:
    """The target without the boxes flagged by any of `keys` (training excludes VOC's difficult
    objects, as the Fast/Faster R-CNN code does, and COCO's crowd regions)."""
    keep = torch.ones(len(target["labels"]), dtype=torch.bool)
    for key in keys:
        keep &= ~target[key]
    if bool(keep.all()):
        return target
    out = dict(target)
    for key in ("boxes", "labels", "difficult", "iscrowd", "area"):
        out[key] = target[key][keep]
    return out


class _WithoutFlagged(Dataset):
    def __init__(self, dataset: Dataset, keys: Sequence[str]):
        self.dataset, self.keys = dataset, tuple(keys)

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int):
        sample = self.dataset[index]
        if sample is None:  # an unreadable image: dropped by `collate`
            return None
        image, target = sample
        return image, drop_flagged(target, self.keys)


class DetectionDataModule(KeepsTrainOrder, L.LightningDataModule):
    """Train and test detection sets from two factories `make(transforms) -> DetectionDataset`
    (one or several sets concatenated for training, e.g. VOC 07+12). `val` and `test` both
    give the test set. Batches are `(images, targets)` lists (`collate`)."""

    def __init__(
        self,
        *,
        make_train: Callable[[Callable], Dataset],
        make_test: Callable[[Callable], Dataset],
        num_classes: int,
        class_names: Sequence[str] | None = None,
        batch_size: int,
        min_size: int | None = PAPER_MIN_SIZE,
        max_size: int | None = PAPER_MAX_SIZE,
        flip: bool = True,
        normalize: str = "none",
        augment: DetectionAugment | None = None,
        train_drop: Sequence[str] = ("difficult", "iscrowd"),
        train_subset: int | None = None,
        test_subset: int | None = None,
        seed: int = 0,
        num_workers: int = 0,
    ):
        super().__init__()
        self.make_train, self.make_test = make_train, make_test
        self.num_classes = int(num_classes)
        self.class_names = list(class_names) if class_names is not None else None
        self.batch_size = int(batch_size)
        sizes = {"min_size": min_size, "max_size": max_size, "normalize": normalize}
        self.train_tf = build_transform(train=True, flip=flip, augment=augment, **sizes)
        self.test_tf = build_transform(train=False, flip=False, **sizes)
        self.train_drop = tuple(train_drop)
        self.train_subset, self.test_subset = train_subset, test_subset
        self.seed = int(seed)
        self.num_workers = int(num_workers)
        self.order = TrainOrder(self.seed)
        self.train_set: Dataset | None = None
        self.test_set: Dataset | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        train, test = self.make_train(self.train_tf), self.make_test(self.test_tf)
        names = getattr(test, "class_names", None)
        if names is not None:
            if len(names) != self.num_classes:
                raise ConfigError(f"data.num_classes={self.num_classes} but the data set has {len(names)} classes.")
            self.class_names = list(names)
        self.train_set = self._subset(_WithoutFlagged(train, self.train_drop) if self.train_drop else train,
                                      self.train_subset)
        self.test_set = self._subset(test, self.test_subset)

    def _subset(self, dataset: Dataset, size: int | None) -> Dataset:
        indices = subset_indices(len(dataset), size, self.seed)  # type: ignore[arg-type]
        return dataset if indices is None else Subset(dataset, sorted(indices.tolist()))

    def _loader(self, dataset: Dataset | None, train: bool) -> DataLoader:
        if dataset is None:
            self.setup()
            dataset = self.train_set if train else self.test_set
        keyed = train and self.num_workers > 0  # with workers: see sampler.py's SeededSamples
        if keyed:
            dataset = SeededSamples(dataset, self.seed)
        return DataLoader(
            dataset, batch_size=self.batch_size, drop_last=train, collate_fn=collate,
            sampler=self.order.sampler(len(dataset), self.batch_size, keyed) if train else None,  # type: ignore[arg-type]
            num_workers=self.num_workers, persistent_workers=self.num_workers > 0,
            generator=torch.Generator().manual_seed(self.seed) if train else None,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, False)


def _positive(key: str, value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(f"{key}={value!r} must be a positive integer or null.")
    return value


def _voc_factory(data_dir: Path, spec: str | Sequence[str], download: bool) -> Callable[[Callable], Dataset]:
    from torch.utils.data import ConcatDataset

    from . import voc

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
        from . import detection_synth as synth

        params = synth.params_from_config(data_cfg.get("synth", None) or {})
        for spec in (train_spec, test_spec):
            if spec not in synth.SPLITS:
                raise ConfigError(f"split {spec!r} of synth_detection is not one of {synth.SPLITS}.")

        def factory(split: str) -> Callable[[Callable], Dataset]:
            return lambda transforms: synth.open_split(data_dir, split, fmt=fmt, params=params, transforms=transforms)

        make_train, make_test = factory(train_spec), factory(test_spec)
    elif name == "coco":
        from . import coco

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
        from . import detection_synth

        return detection_synth.ensure(data_dir)
    if name == "coco":
        from . import coco

        return coco.prepare(data_dir)
    from . import voc

    if name == "voc0712":  # trained on both years' trainval, tested on 2007 test
        voc.prepare(data_dir, "2012", download)
        return voc.prepare(data_dir, "2007", download)
    return voc.prepare(data_dir, name[3:], download)
