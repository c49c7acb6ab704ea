"""Times measured on the hardware present, for the papers' speed tables (`kind: speed`, compared
as ratios by `Report.speed`, since absolute times depend on the hardware).

On a GPU a stage's time is wall clock, synchronised before each reading. On a CPU it is the
process's CPU time on one thread: the machine may be shared, and CPU time is what a quiet one
would take.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from contextlib import contextmanager

import torch
from omegaconf import DictConfig
from torch import nn

from ..data.detection import build_detection_datamodule

__all__ = ["Clock", "hardware", "one_thread_on_cpu", "detector_fps", "classifier_fps", "time_two_stage",
           "time_fast_rcnn", "time_rcnn_vs_fast", "timing_images"]


class Clock:
    """Readings in seconds: synchronised wall clock on CUDA, process time elsewhere."""

    def __init__(self, device: torch.device | str):
        self.cuda = torch.device(device).type == "cuda"

    def now(self) -> float:
        if self.cuda:
            torch.cuda.synchronize()
            return time.perf_counter()
        return time.process_time()


def hardware() -> str:
    """What the times were measured on, for the tables' notes."""
    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"one CPU thread, process time ({os.cpu_count()} cores present)"


@contextmanager
def one_thread_on_cpu(device: torch.device | str):
    """On a CPU, run the timed code on one thread (process time then equals a quiet core's time)."""
    threads = torch.get_num_threads()
    cpu = torch.device(device).type != "cuda"
    if cpu:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if cpu:
            torch.set_num_threads(threads)


@torch.no_grad()
def detector_fps(model: nn.Module, images: Sequence[torch.Tensor], input_sizes: Mapping[int, int] | Sequence[int], *,
                 warmup: int = 2) -> dict[str, float]:
    """Frames per second of a YOLO detector at each network input size, one image at a time
    (batch 1, as YOLOv2 Table 3 and YOLOv4 Table 10), resizing, network, decoding and NMS
    included. `input_sizes` maps the paper's sizes to the sizes run (the reduced profile scales
    them; `replicate.runs.detection.test_input_sizes`) or lists sizes run as they are;
    returns `{"fps_<paper size>": ...}`. `model.input_size` is restored afterwards."""
    sizes = dict(input_sizes) if isinstance(input_sizes, Mapping) else {int(s): int(s) for s in input_sizes}
    device = next(model.parameters()).device
    clock = Clock(device)
    original = model.input_size
    out = {}
    model.eval()
    try:
        with one_thread_on_cpu(device):
            for label, size in sizes.items():
                model.input_size = int(size)
                for image in images[:warmup]:
                    model([image.to(device)])
                start = clock.now()
                for image in images:
                    model([image.to(device)])
                out[f"fps_{int(label)}"] = len(images) / max(clock.now() - start, 1e-9)
    finally:
        model.input_size = original
    return out


@torch.no_grad()
def classifier_fps(models: dict[str, nn.Module], input_size: int, *, batch_size: int = 1, repeats: int = 5,
                   warmup: int = 1) -> dict[str, float]:
    """Images per second of each classifier on [batch_size, 3, input_size, input_size] inputs
    (YOLOv3 Table 2's backbone comparison at 256 x 256): `{"fps_<name>": ...}`."""
    out = {}
    for name, model in models.items():
        device = next(model.parameters()).device
        clock = Clock(device)
        x = torch.randn(batch_size, 3, input_size, input_size, device=device)
        model.eval()
        with one_thread_on_cpu(device):
            for _ in range(warmup):
                model(x)
            start = clock.now()
            for _ in range(repeats):
                model(x)
            out[f"fps_{name}"] = repeats * batch_size / max(clock.now() - start, 1e-9)
    return out


@torch.no_grad()
def time_two_stage(model: torch.nn.Module, images: Sequence, stored: Sequence, *, selective_search_mode: str = "fast",
                   max_proposals: int = 2000) -> dict[str, float]:
    """Milliseconds per image of the stages of Faster R-CNN Table 4 (NIPS; Table 5 in arXiv v3),
    one image at a time: `conv` (the shared VGG-16 layers), `rpn` (the RPN and its proposal
    selection), `region_rpn` (RoI pooling, fc layers, softmax, per-class NMS on the RPN's
    proposals), `selective_search` (on the stored image) and `region_ss` (the same region-wise
    stage on its proposals, i.e. "SS + Fast R-CNN"). `model` is a FasterRCNN; `images` the
    network's inputs and `stored` the same images as stored (uint8) for selective search."""
    from ..data.detection import proposals as P

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

    from ..models.fast_rcnn import postprocess, truncated_svd
    from ..ops import boxes as B

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
