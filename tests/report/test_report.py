"""Reported-vs-measured tables: statuses, tolerances, checks, written reports, scoreboard."""

import json
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from replicate.config import compose
from replicate.errors import ConfigError, ExactTableMismatch, FloorNotMet
from replicate.report import Report, write_scoreboard
from replicate.report.cells import COLUMNS, rounding_tolerance


@pytest.fixture
def cfg(tmp_path):
    return compose("resnet", "reduced", [f"paths.report_dir={tmp_path / 'reports'}",
                                         f"paths.count_dir={tmp_path / 'counts'}"])


def fake_result(name, err, train_err=None, profile="reduced", dataset="fashion_mnist"):
    return {"experiment": name, "test_top1_err": err, "test_top5_err": err / 5, "train_err_final": train_err,
            "profile": profile, "dataset": dataset, "steps": 160, "run_dir": "/nonexistent"}


@pytest.mark.parametrize("value,tol", [(0.27, 0.005), (1.7, 0.05), (19.4, 0.05), (11.3, 0.05), (3.0, 0.5)])
def test_rounding_tolerance(value, tol):
    assert rounding_tolerance(value) == pytest.approx(tol)


def test_exact_tables_match_the_paper(cfg):
    report = Report(cfg)
    for table in ("table1", "table6_params"):
        frame = report.exact(table)
        assert list(frame.columns) == COLUMNS
        assert frame["status"].isin(["match", "explained"]).all(), frame
    assert report.exact("table1").set_index("row").loc["ResNet-34", "status"] == "explained"  # 3.664, printed 3.6


def test_show_regenerates_a_table_by_its_kind_and_returns_its_view(cfg):
    """`Report.show(id, results)`: the notebooks' one call per table, dispatched on the conf's kind."""
    report = Report(cfg)
    shown = report.show("table6_params")
    assert report.frames["table6_params"]["status"].isin(["match", "explained"]).all()
    assert shown.data.equals(report.formatted("table6_params"))
    results = {"resnet20_cifar10": fake_result("resnet20_cifar10", 12.0, 10.0)}
    report.show("table6_error", results)
    assert set(report.frames["table6_error"]["status"]) == {"reduced", "not_run"}
    report.show("fig6", results)  # a claim
    assert report.frames["fig6"]["status"].eq("not_run").all()
    with pytest.raises(ConfigError, match="no table 'table99'"):
        report.show("table99")


def test_counts_are_kept_on_disk_and_recounted_when_the_model_code_changes(cfg, monkeypatch):
    from replicate import models
    from replicate.measure import counts

    first = Report(cfg).exact("table6_params")
    assert len(list(Path(cfg.paths.count_dir).glob("*.json"))) == len(first)

    def no_build(*args, **kwargs):
        raise AssertionError("a stored count is read, not recounted")

    monkeypatch.setattr(models, "build", no_build)
    again = Report(cfg).exact("table6_params")
    assert again["ours"].tolist() == first["ours"].tolist()
    monkeypatch.setattr(counts, "code_fingerprint", lambda entries: "edited")  # another model code
    with pytest.raises(AssertionError, match="recounted"):
        Report(cfg).exact("table6_params")


def test_a_wrong_paper_value_is_off_and_fails_the_check(cfg):
    OmegaConf.update(cfg, "paper.tables.0.cells.2.paper", 4.1, force_add=False)  # ResNet-50: 3.858 counted
    report = Report(cfg)
    frame = report.exact("table1")
    assert frame.set_index("row").loc["ResNet-50", "status"] == "off"
    with pytest.raises(ExactTableMismatch, match="ResNet-50"):
        report.check()


def test_an_explained_difference_is_shown_and_held_to_its_bound(cfg):
    """ResNet-50 counts 3.858 against a (wrong) 4.1: explained by an expected delta of -0.24 with
    its default bound (half a unit of the delta's last digit), off once the gap strays from it."""
    OmegaConf.update(cfg, "paper.tables.0.cells.2.paper", 4.1, force_add=False)
    OmegaConf.update(cfg, "paper.tables.0.cells.2.explained", {"reason": "a reason", "delta": -0.24}, merge=False)
    report = Report(cfg)
    row = report.exact("table1").set_index("row").loc["ResNet-50"]
    assert row["status"] == "explained" and "a reason (expected delta -0.24 ± 0.005)" in row["note"]
    assert row["delta"] < -0.2
    assert report.counts()["explained"] == 2  # and ResNet-34's truncation
    OmegaConf.update(cfg, "paper.tables.0.cells.2.explained", {"reason": "a reason", "delta": -0.3}, merge=False)
    report = Report(cfg)
    assert report.exact("table1").set_index("row").loc["ResNet-50", "status"] == "off"
    with pytest.raises(ExactTableMismatch, match="ResNet-50.*expected delta -0.3 ± 0.05, not met"):
        report.check()


@pytest.mark.parametrize("entry", ["a reason", {"reason": "a reason"}, {"delta": 0.1}])
def test_an_explanation_needs_a_reason_and_an_expected_delta(cfg, entry):
    OmegaConf.update(cfg, "paper.tables.0.cells.2.paper", 4.1, force_add=False)
    OmegaConf.update(cfg, "paper.tables.0.cells.2.explained", entry, merge=False)
    with pytest.raises(ConfigError, match="explained must be"):
        Report(cfg).exact("table1")


def test_a_tolerance_wider_than_the_printed_rounding_needs_the_texts_approximation(cfg):
    OmegaConf.update(cfg, "paper.tables.0.tolerance", 0.3, force_add=False)  # would make 4.09 "match" 3.8
    with pytest.raises(ConfigError, match="wider than the printed rounding 0.05 of 1.8"):
        Report(cfg).exact("table1")
    OmegaConf.update(cfg, "paper.tables.0.approximation", "about", force_add=True)
    assert (Report(cfg).exact("table1")["status"] == "match").all()


def test_a_table_measured_on_other_profiles_is_not_run_here_even_with_results(cfg):
    index = [t.id for t in cfg.paper.tables].index("table6_error")
    OmegaConf.update(cfg, f"paper.tables.{index}.measured_on", ["full"], force_add=True)
    OmegaConf.update(cfg, f"paper.tables.{index}.not_run_because", {}, merge=False, force_add=True)
    results = {"resnet20_cifar10": fake_result("resnet20_cifar10", 25.0)}
    with pytest.raises(ConfigError, match="not_run_because.reduced"):
        Report(cfg).measured("table6_error", results)
    OmegaConf.update(cfg, f"paper.tables.{index}.not_run_because", {"reduced": "full profile only"}, merge=False)
    frame = Report(cfg).measured("table6_error", results)
    assert (frame["status"] == "not_run").all() and frame["note"].str.endswith("full profile only").all()


def test_measured_reduced_cells_are_reduced_and_missing_ones_not_run(cfg):
    report = Report(cfg)
    frame = report.measured("table6_error", {"resnet20_cifar10": fake_result("resnet20_cifar10", 25.0)}).set_index("row")
    assert frame.loc["ResNet-20", "status"] == "reduced" and frame.loc["ResNet-20", "delta"] == pytest.approx(16.25)
    assert frame.loc["ResNet-32", "status"] == "not_run"
    assert "plan.reduced" in frame.loc["ResNet-32", "note"]
    missing = {"resnet56_cifar10": {"experiment": "resnet56_cifar10", "not_run": "CIFAR-10 is missing: get it"}}
    frame = report.measured("table6_error", missing).set_index("row")
    assert frame.loc["ResNet-56", "note"] == "CIFAR-10 is missing: get it"


def test_measured_full_cells_compare_with_tolerance(tmp_path):
    cfg = compose("resnet", "full", [f"paths.report_dir={tmp_path}"])
    results = {"resnet20_cifar10": fake_result("resnet20_cifar10", 8.9, profile="full", dataset="cifar10"),
               "resnet56_cifar10": fake_result("resnet56_cifar10", 8.0, profile="full", dataset="cifar10")}
    frame = Report(cfg).measured("table6_error", results).set_index("row")
    assert frame.loc["ResNet-20", "status"] == "match"  # 8.9 vs 8.75, tolerance 0.5
    assert frame.loc["ResNet-56", "status"] == "off"  # 8.0 vs 6.97


def test_claims(cfg, tmp_path):
    def runs(profile):
        return {"plain20_cifar10": fake_result("plain20_cifar10", 30, 30.0, profile),
                "plain56_cifar10": fake_result("plain56_cifar10", 80, 85.0, profile),
                "resnet20_cifar10": fake_result("resnet20_cifar10", 25, 25.0, profile),
                "resnet56_cifar10": fake_result("resnet56_cifar10", 40, 45.0, profile)}

    full = Report(compose("resnet", "full", [f"paths.report_dir={tmp_path}"]))
    frame = full.claims("fig6", runs("full"))
    assert frame["status"].tolist() == ["match", "off", "match"]
    assert frame["ours"].tolist() == ["holds", "does not hold", "holds"]
    reduced = Report(cfg)
    frame = reduced.claims("fig6", runs("reduced"))
    assert frame["status"].tolist() == ["reduced"] * 3  # not comparable to the paper at this scale
    assert frame["ours"].tolist() == ["holds", "does not hold", "holds"]
    assert "ResNet-56 trains no worse than ResNet-20: does not show here" in reduced.claim_summary("fig6")


PLANNED = ("resnet20_cifar10", "resnet56_cifar10", "plain20_cifar10", "plain56_cifar10")


def planned_results(**changes):
    results = {name: fake_result(name, 10.0) for name in PLANNED}
    for name, change in changes.items():
        results[name] = {**results[name], **change}
    return results


def test_floors(cfg):
    report = Report(cfg)
    report.measured("table6_error", planned_results())
    report.check()
    report.measured("table6_error", planned_results(resnet20_cifar10={"test_top1_err": 50.0}))
    with pytest.raises(FloorNotMet, match="resnet20_cifar10: test accuracy 50.00% < floor 60%"):
        report.check()


@pytest.mark.parametrize("change,message", [
    ({"not_run": "data/x is missing"}, "resnet56_cifar10: planned, but not run: data/x is missing"),
    ({"steps": 0}, "resnet56_cifar10: planned, but trained 0 steps"),
    ({"test_top1_err": float("nan")}, "resnet56_cifar10: test accuracy nan%"),
    ({"test_top1_err": None}, "resnet56_cifar10: test accuracy nan%"),
])
def test_a_planned_run_that_did_not_run_or_train_or_scored_nan_fails_the_check(cfg, change, message):
    report = Report(cfg)
    report.measured("table6_error", planned_results(resnet56_cifar10=change))
    with pytest.raises(FloorNotMet, match=message.replace("(", r"\(").replace(")", r"\)")):
        report.check()


def test_a_planned_run_missing_from_the_report_fails_the_check(cfg):
    report = Report(cfg)
    report.measured("table6_error", {k: v for k, v in planned_results().items() if k != "plain56_cifar10"})
    with pytest.raises(FloorNotMet, match="plain56_cifar10: planned, but the report has no result"):
        report.check()


def test_every_planned_run_has_a_floor_and_every_floor_a_planned_run(tmp_path):
    with pytest.raises(ConfigError, match=r"floors.reduced must name exactly.*no floor for \['plain56_cifar10'\]"):
        compose("resnet", "reduced", ["~paper.floors.reduced.plain56_cifar10"])
    with pytest.raises(ConfigError, match=r"names \['resnet110_cifar10'\], which plan.reduced does not name"):
        compose("resnet", "reduced", ["+paper.floors.reduced.resnet110_cifar10=0.5"])
    with pytest.raises(ConfigError, match="fractions in"):
        compose("resnet", "reduced", ["paper.floors.reduced.plain56_cifar10=70"])


def test_detectors_are_floored_on_map_and_coco_runs_on_ap50():
    from replicate.report.cells import floor_score

    assert floor_score({"test_map": 40.0}) == ("test mAP", 0.4)
    assert floor_score({"test_map": 30.0, "test_map_50": 60.0}) == ("test AP@0.5", 0.6)


def test_write_is_complete_and_updates_the_scoreboard(cfg, tmp_path):
    report = Report(cfg)
    report.exact("table1")
    report.measured("table2", {})
    out = report.write()
    assert out == tmp_path / "reports" / "resnet" / "reduced"
    assert {p.name for p in out.iterdir()} == {"table1.csv", "table2.csv", "tables.md", "metrics.json", "summary.json"}
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["cells"] == {"match": 3, "off": 0, "explained": 2, "reduced": 0, "not_run": 4, "cells": 9}
    # DVC's metrics: the same keys for every paper, so that `dvc metrics show` lines them up.
    summary = json.loads((out / "summary.json").read_text())
    assert summary == {**metrics["cells"], "headline": {"run": None, "measure": None, "score": None}}
    assert "| resnet  | reduced   |       9 |       3 |" in (tmp_path / "reports" / "scoreboard.md").read_text()
    assert not list(out.parent.glob(".*"))  # no partial folders left behind
    md = (out / "tables.md").read_text()
    assert "ResNet-152" in md and "params (M)" in md


def test_a_published_report_has_its_dvc_metric_and_curves_beside_it(cfg, tmp_path):
    """dvc.yaml declares `<profile>.summary.json` (metric), `<profile>.curves/` (plots, one line
    per series) and `<profile>.figures/` (the figures as images) beside each report folder: DVC
    cannot declare them inside the stage's output."""
    import matplotlib.pyplot as plt
    import pandas as pd

    report = Report(cfg)
    long = pd.DataFrame([{"panel": "p", "experiment": e, "step": s, "curve": c, "error": 10.0 * s + (c == "test")}
                         for e in ("plain20_cifar10", "resnet20_cifar10") for c in ("train", "test") for s in (10, 20)])
    report.add_figure("fig6_curves", plt.figure(), long)
    report.exact("table1")
    report.results["resnet20_cifar10"] = fake_result("resnet20_cifar10", 30.0)
    out = report.write()
    curves = pd.read_csv(out.with_name("reduced.curves") / "fig6_curves.csv")
    assert list(curves.columns) == ["step", "series", "error"]
    assert set(curves["series"]) == {"plain20_cifar10 train", "plain20_cifar10 test", "resnet20_cifar10 train",
                                     "resnet20_cifar10 test"}
    assert curves.set_index(["series", "step"]).loc[("resnet20_cifar10 test", 20), "error"] == 201.0
    assert [p.name for p in out.with_name("reduced.curves").iterdir()] == ["fig6_curves.csv"]  # not table1.csv
    figures = out.with_name("reduced.figures")  # every figure, as an image plot
    assert [p.name for p in figures.iterdir()] == ["fig6_curves.png"]
    assert (figures / "fig6_curves.png").read_bytes() == (out / "fig6_curves.png").read_bytes()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["headline"] == {"run": "resnet20_cifar10", "measure": "test accuracy", "score": 0.7}
    assert json.loads(out.with_name("reduced.summary.json").read_text()) == summary
    assert not list(out.parent.glob(".*"))  # nothing half-written left


def test_scoreboard_with_nothing(tmp_path):
    assert "no reports yet" in write_scoreboard(tmp_path).read_text()


def test_exact_cells_may_set_their_own_model_kwargs_input_and_quantity(cfg):
    """Per-cell knobs (MobileNet's width and resolution tables, GoogLeNet's per-layer rows)."""
    OmegaConf.set_struct(cfg, False)
    cfg.paper.tables = [{
        "id": "cells", "title": "t", "kind": "exact", "metric": "m", "unit": "", "source": "test",
        "quantity": "mparams", "input_size": [3, 32, 32], "tolerance": 0.0005,
        "cells": [
            {"row": "ResNet-20", "model": "resnet20", "paper": 0.270},
            {"row": "ResNet-20, 100 classes", "model": "resnet20", "paper": 0.276,
             "model_kwargs": {"num_classes": 100}},
            {"row": "ResNet-20 at 16 px", "model": "resnet20", "paper": 10.14, "input_size": [3, 16, 16],
             "quantity": "mmacs", "tolerance": "rounding"},
            # Worked by hand: 32->64 and 64->64 3x3 convolutions, then two blocks of two 64->64, with BN.
            {"row": "stage 3", "model": "resnet20", "module": "stages.2", "paper": 203.52, "quantity": "kparams",
             "tolerance": 0.005},
        ]}]
    frame = Report(cfg).exact("cells").set_index("row")
    assert (frame["status"] == "match").all(), frame[["ours", "paper"]]


def test_an_unknown_quantity_names_the_choices(cfg):
    OmegaConf.set_struct(cfg, False)
    cfg.paper.tables = [{"id": "t", "title": "t", "kind": "exact", "source": "s", "quantity": "flops",
                         "input_size": [3, 32, 32], "tolerance": 0.1, "cells": [{"row": "r", "model": "resnet20", "paper": 1}]}]
    with pytest.raises(Exception, match="gmacs"):
        Report(cfg).exact("t")


def test_a_floor_too_close_to_the_untrained_score_fails_the_check(cfg):
    """Detectors record their untrained score: a floor under 5x it could not tell learning from none."""
    OmegaConf.update(cfg, "paper.floors.reduced.resnet20_cifar10", 0.05, merge=False)
    untrained = {"untrained_map": 2.0, "test_map": 60.0}
    report = Report(cfg)
    report.results.update(planned_results(resnet20_cifar10=untrained))
    with pytest.raises(FloorNotMet, match="floor 5% is not 5x the untrained network's test mAP 2.00%"):
        report.check()
    report.results.update(planned_results(resnet20_cifar10={**untrained, "untrained_map": 0.9}))
    report.check()


def test_view_shows_whole_notes_no_index_formatted_numbers_and_a_coloured_status(cfg):
    report = Report(cfg)
    report.exact("table1")
    note = "a note much longer than pandas' fifty-character column limit, which must be shown whole"
    report.frames["table1"].loc[0, "note"] = note
    html = report.view("table1").to_html()
    assert note in html and "#d4edda" in html  # match: green
    assert "row_heading" not in html  # no index column
    assert "3.6" in html and "3.6000000" not in html
    assert report.formatted("table1").loc[0, "note"] == note


def test_the_floor_table_shows_each_planned_run_its_chance_row_and_the_detection_target(cfg, tmp_path):
    """`Report.floors`: every planned run, its score, the untrained network's, the floor, and for a
    detector the profile's target; a detector under the target but over its floor is shown so."""
    results = planned_results(resnet20_cifar10={"untrained_map": 1.0, "test_map": 30.0},
                              resnet56_cifar10={"untrained_map_50": 0.5, "test_map_50": 55.0, "test_map": 20.0},
                              plain20_cifar10={"test_top1_err": 50.0},
                              plain56_cifar10={"not_run": "data missing"})
    OmegaConf.update(cfg, "paper.floors.reduced.resnet20_cifar10", 0.2, merge=False)
    OmegaConf.update(cfg, "paper.floors.reduced.resnet56_cifar10", 0.2, merge=False)
    report = Report(cfg)
    shown = report.floors(results).to_html()  # the view: no index, blanks, the status coloured
    assert "None" not in shown and "background-color: #fff3cd" in shown and "row_heading" not in shown
    table = report.floor_frame.set_index("run")
    assert cfg.profile.detection_target == 0.5
    assert table.loc["resnet20_cifar10", ["metric", "ours", "untrained", "target", "status"]].tolist() == [
        "test mAP", 30.0, 1.0, 50.0, "below target"]
    assert table.loc["resnet56_cifar10", ["metric", "ours", "untrained", "status"]].tolist() == [
        "test AP@0.5", 55.0, 0.5, "pass"]
    assert table.loc["plain20_cifar10", "status"] == "below floor"
    assert table["target"].isna()["plain20_cifar10"]  # a classifier has no detection target
    assert table.loc["plain56_cifar10", "status"] == "not_run"
    assert table.loc["resnet20_cifar10", "floor"] == pytest.approx(20.0)
    written = report.write(tmp_path / "out")
    assert (written / "floors.csv").read_text().splitlines()[0] == "run,metric,ours,untrained,floor,target,steps,status"
    assert "Planned runs against their floors" in (written / "tables.md").read_text()
