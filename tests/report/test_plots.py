"""Figures (`report.plots`): MobileNet V1's Fig. 4 and a finished detector's example detections."""

import matplotlib.pyplot as plt
import pandas as pd
import torch

from replicate.report.plots import error_vs_mult_adds, run_detections


def test_error_against_mult_adds_draws_one_line_per_sweep_on_a_log_axis():
    points = pd.DataFrame({"sweep": ["width", "width", "resolution"], "experiment": ["a", "b", "c"],
                           "mult_adds_m": [10.0, 40.0, 25.0], "test_top1_err": [30.0, 20.0, 24.0]})
    fig = error_vs_mult_adds(points)
    ax = fig.axes[0]
    assert ax.get_xscale() == "log" and sorted(line.get_label() for line in ax.get_lines()) == ["resolution", "width"]
    width = next(line for line in ax.get_lines() if line.get_label() == "width")
    assert width.get_xdata().tolist() == [10.0, 40.0] and width.get_ydata().tolist() == [30.0, 20.0]
    plt.close(fig)


class Canvases:
    """A detection set as stored: grey images, one truth box each."""

    class_names = ["shirt", "bag"]

    def read_image(self, index):
        return torch.full((3, 32, 32), 100, dtype=torch.uint8)

    def target(self, index):
        return {"boxes": torch.tensor([[2.0, 2.0, 20.0, 20.0]]), "labels": torch.tensor([1])}


def test_run_detections_draws_each_images_best_detections(tmp_path):
    detections = [{"boxes": torch.tensor([[1.0, 1.0, 9.0, 9.0]] * 4), "scores": torch.tensor([0.9, 0.6, 0.4, 0.2]),
                   "labels": torch.tensor([1, 2, 2, 1])} for _ in range(10)]
    torch.save(detections, tmp_path / "detections.pt")
    result = {"run_dir": str(tmp_path)}
    fig, data = run_detections(Canvases(), result, keep=3, count=8)
    assert len(fig.axes) == 8 and set(data["image"]) == set(range(8))
    assert ((data["kind"] == "detection").sum(), (data["kind"] == "truth").sum()) == (8 * 3, 8)
    plt.close(fig)
    fig, data = run_detections(Canvases(), result, keep=None, score_threshold=0.5, count=2)
    shown = data[data["kind"] == "detection"]
    assert len(shown) == 2 * 2 and set(shown["class"]) == {"shirt", "bag"}  # the two scoring 0.5 or more
    plt.close(fig)
