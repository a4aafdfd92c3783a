"""Run records: reading and validating the `record.json` files of a study (see docs/architecture.md)."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import pandas as pd

from ckd.errors import CkdError

SCHEMA_VERSION = 1
REQUIRED_KEYS = ("schema_version", "kind", "task", "method", "seed", "metrics")
RECORD_NAME = "record.json"
TEACHER_METHOD = "teacher"
SEARCH_DIR = "search"  # <study>/search/: grid-search runs and selections (ckd.search)


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
    try:
        parts = path.relative_to(root).parts
    except ValueError:
        parts = path.parts
    return "teacher" if "teachers" in parts[:-1] else "student"


def load_records(root: str | os.PathLike) -> list[dict]:
    """Every finished run under a study folder (teachers/ and runs/; not search/), sorted by path.

    Each record gets `_path` (its record.json) and `_role` ("teacher" for records under teachers/).
    """
    root = Path(root)
    if not root.is_dir():
        raise RecordError(f"{root}: study folder not found; pass --study-dir results/<study>")
    records = []
    for path in sorted(root.rglob(RECORD_NAME)):
        parts = path.relative_to(root).parts
        # atomic_directory's temporary folders start with a dot; search/ holds a grid search's own
        # runs (scored on a split carved from the training set), read by `ckd select`, never tabulated
        if any(part.startswith(".") for part in parts) or parts[0] == SEARCH_DIR:
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
    # .../<model>/<method>/seed<k>/record.json for students, .../<teacher>/seed<k>/record.json for teachers
    level = 2 if record.get("_role") == "teacher" else 3
    parts = path.parts
    return parts[-level - 1] if len(parts) > level else "?"


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


def _number(value: Any) -> float:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return math.nan


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
        for score in ("final", "best"):
            block = metrics.get(score) or {}
            for split, values in block.items():
                if split == "step" or not isinstance(values, dict):
                    continue
                for metric, value in values.items():
                    row[f"{score}.{split}.{metric}"] = _number(value)
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
