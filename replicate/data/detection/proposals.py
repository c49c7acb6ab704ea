"""Selective search proposals (Uijlings et al. 2013), as R-CNN and Fast R-CNN use them, through
OpenCV contrib's implementation (`cv2.ximgproc.segmentation`, package
`opencv-contrib-python-headless`).

R-CNN (Sec. 2.1) and Fast R-CNN (Sec. 4) run selective search in its "fast" mode, about 2000
proposals per image; Faster R-CNN's Table 4 (NIPS numbering; Table 5 in arXiv v3) times it at
1510 ms per image on a CPU. Proposals are computed once per stored image, in its stored
resolution (as the papers do), cached in `<data_dir>/proposals/`, and attached to each sample's
target as `target["proposals"]` (a `tv_tensors.BoundingBoxes`, so the datamodule's resize and
flip move them with the image).

    boxes = selective_search(image)                 # [N, 4] float xyxy, best ranked first
    attach_proposals(dataset, data_dir=...)         # computes or loads the cache, then attaches
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import ConcatDataset, Dataset
from torchvision import tv_tensors

from ...errors import ConfigError

log = logging.getLogger(__name__)

MODES = ("fast", "quality", "single")
CACHE_VERSION = 1


def _cv2():
    try:
        import cv2
    except ImportError as exc:  # pragma: no cover - the package is a dependency
        raise ImportError("selective search needs OpenCV contrib: pip install opencv-contrib-python-headless") from exc
    if not hasattr(cv2, "ximgproc"):
        raise ImportError("cv2.ximgproc is missing: install opencv-contrib-python-headless, not opencv-python")
    return cv2


def selective_search(image, mode: str = "fast", max_proposals: int = 2000, min_size: float = 0.0) -> torch.Tensor:
    """Selective search boxes [N, 4] (float32, xyxy in pixels, sorted) of
    an RGB image given as a uint8 tensor [3, H, W] or an array [H, W, 3]. `mode` "fast" is the
    papers' (colour spaces HSV and Lab, two segmentation scales, two strategies), "quality" the
    slower and denser one, "single" one strategy (a fraction of the time). At most
    `max_proposals`, duplicates removed, boxes narrower or lower than `min_size` dropped."""
    if mode not in MODES:
        raise ConfigError(f"selective search mode {mode!r} is not one of {', '.join(MODES)}")
    cv2 = _cv2()
    if isinstance(image, torch.Tensor):
        array = image.detach().cpu().as_subclass(torch.Tensor)
        if array.dtype != torch.uint8:
            raise ValueError("selective_search needs the stored uint8 image, not a normalised float one")
        array = array.permute(1, 2, 0).numpy()
    else:
        array = np.asarray(image)
    bgr = np.ascontiguousarray(array[:, :, ::-1])
    search = cv2.ximgproc.segmentation.createSelectiveSearchSegmentation()
    search.setBaseImage(bgr)
    {"fast": search.switchToSelectiveSearchFast, "quality": search.switchToSelectiveSearchQuality,
     "single": search.switchToSingleStrategy}[mode]()
    rects = np.asarray(search.process(), dtype=np.float32).reshape(-1, 4)
    boxes = np.concatenate([rects[:, :2], rects[:, :2] + rects[:, 2:]], axis=1)
    if min_size > 0:
        boxes = boxes[(rects[:, 2] >= min_size) & (rects[:, 3] >= min_size)]
    _, first = np.unique(boxes, axis=0, return_index=True)
    boxes = boxes[np.sort(first)][:max_proposals]
    # OpenCV ranks the regions with an unseeded random factor (Uijlings et al. Sec. 3.3), so the
    # order (and which boxes a cap below their number keeps) varies from call to call: the
    # kept boxes are returned sorted, a function of the image whenever the cap is not reached.
    boxes = boxes[np.lexsort(boxes.T[::-1])]
    return torch.from_numpy(np.ascontiguousarray(boxes))


def _search_file(args: tuple[str, str, int, float]) -> torch.Tensor:
    path, mode, max_proposals, min_size = args
    _cv2().setNumThreads(1)
    with Image.open(path) as image:
        array = np.asarray(image.convert("RGB"))
    # int16 holds any image coordinate and halves the cache.
    return selective_search(array, mode, max_proposals, min_size).round().to(torch.int16)


def _detection_sets(dataset: Dataset) -> list[Dataset]:
    if isinstance(dataset, ConcatDataset):
        return [d for part in dataset.datasets for d in _detection_sets(part)]
    if not hasattr(dataset, "records"):
        raise TypeError(f"{type(dataset).__name__} is not a DetectionDataset (no records)")
    return [dataset]


def cache_path(dataset: Dataset, data_dir: str | Path, mode: str, max_proposals: int, min_size: float,
               records: Sequence[dict] | None = None) -> Path:
    """Where the proposals of `dataset`'s images (or of its `records` alone) are kept: named by
    its folder and split, keyed by the image list and the search settings."""
    records = dataset.records if records is None else records  # type: ignore[attr-defined]
    paths = [str(r["path"]) for r in records]
    digest = hashlib.sha256("\n".join([f"v{CACHE_VERSION}", mode, str(max_proposals), str(min_size), *paths])
                            .encode()).hexdigest()[:12]
    folder = Path(paths[0]).parent.parent.name if paths else "empty"
    split = getattr(dataset, "image_set", None) or "images"
    return Path(data_dir) / "proposals" / f"{folder}-{split}-{mode}-{digest}.pt"


def compute(paths: Sequence[str | Path], mode: str = "fast", max_proposals: int = 2000, min_size: float = 0.0,
            workers: int | None = None) -> list[torch.Tensor]:
    """Selective search on image files, in `workers` processes (default: every core)."""
    jobs = [(str(p), mode, int(max_proposals), float(min_size)) for p in paths]
    workers = max(1, min(workers or os.cpu_count() or 1, len(jobs)))
    if workers == 1 or len(jobs) < 8:
        return [_search_file(job) for job in jobs]
    with ProcessPoolExecutor(workers, mp_context=get_context("fork")) as pool:
        return list(pool.map(_search_file, jobs, chunksize=max(1, len(jobs) // (8 * workers))))


def load_or_compute(dataset: Dataset, data_dir: str | Path, mode: str = "fast", max_proposals: int = 2000,
                    min_size: float = 0.0, workers: int | None = None,
                    indices: Sequence[int] | None = None) -> dict[int, torch.Tensor]:
    """{image_id: proposals [N, 4]} for one DetectionDataset (or only its images at `indices`),
    from its cache file or computed (and cached: written atomically, so an interrupted run
    leaves no half file)."""
    records = dataset.records  # type: ignore[attr-defined]
    if indices is not None:
        records = [records[i] for i in sorted(set(int(i) for i in indices))]
    path = cache_path(dataset, data_dir, mode, max_proposals, min_size, records)
    if path.exists():
        stored = torch.load(path, map_location="cpu", weights_only=True)
    else:
        log.info("selective search (%s) on %d images -> %s", mode, len(records), path)
        boxes = compute([r["path"] for r in records], mode, max_proposals, min_size, workers)
        stored = {str(r["path"]): b for r, b in zip(records, boxes)}
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp-{os.getpid()}")
        torch.save(stored, tmp)
        os.replace(tmp, path)
    return {int(r["target"]["image_id"]): stored[str(r["path"])] for r in records}


class AttachProposals:
    """A transform wrapper: adds `target["proposals"]` (the image's cached boxes, as
    BoundingBoxes on the image's canvas), then runs the wrapped transforms, which move them
    with the image (resize, flip)."""

    def __init__(self, table: dict[int, torch.Tensor], transforms: Callable | None):
        self.table, self.transforms = table, transforms

    def __call__(self, image, target):
        boxes = self.table[int(target["image_id"])].to(torch.float32)
        target = {**target, "proposals": tv_tensors.BoundingBoxes(boxes, format="XYXY",
                                                                   canvas_size=tuple(image.shape[-2:]))}
        return self.transforms(image, target) if self.transforms is not None else (image, target)


def attach_proposals(dataset: Dataset, data_dir: str | Path, mode: str = "fast", max_proposals: int = 2000,
                     min_size: float = 0.0, workers: int | None = None,
                     indices: Sequence[int] | None = None) -> Dataset:
    """Give every sample of `dataset` (a DetectionDataset or a ConcatDataset of them) its
    selective search proposals; returns the same dataset. `indices` (into `dataset`): only
    those samples will be read (a `data.train_subset`), so only their images are searched."""
    offset = 0
    for part in _detection_sets(dataset):
        size = len(part.records)  # type: ignore[attr-defined]
        local = None if indices is None else [int(i) - offset for i in indices if offset <= int(i) < offset + size]
        offset += size
        table = load_or_compute(part, data_dir, mode, max_proposals, min_size, workers, local)
        part.transforms = AttachProposals(table, part.transforms)  # type: ignore[attr-defined]
    return dataset
