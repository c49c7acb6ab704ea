"""Figures drawn from the runs' CSV logs."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
import pandas as pd

from .experiment import load_curves


def training_curves(results: Mapping[str, dict], panels: Sequence[tuple[str, Sequence[str]]],
                    ) -> tuple[plt.Figure, pd.DataFrame]:
    """Fig. 6 style: per panel, training error (thin, dashed) and test error (bold) by iteration.

    Returns the figure and its data in long form (panel, experiment, step, curve, error).
    """
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4), sharey=True, squeeze=False)
    rows = []
    for ax, (title, names) in zip(axes[0], panels):
        for i, name in enumerate(names):
            if name not in results or "not_run" in results[name]:  # no curve for a run not made
                continue
            curves = load_curves(results[name])
            colour = f"C{i}"
            for column, curve, style in (("train/err", "train", dict(lw=1, ls="--")),
                                         ("val/top1_err", "test", dict(lw=2.2))):
                if column not in curves:
                    continue
                points = curves[["step", column]].dropna()
                ax.plot(points["step"], points[column], color=colour, label=f"{name.split('_')[0]} {curve}", **style)
                rows += [{"panel": title, "experiment": name, "step": int(s), "curve": curve, "error": float(e)}
                         for s, e in zip(points["step"], points[column])]
        ax.set_title(title)
        ax.set_xlabel("iteration")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    axes[0][0].set_ylabel("error (%)")
    fig.tight_layout()
    return fig, pd.DataFrame(rows, columns=["panel", "experiment", "step", "curve", "error"])
