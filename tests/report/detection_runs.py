"""Finished-looking runs of untrained detectors on the tiny generated set (`tiny_detection`): what
the report's speed tables read, without training."""

from pathlib import Path

import torch

from replicate import runs
from replicate.config import compose

TINY_DETECTION = ["data.synth.train_images=6", "data.synth.test_images=3", "data.synth.image_size=[64,80]",
                  "data.synth.object_size=[14,40]", "model.width_mult=0.0625"]


def untrained_run(paper: str, experiment: str, directory: Path):
    """`experiment`'s config on the tiny set and a result whose run folder holds its detector,
    untrained, as `runs.load_trained` reads a finished run's."""
    cfg = compose(paper, "reduced", [f"experiment={experiment}", *TINY_DETECTION])
    torch.manual_seed(0)
    state = runs.build_detector(cfg).state_dict()
    (directory / "checkpoints").mkdir(parents=True)
    torch.save({"state_dict": {f"model.{k}": v for k, v in state.items()}}, directory / "checkpoints" / "last.ckpt")
    return cfg, {"experiment": experiment, "run_dir": str(directory), "profile": "reduced", "steps": 1}
