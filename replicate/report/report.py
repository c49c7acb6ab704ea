"""`Report`: one paper's regenerated tables for one profile, each cell compared with the paper
(`cells`), checked (`check`), and written by `files`."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from pathlib import Path

import matplotlib
import pandas as pd
from omegaconf import DictConfig, OmegaConf

from ..errors import ConfigError, ExactTableMismatch, FloorNotMet
from ..measure.complexity import QUANTITIES, Complexity
from ..measure.counts import stored_count
from .cells import (CHANCE_MARGIN, COLUMNS, FLOOR_COLOURS, FLOOR_COLUMNS, OPS, STATUS_COLOURS, STATUSES, cell_tolerance, exact_status,
                    exact_tolerance, floor_score, fmt, isnan, join_notes, percent, run_columns, seed_spread,
                    untrained_score)
from .files import git_commit, write_report


class Report:
    """Collects one paper's regenerated tables, plots and checks for one profile."""

    def __init__(self, cfg: DictConfig):
        self.cfg = cfg
        self.paper = cfg.paper
        self.profile = cfg.profile.name
        self.frames: dict[str, pd.DataFrame] = {}
        self.extra_columns: dict[str, pd.DataFrame] = {}
        self.figures: dict[str, tuple[matplotlib.figure.Figure, pd.DataFrame | None]] = {}
        self.results: dict[str, dict] = {}  # by experiment: the runs the tables were made from
        self.floor_frame: pd.DataFrame | None = None
        self.spreads: dict[tuple[str, str], float] = {}  # (table, row): std over seeds, shown as ours ± std
        self._counted: dict[tuple, Complexity] = {}
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
        """Counted once per (model, input, module, kwargs) and kept, in the report and on disk
        (`measure.counts`): no model is built twice for a report, nor for a later execution."""
        key = (name, tuple(input_size), module, tuple(sorted(kwargs.items())))
        if key not in self._counted:
            self._counted[key] = stored_count(name, tuple(input_size), module, kwargs, self.cfg.paths.count_dir)
        return self._counted[key]

    def exact(self, table_id: str, counter: Callable[[Mapping, Mapping], float] | None = None) -> pd.DataFrame:
        """Cells computed from the model definitions. A cell may override the table's
        `model_kwargs`, `input_size` and `quantity`, and may name a `module` to count that
        submodule alone (per-layer tables).

        `counter(cell, spec) -> value` replaces the generic count for quantities it does not
        know (e.g. the anchors of an image, the weights of a layer after truncated SVD:
        `replicate.measure.exact.exact_value`); the comparison and `check` are the same."""
        spec = self.spec(table_id)
        if spec["kind"] != "exact":
            raise ConfigError(f"table {table_id} is {spec['kind']!r}, not 'exact'")
        rows, params = [], []
        for cell in spec["cells"]:
            if counter is not None:
                ours = float(counter(cell, spec))
                tol = exact_tolerance(spec, cell)
                delta = ours - cell["paper"]
                rows.append(self.cell_row(spec, cell, ours=ours, delta=delta, tolerance=tol,
                                      **exact_status(spec, cell, delta, tol)))
                continue
            kwargs = {**spec.get("model_kwargs", {}), **cell.get("model_kwargs", {})}
            input_size = cell.get("input_size", spec.get("input_size"))
            quantity = cell.get("quantity", spec.get("quantity"))
            if quantity not in QUANTITIES:
                raise ConfigError(f"table {table_id}, row {cell['row']!r}: quantity {quantity!r} is not one of "
                                  f"{', '.join(QUANTITIES)}.")
            c = self.complexity(cell["model"], input_size, cell.get("module"), **kwargs)
            ours = float(getattr(c, quantity))
            tol = exact_tolerance(spec, cell)
            delta = ours - cell["paper"]
            rows.append(self.cell_row(spec, cell, ours=ours, delta=delta, tolerance=tol,
                                  **exact_status(spec, cell, delta, tol)))
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
            self.results.update(results)
        if self.profile not in spec.get("measured_on", [self.profile]):
            reason = (spec.get("not_run_because") or {}).get(self.profile)
            if not reason:
                raise ConfigError(f"table {table_id}: measured_on {spec['measured_on']} needs a "
                                  f"not_run_because.{self.profile} reason.")
            return self.not_run(table_id, reason)
        planned = set(self.paper.plan[self.profile])
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
                    reason = join_notes(why, f"not in the {self.profile} profile's runs "
                                        f"(conf/paper/{self.paper.id}.yaml: plan.{self.profile})")
                else:
                    reason = "not run in this execution"
                rows.append(self.cell_row(spec, cell, ours=None, delta=None, tolerance=tol, status="not_run",
                                      note=join_notes(cell.get("note"), reason)))
                continue
            ours = result.get(quantity)
            ours = float(ours) if isinstance(ours, (int, float)) else float("nan")  # a missing value shows as NaN
            spread = seed_spread(result, quantity)
            seeds = ""
            if spread is not None:  # several seeds: their mean, compared as the papers compare theirs
                ours, std, seed_list = spread
                self.spreads[(table_id, cell["row"])] = std
                seeds = f"mean ± std of {len(seed_list)} seeds ({', '.join(map(str, seed_list))}): {ours:.4g} ± {std:.2g}"
            delta = ours - cell["paper"]
            if result.get("profile", self.profile) != "full":
                status = "reduced"
                note = join_notes(cell.get("note"), result.get("summary") or f"{result['dataset']}, {result['steps']} iterations",
                                  seeds)
            else:
                status = "match" if abs(delta) <= tol else "off"
                note = join_notes(cell.get("note", ""), seeds)
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
                                  note=join_notes(cell.get("note"), note)))
        return self.store(table_id, rows)

    def not_run(self, table_id: str, reason: str) -> pd.DataFrame:
        """Every cell of a table `not_run`, with `reason` (e.g. the run it needs is missing)."""
        spec = self.spec(table_id)
        rows = [self.cell_row(spec, cell, ours=None, delta=None, tolerance=None, status="not_run",
                          note=join_notes(cell.get("note"), reason)) for cell in spec["cells"]]
        return self.store(table_id, rows)

    def claims(self, claim_id: str, results: Mapping[str, dict]) -> pd.DataFrame:
        """Qualitative claims `lhs op rhs`, checked on the runs at hand (any profile)."""
        spec = self.spec(claim_id, "claims")
        self.results.update(results)
        rows = []
        for cell in spec["cells"]:
            lhs, rhs = results.get(cell["lhs"]), results.get(cell["rhs"])
            base = dict(paper="holds", tolerance=None, delta=None, metric=spec["quantity"], unit="")
            if lhs is None or rhs is None or "not_run" in lhs or "not_run" in rhs:
                rows.append(self.cell_row(spec, cell, **base, ours=None, status="not_run",
                                      note=f"needs {cell['lhs']} and {cell['rhs']}"))
                continue
            a, b = lhs[spec["quantity"]], rhs[spec["quantity"]]
            holds = OPS[cell["op"]](a, b)
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

    def show(self, table_id: str, results: Mapping | None = None, **options):
        """Regenerate one table or claim by its kind in the paper's conf and return its `view`:
        `exact` (options: `counter`), `measured` and claims from `results` (the runs), `speed`
        from `results` as the measured times (options: `hardware`)."""
        kinds = {s.id: s.kind for s in self.paper.get("tables") or []}
        if table_id not in kinds and table_id in {s.id for s in self.paper.get("claims") or []}:
            self.claims(table_id, results or {})
        elif kinds.get(table_id) == "exact":
            self.exact(table_id, **options)
        elif kinds.get(table_id) == "measured":
            self.measured(table_id, results or {}, **options)
        elif kinds.get(table_id) == "speed":
            self.speed(table_id, results or {}, **options)
        else:
            self.spec(table_id)  # an unknown id: the error lists the known ones
            raise ConfigError(f"table {table_id}: kind {kinds[table_id]!r} is not one of exact, measured, speed.")
        return self.view(table_id)

    def view(self, table_id: str):
        """The table as a reader sees it in Lab and in the HTML export (a pandas Styler): whole
        notes, no index, numbers formatted, the status coloured."""
        shown = self.formatted(table_id)
        numbers = [c for c in shown.columns if pd.api.types.is_float_dtype(shown[c])]
        return (shown.style.hide(axis="index")
                .format(fmt, subset=numbers)
                .map(lambda status: f"background-color: {STATUS_COLOURS.get(status, 'transparent')}", subset=["status"])
                .set_properties(subset=["note"], **{"white-space": "normal", "text-align": "left", "min-width": "24em"}))

    def formatted(self, table_id: str) -> pd.DataFrame:
        """The table's shown columns as text and numbers: formatted values, ± tolerance, extra columns."""
        frame = self.frames[table_id]
        shown = frame[["row", "metric", "paper", "ours", "delta", "tolerance", "status", "note"]].copy()
        for col in ("ours", "delta"):
            shown[col] = shown[col].map(fmt)
        spread = [self.spreads.get((table_id, row)) for row in frame["row"]]
        shown["ours"] = [f"{text} ± {std:.2g}" if std is not None else text for text, std in zip(shown["ours"], spread)]
        shown["tolerance"] = shown["tolerance"].map(lambda v: "" if v is None or isnan(v) else f"±{v:g}")
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
            run = self.results.get(name)
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

    def floors(self, results: Mapping[str, dict]):
        """Every planned run of this profile against its floor (conf/paper/<id>.yaml: `floors`):
        its score on the floor's metric, the same network untrained where the run scored it (a
        detector's chance row, `runs.detection.score_untrained`), the floor, and for
        detectors the profile's `detection_target` (conf/profile/<name>.yaml). Kept for
        `write` (floors.csv) and shown by the notebooks before `check`; `check` enforces the
        floors, not the target: a detector below its target is shown so, with its reason in the
        notebook's text. Returns the view (as `view`: no index, blanks for what was not
        measured, the status coloured); the data is `floor_frame`."""
        floors = (self.paper.get("floors") or {}).get(self.profile) or {}
        target = self.cfg.profile.get("detection_target")
        rows = []
        for name, floor in floors.items():
            run = results.get(name) or {}
            row = {"run": name, "metric": None, "ours": None, "untrained": None, "floor": percent(floor),
                   "target": None, "steps": run.get("steps"), "status": "missing"}
            if "not_run" in run:
                row["status"] = "not_run"
            elif run:
                what, score = floor_score(run)
                chance = untrained_score(run)
                detector = what != "test accuracy"
                row.update(metric=what, ours=percent(score), untrained=None if chance is None else percent(chance),
                           target=percent(target) if detector and target else None)
                if not score >= floor:
                    row["status"] = "below floor"
                elif row["target"] is not None and not score >= target:
                    row["status"] = "below target"
                else:
                    row["status"] = "pass"
            rows.append(row)
        self.floor_frame = pd.DataFrame(rows, columns=FLOOR_COLUMNS)
        return (self.floor_frame.style.hide(axis="index")
                .format(lambda v: "" if v is None or isnan(v) else f"{v:g}" if isinstance(v, float) else str(v))
                .map(lambda status: f"background-color: {FLOOR_COLOURS.get(status, 'transparent')}", subset=["status"]))

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
        if self.results:
            lines += ["## Runs", "", pd.DataFrame(
                [{"experiment": k, **{c: v.get(c) for c in run_columns(self.results) + ("train_seconds", "cached")}}
                 for k, v in self.results.items()]).to_markdown(index=False, floatfmt=".4g"), ""]
        return "\n".join(lines)

    def metrics(self) -> dict:
        return {
            "paper": self.paper.id,
            "profile": self.profile,
            "overrides": self.overrides,
            "commit": git_commit(),
            "cells": self.counts(),
            "runs": {k: {c: v.get(c) for c in run_columns(self.results)[1:]} for k, v in self.results.items()},
        }

    def summary(self) -> dict:
        """What `dvc metrics show` lists, with the same keys for every paper so that the papers
        line up as rows of one table: the cells by status, and the headline run (the first the
        profile plans) with the score its floor is checked on (accuracy or mAP, 0-1)."""
        planned = [name for name in (self.paper.get("plan") or {}).get(self.profile) or [] if name in self.results]
        headline = {"run": None, "measure": None, "score": None}
        if planned:
            measure, score = floor_score(self.results[planned[0]])
            headline = {"run": planned[0], "measure": measure, "score": None if math.isnan(score) else round(score, 4)}
        return {**self.counts(), "headline": headline}

    def default_dir(self) -> Path:
        return Path(self.cfg.paths.report_dir) / self.paper.id / self.profile

    def write(self, report_dir: str | Path | None = None) -> Path:
        """Write the report's files (`files.write_report`): into `reports/<paper>/<profile>/`,
        replaced as a whole, or into `report_dir` (the CLI's staging folder)."""
        return write_report(self, report_dir)
