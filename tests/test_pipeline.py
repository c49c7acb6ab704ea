"""The DVC pipelines: both parse, bare `dvc repro` is the full one, and the profiles never share outputs."""

import subprocess
import sys
from pathlib import Path

import yaml

from replicate.config import PROJECT_ROOT

DVC = str(Path(sys.executable).with_name("dvc"))


def stages(path):
    return yaml.safe_load((PROJECT_ROOT / path).read_text())["stages"]


def outs(stage_map):
    found = []
    for stage in stage_map.values():
        for out in stage.get("outs", []):
            found.append(next(iter(out)) if isinstance(out, dict) else out)
    return found


def test_profiles_write_disjoint_outputs():
    full, reduced = outs(stages("dvc.yaml")), outs(stages("pipelines/reduced/dvc.yaml"))
    assert "reports/resnet/full" in full and "reports/resnet/reduced" in reduced
    assert not set(full) & set(reduced)
    assert all("--profile full" in s["cmd"] for n, s in stages("dvc.yaml").items() if n == "resnet")


def test_dvc_reads_both_pipelines():
    for target in ("dvc.yaml", "pipelines/reduced/dvc.yaml"):
        done = subprocess.run([DVC, "stage", "list", "--name-only", target], capture_output=True, text=True,
                              cwd=PROJECT_ROOT)
        assert done.returncode == 0, done.stderr
        assert "resnet" in [name.split(":")[-1] for name in done.stdout.split()]


def test_every_paper_has_a_stage_in_both_pipelines():
    papers = [p.stem for p in (PROJECT_ROOT / "conf" / "paper").glob("*.yaml")]
    for paper in papers:
        assert paper in stages("dvc.yaml") and paper in stages("pipelines/reduced/dvc.yaml")
        assert (PROJECT_ROOT / "notebooks" / f"{paper}.ipynb").exists()
