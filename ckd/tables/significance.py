"""The significance table: each method against a baseline (KD by default) on the same student, runs
paired by seed: a paired bootstrap over dev examples pooled across seeds (`ckd.stats.paired_bootstrap`),
and an exact sign-flip test over the seed-level differences (`scipy.stats.permutation_test`)."""

from __future__ import annotations

import math
import zlib

import numpy as np
import pandas as pd

from ckd.records import load_predictions
from ckd.stats import SeedPair, is_known_metric, paired_bootstrap, sign_flip_test
from ckd.tables.common import MISSING, SCORES, Column, Table, fmt_num, fmt_p, task_spec


class _Predictions:
    """predictions.json of each run, read once."""

    def __init__(self):
        self._cache: dict[str, dict | None] = {}

    def get(self, record: dict) -> dict | None:
        path = record["_path"]
        if path not in self._cache:
            self._cache[path] = load_predictions(path)
        return self._cache[path]


def _seed_pairs(method_runs, base_runs, column: Column, score: str, preds: _Predictions, method: str, baseline: str):
    """(pairs, note): the per-seed predictions to compare, or why there are none."""
    mine = {r["seed"]: r for r in method_runs if r["task"] == column.task}
    theirs = {r["seed"]: r for r in base_runs if r["task"] == column.task}
    if not theirs:
        return [], f"no {baseline} runs"
    common = sorted(set(mine) & set(theirs))
    if not common:
        return [], f"no common seeds ({method}: {sorted(mine)}, {baseline}: {sorted(theirs)})"
    problems, pairs = [], []
    for seed in common:
        blocks = {}
        for name, record in ((method, mine[seed]), (baseline, theirs[seed])):
            data = preds.get(record)
            block = (data or {}).get(column.split)
            if data is None:
                problems.append(f"no predictions: {name} seed {seed}")
            elif block is None or score not in block:
                problems.append(f"no {column.split}/{score} predictions: {name} seed {seed}")
            else:
                blocks[name] = block
        if len(blocks) < 2:
            continue
        labels = blocks[method]["labels"]
        if len(labels) != len(blocks[baseline]["labels"]) or not np.allclose(
            np.asarray(labels, float), np.asarray(blocks[baseline]["labels"], float)
        ):
            problems.append(f"labels differ between {method} and {baseline} (seed {seed})")
            continue
        pairs.append(SeedPair(seed, labels, blocks[method][score], blocks[baseline][score]))
    if problems:
        return [], "; ".join(problems)
    unpaired = sorted(set(mine) ^ set(theirs))
    return pairs, (f"unpaired seeds left out: {unpaired}" if unpaired else "")


def significance_table(groups, columns: list[Column], score: str, baseline: str, *, n_boot: int, seed: int,
                       alternative: str, study: str) -> Table:
    header = ["Model", "Method"] + [c.name for c in columns]
    rows, records = [], []
    preds = _Predictions()
    for (role, student, method), runs in groups.items():
        if role != "student" or method == baseline:
            continue
        base_runs = groups.get(("student", student, baseline), [])
        cells = []
        for c in columns:
            if not any(r["task"] == c.task for r in runs):
                cells.append(MISSING)
                continue
            spec = task_spec(c.task)
            entry = {"score": score, "student": student, "method": method, "baseline": baseline, "column": c.name,
                     "metric": c.metric, "alternative": alternative, "n_boot": n_boot, "n_seeds": 0, "seeds": "",
                     "diff": math.nan, "ci_low": math.nan, "ci_high": math.nan, "p_bootstrap": math.nan,
                     "p_signflip": math.nan, "note": ""}
            pairs, note = _seed_pairs(runs, base_runs, c, score, preds, method, baseline)
            if pairs and not is_known_metric(c.metric, is_regression=spec.is_regression):
                pairs, note = [], f"metric {c.metric} has no bootstrap implementation"
            if pairs:
                cell_seed = zlib.crc32(f"{seed}|{student}|{method}|{baseline}|{c.name}".encode())
                result = paired_bootstrap(pairs, c.metric, is_regression=spec.is_regression,
                                          num_labels=spec.num_labels or None, n_boot=n_boot, seed=cell_seed,
                                          alternative=alternative)
                entry.update(n_seeds=result.n_seeds, seeds=" ".join(str(p.seed) for p in pairs),
                             diff=100 * result.diff, ci_low=100 * result.ci_low, ci_high=100 * result.ci_high,
                             p_bootstrap=result.p_value,
                             p_signflip=sign_flip_test(result.seed_diffs, alternative=alternative))
                text = (f"{fmt_num(entry['diff'], True)} [{fmt_num(entry['ci_low'], True)}, "
                        f"{fmt_num(entry['ci_high'], True)}] {fmt_p(result.p_value, n_boot)} ({result.n_seeds})")
                cells.append(text + (f"; {note}" if note else ""))
            else:
                cells.append(note)
            entry["note"] = note
            records.append(entry)
        rows.append([student, method] + cells)
    side = ("one-sided: p = share of draws with Δ ≤ 0, small p = method beats "
            f"{baseline}") if alternative == "greater" else "two-sided: p = 2·min(share Δ ≤ 0, share Δ ≥ 0)"
    caption = [
        f"Score: {score} = {SCORES[score]}. Method vs {baseline}, same student, runs paired by seed.",
        f"Paired bootstrap over dev examples pooled across seeds (B={n_boot} draws; each cell seeded from --seed "
        f"{seed} and the cell's name, so cells do not depend on each other): each draw "
        f"resamples every seed's dev examples with replacement, scores method and {baseline} on the same "
        "examples with the column's metric, and averages the difference over the seeds both have.",
        f"Cell: Δ (method − {baseline}, x100, all examples) [95% percentile interval of the bootstrap Δ] "
        f"p ({side}) (n seeds). The CSV adds p_signflip: exact sign-flip test over the seed-level Δ (smallest "
        "possible p = 1/2^n).",
    ]
    notes = [] if rows else [f"No method to compare with {baseline} in this study."]
    if rows and not any(k[0] == "student" and k[2] == baseline for k in groups):
        notes.append(f"No {baseline} runs in this study: pass --baseline with a method that was run.")
    return Table("significance", f"Significance vs {baseline}, study {study}", caption, header, rows,
                 pd.DataFrame(records), notes, label_columns=2)
