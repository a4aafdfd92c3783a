"""The tidy runs frame of a study: one row per run x score kind x split x metric, every record of the
study flagged (stale, planned, stage) rather than dropped, so that tables, figures and notebooks can
be computed from one pandas DataFrame. `ckd aggregate` writes it as tables/scores.csv.

Columns (one fact each):
  study, role ("teacher" | "student"), task, student (the row's model: the teacher's name for a
  teacher), params, method (the row's method: "teacher" for teachers, a variant's own name),
  method_base, variant (True when the method is a variant of method_base: another name or overrides),
  regime (the distillation regime of the run, from its record: "task-specific" (the default),
  "task-agnostic" (a general-distilled student fine-tuned on the task) or "general+task"),
  tuning (how the method's settings were chosen: "default", or "search-carve" / "search-dev" when a
  grid search's selection under search/selected/ was used), seed,
  stage ("intermediate" for a chained method's first stage, which has no scores of its own; "final"),
  stale (made with another config_fingerprint than the study expects), planned (listed in the study's
  expected runs; True for every record when no list is given), current (what the study includes:
  planned and not stale, or stale with include_stale), shown (what the tables show: current and
  not intermediate; the figures add the current intermediate runs' training curves),
  score ("final" | "best"), split, metric, value (a fraction in 0..1, NaN when not finite),
  config_fingerprint, path (the record.json).
A record without metrics (no dev evaluation) still has one row, with score, split, metric and value empty.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from ckd.records import (
    StudyRecords,
    _number,
    model_info,
    model_name,
    record_cells,
    row_method,
    row_method_base,
    study_records,
)

INTERMEDIATE = "intermediate"
COLUMNS = ["study", "role", "task", "student", "params", "method", "method_base", "variant", "regime", "tuning", "seed",
           "stage", "stale", "planned", "current", "shown", "score", "split", "metric", "value", "config_fingerprint", "path"]
DEFAULT_REGIME = "task-specific"


def _tunings(selections: Iterable[dict]) -> dict[tuple, str]:
    from ckd.data.tasks import get_task

    return {(get_task(s["task"]).name, s["student"], s["method"]): f"search-{s['selection']}" for s in selections}


def runs_frame(loaded: StudyRecords, selections: Iterable[dict] = ()) -> pd.DataFrame:
    """The tidy frame (module docstring) of records sorted by `ckd.records.study_records`;
    `selections`: the grid-search selections the tables use (`ckd.aggregate.match_selections`)."""
    from ckd.data.tasks import get_task

    tunings = _tunings(selections)
    stale = {id(r) for r in loaded.stale}
    unplanned = {id(r) for r in loaded.unplanned}
    records = loaded.records + [r for r in loaded.stale if not loaded.include_stale] + loaded.unplanned
    rows = []
    for record in sorted(records, key=lambda r: Path(r["_path"])):  # as load_records orders them
        task = get_task(record["task"]).name
        student, method = model_name(record), row_method(record)
        overrides = record.get("method_overrides") or {}
        base = dict(
            study=record.get("study") or loaded.path.name, role=record.get("_role", "student"), task=task, student=student,
            params=_number(model_info(record).get("params")), method=method, method_base=row_method_base(record),
            variant=method != row_method_base(record) or bool(overrides),
            regime=record.get("regime") or DEFAULT_REGIME, tuning=tunings.get((task, student, method), "default"),
            seed=record["seed"],
            stage=INTERMEDIATE if record.get("kind") == INTERMEDIATE else "final",
            stale=id(record) in stale, planned=id(record) not in unplanned,
            config_fingerprint=record.get("config_fingerprint"), path=record["_path"],
        )
        base["current"] = base["planned"] and (not base["stale"] or loaded.include_stale)
        base["shown"] = base["current"] and base["stage"] == "final"
        for cell in record_cells(record) or [dict(score=None, split=None, metric=None, value=math.nan)]:
            rows.append({**base, **cell})
    return pd.DataFrame(rows, columns=COLUMNS)


def load_study(study_dir: str | os.PathLike, expected: str | os.PathLike | dict | None = None,
               include_stale: bool = False) -> pd.DataFrame:
    """The tidy frame of a study folder: its records (`ckd.records.study_records`, which decides what
    is stale and what is planned) and its grid-search selections. expected: the study's expected.json
    (None: every record is planned and none is stale). Raises RecordError for a folder without records."""
    from ckd.tables.selection import load_selections, match_selections

    loaded = study_records(study_dir, expected, include_stale)
    scored = [r for r in loaded.records if r.get("kind") != INTERMEDIATE]
    used, _ = match_selections(load_selections(loaded.path), scored)
    return runs_frame(loaded, used)


def records_frame_of(records: list[dict], study_dir: str | os.PathLike = ".") -> pd.DataFrame:
    """The frame of records that are all current (a study already filtered by `study_records`)."""
    return runs_frame(StudyRecords(Path(study_dir), list(records)))


def cell_stats(frame: pd.DataFrame, score: str = "final") -> pd.DataFrame:
    """Mean, sample std (ddof=1) and n over seeds, x100, of every shown (role, student, method, task,
    split, metric): the numbers of the main table's cells (a NaN value is a missing seed, not a 0)."""
    shown = frame[frame["shown"] & (frame["score"] == score)].dropna(subset=["value"])
    grouped = (100 * shown["value"]).groupby([shown[k] for k in ("role", "student", "method", "task", "split", "metric")])
    return grouped.agg(mean="mean", std="std", n="count").reset_index()


def write_scores(frame: pd.DataFrame, path: str | os.PathLike) -> None:
    """tables/scores.csv: the frame as CSV (floats to 10 significant digits, like the other tables)."""
    from ckd.atomic import atomic_write_text

    atomic_write_text(path, frame.to_csv(index=False, float_format="%.10g", lineterminator="\n"))


def read_scores(path: str | os.PathLike) -> pd.DataFrame:
    """tables/scores.csv back as the frame `runs_frame` made (types restored)."""
    return pd.read_csv(path, dtype={"study": str, "student": str, "method": str, "method_base": str, "task": str,
                                    "split": str, "metric": str, "score": str, "config_fingerprint": str,
                                    "regime": str, "tuning": str})


__all__ = ["COLUMNS", "cell_stats", "load_study", "read_scores", "records_frame_of", "runs_frame", "write_scores"]
