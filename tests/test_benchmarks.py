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
