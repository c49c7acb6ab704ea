"""Quant-Noise's tables and plots (Fan, Stock et al., ICLR 2021): accuracy against size from the
compressed runs (`runs.compression.compress_all`), the claims' margins against the test set's
noise, and the exact size tables counted from a network's definition."""

from __future__ import annotations

from collections.abc import Mapping

import pandas as pd
from omegaconf import DictConfig, OmegaConf

from ..errors import ConfigError
from ..quant import networks
from ..quant.noise import METHODS
from ..quant.size import model_size
from .cells import cell_tolerance

def accuracy_size_frame(cfg: DictConfig, results: Mapping[str, dict]) -> pd.DataFrame:
    """One line per row: its label, method, noise, size (MB), ratio and test top-1 error."""
    lines = []
    for row, spec in cfg.paper.compression.rows.items():
        r = results.get(row) or {}
        lines.append({"row": row, "label": spec.get("label", row), "method": spec.method,
                      "quant_noise": spec.train != cfg.paper.compression.rows["uncompressed"].train
                      if "uncompressed" in cfg.paper.compression.rows else None,
                      "size_mb": r.get("size_mb"), "compression_ratio": r.get("compression_ratio"),
                      "test_top1_err": r.get("test_top1_err"),
                      "test_top1_acc": None if r.get("test_top1_err") is None else 100.0 - r["test_top1_err"],
                      "not_run": r.get("not_run")})
    return pd.DataFrame(lines)


def claim_margins(cfg: DictConfig, results: Mapping[str, dict], claim_id: str) -> str:
    """Per claim row: the margin in test error between its two runs, next to one standard error
    of a test error measured on the rows' test images (binomial), so that a margin smaller than
    the measurement's noise is read as such."""
    spec = next(c for c in cfg.paper.claims if c.id == claim_id)
    lines = []
    for cell in spec.cells:
        a, b = results.get(cell.lhs), results.get(cell.rhs)
        if not a or not b or "not_run" in a or "not_run" in b:
            lines.append(f"- {cell.row}: not run.")
            continue
        margin = b[spec.quantity] - a[spec.quantity]
        n = a.get("test_images")
        err = (a[spec.quantity] + b[spec.quantity]) / 200.0
        se = 100.0 * (err * (1 - err) / n) ** 0.5 if n else float("nan")
        verdict = "within" if abs(margin) < se else "beyond"
        lines.append(f"- {cell.row}: {cell.lhs} is {margin:+.1f} points better than {cell.rhs}; one standard error "
                     f"of a test error on {n} images is {se:.1f} points, so the margin is {verdict} the noise.")
    return "\n".join(lines)


def accuracy_size_plot(data: pd.DataFrame):
    """Test top-1 accuracy against size (MB, log scale): filled markers with Quant-Noise."""
    import matplotlib.pyplot as plt

    figure, ax = plt.subplots(figsize=(6.4, 4.2))
    done = data.dropna(subset=["size_mb", "test_top1_acc"])
    markers = {"none": "o", "int8": "s", "int4": "D", "ipq": "^", "ipq_int8": "v"}
    for line in done.itertuples():
        filled = bool(line.quant_noise)
        ax.scatter(line.size_mb, line.test_top1_acc, marker=markers.get(line.method, "o"), s=55,
                   facecolors=f"C{list(markers).index(line.method)}" if filled else "none",
                   edgecolors=f"C{list(markers).index(line.method)}", label=line.label)
    ax.set_xscale("log")
    ax.set_xlabel("model size (MB, log scale)")
    ax.set_ylabel("test top-1 accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    figure.tight_layout()
    plt.close(figure)
    return figure


def sizes_plot(sizes: pd.DataFrame, network: str):
    """Size of `network` under each method (bars, MB)."""
    import matplotlib.pyplot as plt

    figure, ax = plt.subplots(figsize=(5.2, 3.0))
    ax.bar(sizes["method"], sizes["size (MB)"], color="C0")
    for x, (mb, ratio) in enumerate(zip(sizes["size (MB)"], sizes["ratio"])):
        ax.annotate(f"{mb:.2f} MB\nx{ratio:.1f}", (x, mb), ha="center", va="bottom", fontsize=7)
    ax.set_ylabel("size (MB)")
    ax.set_title(f"{network}: size by quantization scheme", fontsize=9)
    ax.set_ylim(0, sizes["size (MB)"].max() * 1.2)
    figure.tight_layout()
    plt.close(figure)
    return figure


def size_rows(report, table_id: str) -> pd.DataFrame:
    """An exact size table (kind `exact`, `network: torchvision:<name>` or a registry name):
    each cell's `method` size in MB, or its parameter count (`quantity: params`), computed from
    the network's definition and compared with the cell's reference value. Per-method sizes
    and ratios of the network are shown beside it (`Report.extra_columns`)."""
    spec = report.spec(table_id)
    model = networks.build_meta(spec["network"], **spec.get("model_kwargs", {}))
    quant = OmegaConf.to_container(report.cfg.quant, resolve=True)
    kwargs = dict(granularity=quant["scalar"]["granularity"], block_sizes=quant["pq"]["block_sizes"],
                  n_centroids=quant["pq"]["n_centroids"])
    rows = []
    for cell in spec["cells"]:
        quantity = cell.get("quantity", spec.get("quantity"))
        if quantity == "params":
            ours = float(sum(p.numel() for p in model.parameters()))
        elif quantity == "size_mb":
            ours = model_size(model, cell["method"], **kwargs).mb
        else:
            raise ConfigError(f"table {table_id}: quantity {quantity!r} must be params or size_mb.")
        tol = cell_tolerance(spec, cell)
        delta = ours - cell["paper"]
        rows.append(report.cell_row(spec, cell, ours=ours, delta=delta, tolerance=tol,
                                status="match" if abs(delta) <= tol + 1e-12 else "off"))
    extra = []
    for method in METHODS:
        size = model_size(model, method, **kwargs)
        extra.append({"method": method, "size (MB)": round(size.mb, 3), "ratio": round(size.ratio, 2)})
    frame = report.store(table_id, rows)
    report.extra_columns.pop(table_id, None)
    return frame, pd.DataFrame(extra)


__all__ = ["accuracy_size_frame", "accuracy_size_plot", "claim_margins", "size_rows", "sizes_plot"]
