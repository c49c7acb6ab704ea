"""The speed tables measured on a trained run (`report.speed`): timed, printed and regenerated
as ratios, or `not_run` with the reason when the run is missing."""

import ast

import pytest

from replicate.config import compose
from replicate.report import Report
from replicate.report.speed import (missing_reason, show_backbone_fps, show_detector_fps, show_detectors_fps,
                                    show_fast_rcnn_timing)
from tests.report.detection_runs import untrained_run

pytestmark = pytest.mark.usefixtures("one_thread")


def test_missing_reason_names_the_run_or_its_not_run_reason():
    assert missing_reason(None, "yolov2_voc0712") == "yolov2_voc0712 did not run"
    assert missing_reason({}, "yolov2_voc0712") == "yolov2_voc0712 did not run"
    assert missing_reason({"not_run": "VOC not found"}, "yolov2_voc0712") == "VOC not found"
    assert missing_reason({"test_map": 51.0}, "yolov2_voc0712") is None


def test_a_speed_table_without_its_run_is_not_run_with_the_reason(isolated_paths):
    report = Report(compose("yolov2", "reduced"))
    cfg = compose("yolov2", "reduced", ["experiment=yolov2_voc0712"])
    show_detector_fps(report, "table3_speed", cfg, {"not_run": "VOC2007 not found"})
    frame = report.frames["table3_speed"]
    assert set(frame["status"]) == {"not_run"} and frame["note"].str.contains("VOC2007 not found").all()
    show_detector_fps(report, "table3_speed", cfg, None)
    assert report.frames["table3_speed"]["note"].str.contains("yolov2_voc0712 did not run").all()


def test_yolo_frames_per_second_by_input_size(tiny_detection, capsys):
    cfg, result = untrained_run("yolov2", "yolov2_voc0712", tiny_detection / "run")
    report = Report(compose("yolov2", "reduced"))
    shown = show_detector_fps(report, "table3_speed", cfg, result)
    frame = report.frames["table3_speed"]
    assert set(frame["status"]) == {"reduced"} and (frame["ours"] > 0).all()
    assert shown.data.equals(report.formatted("table3_speed"))
    printed = capsys.readouterr().out
    assert all(f"'fps_{size}'" in printed for size in (288, 352, 416, 480, 544))  # the paper's sizes


def test_yolo_against_fast_yolo_each_at_its_input_size(tiny_detection, capsys):
    cfgs, results = {}, {}
    for key, name in (("yolo", "yolov1_voc0712"), ("fast_yolo", "fast_yolo_voc0712")):
        cfgs[key], results[name] = untrained_run("yolov1", name, tiny_detection / name)
    report = Report(compose("yolov1", "reduced"))
    show_detectors_fps(report, "table1_speed", cfgs, {"yolov1_voc0712": results["yolov1_voc0712"]})
    assert report.frames["table1_speed"]["note"].str.contains("fast_yolo_voc0712 did not run").all()
    show_detectors_fps(report, "table1_speed", cfgs, results)
    frame = report.frames["table1_speed"]
    assert set(frame["status"]) == {"reduced"} and (frame["ours"] > 0).all()
    assert "'fps_yolo'" in capsys.readouterr().out


def test_fast_rcnn_stages_on_selective_search_proposals(tiny_detection, capsys):
    cfg, result = untrained_run("fast_rcnn", "fast_rcnn_voc07", tiny_detection / "run")
    report = Report(compose("fast_rcnn", "reduced"))
    show_fast_rcnn_timing(report, "table4_timing", cfg, result)
    frame = report.frames["table4_timing"]
    assert set(frame["status"]) == {"reduced"} and (frame["ours"] > 0).all()
    printed = capsys.readouterr().out
    assert all(f"'{stage}'" in printed for stage in ("conv", "region", "fc", "region_svd"))


def test_backbones_in_images_and_operations_per_second(isolated_paths, capsys):
    report = Report(compose("yolov3", "reduced"))
    backbones = {"darknet19": {}, "darknet53": {"classifier_before_pool": True}, "resnet101": {}, "resnet152": {}}
    show_backbone_fps(report, "table2_speed", backbones, input_size=32, repeats=1)
    assert set(report.frames["table2_speed"]["status"]) == {"reduced"}
    measured = ast.literal_eval(capsys.readouterr().out)  # the printed measurements
    gops = report.complexity("darknet53", (3, 32, 32), classifier_before_pool=True).gops
    assert measured["gops_per_s_darknet53"] == pytest.approx(gops * measured["fps_darknet53"], rel=0.01, abs=0.01)
    assert set(measured) == {f"{kind}_{name}" for kind in ("fps", "gops_per_s") for name in backbones}


def test_full_profile_backbones_are_not_timed_on_a_cpu(isolated_paths, monkeypatch, capsys):
    """The full profile's timings are the paper's GPU's: without one they are `not_run`, and
    `profile.allow_cpu=true` times them here all the same."""
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    backbones = {"darknet19": {}, "darknet53": {"classifier_before_pool": True}, "resnet101": {}, "resnet152": {}}
    report = Report(compose("yolov3", "full"))
    show_backbone_fps(report, "table2_speed", backbones, input_size=32, repeats=1)
    frame = report.frames["table2_speed"]
    assert set(frame["status"]) == {"not_run"} and frame["note"].str.contains("allow_cpu=true").all()
    assert capsys.readouterr().out == ""  # nothing was timed

    forced = Report(compose("yolov3", "full", ["profile.allow_cpu=true"]))
    show_backbone_fps(forced, "table2_speed", backbones, input_size=32, repeats=1)
    assert "'fps_darknet53'" in capsys.readouterr().out
