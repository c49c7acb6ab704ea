"""Exact counts kept on disk (`paths.count_dir`, runs/counts/): a network's parameters and
multiply-adds at one input size, keyed by the model, its keyword arguments, the input size, the
module counted and the code that decides the count (the model's family and what it imports, the
counter, torch's version). The reduced and full executions of a notebook, and every later one,
count each network once (ResNet-1202 takes half a minute)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path

import torch

from .. import models
from ..config.hashing import PACKAGE_DIR, code_fingerprint, model_sources
from .complexity import Complexity, count

def model_code(name: str) -> str:
    """What decides the count of model `name`: its family's code and what it imports, the counter,
    torch's version (hashed per state of the files, so an edited model is counted again)."""
    sources = [p.relative_to(PACKAGE_DIR).as_posix() for p in model_sources(name)]
    return code_fingerprint([*sources, "measure/complexity.py"]) + torch.__version__


def stored_count(name: str, input_size: tuple, module: str | None, kwargs: dict, count_dir: str | Path) -> Complexity:
    """The count of registry model `name` (built on the meta device: counting needs shapes, not
    weights) from `count_dir`, or counted now and kept there (written whole, then renamed)."""
    blob = json.dumps([name, list(input_size), module, sorted(kwargs.items()), model_code(name)], default=str)
    path = Path(count_dir) / f"{hashlib.sha256(blob.encode()).hexdigest()[:16]}.json"
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
