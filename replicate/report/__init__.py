"""Reports: `Report` (one paper's paper-vs-ours tables for one profile, their checks), bottom up:
`cells` (columns, tolerances, statuses), `files` (the only writer of reports/ and the
scoreboard), `report`. Beside them, what notebooks call to fill a table or a figure: `plots`
(training curves, detections, error against multiply-adds), `architecture` (layer tables read back
from our networks), `sizes` (counted sizes shown beside the exact tables), `speed` (the speed
tables' timings), `priors` (YOLOv2's dimension clusters) and `compression` (Quant-Noise's rows)."""

from .files import write_scoreboard

__all__ = ["Report", "write_scoreboard"]


def __getattr__(name: str):
    # `Report` builds and counts networks (torch); the command line that only publishes a
    # notebook's files and the scoreboard (`files`) should not pay for importing it.
    if name == "Report":
        from .report import Report

        return Report
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
