"""Our network against the reference implementation of the same architecture, timed in one process.

    python benchmarks/versus.py resnet50 [--device cpu|cuda] [--mode train|infer] [--batch-size 16]
                                         [--input-size 224] [--compile] [--channels-last/--no-channels-last]
    python benchmarks/versus.py all --device cpu          # every pair below, train and infer

The two models get the same batch, precision (fp32 on CPU, bf16 autocast on CUDA), memory format
and compile setting, and are timed alternately after a warm-up (ours then theirs, then theirs then
ours, ...), so that a machine that speeds up or slows down affects both and neither always runs
first. Each round runs one untimed iteration (the network takes its memory and caches back from
the other's), then times `--steps` iterations one by one; the k-th timed iteration of each network
in a round make a pair, and the last line is `ratio ours/reference R`, the median over the pairs of
ours/theirs in images per second (above 1: ours is faster). `--flush-denormal`
flushes denormal floats to zero on the CPU (the workbook's runs do not): randomly initialised
networks spend a share of the CPU time on denormal arithmetic, and how much depends on the
initialisation (ours follows each paper's), not on the architecture.

References: torchvision for ResNet-50 (ours built with `downsample_on="3x3"`, torchvision's v1.5
layout), VGG-16, MobileNet V2, MobileNet V3-Large, DenseNet-121 and EfficientNet-B3; timm for
Darknet-53 and CSPDarknet53 (the dev extra installs timm).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from replicate import models
from replicate.measure.complexity import count


def _torchvision(name: str) -> Callable[[], torch.nn.Module]:
    def build():
        import torchvision.models as tvm

        return getattr(tvm, name)(weights=None)
    return build


def _timm(name: str, **kwargs) -> Callable[[], torch.nn.Module]:
    def build():
        import timm

        return timm.create_model(name, pretrained=False, **kwargs)
    return build


# ours (registry name and kwargs), the reference's builder, and what differs where the layouts do.
PAIRS: dict[str, tuple[str, dict, Callable[[], torch.nn.Module], str]] = {
    "resnet50": ("resnet50", {"downsample_on": "3x3"}, _torchvision("resnet50"), "torchvision resnet50"),
    "vgg16": ("vgg16", {}, _torchvision("vgg16"), "torchvision vgg16"),
    "mobilenet_v2": ("mobilenet_v2", {}, _torchvision("mobilenet_v2"), "torchvision mobilenet_v2"),
    "mobilenet_v3_large": ("mobilenet_v3_large", {}, _torchvision("mobilenet_v3_large"),
                           "torchvision mobilenet_v3_large"),
    "densenet121": ("densenet121", {}, _torchvision("densenet121"), "torchvision densenet121"),
    "efficientnet_b3": ("efficientnet_b3", {}, _torchvision("efficientnet_b3"), "torchvision efficientnet_b3"),
    "darknet53": ("darknet53", {}, _timm("darknet53"), "timm darknet53"),
    # timm's CSPDarknet53 uses leaky ReLU; YOLOv4's (ours) uses Mish: timm's is built with Mish here.
    "cspdarknet53": ("cspdarknet53", {}, _timm("cspdarknet53", act_layer="mish"), "timm cspdarknet53 (Mish)"),
}


def _prepare(model: torch.nn.Module, device: str, channels_last: bool, compile_model: bool, train: bool):
    model = model.to(device).train(train)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return torch.compile(model) if compile_model else model


def _stepper(model, x, y, train: bool, dtype) -> Callable[[], None]:
    device_type = x.device.type
    if not train:
        def infer():
            with torch.inference_mode(), torch.autocast(device_type, dtype=dtype, enabled=dtype is not None):
                model(x)
        return infer
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def step():
        with torch.autocast(device_type, dtype=dtype, enabled=dtype is not None):
            output = model(x)
            logits = output[0] if isinstance(output, (tuple, list)) else output
            loss = F.cross_entropy(logits.float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return step


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def race(steppers: dict[str, Callable[[], None]], rounds: int, steps: int,
         sync: Callable[[], None] = lambda: None) -> dict[str, list[float]]:
    """Seconds of each timed iteration of every stepper, in alternating rounds: A B, then B A, ...,
    so that neither always runs first (in a warm cache, after the other's allocations). A
    stepper's turn in a round is one untimed iteration (it takes its memory and caches back from
    the other's), then `steps` iterations timed one by one: the k-th iteration of A and of B in a
    round, a few seconds apart, make a pair."""
    seconds: dict[str, list[float]] = {k: [] for k in steppers}
    for index in range(rounds):
        order = list(steppers.items()) if index % 2 == 0 else list(steppers.items())[::-1]
        for key, step in order:
            step()
            sync()
            for _ in range(steps):
                start = time.perf_counter()
                step()
                sync()
                seconds[key].append(time.perf_counter() - start)
    return seconds


def versus(name: str, device: str = "cpu", mode: str = "train", batch_size: int = 16, input_size: int = 224,
           compile_model: bool = False, channels_last: bool = True, steps: int = 2, rounds: int = 16,
           warmup: int = 2) -> dict:
    """Images per second of ours and the reference (medians over their iterations) and the median
    of the pairwise ratios (`race`)."""
    ours_name, kwargs, reference, label = PAIRS[name]
    torch.manual_seed(0)
    built = {"ours": models.build(ours_name, **kwargs), label: reference()}
    sizes = {k: count(m.eval(), (3, input_size, input_size)) for k, m in built.items()}
    train = mode == "train"
    dtype = torch.bfloat16 if device.startswith("cuda") else None
    memory = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.randn(batch_size, 3, input_size, input_size, device=device).to(memory_format=memory)
    y = torch.randint(0, 1000, (batch_size,), device=device)
    steppers = {k: _stepper(_prepare(m, device, channels_last, compile_model, train), x, y, train, dtype)
                for k, m in built.items()}
    for step in steppers.values():
        for _ in range(warmup):
            step()
    _sync(device)
    seconds = race(steppers, rounds, steps, lambda: _sync(device))
    speeds = {k: [batch_size / t for t in v] for k, v in seconds.items()}
    ratios = [a / b for a, b in zip(speeds["ours"], speeds[label])]
    return {"model": name, "reference": label, "mode": mode, "device": device, "batch_size": batch_size,
            "input_size": input_size, "threads": torch.get_num_threads(),
            "ours_img_s": statistics.median(speeds["ours"]), "reference_img_s": statistics.median(speeds[label]),
            "ours_mparams": sizes["ours"].mparams, "reference_mparams": sizes[label].mparams,
            "ours_gmacs": sizes["ours"].gmacs, "reference_gmacs": sizes[label].gmacs,
            "ratio": statistics.median(ratios), "ratios": ratios}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", choices=[*PAIRS, "all"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--mode", choices=["train", "infer", "both"], default="both")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--input-size", type=int, default=224)
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True)
    # 32 pairs by default: on a shared 2-core machine fewer leave the median ratio of two identical
    # networks 5-8% from 1 (README, "Ours against torchvision and timm").
    parser.add_argument("--steps", type=int, default=2, help="timed iterations per network and round")
    parser.add_argument("--rounds", type=int, default=16,
                        help="alternating rounds (steps x rounds pairs; the ratio is their median)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads on CPU (default: torch's)")
    parser.add_argument("--flush-denormal", action=argparse.BooleanOptionalAction, default=False,
                        help="flush denormal floats to zero on the CPU (not what the workbook's runs do)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.set_flush_denormal(args.flush_denormal)
    names = list(PAIRS) if args.model == "all" else [args.model]
    modes = ["train", "infer"] if args.mode == "both" else [args.mode]
    for name in names:
        for mode in modes:
            r = versus(name, args.device, mode, args.batch_size, args.input_size, args.compile, args.channels_last,
                       args.steps, args.rounds)
            print(f"{name} {mode} ({args.device}, batch {r['batch_size']}, {r['input_size']} px, "
                  f"{r['threads']} threads)")
            print(f"  ours       {r['ours_img_s']:9.1f} img/s  {r['ours_mparams']:7.2f} M params  "
                  f"{r['ours_gmacs']:7.3f} G multiply-adds")
            print(f"  {r['reference']:<10} {r['reference_img_s']:9.1f} img/s  {r['reference_mparams']:7.2f} M params  "
                  f"{r['reference_gmacs']:7.3f} G multiply-adds")
            print(f"  {len(r['ratios'])} pairs of iterations, ratios {min(r['ratios']):.3f} to {max(r['ratios']):.3f}")
            print(f"ratio ours/reference {r['ratio']:.3f}", flush=True)


if __name__ == "__main__":
    main()
