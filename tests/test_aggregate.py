"""Tables from hand-made run records: expected numbers worked out by hand in the comments."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pandas as pd
import pytest

from ckd.aggregate import aggregate_study
from ckd.cli import main
from ckd.errors import CkdError
from ckd.records import load_predictions, load_records, records_frame
from tests.fixtures.markdown import compact_markdown
from tests.fixtures.study import write_run

LABELS = [0, 1, 0, 1, 1, 0, 1, 0]


def _preds(correct: bool) -> dict:
    wrong = [1 - y for y in LABELS]
    return {"dev": {"labels": LABELS, "final": LABELS if correct else wrong, "best": LABELS if correct else wrong}}


@pytest.fixture()
def study(tmp_path: Path) -> Path:
    root = tmp_path / "toy"
    # kd on RTE: 60, 62, 64 -> mean 62.0, sample std sqrt((4+0+4)/2) = 2.0
    for seed, acc in ((1, 0.60), (2, 0.62), (3, 0.64)):
        write_run(root, "rte", "3L-384", "kd", seed, {"dev": {"accuracy": acc}}, predictions=_preds(False))
    # ckd on RTE: 65, 66, 70 -> mean 67.0, std sqrt((4+1+9)/2) = sqrt(7) = 2.6458
    for seed, acc in ((1, 0.65), (2, 0.66), (3, 0.70)):
        write_run(root, "rte", "3L-384", "ckd", seed, {"dev": {"accuracy": acc}}, predictions=_preds(True))
    # kd on MRPC, seeds 1 and 2 only: F1 80, 84 -> 82.0 ± sqrt(8) = 2.83; accuracy 75, 77 -> 76.0
    for seed, f1, acc in ((1, 0.80, 0.75), (2, 0.84, 0.77)):
        write_run(root, "mrpc", "3L-384", "kd", seed, {"dev": {"f1": f1, "accuracy": acc}})
    (root / "runs" / "mrpc" / "3L-384" / "kd" / "seed3" / "checkpoints").mkdir(parents=True)  # started, failed
    # ablation variant, one seed, no predictions.json: 63.0 (1), Δ vs ckd = 63 - 67 = -4.0
    write_run(root, "rte", "3L-384", "ckd-wr", 1, {"dev": {"accuracy": 0.63}}, method_base="ckd",
              overrides={"window": 5})
    # teacher: RTE 70, MRPC F1 88 -> avg 79.0
    write_run(root, "rte", "bert-base", "finetune", 0, {"dev": {"accuracy": 0.70}}, teacher=True,
              params=110_000_000, layers=12, hidden=768)
    write_run(root, "mrpc", "bert-base", "finetune", 0, {"dev": {"f1": 0.88, "accuracy": 0.85}}, teacher=True,
              params=110_000_000, layers=12, hidden=768)
    return root


def _row(frame: pd.DataFrame, student: str, method: str) -> pd.Series:
    return frame[(frame["student"] == student) & (frame["method"] == method)].iloc[0]


def test_main_table_hand_computed(study: Path):
    out = study / "tables"
    aggregate_study(study, n_boot=200)
    main_csv = pd.read_csv(out / "main.csv")
    assert list(main_csv["method"]) == ["teacher", "kd", "ckd", "ckd-wr"]
    kd = _row(main_csv, "3L-384", "kd")
    assert kd["RTE"] == pytest.approx(62.0) and kd["RTE_std"] == pytest.approx(2.0) and kd["RTE_n"] == 3
    assert kd["MRPC"] == pytest.approx(82.0) and kd["MRPC_std"] == pytest.approx(math.sqrt(8)) and kd["MRPC_n"] == 2
    assert kd["avg"] == pytest.approx(72.0)  # (82 + 62) / 2
    ckd = _row(main_csv, "3L-384", "ckd")
    assert ckd["RTE"] == pytest.approx(67.0) and ckd["RTE_std"] == pytest.approx(math.sqrt(7))
    assert pd.isna(ckd["MRPC"]) and ckd["MRPC_n"] == 0  # missing, not zero
    assert pd.isna(ckd["avg"]) and "incomplete" in ckd["avg_note"]
    assert _row(main_csv, "bert-base", "teacher")["avg"] == pytest.approx(79.0)
    assert set(main_csv["score"]) == {"final"}

    assert "Score: final" in compact_markdown((out / "main.md").read_text())


def test_column_order_and_missing_cell(study: Path):
    aggregate_study(study, n_boot=200)
    md = compact_markdown((study / "tables" / "main.md").read_text())
    header = next(line for line in md.splitlines() if line.startswith("| Model"))
    assert header == "| Model | Params | Method | RTE | MRPC | GLUE avg |"  # paper order: RTE, then MRPC
    assert "| 3L-384 | 17.4M | kd | 62.0 ± 2.0 (3) | 82.0 ± 2.8 (2) | 72.0 |" in md
    assert "| 3L-384 | 17.4M | ckd | 67.0 ± 2.6 (3) | – | – (incomplete: 1/2) |" in md
    assert "| 3L-384 | 17.4M | ckd-wr | 63.0 (1) | – |" in md
    tex = (study / "tables" / "main.tex").read_text()
    assert r"62.0 $\pm$ 2.0 (3)" in tex and "\\begin{tabular}" in tex


def test_paper_delta(study: Path):
    aggregate_study(study, n_boot=200)
    delta = pd.read_csv(study / "tables" / "paper_delta.csv")
    kd_rte = delta[(delta["method"] == "kd") & (delta["column"] == "RTE")].iloc[0]
    assert kd_rte["paper"] == pytest.approx(67.5) and kd_rte["delta"] == pytest.approx(62.0 - 67.5)
    assert kd_rte["paper_student"] == "6L-768" and kd_rte["student_size"] == "3L-384"
    assert "kd_6layer_mean" in kd_rte["source"]
    # the KD paper row reports MRPC accuracy, so ours is compared on accuracy too: 76.0 - 82.8
    kd_mrpc = delta[(delta["method"] == "kd") & (delta["column"] == "MRPC")].iloc[0]
    assert kd_mrpc["metric"] == "accuracy" and kd_mrpc["delta"] == pytest.approx(76.0 - 82.8)
    teacher_rte = delta[(delta["method"] == "teacher") & (delta["column"] == "RTE")].iloc[0]
    assert teacher_rte["delta"] == pytest.approx(70.0 - 69.3)
    assert "ckd-wr" not in set(delta["method"])  # variants have no paper row
    md = compact_markdown((study / "tables" / "paper_delta.md").read_text())
    assert "|  | 6L-768 | KD (task-specific) | paper | 67.5 | 82.8 | [2] |" in md
    assert "| 3L-384 | 3L-384 | kd | ours | 62.0 ± 2.0 (3) | 76.0 ± 1.4 (2)† |  |" in md
    assert "|  |  |  | Δ ours − paper | −5.5 | −6.8 |  |" in md


def test_ablation_and_significance(study: Path):
    aggregate_study(study, n_boot=500)
    ablation = pd.read_csv(study / "tables" / "ablation.csv")
    wr = ablation[(ablation["method"] == "ckd-wr") & (ablation["column"] == "RTE")].iloc[0]
    assert wr["delta_vs_ckd"] == pytest.approx(-4.0) and wr["changes"] == "window=5"
    assert "63.0 (1) (Δ −4.0)" in compact_markdown((study / "tables" / "ablation.md").read_text())

    sig = pd.read_csv(study / "tables" / "significance.csv")
    ckd = sig[(sig["method"] == "ckd") & (sig["column"] == "RTE")].iloc[0]
    # ckd right on every example, kd wrong on every one: Δ = +100 in every draw
    assert ckd["diff"] == pytest.approx(100.0) and ckd["p_bootstrap"] == 0.0 and ckd["n_seeds"] == 3
    assert ckd["p_signflip"] == pytest.approx(1 / 8)
    wr = sig[(sig["method"] == "ckd-wr") & (sig["column"] == "RTE")].iloc[0]
    assert pd.isna(wr["p_bootstrap"]) and "no predictions: ckd-wr seed 1" in wr["note"]
    md = compact_markdown((study / "tables" / "significance.md").read_text())
    assert "+100.0 [+100.0, +100.0] p<2e-3 (3)" in md
    assert "no predictions: ckd-wr seed 1" in md
    assert "one-sided" in md


def test_missing_inferred_and_expected(study: Path, tmp_path: Path):
    aggregate_study(study, n_boot=100)
    missing = pd.read_csv(study / "tables" / "missing.csv")
    # students: {kd, ckd, ckd-wr} x {rte, mrpc} x seeds {1, 2, 3} = 18, 9 finished; teacher 2 of 2
    assert len(missing) == 9
    started = missing[missing["status"].str.startswith("started")]
    assert started[["task", "method", "seed"]].values.tolist() == [["mrpc", "kd", 3]]
    assert "20 expected, 11 finished, 9 missing" in compact_markdown((study / "tables" / "missing.md").read_text())

    expected = tmp_path / "expected.json"
    expected.write_text(json.dumps([{"task": "rte", "student": "3L-384", "method": "kd", "seed": s} for s in (1, 2, 3, 4)]))
    aggregate_study(study, n_boot=100, expected=expected)
    missing = pd.read_csv(study / "tables" / "missing.csv")
    assert missing[["task", "seed", "status"]].values.tolist() == [["rte", 4, "not started"]]
    assert "not in the expected list" in compact_markdown((study / "tables" / "missing.md").read_text())


def test_best_score_and_records_frame(study: Path):
    records = load_records(study)
    assert len(records) == 11
    frame = records_frame(records)
    assert set(frame["role"]) == {"teacher", "student"}
    assert set(frame.loc[frame["role"] == "teacher", "method"]) == {"teacher"}
    assert "final.dev.accuracy" in frame.columns and "best.dev.f1" in frame.columns
    preds = load_predictions(records[0]["_path"])
    assert preds is None or "dev" in preds
    aggregate_study(study, score="best", n_boot=50)
    main_csv = pd.read_csv(study / "tables" / "main.csv")
    assert set(main_csv["score"]) == {"best"}
    assert "best-on-dev" in compact_markdown((study / "tables" / "main.md").read_text())


def test_bad_records_are_named(tmp_path: Path):
    path = write_run(tmp_path / "s", "rte", "3L-384", "kd", 1, {"dev": {"accuracy": 0.5}})
    record = json.loads(path.read_text())
    record["schema_version"] = 7
    path.write_text(json.dumps(record))
    with pytest.raises(CkdError, match=r"record\.json: schema_version 7"):
        load_records(tmp_path / "s")
    del record["metrics"]
    record["schema_version"] = 1
    path.write_text(json.dumps(record))
    with pytest.raises(CkdError, match="missing required key.*metrics"):
        load_records(tmp_path / "s")
    path.write_text("{not json")
    with pytest.raises(CkdError, match=str(path)):
        load_records(tmp_path / "s")


def test_cli_aggregate(study: Path, tmp_path: Path, capsys):
    out = tmp_path / "tables"
    assert main(["aggregate", "--study-dir", str(study), "--out", str(out), "--bootstrap", "100"]) == 0
    names = {p.name for p in out.iterdir()}
    for stem in ("main", "paper_delta", "ablation", "significance"):
        assert {f"{stem}.csv", f"{stem}.md", f"{stem}.tex"} <= names
    assert "missing.md" in names
    assert str(out / "main.md") in capsys.readouterr().out
    assert main(["aggregate", "--study-dir", str(tmp_path / "nope")]) == 2
    assert "study folder not found" in capsys.readouterr().err


def test_record_without_dev_metrics_is_a_missing_cell(tmp_path: Path):
    root = tmp_path / "s"
    write_run(root, "rte", "3L-384", "kd", 1, {"dev": {"accuracy": 0.6}})
    path = write_run(root, "rte", "3L-384", "ckd", 1, {"dev": {"accuracy": 0.6}})
    record = json.loads(path.read_text())
    record["metrics"], record["predictions"] = None, None
    path.write_text(json.dumps(record))
    aggregate_study(root, n_boot=50)
    main_csv = pd.read_csv(root / "tables" / "main.csv")
    assert _row(main_csv, "3L-384", "ckd")["RTE_n"] == 0
    assert "no predictions: ckd seed 1" in compact_markdown((root / "tables" / "significance.md").read_text())


def test_ablation_changes_from_resolved_methods(tmp_path: Path):
    root = tmp_path / "s"
    terms = [{"name": n, "weight": 1.0} for n in ("kd", "wr_pair", "wr_triple", "ltr_pair", "ltr_triple")]
    full = {"name": "ckd", "base": "ckd", "terms": terms, "settings": {"window": 21, "alpha": 0.5}}
    wr = {"name": "ckd-wr", "base": "ckd", "terms": terms[:3], "settings": {"window": 21, "alpha": 0.5}}
    w5 = {"name": "ckd-w5", "base": "ckd", "terms": terms, "settings": {"window": 5, "alpha": 0.5}}
    write_run(root, "rte", "3L-384", "ckd", 1, {"dev": {"accuracy": 0.6}}, resolved=full)
    write_run(root, "rte", "3L-384", "ckd-wr", 1, {"dev": {"accuracy": 0.6}}, method_base="ckd", resolved=wr)
    write_run(root, "rte", "3L-384", "ckd-w5", 1, {"dev": {"accuracy": 0.6}}, method_base="ckd", resolved=w5)
    aggregate_study(root, n_boot=20)
    changes = dict(pd.read_csv(root / "tables" / "ablation.csv")[["method", "changes"]].values.tolist())
    assert changes == {"ckd-w5": "window=5", "ckd-wr": "drops ltr_pair, ltr_triple"}


def test_runs_the_study_no_longer_plans_are_not_table_rows(tmp_path: Path):
    """The study file dropped MRPC and the pkd method; their old runs are still in the folder. With the
    workflow's expected list they are neither rows nor columns of any table, and missing.md names them."""
    root = tmp_path / "shrunk"
    for seed, acc in ((1, 0.60), (2, 0.64)):  # planned: kd on RTE, 62.0 ± 2.8
        write_run(root, "rte", "3L-384", "kd", seed, {"dev": {"accuracy": acc}}, predictions=_preds(False))
        write_run(root, "rte", "3L-384", "pkd", seed, {"dev": {"accuracy": 0.9}}, predictions=_preds(True))
        write_run(root, "mrpc", "3L-384", "kd", seed, {"dev": {"f1": 0.8, "accuracy": 0.7}})
    expected = tmp_path / "expected.json"
    expected.write_text(json.dumps([{"task": "rte", "student": "3L-384", "method": "kd", "seed": s} for s in (1, 2)]))
    aggregate_study(root, n_boot=50, expected=expected)
    tables = root / "tables"
    main_csv = pd.read_csv(tables / "main.csv")
    assert list(main_csv["method"]) == ["kd"] and "MRPC" not in main_csv.columns
    assert main_csv["RTE"].tolist() == [pytest.approx(62.0)] and main_csv["RTE_n"].tolist() == [2]
    assert "pkd" not in compact_markdown((tables / "significance.md").read_text()) and "pkd" not in compact_markdown((tables / "main.md").read_text())
    assert sorted(pd.read_csv(tables / "runs.csv")["method"]) == ["kd", "kd"]
    missing = compact_markdown((tables / "missing.md").read_text())
    assert "4 finished run(s) not in the expected list (no longer planned), left out of the tables" in missing
    assert "mrpc/3L-384/kd/seed1" in missing and "rte/3L-384/pkd/seed2" in missing
    # without an expected list every record is a row, as before
    aggregate_study(root, n_boot=50)
    assert list(pd.read_csv(tables / "main.csv")["method"]) == ["kd", "pkd"]


def test_settings_file_records_what_the_tables_were_made_with(study: Path):
    from ckd.aggregate_settings import DEFAULTS, read_settings

    assert read_settings(study / "tables") == DEFAULTS  # no tables yet: ckd aggregate's defaults
    aggregate_study(study, n_boot=37, baseline="ckd", seed=5)
    settings = read_settings(study / "tables")
    assert settings["bootstrap"] == 37 and settings["baseline"] == "ckd" and settings["seed"] == 5
    assert settings["score"] == "final" and settings["alternative"] == "greater"
    assert set(pd.read_csv(study / "tables" / "significance.csv")["n_boot"]) == {37}
    (study / "tables" / "aggregate.json").write_text("{not json")
    with pytest.raises(CkdError, match="aggregate.json: unreadable"):
        read_settings(study / "tables")


def test_task_agnostic_rows_are_labelled_and_compared_with_the_papers_task_agnostic_row(study: Path):
    """A record's `regime` reaches the frame, the main table's method cell and the paper row it is
    compared with: a task-agnostic ckd row against the paper's task-agnostic CKD RTE 70.1 (the
    task-specific one is 67.3)."""
    for seed, acc in ((1, 0.68), (2, 0.70)):  # 69.0 ± 1.4
        path = write_run(study, "rte", "3L-general", "ckd", seed, {"dev": {"accuracy": acc}})
        record_path = path / "record.json" if path.is_dir() else path
        record = json.loads(record_path.read_text())
        record["regime"] = "task-agnostic"
        record_path.write_text(json.dumps(record))
    aggregate_study(study, n_boot=50)
    main_md = compact_markdown((study / "tables" / "main.md").read_text())
    assert "| 3L-general | 17.4M | ckd [task-agnostic] | 69.0 ± 1.4 (2) |" in main_md
    assert "| 3L-384 | 17.4M | ckd | 67.0 ± 2.6 (3) |" in main_md  # the task-specific row unchanged
    delta = pd.read_csv(study / "tables" / "paper_delta.csv")
    rows = delta[(delta["method"] == "ckd") & (delta["column"] == "RTE")].set_index("student")
    assert rows.loc["3L-general", "paper_regime"] == "task-agnostic"
    assert rows.loc["3L-general", "delta"] == pytest.approx(69.0 - 70.1)
    assert rows.loc["3L-384", "paper_regime"] == "task-specific"
    scores = pd.read_csv(study / "tables" / "scores.csv")
    assert set(scores.loc[scores["student"] == "3L-general", "regime"]) == {"task-agnostic"}
    assert set(scores.loc[scores["student"] == "3L-384", "regime"]) == {"task-specific"}


def test_written_run_paths_are_relative_to_the_study_so_a_moved_study_gives_the_same_files(study: Path, tmp_path: Path):
    (study / "expected.json").write_text(json.dumps([{"task": "rte", "student": "3L-384", "method": "kd", "seed": 1}]))
    moved = tmp_path / "elsewhere" / study.name
    shutil.copytree(study, moved)
    first = aggregate_study(study, n_boot=20, expected=study / "expected.json")
    second = aggregate_study(moved, n_boot=20, expected=moved / "expected.json")
    assert json.loads((moved / "tables" / "aggregate.json").read_text())["expected"] == "expected.json"
    for a, b in zip(first, second):
        assert a.name == b.name
        assert a.read_bytes() == b.read_bytes(), a.name
    runs = pd.read_csv(study / "tables" / "runs.csv")
    assert all(not Path(p).is_absolute() and (study / p).is_file() for p in runs["path"])
