"""Where each executed notebook's time went, from papermill's own cell timings: the cells that
train (`run_all`, `compress_all`: training, or loading cached runs), every other cell (imports,
compose, exact tables, plots, speed timings, writing) and papermill's time between cells.

    python benchmarks/notebook_fixed_cost.py [reports] [--profile reduced]

Reads `reports/<paper>/<profile>/<paper>.ipynb` as `python -m replicate notebook` (and so `dvc repro`)
leaves them. Kernel start and shutdown (about 1 s) come on top, outside papermill's timing.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

TRAINING_CALLS = ("run_all(", "compress_all(")


def cell_times(notebook: Path) -> dict:
    """Seconds in papermill's timing: total, training cells, other cells, between cells, and the
    slowest other cell with its first line."""
    nb = json.loads(notebook.read_text())
    total = float(nb["metadata"]["papermill"]["duration"])
    training = other = 0.0
    slowest = (0.0, "")
    for cell in nb["cells"]:
        seconds = cell.get("metadata", {}).get("papermill", {}).get("duration")
        if seconds is None:
            continue
        source = "".join(cell["source"])
        if any(call in source for call in TRAINING_CALLS):
            training += seconds
        else:
            other += seconds
            slowest = max(slowest, (seconds, source.splitlines()[0] if source else ""))
    return {"total": total, "training": training, "other": other, "between": total - training - other,
            "slowest": slowest}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("reports", nargs="?", default="reports")
    parser.add_argument("--profile", default="reduced")
    args = parser.parse_args()
    found = sorted(Path(args.reports).glob(f"*/{args.profile}/*.ipynb"))
    if not found:
        raise SystemExit(f"no executed notebook under {args.reports}/*/{args.profile}/: run `make replicate` first")
    rows = sorted(((path.stem, cell_times(path)) for path in found), key=lambda r: -(r[1]["other"] + r[1]["between"]))
    print(f"{'notebook':<14} {'total s':>8} {'training':>9} {'other':>6} {'between':>8}  slowest other cell")
    for name, t in rows:
        seconds, line = t["slowest"]
        print(f"{name:<14} {t['total']:8.1f} {t['training']:9.1f} {t['other']:6.1f} {t['between']:8.1f}  "
              f"{seconds:4.1f} s: {line[:60]}")


if __name__ == "__main__":
    main()
