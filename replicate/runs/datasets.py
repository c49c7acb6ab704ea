"""The data sets a paper's plan reads at a profile, made ready (downloaded where allowed), and a
small fingerprint of each: what the DVC pipeline's `datasets@<paper>` stage writes, so that a
paper's stage waits for its data and reruns when that data changes, without hashing gigabytes."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

from ..config import compose
from ..data import prepare


def paper_datasets(paper: str, profile: str, overrides: Sequence[str] = ()) -> list[str]:
    """The data sets (conf/data names, after the profile's substitutions) of every experiment the
    paper plans for `profile`, in first-use order."""
    cfg = compose(paper, profile, overrides)
    names: list[str] = []
    for experiment in cfg.paper.plan[profile]:
        name = compose(paper, profile, [*overrides, f"experiment={experiment}"]).data.name
        if name not in names:
            names.append(name)
    return names


def fingerprint(folder: Path) -> dict[str, list[int]]:
    """[files, bytes] under each folder of `folder` down to two levels (its splits and their class
    or year folders), and under `folder` itself: a file added, removed or rewritten to another
    size changes it. Reading sizes, not contents, keeps it to seconds on ImageNet."""
    folder = Path(folder)
    totals: dict[str, list[int]] = {}
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        relative = Path(root).relative_to(folder)
        keys = {".", *(Path(*relative.parts[:depth]).as_posix() for depth in (1, 2) if len(relative.parts) >= depth)}
        size = sum((Path(root) / name).stat().st_size for name in files)
        for key in keys:
            count = totals.setdefault(key, [0, 0])
            count[0] += len(files)
            count[1] += size
    return dict(sorted(totals.items()))


def write_fingerprints(paper: str, profile: str, target: Path, data_dir: Path,
                       overrides: Sequence[str] = ()) -> dict:
    """Make every data set of the paper's plan ready (`prepare`, downloading where the data set
    allows it; `DatasetMissingError` with the fix for one that is absent) and write their
    fingerprints to `target` (whole, then renamed: never half a file)."""
    stamps = {}
    for name in paper_datasets(paper, profile, overrides):
        folder = prepare(name, data_dir, download=True)
        stamps[name] = fingerprint(folder)
    write_json(stamps, target)
    return stamps


def write_json(value: dict, target: Path) -> None:
    """`value` as JSON at `target`, written whole and then renamed: never half a file."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.with_name(f".{target.name}.{os.getpid()}")
    staging.write_text(json.dumps(value, indent=1, sort_keys=True))
    os.replace(staging, target)
