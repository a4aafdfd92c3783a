"""The one-class table: runs whose scored model predicts the same class for every example of a dev split
(a regression model: the same value), read from each run's predictions.json. Such a run is the trivial
predictor whatever its metric says: an all-positive MRPC model scores F1 81.2 (accuracy 68.4), an all-one
SST-2 model accuracy 50.9, and any one-class model MCC 0. The main table's caption counts them."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pandas as pd

from ckd.records import load_predictions, model_name, row_method
from ckd.tables.common import Table, method_sort_key, task_sort_key, task_spec

CONSTANT_TOLERANCE = 1e-6  # a regression model whose predictions span less than this is constant


def one_class_runs(records: Iterable[dict], score: str) -> pd.DataFrame:
    """One row per (run, dev split) whose `score` ("final" or "best") predictions take one value. Columns:
    task, role, model, method, seed, split, predicts (the class name, or the value for regression), share
    (the fraction of that split's gold labels equal to it; NaN for regression), examples, path."""
    rows = []
    for record in records:
        predictions = load_predictions(record["_path"]) or {}
        spec = task_spec(record["task"])
        for split, block in predictions.items():
            values = np.asarray(block.get(score) or [], dtype=float)
            if values.size == 0 or np.ptp(values) > (CONSTANT_TOLERANCE if spec.is_regression else 0):
                continue
            labels = np.asarray(block["labels"], dtype=float)
            if spec.is_regression:
                predicts, share = f"{values[0]:.4g}", float("nan")
            else:
                index = int(values[0])
                predicts = spec.labels[index] if spec.labels and 0 <= index < len(spec.labels) else str(index)
                share = float(np.mean(labels == index))
            rows.append({"task": spec.name, "role": record.get("_role", "student"), "model": model_name(record),
                         "method": row_method(record), "seed": record["seed"], "split": split, "predicts": predicts,
                         "share": share, "examples": int(values.size), "path": record["_path"]})
    rows.sort(key=lambda r: (task_sort_key(r["task"]), r["role"] != "teacher", r["model"], method_sort_key(r["method"]),
                             r["seed"], r["split"]))
    return pd.DataFrame(rows, columns=["task", "role", "model", "method", "seed", "split", "predicts", "share",
                                       "examples", "path"])


def one_class_table(records: Iterable[dict], score: str, study: str | None = None) -> Table:
    """The table of `one_class_runs` (Markdown and CSV), with 'none' when no run predicts one class."""
    frame = one_class_runs(records, score)
    header = ["Task", "Model", "Method", "Seed", "Split", "Predicts", "Share of labels (%)", "Examples"]
    rows = [[r.task, r.model, r.method, str(r.seed), r.split, r.predicts,
             "" if np.isnan(r.share) else f"{100 * r.share:.1f}", str(r.examples)] for r in frame.itertuples()]
    caption = [
        f"Runs whose {score} model predicts one class for every example of a dev split (regression: one value), "
        "from predictions.json: each is the trivial predictor, whatever its metric says (an all-positive MRPC model "
        "has F1 81.2, any one-class model MCC 0). Share: the fraction of the split's gold labels in that class, "
        "i.e. the run's accuracy.",
        "None." if frame.empty else f"{len(frame)} run-split(s).",
    ]
    title = f"One-class runs{f' of study {study}' if study else ''}"
    return Table(stem="one_class", title=title, caption=caption, header=header, rows=rows,
                 frame=frame.drop(columns=["path"]), label_columns=3)


def caption_note(table: Table) -> str | None:
    """The main table's caption line counting one-class runs (None when there are none)."""
    frame = table.frame
    if frame.empty:
        return None
    runs = frame.drop_duplicates(["task", "role", "model", "method", "seed"])
    listed = ", ".join(f"{m} on {t} ({n})" for (t, m), n in runs.groupby(["task", "method"], sort=False).size().items())
    return (f"{len(runs)} run(s) predict one class on a dev split, so their scores are a trivial predictor's "
            f"(one_class.md): {listed}.")
