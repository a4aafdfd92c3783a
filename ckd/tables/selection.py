"""The settings a grid search chose (search/selected/, `ckd select`): which tabulated runs were made
with them, the selected-settings table, and the labels other tables carry for such rows."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd

from ckd import paths
from ckd.errors import CkdError
from ckd.records import model_name, row_method
from ckd.tables.common import Table, fmt_num, method_sort_key, task_sort_key, task_spec


def load_selections(study_dir: Path) -> list[dict]:
    """The grid-search choices of a study: every search/selected/<task>/<student>/<method>.json (`ckd select`)."""
    selections = []
    for path in paths.selected_summaries(study_dir):
        try:
            summary = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise CkdError(f"{path}: unreadable selection ({exc}); delete it and re-run the workflow") from None
        if not isinstance(summary, dict) or not {"task", "student", "method", "selection", "points"} <= set(summary):
            raise CkdError(f"{path}: not a `ckd select` summary; delete it and re-run the workflow")
        selections.append(summary)
    return selections


def _options_key(options) -> str:
    return json.dumps(options or {}, sort_keys=True)


def match_selections(selections: list[dict], records: list[dict]) -> tuple[list[dict], list[dict]]:
    """(used, unmatched): a selection is used when a tabulated run of its task, student and method was made
    with its settings (the record's method_overrides equal the selection's method_options); the others
    (left from an earlier search, or runs not yet re-made) label nothing."""
    made = {}
    for record in records:
        key = (task_spec(record["task"]).name, model_name(record), row_method(record))
        made.setdefault(key, set()).add(_options_key(record.get("method_overrides")))
    used, unmatched = [], []
    for s in selections:
        key = (task_spec(s["task"]).name, s["student"], s["method"])
        (used if _options_key(s.get("method_options")) in made.get(key, ()) else unmatched).append(s)
    return used, unmatched


def _chosen_on(summary: dict) -> str:
    if summary["selection"] == "dev":
        return f"dev ({summary['split']}) — as the papers did; optimistic"
    carve = summary.get("selection_split") or {}
    cap = carve.get("max_examples")
    return (f"split carved from train ({100 * carve.get('fraction', math.nan):g}%"
            f"{f', at most {cap}' if cap else ''}, seed {carve.get('seed')})")


def selected_settings_table(selections: list[dict], study: str, unmatched: list[dict] = ()) -> Table:
    """Per task, student and method: the grid point chosen, its score where it was chosen, and where that was.
    `unmatched`: selections no tabulated run was made with (named in a note, not in the table)."""
    header = ["Task", "Model", "Method", "Selected", "Score", "Chosen on", "Points", "Seeds"]
    ordered = sorted(selections, key=lambda s: (task_sort_key(task_spec(s["task"]).name), s["student"], method_sort_key(s["method"])))
    rows, records = [], []
    for s in ordered:
        options = s.get("selected_options") or {}
        setting = ", ".join(f"{k}={json.dumps(v)}" for k, v in options.items()) or s["selected"]
        seeds = s["points"][0]["seeds"] if s["points"] else []
        score = f"{s['metric']} {fmt_num(100 * s['selected_mean'])}"
        rows.append([task_spec(s["task"]).display, s["student"], s["method"], setting, score, _chosen_on(s),
                     str(len(s["points"])), str(len(seeds))])
        records.append({
            "task": task_spec(s["task"]).name, "student": s["student"], "method": s["method"], "selection": s["selection"],
            "split": s["split"], "metric": s["metric"], "score": s.get("score"), "selected": s["selected"],
            "selected_options": json.dumps(options, sort_keys=True), "selected_mean": 100 * s["selected_mean"],
            "points": len(s["points"]), "search_seeds": len(seeds),
            "point_means": json.dumps({p["point"]: 100 * p["mean"] for p in s["points"]}),
        })
    caption = [
        "Grid search (search: block of the study): each point trained once per search seed; the point with the best "
        "mean of the task's selection metric (x100) over the search seeds wins, ties to the point declared first; "
        "the winner is then re-run on the study's seeds on the full training set (the rows of the other tables).",
        "Chosen on a split carved from the training set: the dev set was not read to choose. "
        "Chosen on dev: as the papers did; those rows' dev scores are optimistic.",
    ]
    notes = [] if rows else ["No grid search in this study."]
    if unmatched:
        notes.append(f"{len(unmatched)} selection(s) under search/selected/ match no tabulated run's settings (an earlier "
                     "search, or runs not re-made yet), left out: " + "; ".join(
                         f"{s['task']}/{s['student']}/{s['method']}" for s in unmatched))
    return Table("selected_settings", f"Selected settings, study {study}", caption, header, rows, pd.DataFrame(records),
                 notes, label_columns=4)


def label_selection(tables: list[Table], selections: list[dict]) -> None:
    """Say in every table which rows had their settings chosen by a search, and where (dev: in the title too)."""
    by_kind: dict[str, set] = {}
    for s in selections:
        by_kind.setdefault(s["selection"], set()).add(s["method"])
    for table in tables:
        if "carve" in by_kind:
            table.caption.append(f"Settings of {', '.join(sorted(by_kind['carve']))}: chosen by grid search on a split "
                                 "carved from the training set, not on dev (selected_settings table).")
        if "dev" in by_kind:
            table.caption.append(f"Settings of {', '.join(sorted(by_kind['dev']))}: chosen by grid search ON THE DEV SET "
                                 "(selection: dev, as the papers did): their dev scores are optimistic (selected_settings table).")
            table.title += " [settings selected on dev]"
