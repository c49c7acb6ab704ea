"""Counted sizes shown beside the exact tables (`report.sizes`)."""

import pytest
import torch

from replicate import models
from replicate.config import compose
from replicate.measure.complexity import Complexity, count
from replicate.report import Report, sizes


def counter(name, input_size, **kwargs):
    """What `Report.complexity` counts, without its cache."""
    with torch.device("meta"):
        return count(models.build(name, **kwargs), input_size)


def test_multiplier_ratios_set_each_count_beside_its_ideal_square():
    def fake(name, input_size, width_mult=1.0):  # a cost exactly quadratic in width and resolution
        return Complexity(params=0, macs=int(1e6 * width_mult**2 * input_size[1] * input_size[2]))

    table = sizes.multiplier_ratios(fake, widths=(0.5,), resolutions=(112,)).set_index("multiplier")
    assert list(table.index) == ["alpha = 0.5", "rho = 112/224"]
    assert table["counted"].tolist() == pytest.approx([0.25, 0.25]) and table["ideal"].tolist() == [0.25, 0.25]


def test_mobilenet_v1_resolutions_cost_rho_squared_and_thin_widths_more_than_alpha_squared():
    table = sizes.multiplier_ratios(counter).set_index("multiplier")
    resolutions = table[table.index.str.startswith("rho")]
    assert (resolutions["counted"] / resolutions["ideal"]).sub(1).abs().max() < 0.004  # "to within 0.4%"
    widths = table[table.index.str.startswith("alpha")]
    assert (widths["counted"] > widths["ideal"]).all() and (widths["counted"] / widths["ideal"]).is_monotonic_increasing


def test_our_mobilenet_v2_counts_as_torchvisions():
    row = sizes.versus_torchvision(counter, "mobilenet_v2", width_mult=1.4)
    assert row["ours params"] == row["torchvision params"] and row["ours MAdds (M)"] == row["torchvision MAdds (M)"]
    assert row["ours params"] - row["ours params without BN"] > 0


def test_torchvision_is_built_with_its_own_kwargs_where_ours_has_more():
    small = sizes.versus_torchvision(counter, "mobilenet_v3_small")
    wide = sizes.versus_torchvision(counter, "mobilenet_v3_small", torchvision_kwargs={}, last_channels=1280)
    assert wide["ours params"] - small["ours params"] == 403_712  # arXiv v1's 1280-channel head
    assert wide["torchvision params"] == small["torchvision params"] == small["ours params"]


def test_trained_mult_adds_counts_each_run_at_its_own_input(isolated_paths):
    results = {"mobilenet_v1_100_224": {"test_top1_err": 20.0}, "mobilenet_v1_050_224": {"test_top1_err": 25.0},
               "mobilenet_v1_100_128": {"not_run": "no data"}}
    sweeps = {"width": ["mobilenet_v1_100_224", "mobilenet_v1_050_224"], "resolution": ["mobilenet_v1_100_128"]}
    points = sizes.trained_mult_adds("mobilenet_v1", "reduced", [], results, sweeps)
    # The run that did not run is left out.
    assert points["experiment"].tolist() == ["mobilenet_v1_100_224", "mobilenet_v1_050_224"]
    run_cfg = compose("mobilenet_v1", "reduced", ["experiment=mobilenet_v1_100_224"])
    data = run_cfg.data
    with torch.device("meta"):
        net = models.build("mobilenet_v1", num_classes=data.num_classes, in_channels=data.channels)
    trained_at = (data.channels, data.image_size, data.image_size)
    assert points["mult_adds_m"][0] == pytest.approx(count(net, trained_at).macs / 1e6)
    assert points["mult_adds_m"][1] < points["mult_adds_m"][0] and points["test_top1_err"].tolist() == [20.0, 25.0]


def test_rdnet_layouts_are_sized_alike_at_both_inputs(isolated_paths):
    report = Report(compose("rdnet", "reduced"))
    run_cfg = compose("rdnet", "reduced", ["experiment=rdnet_tiny_add_imagenet"])
    table = sizes.rdnet_mix_sizes(report.complexity, run_cfg)
    assert table[["setting", "mix"]].values.tolist()[:2] == [["224 px, 1000 classes", "concat"],
                                                              ["224 px, 1000 classes", "add"]]
    for _, setting in table.groupby("setting"):
        concat, add = setting.set_index("mix")["params (M)"][["concat", "add"]]
        assert add == pytest.approx(concat, rel=0.02)  # sized to the same parameter count (Sec. 3's pilot)
    assert table["params (M)"].iloc[0] == report.complexity("rdnet_tiny", (3, 224, 224), mix="concat").mparams


def test_table_runs_lists_each_tables_experiments_in_row_order(isolated_paths):
    report = Report(compose("mobilenet_v1", "reduced"))
    sweeps = sizes.table_runs(report, {"width": "table6_accuracy", "resolution": "table7_accuracy"})
    assert sweeps == {"width": [f"mobilenet_v1_{w}_224" for w in ("100", "075", "050", "025")],
                      "resolution": [f"mobilenet_v1_100_{s}" for s in (224, 192, 160, 128)]}
