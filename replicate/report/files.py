"""The only writer of `reports/`: a paper's report folder (its tables as CSV, tables.md,
metrics.json, summary.json, floors.csv, the figures and their data), replaced as a whole, and
`reports/scoreboard.md` over every paper."""

from __future__ import annotations

import json
import os
import shutil
from contextlib import contextmanager
from pathlib import Path

import pandas as pd

from ..errors import CorruptFileError
from .cells import STATUSES

# A learning curve's data (plots.training_curves): one row per experiment, curve and step.
CURVE_COLUMNS = {"step", "experiment", "curve", "error"}


def write_report(report, report_dir: str | Path | None = None) -> Path:
    """Write the CSVs, tables.md, metrics.json, summary.json (DVC's metrics) and plots.

    With no `report_dir` the files go to `reports/<paper>/<profile>/`, replaced as a whole
    (written beside it, then renamed), so a failure never leaves a half-written folder there.
    With a `report_dir` (the CLI's staging folder) they are written into it directly.
    """
    final = Path(report_dir) if report_dir is not None else report.default_dir()
    target = final if report_dir is not None else final.with_name(f".{final.name}.partial-{os.getpid()}")
    target.mkdir(parents=True, exist_ok=True)
    for table_id, frame in report.frames.items():
        frame.to_csv(target / f"{table_id}.csv", index=False)
    for name, (figure, data) in report.figures.items():
        figure.savefig(target / f"{name}.png", dpi=120, bbox_inches="tight")
        if data is not None:
            data.to_csv(target / f"{name}.csv", index=False)
    if report.floor_frame is not None:
        report.floor_frame.to_csv(target / "floors.csv", index=False)
    (target / "tables.md").write_text(report.markdown())
    (target / "metrics.json").write_text(json.dumps(report.metrics(), indent=2))
    (target / "summary.json").write_text(json.dumps(report.summary(), indent=2))
    if report_dir is None:
        publish(target, final)
        write_scoreboard(Path(report.cfg.paths.report_dir))
    return final


def git_commit() -> str | None:
    """The checkout's commit (with "+changes" when files differ from it), or None outside git."""
    import subprocess

    from ..config import PROJECT_ROOT

    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=PROJECT_ROOT, capture_output=True, text=True,
                              check=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=PROJECT_ROOT,
                               capture_output=True, text=True, check=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return head + ("+changes" if dirty else "")


def publish(staging: Path, final: Path) -> None:
    """Put a finished report folder in place (`replace_dir`), then beside it what the paper's DVC
    stage declares (dvc.yaml), which DVC cannot declare inside the stage's output folder:
    `<profile>.summary.json`, its metric, and its plots: `<profile>.curves/`, every learning
    curve of the report (step, series, error), one line per series (template .dvc/plots/curves.json),
    and `<profile>.figures/`, every figure as drawn (PNG: `dvc plots show` shows it as an image)."""
    replace_dir(staging, final)
    beside = final.with_name(f"{final.name}.summary.json")
    partial = beside.with_name(f".{beside.name}.{os.getpid()}")
    shutil.copyfile(final / "summary.json", partial)
    os.replace(partial, beside)
    with _beside(final, "curves") as curves:
        for path in sorted(final.glob("*.csv")):
            with open(path) as f:
                header = set(f.readline().strip().split(","))
            if CURVE_COLUMNS <= header:
                data = pd.read_csv(path)
                data["series"] = data["experiment"] + " " + data["curve"]
                data[["step", "series", "error"]].to_csv(curves / path.name, index=False)
    with _beside(final, "figures") as figures:
        for path in sorted(final.glob("*.png")):
            shutil.copyfile(path, figures / path.name)


@contextmanager
def _beside(final: Path, suffix: str):
    """The folder `<profile>.<suffix>` beside the report folder `final`, filled in a staging
    folder and put in place whole (`replace_dir`)."""
    target = final.with_name(f"{final.name}.{suffix}")
    partial = target.with_name(f".{target.name}.{os.getpid()}")
    partial.mkdir(parents=True)
    yield partial
    replace_dir(partial, target)


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
