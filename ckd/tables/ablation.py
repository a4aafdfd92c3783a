"""The CKD ablation table: each CKD variant (a method whose base is `ckd`, or named ckd-*) beside the
full objective on the same student, with what the variant changes (from the records' resolved methods)."""

from __future__ import annotations

import json
import math

import pandas as pd

from ckd.records import row_method_base
from ckd.tables.common import SCORES, Column, Table, cell, fmt_cell, fmt_num


def flatten_options(options: dict, prefix: str = "") -> dict:
    """{"weights": {"wr_pair": 10}} -> {"weights.wr_pair": 10}."""
    flat = {}
    for key, value in options.items():
        if isinstance(value, dict):
            flat.update(flatten_options(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def method_changes(runs: list[dict], base_runs: list[dict]) -> tuple[dict, list[str], list[str]]:
    """(changed settings, dropped terms, added terms) of a variant against its base method.

    Settings are the run's method_overrides plus any setting of the resolved method (`method_resolved`,
    when the record has it) that differs from the base run's on the same task.
    """
    changed = flatten_options(runs[0].get("method_overrides") or {})
    by_task = {r["task"]: r for r in base_runs}
    pair = next(((r, by_task[r["task"]]) for r in runs if r["task"] in by_task), None)
    if pair is None:
        return changed, [], []
    mine, base = (r.get("method_resolved") or {} for r in pair)
    base_settings = base.get("settings") or {}
    for key, value in (mine.get("settings") or {}).items():
        if key not in changed and key in base_settings and base_settings[key] != value:
            changed[key] = value
    if not (mine.get("terms") and base.get("terms")):
        return changed, [], []
    mine_terms = {t["name"] for t in mine["terms"]}
    base_terms = {t["name"] for t in base["terms"]}
    return changed, sorted(base_terms - mine_terms), sorted(mine_terms - base_terms)


def changes_text(changed: dict, dropped: list, added: list) -> str:
    """`method_changes` in words: "window=5; drops ltr_pair" ("(no recorded difference)" when none)."""
    parts = [", ".join(f"{k}={json.dumps(v)}" for k, v in sorted(changed.items()))]
    parts += [f"drops {', '.join(dropped)}" if dropped else "", f"adds {', '.join(added)}" if added else ""]
    return "; ".join(p for p in parts if p) or "(no recorded difference)"


def _changes(runs: list[dict], base_runs: list[dict]) -> str:
    return changes_text(*method_changes(runs, base_runs))



def is_ckd_variant(method: str, method_base: str) -> bool:
    return method != "ckd" and (method_base == "ckd" or method.startswith("ckd-") or method.startswith("ckd_"))


def ablation_table(groups, columns: list[Column], score: str, study: str) -> Table:
    header = ["Model", "Method", "Changes"] + [c.name for c in columns]
    rows, records = [], []
    students = [k[1] for k in groups if k[0] == "student"]
    for student in dict.fromkeys(students):
        variants = [k for k in groups if k[0] == "student" and k[1] == student
                    and is_ckd_variant(k[2], row_method_base(groups[k][0]))]
        if not variants:
            continue
        full = groups.get(("student", student, "ckd"), [])
        full_stats = [cell(full, c, score) for c in columns]
        if full:
            rows.append([student, "ckd", "(full objective)"] + [fmt_cell(m, s, n) for m, s, n, _ in full_stats])
        for key in variants:
            runs = groups[key]
            cells = []
            for c, (fm, _, fn, _) in zip(columns, full_stats):
                mean, std, n, _ = cell(runs, c, score)
                delta = mean - fm if n and fn else math.nan
                text = fmt_cell(mean, std, n)
                cells.append(text + (f" (Δ {fmt_num(delta, signed=True)})" if math.isfinite(delta) else ""))
                records.append({
                    "score": score, "student": student, "method": key[2], "method_base": row_method_base(runs[0]),
                    "changes": _changes(runs, full), "column": c.name, "mean": mean, "std": std, "n": n,
                    "ckd_mean": fm, "delta_vs_ckd": delta,
                })
            rows.append([student, key[2], _changes(runs, full)] + cells)
    caption = [
        f"Score: {score} = {SCORES[score]}.",
        "CKD variants (method_base ckd or named ckd-*) vs the full ckd objective, same student: "
        "mean ± std (n seeds) x100, (Δ variant mean − ckd mean).",
    ]
    notes = [] if rows else ["No CKD variants in this study."]
    return Table("ablation", f"CKD ablation, study {study}", caption, header, rows, pd.DataFrame(records), notes)
