"""The benchmark scripts' own logic (their measurements need a quiet machine and are not tests)."""

import importlib.util
import json
from pathlib import Path

from replicate.config import PROJECT_ROOT


def load(name: str):
    spec = importlib.util.spec_from_file_location(name, PROJECT_ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_notebook_fixed_cost_splits_training_cells_from_the_rest(tmp_path):
    def cell(source, seconds):
        return {"cell_type": "code", "source": source, "metadata": {"papermill": {"duration": seconds}}}

    notebook = {"metadata": {"papermill": {"duration": 20.0}}, "cells": [
        cell("from replicate import config, runs\n", 3.5), {"cell_type": "markdown", "source": "text", "metadata": {}},
        cell('results = runs.run_all("resnet", profile, overrides)', 12.0), cell('report.show("table1")', 1.5)]}
    path = tmp_path / "resnet.ipynb"
    path.write_text(json.dumps(notebook))
    times = load("notebook_fixed_cost").cell_times(Path(path))
    assert times["training"] == 12.0 and times["other"] == 5.0 and times["between"] == 3.0
    assert times["slowest"] == (3.5, "from replicate import config, runs")


def test_versus_alternates_the_order_and_pairs_iterations_within_a_round():
    calls = []
    steppers = {"ours": lambda: calls.append("ours"), "theirs": lambda: calls.append("theirs")}
    seconds = load("versus").race(steppers, rounds=3, steps=2)
    # Each turn: one untimed iteration, then two timed ones; the order flips every round.
    assert calls == ["ours"] * 3 + ["theirs"] * 3 + ["theirs"] * 3 + ["ours"] * 3 + ["ours"] * 3 + ["theirs"] * 3
    assert [len(v) for v in seconds.values()] == [6, 6]
    assert all(t >= 0 for v in seconds.values() for t in v)
