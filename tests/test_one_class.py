"""Runs that predict one class (or one value) on a dev split are listed in one_class.md and counted in the main
table's caption: their scores are a trivial predictor's (#19: an all-positive MRPC model has F1 81.2)."""

from __future__ import annotations

import pandas as pd
import pytest

from ckd.aggregate import aggregate_study
from ckd.records import study_records
from ckd.tables.one_class import one_class_runs
from tests.fixtures.study import write_run

LABELS = [1, 1, 0, 1, 0, 1, 1, 0]  # MRPC dev-like: 5 of 8 paraphrases


def _study(tmp_path):
    study = tmp_path / "s"
    mixed = {"dev": {"labels": LABELS, "final": [1, 0, 0, 1, 0, 1, 1, 1], "best": [1, 1, 1, 1, 1, 1, 1, 1]}}
    all_positive = {"dev": {"labels": LABELS, "final": [1] * 8, "best": [1, 0, 0, 1, 0, 1, 1, 1]}}
    write_run(study, "mrpc", "3L", "kd", 1, {"dev": {"f1": 0.80, "accuracy": 0.75}}, predictions=mixed)
    write_run(study, "mrpc", "3L", "kd", 2, {"dev": {"f1": 0.769, "accuracy": 0.625}}, predictions=all_positive)
    write_run(study, "mrpc", "3L", "ckd", 1, {"dev": {"f1": 0.80, "accuracy": 0.75}}, predictions=mixed)
    constant = {"dev": {"labels": [0.5, 3.0, 4.2, 1.0], "final": [2.5, 2.5, 2.5, 2.5], "best": [2.5, 2.5, 2.5, 2.5000001]}}
    write_run(study, "stsb", "3L", "kd", 1, {"dev": {"spearman": 0.0, "pearson": 0.0}}, predictions=constant)
    write_run(study, "stsb", "3L", "ckd", 1, {"dev": {"spearman": 0.3, "pearson": 0.3}},
              predictions={"dev": {"labels": [0.5, 3.0, 4.2, 1.0], "final": [2.4, 2.5, 2.6, 2.5], "best": [2.4, 2.5, 2.6, 2.5]}})
    return study


@pytest.mark.parametrize("score, expected", [
    ("final", [("mrpc", "kd", 2, "equivalent", 0.625), ("stsb", "kd", 1, "2.5", None)]),
    ("best", [("mrpc", "kd", 1, "equivalent", 0.625), ("mrpc", "ckd", 1, "equivalent", 0.625), ("stsb", "kd", 1, "2.5", None)]),
])
def test_one_class_runs_are_found_from_the_scored_predictions(tmp_path, score, expected):
    records = study_records(_study(tmp_path), None, False).records
    found = one_class_runs(records, score)
    rows = [(r.task, r.method, r.seed, r.predicts, None if pd.isna(r.share) else r.share) for r in found.itertuples()]
    assert sorted(rows, key=str) == sorted(expected, key=str)


def test_aggregate_writes_the_list_and_counts_it_in_the_main_caption(tmp_path):
    study = _study(tmp_path)
    aggregate_study(study, n_boot=20)
    listed = pd.read_csv(study / "tables" / "one_class.csv")
    assert sorted(zip(listed["task"], listed["method"], listed["seed"])) == [("mrpc", "kd", 2), ("stsb", "kd", 1)]
    assert listed.loc[listed["task"] == "mrpc", "share"].item() == pytest.approx(0.625)
    main = (study / "tables" / "main.md").read_text()
    assert "2 run(s) predict one class on a dev split" in main and "kd on mrpc (1)" in main and "kd on stsb (1)" in main
    assert "| mrpc | 3L | kd | 2 | dev | equivalent | 62.5 |" in " ".join((study / "tables" / "one_class.md").read_text().split())


def test_no_one_class_run_leaves_the_caption_alone(tmp_path):
    study = tmp_path / "s"
    write_run(study, "mrpc", "3L", "kd", 1, {"dev": {"f1": 0.80, "accuracy": 0.75}},
              predictions={"dev": {"labels": LABELS, "final": [1, 0, 0, 1, 0, 1, 1, 1], "best": [1, 0, 0, 1, 0, 1, 1, 1]}})
    aggregate_study(study, n_boot=20)
    assert "one class" not in (study / "tables" / "main.md").read_text()
    assert "None." in (study / "tables" / "one_class.md").read_text()


def test_a_notebooks_recomputed_tables_count_and_list_the_same_runs(tmp_path):
    from ckd import explore

    study = _study(tmp_path)
    aggregate_study(study, n_boot=20)
    written = (study / "tables" / "main.md").read_text()
    note = next(line for line in written.splitlines() if "predict one class" in line)
    tables = explore.study_tables(explore.load_study(study), only=["main", "one_class"], recompute=True)
    assert note in explore.table_markdown(tables["main"]).splitlines()
    assert sorted(zip(tables["one_class"].frame["task"], tables["one_class"].frame["seed"])) == [("mrpc", 2), ("stsb", 1)]
    filtered = explore.study_tables(explore.load_study(study, tasks=["stsb"]), only=["main"])  # a filter recomputes
    assert "1 run(s) predict one class on a dev split" in explore.table_markdown(filtered["main"])
