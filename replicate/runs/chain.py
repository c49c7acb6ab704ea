"""A paper's plan: `run_all(paper, profile)` runs (or loads) its experiments in order, each started
from the network its `model.backbone_from` names (`with_backbone_from`: that run first, its
weights saved once)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from omegaconf import DictConfig

from ..config import compose
from ..errors import ConfigError, DatasetMissingError, choices
from .launch import each_dataset_looked_for_once, run
from .store import save_weights, seed_results


def with_backbone_from(cfg: DictConfig, paper: str, profile: str, overrides: Sequence[str] = (),
                       results: dict[str, dict] | None = None, _chain: tuple[str, ...] = ()) -> DictConfig:
    """`cfg` itself, or, when its `model.backbone_from` names another experiment of the paper
    (YOLOv4 Table 6: the detector from a Table 2 or 3 classifier), `cfg` composed again with
    `model.backbone_weights` set to that experiment's trained network. The source is taken from
    `results`, or run (a finished run is only loaded from its cache); its weights are written once,
    atomically, as `backbone_weights.pt` in its run directory; a source with a source of its own
    (YOLOv2: the detector from Darknet-19 at 448, itself from the 224 run) is resolved first. A
    source that cannot run (missing data) raises its `DatasetMissingError`."""
    source = cfg.model.get("backbone_from") if "model" in cfg else None
    if not source or cfg.model.get("backbone_weights"):
        return cfg
    known = cfg.paper.get("experiments") or {}
    if source not in known:
        raise ConfigError(f"model.backbone_from={source!r} is not an experiment of {paper}.{choices(source, known)}")
    if source in _chain or source == cfg.get("experiment"):
        raise ConfigError(f"model.backbone_from: {' -> '.join([*_chain, source])} goes round in a circle.")
    result = (results or {}).get(source)
    if result is None or "not_run" in result:
        try:
            upstream = compose(paper, profile, [*overrides, f"experiment={source}"])
            chain = (*_chain, cfg.get("experiment") or "adhoc")
            result = run(with_backbone_from(upstream, paper, profile, overrides, results, chain))
        except DatasetMissingError as exc:
            raise DatasetMissingError(f"{source}, whose network model.backbone_from starts this run from, cannot "
                                      f"run: {exc}") from exc
    weights = Path(result["run_dir"]) / "backbone_weights.pt"
    if not weights.is_file():
        save_weights(result, weights)
    chosen = [f"experiment={cfg.experiment}"] if cfg.get("experiment") else []
    return compose(paper, profile, [*overrides, *chosen, f"model.backbone_weights={weights}"])


def run_all(paper: str, profile: str, overrides: Sequence[str] = (), experiments: Sequence[str] | None = None,
            *, verbose: bool = True) -> dict[str, dict]:
    """Run (or load) every experiment the paper lists for `profile` (or those named). Each data
    set is looked for once: when it is missing, every run that reads it is `not_run` with the
    same reason. Where other seeds of an experiment have finished (`run ... -m seed=0,1,2`), its
    result carries them all as `seed_runs` (by seed), and the tables show their mean ± std."""
    names = list(experiments) if experiments is not None else None
    if names is None:
        names = list(compose(paper, profile, overrides).paper.plan[profile])
    with each_dataset_looked_for_once():
        return _run_each(paper, profile, overrides, names, verbose)


def _run_each(paper: str, profile: str, overrides: Sequence[str], names: list[str], verbose: bool) -> dict[str, dict]:
    results = {}
    for name in names:
        cfg = compose(paper, profile, [*overrides, f"experiment={name}"])
        try:
            cfg = with_backbone_from(cfg, paper, profile, overrides, results)
            result = run(cfg)
        except DatasetMissingError as exc:
            # One absent dataset (say ImageNet) leaves its rows `not_run`; the others still run.
            results[name] = {"experiment": name, "profile": profile, "dataset": cfg.data.name, "not_run": str(exc)}
            if verbose:
                print(f"{name:<22} not run: {str(exc).splitlines()[0]}")
            continue
        seeds = seed_results(cfg)
        if len(seeds) > 1:  # other seeds of this experiment were run: the tables show their mean ± std
            result = {**result, "seed_runs": seeds}
        results[name] = result
        if verbose:
            how = "cached" if result["cached"] else f"trained {result['steps']} steps in {result['train_seconds']:.0f} s"
            score = (f"test mAP {result['test_map']:.2f}%" if "test_map" in result
                     else f"test top-1 error {result['test_top1_err']:.2f}%")
            if "test_map_50" in result:
                score += f", AP@0.5 {result['test_map_50']:.2f}%"
            if "untrained_map" in result:  # the detector's chance level, before its detection training
                chance = result.get("untrained_map_50", result["untrained_map"])
                score += f" (untrained: {chance:.2f}%)"
            print(f"{name:<22} {how:<28} {score}")
            if result.get("skipped_files"):  # unreadable images, dropped from training and testing
                skipped = result["skipped_files"]
                print(f"{'':<22} skipped {len(skipped)} unreadable file(s): {', '.join(skipped[:3])}"
                      + (" ..." if len(skipped) > 3 else ""))
    return results
