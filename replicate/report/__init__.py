"""Reports: `Report` (one paper's paper-vs-ours tables for one profile, their checks), bottom up:
`cells` (columns, tolerances, statuses), `files` (the only writer of reports/ and the
scoreboard), `report`. Beside them, what notebooks call to fill a table or a figure: `plots`
(training curves, detections, error against multiply-adds), `architecture` (layer tables read back
from our networks), `sizes` (counted sizes shown beside the exact tables), `speed` (the speed
tables' timings), `priors` (YOLOv2's dimension clusters) and `compression` (Quant-Noise's rows)."""

from .files import write_scoreboard
from .report import Report

__all__ = ["Report", "write_scoreboard"]
