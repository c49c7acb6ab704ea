"""YOLOv2 Table 1 measured on the training set in use (`report.priors`)."""

import pytest

from replicate.config import compose
from replicate.errors import DatasetMissingError
from replicate.ops import kmeans_anchors
from replicate.report import Report, priors
from replicate.runs import train_dataset
from tests.report.detection_runs import TINY_DETECTION


def test_dimension_clusters_of_the_training_boxes_make_table1(tiny_detection):
    cfg = compose("yolov2", "reduced", ["experiment=yolov2_voc0712", *TINY_DETECTION])
    clusters = priors.dimension_clusters(cfg)
    assert clusters.missing is None and clusters.boxes == len(kmeans_anchors.box_sizes(train_dataset(cfg)))
    assert [(r["row"], r["num_priors"]) for r in clusters.rows] == list(priors.CELLS)
    assert all(0 < r["avg_iou"] <= 100 for r in clusters.rows)
    summary = priors.clusters_summary(clusters, cfg).splitlines()
    assert summary[0].startswith("Cluster SSE, 5: ") and summary[0].endswith("% (paper 58.7)")
    assert summary[-1] == f"model.anchors: {list(cfg.model.anchors)}"
    report = Report(compose("yolov2", "reduced"))
    priors.show_dimension_clusters(report, "table1_priors", clusters, cfg)
    frame = report.frames["table1_priors"].set_index("row")
    assert set(frame["status"]) == {"reduced"} and not report.results  # statistics of the data, not runs
    assert frame["note"].str.contains(f"synth_detection: {clusters.boxes} training boxes").all()
    by_cell = {priors.CELLS[(r["row"], r["num_priors"])]: r["avg_iou"] for r in clusters.rows}
    assert sorted(frame["ours"]) == pytest.approx(sorted(by_cell.values()))


def test_without_the_data_set_table1_is_not_run_with_its_error(isolated_paths, monkeypatch):
    def missing(cfg):
        raise DatasetMissingError("VOC2007 not found: download it into data/voc")

    monkeypatch.setattr(priors.runs, "train_dataset", missing)
    cfg = compose("yolov2", "full", ["experiment=yolov2_voc0712"])
    clusters = priors.dimension_clusters(cfg)
    assert clusters.missing.startswith("VOC2007 not found")
    assert priors.clusters_summary(clusters, cfg) == clusters.missing
    report = Report(compose("yolov2", "full"))
    priors.show_dimension_clusters(report, "table1_priors", clusters, cfg)
    frame = report.frames["table1_priors"]
    assert set(frame["status"]) == {"not_run"} and frame["note"].str.contains("VOC2007 not found").all()
