"""The papers' speed tables (`kind: speed`), measured on the hardware present: each function times
what its table needs (`measure.timing`), prints the measurements, regenerates the table with
`Report.show` (ratios of the measurements against the paper's) and returns its view. A table
whose trained run is missing or did not run is `not_run`, with the reason.

Trained detectors: YOLO's frames per second by input size (YOLOv2 Table 3, YOLOv3 Fig. 1, YOLOv4
Table 10), YOLO against Fast YOLO (YOLOv1 Table 1), Fast R-CNN's test stages (Fast R-CNN Table 4).
Untrained classifiers: YOLOv3 Table 2's backbones."""

from __future__ import annotations

from collections.abc import Mapping

from omegaconf import DictConfig

from .. import models, runs
from ..data.detection import proposals
from ..guard import full_profile_on_cpu
from ..measure import timing
from .report import Report

TIMED_IMAGES = 10


def missing_reason(result: Mapping | None, experiment: str) -> str | None:
    """Why a table cannot be timed on `experiment`'s run: its `not_run` reason, or that it did not
    run (no result); None when the run finished."""
    if not result:
        return f"{experiment} did not run"
    return result.get("not_run")


def show_measured(report: Report, table_id: str, measured: dict[str, float], digits: int):
    """Print the measurements (rounded to `digits`) and regenerate the speed table from them."""
    print({k: round(v, digits) for k, v in measured.items()})
    return report.show(table_id, measured, hardware=timing.hardware())


def show_detector_fps(report: Report, table_id: str, cfg: DictConfig, result: Mapping | None):
    """YOLOv2 Table 3, YOLOv3 Fig. 1, YOLOv4 Table 10: the trained detector of `cfg`'s experiment
    (`result`, its finished run) in frames per second at each of the recipe's test input sizes,
    on the first test images, one at a time (`timing.detector_fps`)."""
    reason = missing_reason(result, cfg.experiment)
    if reason is not None:
        report.not_run(table_id, reason)
        return report.view(table_id)
    inputs, _, _ = timing.timing_images(cfg, count=TIMED_IMAGES)
    fps = timing.detector_fps(runs.load_trained(cfg, result), inputs, runs.test_input_sizes(cfg))
    return show_measured(report, table_id, fps, 1)


def show_detectors_fps(report: Report, table_id: str, cfgs: Mapping[str, DictConfig], results: Mapping[str, dict]):
    """YOLOv1 Table 1's speed column: each detector (`cfgs`, keyed by the name its measurement
    takes, `fps_<key>`) in frames per second at its own input size, on its first test images."""
    for cfg in cfgs.values():
        reason = missing_reason(results.get(cfg.experiment), cfg.experiment)
        if reason is not None:
            report.not_run(table_id, reason)
            return report.view(table_id)
    fps = {}
    for key, cfg in cfgs.items():
        inputs, _, _ = timing.timing_images(cfg, count=TIMED_IMAGES)
        size = cfg.model.input_size
        model = runs.load_trained(cfg, results[cfg.experiment])
        fps[f"fps_{key}"] = timing.detector_fps(model, inputs, [size])[f"fps_{size}"]
    return show_measured(report, table_id, fps, 1)


def show_fast_rcnn_timing(report: Report, table_id: str, cfg: DictConfig, result: Mapping | None):
    """Fast R-CNN Table 4: the trained detector's test stages in milliseconds per image
    (`timing.time_fast_rcnn`), on the first test images with their selective search proposals
    (`model.proposals`' mode and count, computed on the stored image and scaled to the input)."""
    reason = missing_reason(result, cfg.experiment)
    if reason is not None:
        report.not_run(table_id, reason)
        return report.view(table_id)
    inputs, stored, _ = timing.timing_images(cfg, count=TIMED_IMAGES)
    mode, most = cfg.model.proposals.mode, cfg.model.proposals.max_proposals
    boxes = [proposals.selective_search(image, mode, most) for image in stored]
    scaled = [b * (x.shape[-1] / s.shape[-1]) for b, x, s in zip(boxes, inputs, stored)]
    return show_measured(report, table_id, timing.time_fast_rcnn(runs.load_trained(cfg, result), inputs, scaled), 2)


def show_backbone_fps(report: Report, table_id: str, backbones: Mapping[str, dict], input_size: int = 256,
                      repeats: int = 2):
    """YOLOv3 Table 2: each classifier (registry name and its kwargs), untrained at its full width,
    in images per second at `input_size` (`timing.classifier_fps`), and its operations per second
    (`gops_per_s_<name>`: Darknet's count, two per multiply-add, times images per second). On the
    full profile a machine without a GPU does not time them (`guard.full_profile_on_cpu`): the
    reduced profile's table holds this CPU's ratios."""
    if full_profile_on_cpu(report.cfg):
        report.not_run(table_id, "the full profile times the backbones on a GPU, as the paper did on a Titan X, and "
                                 "this machine has none: the reduced profile's table has this CPU's ratios "
                                 "(profile.allow_cpu=true times them here)")
        return report.view(table_id)
    built = {name: models.build(name, **kwargs) for name, kwargs in backbones.items()}
    speeds = timing.classifier_fps(built, input_size, repeats=repeats)
    for name, kwargs in backbones.items():
        gops = report.complexity(name, (3, input_size, input_size), **kwargs).gops
        speeds[f"gops_per_s_{name}"] = gops * speeds[f"fps_{name}"]
    return show_measured(report, table_id, speeds, 2)
