"""Detection experiments through `runs.run`: a detection data config trains a detector with
the detection task, returns test mAP, is cached under its config hash, and `run_all` reports
it; the R-CNN papers' exact rows, speed rows and mAP floors."""

import pytest
import torch

from replicate import runs
from replicate.config import compose, is_detection_data
from replicate.data import fashion_mnist
from replicate.errors import ConfigError, FloorNotMet
from replicate.measure.exact import exact_value
from replicate.measure.timing import time_two_stage
from replicate.report import Report
from replicate.runs import load_detections, load_trained
from tests.fakes import write_idx_fashion_mnist

TINY = ["data.synth.train_images=6", "data.synth.test_images=3", "data.synth.image_size=[64,80]",
        "data.synth.object_size=[14,40]", "model.width_mult=0.0625", "recipe.max_steps=2",
        "recipe.checkpoint_every_steps=2", "recipe.pretrain.steps=2", "recipe.pretrain.batch_size=4"]


@pytest.fixture
def tiny_data(tmp_path, monkeypatch):
    """A tiny Fashion-MNIST (not the system one) from which the generated set is drawn."""
    monkeypatch.setattr(fashion_mnist, "SYSTEM_DIR", tmp_path / "no-system-dataset")
    monkeypatch.setenv("REPLICATE_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("REPLICATE_RUN_DIR", str(tmp_path / "runs"))
    write_idx_fashion_mnist(tmp_path / "data")
    return tmp_path


def test_faster_rcnn_runs_through_experiment_run_and_is_cached(tiny_data, capsys):
    cfg = compose("faster_rcnn", "reduced", ["experiment=faster_rcnn_voc07", *TINY, "recipe.training=joint"])
    assert is_detection_data(cfg.data.name) and cfg.data.name == "synth_detection"  # VOC2007 substituted
    result = runs.run(cfg)
    assert result["cached"] is False and result["steps"] == 2 and result["dataset"] == "synth_detection"
    assert 0.0 <= result["test_map"] <= 100.0 and result["protocol"] == "voc07"
    assert result["test_images"] == 3 and "pretrain_top1_acc" in result and "test_top1_err" not in result
    assert len(load_detections(result)) == 3
    again = runs.run(cfg)
    assert again["cached"] is True and again["test_map"] == result["test_map"]
    results = runs.run_all("faster_rcnn", "reduced", [*TINY, "recipe.training=joint"],
                                 experiments=["faster_rcnn_voc07"])
    assert "test mAP" in capsys.readouterr().out and results["faster_rcnn_voc07"]["cached"]
    # The trained detector reloads from its checkpoint, and its stages can be timed.
    model = load_trained(cfg, result)
    from replicate.runs import test_dataset
    dataset = test_dataset(cfg)
    stored = [dataset.read_image(i) for i in range(2)]
    times = time_two_stage(model, [im.float() / 255 for im in stored], stored)
    assert {"conv", "rpn", "region_rpn", "selective_search", "region_ss"} <= set(times)
    assert all(v >= 0 for v in times.values()) and times["selective_search"] > 0


def _checkpoint_part(path, prefix):
    state = torch.load(path, map_location="cpu", weights_only=False)["state_dict"]
    return {k: v for k, v in state.items() if k.startswith(f"model.{prefix}.")}


def _same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_faster_rcnn_alternating_training_runs_four_fits_and_resumes(tiny_data):
    """Sec. 3.2's 4-step scheme through runs.run: two networks in steps 1-2, then the
    second one's conv layers fixed (steps 3-4) and its RPN fixed in step 4."""
    cfg = compose("faster_rcnn", "reduced", ["experiment=faster_rcnn_voc07", *TINY, "recipe.training=alternating",
                                             "recipe.alternating_steps=[2,3,2,3]"])
    result = runs.run(cfg)
    assert result["stage_steps"] == [2, 3, 2, 3] and result["steps"] == 10 and 0 <= result["test_map"] <= 100
    checkpoints = tiny_data / "runs" / "faster_rcnn" / "faster_rcnn_voc07" / result["config_hash"] / "checkpoints"
    step = {k: checkpoints / f"step{k}" / "last.ckpt" for k in (1, 2, 3, 4)}
    final = checkpoints / "last.ckpt"
    # Step 2 is a separate network: its trunk is not step 1's (both trained from the same start).
    assert not _same(_checkpoint_part(step[1], "trunk"), _checkpoint_part(step[2], "trunk"))
    # The conv layers stay as step 2 left them; the RPN as step 3 left it; the head moves in step 4.
    assert _same(_checkpoint_part(step[2], "trunk"), _checkpoint_part(final, "trunk"))
    assert not _same(_checkpoint_part(step[2], "rpn"), _checkpoint_part(step[3], "rpn"))
    assert _same(_checkpoint_part(step[3], "rpn"), _checkpoint_part(final, "rpn"))
    assert _same(_checkpoint_part(step[2], "head"), _checkpoint_part(step[3], "head"))
    assert not _same(_checkpoint_part(step[3], "head"), _checkpoint_part(final, "head"))
    assert load_trained(cfg, result).train_stage == "joint"
    # Interrupted in step 4: the run resumes there, the earlier steps restored from their checkpoints.
    (checkpoints.parent / "result.json").unlink()
    step[4].unlink()
    again = runs.run(cfg)
    assert again["cached"] is False and again["stage_steps"] == [2, 3, 2, 3]
    assert again["resumed_from_step"] == 2 + 3 + 2


def test_alternating_training_needs_four_step_counts(tiny_data):
    with pytest.raises(ConfigError, match="four positive step counts"):  # refused when composed
        compose("faster_rcnn", "reduced", ["experiment=faster_rcnn_voc07", *TINY, "recipe.training=alternating",
                                           "recipe.alternating_steps=[2,2]"])
    assert not (tiny_data / "runs" / "faster_rcnn").exists()  # nothing half-written
    with pytest.raises(ConfigError, match="joint, alternating"):
        compose("faster_rcnn", "reduced", ["experiment=faster_rcnn_voc07", *TINY, "recipe.training=both"])


def test_fast_rcnn_runs_on_cached_selective_search_proposals(tiny_data):
    cfg = compose("fast_rcnn", "reduced", ["experiment=fast_rcnn_voc07", *TINY])
    result = runs.run(cfg)
    assert result["steps"] == 2 and 0.0 <= result["test_map"] <= 100.0
    assert len(list((tiny_data / "data" / "proposals").glob("*.pt"))) == 2  # train and test splits


def test_exact_counter_counts_anchors_weights_and_svd(isolated_paths):
    report = Report(compose("faster_rcnn", "reduced"))
    frame = report.exact("rpn_sizes", counter=exact_value).set_index("row")
    assert frame.loc["anchors, 1000 x 600 image", "ours"] == 20646
    assert frame.loc["RPN proposal layers (x10^6 weights)", "ours"] == pytest.approx(2.386944)
    assert (frame["status"] == "match").all()
    # Exact rows are checked like Report.exact's (first): they pass, and the check then stops at
    # the planned run this report lacks.
    with pytest.raises(FloorNotMet, match="faster_rcnn_voc07: planned, but the report has no result"):
        report.check()
    report.paper.tables[2].cells[0].paper = 30000
    report.exact("rpn_sizes", counter=exact_value)
    with pytest.raises(Exception, match="anchors"):
        report.check()


def test_speed_table_cells_are_ratios_of_measured_stages(isolated_paths):
    report = Report(compose("faster_rcnn", "reduced"))
    measured = {"conv": 100.0, "rpn": 2.0, "region_rpn": 20.0, "selective_search": 300.0, "region_ss": 10.0}
    frame = report.speed("table4_timing", measured, "test").set_index("row")
    assert frame.loc["proposals: selective search / RPN", "ours"] == pytest.approx(150.0)
    assert frame.loc["total: SS + Fast R-CNN / RPN + Fast R-CNN", "ours"] == pytest.approx(410.0 / 122.0)
    assert set(frame["status"]) == {"reduced"}


def test_speed_table_on_the_full_profile_compares_ratios_and_names_missing_stages(isolated_paths):
    report = Report(compose("faster_rcnn", "full"))
    measured = {"conv": 141.0, "rpn": 10.0, "region_rpn": 47.0, "selective_search": 1510.0, "region_ss": 174.0}
    frame = report.speed("table4_timing", measured, "K40").set_index("row")
    assert (frame["status"] == "match").all()  # the paper's own stage times give its ratios
    measured["selective_search"] = 100.0  # SS / RPN = 10, far from 151
    assert report.speed("table4_timing", measured, "test").set_index("row").loc[
        "proposals: selective search / RPN", "status"] == "off"
    with pytest.raises(Exception, match="region_ss"):
        report.speed("table4_timing", {k: v for k, v in measured.items() if k != "region_ss"}, "test")


def test_map_floors_are_checked_by_the_report(isolated_paths):
    cfg = compose("faster_rcnn", "reduced")
    floor = cfg.paper.floors.reduced.faster_rcnn_voc07
    for test_map, fails in ((100.0 * floor + 1, False), (100.0 * floor - 1, True)):
        report = Report(cfg)
        report.results["faster_rcnn_voc07"] = {"test_map": test_map, "steps": 600}
        if fails:
            with pytest.raises(FloorNotMet, match="faster_rcnn_voc07: test mAP"):
                report.check()
        else:
            report.check()
    report = Report(cfg)
    report.results["faster_rcnn_voc07"] = {"not_run": "missing"}
    with pytest.raises(FloorNotMet, match="faster_rcnn_voc07: planned, but not run: missing"):
        report.check()


def test_classification_runs_are_not_detection():
    assert not is_detection_data(compose("resnet", "reduced", ["experiment=resnet20_cifar10"]).data.name)
    torch.manual_seed(0)


def test_rcnn_runs_its_three_stages_and_scores_without_box_regression(tiny_data):
    cfg = compose("rcnn", "reduced", ["experiment=rcnn_alexnet_voc07", *TINY, "data.train_subset=4"])
    result = runs.run(cfg)
    assert result["steps"] == 2 and "post_hoc_seconds" in result
    assert 0.0 <= result["test_map"] <= 100.0 and 0.0 <= result["test_map_no_bb"] <= 100.0
    model = load_trained(cfg, result)
    assert model.svm_weight.abs().sum() > 0  # the checkpoint carries the SVMs


def test_fast_rcnn_and_rcnn_stages_are_timed():
    from replicate.measure.timing import time_fast_rcnn, time_rcnn_vs_fast
    from replicate.models import build

    torch.manual_seed(0)
    fast = build("fast_rcnn_vgg16", num_classes=3, width_mult=0.0625)
    rcnn = build("rcnn_vgg16", num_classes=3, width_mult=0.0625, warp_size=32)
    images = [torch.rand(3, 64, 80)]
    boxes = [torch.tensor([[0.0, 0.0, 30.0, 30.0], [10.0, 5.0, 60.0, 50.0]])]
    fast_times = time_fast_rcnn(fast, images, boxes)
    assert set(fast_times) == {"conv", "region", "fc", "region_svd"} and all(v > 0 for v in fast_times.values())
    both = time_rcnn_vs_fast(rcnn, fast, images, boxes)
    assert set(both) == {"rcnn", "fast_rcnn"} and all(v > 0 for v in both.values())


def test_pretraining_can_leave_the_trunk_at_unit_feature_scale(tiny_data):
    """`unit_features`: the last conv layer divided by the feature map's RMS after pre-training, so
    the detector's new fc layers see unit-scale inputs (a ReLU stack: the same features, rescaled)."""
    from replicate.runs.pretrain import pretrain_trunk
    from replicate.models import build

    spec = {"steps": 3, "lr": 0.001, "batch_size": 4, "image_size": 64}
    plain = build("fast_rcnn_vgg16", num_classes=3, width_mult=0.0625).trunk
    scaled = build("fast_rcnn_vgg16", num_classes=3, width_mult=0.0625).trunk
    scaled.load_state_dict(plain.state_dict())
    stats = pretrain_trunk(plain, spec, tiny_data / "data")
    unit = pretrain_trunk(scaled, {**spec, "unit_features": True}, tiny_data / "data")
    assert "pretrain_feature_rms" not in stats and unit["pretrain_feature_rms"] > 0
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        a, b = plain.eval()(x), scaled.eval()(x)
    scale = float((a.flatten() @ b.flatten()) / (a.flatten() @ a.flatten()))
    assert torch.allclose(a * scale, b, rtol=1e-4, atol=1e-6)  # the same features, rescaled
    assert scale == pytest.approx(1 / unit["pretrain_feature_rms"], rel=0.02)  # (the RMS is stored rounded)


def test_a_detector_killed_mid_epoch_resumes_to_the_uninterrupted_numbers(tiny_data):
    """YOLOv2 (augmentation, multi-scale sizes, the global random streams) with 6 batches an
    epoch and a checkpoint every 4 steps: killed at step 7, it resumes from step 4, mid-epoch."""
    from tests.runs.test_runs import StopAt

    overrides = ["experiment=yolov2_voc0712", "data.synth.train_images=12", "data.synth.test_images=3",
                 "data.synth.image_size=[64,80]", "data.synth.object_size=[14,40]", "model.width_mult=0.0625",
                 "recipe.batch_size=2", "recipe.max_steps=10", "recipe.checkpoint_every_steps=4",
                 "recipe.pretrain.steps=2", "recipe.pretrain.batch_size=4"]
    whole = runs.run(compose("yolov2", "reduced", [*overrides, f"paths.run_dir={tiny_data / 'whole'}"]))
    cut = compose("yolov2", "reduced", [*overrides, f"paths.run_dir={tiny_data / 'cut'}"])
    with pytest.raises(RuntimeError, match="simulated interruption"):
        runs.run(cut, callbacks=[StopAt(7)])
    resumed = runs.run(cut)
    assert resumed["resumed_from_step"] == 4 and resumed["steps"] == whole["steps"] == 10
    assert resumed["test_map"] == whole["test_map"]
    final = lambda result: torch.load(f"{result['run_dir']}/checkpoints/last.ckpt", map_location="cpu",  # noqa: E731
                                      weights_only=False)["state_dict"]
    assert _same(final(whole), final(resumed))


def test_every_detection_experiment_builds_a_declared_detector(monkeypatch):
    """Each detection experiment's network declares its capabilities (models.protocols.Detector):
    the part its paper pre-trains resolves to a submodule; a classifier on a detection set is refused."""
    from replicate import models
    from replicate.models.protocols import Detector
    from replicate.runs import build_detector
    from replicate.runs.pretrain import pretrained_part

    built = set()
    for paper in ("rcnn", "fast_rcnn", "faster_rcnn", "yolov1", "yolov2", "yolov3", "yolov4"):
        cfg0 = compose(paper, "reduced")
        for name in cfg0.paper.plan.reduced:
            cfg = compose(paper, "reduced", [f"experiment={name}"])
            if not is_detection_data(cfg.data.name) or cfg.model.name in built:
                continue
            with torch.device("meta"):
                model = build_detector(cfg)
            assert isinstance(model, Detector) and isinstance(pretrained_part(model), torch.nn.Module), cfg.model.name
            built.add(cfg.model.name)
    assert {"rcnn_alexnet", "fast_rcnn_vgg16", "faster_rcnn_vgg16", "yolov1", "yolov2", "yolov3", "yolov4"} <= built
    classifier = torch.nn.Linear(4, 2)
    with pytest.raises(ConfigError, match="declares no pre-trained part"):
        pretrained_part(classifier)
    monkeypatch.setattr(models, "build", lambda *args, **kwargs: classifier)
    with pytest.raises(ConfigError, match="not a detector"):
        build_detector(compose("faster_rcnn", "reduced", ["experiment=faster_rcnn_voc07"]))
