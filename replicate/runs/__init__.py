"""Runs: `run(cfg)` trains and tests one experiment (cached under its config hash), `run_all(paper,
profile)` a paper's plan in order; `evaluate(cfg)` tests a classifier's checkpoint again. These are
the doors. Below them, bottom up: `store` (the run folder, its lock, result.json, saved weights
and what a finished run is read back from), `trainer` (loggers, progress, W&B), `pretrain`
(starting weights), `alternating` (Faster R-CNN's four fits), `classification` and `detection`
(each task's network and training), `launch` (run, evaluate), `chain` (backbone_from, run_all).
Also here, for the notebooks: the readers of finished runs and the networks they rebuild."""

from .chain import run_all, with_backbone_from
from .classification import build_model
from .detection import build_detector, load_trained, test_dataset, test_input_sizes, train_dataset
from .launch import evaluate, run
from .store import load_curves, load_detections, run_dir, save_weights

__all__ = ["run", "run_all", "evaluate", "with_backbone_from", "build_model", "build_detector", "load_trained",
           "test_dataset", "train_dataset", "test_input_sizes", "load_curves", "load_detections",
           "run_dir", "save_weights"]
