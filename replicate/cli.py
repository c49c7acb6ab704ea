"""`python -m replicate ...`: the notebooks' runs from a shell, for clusters and for DVC stages.

    python -m replicate run paper=resnet experiment=resnet110_cifar10 profile=full trainer.devices=8
    python -m replicate notebook resnet --profile reduced      # papermill, reports/resnet/reduced/
    python -m replicate data fashion_mnist                    # make a dataset ready (DVC stages)
    python -m replicate scoreboard                            # reports/scoreboard.md
    python -m replicate groups                                # config groups, papers' experiments
    python -m replicate config paper=resnet experiment=resnet20_cifar10   # the resolved config, its hash
    python -m replicate evaluate paper=resnet experiment=resnet20_cifar10 --checkpoint best

(`replicate ...` is the same command, installed as a console script.)
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from .config import PROJECT_ROOT, compose, compose_defaults, groups
from .errors import ReplicateError


def _paper_profile(items: list[str], command: str) -> tuple[str, str, list[str]]:
    """`paper=<id>` and `profile=<name>` taken out of a command line's key=value overrides."""
    paper, profile, overrides = None, "reduced", []
    for item in items:
        key, _, value = item.partition("=")
        if key == "paper":
            paper = value
        elif key == "profile":
            profile = value
        else:
            overrides.append(item)
    if paper is None:
        raise ReplicateError(f"Name the paper: python -m replicate {command} paper=<id> experiment=<name> [overrides]. "
                             f"Papers: {', '.join(groups()['paper'])}.")
    return paper, profile, overrides


def _config(args: argparse.Namespace) -> None:
    from omegaconf import OmegaConf

    from .config import config_hash

    paper, profile, overrides = _paper_profile(args.overrides, "config")
    cfg = compose(paper, profile, overrides)
    shown = cfg if args.all else {k: v for k, v in cfg.items() if k != "paper"}
    print(OmegaConf.to_yaml(OmegaConf.create(OmegaConf.to_container(OmegaConf.create(shown), resolve=True))), end="")
    if cfg.experiment is not None:
        from .runs import run_dir

        print(f"# config hash {config_hash(cfg)}; run folder {run_dir(cfg)}")


def _evaluate(args: argparse.Namespace) -> None:
    from .runs import evaluate

    paper, profile, overrides = _paper_profile(args.overrides, "evaluate")
    print(json.dumps(evaluate(compose(paper, profile, overrides), args.checkpoint), indent=2))


def sweep(overrides: list[str]) -> list[list[str]]:
    """Hydra's multirun syntax for `run -m`: each `key=a,b,c` (outside brackets) is swept, and
    every combination is one list of overrides, in order (`seed=0,1,2` gives three runs)."""
    import itertools

    choices_per_item = []
    for item in overrides:
        key, sep, value = item.partition("=")
        swept = sep and "," in value and not value.lstrip().startswith(("[", "{"))
        choices_per_item.append([f"{key}={v.strip()}" for v in value.split(",")] if swept else [item])
    return [list(combination) for combination in itertools.product(*choices_per_item)]


SWEPT_METRICS = ("test_top1_err", "test_top5_err", "train_err_final", "test_map", "test_map_50", "test_map_75")


def sweep_summary(results: list[dict]) -> dict[str, str]:
    """Mean ± sample standard deviation of each metric over a sweep's runs (the papers' "6.61 ± 0.16")."""
    from .report.cells import mean_std

    summary = {}
    for key in SWEPT_METRICS:
        values = [r[key] for r in results if isinstance(r.get(key), (int, float))]
        spread = mean_std(values)
        if spread is not None:
            summary[key] = f"{spread[0]:.2f} ± {spread[1]:.2f} (n={len(values)})"
    return summary


def _run(args: argparse.Namespace) -> None:
    from .runs import run, with_backbone_from

    paper, profile, overrides = _paper_profile(args.overrides, "run")
    combinations = sweep(overrides) if args.multirun else [overrides]
    results = []
    for chosen in combinations:
        cfg = with_backbone_from(compose(paper, profile, chosen), paper, profile,
                                 [o for o in chosen if not o.startswith("experiment=")])
        results.append(run(cfg, force=args.force, log_cached=args.log_cached))
    if not args.multirun:
        print(json.dumps(results[0], indent=2))
        return
    print(json.dumps({"runs": [{"overrides": c, **r} for c, r in zip(combinations, results)],
                      "mean_std": sweep_summary(results)}, indent=2))


def execute_notebook(paper: str, profile: str, overrides: list[str], report_root: Path, echo: bool = False) -> Path:
    """Execute notebooks/<paper>.ipynb with papermill into reports/<paper>/<profile>/. With `echo`,
    what the kernel prints (each run's progress lines, run_all's summary) is passed through to
    this process's stdout and stderr as it comes: a DVC stage or a cluster job shows progress.

    Everything is written into a staging folder first and renamed into place only when the
    notebook succeeds; on failure the staging folder is kept as `<profile>.failed/` (for the
    executed notebook and its traceback) and no `<profile>/` folder is left to look finished.
    """
    import papermill

    from .report.files import publish, write_scoreboard

    notebook = PROJECT_ROOT / "notebooks" / f"{paper}.ipynb"
    compose(paper, profile, overrides)  # fail fast, before a kernel starts, on a bad name or override
    final = report_root / paper / profile
    staging = final.with_name(f".{profile}.partial")
    failed = final.with_name(f"{profile}.failed")
    for stale in (staging, failed):
        shutil.rmtree(stale, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        papermill.execute_notebook(
            str(notebook), str(staging / notebook.name),
            parameters={"profile": profile, "overrides": list(overrides), "report_dir": str(staging.resolve())},
            cwd=str(PROJECT_ROOT), progress_bar=False, log_output=False,
            stdout_file=sys.stdout if echo else None, stderr_file=sys.stderr if echo else None,
        )
    except BaseException:
        shutil.rmtree(final, ignore_errors=True)
        staging.rename(failed)
        raise
    publish(staging, final)
    write_scoreboard(report_root)
    return final


def params_overrides(params_file: Path, paper: str, profile: str) -> list[str]:
    """The overrides params.yaml holds for `papers.<paper>.<profile>` (what DVC tracks for the stage)."""
    from omegaconf import OmegaConf

    params = OmegaConf.load(params_file)
    return list(OmegaConf.select(params, f"papers.{paper}.{profile}.overrides", default=[]) or [])


def forget_runs(paper: str, profile: str, overrides: list[str], experiments: list[str] | None = None) -> list[Path]:
    """Delete the run folders of `experiments` (default: every run the paper plans for `profile`)
    under these overrides, so that the next execution trains them again; a folder another process
    is writing is refused (`runs.store.hold`). Returns the folders deleted."""
    import shutil

    from .runs.store import hold, run_dir

    names = experiments or list(compose(paper, profile, overrides).paper.plan[profile])
    deleted = []
    for name in names:
        directory = run_dir(compose(paper, profile, [*overrides, f"experiment={name}"]))
        with hold(directory, force=True):
            if directory.exists():
                shutil.rmtree(directory)
                deleted.append(directory)
    return deleted


def _notebook(args: argparse.Namespace) -> None:
    root = Path(args.report_root) if args.report_root else PROJECT_ROOT / "reports"
    overrides = params_overrides(Path(args.params), args.paper, args.profile) if args.params else []
    if args.force is not None:  # `--force` may have swallowed the overrides that follow it
        args.overrides += [item for item in args.force if "=" in item]
        args.force = [item for item in args.force if "=" not in item]
    if args.force is not None:
        for folder in forget_runs(args.paper, args.profile, overrides + args.overrides, args.force or None):
            print(f"--force: deleted {folder}")
    out = execute_notebook(args.paper, args.profile, overrides + args.overrides, root, echo=True)
    print(f"{args.paper} ({args.profile}): reports in {out}")


def _data(args: argparse.Namespace) -> None:
    from .data import prepare

    data_dir = Path(args.data_dir) if args.data_dir else Path(compose_defaults().paths.data_dir)
    folder = prepare(args.name, data_dir, download=args.download)
    if args.fingerprint:
        from .runs.datasets import fingerprint, write_json

        write_json({args.name: fingerprint(folder)}, Path(args.fingerprint))
    print(folder)


def _datasets(args: argparse.Namespace) -> None:
    from .runs.datasets import paper_datasets, write_fingerprints

    overrides = params_overrides(Path(args.params), args.paper, args.profile) if args.params else []
    if args.write is None:
        print("\n".join(paper_datasets(args.paper, args.profile, overrides)))
        return
    data_dir = Path(args.data_dir) if args.data_dir else Path(compose_defaults(args.profile).paths.data_dir)
    stamps = write_fingerprints(args.paper, args.profile, Path(args.write), data_dir, overrides)
    print(f"{args.paper} ({args.profile}): {', '.join(stamps)} ready; fingerprints in {args.write}")


def _schema(args: argparse.Namespace) -> None:
    from .config.schema import write_reference

    print(write_reference())


def _scoreboard(args: argparse.Namespace) -> None:
    from .report.files import write_scoreboard

    print(write_scoreboard(Path(args.report_root) if args.report_root else PROJECT_ROOT / "reports"))


def _groups(args: argparse.Namespace) -> None:
    for group, options in groups().items():
        print(f"{group}: {', '.join(options)}")
    for paper in groups()["paper"]:
        cfg = compose(paper, "reduced")
        print(f"experiment (paper={paper}): {', '.join(cfg.paper.get('experiments') or [])}")


def _run_epilog() -> str:
    names = groups()
    lines = ["config groups (choose with group=option; any key with key=value):"]
    lines += [f"  {group:<9} {', '.join(options)}" for group, options in names.items()]
    return "\n".join([
        *lines, "",
        "examples:",
        "  python -m replicate run paper=resnet experiment=resnet20_cifar10",
        "  python -m replicate run paper=resnet experiment=resnet20_cifar10 recipe.max_steps=60 seed=1",
        "  python -m replicate run paper=resnet experiment=resnet110_cifar10 profile=full trainer.devices=8",
        "  python -m replicate run -m paper=resnet experiment=resnet20_cifar10 seed=0,1,2   # mean ± std",
        "  python -m replicate run paper=yolov2 experiment=yolov2_voc0712 logger=wandb",
        "  python -m replicate config paper=resnet experiment=resnet20_cifar10   # what would run",
        "  python -m replicate groups            # each paper's experiments",
    ])


def main(argv: list[str] | None = None) -> int:
    prog = "python -m replicate" if sys.argv[0].endswith("__main__.py") else Path(sys.argv[0]).name
    parser = argparse.ArgumentParser(prog=prog, description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--verbose", action="store_true", help="show the traceback of an error, not only its line")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="train/evaluate one experiment (cached by config hash)",
                       description="Train and test one experiment, cached under the hash of its resolved config in "
                                   "runs/<paper>/<experiment>/<hash>/ (an interrupted run resumes exactly).",
                       epilog=_run_epilog(), formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("overrides", nargs="*", help="paper=<id> experiment=<name> [profile=reduced|full] [key=value ...]")
    p.add_argument("--force", action="store_true", help="train again even if a finished result exists")
    p.add_argument("-m", "--multirun", action="store_true",
                   help="sweep: key=a,b,c runs every combination (e.g. seed=0,1,2) and prints mean ± std")
    p.add_argument("--log-cached", action="store_true",
                   help="with logger=wandb: upload a cached run's stored metrics to its W&B run")
    p.set_defaults(func=_run)

    p = sub.add_parser("evaluate", help="test a trained classifier's last or best checkpoint (or a file) again")
    p.add_argument("overrides", nargs="*", help="paper=<id> experiment=<name> [profile=reduced|full] [key=value ...]")
    p.add_argument("--checkpoint", default="last", help="last (default), best, or a checkpoint file")
    p.set_defaults(func=_evaluate)

    p = sub.add_parser("config", help="print the resolved config of a paper or experiment (and its hash)")
    p.add_argument("overrides", nargs="*", help="paper=<id> [experiment=<name>] [profile=reduced|full] [key=value ...]")
    p.add_argument("--all", action="store_true", help="include the paper's tables and reported values")
    p.set_defaults(func=_config)

    p = sub.add_parser("notebook", help="execute a paper's notebook with papermill into reports/")
    p.add_argument("paper")
    p.add_argument("--profile", default="reduced")
    p.add_argument("--report-root", default=None)
    p.add_argument("--params", default=None, help="params.yaml whose papers.<paper>.<profile>.overrides are applied first")
    p.add_argument("--force", nargs="*", metavar="EXPERIMENT", default=None,
                   help="train again: the named experiments, or every run the paper plans when none is named")
    p.add_argument("overrides", nargs="*")
    p.set_defaults(func=_notebook)

    p = sub.add_parser("data", help="make a dataset ready under data/ (fashion_mnist, cifar10, cifar100, imagenet)")
    p.add_argument("name")
    p.add_argument("--download", action="store_true", help="download where a network exists (torchvision)")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--fingerprint", default=None, metavar="FILE",
                   help="also write the folder's fingerprint (files and bytes per split and class folder) to FILE, "
                        "as the DVC datasets stage does")
    p.set_defaults(func=_data)

    p = sub.add_parser("datasets", help="the data sets a paper's plan reads at a profile; with --write, make them "
                                        "ready (downloading where allowed) and write their fingerprints (DVC)")
    p.add_argument("paper")
    p.add_argument("--profile", default="reduced")
    p.add_argument("--params", default=None, help="params.yaml whose papers.<paper>.<profile>.overrides are applied first")
    p.add_argument("--write", default=None, metavar="FILE", help="prepare each data set and write the fingerprints here")
    p.add_argument("--data-dir", default=None)
    p.set_defaults(func=_datasets)

    p = sub.add_parser("schema", help="write conf/README.md, the reference of conf/paper/<id>.yaml's keys")
    p.set_defaults(func=_schema)

    p = sub.add_parser("scoreboard", help="write reports/scoreboard.md from every report present")
    p.add_argument("--report-root", default=None)
    p.set_defaults(func=_scoreboard)

    p = sub.add_parser("groups", help="list config groups, their options and each paper's experiments")
    p.set_defaults(func=_groups)

    # Overrides may follow options (`notebook resnet --profile full trainer.devices=8`), which
    # argparse does not assign to a positional already passed: take the key=value leftovers.
    args, extra = parser.parse_known_args(argv)
    if extra:
        if not hasattr(args, "overrides") or not all("=" in item and not item.startswith("-") for item in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides = [*args.overrides, *extra]
    try:
        args.func(args)
    except (ReplicateError, PermissionError) as exc:
        if args.verbose:
            raise
        if isinstance(exc, PermissionError):
            exc = f"{exc.filename or exc}: permission denied. Give this user read and write access to it, or " \
                  "point REPLICATE_DATA_DIR / REPLICATE_RUN_DIR / REPLICATE_REPORT_DIR elsewhere."
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0
