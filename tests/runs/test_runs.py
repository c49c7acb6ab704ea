"""runs.run: learning, the result cache, checkpoint resume, ResNet-110's warm-up, missing data."""

import json
import os
import time
from pathlib import Path

import lightning as L
import pandas as pd
import pytest
import torch
from lightning.pytorch.callbacks import Callback

from replicate import runs
from replicate.config import compose
from replicate.errors import DatasetMissingError
from tests.fakes import write_idx_fashion_mnist


def small_cfg(tmp_path, name="resnet20_cifar10", steps=24, **extra):
    """The reduced profile on a fake Fashion-MNIST of 256 images (8 iterations an epoch of 32)."""
    write_idx_fashion_mnist(tmp_path / "data", n_train=256, n_test=64)
    overrides = [f"experiment={name}", f"paths.data_dir={tmp_path / 'data'}", f"paths.run_dir={tmp_path / 'runs'}",
                 "data.train_subset=256", "data.test_subset=64", "recipe.batch_size=32",
                 f"recipe.max_steps={steps}", "recipe.val_every_steps=8", "recipe.checkpoint_every_steps=8",
                 "trainer.log_every_n_steps=4", *[f"{k}={v}" for k, v in extra.items()]]
    return compose("resnet", "reduced", overrides)


def test_a_short_run_learns_and_is_cached(tmp_path, monkeypatch):
    cfg = small_cfg(tmp_path, steps=40)
    result = runs.run(cfg)
    assert result["steps"] == 40 and not result["cached"]
    assert result["test_top1_err"] < 50.0  # chance is 90%: the class bands are learned
    assert result["train_err_final"] is not None
    saved = json.loads((runs.run_dir(cfg) / "result.json").read_text())
    assert saved["test_top1_err"] == result["test_top1_err"]
    # The step timer: mean seconds per step and the loop's share of time waiting for batches
    # (in-memory data on the same device: a small share, but measured, not assumed).
    assert result["seconds_per_step"] > 0 and 0 <= result["data_wait_share"] < 0.5
    curves = runs.load_curves(result)
    assert {"train/err", "val/top1_err", "lr"} <= set(curves.columns)

    def no_training(*args, **kwargs):
        raise AssertionError("a cached run must not train")

    monkeypatch.setattr(L.Trainer, "fit", no_training)
    again = runs.run(small_cfg(tmp_path, steps=40))
    assert again["cached"] and again["test_top1_err"] == result["test_top1_err"]


class StopAt(Callback):
    """Simulates a killed job: raises once training reaches `step` (after its checkpoint)."""

    def __init__(self, step):
        self.step = step

    def on_train_batch_start(self, trainer, *args):
        if trainer.global_step == self.step:
            raise RuntimeError("simulated interruption")


def test_an_interrupted_run_resumes_from_its_checkpoint(tmp_path):
    cfg = small_cfg(tmp_path, steps=24)
    with pytest.raises(RuntimeError, match="simulated interruption"):
        runs.run(cfg, callbacks=[StopAt(8)])  # one epoch of 8 iterations done
    directory = runs.run_dir(cfg)
    assert (directory / "checkpoints" / "last.ckpt").exists() and not (directory / "result.json").exists()

    result = runs.run(small_cfg(tmp_path, steps=24))
    assert result["resumed_from_step"] == 8 and result["steps"] == 24
    curves = runs.load_curves(result)
    assert curves["step"].min() < 8 and curves["step"].max() >= 23  # both attempts' logs merged


def _final_weights(result) -> dict:
    state = torch.load(Path(result["run_dir"]) / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    return state["state_dict"]


@pytest.mark.parametrize("name", ["resnet20_cifar10", "resnet110_cifar10"])
def test_a_run_killed_mid_epoch_resumes_to_the_uninterrupted_numbers(tmp_path, name):
    """Checkpoints every 5 steps of 8-step epochs: the kill at step 13 resumes from step 10, in the
    middle of the second epoch, with its augmentation stream and (ResNet-110) warm-up window."""
    extra = {"recipe.checkpoint_every_steps": 5, "trainer.log_every_n_steps": 3}
    if name == "resnet110_cifar10":
        extra.update({"recipe.warmup.window": 4, "model.name": "resnet20"})
    whole = runs.run(small_cfg(tmp_path / "whole", name=name, steps=24, **extra))
    cut = small_cfg(tmp_path / "cut", name=name, steps=24, **extra)
    with pytest.raises(RuntimeError, match="simulated interruption"):
        runs.run(cut, callbacks=[StopAt(13)])
    resumed = runs.run(small_cfg(tmp_path / "cut", name=name, steps=24, **extra))
    assert resumed["resumed_from_step"] == 10 and resumed["steps"] == whole["steps"] == 24
    for key in ("test_top1_err", "test_top5_err", "train_err_final"):
        assert resumed[key] == whole[key], key
    a, b = _final_weights(whole), _final_weights(resumed)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    curve = lambda result: runs.load_curves(result).set_index("step")[["train/err", "lr"]].dropna()  # noqa: E731
    pd.testing.assert_frame_equal(curve(resumed), curve(whole))


def test_warmup_holds_lr_until_training_error_drops(tmp_path):
    """ResNet-110 (Sec. 4.2): lr 0.01 until the training error is below 80%, then back to 0.1."""
    cfg = small_cfg(tmp_path, name="resnet110_cifar10", steps=24, **{"recipe.warmup.window": 4,
                                                                       "model.name": "resnet20"})
    assert cfg.recipe.warmup.enabled
    result = runs.run(cfg)
    lr = runs.load_curves(result)[["step", "lr"]].dropna()
    assert lr["lr"].iloc[0] == pytest.approx(0.01)
    assert lr["lr"].max() == pytest.approx(0.1)  # the error fell below 80%: warm-up ended
    assert (lr["lr"].diff().fillna(0) >= -1e-9).iloc[: lr["lr"].idxmax()].all()


def test_missing_dataset_is_a_clear_error_and_a_not_run_row(tmp_path):
    cfg = compose("resnet", "reduced", ["experiment=resnet20_cifar10", "data=cifar10",
                                        f"paths.data_dir={tmp_path}", f"paths.run_dir={tmp_path / 'runs'}"])
    with pytest.raises(DatasetMissingError, match="cifar-10-python.tar.gz"):
        runs.run(cfg)
    results = runs.run_all("resnet", "reduced", [f"paths.data_dir={tmp_path}", f"paths.run_dir={tmp_path / 'runs'}",
                                                       "data=cifar10"], ["resnet20_cifar10"], verbose=False)
    assert "cifar-10-batches-py" in results["resnet20_cifar10"]["not_run"]


def test_run_all_looks_for_each_data_set_once(tmp_path, monkeypatch):
    """A plan of 29 CIFAR and ImageNet runs tries each set's download once (a node without a
    network would otherwise wait out each failed download), gives every run the reason, and the
    next run_all looks again."""
    tried = []

    def absent(name, data_dir, download=False):
        tried.append((name, download))
        raise DatasetMissingError(f"{name} not found here (download tried: {download})")

    monkeypatch.setattr("replicate.runs.launch.prepare", absent)
    overrides = [f"paths.data_dir={tmp_path / 'data'}", f"paths.run_dir={tmp_path / 'runs'}"]
    results = runs.run_all("densenet", "full", overrides, verbose=False)
    assert len(results) > 20 and all("not found here" in r["not_run"] for r in results.values())
    assert sorted(set(tried)) == sorted(tried)  # each set and mode once
    assert {name for name, _ in tried} == {r["dataset"] for r in results.values()}
    first = len(tried)
    runs.run_all("densenet", "full", overrides, verbose=False)
    assert len(tried) == 2 * first


@pytest.mark.parametrize("paper,name", [("resnet", "resnet50_imagenet"), ("yolov3", "yolov3_coco")])
def test_a_run_without_its_data_builds_nothing_and_leaves_no_folder(tmp_path, monkeypatch, paper, name):
    """ImageNet and COCO are never downloaded: their absence is found before the network, the
    trainer or the run folder is made (the full profile's pass over absent data sets is quick)."""
    from replicate import models

    monkeypatch.setattr(models, "build", lambda *a, **k: pytest.fail("a network was built"))
    cfg = compose(paper, "full", [f"experiment={name}", f"paths.data_dir={tmp_path / 'data'}",
                                  f"paths.run_dir={tmp_path / 'runs'}"])
    assert cfg.data.download  # the full profile downloads what can be downloaded, not these
    with pytest.raises(DatasetMissingError, match="not found"):
        runs.run(cfg)
    assert not runs.run_dir(cfg).exists()


def test_plateau_schedule_steps_once_per_epoch(tmp_path):
    """The ImageNet recipe's 'divide by 10 when the error plateaus' (Sec. 3.4), checked every epoch.

    Epochs of 6 iterations (200 images, batches of 32, the last one dropped); a huge relative
    threshold makes every epoch after the first count as a plateau, so lr falls tenfold each epoch.
    """
    write_idx_fashion_mnist(tmp_path / "data", n_train=200, n_test=64)
    cfg = compose("resnet", "reduced", [
        "experiment=resnet18a_imagenet", "model.name=resnet20", f"paths.data_dir={tmp_path / 'data'}",
        f"paths.run_dir={tmp_path / 'runs'}", "data.train_subset=200", "data.test_subset=64", "recipe.batch_size=32",
        "recipe.max_steps=24", "recipe.val_every_steps=null", "recipe.checkpoint_every_steps=6",
        "recipe.plateau.patience=0", "recipe.plateau.threshold=10", "trainer.log_every_n_steps=1"])
    assert cfg.recipe.schedule == "plateau"
    result = runs.run(cfg)
    lr = runs.load_curves(result)[["step", "lr"]].dropna().set_index("step")["lr"]
    assert lr.loc[0] == pytest.approx(0.1) and lr.loc[5] == pytest.approx(0.1)
    assert lr.loc[6] == pytest.approx(0.1)  # the first validation sets the best: no plateau yet
    assert lr.loc[12] == pytest.approx(0.01) and lr.loc[18] == pytest.approx(0.001)
    assert result["steps"] == 24


def test_force_refuses_a_run_another_process_is_writing(tmp_path):
    """One writer per run folder: a process holding the lock keeps --force from deleting the run."""
    import subprocess
    import sys

    from replicate.errors import RunLockedError

    cfg = small_cfg(tmp_path, steps=8)
    directory = runs.run_dir(cfg)
    directory.parent.mkdir(parents=True, exist_ok=True)
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from filelock import FileLock; lock = FileLock(sys.argv[1]); lock.acquire(); "
        "print('held', flush=True); time.sleep(60)"), str(directory.with_name(directory.name + ".lock"))],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunLockedError, match="--force does not delete a run in progress"):
            runs.run(cfg, force=True)
        assert not directory.exists()
    finally:
        holder.kill()
        holder.wait()
    assert runs.run(cfg, force=True)["steps"] == 8  # released: the run goes ahead


def test_result_json_holds_no_absolute_path_and_a_moved_run_is_found_where_it_is(tmp_path):
    import shutil

    cfg = small_cfg(tmp_path, steps=8)
    result = runs.run(cfg)
    stored = (runs.run_dir(cfg) / "result.json").read_text()
    assert str(tmp_path) not in stored
    moved = tmp_path / "moved"
    shutil.move(str(tmp_path / "runs"), str(moved))
    again = runs.run(small_cfg(tmp_path, steps=8, **{"paths.run_dir": str(moved)}))
    assert again["cached"] and again["run_dir"].startswith(str(moved))
    assert again["test_top1_err"] == result["test_top1_err"]
    assert len(runs.load_curves(again)) > 0  # the curves come from the folder where it is now


@pytest.mark.parametrize("override,key", [("recipe.lr=abc", "recipe.lr"), ("recipe.lr=-1", "recipe.lr"),
                                          ("recipe.max_steps=0", "recipe.max_steps"), ("seed=abc", "seed"),
                                          ("trainer.precision=17", "trainer.precision"),
                                          ("speed.compile=fast", "speed.compile"),
                                          ("data.train_subset=16", "data.train_subset")])
def test_a_bad_value_is_refused_at_compose_and_leaves_no_folder(tmp_path, override, key):
    from replicate.errors import ConfigError

    with pytest.raises(ConfigError, match=f"{key}="):
        small_cfg(tmp_path, **dict([override.split("=", 1)]))
    assert not (tmp_path / "runs").exists()


FREEZE_AND_RUN = """
import os, signal, sys
from lightning.pytorch.callbacks import Callback
from replicate import runs
from replicate.config import compose

class Freeze(Callback):  # stops this process where the test then kills it by its PID
    def __init__(self, at):
        self.at = at
    def on_train_batch_start(self, trainer, *args):
        if self.at != "test" and trainer.global_step == int(self.at):
            os.kill(os.getpid(), signal.SIGSTOP)
    def on_test_start(self, trainer, *args):
        if self.at == "test":
            os.kill(os.getpid(), signal.SIGSTOP)

runs.run(compose("resnet", "reduced", sys.argv[2:]), callbacks=[Freeze(sys.argv[1])])
"""


def _stopped(pid: int) -> bool:
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().rsplit(")", 1)[1].split()[0] == "T"


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads a process's state from /proc")
@pytest.mark.parametrize("at,resumed_from", [("13", 12), ("test", 24)])
def test_a_subprocess_killed_by_its_pid_leaves_a_run_that_finishes_with_the_uninterrupted_numbers(
        tmp_path, at, resumed_from):
    """kill -9 in the middle of an epoch (step 13 of 24, the last checkpoint at 12), and after the
    final checkpoint (while testing): no result is cached by the killed process, and the rerun
    gives the uninterrupted run's numbers exactly."""
    import signal
    import subprocess
    import sys
    import time

    extra = {"recipe.checkpoint_every_steps": 4, "trainer.log_every_n_steps": 3}
    whole = runs.run(small_cfg(tmp_path / "whole", steps=24, **extra))
    cut = small_cfg(tmp_path / "cut", steps=24, **extra)
    process = subprocess.Popen([sys.executable, "-c", FREEZE_AND_RUN, at, "experiment=resnet20_cifar10", *cut.overrides],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 300
        while not _stopped(process.pid):
            assert process.poll() is None, process.stderr.read()
            assert time.monotonic() < deadline, "the run never reached the point where it is killed"
            time.sleep(0.05)
    finally:
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
    directory = runs.run_dir(cut)
    assert (directory / "checkpoints" / "last.ckpt").exists() and not (directory / "result.json").exists()
    resumed = runs.run(cut)  # the killed process's lock is gone with it
    assert resumed["resumed_from_step"] == resumed_from and not resumed["cached"]
    for key in ("steps", "test_top1_err", "test_top5_err", "train_err_final"):
        assert resumed[key] == whole[key], key
    assert runs.run(cut)["cached"]


def test_run_all_shows_the_files_a_detection_run_skipped(monkeypatch, capsys):
    """A notebook's run cell says which unreadable images a run dropped (result.json keeps them)."""
    skipped = [f"/data/VOCdevkit/VOC2007/JPEGImages/00000{i}.jpg" for i in range(5)]

    def fake_run(cfg):
        return {"experiment": cfg.experiment, "cached": True, "steps": 10, "test_map": 50.0, "skipped_files": skipped}

    from replicate.runs import chain

    monkeypatch.setattr(chain, "run", fake_run)  # run_all's door
    runs.run_all("fast_rcnn", "reduced", experiments=["fast_rcnn_voc07"])
    out = capsys.readouterr().out
    assert "skipped 5 unreadable file(s): /data/VOCdevkit/VOC2007/JPEGImages/000000.jpg" in out and "..." in out


def test_wandb_logs_each_experiment_of_a_process_to_its_own_run(tmp_path, monkeypatch, capsys):
    """Offline W&B: two experiments in one process give two W&B runs, each in its own run folder
    with its own id (from the config hash), config and metrics; a cached rerun logs nothing and
    says so, and uploads its stored metrics on request."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    names = ("resnet20_cifar10", "plain20_cifar10")
    logged = {}
    for name in names:
        cfg = small_cfg(tmp_path, name=name, steps=8, logger="wandb")
        result = runs.run(cfg)
        folders = list((Path(result["run_dir"]) / "wandb").glob("offline-run-*"))
        assert len(folders) == 1 and folders[0].name.endswith(runs.trainer.wandb_id(cfg))
        # The offline run's records (config, history, summary) are protobuf: their keys and
        # values appear as plain strings. W&B's own process writes them; `finish` may return a
        # moment before the last record is on disk, so the read waits for it (at most 20 s).
        deadline = time.monotonic() + 20
        while True:
            logged[name] = b"".join(p.read_bytes() for p in folders[0].glob("*.wandb"))
            if b"test/top1_acc" in logged[name] or time.monotonic() > deadline:
                break
            time.sleep(0.2)
    for name, other in (names, names[::-1]):
        assert name.encode() in logged[name] and other.encode() not in logged[name]
        assert b"train/loss" in logged[name] and b"test/top1_acc" in logged[name]
        assert b"resnet" in logged[name] and b"Table 6" not in logged[name]  # grouped by paper; no tables
    cfg = small_cfg(tmp_path, name=names[0], steps=8, logger="wandb")
    result = runs.run(cfg)
    assert result["cached"] and "nothing was logged to W&B" in capsys.readouterr().out
    runs.run(cfg, log_cached=True)
    folders = list((Path(result["run_dir"]) / "wandb").glob("offline-run-*"))
    assert len(folders) == 2 and all(f.name.endswith(runs.trainer.wandb_id(cfg)) for f in folders)


def test_progress_is_printed_as_lines_from_the_first_step(tmp_path, capsys):
    """With the progress bar off (the default): a line at the first step and at the last, with
    step/total, loss, images per second and the time left."""
    runs.run(small_cfg(tmp_path, steps=8))
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("resnet/resnet20_cifar10  step")]
    assert lines[0].startswith("resnet/resnet20_cifar10  step 1/8  loss ") and lines[-1].split()[2] == "8/8"
    assert all("img/s" in line and "ETA" in line for line in lines) and len(lines) <= 3


def test_the_full_profile_refuses_to_train_on_a_cpu_unless_forced(tmp_path):
    """After the data loaded (a missing dataset is still reported as such), before the first step,
    with the expected duration."""
    from replicate.errors import ConfigError

    write_idx_fashion_mnist(tmp_path / "data", n_train=64, n_test=32)
    overrides = ["experiment=resnet20_cifar10", "data=fashion_mnist", "data.image_size=14", f"paths.data_dir={tmp_path / 'data'}",
                 f"paths.run_dir={tmp_path / 'runs'}", "trainer.accelerator=cpu", "trainer.precision=32-true",
                 "recipe.max_steps=4", "recipe.batch_size=16", "data.train_subset=64", "data.test_subset=32",
                 "recipe.val_every_steps=4", "recipe.checkpoint_every_steps=4"]
    with pytest.raises(ConfigError, match=r"no GPU\. At this CPU's measured speed that is at least .*profile\.allow_cpu=true"):
        runs.run(compose("resnet", "full", overrides))
    assert not list((tmp_path / "runs").rglob("result.json"))
    assert runs.run(compose("resnet", "full", [*overrides, "profile.allow_cpu=true"]))["steps"] == 4


def test_an_experiment_run_under_several_seeds_is_shown_as_their_mean_and_std(tmp_path):
    """`run ... -m seed=0,1,2` leaves three runs of one experiment: run_all attaches all three
    (and no run of another config), and the table shows their mean ± std beside the paper's."""
    from replicate.report import Report

    seeded = {seed: runs.run(small_cfg(tmp_path, steps=8, seed=seed)) for seed in (0, 1, 2)}
    runs.run(small_cfg(tmp_path, steps=16, seed=5))  # another config (steps): not one of the seeds
    overrides = [o for o in small_cfg(tmp_path, steps=8).overrides]
    results = runs.run_all("resnet", "reduced", overrides, ["resnet20_cifar10"], verbose=False)
    attached = results["resnet20_cifar10"]["seed_runs"]
    assert sorted(attached) == [0, 1, 2]
    errors = [seeded[s]["test_top1_err"] for s in (0, 1, 2)]
    assert [attached[s]["test_top1_err"] for s in (0, 1, 2)] == errors
    assert len(set(errors)) > 1  # the seeds differ, or the spread would prove nothing

    report = Report(compose("resnet", "reduced", [f"paths.report_dir={tmp_path / 'reports'}"]))
    frame = report.measured("table6_error", results)
    row = frame.set_index("row").loc["ResNet-20"]
    mean, std = sum(errors) / 3, (sum((e - sum(errors) / 3) ** 2 for e in errors) / 2) ** 0.5
    assert row["ours"] == pytest.approx(mean) and "mean ± std of 3 seeds (0, 1, 2)" in row["note"]
    shown = report.formatted("table6_error").set_index("row").loc["ResNet-20", "ours"]
    assert shown == f"{mean:.4g} ± {std:.2g}"
