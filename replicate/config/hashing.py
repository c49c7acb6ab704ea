"""A run's hash: the slice of its config that decides the result (`run_spec`), plus a fingerprint
of the code it executes (`run_fingerprint`), hashed (`config_hash`, the run folder's name).

The code is the run's own: the runners, tasks, data, ops and Quant-Noise every run executes, the
file of its model family (found by the `@register`-ed builder of `model.name`), and every module
of the package those files import, followed through their import statements. So an edit to
YOLOv4 leaves the cached ResNet runs current, while an edit to a layer YOLOv4 shares with
CSPResNeXt (models/layers.py) retrains both.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import json
from collections.abc import Iterable, Sequence
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

PACKAGE_DIR = Path(__file__).resolve().parents[1]

# The parts of a config that decide what a run computes. Paths, logging, the paper's reported
# tables and the progress display do not change the result, so they stay out of the hash. Nor do
# the device count and strategy: the recipe's batch is the global batch, split over the devices,
# so a cluster run is the same experiment (batch norm then sees the per-device batch, as in the
# paper's own 8-GPU training). The code that trains is in the hash through its fingerprint.
_RESULT_KEYS = ("experiment", "seed", "data", "model", "recipe", "quant", "trainer", "speed")
_NON_RESULT_TRAINER_KEYS = ("enable_progress_bar", "enable_model_summary", "log_every_n_steps",
                            "accelerator", "devices", "num_nodes", "strategy")
# What every run executes besides its model family (folders and files under replicate/).
TRAINING_CODE = ("tasks", "data", "quant", "ops", "runs", "determinism.py")


def _files(entries: Iterable[str], package: Path) -> list[Path]:
    found: list[Path] = []
    for entry in entries:
        target = package / entry
        found += sorted(target.rglob("*.py")) if target.is_dir() else [target]
    return found


def _digest(paths: Iterable[Path], package: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(set(paths)):
        digest.update(path.relative_to(package).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def code_fingerprint(entries: Sequence[str], package: Path = PACKAGE_DIR) -> str:
    """A hash of the package sources `entries` (files or folders under replicate/), as they are."""
    return _digest(_files(entries, package), package)


def _module_files(target: Path, package: Path) -> set[Path]:
    """The files executed by importing the module at `target` (a path without suffix): its own
    (`<target>.py` or `<target>/__init__.py`) and its parent packages' `__init__.py`."""
    own = {p for p in (target.with_suffix(".py"), target / "__init__.py") if p.is_file()}
    if own:
        parent = target.parent
        while parent.is_relative_to(package):
            if (parent / "__init__.py").is_file():
                own.add(parent / "__init__.py")
            parent = parent.parent
    return own


def _imports(path: Path, package: Path) -> frozenset[Path]:
    """The package's files that `path`'s import statements execute (at any depth of the file: a
    function's deferred import counts too); parsed once per state of the file."""
    stat = path.stat()
    return _parsed_imports(path, package, stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=1024)
def _parsed_imports(path: Path, package: Path, mtime_ns: int, size: int) -> frozenset[Path]:
    found: set[Path] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = path.parent
                for _ in range(node.level - 1):
                    base = base.parent
            elif node.module and node.module.split(".")[0] == package.name:
                base = package.parent
            else:
                continue
            target = base.joinpath(*(node.module or "").split(".")) if node.module else base
            found |= _module_files(target, package)
            for alias in node.names:  # `from . import store`: a module, not a name
                found |= _module_files(target / alias.name, package)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == package.name:
                    found |= _module_files(package.parent.joinpath(*alias.name.split(".")), package)
    return frozenset(found)


def source_closure(roots: Iterable[Path], package: Path = PACKAGE_DIR) -> list[Path]:
    """`roots` and every file of the package they import, directly or through others."""
    seen: set[Path] = set()
    todo = [Path(r) for r in roots]
    while todo:
        path = todo.pop()
        if path in seen or not path.is_file():
            continue
        seen.add(path)
        todo += [p for p in _imports(path, package) if p not in seen]
    return sorted(seen)


def _builders(package: Path) -> dict[str, Path]:
    """Registered model names and the family file defining each (`@register` on a function of
    models/*.py), read from the sources without importing them, once per state of those files."""
    state = tuple((p.name, p.stat().st_mtime_ns) for p in sorted((package / "models").glob("*.py")))
    return _read_builders(package, state)


@functools.lru_cache(maxsize=16)
def _read_builders(package: Path, state: tuple) -> dict[str, Path]:
    builders: dict[str, Path] = {}
    for path in sorted((package / "models").glob("*.py")):
        for node in ast.parse(path.read_text(), str(path)).body:
            if isinstance(node, ast.FunctionDef) and any(
                    (isinstance(d, ast.Name) and d.id == "register")
                    or (isinstance(d, ast.Call) and isinstance(d.func, ast.Name) and d.func.id == "register")
                    for d in node.decorator_list):
                builders[node.name] = path
    return builders


def model_sources(model_name: str, package: Path = PACKAGE_DIR) -> list[Path]:
    """The files that building `model_name` executes: its family and what the family imports
    (the whole models/ folder for a name no family registers)."""
    family = _builders(package).get(model_name)
    return source_closure([family] if family else _files(["models"], package), package)


def run_fingerprint(model_name: str, package: Path = PACKAGE_DIR) -> str:
    """A hash of the code a run of `model_name` executes: `TRAINING_CODE`, the model's family and
    everything they import. Computed once per state of the package's files (their sizes and
    modification times): a notebook hashes dozens of runs."""
    state = tuple((p.as_posix(), p.stat().st_mtime_ns, p.stat().st_size) for p in sorted(package.rglob("*.py")))
    return _run_fingerprint(model_name, package, state)


@functools.lru_cache(maxsize=256)
def _run_fingerprint(model_name: str, package: Path, state: tuple) -> str:
    roots = [*_files(TRAINING_CODE, package), *model_sources(model_name, package)]
    return _digest(source_closure(roots, package), package)


def run_spec(cfg: DictConfig) -> dict:
    """The plain-dict slice of `cfg` (plus the code fingerprint) that determines a run's result."""
    spec = {k: OmegaConf.to_container(cfg[k], resolve=True) if isinstance(cfg[k], DictConfig) else cfg[k]
            for k in _RESULT_KEYS}
    spec["data"].pop("download", None)
    for key in _NON_RESULT_TRAINER_KEYS:
        spec["trainer"].pop(key, None)
    spec["paper"] = cfg.paper.id
    spec["threads"] = cfg.profile.get("threads")  # a reduction split over other threads rounds differently
    spec["code"] = run_fingerprint(str(cfg.model.name))
    return spec


def config_hash(cfg: DictConfig) -> str:
    """A short stable hash of `run_spec(cfg)`: the cache key of a run."""
    blob = json.dumps(run_spec(cfg), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:12]
