"""Reported-vs-measured tables, and the files under `reports/<paper>/<profile>/`.

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

import dataclasses
import hashlib
import json
import math
import operator
import os
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path

import matplotlib
import pandas as pd
import torch
from omegaconf import DictConfig, OmegaConf

from . import models
from .complexity import QUANTITIES, Complexity, count
from .config import code_fingerprint
from .errors import ConfigError, CorruptFileError, ExactTableMismatch, FloorNotMet

COLUMNS = ["table", "row", "metric", "paper", "ours", "unit", "delta", "tolerance", "status", "source", "note"]
FLOOR_COLUMNS = ["run", "metric", "ours", "untrained", "floor", "target", "steps", "status"]
STATUSES = ("match", "off", "explained", "reduced", "not_run")
_OPS = {">": operator.gt, ">=": operator.ge, "<": operator.lt, "<=": operator.le}


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


def _exact_tolerance(spec: Mapping, cell: Mapping) -> float:
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


def _exact_status(spec: Mapping, cell: Mapping, delta: float, tol: float) -> dict[str, str]:
    """`match` within tolerance; outside it `explained` when the cell says why and its gap is the
    expected one (within the bound), else `off` (with the broken expectation in the note)."""
    if abs(delta) <= tol + 1e-9:
        return {"status": "match"}
    why = explanation(spec, cell)
    if why is None:
        return {"status": "off"}
    expected = f"expected delta {why['delta']:g} ± {why['bound']:g}"
    if abs(delta - why["delta"]) <= why["bound"] + 1e-9:
        return {"status": "explained", "note": _join(cell.get("note"), f"{why['reason']} ({expected})")}
    return {"status": "off", "note": _join(cell.get("note"), f"{expected}, not met: {why['reason']}")}

# The status column's colours (Bootstrap's pale alert colours): green, amber, red, blue, grey.
STATUS_COLOURS = {"match": "#d4edda", "explained": "#fff3cd", "off": "#f8d7da", "reduced": "#d1ecf1",
                  "not_run": "#e2e3e5"}


class Report:
    """Collects one paper's regenerated tables, plots and checks for one profile."""

    def __init__(self, cfg: DictConfig):
        self.cfg = cfg
        self.paper = cfg.paper
        self.profile = cfg.profile.name
        self.frames: dict[str, pd.DataFrame] = {}
        self.extra_columns: dict[str, pd.DataFrame] = {}
        self.figures: dict[str, tuple[matplotlib.figure.Figure, pd.DataFrame | None]] = {}
        self.runs: dict[str, dict] = {}
        self.floor_frame: pd.DataFrame | None = None
        self._counted: dict[tuple, Complexity] = {}
        self._code: str | None = None
        self.overrides = list(cfg.get("overrides") or [])
        if self.overrides:  # the notebook's first output says that this is not the standard report
            print(f"Not the standard {self.profile} report: made with the overrides {self.overrides}.")

    # -- table specs ----------------------------------------------------------------------------
    def spec(self, table_id: str, section: str = "tables") -> dict:
        for spec in self.paper.get(section) or []:
            if spec.id == table_id:
                return OmegaConf.to_container(spec, resolve=True)
        known = [s.id for s in self.paper.get(section) or []]
        raise ConfigError(f"paper {self.paper.id!r} has no {section[:-1]} {table_id!r}. Known: {', '.join(known)}.")

    def cell_row(self, spec: dict, cell: dict, **values) -> dict:
        return {"table": spec["id"], "row": cell["row"], "metric": cell.get("metric", spec.get("metric")),
                "paper": cell.get("paper"), "unit": cell.get("unit", spec.get("unit", "")),
                "source": cell.get("source", spec["source"]), "note": cell.get("note", ""), **values}

    def store(self, table_id: str, rows: list[dict]) -> pd.DataFrame:
        frame = pd.DataFrame(rows).reindex(columns=COLUMNS)
        self.frames[table_id] = frame
        return frame

    # -- exact tables: computed from the model definitions ------------------------------------------
    def complexity(self, name: str, input_size, module: str | None = None, **kwargs) -> Complexity:
        """Counted once per (model, input, module, kwargs) and kept: no model is built twice for a report.

        Models are built on the meta device: counting needs shapes, not weights.
        """
        key = (name, tuple(input_size), module, tuple(sorted(kwargs.items())))
        if key not in self._counted:
            self._counted[key] = self._stored_count(name, tuple(input_size), module, kwargs)
        return self._counted[key]

    def _stored_count(self, name: str, input_size: tuple, module: str | None, kwargs: dict) -> Complexity:
        """A count kept on disk (`paths.count_dir`, runs/counts/) under the model, its kwargs, the input size and
        the counting and model code: the reduced and full executions of a notebook, and every later
        one, count each network once (ResNet-1202 takes half a minute)."""
        if self._code is None:
            self._code = code_fingerprint(("models", "ops", "complexity.py")) + torch.__version__
        blob = json.dumps([name, list(input_size), module, sorted(kwargs.items()), self._code], default=str)
        path = Path(self.cfg.paths.count_dir) / f"{hashlib.sha256(blob.encode()).hexdigest()[:16]}.json"
        try:
            return Complexity(**json.loads(path.read_text()))
        except (OSError, ValueError, TypeError):  # not counted yet, or a damaged file: count again
            pass
        with torch.device("meta"):
            model = models.build(name, **kwargs)
        counted = count(model, input_size, module=module)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps(dataclasses.asdict(counted)))
            os.replace(tmp, path)
        except OSError:  # a read-only run folder: counting again next time is all it costs
            pass
        return counted

    def exact(self, table_id: str, counter: Callable[[Mapping, Mapping], float] | None = None) -> pd.DataFrame:
        """Cells computed from the model definitions. A cell may override the table's
        `model_kwargs`, `input_size` and `quantity`, and may name a `module` to count that
        submodule alone (per-layer tables).

        `counter(cell, spec) -> value` replaces the generic count for quantities it does not
        know (e.g. the anchors of an image, the weights of a layer after truncated SVD:
        `replicate.experiment_detection.exact_value`); the comparison and `check` are the same."""
        spec = self.spec(table_id)
        if spec["kind"] != "exact":
            raise ConfigError(f"table {table_id} is {spec['kind']!r}, not 'exact'")
        rows, params = [], []
        for cell in spec["cells"]:
            if counter is not None:
                ours = float(counter(cell, spec))
                tol = _exact_tolerance(spec, cell)
                delta = ours - cell["paper"]
                rows.append(self.cell_row(spec, cell, ours=ours, delta=delta, tolerance=tol,
                                      **_exact_status(spec, cell, delta, tol)))
                continue
            kwargs = {**spec.get("model_kwargs", {}), **cell.get("model_kwargs", {})}
            input_size = cell.get("input_size", spec.get("input_size"))
            quantity = cell.get("quantity", spec.get("quantity"))
            if quantity not in QUANTITIES:
                raise ConfigError(f"table {table_id}, row {cell['row']!r}: quantity {quantity!r} is not one of "
                                  f"{', '.join(QUANTITIES)}.")
            c = self.complexity(cell["model"], input_size, cell.get("module"), **kwargs)
            ours = float(getattr(c, quantity))
            tol = _exact_tolerance(spec, cell)
            delta = ours - cell["paper"]
            rows.append(self.cell_row(spec, cell, ours=ours, delta=delta, tolerance=tol,
                                  **_exact_status(spec, cell, delta, tol)))
            params.append({"row": cell["row"], "params (M)": c.mparams, "multiply-adds (G)": c.gmacs})
        if spec.get("show_params"):
            self.extra_columns[table_id] = pd.DataFrame(params)
        return self.store(table_id, rows)

    # -- measured tables: from experiment results ---------------------------------------------------
    def measured(self, table_id: str, results: Mapping[str, dict], *, record_runs: bool = True) -> pd.DataFrame:
        """Cells from experiment results (`results[cell.experiment][quantity]`). Results that are
        not training runs (e.g. statistics of a data set, YOLOv2 Table 1) pass `record_runs=False`
        to stay out of the report's run list and floors; they may carry a `summary` for the note.

        A table whose `measured_on` lists profiles is `not_run` on the others, with its
        `not_run_because` reason, even where a cell's experiment ran (YOLOv4 Table 6: the reduced
        detector is the same experiment, but not started from a classifier)."""
        spec = self.spec(table_id)
        if record_runs:
            self.runs.update(results)
        if self.profile not in spec.get("measured_on", [self.profile]):
            reason = (spec.get("not_run_because") or {}).get(self.profile)
            if not reason:
                raise ConfigError(f"table {table_id}: measured_on {spec['measured_on']} needs a "
                                  f"not_run_because.{self.profile} reason.")
            return self.not_run(table_id, reason)
        planned = set(self.paper.runs[self.profile])
        rows = []
        for cell in spec["cells"]:
            result = results.get(cell["experiment"])
            quantity = cell.get("quantity", spec.get("quantity"))
            tol = cell_tolerance(spec, cell)
            if result is None or "not_run" in result:
                if result is not None:
                    reason = result["not_run"]
                elif cell["experiment"] not in planned:
                    why = (spec.get("not_run_because") or {}).get(self.profile)
                    reason = _join(why, f"not in the {self.profile} profile's runs "
                                        f"(conf/paper/{self.paper.id}.yaml: runs.{self.profile})")
                else:
                    reason = "not run in this execution"
                rows.append(self.cell_row(spec, cell, ours=None, delta=None, tolerance=tol, status="not_run",
                                      note=_join(cell.get("note"), reason)))
                continue
            ours = result.get(quantity)
            ours = float(ours) if isinstance(ours, (int, float)) else float("nan")  # a missing value shows as NaN
            delta = ours - cell["paper"]
            if result.get("profile", self.profile) != "full":
                status = "reduced"
                note = _join(cell.get("note"), result.get("summary") or f"{result['dataset']}, {result['steps']} iterations")
            else:
                status = "match" if abs(delta) <= tol else "off"
                note = cell.get("note", "")
            rows.append(self.cell_row(spec, cell, ours=ours, delta=delta, tolerance=tol, status=status, note=note))
        return self.store(table_id, rows)

    def speed(self, table_id: str, measured: Mapping[str, float], hardware: str) -> pd.DataFrame:
        """A speed table (`kind: speed`): each cell's `ratio` is a quotient of two sums of
        measured quantities, `{num: [name, ...], den: [name, ...]}` (stage times, frames per
        second), compared with the paper's quotient, since absolute times depend on the hardware
        (they go to the note). The tolerance is relative (a fraction of the paper's ratio). The
        status is `reduced` off the full profile, and `match` or `off` on it."""
        spec = self.spec(table_id)
        if spec["kind"] != "speed":
            raise ConfigError(f"table {table_id} is {spec['kind']!r}, not 'speed'")
        rows = []
        for cell in spec["cells"]:
            missing = [k for k in (*cell["ratio"]["num"], *cell["ratio"]["den"]) if k not in measured]
            if missing:
                raise ConfigError(f"table {table_id}, row {cell['row']!r}: no measurement named "
                                  f"{', '.join(missing)} (measured: {', '.join(measured)})")
            num = sum(measured[k] for k in cell["ratio"]["num"])
            den = sum(measured[k] for k in cell["ratio"]["den"])
            ours = num / den if den > 0 else float("nan")
            tol = float(cell.get("tolerance", spec.get("tolerance", 0.5))) * cell["paper"]
            delta = ours - cell["paper"]
            unit = spec.get("measured_unit", "ms")
            note = (f"{' + '.join(cell['ratio']['num'])} {num:.4g} {unit} / {' + '.join(cell['ratio']['den'])} "
                    f"{den:.4g} {unit} ({hardware})")
            status = "reduced" if self.profile != "full" else ("match" if abs(delta) <= tol else "off")
            rows.append(self.cell_row(spec, cell, ours=ours, delta=delta, tolerance=tol, status=status,
                                  note=_join(cell.get("note"), note)))
        return self.store(table_id, rows)

    def not_run(self, table_id: str, reason: str) -> pd.DataFrame:
        """Every cell of a table `not_run`, with `reason` (e.g. the run it needs is missing)."""
        spec = self.spec(table_id)
        rows = [self.cell_row(spec, cell, ours=None, delta=None, tolerance=None, status="not_run",
                          note=_join(cell.get("note"), reason)) for cell in spec["cells"]]
        return self.store(table_id, rows)

    def claims(self, claim_id: str, results: Mapping[str, dict]) -> pd.DataFrame:
        """Qualitative claims `lhs op rhs`, checked on the runs at hand (any profile)."""
        spec = self.spec(claim_id, "claims")
        self.runs.update(results)
        rows = []
        for cell in spec["cells"]:
            lhs, rhs = results.get(cell["lhs"]), results.get(cell["rhs"])
            base = dict(paper="holds", tolerance=None, delta=None, metric=spec["quantity"], unit="")
            if lhs is None or rhs is None or "not_run" in lhs or "not_run" in rhs:
                rows.append(self.cell_row(spec, cell, **base, ours=None, status="not_run",
                                      note=f"needs {cell['lhs']} and {cell['rhs']}"))
                continue
            a, b = lhs[spec["quantity"]], rhs[spec["quantity"]]
            holds = _OPS[cell["op"]](a, b)
            note = f"{cell['lhs']} {a:.2f} {cell['op']} {cell['rhs']} {b:.2f}"
            if lhs.get("profile") != "full":
                # At reduced scale the check is informative but not comparable to the paper.
                note += f" ({lhs['dataset']}, {lhs['steps']} iterations)"
                status = "reduced"
            else:
                status = "match" if holds else "off"
            rows.append(self.cell_row(spec, cell, **base, ours="holds" if holds else "does not hold",
                                  status=status, note=note))
        return self.store(claim_id, rows)

    def claim_summary(self, claim_id: str) -> str:
        """One line per claim: whether it shows on these runs, and the numbers behind it."""
        lines = []
        for r in self.frames[claim_id].itertuples():
            verdict = {"holds": "shows", "does not hold": "does not show"}.get(r.ours, "was not checked")
            lines.append(f"- {r.row}: {verdict} here ({r.note}).")
        return "\n".join(lines)

    def view(self, table_id: str):
        """The table as a reader sees it in Lab and in the HTML export (a pandas Styler): whole
        notes, no index, numbers formatted, the status coloured."""
        shown = self.formatted(table_id)
        numbers = [c for c in shown.columns if pd.api.types.is_float_dtype(shown[c])]
        return (shown.style.hide(axis="index")
                .format(_fmt, subset=numbers)
                .map(lambda status: f"background-color: {STATUS_COLOURS.get(status, 'transparent')}", subset=["status"])
                .set_properties(subset=["note"], **{"white-space": "normal", "text-align": "left", "min-width": "24em"}))

    def formatted(self, table_id: str) -> pd.DataFrame:
        """The table's shown columns as text and numbers: formatted values, ± tolerance, extra columns."""
        frame = self.frames[table_id]
        shown = frame[["row", "metric", "paper", "ours", "delta", "tolerance", "status", "note"]].copy()
        for col in ("ours", "delta"):
            shown[col] = shown[col].map(_fmt)
        shown["tolerance"] = shown["tolerance"].map(lambda v: "" if v is None or _isnan(v) else f"±{v:g}")
        if table_id in self.extra_columns:
            shown = shown.merge(self.extra_columns[table_id], on="row", how="left")
        return shown

    def add_figure(self, name: str, figure, data: pd.DataFrame | None = None) -> None:
        self.figures[name] = (figure, data)

    # -- checks ------------------------------------------------------------------------------------
    def check(self) -> None:
        """Fail on any exact cell off its tolerance (or off the bound of its explanation), and on
        any floored run (every planned run of a profile with floors: `config.check_floors`) that
        is missing from the report, did not run, trained no step, scored NaN or scored below its
        floor, or whose floor is not `CHANCE_MARGIN` times its untrained network's score."""
        exact_ids = {s.id for s in self.paper.get("tables") or [] if s.kind == "exact"}
        off = [f"{r.table} / {r.row}: paper {r.paper}, ours {r.ours:.4g} (tolerance {r.tolerance:g})"
               + (f"; {r.note}" if isinstance(r.note, str) and "not met" in r.note else "")
               for t, f in self.frames.items() if t in exact_ids for r in f.itertuples() if r.status == "off"]
        if off:
            raise ExactTableMismatch("Exact cells outside their tolerance:\n  " + "\n  ".join(off))
        floors = (self.paper.get("floors") or {}).get(self.profile) or {}
        low = []
        for name, floor in floors.items():
            run = self.runs.get(name)
            if run is None:
                low.append(f"{name}: planned, but the report has no result for it (the notebook did not run it)")
                continue
            if "not_run" in run:
                low.append(f"{name}: planned, but not run: {str(run['not_run']).splitlines()[0]}")
                continue
            if not run.get("steps"):
                low.append(f"{name}: planned, but trained {run.get('steps')} steps")
                continue
            what, score = floor_score(run)
            if not score >= floor:  # NaN fails too
                low.append(f"{name}: {what} {100 * score:.2f}% < floor {100 * floor:g}%")
            chance = untrained_score(run)
            if chance is not None and not floor >= CHANCE_MARGIN * chance:
                low.append(f"{name}: floor {100 * floor:g}% is not {CHANCE_MARGIN}x the untrained network's "
                           f"{what} {100 * chance:.2f}%: it would not tell a detector that learned from one that did not")
        if low:
            raise FloorNotMet("Planned runs that do not clear their floor (conf/paper/%s.yaml: runs, floors):\n  %s"
                              % (self.paper.id, "\n  ".join(low)))

    def floors(self, results: Mapping[str, dict]) -> pd.DataFrame:
        """Every planned run of this profile against its floor (conf/paper/<id>.yaml: `floors`):
        its score on the floor's metric, the same network untrained where the run scored it (a
        detector's chance row, `experiment_detection.score_untrained`), the floor, and for
        detectors the profile's `detection_target` (conf/profile/<name>.yaml). Kept for
        `write` (floors.csv) and shown by the notebooks before `check`; `check` enforces the
        floors, not the target: a detector below its target is shown so, with its reason in the
        notebook's text."""
        floors = (self.paper.get("floors") or {}).get(self.profile) or {}
        target = self.cfg.profile.get("detection_target")
        rows = []
        for name, floor in floors.items():
            run = results.get(name) or {}
            row = {"run": name, "metric": None, "ours": None, "untrained": None, "floor": _percent(floor),
                   "target": None, "steps": run.get("steps"), "status": "missing"}
            if "not_run" in run:
                row["status"] = "not_run"
            elif run:
                what, score = floor_score(run)
                chance = untrained_score(run)
                detector = what != "test accuracy"
                row.update(metric=what, ours=_percent(score), untrained=None if chance is None else _percent(chance),
                           target=_percent(target) if detector and target else None)
                if not score >= floor:
                    row["status"] = "below floor"
                elif row["target"] is not None and not score >= target:
                    row["status"] = "below target"
                else:
                    row["status"] = "pass"
            rows.append(row)
        self.floor_frame = pd.DataFrame(rows, columns=FLOOR_COLUMNS)
        return self.floor_frame

    def counts(self) -> dict[str, int]:
        frame = pd.concat(self.frames.values()) if self.frames else pd.DataFrame(columns=COLUMNS)
        counts = {s: int((frame["status"] == s).sum()) for s in STATUSES}
        counts["cells"] = int(len(frame))
        return counts

    # -- output ------------------------------------------------------------------------------------
    def markdown(self) -> str:
        specs = {s.id: s for s in [*(self.paper.get("tables") or []), *(self.paper.get("claims") or [])]}
        lines = [f"# {self.paper.title} ({self.paper.venue}, arXiv {self.paper.arxiv})", "",
                 f"Profile: **{self.profile}**. Status: " + ", ".join(f"{k} {v}" for k, v in self.counts().items()), ""]
        for table_id in self.frames:
            lines += [f"## {specs[table_id].title}", "", f"Source: {specs[table_id].source}.", ""]
            lines += [self.formatted(table_id).to_markdown(index=False, floatfmt=".4g"), ""]
        if self.floor_frame is not None:
            lines += ["## Planned runs against their floors", "", "Percentages; `untrained`: the same network "
                      "before training; `target`: what a detector should reach at this profile.", "",
                      self.floor_frame.to_markdown(index=False, floatfmt=".4g"), ""]
        if self.runs:
            lines += ["## Runs", "", pd.DataFrame(
                [{"experiment": k, **{c: v.get(c) for c in _run_columns(self.runs) + ("train_seconds", "cached")}}
                 for k, v in self.runs.items()]).to_markdown(index=False, floatfmt=".4g"), ""]
        return "\n".join(lines)

    def metrics(self) -> dict:
        return {
            "paper": self.paper.id,
            "profile": self.profile,
            "overrides": self.overrides,
            "commit": git_commit(),
            "cells": self.counts(),
            "runs": {k: {c: v.get(c) for c in _run_columns(self.runs)[1:]} for k, v in self.runs.items()},
        }

    def summary(self) -> dict:
        """What `dvc metrics show` lists, with the same keys for every paper so that the papers
        line up as rows of one table: the cells by status, and the headline run (the first the
        profile plans) with the score its floor is checked on (accuracy or mAP, 0-1)."""
        planned = [name for name in (self.paper.get("runs") or {}).get(self.profile) or [] if name in self.runs]
        headline = {"run": None, "measure": None, "score": None}
        if planned:
            measure, score = floor_score(self.runs[planned[0]])
            headline = {"run": planned[0], "measure": measure, "score": None if math.isnan(score) else round(score, 4)}
        return {**self.counts(), "headline": headline}

    def default_dir(self) -> Path:
        return Path(self.cfg.paths.report_dir) / self.paper.id / self.profile

    def write(self, report_dir: str | Path | None = None) -> Path:
        """Write the CSVs, tables.md, metrics.json, summary.json (DVC's metrics) and plots.

        With no `report_dir` the files go to `reports/<paper>/<profile>/`, replaced as a whole
        (written beside it, then renamed), so a failure never leaves a half-written folder there.
        With a `report_dir` (the CLI's staging folder) they are written into it directly.
        """
        final = Path(report_dir) if report_dir is not None else self.default_dir()
        target = final if report_dir is not None else final.with_name(f".{final.name}.partial-{os.getpid()}")
        target.mkdir(parents=True, exist_ok=True)
        for table_id, frame in self.frames.items():
            frame.to_csv(target / f"{table_id}.csv", index=False)
        for name, (figure, data) in self.figures.items():
            figure.savefig(target / f"{name}.png", dpi=120, bbox_inches="tight")
            if data is not None:
                data.to_csv(target / f"{name}.csv", index=False)
                if {"step", "experiment", "curve", "error"} <= set(data.columns):
                    # One column per series (DVC plots draws each y column as its own line).
                    wide = data.pivot_table(index="step", columns=["experiment", "curve"], values="error")
                    wide.columns = [f"{experiment} {curve}" for experiment, curve in wide.columns]
                    wide.reset_index().to_csv(target / f"{name}_wide.csv", index=False)
        if self.floor_frame is not None:
            self.floor_frame.to_csv(target / "floors.csv", index=False)
        (target / "tables.md").write_text(self.markdown())
        (target / "metrics.json").write_text(json.dumps(self.metrics(), indent=2))
        (target / "summary.json").write_text(json.dumps(self.summary(), indent=2))
        if report_dir is None:
            replace_dir(target, final)
            write_scoreboard(Path(self.cfg.paths.report_dir))
        return final


def git_commit() -> str | None:
    """The checkout's commit (with "+changes" when files differ from it), or None outside git."""
    import subprocess

    from .config import PROJECT_ROOT

    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=PROJECT_ROOT, capture_output=True, text=True,
                              check=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=PROJECT_ROOT,
                               capture_output=True, text=True, check=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return head + ("+changes" if dirty else "")


def replace_dir(source: Path, destination: Path) -> None:
    """Move `source` to `destination`, replacing what was there, never leaving a mix of both."""
    old = destination.with_name(f".{destination.name}.old-{os.getpid()}")
    if destination.exists():
        destination.rename(old)
    source.rename(destination)
    shutil.rmtree(old, ignore_errors=True)


def write_scoreboard(report_root: Path) -> Path:
    """`reports/scoreboard.md`: per paper and profile, cells regenerated, matched, off, not run."""
    rows = []
    for path in sorted(Path(report_root).glob("*/*/metrics.json")):
        try:
            m = json.loads(path.read_text())
            rows.append({"paper": m["paper"], "profile": m["profile"], **m["cells"]})
        except (ValueError, KeyError, TypeError) as exc:
            raise CorruptFileError(f"{path} is not a report's metrics.json ({type(exc).__name__}: {exc}); "
                                   "run that paper's notebook again, or delete its folder.") from None
    frame = pd.DataFrame(rows, columns=["paper", "profile", "cells", *STATUSES])
    text = ["# Scoreboard", "",
            "Cells regenerated per paper and profile: `match` within the paper's tolerance, `off` outside "
            "it, `explained` outside it for a reason given in the paper's tables.md, `reduced` measured at reduced scale (not comparable), `not_run` with its reason in the "
            "paper's tables.md.", "", frame.to_markdown(index=False) if rows else "(no reports yet)", ""]
    out = Path(report_root) / "scoreboard.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(text))
    return out


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
    it (detectors: `experiment_detection.score_untrained`)."""
    key = "untrained_map_50" if "test_map_50" in run else "untrained_map"
    value = run.get(key)
    return float(value) / 100 if isinstance(value, (int, float)) else None


def _run_columns(runs: Mapping[str, Mapping]) -> tuple[str, ...]:
    """The result fields shown per run: detection metrics for detectors, errors for classifiers
    (both where a paper has both, as YOLOv4's classifier ablation beside its detector)."""
    detection = ("test_map", "test_map_50", "test_map_75", "untrained_map", "untrained_map_50")
    classification = ("test_top1_err", "test_top5_err", "train_err_final")
    has_map = any("test_map" in r for r in runs.values())
    has_err = any("test_top1_err" in r for r in runs.values())
    return ("dataset", "steps", *(detection if has_map else ()), *(classification if has_err or not has_map else ()))


def _join(*parts) -> str:
    return "; ".join(p for p in parts if p)


def _percent(fraction: float) -> float:
    """A fraction as a percentage to two decimals, as the runs print their scores (0.55 -> 55.0)."""
    return round(100 * float(fraction), 2)


def _isnan(v) -> bool:
    return isinstance(v, float) and math.isnan(v)


def _fmt(v) -> str:
    if v is None or _isnan(v):
        return ""
    return f"{v:.4g}" if isinstance(v, float) else str(v)
