"""`python -m replicate`: bad input fails fast with the fix; run, data and groups work."""

import json
import subprocess
import sys

from replicate.cli import main
from replicate.config import PROJECT_ROOT
from tests.fakes import write_idx_fashion_mnist, write_imagenet_folder


def cli(*args, cwd=PROJECT_ROOT):
    return subprocess.run([sys.executable, "-m", "replicate", *args], capture_output=True, text=True, cwd=cwd)


def test_bad_override_fails_before_any_kernel_or_folder(tmp_path):
    done = cli("notebook", "resnet", "--profile", "reduced", "--report-root", str(tmp_path), "recipe.lrr=0.1")
    assert done.returncode == 2 and "recipe.lrr" in done.stderr
    assert not any(tmp_path.iterdir())


def test_unknown_paper_and_profile(tmp_path):
    done = cli("notebook", "resnt", "--report-root", str(tmp_path))
    assert done.returncode == 2 and "Did you mean 'resnet'" in done.stderr
    done = cli("run", "paper=resnet", "profile=tiny", "experiment=resnet20_cifar10")
    assert done.returncode == 2 and "Allowed: full, reduced" in done.stderr


def test_run_from_the_shell(tmp_path, capsys):
    write_idx_fashion_mnist(tmp_path / "data", n_train=128, n_test=32)
    code = main(["run", "paper=resnet", "experiment=resnet20_cifar10", f"paths.data_dir={tmp_path / 'data'}",
                 f"paths.run_dir={tmp_path / 'runs'}", "recipe.max_steps=4", "recipe.batch_size=32",
                 "recipe.val_every_steps=4", "recipe.checkpoint_every_steps=4", "data.train_subset=128",
                 "data.test_subset=32"])
    assert code == 0
    printed = capsys.readouterr().out
    assert json.loads(printed[printed.index("{"):])["steps"] == 4
    assert list((tmp_path / "runs" / "resnet" / "resnet20_cifar10").glob("*/result.json"))


def test_data_commands(tmp_path):
    done = cli("data", "cifar10", "--data-dir", str(tmp_path))
    assert done.returncode == 2 and "cifar-10-python.tar.gz" in done.stderr
    write_imagenet_folder(tmp_path, classes=3, per_class=2)
    stamp = tmp_path / "imagenet.fingerprint.json"
    done = cli("data", "imagenet", "--data-dir", str(tmp_path), "--fingerprint", str(stamp))
    assert done.returncode == 0, done.stderr
    counts = json.loads(stamp.read_text())["imagenet"]
    assert counts["train"][0] == 6 and len([k for k in counts if k.startswith("train/")]) == 3


def test_groups_lists_experiments():
    done = cli("groups")
    assert done.returncode == 0 and "resnet110_cifar10" in done.stdout and "profile: full, reduced" in done.stdout


RUN = ["run", "paper=resnet", "experiment=resnet20_cifar10", "recipe.max_steps=4", "recipe.batch_size=32",
       "recipe.val_every_steps=4", "recipe.checkpoint_every_steps=2", "data.train_subset=128", "data.test_subset=32"]


def test_a_truncated_checkpoint_is_one_error_line_naming_it_and_the_fix(tmp_path, capsys):
    write_idx_fashion_mnist(tmp_path / "data", n_train=128, n_test=32)
    paths = [f"paths.data_dir={tmp_path / 'data'}", f"paths.run_dir={tmp_path / 'runs'}"]
    from replicate.config import compose
    from replicate.runs import run_dir

    folder = run_dir(compose("resnet", "reduced", [*RUN[2:], *paths]))
    (folder / "checkpoints").mkdir(parents=True)
    (folder / "checkpoints" / "last.ckpt").write_bytes(b"PK\x03\x04 truncated")
    assert main([*RUN, *paths]) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: ") and "last.ckpt cannot be read" in error and "--force" in error
    assert "Traceback" not in error and not (folder / "result.json").exists()
    assert main([*RUN, *paths, "--force"]) == 0  # --force starts afresh


def test_a_corrupt_metrics_json_is_named_by_the_scoreboard(tmp_path):
    (tmp_path / "resnet" / "reduced").mkdir(parents=True)
    (tmp_path / "resnet" / "reduced" / "metrics.json").write_text("{not json")
    done = cli("scoreboard", "--report-root", str(tmp_path))
    assert done.returncode == 2 and "resnet/reduced/metrics.json is not a report's metrics.json" in done.stderr
    assert "Traceback" not in done.stderr
    done = cli("--verbose", "scoreboard", "--report-root", str(tmp_path))
    assert done.returncode != 0 and "Traceback" in done.stderr  # --verbose shows where it came from


def test_notebook_force_deletes_the_planned_runs_or_the_named_one(tmp_path, monkeypatch):
    from replicate import cli as commands
    from replicate.config import compose
    from replicate.runs import run_dir

    monkeypatch.setenv("REPLICATE_RUN_DIR", str(tmp_path / "runs"))
    executed = []
    monkeypatch.setattr(commands, "execute_notebook", lambda *args, **kwargs: executed.append(args) or tmp_path)
    folders = {name: run_dir(compose("resnet", "reduced", ["recipe.max_steps=20", f"experiment={name}"]))
               for name in ("resnet20_cifar10", "plain20_cifar10")}
    for folder in folders.values():
        folder.mkdir(parents=True)
    assert main(["notebook", "resnet", "--force", "plain20_cifar10", "recipe.max_steps=20"]) == 0
    assert folders["resnet20_cifar10"].exists() and not folders["plain20_cifar10"].exists()
    assert executed[-1][2] == ["recipe.max_steps=20"]  # the override after --force is still an override
    assert main(["notebook", "resnet", "recipe.max_steps=20", "--force"]) == 0
    assert not folders["resnet20_cifar10"].exists()


def test_a_corrupt_dataset_file_is_one_error_line_naming_it(tmp_path):
    folder = write_idx_fashion_mnist(tmp_path / "data", n_train=128, n_test=32)
    (folder / "train-images-idx3-ubyte.gz").write_bytes(b"not a gzip file")
    done = cli(*RUN, f"paths.data_dir={tmp_path / 'data'}", f"paths.run_dir={tmp_path / 'runs'}")
    assert done.returncode == 2 and done.stderr.startswith("error: ")
    assert "train-images-idx3-ubyte.gz" in done.stderr and "fetch it again" in done.stderr
    assert "Traceback" not in done.stderr


def test_config_prints_the_resolved_config_and_its_hash(capsys):
    assert main(["config", "paper=resnet", "experiment=resnet20_cifar10", "recipe.max_steps=60"]) == 0
    out = capsys.readouterr().out
    assert "max_steps: 60" in out and "name: fashion_mnist" in out and "# config hash " in out
    assert "tables:" not in out  # the paper's reported values only with --all
    assert main(["config", "paper=resnet", "--all"]) == 0 and "tables:" in capsys.readouterr().out
    assert main(["config", "experiment=resnet20_cifar10"]) == 2
    assert "Name the paper" in capsys.readouterr().err


def test_run_help_lists_the_groups_and_examples(capsys):
    import pytest

    with pytest.raises(SystemExit):
        main(["run", "--help"])
    out = capsys.readouterr().out
    assert "profile   full, reduced" in out and "resnet_cifar" in out and "examples:" in out
    assert "--log-cached" in out


def test_the_replicate_console_script_is_declared():
    import tomllib

    scripts = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["replicate"] == "replicate.cli:main"


def test_evaluate_tests_the_last_and_the_best_checkpoint_again(tmp_path, capsys):
    write_idx_fashion_mnist(tmp_path / "data", n_train=128, n_test=32)
    overrides = ["paper=resnet", "experiment=resnet20_cifar10", f"paths.data_dir={tmp_path / 'data'}",
                 f"paths.run_dir={tmp_path / 'runs'}", "recipe.max_steps=8", "recipe.batch_size=32",
                 "recipe.val_every_steps=4", "recipe.checkpoint_every_steps=4", "data.train_subset=128",
                 "data.test_subset=32"]
    assert main(["evaluate", *overrides]) == 2
    assert "no such checkpoint. Train the run first" in capsys.readouterr().err
    assert main(["run", *overrides]) == 0
    printed = capsys.readouterr().out
    trained = json.loads(printed[printed.index("{"):])
    assert main(["evaluate", *overrides]) == 0
    last = json.loads(capsys.readouterr().out)
    assert last["step"] == 8 and last["test_top1_err"] == trained["test_top1_err"]
    assert main(["evaluate", *overrides, "--checkpoint", "best"]) == 0
    best = json.loads(capsys.readouterr().out)
    assert best["checkpoint"].endswith("best.ckpt") and best["test_top1_err"] <= last["test_top1_err"] + 1e-9


def test_multirun_sweeps_seeds_and_prints_mean_and_std(tmp_path, capsys):
    from replicate.cli import sweep, sweep_summary

    assert sweep(["experiment=a", "seed=0,1", "recipe.lr=0.1,0.2", "model.widths=[1,2]"]) == [
        ["experiment=a", "seed=0", "recipe.lr=0.1", "model.widths=[1,2]"],
        ["experiment=a", "seed=0", "recipe.lr=0.2", "model.widths=[1,2]"],
        ["experiment=a", "seed=1", "recipe.lr=0.1", "model.widths=[1,2]"],
        ["experiment=a", "seed=1", "recipe.lr=0.2", "model.widths=[1,2]"]]
    assert sweep_summary([{"test_top1_err": 6.5}, {"test_top1_err": 6.7}, {"test_top1_err": 6.6}]) == {
        "test_top1_err": "6.60 ± 0.10 (n=3)"}
    write_idx_fashion_mnist(tmp_path / "data", n_train=128, n_test=32)
    assert main(["run", "-m", "paper=resnet", "experiment=resnet20_cifar10", f"paths.data_dir={tmp_path / 'data'}",
                 f"paths.run_dir={tmp_path / 'runs'}", "recipe.max_steps=4", "recipe.batch_size=32",
                 "recipe.val_every_steps=4", "recipe.checkpoint_every_steps=4", "data.train_subset=128",
                 "data.test_subset=32", "seed=0,1"]) == 0
    printed = capsys.readouterr().out
    swept = json.loads(printed[printed.index('{\n  "runs"'):])
    assert [r["overrides"][-1] for r in swept["runs"]] == ["seed=0", "seed=1"]
    assert swept["runs"][0]["config_hash"] != swept["runs"][1]["config_hash"]
    assert "(n=2)" in swept["mean_std"]["test_top1_err"]
