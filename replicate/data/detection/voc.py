"""PASCAL VOC detection (Everingham et al. 2010): VOC2007 (5,011 trainval / 4,952 test images)
and VOC2012, the R-CNN papers' benchmark, in the devkit's own layout:

    <data_dir>/VOCdevkit/VOC2007/JPEGImages/<id>.jpg
                                 Annotations/<id>.xml        one <object> per box, with <difficult>
                                 ImageSets/Main/<set>.txt    trainval, train, val, test: one id a line

`VOCDetection(folder, image_set)` reads any folder in that layout, the generated reduced set
included (`replicate.data.detection.synth`); an annotation's <filename> names its image, so
PNG images are read as well as JPEG. Boxes: the XML gives 1-based inclusive pixel indices;
targets hold continuous coordinates (x1, y1, x2, y2) = (xmin - 1, ymin - 1, xmax, ymax), which
preserve the devkit's widths (xmax - xmin + 1) and therefore its IoUs. Labels are 1..20 in the
devkit's class order. `locate` downloads through torchvision where allowed (the full profile).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from ...errors import DatasetMissingError
from .base import DetectionDataset, Record, make_target, warn_skipped

# The devkit's class order (VOCopts.classes); label k is CLASSES[k - 1].
CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)
YEARS = ("2007", "2012")
DEVKIT = "VOCdevkit"
# torchvision's archives: VOC2007 trainval and test are two downloads, VOC2012 one.
ARCHIVES = {
    ("2007", "test"): "VOCtest_06-Nov-2007.tar",
    ("2007", "trainval"): "VOCtrainval_06-Nov-2007.tar",
    ("2012", "trainval"): "VOCtrainval_11-May-2012.tar",
}
PAGES = {
    "2007": "http://host.robots.ox.ac.uk/pascal/VOC/voc2007/",
    "2012": "http://host.robots.ox.ac.uk/pascal/VOC/voc2012/",
}


def folder(data_dir: str | Path, year: str) -> Path:
    return Path(data_dir) / DEVKIT / f"VOC{year}"


def _complete(root: Path, image_set: str) -> bool:
    return (root / "ImageSets" / "Main" / f"{image_set}.txt").is_file() and (root / "Annotations").is_dir() \
        and (root / "JPEGImages").is_dir()


def missing_error(data_dir: str | Path, year: str, image_set: str) -> DatasetMissingError:
    root = folder(data_dir, year)
    archive = ARCHIVES.get((year, "test" if image_set == "test" else "trainval"), f"the VOC{year} archive")
    return DatasetMissingError(
        f"PASCAL VOC{year} '{image_set}' not found: {root}/ needs JPEGImages/, Annotations/ and "
        f"ImageSets/Main/{image_set}.txt. Fix it with one of:\n"
        f"  - python -m replicate data voc{year} --download   (where a network exists; torchvision fetches it)\n"
        f"  - download {archive} from {PAGES.get(year, 'the PASCAL VOC site')} and extract it in {Path(data_dir)}/ "
        f"(the archive holds {DEVKIT}/VOC{year}/...)"
    )


def _download(data_dir: Path, year: str, image_set: str) -> None:
    from torchvision.datasets import VOCDetection as TorchvisionVOC

    data_dir.mkdir(parents=True, exist_ok=True)
    TorchvisionVOC(root=str(data_dir), year=year, image_set=image_set, download=True)


def locate(data_dir: str | Path, year: str, image_set: str, download: bool = False) -> Path:
    """The VOC<year> folder holding `image_set`; downloaded with torchvision if allowed."""
    root = folder(data_dir, year)
    if not _complete(root, image_set) and download:
        try:
            _download(Path(data_dir), year, image_set)
        except (OSError, RuntimeError, ValueError) as exc:  # no network, refused, checksum mismatch
            message = f"{missing_error(data_dir, year, image_set)}\n(the download failed: {exc})"
            raise DatasetMissingError(message) from exc
    if not _complete(root, image_set):
        raise missing_error(data_dir, year, image_set)
    return root


def prepare(data_dir: str | Path, year: str, download: bool = False) -> Path:
    """Make VOC<year> ready (trainval, and test for 2007, whose test annotations are public)."""
    sets = ("trainval", "test") if year == "2007" else ("trainval",)
    for image_set in sets:
        root = locate(data_dir, year, image_set, download)
    return root


def _text(node: ET.Element, path: str) -> str:
    found = node.find(path)
    if found is None or found.text is None:
        raise ValueError(f"no <{path}>")
    return found.text.strip()


def parse_annotation(path: Path, classes: Sequence[str]) -> tuple[str | None, tuple[int, int], torch.Tensor,
                                                                   torch.Tensor, torch.Tensor]:
    """(<filename> or None, (H, W), boxes [N, 4] continuous xyxy, labels [N] 1..K, difficult [N])
    of one VOC XML file; `ValueError` for anything malformed."""
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as error:
        raise ValueError(f"not well-formed XML ({error})") from error
    filename_node = root.find("filename")
    filename = filename_node.text.strip() if filename_node is not None and filename_node.text else None
    size = (int(float(_text(root, "size/height"))), int(float(_text(root, "size/width"))))
    if size[0] <= 0 or size[1] <= 0:
        raise ValueError(f"image size {size} (H, W)")
    index = {name: k + 1 for k, name in enumerate(classes)}
    boxes, labels, difficult = [], [], []
    for obj in root.iter("object"):
        name = _text(obj, "name")
        if name not in index:
            raise ValueError(f"unknown class {name!r}")
        xmin, ymin, xmax, ymax = (float(_text(obj, f"bndbox/{k}")) for k in ("xmin", "ymin", "xmax", "ymax"))
        # A box reaching a pixel past the border is clipped; an empty or inverted one is an error.
        x1, y1, x2, y2 = max(xmin - 1, 0.0), max(ymin - 1, 0.0), min(xmax, size[1]), min(ymax, size[0])
        if not (x1 < x2 and y1 < y2):
            raise ValueError(f"box ({xmin}, {ymin}, {xmax}, {ymax}) is empty in the {size[1]}x{size[0]} image")
        boxes.append((x1, y1, x2, y2))
        labels.append(index[name])
        flag = obj.find("difficult")
        difficult.append(flag is not None and flag.text is not None and flag.text.strip() == "1")
    return (filename, size, torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
            torch.tensor(labels, dtype=torch.int64), torch.tensor(difficult, dtype=torch.bool))


class VOCDetection(DetectionDataset):
    """The images of `<folder>/ImageSets/Main/<image_set>.txt` with their annotations, indexed
    at construction; an annotation that cannot be parsed is skipped with a warning."""

    def __init__(self, folder: str | Path, image_set: str, *, classes: Sequence[str] = CLASSES,
                 transforms: Callable | None = None):
        root = Path(folder)
        list_file = root / "ImageSets" / "Main" / f"{image_set}.txt"
        if not list_file.is_file():
            raise DatasetMissingError(f"{list_file} not found: {root} is not a VOC folder with an '{image_set}' set.")
        ids = [line.split()[0] for line in list_file.read_text().splitlines() if line.strip()]
        records, skipped = [], []
        for image_id in ids:
            xml = root / "Annotations" / f"{image_id}.xml"
            try:
                filename, size, boxes, labels, difficult = parse_annotation(xml, classes)
            except (OSError, ValueError) as error:
                skipped.append(warn_skipped(xml, f"unreadable annotation ({error})"))
                continue
            target = make_target(boxes, labels, size, len(records), difficult=difficult)
            records.append(Record(path=root / "JPEGImages" / (filename or f"{image_id}.jpg"), target=target,
                                  name=image_id))
        self.folder, self.image_set = root, image_set
        super().__init__(records, classes, transforms, skipped)
