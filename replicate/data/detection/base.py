"""What every detection data set shares (the bottom of `data.detection`): the sample format,
skipping of corrupt files, collation of variable-size images and their padding into a batch.

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
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import Dataset
from torchvision import tv_tensors


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
