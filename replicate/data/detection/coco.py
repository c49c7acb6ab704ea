"""MS COCO detection (Lin et al. 2014), checked in place (no automatic download):

    <data_dir>/coco/train2017/*.jpg, val2017/*.jpg
                    annotations/instances_train2017.json, instances_val2017.json

`COCODetection(image_dir, annotation_file)` reads any COCO-format file through pycocotools, the
generated reduced set included. Boxes: COCO's [x, y, w, h] are continuous coordinates, so the
target holds (x, y, x + w, y + h). The sparse category ids (1..90 for COCO's 80 classes) become
labels 1..K in increasing id order (`category_ids[k - 1]` is label k's id). Targets also carry
`iscrowd` and the annotated `area` (the COCO protocol's small/medium/large use it), and
`difficult` when an annotation has that non-standard key (files converted from VOC, such as the
generated set's). Annotations with no usable box are skipped with a warning naming the file and
the annotation id, and counted in `skipped`, as are images whose file is missing or unreadable.
"""

from __future__ import annotations

import contextlib
import io
import json
from collections.abc import Callable
from pathlib import Path

import torch

from ...errors import CorruptFileError, DatasetMissingError
from .base import DetectionDataset, Record, make_target, warn_skipped

FOLDER = "coco"
SPLITS = ("train2017", "val2017")


def paths(data_dir: str | Path, split: str) -> tuple[Path, Path]:
    root = Path(data_dir) / FOLDER
    return root / split, root / "annotations" / f"instances_{split}.json"


def missing_error(data_dir: str | Path, split: str) -> DatasetMissingError:
    images, annotations = paths(data_dir, split)
    absent = [f"{p}{'/' if p == images else ''}" for p in (images, annotations) if not p.exists()]
    return DatasetMissingError(
        f"MS COCO '{split}' not found: {' and '.join(absent)} missing. It is not downloaded automatically. Fix it by "
        f"getting {split}.zip and annotations_trainval2017.zip from https://cocodataset.org/#download and "
        f"extracting both in {Path(data_dir) / FOLDER}/ (giving {images.name}/ and annotations/{annotations.name})."
    )


def locate(data_dir: str | Path, split: str) -> tuple[Path, Path]:
    images, annotations = paths(data_dir, split)
    if not images.is_dir() or not annotations.is_file():
        raise missing_error(data_dir, split)
    return images, annotations


def prepare(data_dir: str | Path) -> Path:
    """Check both splits are in place; return `<data_dir>/coco`."""
    for split in SPLITS:
        locate(data_dir, split)
    return Path(data_dir) / FOLDER


def _load(annotation_file: Path):
    from pycocotools.coco import COCO

    try:
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints timings
            return COCO(str(annotation_file))
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, AssertionError) as error:
        # One file holds the whole split: nothing can be skipped around it.
        raise CorruptFileError(f"{annotation_file}: not a readable COCO annotation file ({type(error).__name__}: {error}); "
                         "fetch it again.") from error


class COCODetection(DetectionDataset):
    """Every image of a COCO annotation file with its boxes (`skip_empty=True` leaves out images
    without any box, as detector training usually does)."""

    def __init__(self, image_dir: str | Path, annotation_file: str | Path, *, transforms: Callable | None = None,
                 skip_empty: bool = False):
        image_dir, annotation_file = Path(image_dir), Path(annotation_file)
        if not annotation_file.is_file():
            raise DatasetMissingError(f"{annotation_file} not found.")
        api = _load(annotation_file)
        self.category_ids = sorted(api.getCatIds())
        label_of = {c: k + 1 for k, c in enumerate(self.category_ids)}
        names = [api.cats[c]["name"] for c in self.category_ids]
        records, skipped = [], []
        for image_id in sorted(api.getImgIds()):
            info = api.imgs[image_id]
            size = (int(info["height"]), int(info["width"]))
            boxes, labels, crowd, area, difficult = [], [], [], [], []
            for ann in api.imgToAnns.get(image_id, []):
                try:
                    x, y, w, h = (float(v) for v in ann["bbox"])
                    # Clipped to the image, as a box reaching past the border is still an object.
                    x1, y1, x2, y2 = max(x, 0.0), max(y, 0.0), min(x + w, size[1]), min(y + h, size[0])
                    if not (w > 0 and h > 0 and x1 < x2 and y1 < y2):  # also false for NaN
                        raise ValueError(f"bbox {ann['bbox']} is empty in the {size[1]}x{size[0]} image")
                    label = label_of[ann["category_id"]]
                except (KeyError, TypeError, ValueError) as error:
                    skipped.append(warn_skipped(annotation_file, f"annotation {ann.get('id')} of image {image_id} "
                                                                 f"({type(error).__name__}: {error})"))
                    continue
                boxes.append((x1, y1, x2, y2))
                labels.append(label)
                crowd.append(bool(ann.get("iscrowd", 0)))
                area.append(float(ann.get("area", w * h)))
                difficult.append(bool(ann.get("difficult", 0)))
            if skip_empty and not boxes:
                continue
            target = make_target(torch.tensor(boxes, dtype=torch.float32), torch.tensor(labels, dtype=torch.int64),
                                 size, image_id, difficult=torch.tensor(difficult, dtype=torch.bool),
                                 iscrowd=torch.tensor(crowd, dtype=torch.bool), area=torch.tensor(area))
            records.append(Record(path=image_dir / info["file_name"], target=target, name=info["file_name"]))
        self.image_dir, self.annotation_file = image_dir, annotation_file
        super().__init__(records, names, transforms, skipped)
