"""Training images/s and inference FPS of a registry detector on synthetic data, on whatever device is here.

    python benchmarks/detection_throughput.py yolov3 --input-size 416 --batch-size 16 --steps 30
    python benchmarks/detection_throughput.py faster_rcnn_vgg16 --width-mult 0.125 --input-size 128 \\
        --device cpu --steps 2

Training: forward + loss + backward + SGD step (momentum 0.9, weight decay 5e-4, as the YOLO
papers) on a fixed batch of random images of the network input size, each with a few random
boxes (`--boxes-per-image`) of random classes, under the full profile's precision (bf16
autocast on CUDA: conf/profile/full.yaml's `bf16-mixed`; fp32 on CPU) with channels_last
weights (conf/config.yaml's `speed.channels_last`). Data creation is not timed: the batch stays on
the device.

Inference: `model.eval(); model(images)` including the decoding and the non-maximum suppression
(the detector contract of replicate.tasks.detection), at batch 1 (the papers' FPS: YOLOv4
Table 10 compares detectors "with batch=1 without using tensorRT" on Volta GPUs; YOLOv2 Table 3
and YOLOv3 Table 2 time a Titan X) and at batch `--batch-size`. Where the detector exposes its
convolutional body as `model.network` (the YOLO contract), the body alone is timed too
(`network_fps_batch1`), which separates the network from the decoding + NMS.

Random weights give a different number of candidate boxes above the score threshold than
trained weights would (the NMS cost depends on it): `mean_detections` says how many came out;
`--score-threshold` overrides the model's (0.005 for mAP evaluation in the YOLO contract; a
demo would use e.g. 0.25).

Fast R-CNN (`fast_rcnn_vgg16`) takes external proposals: `--proposals` random boxes per image
(2000, about what selective search gives, Fast R-CNN Sec. 4.1) go into the targets in training
and to `model(images, proposals=...)` at inference; their generation is not timed.

Only torch and `replicate.models` are imported (no Hydra, Lightning or pycocotools), so the
script runs on a bare GPU machine with torch and torchvision (YOLOv4's Mosaic and CutMix are in
`replicate.ops.mix`, torch only).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the repository, installed or not

from replicate import models  # noqa: E402

FULL_PRECISION = "bf16-mixed"  # conf/profile/full.yaml trainer.precision
FULL_CHANNELS_LAST = True  # conf/config.yaml speed.channels_last


def random_boxes(n: int, height: int, width: int, generator: torch.Generator, min_frac: float = 0.05,
                 max_frac: float = 0.5) -> torch.Tensor:
    """`n` random boxes [n, 4] xyxy inside an image, sides between min_frac and max_frac of it."""
    sides = torch.rand(n, 2, generator=generator) * (max_frac - min_frac) + min_frac
    wh = sides * torch.tensor([width, height], dtype=torch.float32)
    corner = torch.rand(n, 2, generator=generator) * (torch.tensor([width, height], dtype=torch.float32) - wh)
    return torch.cat([corner, corner + wh], dim=1)


def synthetic_batch(batch_size: int, size: int, boxes_per_image: int, num_classes: int, proposals: int,
                    device: str, seed: int = 0) -> tuple[list[torch.Tensor], list[dict]]:
    g = torch.Generator().manual_seed(seed)
    images, targets = [], []
    for i in range(batch_size):
        images.append(torch.rand(3, size, size, generator=g).to(device))
        boxes = random_boxes(boxes_per_image, size, size, g)
        target = {
            "boxes": boxes.to(device),
            "labels": torch.randint(1, num_classes + 1, (boxes_per_image,), generator=g).to(device),
            "difficult": torch.zeros(boxes_per_image, dtype=torch.bool, device=device),
            "iscrowd": torch.zeros(boxes_per_image, dtype=torch.bool, device=device),
            "image_id": i,
            "orig_size": torch.tensor([size, size]),
        }
        if proposals:
            target["proposals"] = random_boxes(proposals, size, size, g, 0.02, 0.9).to(device)
        targets.append(target)
    return images, targets


def build(name: str, num_classes: int | None, width_mult: float | None, input_size: int,
          score_threshold: float | None, extra: dict | None = None) -> torch.nn.Module:
    kwargs = dict(extra or {})
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    if width_mult is not None:
        kwargs["width_mult"] = width_mult
    if score_threshold is not None:
        kwargs["score_threshold"] = score_threshold
    try:  # the YOLO builders take the network input side; the R-CNN family sizes itself per image
        return models.build(name, input_size=input_size, **kwargs)
    except TypeError as error:
        if "input_size" not in str(error):
            raise
        return models.build(name, **kwargs)


def num_classes_of(model: torch.nn.Module, requested: int | None) -> int:
    if requested is not None:
        return requested
    value = getattr(model, "num_classes", None)
    return int(value) if value is not None else 20


def measure(name: str, *, batch_size: int, input_size: int, steps: int, warmup: int, infer_steps: int, device: str,
            precision: str, channels_last: bool, compile_network: bool, width_mult: float | None,
            num_classes: int | None, boxes_per_image: int, proposals: int, score_threshold: float | None,
            model_kwargs: dict | None = None, compile_mode: str | None = None, train: bool = True,
            infer: bool = True) -> dict:
    torch.backends.cudnn.benchmark = True
    cuda = device.startswith("cuda")
    torch.manual_seed(0)  # the same random weights every run
    model = build(name, num_classes, width_mult, input_size, score_threshold, model_kwargs).to(device)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=memory_format)
    if compile_network and hasattr(model, "network"):
        model.network = torch.compile(model.network, mode=compile_mode)
    classes = num_classes_of(model, num_classes)
    needs_proposals = bool(getattr(model, "needs_proposals", False))
    images, targets = synthetic_batch(batch_size, input_size, boxes_per_image, classes,
                                      proposals if needs_proposals else 0, device)
    dtype = torch.bfloat16 if precision.startswith("bf16") else None
    device_type = device.split(":")[0]

    def autocast():
        return torch.autocast(device_type=device_type, dtype=dtype, enabled=dtype is not None)

    def sync():
        if cuda:
            torch.cuda.synchronize()

    def timed(fn, n: int, n_warmup: int) -> float:
        for _ in range(n_warmup):
            fn()
        sync()
        start = time.perf_counter()
        for _ in range(n):
            fn()
        sync()
        return (time.perf_counter() - start) / n

    result = {
        "model": name,
        "device": torch.cuda.get_device_name() if cuda else f"cpu x{torch.get_num_threads()}",
        "input_size": input_size, "batch_size": batch_size, "precision": precision,
        "channels_last": channels_last,
        "compile_network": (compile_mode or "default") if compile_network and hasattr(model, "network") else False,
        "width_mult": width_mult if width_mult is not None else 1.0, "num_classes": classes,
        "boxes_per_image": boxes_per_image, "proposals": proposals if needs_proposals else None,
        "params_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 3),
        "model_kwargs": model_kwargs or {},
    }
    for switch in ("mosaic", "cutmix"):  # YOLOv4's batch augmentations run inside the training forward
        if hasattr(model, switch):
            result[switch] = bool(getattr(model, switch))

    # Inference runs on the initial weights: SGD steps on random targets would drive the
    # objectness down and change how many candidates reach the NMS.
    initial = {k: v.detach().clone() for k, v in model.state_dict().items()} if train and infer else None
    if train:
        optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, weight_decay=5e-4)
        model.train()
        losses_seen: dict[str, float] = {}

        def train_step():
            with autocast():
                losses = model(images, targets)
                loss = sum(losses.values())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses_seen["loss"] = loss

        if cuda:
            torch.cuda.reset_peak_memory_stats()
        seconds = timed(train_step, steps, warmup)
        result.update({
            "train_images_per_s": round(batch_size / seconds, 1), "train_step_ms": round(1000 * seconds, 2),
            "train_loss_finite": bool(torch.isfinite(losses_seen["loss"].detach().float()).item()),
        })
        if cuda:
            result["train_max_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
        del optimizer

    if infer:
        if initial is not None:
            model.load_state_dict(initial)
            del initial
        model.eval()
        proposal_lists = [t["proposals"] for t in targets] if needs_proposals else None
        counts: list[int] = []

        def detect(batch: list[torch.Tensor], props):
            with torch.inference_mode(), autocast():
                out = model(batch, proposals=props) if props is not None else model(batch)
            counts.append(sum(int(d["boxes"].shape[0]) for d in out) // len(batch))
            return out

        one, one_props = images[:1], (proposal_lists[:1] if proposal_lists is not None else None)
        seconds_one = timed(lambda: detect(one, one_props), infer_steps, warmup)
        seconds_batch = timed(lambda: detect(images, proposal_lists), max(1, infer_steps // batch_size), warmup)
        result.update({
            "infer_fps_batch1": round(1 / seconds_one, 1), "infer_ms_batch1": round(1000 * seconds_one, 2),
            f"infer_images_per_s_batch{batch_size}": round(batch_size / seconds_batch, 1),
            "mean_detections": round(sum(counts) / len(counts), 1),
        })
        if hasattr(model, "network") and not needs_proposals:
            x = images[0][None].contiguous(memory_format=memory_format)

            def body():
                with torch.inference_mode(), autocast():
                    model.network(x)

            seconds_body = timed(body, infer_steps, warmup)
            result["network_fps_batch1"] = round(1 / seconds_body, 1)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", choices=models.available(), metavar="MODEL")
    parser.add_argument("--input-size", type=int, default=None, help="network input side (default: the paper's)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=30, help="timed training steps")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps before each measurement")
    parser.add_argument("--infer-steps", type=int, default=None, help="timed batch-1 inferences (default: 3 x steps)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precision", default=None, help=f"default: {FULL_PRECISION} on CUDA, 32-true on CPU")
    parser.add_argument("--no-channels-last", dest="channels_last", action="store_false", default=FULL_CHANNELS_LAST)
    parser.add_argument("--compile", action="store_true", help="torch.compile model.network where there is one")
    parser.add_argument("--compile-mode", default=None,
                        help="torch.compile mode, e.g. reduce-overhead (CUDA graphs: batch 1 is launch-bound)")
    parser.add_argument("--width-mult", type=float, default=None)
    parser.add_argument("--num-classes", type=int, default=None, help="default: the builder's (20, VOC); 80 for COCO")
    parser.add_argument("--boxes-per-image", type=int, default=4)
    parser.add_argument("--proposals", type=int, default=2000, help="random proposals per image (Fast R-CNN only)")
    parser.add_argument("--score-threshold", type=float, default=None, help="default: the model's")
    parser.add_argument("--kwargs", type=json.loads, default=None,
                        help='more builder keyword arguments as JSON, e.g. \'{"mosaic": false}\'')
    parser.add_argument("--no-train", dest="train", action="store_false")
    parser.add_argument("--no-infer", dest="infer", action="store_false")
    args = parser.parse_args()
    size = args.input_size or models.default_input_size(args.model)[1]
    precision = args.precision or (FULL_PRECISION if args.device.startswith("cuda") else "32-true")
    print(json.dumps(measure(
        args.model, batch_size=args.batch_size, input_size=size, steps=args.steps, warmup=args.warmup,
        infer_steps=args.infer_steps or 3 * args.steps, device=args.device, precision=precision,
        channels_last=args.channels_last, compile_network=args.compile, width_mult=args.width_mult,
        num_classes=args.num_classes, boxes_per_image=args.boxes_per_image, proposals=args.proposals,
        score_threshold=args.score_threshold, model_kwargs=args.kwargs, compile_mode=args.compile_mode,
        train=args.train, infer=args.infer)))


if __name__ == "__main__":
    main()
