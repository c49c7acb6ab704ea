"""conf/paper/<id>.yaml's schema: every paper follows it, a bad key is refused at compose time with
its path, and conf/README.md is the reference generated from it."""

import copy

import pytest
import yaml

from replicate.config import PROJECT_ROOT, compose, papers
from replicate.config.schema import README, check_paper, reference
from replicate.errors import ConfigError


def paper(name="resnet"):
    return yaml.safe_load((PROJECT_ROOT / "conf" / "paper" / f"{name}.yaml").read_text())


def test_every_paper_follows_the_schema():
    for name in papers():
        check_paper(paper(name), name)


@pytest.mark.parametrize("change, message", [
    (lambda p: p.update(runs=p["plan"]), "unknown key 'runs'"),
    (lambda p: p.pop("floors"), "missing key 'floors'"),
    (lambda p: p.update(year="2016"), "year: '2016' is not a int"),
    (lambda p: p["tables"][0].update(kind="exactly"), r"tables\[0\] \(table1\).kind: 'exactly'"),
    (lambda p: p["tables"][1].update(tolerence=0.1), "unknown key 'tolerence'.*tolerance"),
    (lambda p: p["tables"][1].pop("source"), "missing key 'source'"),
    (lambda p: p["tables"].append(copy.deepcopy(p["tables"][0])), "a second table with id 'table1'"),
    (lambda p: p["plan"]["reduced"].append("resnet21_cifar10"), "plan.reduced names.*resnet20_cifar10"),
    (lambda p: p.update(id="resnet2"), "differs from the file's name"),
])
def test_a_key_outside_the_schema_is_named(change, message):
    spec = paper()
    change(spec)
    with pytest.raises(ConfigError, match=message):
        check_paper(spec, "resnet")


def test_compose_checks_the_paper_file(tmp_path, monkeypatch):
    from replicate import config

    conf = tmp_path / "conf"
    import shutil

    shutil.copytree(PROJECT_ROOT / "conf", conf)
    spec = paper()
    spec["tables"][0]["tolerence"] = 0.1
    (conf / "paper" / "resnet.yaml").write_text(yaml.safe_dump(spec))
    monkeypatch.setattr(config, "CONF_DIR", conf)
    monkeypatch.setenv("REPLICATE_CACHE_DIR", str(tmp_path / "cache"))
    with pytest.raises(ConfigError, match="conf/paper/resnet.yaml: tables.0. .table1.: unknown key 'tolerence'"):
        compose("resnet", "reduced")


def test_the_reference_in_conf_readme_is_current():
    assert README.read_text() == reference(), "run `python -m replicate schema` and commit conf/README.md"
    for key in ("experiments", "plan", "floors", "tables", "tolerance", "not_run_because", "presets"):
        assert f"`{key}`" in README.read_text()


def test_a_preset_stands_for_its_list_in_place(tmp_path, monkeypatch):
    """YOLOv4's experiments share `preset=yolo_coco` (COCO read as YOLO reads it); an unknown
    preset is refused with the ones the paper defines."""
    import shutil

    from replicate import config

    cfg = compose("yolov4", "full", ["experiment=csprx50_coco"])
    assert (cfg.data.name, cfg.data.normalize, cfg.data.min_size, cfg.data.max_size) == ("coco", "none", None, None)
    assert cfg.model.backbone == "cspresnext50"
    reduced = compose("yolov4", "reduced", ["experiment=csprx50_coco"])
    assert reduced.data.name == "synth_detection" and reduced.data.normalize == "none"  # substituted, then set

    conf = tmp_path / "conf"
    shutil.copytree(PROJECT_ROOT / "conf", conf)
    spec = paper("yolov4")
    spec["experiments"]["csprx50_coco"][0] = "preset=yolo_cocoa"
    (conf / "paper" / "yolov4.yaml").write_text(yaml.safe_dump(spec))
    monkeypatch.setattr(config, "CONF_DIR", conf)
    monkeypatch.setenv("REPLICATE_CACHE_DIR", str(tmp_path / "cache"))
    with pytest.raises(ConfigError, match="preset=yolo_cocoa.*yolo_coco"):
        compose("yolov4", "full", ["experiment=csprx50_coco"])
