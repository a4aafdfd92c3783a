"""Run records: reading and validating the `record.json` files of a study (see docs/architecture.md)."""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from ckd import paths
from ckd.errors import CkdError, ConfigError

SCHEMA_VERSION = 1
REQUIRED_KEYS = ("schema_version", "kind", "task", "method", "seed", "metrics")
RECORD_NAME = paths.RECORD
TEACHER_METHOD = paths.TEACHER_METHOD
SEARCH_DIR = paths.SEARCH


class RecordError(CkdError):
    """A record.json or predictions.json is unreadable or does not match the schema."""


def _read_json(path: Path) -> Any:
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except json.JSONDecodeError as exc:
        raise RecordError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno}); delete or rewrite it") from exc
    except OSError as exc:
        raise RecordError(f"{path}: cannot read ({exc.strerror})") from exc


def validate_record(record: Any, path: Path) -> None:
    if not isinstance(record, dict):
        raise RecordError(f"{path}: a run record must be a JSON object")
    missing = [key for key in REQUIRED_KEYS if key not in record]
    if missing:
        raise RecordError(f"{path}: missing required key(s) {', '.join(missing)}")
    version = record["schema_version"]
    if version != SCHEMA_VERSION:
        raise RecordError(
            f"{path}: schema_version {version!r} is not supported (this ckd reads {SCHEMA_VERSION}); "
            "aggregate it with the ckd version that wrote it, or re-run that run with this one"
        )
    metrics = record["metrics"]
    # null metrics: the run finished without a dev evaluation; its cells show as missing
    if metrics is not None and (not isinstance(metrics, dict) or not isinstance(metrics.get("final"), dict)):
        raise RecordError(f"{path}: metrics must be null or an object whose 'final' holds per-split metric values")
    if not isinstance(record["seed"], int):
        raise RecordError(f"{path}: seed must be an integer, got {record['seed']!r}")


def _role(path: Path, root: Path) -> str:
    return "teacher" if paths.is_teacher_path(path, root) else "student"


def load_records(root: str | os.PathLike) -> list[dict]:
    """Every finished run under a study folder (teachers/ and runs/; not search/), sorted by path.

    Each record gets `_path` (its record.json) and `_role` ("teacher" for records under teachers/).
    """
    root = Path(root)
    if not root.is_dir():
        raise RecordError(f"{root}: study folder not found; pass --study-dir results/<study>")
    records = []
    for path in sorted(root.rglob(RECORD_NAME)):
        if not paths.is_tabulated(path, root):
            continue
        record = _read_json(path)
        validate_record(record, path)
        record = dict(record)
        record["_path"] = str(path)
        record["_role"] = _role(path, root)
        records.append(record)
    return records


def model_name(record: dict) -> str:
    """The row name: the student for distillation runs, the fine-tuned model for teacher runs."""
    keys = ("student", "teacher") if record.get("_role") == "teacher" else ("student",)
    for key in keys:
        info = record.get(key)
        if isinstance(info, dict) and info.get("name"):
            return str(info["name"])
    path = Path(record.get("_path", ""))
    study = paths.study_of(path.parent)
    run = paths.parse_run_dir(path.parent, study) if study is not None else None
    return run.model if run is not None else "?"


def model_info(record: dict) -> dict:
    info = record.get("student")
    if not isinstance(info, dict) and record.get("_role") == "teacher":
        info = record.get("teacher")
    return info if isinstance(info, dict) else {}


def row_method(record: dict) -> str:
    return TEACHER_METHOD if record.get("_role") == "teacher" else str(record["method"])


def row_method_base(record: dict) -> str:
    if record.get("_role") == "teacher":
        return TEACHER_METHOD
    return str(record.get("method_base") or record["method"])


SCORE_KINDS = ("final", "best")


def _number(value: Any) -> float:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return math.nan


def record_cells(record: dict) -> list[dict]:
    """The (score, split, metric, value) cells of a record's metrics, values as fractions (NaN when not finite)."""
    cells = []
    for score in SCORE_KINDS:
        block = (record.get("metrics") or {}).get(score) or {}
        for split, values in block.items():
            if split == "step" or not isinstance(values, dict):
                continue
            cells += [dict(score=score, split=split, metric=metric, value=_number(value)) for metric, value in values.items()]
    return cells


def records_frame(records: list[dict]) -> pd.DataFrame:
    """One row per run: identity, sizes, timings and every final/best metric as `final.<split>.<metric>`."""
    rows = []
    for record in records:
        info = model_info(record)
        teacher = record.get("teacher") if record.get("_role") != "teacher" else None
        timing = record.get("timing") or {}
        metrics = record["metrics"] or {}
        row = {
            "path": record.get("_path"),
            "role": record.get("_role", "student"),
            "kind": record["kind"],
            "study": record.get("study"),
            "task": record["task"],
            "method": row_method(record),
            "method_base": row_method_base(record),
            "method_overrides": json.dumps(record.get("method_overrides") or {}, sort_keys=True),
            "seed": record["seed"],
            "student": model_name(record),
            "student_params": _number(info.get("params")),
            "student_layers": _number(info.get("layers")),
            "student_hidden": _number(info.get("hidden")),
            "teacher": teacher.get("name") if isinstance(teacher, dict) else None,
            "final_step": _number((metrics.get("final") or {}).get("step")),
            "best_step": _number((metrics.get("best") or {}).get("step")),
            "wall_s": _number(timing.get("wall_s")),
            "train_s": _number(timing.get("train_s")),
            "eval_ms_per_example": _number(timing.get("eval_ms_per_example")),
        }
        row.update({f"{c['score']}.{c['split']}.{c['metric']}": c["value"] for c in record_cells(record)})
        rows.append(row)
    return pd.DataFrame(rows)


def load_predictions(record_path: str | os.PathLike) -> dict | None:
    """The predictions.json beside a record (None when the run wrote none).

    Shape: {"<split>": {"labels": [...], "final": [...], "best": [...]}}.
    """
    record_path = Path(record_path)
    if record_path.is_dir():
        record_path = record_path / RECORD_NAME
    record = _read_json(record_path)
    name = record.get("predictions", "predictions.json") if isinstance(record, dict) else "predictions.json"
    if not name:
        return None
    path = record_path.parent / name
    if not path.is_file():
        return None
    predictions = _read_json(path)
    if not isinstance(predictions, dict):
        raise RecordError(f"{path}: predictions must be an object keyed by split")
    for split, block in predictions.items():
        if not isinstance(block, dict) or not isinstance(block.get("labels"), list):
            raise RecordError(f"{path}: split {split!r} needs a 'labels' list")
        for key in ("final", "best"):
            if key in block and len(block[key]) != len(block["labels"]):
                raise RecordError(
                    f"{path}: split {split!r} has {len(block[key])} {key} predictions for {len(block['labels'])} labels"
                )
    return predictions


# ---------------------------------------------------------------- which records the tables show


def _task_name(name: str) -> str:
    from ckd.data.tasks import get_task

    return get_task(name).name


def read_expected(path: str | os.PathLike) -> dict[tuple, str | None]:
    """(task, student, method, seed) -> the config_fingerprint the study expects for that run (None: any).

    The file (the workflow's expected.json) is a JSON list (or {"runs": [...]}) of {"task", "student",
    "method", "seed"[, "config_fingerprint"]}; teachers have method "teacher". Raises ConfigError naming
    the file and the entry when it is unreadable or malformed.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read the expected-runs list ({exc}); regenerate it with the workflow") from exc
    items = data.get("runs") if isinstance(data, dict) else data
    if not isinstance(items, list):
        raise ConfigError(f"{path}: expected a list of runs (or {{\"runs\": [...]}})")
    expected: dict[tuple, str | None] = {}
    for i, item in enumerate(items):
        fingerprint = None
        if isinstance(item, dict) and all(k in item for k in ("task", "student", "method", "seed")):
            fingerprint = item.get("config_fingerprint")
            item = (item["task"], item["student"], item["method"], item["seed"])
        if not (isinstance(item, (list, tuple)) and len(item) == 4 and isinstance(item[3], int)):
            raise ConfigError(f"{path}: entry {i} must be {{task, student, method, seed}} with an integer seed, got {item!r}; "
                              "fix or regenerate the list")
        if fingerprint is not None and not isinstance(fingerprint, str):
            raise ConfigError(f"{path}: entry {i}: config_fingerprint must be a string, got {fingerprint!r}")
        expected[(_task_name(item[0]), str(item[1]), str(item[2]), int(item[3]))] = fingerprint
    return expected


def run_identity(record: dict, study_dir: str | os.PathLike) -> tuple:
    """(task, student, method, seed) of a record: from its folder when it follows the study layout."""
    run = paths.parse_run_dir(Path(record["_path"]).parent, study_dir)
    ident = tuple(run) if run is not None else (record["task"], model_name(record), row_method(record), record["seed"])
    return (_task_name(ident[0]),) + tuple(ident[1:])


@dataclass
class StudyRecords:
    """A study's records sorted into those its tables and figures show and those they leave out.

    records: shown (current; stale ones too with include_stale); stale: made with another config than
    the study expects (config_fingerprint differs); unplanned: runs the expected list does not name (a
    task, model or method removed from the study file, its old runs still in the folder), never shown.
    """

    path: Path
    records: list[dict]
    stale: list[dict] = field(default_factory=list)
    unplanned: list[dict] = field(default_factory=list)
    expected: dict[tuple, str | None] | None = None
    include_stale: bool = False


def study_records(study_dir: str | os.PathLike, expected: str | os.PathLike | dict | None = None,
                  include_stale: bool = False) -> StudyRecords:
    """The one place that decides which records of a study are shown (tables, figures, notebooks).

    expected: the study's expected-runs file (or its `read_expected` dict); None shows every record.
    Raises RecordError when the folder holds no record, CkdError when every planned record is stale.
    """
    root = Path(study_dir)
    records = load_records(root)
    if not records:
        raise RecordError(f"{root}: no record.json under teachers/ or runs/; run the study first")
    if expected is not None and not isinstance(expected, dict):
        source, expected = expected, read_expected(expected)
    else:
        source = "the expected runs"
    if not expected:
        return StudyRecords(root, records, expected=expected, include_stale=include_stale)
    current, stale, unplanned = [], [], []
    for record in records:
        ident = run_identity(record, root)
        if ident not in expected:
            unplanned.append(record)
        elif expected[ident] is not None and record.get("config_fingerprint") != expected[ident]:
            stale.append(record)
        else:
            current.append(record)
    if not current and not (include_stale and stale):
        raise CkdError(f"{root}: none of the {len(records)} record(s) is a current run of the study ({len(stale)} stale: "
                       f"config_fingerprint differs from {source}; {len(unplanned)} not planned): re-run the study"
                       + (", or pass --include-stale to tabulate the stale ones" if stale else ""))
    keep = {id(r) for r in (current + stale if include_stale else current)}
    shown = [r for r in records if id(r) in keep]  # in load_records' order
    return StudyRecords(root, shown, stale, unplanned, expected, include_stale)
