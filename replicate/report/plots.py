"""Figures: training curves drawn from the runs' CSV logs, error against multiply-adds (MobileNet
V1 Fig. 4), and detection figures (images with their ground-truth boxes, dashed, and the
detections, solid, with class and score, as the R-CNN and YOLO papers show their results)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from matplotlib.patches import Rectangle

from ..runs.store import load_curves, load_detections


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


def error_vs_mult_adds(points: pd.DataFrame) -> plt.Figure:
    """MobileNet V1 Fig. 4: test top-1 error against multiply-adds (log scale), one line per
    sweep (`points` as `sizes.trained_mult_adds` gives them: sweep, mult_adds_m, test_top1_err)."""
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for sweep, group in points.groupby("sweep"):
        ax.plot(group["mult_adds_m"], group["test_top1_err"], "o-", label=sweep)
    ax.set_xscale("log")
    ax.set_xlabel("million mult-adds (log scale)")
    ax.set_ylabel("test top-1 error (%)")
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    return fig


def _numpy_image(image) -> np.ndarray:
    """[H, W, 3] floats in [0, 1] from a uint8 or float [3, H, W] tensor (or an [H, W, 3] array)."""
    if isinstance(image, torch.Tensor):
        array = image.detach().cpu().as_subclass(torch.Tensor)
        array = (array.float() / 255.0 if array.dtype == torch.uint8 else array.float()).permute(1, 2, 0).numpy()
    else:
        array = np.asarray(image, dtype=np.float64)
        array = array / 255.0 if array.max() > 1.0 else array
    if array.shape[-1] == 1:
        array = np.repeat(array, 3, axis=-1)
    return np.clip(array, 0.0, 1.0)


def _rows(item: Mapping | None) -> list[tuple[np.ndarray, int, float | None, bool]]:
    if item is None:
        return []
    boxes = torch.as_tensor(item.get("boxes", torch.zeros(0, 4))).detach().cpu().float().reshape(-1, 4).numpy()
    labels = torch.as_tensor(item.get("labels", torch.zeros(0))).detach().cpu().reshape(-1).tolist()
    scores = item.get("scores")
    scores = [None] * len(labels) if scores is None else torch.as_tensor(scores).detach().cpu().reshape(-1).tolist()
    difficult = item.get("difficult")
    difficult = [False] * len(labels) if difficult is None else torch.as_tensor(difficult).cpu().reshape(-1).tolist()
    return [(b, int(lab), s, bool(d)) for b, lab, s, d in zip(boxes, labels, scores, difficult)]


def draw_detections(images: Sequence, predictions: Sequence[Mapping] | None = None,
                    targets: Sequence[Mapping] | None = None, class_names: Sequence[str] | None = None, *,
                    score_threshold: float = 0.5, ncols: int = 4, panel_size: float = 3.0,
                    titles: Sequence[str] | None = None) -> tuple[plt.Figure, pd.DataFrame]:
    """A grid of `images`, each with its ground truth (dashed white; difficult ones dotted) and
    the detections scoring at least `score_threshold` (solid, one colour per class, labelled
    "name score"). Boxes are in each image's pixel coordinates.

    Returns the figure and its data in long form (image, kind, label, class, score, x1, y1, x2, y2).
    """
    n = len(images)
    ncols = max(1, min(ncols, n))
    nrows = max(1, -(-n // ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(panel_size * ncols, panel_size * nrows), squeeze=False)
    colours = plt.get_cmap("tab20")
    rows = []

    def name(label: int) -> str:
        return class_names[label - 1] if class_names is not None and 1 <= label <= len(class_names) else str(label)

    for index, ax in enumerate(axes.flat):
        ax.axis("off")
        if index >= n:
            continue
        ax.imshow(_numpy_image(images[index]))
        if titles is not None:
            ax.set_title(titles[index], fontsize=8)
        for box, label, _, difficult in _rows(targets[index] if targets is not None else None):
            x1, y1, x2, y2 = (float(v) for v in box)
            ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, ec="white", lw=1.2,
                                   ls=":" if difficult else "--"))
            rows.append({"image": index, "kind": "truth", "label": label, "class": name(label), "score": None,
                         "x1": x1, "y1": y1, "x2": x2, "y2": y2})
        for box, label, score, _ in _rows(predictions[index] if predictions is not None else None):
            if score is not None and score < score_threshold:
                continue
            x1, y1, x2, y2 = (float(v) for v in box)
            colour = colours(label % 20)
            ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, ec=colour, lw=1.6))
            text = name(label) if score is None else f"{name(label)} {score:.2f}"
            ax.text(x1, y1, text, fontsize=6, color="black", va="bottom",
                    bbox={"facecolor": colour, "alpha": 0.8, "pad": 1, "lw": 0})
            rows.append({"image": index, "kind": "detection", "label": label, "class": name(label), "score": score,
                         "x1": x1, "y1": y1, "x2": x2, "y2": y2})
    fig.tight_layout()
    columns = ["image", "kind", "label", "class", "score", "x1", "y1", "x2", "y2"]
    return fig, pd.DataFrame(rows, columns=columns)


def draw_dataset_detections(dataset, indices: Sequence[int], predictions: Sequence[Mapping] | None = None,
                            **kwargs) -> tuple[plt.Figure, pd.DataFrame]:
    """`draw_detections` for images `indices` of a detection data set (read as stored, so boxes
    in original coordinates, as `DetectionTask.detections` holds them; `predictions[i]` belongs
    to `indices[i]`)."""
    images = [dataset.read_image(i) for i in indices]
    targets = [dataset.target(i) for i in indices]
    kwargs.setdefault("class_names", getattr(dataset, "class_names", None))
    return draw_detections(images, predictions, targets, **kwargs)


def run_detections(dataset, result: Mapping, *, keep: int | None = 5, score_threshold: float = 0.0, count: int = 8,
                   ncols: int = 4) -> tuple[plt.Figure, pd.DataFrame]:
    """The detection papers' figures of example detections (YOLOv1 Fig. 6, for one) for a
    finished run: its first `count` test images of `dataset` (the run's test set as stored), with
    the ground truth and each image's `keep` best detections (all with None) scoring at least
    `score_threshold`, as `draw_dataset_detections` draws them."""
    shown = load_detections(result)[:count]
    if keep is not None:
        shown = [{key: value[:keep] for key, value in d.items()} for d in shown]
    return draw_dataset_detections(dataset, list(range(count)), shown, score_threshold=score_threshold, ncols=ncols)
