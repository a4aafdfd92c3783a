"""Paper-style tables from the run records of a study: main, paper-vs-ours, ablation, significance, missing runs,
and the settings a grid search selected (search/selected/, `ckd select`).

Everything here is a pure function of the record.json / predictions.json files; values in the
tables are x100. Each table is written as CSV (numbers, one fact per column), Markdown and LaTeX.
"""

from __future__ import annotations

import json
import math
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ckd import paths
from ckd.aggregate_settings import DEFAULTS, SETTINGS_FILE, read_settings  # noqa: F401 (read_settings re-exported)
from ckd.atomic import atomic_write_json, atomic_write_text
from ckd.errors import CkdError, ConfigError
from ckd.frame import INTERMEDIATE, runs_frame, write_scores
from ckd.records import (
    TEACHER_METHOD,
    load_predictions,
    model_info,
    model_name,
    read_expected,  # noqa: F401 (re-exported: ckd.aggregate.read_expected)
    records_frame,
    row_method,
    row_method_base,
    run_identity,
    study_records,
)
from ckd.stats import SeedPair, canonical_metric, is_known_metric, lookup_metric, mean_std, paired_bootstrap, sign_flip_test

DEFAULT_REFERENCE = Path(__file__).resolve().parent / "resources" / "paper_dev.csv"
PAPER_TASK_ORDER = ("cola", "sst2", "stsb", "qqp", "mnli", "qnli", "rte", "mrpc", "wnli")
METHOD_ORDER = ("finetune", "kd", "pkd", "tinybert", "minilm", "distilbert", "ckd")
SCORES = {
    "final": "final checkpoint (end of training)",
    "best": "best-on-dev checkpoint (selected on the dev metric itself, hence optimistic)",
}
# our method -> (paper `method`, paper `regime` or None for any)
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
MISSING = "–"

RowKey = tuple  # (role, student, method)


@dataclass(frozen=True)
class Column:
    name: str
    task: str
    split: str
    metric: str


@dataclass
class Table:
    """One output table: `frame` goes to CSV, `header`/`rows` to Markdown and LaTeX."""

    stem: str
    title: str
    caption: list[str]
    header: list[str]
    rows: list[list[str]]
    frame: pd.DataFrame
    notes: list[str] = field(default_factory=list)
    label_columns: int = 3  # leading text columns (left-aligned in LaTeX)


# ---------------------------------------------------------------- grouping


def _task(name: str):
    from ckd.data.tasks import get_task

    return get_task(name)


def task_sort_key(name: str) -> tuple:
    return (0, PAPER_TASK_ORDER.index(name), "") if name in PAPER_TASK_ORDER else (1, 0, name)


def method_sort_key(method: str) -> tuple:
    if method == TEACHER_METHOD:
        return (0, 0, "")
    base = method.split("-")[0]
    if base in METHOD_ORDER:
        return (1, METHOD_ORDER.index(base), "" if method == base else method)
    return (2, 0, method)


def study_columns(tasks: Iterable[str]) -> list[Column]:
    columns = []
    for name in sorted(set(tasks), key=task_sort_key):
        spec = _task(name)
        columns += [Column(col, spec.name, split, metric) for col, split, metric in spec.report]
    return columns


SCORES_FILE = "scores.csv"  # the tidy runs frame (ckd.frame)


def group_records(records: list[dict]) -> dict[RowKey, list[dict]]:
    """Rows of the tables: (role, student, method) -> its runs, teacher rows first, then by size and method."""
    groups: dict[RowKey, list[dict]] = {}
    seen: dict[tuple, str] = {}
    for record in records:
        try:
            task = _task(record["task"]).name
        except CkdError as exc:
            raise CkdError(f"{record.get('_path')}: {exc}") from exc
        record = dict(record, task=task)
        key = (record.get("_role", "student"), model_name(record), row_method(record))
        run = key + (record["task"], record["seed"])
        if run in seen:
            raise CkdError(
                f"two records for task {run[3]}, {run[1]}, {run[2]}, seed {run[4]}: {seen[run]} and {record.get('_path')}; "
                "remove the stale one"
            )
        seen[run] = record.get("_path", "?")
        groups.setdefault(key, []).append(record)

    def order(key: RowKey):
        params = _params(groups[key])
        return (key[0] != "teacher", -(params if math.isfinite(params) else -1), key[1], method_sort_key(key[2]))

    return {key: groups[key] for key in sorted(groups, key=order)}


def _params(runs: list[dict]) -> float:
    for record in runs:
        value = model_info(record).get("params")
        if isinstance(value, (int, float)):
            return float(value)
    return math.nan


def run_value(record: dict, score: str, split: str, metric: str) -> float:
    """A metric of a run as stored in its record (fraction), NaN when absent."""
    block = ((record["metrics"] or {}).get(score) or {}).get(split)
    if not isinstance(block, dict):
        return math.nan
    value = lookup_metric(block, metric)
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else math.nan


def cell(runs: list[dict], column: Column, score: str, metric: str | None = None) -> tuple[float, float, int, list[int]]:
    """(mean, std, n, seeds) x100 over the seeds of one row for one column."""
    pairs = [(r["seed"], run_value(r, score, column.split, metric or column.metric)) for r in runs if r["task"] == column.task]
    pairs = [(s, v) for s, v in pairs if math.isfinite(v)]
    mean, std, n = mean_std([100 * v for _, v in pairs])
    return mean, std, n, sorted(s for s, _ in pairs)


# ---------------------------------------------------------------- formatting


def fmt_num(value: float, signed: bool = False) -> str:
    if value is None or not math.isfinite(value):
        return MISSING
    text = f"{value:+.1f}" if signed else f"{value:.1f}"
    return text.replace("-", "−")


def fmt_cell(mean: float, std: float, n: int) -> str:
    if n == 0:
        return MISSING
    if not math.isfinite(std):
        return f"{fmt_num(mean)} ({n})"
    return f"{fmt_num(mean)} ± {fmt_num(std)} ({n})"


def fmt_params(params: float) -> str:
    if not math.isfinite(params):
        return MISSING
    return f"{params / 1e6:.1f}M" if params >= 1e5 else f"{params / 1e3:.1f}K"


def fmt_p(p: float, n_boot: int) -> str:
    return f"p<{1 / n_boot:.0e}".replace("e-0", "e-") if p == 0 else f"p={p:.3f}"


def _student_size(runs: list[dict]) -> str:
    info = model_info(runs[0])
    if info.get("layers") and info.get("hidden"):
        return f"{info['layers']}L-{info['hidden']}"
    return model_name(runs[0])


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


# ---------------------------------------------------------------- main table


def main_table(groups: dict[RowKey, list[dict]], columns: list[Column], score: str, study: str,
               placeholders: Iterable[RowKey] = ()) -> Table:
    """`placeholders`: rows the study expects but has no finished run of (shown with every cell missing)."""
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
        params = _params(runs)
        label = f"{student} (teacher)" if role == "teacher" else student
        rows.append([label, fmt_params(params), method] + [fmt_cell(m, s, n) for m, s, n, _ in stats] + [avg_text])
        entry = {"score": score, "role": role, "student": student, "params": params, "method": method}
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
    return Table("main", f"Main results, study {study} ({score} scores)", caption, header, rows, pd.DataFrame(records))


# ---------------------------------------------------------------- paper vs ours


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


def _paper_row(reference: pd.DataFrame, method: str, size: str) -> pd.Series | None:
    target = paper_method(method)
    if target is None:
        return None
    name, regime = target
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
        paper = None if is_variant else _paper_row(reference, method, _student_size(runs))
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
                "score": score, "student": student, "student_size": _student_size(runs), "method": method,
                "column": c.name, "metric": metric, "ours_mean": mean, "ours_std": std, "ours_n": n,
                "paper": paper_value, "delta": delta, "paper_method": paper["method"],
                "paper_student": paper["student"], "paper_regime": paper["regime"], "source": paper["source"],
            })
        label = f"{student} (teacher)" if role == "teacher" else student
        rows.append([label, _student_size(runs), method, "ours"] + ours_cells + [""])
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


# ---------------------------------------------------------------- ablation


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


# ---------------------------------------------------------------- significance


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
            spec = _task(c.task)
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


# ---------------------------------------------------------------- selected settings (grid search)


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
        key = (_task(record["task"]).name, model_name(record), row_method(record))
        made.setdefault(key, set()).add(_options_key(record.get("method_overrides")))
    used, unmatched = [], []
    for s in selections:
        key = (_task(s["task"]).name, s["student"], s["method"])
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
    ordered = sorted(selections, key=lambda s: (task_sort_key(_task(s["task"]).name), s["student"], method_sort_key(s["method"])))
    rows, records = [], []
    for s in ordered:
        options = s.get("selected_options") or {}
        setting = ", ".join(f"{k}={json.dumps(v)}" for k, v in options.items()) or s["selected"]
        seeds = s["points"][0]["seeds"] if s["points"] else []
        score = f"{s['metric']} {fmt_num(100 * s['selected_mean'])}"
        rows.append([_task(s["task"]).display, s["student"], s["method"], setting, score, _chosen_on(s),
                     str(len(s["points"])), str(len(seeds))])
        records.append({
            "task": _task(s["task"]).name, "student": s["student"], "method": s["method"], "selection": s["selection"],
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


# ---------------------------------------------------------------- missing runs

def _short(fingerprint) -> str:
    return str(fingerprint)[:12] if fingerprint else "none"


def _run_logs(study_dir: Path) -> dict[tuple, Path]:
    """The workflow's log of each run (ckd.paths.run_logs), keyed by (task, student, method, seed)."""
    logs = {}
    for run, path in paths.run_logs(study_dir):
        try:
            logs[(_task(run.task).name,) + tuple(run[1:])] = path
        except CkdError:
            continue
    return logs


def _last_error(log: Path) -> str | None:
    """The `ckd <command>: error: ...` line a failed run left in its log."""
    try:
        lines = log.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return None
    errors = [line.split(": error: ", 1)[1].strip() for line in lines if line.startswith("ckd ") and ": error: " in line]
    return errors[-1] if errors else None


def missing_runs(study_dir: Path, records: list[dict], expected: dict[tuple, str | None] | None, study: str | None = None,
                 stale: list[dict] = (), include_stale: bool = False) -> Table:
    present, started = {}, set()
    for record in records:
        present[run_identity(record, study_dir)] = record
    stale_runs = {run_identity(r, study_dir): r for r in stale}
    for run, folder in paths.run_folders(study_dir):
        if not (folder / paths.RECORD).exists():
            started.add((_task(run.task).name,) + tuple(run[1:]))
    logs = _run_logs(study_dir)
    started |= {key for key in logs if key not in present}
    if expected is not None:
        grid, how = set(expected), "the runs listed in the --expected file"
    else:
        grid, how = set(), ("inferred from what exists: for teachers and for students separately, every "
                            "(model, method) seen × every task seen × every seed seen; a model/method never started "
                            "cannot be inferred (pass --expected)")
        known = set(present) | started
        for teacher in (True, False):
            subset = [k for k in known if (k[2] == TEACHER_METHOD) == teacher]
            rows = {(k[1], k[2]) for k in subset}
            tasks, seeds = {k[0] for k in subset}, {k[3] for k in subset}
            grid |= {(t, s, m, seed) for s, m in rows for t in tasks for seed in seeds}
    holes = sorted(grid - set(present), key=lambda k: (task_sort_key(k[0]), k[1], method_sort_key(k[2]), k[3]))

    def status(key: tuple) -> str:
        if key in stale_runs:
            found = stale_runs[key].get("config_fingerprint")
            return (f"stale: finished with another config (fingerprint {_short(found)}, study expects "
                    f"{_short(expected[key])}); left out of the tables: delete its folder and re-run it, or pass --include-stale")
        if key in started:
            log = logs.get(key)
            if log is None:
                return "started, no record.json (failed or still running)"
            error = _last_error(log)
            where = log.relative_to(study_dir).as_posix()
            return f"failed: {error} (log: {where})" if error else f"started, no record.json (failed or still running; log: {where})"
        return "not started"

    header = ["Task", "Model", "Method", "Seed", "Status"]
    rows = [[t, s, m, str(seed), status((t, s, m, seed))] for t, s, m, seed in holes]
    frame = pd.DataFrame(rows, columns=["task", "student", "method", "seed", "status"])
    n_stale = sum(r[4].startswith("stale") for r in rows)
    caption = [
        f"Grid: {how}.",
        f"{len(grid)} expected, {len(grid & set(present))} finished, {len(holes)} missing "
        f"({sum(r[4].startswith(('started', 'failed')) for r in rows)} started without a record, {n_stale} stale).",
    ]
    notes = [] if rows else ["No missing runs."]
    if include_stale and stale:
        notes.append(f"{len(stale)} stale run(s) included in the tables (--include-stale): "
                     + "; ".join(f"{t}/{s}/{m}/seed{seed}" for t, s, m, seed in sorted(stale_runs)))
    if expected is not None:
        extra = sorted(set(present) - grid, key=lambda k: (task_sort_key(k[0]), k[1], method_sort_key(k[2]), k[3]))
        if extra:
            notes.append(f"{len(extra)} finished run(s) not in the expected list (no longer planned), left out of the tables: "
                         + "; ".join(f"{t}/{s}/{m}/seed{seed}" for t, s, m, seed in extra))
    return Table("missing", f"Missing and failed runs, study {study or study_dir.name}", caption, header, rows, frame, notes,
                 label_columns=5)


# ---------------------------------------------------------------- rendering


def to_markdown(table: Table) -> str:
    def esc(text: str) -> str:
        return str(text).replace("|", "\\|")

    lines = [f"# {table.title}", ""] + table.caption + [""]
    if table.rows:
        lines.append("| " + " | ".join(esc(h) for h in table.header) + " |")
        lines.append("|" + "|".join("---" for _ in table.header) + "|")
        lines += ["| " + " | ".join(esc(c) for c in row) + " |" for row in table.rows]
        lines.append("")
    lines += [f"{note}  " if i < len(table.notes) - 1 else note for i, note in enumerate(table.notes)]
    return "\n".join(lines).rstrip() + "\n"


_LATEX_ESCAPES = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}
_LATEX_SYMBOLS = {"±": r"$\pm$", "–": "--", "−": "$-$", "Δ": r"$\Delta$", "≤": r"$\leq$", "≥": r"$\geq$",
                  "×": r"$\times$", "·": r"$\cdot$", "†": r"$^\dagger$", "<": "$<$", ">": "$>$"}


def latex_escape(text: str) -> str:
    out = "".join(_LATEX_ESCAPES.get(ch, ch) for ch in str(text))
    return "".join(_LATEX_SYMBOLS.get(ch, ch) for ch in out)


def to_latex(table: Table) -> str:
    caption = latex_escape(" ".join([table.title + "."] + table.caption))
    lines = ["% written by `ckd aggregate`; needs \\usepackage{booktabs}", "\\begin{table}[t]", "\\centering",
             "\\small", f"\\caption{{{caption}}}", f"\\label{{tab:{table.stem}}}"]
    if table.rows:
        align = "".join("l" if i < table.label_columns else "r" for i in range(len(table.header)))
        lines += [f"\\begin{{tabular}}{{{align}}}", "\\toprule",
                  " & ".join(latex_escape(h) for h in table.header) + " \\\\", "\\midrule"]
        lines += [" & ".join(latex_escape(c) for c in row) + " \\\\" for row in table.rows]
        lines += ["\\bottomrule", "\\end{tabular}"]
    if table.notes:
        lines.append("\\par\\footnotesize " + " \\\\ ".join(latex_escape(n) for n in table.notes))
    lines.append("\\end{table}")
    return "\n".join(lines) + "\n"


def write_table(table: Table, out_dir: Path, formats: tuple[str, ...] = ("csv", "md", "tex")) -> list[Path]:
    written = []
    for fmt in formats:
        path = out_dir / f"{table.stem}.{fmt}"
        if fmt == "csv":
            text = table.frame.to_csv(index=False, float_format="%.10g", lineterminator="\n")
        elif fmt == "md":
            text = to_markdown(table)
        else:
            text = to_latex(table)
        atomic_write_text(path, text)
        written.append(path)
    return written


# ---------------------------------------------------------------- entry point


def aggregate_study(
    study_dir: str | Path,
    out_dir: str | Path | None = None,
    *,
    score: str = DEFAULTS["score"],
    reference: str | Path | None = None,
    baseline: str = DEFAULTS["baseline"],
    n_boot: int = DEFAULTS["bootstrap"],
    seed: int = DEFAULTS["seed"],
    alternative: str = DEFAULTS["alternative"],
    expected: str | Path | None = None,
    include_stale: bool = False,
) -> list[Path]:
    """Write every table of a study, and the settings they were made with (aggregate.json, which the
    notebooks read); returns the files written.

    With `expected` (the workflow's expected.json), records of runs it does not list (no longer planned)
    are left out of the tables and named in missing.md; a record whose config_fingerprint differs from
    the listed one is stale (made with another config) and is left out and listed too, unless
    `include_stale`.
    """
    if score not in SCORES:
        raise ConfigError(f"--score must be one of {', '.join(SCORES)}, not {score!r}")
    if n_boot < 1:
        raise ConfigError(f"--bootstrap must be a positive number of draws, not {n_boot}")
    study_dir = Path(study_dir)
    out_dir = Path(out_dir) if out_dir is not None else study_dir / paths.TABLES
    ref = load_reference(reference or DEFAULT_REFERENCE)
    loaded = study_records(study_dir, expected, include_stale)
    records, stale, expected_runs = loaded.records, loaded.stale, loaded.expected
    # A first stage (TinyBERT's intermediate run) has no scores of its own: it counts as present in
    # missing.md but gets no row in the score tables.
    intermediate = {row_method(r) for r in records if r.get("kind") == INTERMEDIATE}
    scored = [r for r in records if r.get("kind") != INTERMEDIATE]
    groups = group_records(scored)
    columns = study_columns([r["task"] for r in records] + [key[0] for key in expected_runs or ()])
    placeholders = sorted({("teacher" if m == TEACHER_METHOD else "student", s, m) for _, s, m, _ in expected_runs or ()
                           if m not in intermediate} - set(groups),
                          key=lambda k: (k[0] != "teacher", k[1], method_sort_key(k[2])))
    study = next((r["study"] for r in records if r.get("study")), study_dir.name)
    tables = [
        main_table(groups, columns, score, study, placeholders),
        paper_delta_table(groups, columns, score, ref, study),
        ablation_table(groups, columns, score, study),
        significance_table(groups, columns, score, baseline, n_boot=n_boot, seed=seed, alternative=alternative,
                           study=study),
    ]
    selections, unmatched = match_selections(load_selections(study_dir), scored)
    label_selection(tables, selections)
    tables.append(selected_settings_table(selections, study, unmatched))
    written = []
    for table in tables:
        written += write_table(table, out_dir)
    missing = missing_runs(study_dir, records + loaded.unplanned, expected_runs, study, stale=stale,
                           include_stale=include_stale)
    written += write_table(missing, out_dir, ("md", "csv"))
    runs = records_frame(scored)
    atomic_write_text(out_dir / "runs.csv", runs.to_csv(index=False, float_format="%.10g", lineterminator="\n"))
    written.append(out_dir / "runs.csv")
    write_scores(runs_frame(loaded, selections), out_dir / SCORES_FILE)
    written.append(out_dir / SCORES_FILE)
    settings = {"score": score, "baseline": baseline, "bootstrap": n_boot, "seed": seed, "alternative": alternative,
                "reference": str(Path(reference).resolve()) if reference is not None else None,
                "expected": str(Path(expected).resolve()) if expected is not None and not isinstance(expected, dict) else None,
                "include_stale": include_stale}
    atomic_write_json(out_dir / SETTINGS_FILE, settings)
    written.append(out_dir / SETTINGS_FILE)
    return written

