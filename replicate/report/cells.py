"""The cells of a paper-vs-ours table: their columns, tolerances, statuses and notes, and how a
run is scored against its floor.

Every compared cell becomes one row of a long-form table with the columns `COLUMNS`; `status`
is `match` (within tolerance), `off` (outside it), `explained` (an exact cell outside it whose
`explained: {reason, delta, bound}` entry in the paper's conf says why and by how much: the
reason goes to `note`, and the cell is `explained` only while its gap stays within `bound` of
the expected `delta`, else `off`), `reduced` (measured on the reduced profile, not comparable to
the paper) or `not_run` (with the reason in `note`). The paper's numbers and tolerances come from
`conf/paper/<id>.yaml`.

An exact cell's tolerance is the printed rounding (`tolerance: rounding`: half a unit of the last
printed digit) or tighter; a wider one must quote the text's own approximation
(`approximation: "about 20,000"`), since a tolerance fitted to our gap would call a difference
a reproduction.
"""

from __future__ import annotations

import math
import operator
import statistics
from collections.abc import Mapping, Sequence

from ..errors import ConfigError


COLUMNS = ["table", "row", "metric", "paper", "ours", "unit", "delta", "tolerance", "status", "source", "note"]
FLOOR_COLUMNS = ["run", "metric", "ours", "untrained", "floor", "target", "steps", "status"]
STATUSES = ("match", "off", "explained", "reduced", "not_run")
OPS = {">": operator.gt, ">=": operator.ge, "<": operator.lt, "<=": operator.le}


# The status column's colours (Bootstrap's pale alert colours): green, amber, red, blue, grey.
STATUS_COLOURS = {"match": "#d4edda", "explained": "#fff3cd", "off": "#f8d7da", "reduced": "#d1ecf1",
                  "not_run": "#e2e3e5"}
FLOOR_COLOURS = {"pass": "#d4edda", "below target": "#fff3cd", "below floor": "#f8d7da", "missing": "#f8d7da",
                 "not_run": "#e2e3e5"}


def rounding_tolerance(value: float) -> float:
    """Half a unit of the last digit printed in `value` (0.27 -> 0.005, 19.4 -> 0.05)."""
    text = repr(float(value))
    decimals = len(text.split(".")[1].rstrip("0")) if "." in text else 0
    return 0.5 * 10.0 ** (-decimals)


def cell_tolerance(spec: Mapping, cell: Mapping) -> float:
    """The cell's tolerance, else its table's, else the printed rounding."""
    tol = cell.get("tolerance", spec.get("tolerance", "rounding"))
    if tol == "rounding":
        return rounding_tolerance(cell["paper"])
    if not isinstance(tol, (int, float)) or isinstance(tol, bool):
        raise ConfigError(f"table {spec['id']}: tolerance must be a number or 'rounding', not {tol!r}")
    return float(tol)


def exact_tolerance(spec: Mapping, cell: Mapping) -> float:
    """An exact cell's tolerance: at most the printed rounding, unless the cell (or its table)
    quotes the text's own approximation (`approximation: "~25 M"`)."""
    tol = cell_tolerance(spec, cell)
    rounding = rounding_tolerance(cell["paper"])
    if tol > rounding + 1e-12 and not (cell.get("approximation") or spec.get("approximation")):
        raise ConfigError(
            f"table {spec['id']}, row {cell['row']!r}: tolerance {tol:g} is wider than the printed rounding "
            f"{rounding:g} of {cell['paper']}. Use tolerance: rounding; quote the text's own approximation as "
            "approximation: \"...\" where the paper gives one; a wider gap is explained: {reason, delta, bound}.")
    return tol


def explanation(spec: Mapping, cell: Mapping) -> dict | None:
    """A cell's `explained` entry, checked: {reason: str, delta: expected ours - paper, bound: how far
    the gap may stray from `delta` (default: half a unit of the last digit printed in `delta`)}."""
    entry = cell.get("explained")
    if entry is None:
        return None
    if not isinstance(entry, Mapping) or not entry.get("reason") or not isinstance(entry.get("delta"), (int, float)):
        raise ConfigError(f"table {spec['id']}, row {cell['row']!r}: explained must be {{reason: <why ours differs>, "
                          f"delta: <the expected difference ours - paper>, bound: <optional>}}, not {entry!r}.")
    bound = entry.get("bound", rounding_tolerance(entry["delta"]))
    return {"reason": str(entry["reason"]), "delta": float(entry["delta"]), "bound": float(bound)}


def exact_status(spec: Mapping, cell: Mapping, delta: float, tol: float) -> dict[str, str]:
    """`match` within tolerance; outside it `explained` when the cell says why and its gap is the
    expected one (within the bound), else `off` (with the broken expectation in the note)."""
    if abs(delta) <= tol + 1e-9:
        return {"status": "match"}
    why = explanation(spec, cell)
    if why is None:
        return {"status": "off"}
    expected = f"expected delta {why['delta']:g} ± {why['bound']:g}"
    if abs(delta - why["delta"]) <= why["bound"] + 1e-9:
        return {"status": "explained", "note": join_notes(cell.get("note"), f"{why['reason']} ({expected})")}
    return {"status": "off", "note": join_notes(cell.get("note"), f"{expected}, not met: {why['reason']}")}


def floor_score(run: Mapping) -> tuple[str, float]:
    """What a run's floor is checked against: test mAP for a detector (AP@0.5 under the COCO
    protocol), test top-1 accuracy for a classifier (fractions of 1, as `floors` in
    conf/paper/<id>.yaml); NaN where the result lacks it."""
    def score(key: str) -> float:
        value = run.get(key)
        return float(value) if isinstance(value, (int, float)) else float("nan")

    if "test_map_50" in run:  # COCO protocol (YOLOv3, YOLOv4): AP at IoU 0.5, the VOC07 threshold
        return "test AP@0.5", score("test_map_50") / 100
    if "test_map" in run:
        return "test mAP", score("test_map") / 100
    return "test accuracy", (100 - score("test_top1_err")) / 100


CHANCE_MARGIN = 5  # a floor stands at least this many times above the untrained network's score


def untrained_score(run: Mapping) -> float | None:
    """The untrained network's score on the floor's metric (fraction of 1), where the run measured
    it (detectors: `runs.detection.score_untrained`)."""
    key = "untrained_map_50" if "test_map_50" in run else "untrained_map"
    value = run.get(key)
    return float(value) / 100 if isinstance(value, (int, float)) else None


def run_columns(runs: Mapping[str, Mapping]) -> tuple[str, ...]:
    """The result fields shown per run: detection metrics for detectors, errors for classifiers
    (both where a paper has both, as YOLOv4's classifier ablation beside its detector)."""
    detection = ("test_map", "test_map_50", "test_map_75", "untrained_map", "untrained_map_50")
    classification = ("test_top1_err", "test_top5_err", "train_err_final")
    has_map = any("test_map" in r for r in runs.values())
    has_err = any("test_top1_err" in r for r in runs.values())
    return ("dataset", "steps", *(detection if has_map else ()), *(classification if has_err or not has_map else ()))


def mean_std(values: Sequence[float]) -> tuple[float, float] | None:
    """Mean and sample standard deviation (n - 1), as the papers print theirs over runs (ResNet
    Table 6: "6.61±0.16"); None for fewer than two values."""
    if len(values) < 2:
        return None
    return statistics.fmean(values), statistics.stdev(values)


def seed_spread(run: Mapping, quantity: str) -> tuple[float, float, list[int]] | None:
    """`mean_std` of `quantity` over a run's seeds (`seed_runs`, `runs.run_all`), and the seeds;
    None for a single run or where a seed lacks the quantity."""
    seeds = run.get("seed_runs") or {}
    values = [r.get(quantity) for r in seeds.values()]
    spread = mean_std(values) if all(isinstance(v, (int, float)) for v in values) else None
    return None if spread is None else (*spread, [int(s) for s in seeds])


def join_notes(*parts) -> str:
    return "; ".join(p for p in parts if p)


def percent(fraction: float) -> float:
    """A fraction as a percentage to two decimals, as the runs print their scores (0.55 -> 55.0)."""
    return round(100 * float(fraction), 2)


def isnan(v) -> bool:
    return isinstance(v, float) and math.isnan(v)


def fmt(v) -> str:
    if v is None or isnan(v):
        return ""
    return f"{v:.4g}" if isinstance(v, float) else str(v)
