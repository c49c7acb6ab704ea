"""Training throughput (images/s) of a registry model on synthetic data, on whatever device is here.

    python benchmarks/train_throughput.py resnet50 [--batch-size 256] [--input-size 224] [--steps 50]

It uses the full profile's settings (conf/profile/full.yaml, conf/config.yaml: bf16 autocast on
GPU, channels_last, cudnn benchmark, optional torch.compile) and SGD with momentum, so the figure
compares with timm's `benchmark.py --bench train` for the same model, batch and precision.
Forward, backward and optimizer step are timed; data creation is not (the data stay on the device).
"""

from __future__ import annotations

import argparse
import json
import time

import torch
import torch.nn.functional as F

from replicate import models
from replicate.config import compose_defaults
from replicate.validate import COMPILE_MODES


def measure(name: str, batch_size: int, input_size: int, steps: int, warmup: int, device: str,
            precision: str, channels_last: bool, compile_model: bool | str, in_channels: int = 3) -> dict:
    torch.backends.cudnn.benchmark = True
    model = models.build(name, in_channels=in_channels).to(device).train()
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=memory_format)
    if compile_model:  # true: torch.compile's default mode; a string names the mode (reduce-overhead: CUDA graphs)
        model = torch.compile(model, mode=None if compile_model is True else compile_model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    x = torch.randn(batch_size, in_channels, input_size, input_size, device=device).to(memory_format=memory_format)
    y = torch.randint(0, 10, (batch_size,), device=device)
    dtype = torch.bfloat16 if precision.startswith("bf16") else None

    def step():
        with torch.autocast(device_type=device.split(":")[0], dtype=dtype, enabled=dtype is not None):
            output = model(x)
            # Auxiliary classifiers (GoogLeNet) are trained too: their cost is part of a training step.
            outputs = output if isinstance(output, (tuple, list)) else (output,)
            loss = sum(F.cross_entropy(o, y) for o in outputs)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    def sync():
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    for _ in range(warmup):
        step()
    sync()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    sync()
    seconds = time.perf_counter() - start
    return {"model": name, "device": torch.cuda.get_device_name() if device.startswith("cuda") else f"cpu x{torch.get_num_threads()}",
            "batch_size": batch_size, "input_size": input_size, "precision": precision,
            "channels_last": channels_last, "compile": compile_model,
            "images_per_s": round(batch_size * steps / seconds, 1), "step_ms": round(1000 * seconds / steps, 2)}


def main() -> None:
    full = compose_defaults("full")
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", choices=models.available(), metavar="MODEL")
    parser.add_argument("--batch-size", type=int, default=None, help="default: 256 at 224 px, 128 at 32 px")
    parser.add_argument("--input-size", type=int, default=None, help="default: 32 for CIFAR nets, else 224")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precision", default=full.trainer.precision if torch.cuda.is_available() else "32-true")
    parser.add_argument("--no-channels-last", dest="channels_last", action="store_false", default=full.speed.channels_last)
    parser.add_argument("--compile", action="store_true", default=bool(full.speed.compile))
    parser.add_argument("--compile-mode", default=None, choices=COMPILE_MODES,
                        help="torch.compile's mode (implies --compile); reduce-overhead records CUDA graphs, which "
                             "the small CIFAR networks' launch-bound steps need on a GPU")
    args = parser.parse_args()
    compile_model = args.compile_mode or args.compile
    size = args.input_size or models.default_input_size(args.model)[1]
    batch = args.batch_size or (128 if size <= 64 else 256)
    print(json.dumps(measure(args.model, batch, size, args.steps, args.warmup, args.device, args.precision,
                             args.channels_last, compile_model)))


if __name__ == "__main__":
    main()
