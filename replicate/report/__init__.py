"""Reports: `Report` (one paper's paper-vs-ours tables for one profile, their checks), bottom up:
`cells` (columns, tolerances, statuses), `files` (the only writer of reports/ and the
scoreboard), `report`; beside them `plots` (training curves, detections) and `architecture` (the
MobileNet papers' layer tables read back from our networks)."""

from .files import write_scoreboard
from .report import Report

__all__ = ["Report", "write_scoreboard"]
