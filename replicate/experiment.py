"""`replicate.experiment.run(cfg)` and `run_all(paper, profile)`, the names DESIGN.md's contract
gives the doors of `replicate.runs`, where they and everything below them live."""

from .runs import evaluate, run, run_all

__all__ = ["run", "run_all", "evaluate"]
