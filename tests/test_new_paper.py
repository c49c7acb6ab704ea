"""What CONTRIBUTING.md promises a contributor: a paper is its conf/paper/<id>.yaml (plus its
notebook and a params.yaml entry, tests/test_pipeline.py). Here a toy paper, written into a copy
of conf/, composes, checks against the schema, runs its plan at a tiny scale on an on-disk
Fashion-MNIST, and reports paper vs ours."""

import shutil

import pandas as pd
import yaml

from replicate import config, runs
from replicate.config import PROJECT_ROOT
from replicate.report import Report
from tests.fakes import write_idx_fashion_mnist

TOY = {
    "id": "toy", "title": "A toy paper", "authors": "A. Contributor", "year": 2016, "venue": "tests",
    "arxiv": "0000.00000",
    "experiments": {"resnet20_cifar10": ["data=cifar10", "model=resnet_cifar", "model.name=resnet20",
                                         "recipe=resnet_cifar"]},
    "plan": {"reduced": ["resnet20_cifar10"], "full": ["resnet20_cifar10"]},
    "floors": {"reduced": {"resnet20_cifar10": 0.3}},
    "scale": {"reduced": ["data.train_subset=256", "data.test_subset=64", "recipe.batch_size=32",
                          "recipe.max_steps=40", "recipe.val_every_steps=null", "recipe.checkpoint_every_steps=40"]},
    "tables": [
        {"id": "params", "title": "Table 1: parameters", "kind": "exact", "metric": "parameters", "unit": "M",
         "quantity": "mparams", "input_size": [3, 32, 32], "source": "He et al. 2016, Table 6, '# params'",
         "tolerance": "rounding", "model_kwargs": {"num_classes": 10},
         "cells": [{"row": "ResNet-20", "model": "resnet20", "paper": 0.27}]},
        {"id": "error", "title": "Table 2: test error", "kind": "measured", "metric": "test error", "unit": "%",
         "quantity": "test_top1_err", "source": "He et al. 2016, Table 6, 'error (%)'", "tolerance": 0.5,
         "cells": [{"row": "ResNet-20", "experiment": "resnet20_cifar10", "paper": 8.75}]},
    ],
}


def test_a_new_paper_composes_runs_and_reports(tmp_path, monkeypatch):
    conf = tmp_path / "conf"
    shutil.copytree(PROJECT_ROOT / "conf", conf)
    (conf / "paper" / "toy.yaml").write_text(yaml.safe_dump(TOY, sort_keys=False))
    write_idx_fashion_mnist(tmp_path / "data", n_train=256, n_test=64)
    monkeypatch.setattr(config, "CONF_DIR", conf)
    for name, value in (("CACHE", "cache"), ("RUN", "runs"), ("REPORT", "reports"), ("DATA", "data")):
        monkeypatch.setenv(f"REPLICATE_{name}_DIR", str(tmp_path / value))

    assert "toy" in config.papers()
    cfg = config.compose("toy", "reduced")
    report = Report(cfg)
    report.show("params")
    results = runs.run_all("toy", "reduced")
    report.show("error", results)
    report.floors(results)
    report.check()
    out = report.write()

    assert out == tmp_path / "reports" / "toy" / "reduced"
    params = pd.read_csv(out / "params.csv")
    assert params["status"].tolist() == ["match"] and params["ours"].round(2).tolist() == [0.27]
    error = pd.read_csv(out / "error.csv")
    assert error["status"].tolist() == ["reduced"]  # Fashion-MNIST at 14 px: not comparable with CIFAR-10
    assert error["ours"].iloc[0] == results["resnet20_cifar10"]["test_top1_err"] < 70  # chance is 90%
    floors = pd.read_csv(out / "floors.csv")
    assert floors["run"].tolist() == ["resnet20_cifar10"] and floors["status"].tolist() == ["pass"]
    assert floors["ours"].iloc[0] == round(100 - error["ours"].iloc[0], 2)  # printed to two decimals
    assert floors["ours"].iloc[0] > floors["floor"].iloc[0] == 30.0
