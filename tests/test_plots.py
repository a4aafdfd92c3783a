"""Figures from hand-made records: every kind is drawn when there is data, and skipped when there is none."""

from __future__ import annotations

from pathlib import Path

from ckd.cli import main
from ckd.plots import plot_study
from tests.fixtures.study import write_run


def _history(offset: float, nested: bool = True) -> list:
    """History entries as ckd.train writes them ({"dev": {split: metrics}}), or the flat {"dev": metrics}."""
    entries = []
    for s in (10, 20, 30):
        dev = {"accuracy": 0.5 + s / 100 + offset}
        entries.append({"step": s, "epoch": s / 30, "train_loss": 1.0 / s + offset, "loss_terms": {},
                        "dev": {"dev": dev} if nested else dev})
    return entries


def _full_study(root: Path) -> Path:
    for seed in (1, 2):
        for student, params, layers, hidden in (("2L-128", 5_000_000, 2, 128), ("4L-256", 20_000_000, 4, 256)):
            for method, acc in (("kd", 0.80), ("ckd", 0.82)):
                write_run(root, "sst2", student, method, seed, {"dev": {"accuracy": acc + seed / 100}},
                          params=params, layers=layers, hidden=hidden, history=_history(seed / 100),
                          timing={"wall_s": 10.0 * layers + seed, "eval_ms_per_example": 0.1 * layers})
        for weight, acc in ((10, 0.81), (100, 0.79)):
            write_run(root, "sst2", "4L-256", f"ckd-wr{weight}", seed, {"dev": {"accuracy": acc}}, method_base="ckd",
                      overrides={"weights": {"wr_pair": weight}}, params=20_000_000, layers=4, hidden=256)
    write_run(root, "sst2", "bert-base", "finetune", 0, {"dev": {"accuracy": 0.92}}, teacher=True,
              params=110_000_000, layers=12, hidden=768, history=_history(0.1, nested=False))
    return root


def test_plots_written(tmp_path: Path):
    study = _full_study(tmp_path / "toy")
    messages: list[str] = []
    written = plot_study(study, log=messages.append)
    names = {p.name for p in written}
    for stem in ("ablation_4L-256", "score_vs_size", "sweep_4L-256_ckd_weights.wr_pair", "curves_sst2", "cost_sst2"):
        assert {f"{stem}.png", f"{stem}.pdf"} <= names, (stem, sorted(names))
    for path in written:
        data = path.read_bytes()
        assert len(data) > 1000
        assert data.startswith(b"\x89PNG" if path.suffix == ".png" else b"%PDF")
    assert messages == []


def test_nothing_to_plot_is_skipped(tmp_path: Path):
    study = tmp_path / "bare"
    write_run(study, "rte", "3L-384", "kd", 1, {"dev": {"accuracy": 0.6}}, params=None)
    messages: list[str] = []
    assert plot_study(study, log=messages.append) == []
    assert not (study / "plots").exists() or not any((study / "plots").iterdir())
    assert len(messages) == 5 and all("skipped" in m for m in messages)


def test_cli_plots(tmp_path: Path, capsys):
    study = _full_study(tmp_path / "toy")
    out = tmp_path / "figs"
    assert main(["plots", "--study-dir", str(study), "--out", str(out), "--score", "best"]) == 0
    assert str(out / "score_vs_size.pdf") in capsys.readouterr().out
    assert (out / "score_vs_size.png").stat().st_size > 0


def test_dev_curve_reads_both_history_shapes():
    from ckd.plots import _curve, _dev_value

    for nested in (True, False):
        record = {"task": "sst2", "metrics": None, "history": _history(0.0, nested=nested)}
        assert _curve([record], _dev_value) == ([10, 20, 30], [60.0, 70.0, 80.0], [0.0, 0.0, 0.0])


def test_figures_leave_out_what_the_tables_leave_out(tmp_path: Path):
    """With the study's expected list, records of runs it no longer plans (a dropped task) and stale
    records (another config_fingerprint) are drawn in no figure, as `ckd aggregate` leaves them out."""
    import json

    study = _full_study(tmp_path / "toy")
    for seed in (1, 2):  # an old task the study file no longer lists
        write_run(study, "rte", "2L-128", "kd", seed, {"dev": {"accuracy": 0.6}}, params=5_000_000, layers=2,
                  hidden=128, history=_history(0.0), timing={"wall_s": 5.0})
    planned = [{"task": "sst2", "student": s, "method": m, "seed": seed}
               for s in ("2L-128", "4L-256") for m in ("kd", "ckd", "ckd-wr10", "ckd-wr100") for seed in (1, 2)
               if s == "4L-256" or not m.startswith("ckd-")]
    planned.append({"task": "sst2", "student": "bert-base", "method": "teacher", "seed": 0,
                    "config_fingerprint": "sha256:another"})  # the teacher's record is stale
    expected = tmp_path / "expected.json"
    expected.write_text(json.dumps(planned))
    assert {"curves_rte.png", "cost_rte.png"} <= {p.name for p in plot_study(study, tmp_path / "all", log=print)}
    messages: list[str] = []
    names = {p.name for p in plot_study(study, tmp_path / "planned", log=messages.append, expected=expected)}
    assert "curves_sst2.png" in names and not any("rte" in name for name in names)
    assert any("left out 2 record(s) of runs the study no longer plans" in m for m in messages)
    assert any("left out 1 stale record(s)" in m for m in messages)
    from ckd.records import study_records
    from ckd.tables.common import group_records

    shown = study_records(study, expected).records
    assert ("teacher", "bert-base", "teacher") not in group_records(shown)
    assert len(shown) == 12  # sst2: 2 students x (kd, ckd) x 2 seeds + 2 ckd-wr variants x 2 seeds


def test_workflow_draws_and_tabulates_the_same_records(tmp_path: Path):
    """The workflow's `plots` job passes the study's expected list, as its `aggregate` job does (so the
    figures leave out stale and unplanned records as the tables do), and the aggregate job writes the
    settings file the notebooks read."""
    import re

    from tests.conftest import snakemake

    planned = snakemake("-n", "-p", "--config", f"results_dir={tmp_path}")
    assert planned.returncode == 0, planned.stdout[-3000:]
    commands = {m.group(1): m.group(0) for m in re.finditer(r"\bckd (plots|aggregate) --study-dir .*$", planned.stdout, re.M)}
    expected = f"--expected {tmp_path}/smoke/expected.json "
    assert expected in commands["aggregate"] and expected in commands["plots"], commands
    assert f"{tmp_path}/smoke/tables/aggregate.json" in planned.stdout
