"""compose(): groups, experiments, profiles, overrides, errors; every experiment composes."""

import pytest

from replicate.config import compose, config_hash, groups
from replicate.errors import ConfigError


def test_groups_present():
    g = groups()
    for group in ("paper", "model", "data", "profile", "trainer", "logger", "recipe"):
        assert g[group], group
    assert g["profile"] == ["full", "reduced"] and g["logger"] == ["csv", "wandb"]


@pytest.mark.slow  # about 250 compositions: 40 s a profile
@pytest.mark.parametrize("profile", ["reduced", "full"])
def test_every_experiment_of_every_paper_composes(profile):
    for paper in groups()["paper"]:
        cfg = compose(paper, profile)
        sources = {}
        for name in cfg.paper.experiments:
            exp = compose(paper, profile, [f"experiment={name}"])
            assert exp.experiment == name and exp.model.name and exp.recipe.max_steps > 0
            sources[name] = exp.model.get("backbone_from")
        runs = list(cfg.paper.plan[profile])
        for name in runs:
            assert name in cfg.paper.experiments
            # A run that starts from another's network (model.backbone_from) comes after it.
            if sources[name]:
                assert sources[name] in runs[:runs.index(name)], (paper, name, sources[name])


def test_reduced_profile_substitutes_fashion_mnist_and_rescales():
    cfg = compose("resnet", "reduced", ["experiment=resnet110_cifar10"])
    assert cfg.data.name == "fashion_mnist" and cfg.data.channels == 1 and cfg.data.image_size == 14
    assert cfg.model.name == "resnet110" and cfg.model.shortcut == "A"
    assert cfg.recipe.warmup.enabled and cfg.recipe.max_steps == 240 and cfg.recipe.lr == 0.1
    assert cfg.trainer.accelerator == "cpu"


def test_full_profile_keeps_the_papers_data_and_recipe():
    cfg = compose("resnet", "full", ["experiment=resnet50_imagenet"])
    assert cfg.data.name == "imagenet" and cfg.data.eval_crops == 10
    assert cfg.recipe.max_steps == 600_000 and cfg.recipe.batch_size == 256 and cfg.recipe.schedule == "plateau"
    assert cfg.trainer.precision == "bf16-mixed" and cfg.speed.channels_last
    cifar = compose("resnet", "full", ["experiment=resnet20_cifar10"])
    assert cifar.recipe.max_steps == 64_000 and list(cifar.recipe.milestones) == [0.5, 0.75]


def test_user_overrides_win_over_experiment_and_profile():
    cfg = compose("resnet", "reduced", ["experiment=resnet20_cifar10", "data=cifar10", "recipe.max_steps=7"])
    assert cfg.data.name == "cifar10" and cfg.recipe.max_steps == 7


def test_paths_are_anchored_at_the_project_root():
    from pathlib import Path

    cfg = compose("resnet", "reduced")
    assert all(Path(p).is_absolute() for p in cfg.paths.values())


def test_config_hash_tracks_what_changes_results_only():
    base = compose("resnet", "reduced", ["experiment=resnet20_cifar10"])
    assert config_hash(base) == config_hash(compose("resnet", "reduced", ["experiment=resnet20_cifar10"]))
    assert config_hash(base) != config_hash(compose("resnet", "reduced", ["experiment=resnet20_cifar10", "recipe.lr=0.2"]))
    assert config_hash(base) != config_hash(compose("resnet", "reduced", ["experiment=resnet56_cifar10"]))
    assert config_hash(base) == config_hash(compose("resnet", "reduced", ["experiment=resnet20_cifar10",
                                                                          "paths.run_dir=/elsewhere",
                                                                          "trainer.enable_progress_bar=true"]))
    # A cluster run (more devices, same global batch) is picked up by a notebook on one device.
    assert config_hash(base) == config_hash(compose("resnet", "reduced", ["experiment=resnet20_cifar10",
                                                                          "trainer.devices=8", "trainer.num_nodes=2",
                                                                          "trainer.strategy=ddp"]))
    assert config_hash(base) != config_hash(compose("resnet", "reduced", ["experiment=resnet20_cifar10",
                                                                          "trainer.precision=bf16-mixed"]))


@pytest.mark.parametrize("paper,profile,overrides,message", [
    ("resnt", "reduced", [], "Unknown paper 'resnt'.*Did you mean 'resnet'"),
    ("resnet", "tiny", [], "Unknown profile 'tiny'.*Allowed: full, reduced"),
    ("resnet", "reduced", ["experiment=resnet21_cifar10"], "Unknown experiment 'resnet21_cifar10'.*Allowed:"),
    ("resnet", "reduced", ["data=cifar11"], "Unknown data 'cifar11'.*Did you mean 'cifar10'"),
    ("resnet", "reduced", ["recipe.lrr=0.1"], "recipe.lrr"),
    ("resnet", "reduced", ["lr"], "not of the form key=value"),
    ("resnet", "reduced", ["profile=full"], "Pass the profile as compose"),
])
def test_bad_input_names_the_key_and_the_choices(paper, profile, overrides, message):
    with pytest.raises(ConfigError, match=message):
        compose(paper, profile, overrides)


def test_reported_numbers_carry_source_and_tolerance():
    cfg = compose("resnet", "reduced")
    for table in cfg.paper.tables:
        assert table.source and table.get("tolerance") is not None, table.id
        for cell in table.cells:
            assert isinstance(cell.paper, (int, float)), (table.id, cell.row)


def test_a_users_override_of_the_profile_reaches_its_substitutions():
    from replicate.config import compose

    assert compose("resnet", "reduced", ["experiment=resnet20_cifar10"]).data.name == "fashion_mnist"
    cfg = compose("resnet", "reduced", ["experiment=resnet20_cifar10", "profile.substitute_data.cifar10=cifar10"])
    assert cfg.data.name == "cifar10"


def test_compositions_are_kept_on_disk_keyed_by_the_conf_files(tmp_path, monkeypatch):
    """A composition is made once for all processes (`compose_cache_dir`): a fresh process reads it
    from disk, the same as Hydra's; an edited conf/ file or a damaged entry composes again."""
    from omegaconf import OmegaConf

    from replicate import config

    monkeypatch.setenv("REPLICATE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(config, "_COMPOSED", {})
    fresh = config.compose("resnet", "reduced", ["experiment=resnet20_cifar10", "recipe.max_steps=7"])
    stored = sorted((tmp_path / "cache" / "compose").glob("*.pkl"))
    assert len(stored) == 2  # the paper alone, then with the experiment

    monkeypatch.setattr(config, "_COMPOSED", {})  # a new process
    monkeypatch.setattr(config, "_compose_now", lambda overrides: pytest.fail("composed again"))
    again = config.compose("resnet", "reduced", ["experiment=resnet20_cifar10", "recipe.max_steps=7"])
    assert OmegaConf.to_container(again) == OmegaConf.to_container(fresh) and OmegaConf.is_struct(again)
    with pytest.raises(Exception, match="lrr"):  # still a struct config: unknown keys are refused
        OmegaConf.update(again, "recipe.lrr", 1.0, merge=True)

    composed = []
    monkeypatch.setattr(config, "_compose_now", lambda overrides: composed.append(overrides) or fresh)
    for path in stored:
        path.write_bytes(b"\x80\x05not a pickle")  # damaged entries
    monkeypatch.setattr(config, "_COMPOSED", {})
    config._hydra(["paper=resnet", "profile=reduced"])
    assert composed == [["paper=resnet", "profile=reduced"]]
    monkeypatch.setattr(config, "_COMPOSED", {})
    monkeypatch.setattr(config, "_conf_state", lambda: (("edited", 1, 1),))
    monkeypatch.setattr(config, "_DIGESTS", {(("edited", 1, 1),): "other conf/ files"})
    config._hydra(["paper=resnet", "profile=reduced"])
    assert len(composed) == 2  # another state of conf/: composed again


def test_each_data_config_declares_the_task_its_readers_serve():
    """conf/data/<name>.yaml's `task` is what compose and runs.run go by; the readers agree."""
    from replicate.config import CONF_DIR, is_detection_data
    from replicate.data import DATASETS as CLASSIFICATION
    from replicate.data.detection import DATASETS as DETECTION

    names = sorted(p.stem for p in (CONF_DIR / "data").glob("*.yaml"))
    assert [n for n in names if is_detection_data(n)] == sorted(set(names) & set(DETECTION))
    assert [n for n in names if not is_detection_data(n)] == sorted(set(names) & set(CLASSIFICATION))
    assert set(names) <= set(CLASSIFICATION) | set(DETECTION)


def test_a_run_hash_covers_the_code_its_model_imports_and_no_other_family(tmp_path):
    """An edit to YOLOv4 leaves a ResNet run's fingerprint (its cache key) as it was; an edit to a
    layer YOLOv4 shares (models/layers.py), or to the runners every run executes, changes it."""
    import shutil

    from replicate.config.hashing import PACKAGE_DIR, model_sources, run_fingerprint

    package = tmp_path / "replicate"
    shutil.copytree(PACKAGE_DIR, package, ignore=shutil.ignore_patterns("__pycache__"))
    assert run_fingerprint("resnet20", package) == run_fingerprint("resnet20")  # contents, not location
    names = {p.relative_to(package).as_posix() for p in model_sources("yolov4", package)}
    assert {"models/yolov4.py", "models/yolov3.py", "models/cspresnext.py", "models/layers.py", "ops/mix.py"} <= names
    assert "models/resnet.py" not in names

    def edited(relative: str) -> dict[str, str]:
        with open(package / relative, "a") as f:
            f.write("\n# edited\n")
        return {m: run_fingerprint(m, package) for m in ("resnet20", "yolov4", "cspresnext50")}

    before = {m: run_fingerprint(m, package) for m in ("resnet20", "yolov4", "cspresnext50")}
    after_yolo = edited("models/yolov4.py")
    assert after_yolo["resnet20"] == before["resnet20"] and after_yolo["cspresnext50"] == before["cspresnext50"]
    assert after_yolo["yolov4"] != before["yolov4"]
    after_layers = edited("models/layers.py")
    assert after_layers["cspresnext50"] != after_yolo["cspresnext50"] and after_layers["yolov4"] != after_yolo["yolov4"]
    assert after_layers["resnet20"] == before["resnet20"]
    after_store = edited("runs/store.py")
    assert all(after_store[m] != after_layers[m] for m in after_store)
