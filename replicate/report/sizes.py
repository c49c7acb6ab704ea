"""Counted sizes the notebooks show beside the exact tables, not compared cell by cell with the
paper: MobileNet's multipliers against their ideal quadratic cost (V1 Secs. 3.3-3.4), our
MobileNets against torchvision's (V2 Table 4, V3 Table 3), the multiply-adds of the runs behind
MobileNet V1's Fig. 4 (the runs of its Tables 6-7), and RDNet's concatenating and additive
layouts (Sec. 3.1's pilot study).

`complexity` is a counter with `Report.complexity`'s signature, `(name, input_size, **kwargs) ->
Complexity`: pass `report.complexity`, which counts each network once."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import pandas as pd
import torch
import torchvision.models
from omegaconf import DictConfig

from .. import config, models, runs
from ..measure.complexity import Complexity, count
from .architecture import bn_params
from .report import Report

Counter = Callable[..., Complexity]
IMAGENET = (3, 224, 224)


def multiplier_ratios(complexity: Counter, name: str = "mobilenet_v1", widths: Sequence[float] = (0.75, 0.5, 0.25),
                      resolutions: Sequence[int] = (192, 160, 128), base: int = 224) -> pd.DataFrame:
    """MobileNet V1 Secs. 3.3-3.4 (Eqs. 6-7): the multiply-adds of each width multiplier alpha and
    each resolution `base` -> rho * `base`, as a fraction of the full network's, beside the ideal
    alpha^2 and rho^2 ("roughly quadratically")."""
    full = complexity(name, (3, base, base)).macs
    rows = [{"multiplier": f"alpha = {a}", "ideal": a**2,
             "counted": complexity(name, (3, base, base), width_mult=a).macs / full} for a in widths]
    rows += [{"multiplier": f"rho = {s}/{base}", "ideal": (s / base) ** 2,
              "counted": complexity(name, (3, s, s)).macs / full} for s in resolutions]
    return pd.DataFrame(rows)


def versus_torchvision(complexity: Counter, name: str, torchvision_name: str | None = None, *,
                       torchvision_kwargs: Mapping | None = None, input_size: Sequence[int] = IMAGENET,
                       **kwargs) -> dict:
    """One of our networks (registry `name`, built with `kwargs`) counted beside torchvision's
    (`torchvision_name`, default the same name, built with `torchvision_kwargs`, default `kwargs`):
    parameters with and without batch norm (the MobileNet papers count them without: V2 Table 4,
    V3 Table 3) and multiply-adds in millions. Both are built on the meta device."""
    with torch.device("meta"):
        ours = models.build(name, **kwargs)
        theirs = torchvision.models.get_model(torchvision_name or name,
                                              **(kwargs if torchvision_kwargs is None else torchvision_kwargs))
    c, t = complexity(name, tuple(input_size), **kwargs), count(theirs, tuple(input_size))
    return {"ours params": c.params, "ours params without BN": c.params - bn_params(ours),
            "ours MAdds (M)": round(c.macs / 1e6, 2), "torchvision params": t.params,
            "torchvision MAdds (M)": round(t.macs / 1e6, 2)}


def table_runs(report: Report, tables: Mapping[str, str]) -> dict[str, list[str]]:
    """The experiments of each measured table in `tables` (a label per table id), in the table's
    row order: the sweeps of MobileNet V1 Fig. 4 are the runs of Tables 6 (width) and 7
    (resolution)."""
    return {label: [cell["experiment"] for cell in report.spec(table_id)["cells"]]
            for label, table_id in tables.items()}


def trained_mult_adds(paper: str, profile: str, overrides: Sequence[str], results: Mapping[str, dict],
                      sweeps: Mapping[str, Sequence[str]]) -> pd.DataFrame:
    """MobileNet V1 Fig. 4's points: for each sweep (a label and its experiments, e.g. the widths
    of Table 6), each run's multiply-adds in millions, counted at the input it was trained on
    (`data.channels`, `data.image_size` and `data.num_classes` of its composed config), beside
    its test top-1 error. Runs that did not run are left out."""
    points = []
    for sweep, names in sweeps.items():
        for name in names:
            if "not_run" in results.get(name, {"not_run": True}):
                continue
            run_cfg = config.compose(paper, profile, [*overrides, f"experiment={name}"])
            with torch.device("meta"):
                net = runs.build_model(run_cfg)
            size = (run_cfg.data.channels, run_cfg.data.image_size, run_cfg.data.image_size)
            points.append({"sweep": sweep, "experiment": name, "mult_adds_m": count(net, size).macs / 1e6,
                           "test_top1_err": results[name]["test_top1_err"]})
    return pd.DataFrame(points, columns=["sweep", "experiment", "mult_adds_m", "test_top1_err"])


def rdnet_mix_sizes(complexity: Counter, run_cfg: DictConfig, name: str = "rdnet_tiny",
                    mixes: Sequence[str] = ("concat", "add")) -> pd.DataFrame:
    """DenseNets Reloaded Sec. 3.1 (the pilot study's two shortcuts): parameters and multiply-adds
    of `name` with each `mix`, at 224 px and 1000 classes, and at the input of `run_cfg` (its
    channels, image size and classes, with its model's other knobs)."""
    data = run_cfg.data
    size = (data.channels, data.image_size, data.image_size)
    knobs = {k: v for k, v in run_cfg.model.items() if k not in ("name", "mix", "drop_path_rate")}
    settings = [("224 px, 1000 classes", IMAGENET, {}),
                (f"this profile's input {size}", size,
                 {**knobs, "num_classes": data.num_classes, "in_channels": data.channels})]
    rows = []
    for label, input_size, kwargs in settings:
        for mix in mixes:
            c = complexity(name, input_size, mix=mix, **kwargs)
            rows.append({"setting": label, "mix": mix, "params (M)": c.mparams, "multiply-adds (M)": c.macs / 1e6})
    return pd.DataFrame(rows)
