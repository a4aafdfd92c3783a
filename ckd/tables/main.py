"""The main table (every row x every column, mean ± std over seeds) and the paper-vs-ours table
(each row beside the published number of the same method, `ckd/resources/paper_dev.csv`)."""

from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd

from ckd.errors import ConfigError
from ckd.frame import DEFAULT_REGIME
from ckd.records import TEACHER_METHOD, row_method_base
from ckd.stats import canonical_metric
from ckd.tables.common import (
    MISSING,
    PAPER_TASK_ORDER,
    SCORES,
    Column,
    RowKey,
    Table,
    cell,
    fmt_cell,
    fmt_num,
    fmt_params,
    group_params,
    row_label,
    run_regime,
    student_size,
)
from ckd.tables.one_class import caption_note, one_class_table

DEFAULT_REFERENCE = Path(__file__).resolve().parent.parent / "resources" / "paper_dev.csv"
PAPER_METHODS = {
    "ckd": ("CKD", "task-specific"),
    "kd": ("KD", None),
    "pkd": ("PKD", None),
    "tinybert": ("TinyBERT", None),
    "minilm": ("MiniLM", None),
    "distilbert": ("DistilBERT", None),
    "finetune": ("Fine-tune (no KD)", None),
    TEACHER_METHOD: ("BERT-base (teacher)", None),
}
METHOD_ALIASES = {"fine-tune": "finetune", "ft": "finetune", "no-kd": "finetune", "tiny-bert": "tinybert",
                  "distilbert-cos": "distilbert"}
# metric of each paper column unless a row's metric_overrides says otherwise (reference README)
PAPER_METRICS = {
    "CoLA": "mcc", "SST-2": "accuracy", "STS-B": "spearman", "QQP": "accuracy", "MNLI-m": "accuracy",
    "MNLI-mm": "accuracy", "QNLI": "accuracy", "RTE": "accuracy", "MRPC": "f1", "WNLI": "accuracy",
}

def main_table(groups: dict[RowKey, list[dict]], columns: list[Column], score: str, study: str,
               placeholders: Iterable[RowKey] = (), one_class: Table | None = None) -> Table:
    """`placeholders`: rows the study expects but has no finished run of (shown with every cell missing);
    `one_class`: the `one_class_table` of the runs in `groups`, when the caller has made it (else made here)."""
    groups = {**groups, **{key: [] for key in placeholders if key not in groups}}
    avg_name = "GLUE avg" if all(c.task in PAPER_TASK_ORDER for c in columns) else "Avg"
    header = ["Model", "Params", "Method"] + [c.name for c in columns] + [avg_name]
    rows, records = [], []
    for (role, student, method), runs in groups.items():
        stats = [cell(runs, c, score) for c in columns]
        complete = all(n > 0 for _, _, n, _ in stats)
        avg = float(np.mean([m for m, _, _, _ in stats])) if complete and stats else math.nan
        have = sum(n > 0 for _, _, n, _ in stats)
        avg_text = fmt_num(avg) if complete else f"{MISSING} (incomplete: {have}/{len(columns)})"
        params = group_params(runs)
        regime = run_regime(runs)
        shown_method = method if regime == DEFAULT_REGIME else f"{method} [{regime}]"
        rows.append([row_label(role, student), fmt_params(params), shown_method]
                    + [fmt_cell(m, s, n) for m, s, n, _ in stats] + [avg_text])
        entry = {"score": score, "role": role, "student": student, "params": params, "method": method, "regime": regime}
        for c, (m, s, n, _) in zip(columns, stats):
            entry.update({c.name: m, f"{c.name}_std": s, f"{c.name}_n": n})
        entry.update({"avg": avg, "avg_columns": len(columns), "avg_note": "" if complete else f"incomplete: {have}/{len(columns)} columns"})
        records.append(entry)
    col_list = ", ".join(f"{c.name} ({c.metric})" for c in columns)
    caption = [
        f"Score: {score} = {SCORES[score]}.",
        "Dev-set scores x100: mean ± sample std (ddof=1) over seeds (n seeds); no std when n=1; "
        f"{MISSING} = no finished run (never counted as 0).",
        f"{avg_name} = unweighted mean of the per-column means over the {len(columns)} columns shown "
        f"({col_list}); MNLI-m and MNLI-mm count separately; not computed for a row with a missing cell.",
    ]
    if any(run_regime(runs) != DEFAULT_REGIME for runs in groups.values()):
        caption.append("[task-agnostic]: a general-distilled student fine-tuned on the task; [general+task]: "
                       "a general-distilled student task-distilled; other rows are task-specific.")
    if one_class is None:
        one_class = one_class_table([record for runs in groups.values() for record in runs], score)
    note = caption_note(one_class)
    if note:
        caption.append(note)
    return Table("main", f"Main results, study {study} ({score} scores)", caption, header, rows, pd.DataFrame(records))


def load_reference(path: str | Path) -> pd.DataFrame:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: reference table not found; pass --reference or use the packaged default")
    frame = pd.read_csv(path, dtype={"method": str, "student": str, "regime": str, "source": str})
    missing = [c for c in ("method", "student", "regime", "source") if c not in frame.columns]
    if missing:
        raise ConfigError(f"{path}: reference table lacks column(s) {', '.join(missing)}")
    if "metric_overrides" not in frame.columns:
        frame["metric_overrides"] = ""
    frame["metric_overrides"] = frame["metric_overrides"].fillna("")
    return frame


def paper_method(method: str) -> tuple[str, str | None] | None:
    key = METHOD_ALIASES.get(method.lower(), method.lower())
    return PAPER_METHODS.get(key)


def _paper_row(reference: pd.DataFrame, method: str, size: str, regime: str = DEFAULT_REGIME) -> pd.Series | None:
    """The published row of a method: the run's own regime when it is not task-specific (a task-agnostic
    CKD row is compared with the paper's task-agnostic CKD row), else the regime PAPER_METHODS names."""
    target = paper_method(method)
    if target is None:
        return None
    name, regime = target[0], (regime if regime != DEFAULT_REGIME else target[1])
    rows = reference[reference["method"] == name]
    if regime is not None:
        rows = rows[rows["regime"] == regime]
    if rows.empty:
        return None
    same_size = rows[rows["student"] == size]
    return (same_size if not same_size.empty else rows).iloc[0]


def _paper_metric(row: pd.Series, column: str) -> str:
    overrides = dict(item.split("=", 1) for item in str(row["metric_overrides"]).split(";") if "=" in item)
    return overrides.get(column, PAPER_METRICS.get(column, ""))


def paper_delta_table(groups, columns: list[Column], score: str, reference: pd.DataFrame, study: str) -> Table:
    shown = [c for c in columns if c.name in reference.columns]
    header = ["Model", "Size", "Method", "Row"] + [c.name for c in shown] + ["Source"]
    rows, records, sources, notes = [], [], [], []
    for (role, student, method), runs in groups.items() if shown else ():
        # a variant is named apart from its base; options given to the base method itself don't make one
        is_variant = row_method_base(runs[0]) != method
        paper = None if is_variant else _paper_row(reference, method, student_size(runs), run_regime(runs))
        if paper is None:
            continue
        if paper["source"] not in sources:
            sources.append(paper["source"])
        ref = f"[{sources.index(paper['source']) + 1}]"
        ours_cells, paper_cells, delta_cells = [], [], []
        for c in shown:
            metric = _paper_metric(paper, c.name)
            mean, std, n, _ = cell(runs, c, score, metric)
            paper_value = pd.to_numeric(paper[c.name], errors="coerce")
            delta = mean - paper_value if n and math.isfinite(paper_value) else math.nan
            mark = ""
            if canonical_metric(metric) != canonical_metric(c.metric):
                mark = "†"
                note = f"† {c.name}: {metric} (as in the paper row), not the {c.metric} of the main table."
                if note not in notes:
                    notes.append(note)
            ours_cells.append(fmt_cell(mean, std, n) + (mark if n else ""))
            paper_cells.append(fmt_num(paper_value))
            delta_cells.append(fmt_num(delta, signed=True))
            records.append({
                "score": score, "student": student, "student_size": student_size(runs), "method": method,
                "column": c.name, "metric": metric, "ours_mean": mean, "ours_std": std, "ours_n": n,
                "paper": paper_value, "delta": delta, "paper_method": paper["method"],
                "paper_student": paper["student"], "paper_regime": paper["regime"], "source": paper["source"],
            })
        label = row_label(role, student)
        rows.append([label, student_size(runs), method, "ours"] + ours_cells + [""])
        rows.append(["", paper["student"], f"{paper['method']} ({paper['regime']})", "paper"] + paper_cells + [ref])
        rows.append(["", "", "", "Δ ours − paper"] + delta_cells + [""])
    caption = [
        f"Score: {score} = {SCORES[score]}.",
        "Ours: mean ± std (n seeds) x100; paper: published dev number; Δ = ours mean − paper. "
        "Size column: our student vs the paper's student (<layers>L-<hidden>); they often differ.",
        f"{MISSING} = not run here or not reported in the source.",
    ]
    notes = notes + [f"[{i + 1}] {s}" for i, s in enumerate(sources)]
    if not shown:
        notes.insert(0, "No column of this study has published numbers (e.g. synthetic tasks only).")
    elif not rows:
        notes.insert(0, "No row of this study maps to a published row (ckd, kd, pkd, tinybert, minilm, distilbert, finetune, teacher).")
    return Table("paper_delta", f"Ours vs published, study {study}", caption, header, rows, pd.DataFrame(records), notes,
                 label_columns=4)
