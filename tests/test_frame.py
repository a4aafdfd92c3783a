"""The tidy runs frame (ckd.frame): one row per run x score x split x metric, every record flagged,
and the main table's numbers are its group means (checked cell by cell against main.csv)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest

from ckd.aggregate import aggregate_study
from ckd.data.tasks import get_task
from ckd.frame import COLUMNS, cell_stats, load_study, read_scores
from tests.fixtures.study import write_run


@pytest.fixture()
def study(tmp_path: Path) -> tuple[Path, Path]:
    root = tmp_path / "toy"
    for seed, acc in ((1, 0.60), (2, 0.64)):
        write_run(root, "rte", "3L-384", "kd", seed, {"dev": {"accuracy": acc}})
        write_run(root, "rte", "3L-384", "ckd-w5", seed, {"dev": {"accuracy": acc + 0.02}}, method_base="ckd",
                  overrides={"window": 5})
        write_run(root, "mrpc", "3L-384", "kd", seed, {"dev": {"f1": 0.8 + seed / 100, "accuracy": 0.7}})
    write_run(root, "sst2", "3L-384", "kd", 1, {"dev": {"accuracy": 0.9}})  # an old task, no longer planned
    write_run(root, "rte", "bert-base", "finetune", 0, {"dev": {"accuracy": 0.70}}, teacher=True, params=110_000_000)
    planned = [{"task": t, "student": "3L-384", "method": m, "seed": s}
               for t in ("rte", "mrpc") for m in ("kd", "ckd-w5") for s in (1, 2) if (t, m) != ("mrpc", "ckd-w5")]
    planned.append({"task": "rte", "student": "bert-base", "method": "teacher", "seed": 0,
                    "config_fingerprint": "sha256:other"})  # the teacher's record is stale
    expected = tmp_path / "expected.json"
    expected.write_text(json.dumps(planned))
    return root, expected


def test_one_row_per_run_score_split_metric_with_flags(study):
    root, expected = study
    frame = load_study(root, expected)
    assert list(frame.columns) == COLUMNS
    # rte kd/ckd-w5: 4 runs x 2 scores x 1 metric; mrpc kd: 2 x 2 x 2; sst2: 2; teacher: 2
    assert len(frame) == 8 + 8 + 2 + 2
    kd = frame[(frame["task"] == "rte") & (frame["method"] == "kd") & (frame["score"] == "final")]
    assert sorted(kd["value"]) == [0.60, 0.64] and kd["shown"].all() and not kd["variant"].any()
    variant = frame[frame["method"] == "ckd-w5"]
    assert variant["variant"].all() and set(variant["method_base"]) == {"ckd"} and set(variant["tuning"]) == {"default"}
    assert set(frame["regime"]) == {"task-specific"}
    teacher = frame[frame["role"] == "teacher"]
    assert set(teacher["method"]) == {"teacher"} and teacher["stale"].all() and not teacher["shown"].any()
    old = frame[frame["task"] == "sst2"]
    assert not old["planned"].any() and not old["shown"].any()
    # without an expected list nothing is stale and everything is planned
    every = load_study(root)
    assert every["planned"].all() and not every["stale"].any() and every["shown"].all()


def test_main_table_cells_are_the_frames_group_means(study):
    root, expected = study
    aggregate_study(root, n_boot=20, expected=expected)
    frame = read_scores(root / "tables" / "scores.csv")
    assert len(frame) == 20 and set(frame["stale"]) == {True, False}
    stats = cell_stats(frame)
    main = pd.read_csv(root / "tables" / "main.csv")
    checked = 0
    for _, row in main.iterrows():
        for task in ("rte", "mrpc"):
            spec = get_task(task)
            (column, split, metric), = spec.report
            mine = stats[(stats["role"] == row["role"]) & (stats["student"] == row["student"])
                         & (stats["method"] == row["method"]) & (stats["task"] == task) & (stats["split"] == split)
                         & (stats["metric"] == metric)]
            if row[f"{column}_n"] == 0:
                assert mine.empty
                continue
            (_, cell), = mine.iterrows()
            assert cell["n"] == row[f"{column}_n"] and cell["mean"] == pytest.approx(row[column], abs=1e-9)
            assert (math.isnan(cell["std"]) and math.isnan(row[f"{column}_std"])) or \
                cell["std"] == pytest.approx(row[f"{column}_std"], abs=1e-9)
            checked += 1
    assert checked == 3  # kd rte, kd mrpc, ckd-w5 rte; the old sst2 run is no row and no column
    # the stale teacher's row is a placeholder: expected, no current run, every cell missing
    assert list(main["method"]) == ["kd", "ckd-w5", "teacher"] and main["RTE_n"].tolist() == [2, 2, 0]
    assert "SST-2" not in main.columns
