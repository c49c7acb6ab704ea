"""The reduced profile's detection set: real Fashion-MNIST items placed on canvases, generated
deterministically from a seed and written to disk in VOC layout *and* as COCO JSON, so that the
reduced profile reads it through the very readers the full profile uses (`voc.VOCDetection`,
`coco.COCODetection`).

    <data_dir>/synth_detection/
        JPEGImages/<split>_<i>.jpg            RGB canvases, JPEG quality 90 as in VOC (byte-identical
                                              per seed with the same Pillow/libjpeg)
        Annotations/<split>_<i>.xml           VOC XML, with <difficult>
        ImageSets/Main/{train,test}.txt
        annotations/instances_{train,test}.json   COCO, file names relative to JPEGImages/
        meta.json                             the generator's parameters and version

Each canvas has a smooth random background with pixel noise and `objects` items (uniform in
[lo, hi]). An item is a Fashion-MNIST image (training items for the train split, test items for
the test split), resized to a random size (longer side uniform in `object_size`, aspect ratio
log-uniform within `aspect`), tinted with a random colour and alpha-blended by its own
intensity. Items may overlap (pairwise IoU of their squares at most `max_overlap`); an item
hidden below `difficult_visibility` of its ink by later ones is marked difficult. Its box is the
tight box of its ink (intensity above `INK`), in whole pixels. Labels are the 10 Fashion-MNIST
classes, 1..10.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
import xml.etree.ElementTree as ET
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ...errors import ConfigError
from .. import fashion_mnist

FOLDER = "synth_detection"
SPLITS = ("train", "test")
VERSION = 1  # bump when the drawing changes: a set on disk from another version is regenerated
JPEG_QUALITY = 90
INK = 0.2  # an item pixel belongs to the object (its box) above this intensity (0..1)
# Fashion-MNIST's 10 classes (Xiao et al. 2017, Table 1), as VOC-style names.
CLASSES = ("tshirt_top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle_boot")


@dataclass(frozen=True)
class SynthParams:
    """What the generated set looks like; conf/data/synth_detection.yaml's `synth:` block."""

    seed: int = 0
    train_images: int = 2048
    test_images: int = 256
    image_size: tuple[int, int] = (128, 128)  # (H, W)
    objects: tuple[int, int] = (1, 3)
    object_size: tuple[int, int] = (40, 88)  # longer side, pixels
    aspect: tuple[float, float] = (0.67, 1.5)  # width / height of the resized item
    max_overlap: float = 0.2
    difficult_visibility: float = 0.5

    def digest(self) -> str:
        raw = json.dumps({"version": VERSION, **asdict(self)}, sort_keys=True)
        return hashlib.sha256(raw.encode()).hexdigest()[:16]


def params_from_config(cfg: Mapping[str, Any]) -> SynthParams:
    """SynthParams from a config mapping (lists become tuples); unknown keys are an error."""
    known = {f.name for f in fields(SynthParams)}
    unknown = sorted(set(cfg) - known)
    if unknown:
        raise ConfigError(f"data.synth has unknown keys {unknown}. Allowed: {', '.join(sorted(known))}.")
    # Sequences (lists, OmegaConf's ListConfig) become tuples, so that the digest is stable.
    values = {k: (v if isinstance(v, (str, int, float)) else tuple(v)) for k, v in dict(cfg).items()}
    params = SynthParams(**values)
    h, w = params.image_size
    if not (params.train_images > 0 and params.test_images > 0 and 1 <= params.objects[0] <= params.objects[1]
            and 4 <= params.object_size[0] <= params.object_size[1] <= min(h, w)
            and 0 < params.aspect[0] <= params.aspect[1] and 0 <= params.max_overlap <= 1):
        raise ConfigError(f"data.synth={asdict(params)} is not a valid generator setting: positive image counts, "
                          "1 <= objects[0] <= objects[1], 4 <= object_size[0] <= object_size[1] <= the canvas side, "
                          "0 < aspect[0] <= aspect[1], 0 <= max_overlap <= 1.")
    return params


def folder(data_dir: str | Path) -> Path:
    return Path(data_dir) / FOLDER


def _square_iou(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> float:
    iw = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A smooth colour gradient plus pixel noise, float [H, W, 3] in [0, 1]."""
    corners = rng.uniform(0.0, 0.45, size=(2, 2, 3))
    ys = np.linspace(0.0, 1.0, h)[:, None, None]
    xs = np.linspace(0.0, 1.0, w)[None, :, None]
    top = corners[0, 0] * (1 - xs) + corners[0, 1] * xs
    bottom = corners[1, 0] * (1 - xs) + corners[1, 1] * xs
    image = top * (1 - ys) + bottom * ys
    return image + rng.normal(0.0, 0.012, size=(h, w, 3))


def _canvas(rng: np.random.Generator, items: np.ndarray, labels: np.ndarray, p: SynthParams):
    """One image (uint8 [H, W, 3]) and its objects [(label 1..10, (x1, y1, x2, y2) pixels, difficult)]."""
    h, w = p.image_size
    image = _background(rng, h, w)
    n = int(rng.integers(p.objects[0], p.objects[1] + 1))
    placed: list[tuple[int, tuple[int, int, int, int], np.ndarray]] = []  # (label, patch square, alpha)
    for _ in range(n):
        for _attempt in range(20):  # rejection sampling of a position with little overlap
            item = int(rng.integers(0, len(items)))
            side = int(rng.integers(p.object_size[0], p.object_size[1] + 1))
            aspect = math.exp(rng.uniform(math.log(p.aspect[0]), math.log(p.aspect[1])))
            pw, ph = (side, max(4, round(side / aspect))) if aspect >= 1 else (max(4, round(side * aspect)), side)
            x0 = int(rng.integers(0, w - pw + 1))
            y0 = int(rng.integers(0, h - ph + 1))
            square = (x0, y0, x0 + pw, y0 + ph)
            if all(_square_iou(square, other[1]) <= p.max_overlap for other in placed):
                break
        else:
            continue  # no room for this object
        patch = Image.fromarray(items[item]).resize((pw, ph), Image.Resampling.BILINEAR)
        alpha = np.asarray(patch, dtype=np.float64) / 255.0
        colour = rng.uniform(0.55, 1.0, size=3)
        region = image[y0:y0 + ph, x0:x0 + pw]
        image[y0:y0 + ph, x0:x0 + pw] = region * (1 - alpha[..., None]) + colour * alpha[..., None]
        placed.append((int(labels[item]) + 1, square, alpha))
    objects = []
    # Visibility: the share of an item's ink left uncovered by the items drawn after it.
    for i, (label, (x0, y0, x1, y1), alpha) in enumerate(placed):
        ink = alpha > INK
        if not ink.any():
            continue
        rows, cols = np.nonzero(ink)
        box = (x0 + int(cols.min()), y0 + int(rows.min()), x0 + int(cols.max()) + 1, y0 + int(rows.max()) + 1)
        cover = np.zeros((h, w))
        for _, (a0, b0, a1, b1), later in placed[i + 1:]:
            cover[b0:b1, a0:a1] = np.maximum(cover[b0:b1, a0:a1], later)
        visible = float((alpha * (1 - cover[y0:y1, x0:x1]))[ink].sum() / alpha[ink].sum())
        objects.append((label, box, visible < p.difficult_visibility))
    return (np.clip(image, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8), objects


def _voc_xml(name: str, filename: str, size: tuple[int, int], objects) -> bytes:
    root = ET.Element("annotation")
    ET.SubElement(root, "folder").text = FOLDER
    ET.SubElement(root, "filename").text = filename
    node = ET.SubElement(root, "size")
    ET.SubElement(node, "width").text = str(size[1])
    ET.SubElement(node, "height").text = str(size[0])
    ET.SubElement(node, "depth").text = "3"
    ET.SubElement(root, "segmented").text = "0"
    for label, (x1, y1, x2, y2), difficult in objects:
        obj = ET.SubElement(root, "object")
        ET.SubElement(obj, "name").text = CLASSES[label - 1]
        ET.SubElement(obj, "pose").text = "Unspecified"
        ET.SubElement(obj, "truncated").text = "0"
        ET.SubElement(obj, "difficult").text = "1" if difficult else "0"
        bb = ET.SubElement(obj, "bndbox")
        # VOC: 1-based inclusive pixel indices of the box's first and last pixel.
        for key, value in (("xmin", x1 + 1), ("ymin", y1 + 1), ("xmax", x2), ("ymax", y2)):
            ET.SubElement(bb, key).text = str(value)
    ET.indent(root)
    return ET.tostring(root, encoding="utf-8", xml_declaration=False) + b"\n"


def generate(root: str | Path, items: dict[str, tuple[np.ndarray, np.ndarray]], params: SynthParams) -> Path:
    """Write the set described by `params` into `root` from Fashion-MNIST `items`
    ({split: (uint8 images [N, 28, 28], labels [N] 0..9)}); returns `root`."""
    root = Path(root)
    for sub in ("JPEGImages", "Annotations", "ImageSets/Main", "annotations"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    categories = [{"id": k + 1, "name": name, "supercategory": "fashion"} for k, name in enumerate(CLASSES)]
    for split_index, split in enumerate(SPLITS):
        count = params.train_images if split == "train" else params.test_images
        # One stream per split: the test set does not change when the training set grows.
        rng = np.random.default_rng([params.seed, split_index])
        images, labels = items[split]
        names, coco_images, coco_annotations = [], [], []
        for i in range(count):
            name = f"{split}_{i:06d}"
            filename = f"{name}.jpg"
            canvas, objects = _canvas(rng, images, labels, params)
            Image.fromarray(canvas).save(root / "JPEGImages" / filename, format="JPEG", quality=JPEG_QUALITY)
            (root / "Annotations" / f"{name}.xml").write_bytes(_voc_xml(name, filename, params.image_size, objects))
            names.append(name)
            coco_images.append({"id": i + 1, "file_name": filename, "height": params.image_size[0],
                                "width": params.image_size[1]})
            for label, (x1, y1, x2, y2), difficult in objects:
                coco_annotations.append({
                    "id": len(coco_annotations) + 1, "image_id": i + 1, "category_id": label,
                    "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1), "iscrowd": 0,
                    "difficult": int(difficult),
                })
        (root / "ImageSets" / "Main" / f"{split}.txt").write_text("".join(f"{n}\n" for n in names))
        coco = {"info": {"description": f"replicate synth_detection {split}", "version": VERSION},
                "images": coco_images, "annotations": coco_annotations, "categories": categories}
        (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(coco, indent=1) + "\n")
    (root / "meta.json").write_text(json.dumps({"version": VERSION, "digest": params.digest(), **asdict(params)},
                                               indent=2) + "\n")
    return root


def _current(root: Path, params: SynthParams) -> bool:
    try:
        return json.loads((root / "meta.json").read_text()).get("digest") == params.digest()
    except (OSError, ValueError):
        return False


def ensure(data_dir: str | Path, params: SynthParams | None = None) -> Path:
    """`<data_dir>/synth_detection/`, generated from the Fashion-MNIST found under `data_dir`
    (or the Debian package) unless a set with the same parameters is already there. Written to
    a temporary folder and renamed into place, so an interrupted run leaves nothing half-made."""
    params = params or SynthParams()
    root = folder(data_dir)
    if _current(root, params):
        return root
    splits = fashion_mnist.load(data_dir)  # DatasetMissingError says how to get it
    items = {"train": (splits.train_x[:, 0].numpy(), splits.train_y.numpy()),
             "test": (splits.test_x[:, 0].numpy(), splits.test_y.numpy())}
    root.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{FOLDER}-", dir=root.parent))
    try:
        generate(staging, items, params)
        if _current(root, params):  # a concurrent run finished first
            return root
        old = None
        if root.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{FOLDER}-old-", dir=root.parent))
            os.replace(root, old / FOLDER)
        os.replace(staging, root)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return root


def open_split(data_dir: str | Path, split: str, *, fmt: str = "voc", params: SynthParams | None = None,
               transforms: Callable | None = None):
    """The `split` of the generated set through the VOC reader (`fmt="voc"`) or the COCO one."""
    root = ensure(data_dir, params)
    if fmt == "coco":
        from .coco import COCODetection

        return COCODetection(root / "JPEGImages", root / "annotations" / f"instances_{split}.json",
                             transforms=transforms)
    from .voc import VOCDetection

    return VOCDetection(root, split, classes=CLASSES, transforms=transforms)
