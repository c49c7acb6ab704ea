"""The DVC pipeline: one dvc.yaml whose `reduced`, `datasets` and `full` stages run once per paper
listed in params.yaml; no paper is named in it, the profiles never share outputs, and a new
paper needs only its params entry to get its stages."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from replicate.cli import main, params_overrides
from replicate.config import PROJECT_ROOT, papers

DVC = str(Path(sys.executable).with_name("dvc"))


def stage_list(root: Path = PROJECT_ROOT) -> dict[str, str]:
    """`dvc stage list`: each stage's name (foreach stages expanded: reduced@resnet) and outputs."""
    done = subprocess.run([DVC, "stage", "list"], capture_output=True, text=True, cwd=root)
    assert done.returncode == 0, done.stderr
    return dict(line.split(maxsplit=1) for line in done.stdout.splitlines() if line.strip())


def test_no_paper_is_named_in_the_pipeline():
    text = (PROJECT_ROOT / "dvc.yaml").read_text()
    for paper in papers():
        assert paper not in text, paper
    assert not list(PROJECT_ROOT.glob("**/dvc.yaml"))[1:], "one dvc.yaml"


def test_every_paper_has_its_three_stages_and_only_papers_do():
    listed = yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text())["papers"]
    assert sorted(listed) == papers()
    names = stage_list()
    for paper in papers():
        assert {f"reduced@{paper}", f"datasets@{paper}", f"full@{paper}"} <= set(names)
        assert (PROJECT_ROOT / "notebooks" / f"{paper}.ipynb").exists()
    assert {n.split("@")[0] for n in names if "@" in n} == {"reduced", "datasets", "full"}


def test_profiles_write_disjoint_outputs():
    stages = yaml.safe_load((PROJECT_ROOT / "dvc.yaml").read_text())["stages"]
    outs = {}
    for profile in ("reduced", "full"):
        body = stages[profile]["do"]
        outs[profile] = {next(iter(o)) if isinstance(o, dict) else o
                         for key in ("outs", "metrics", "plots") for o in body.get(key, [])}
        assert f"--profile {profile}" in body["cmd"]
    assert "reports/${key}/reduced" in outs["reduced"] and "reports/${key}/full" in outs["full"]
    assert not outs["reduced"] & outs["full"]


def test_params_give_each_stage_its_overrides(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text("papers:\n  resnet:\n    reduced: {overrides: [recipe.max_steps=5]}\n    full: {overrides: []}\n")
    assert params_overrides(params, "resnet", "reduced") == ["recipe.max_steps=5"]
    assert params_overrides(params, "resnet", "full") == []
    assert params_overrides(params, "vgg", "reduced") == []


def test_a_paper_added_to_params_gets_its_stages(tmp_path):
    """What CONTRIBUTING.md promises: conf/paper/<id>.yaml, notebooks/<id>.ipynb and one params
    entry are all a new paper needs; dvc.yaml is not edited."""
    shutil.copy(PROJECT_ROOT / "dvc.yaml", tmp_path / "dvc.yaml")
    params = yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text())
    params["papers"]["toy"] = {"reduced": {"overrides": []}, "full": {"overrides": []}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    subprocess.run([DVC, "init", "-q"], cwd=tmp_path, check=True)
    names = stage_list(tmp_path)
    assert {"reduced@toy", "datasets@toy", "full@toy"} <= set(names)
    assert "reports/toy/reduced" in names["reduced@toy"]


def test_the_datasets_stage_writes_the_fingerprints_of_a_papers_data(tmp_path, capsys):
    """`python -m replicate datasets <paper> --profile <p> --write FILE`: the data sets the plan
    reads, checked, and their fingerprints (file counts and sizes: a changed file changes them);
    a missing one is one clear error with its fix, and no file is written."""
    from tests.fakes import write_cifar10, write_imagenet_folder

    assert main(["datasets", "resnet", "--profile", "full"]) == 0
    assert capsys.readouterr().out.split() == ["cifar10", "imagenet"]
    assert main(["datasets", "resnet", "--profile", "reduced"]) == 0
    assert capsys.readouterr().out.split() == ["fashion_mnist"]

    data_dir, target = tmp_path / "data", tmp_path / "fingerprints" / "resnet.full.json"
    write_cifar10(data_dir)
    command = ["datasets", "resnet", "--profile", "full", "--data-dir", str(data_dir), "--write", str(target)]
    assert main(command) == 2 and not target.exists()
    assert "ImageNet" in capsys.readouterr().err
    write_imagenet_folder(data_dir)
    assert main(command) == 0
    stamps = json.loads(target.read_text())
    assert set(stamps) == {"cifar10", "imagenet"}
    assert stamps["cifar10"]["."][0] == 6  # five training batches and the test batch
    assert set(stamps["imagenet"]) >= {".", "train", "val"}
    (data_dir / "imagenet" / "val" / next(iter(sorted(p.name for p in (data_dir / "imagenet" / "val").iterdir()))) /
     "extra.JPEG").write_bytes(b"x")
    assert main(command) == 0
    assert json.loads(target.read_text())["imagenet"]["val"] != stamps["imagenet"]["val"]
