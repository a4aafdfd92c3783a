"""Browsing a study in notebooks (`notebooks/*.ipynb`): study loading with filters, the tables and
plots of `ckd aggregate` / `ckd plots` on the filtered records, per-seed spreads, the CKD ablations
read out in sentences, and the relation explorer (what CKD transfers, for one sentence).

Everything here is built on the package's own functions: records come from `ckd.records`, tables
from the table functions of `ckd.aggregate`, figures from `ckd.plots`, and loss values from
`ckd.losses.relations`; nothing re-implements an aggregation or a loss. The heatmaps of the relation
explorer are the softmax distributions those losses compare (checked against the loss values by
the tests).

Figures are drawn on matplotlib's Agg canvas without pyplot; `show_figure` displays one in a
notebook as a PNG, whatever the kernel's matplotlib backend.
"""

from __future__ import annotations

import io
import json
import math
import os
import tempfile
import warnings
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ckd.aggregate import (
    DEFAULT_REFERENCE,
    INTERMEDIATE,
    Column,
    Table,
    ablation_table,
    cell,
    fmt_num,
    flatten_options,
    group_records,
    is_ckd_variant,
    load_reference,
    main_table,
    method_changes,
    method_sort_key,
    missing_runs,
    paper_delta_table,
    run_value,
    significance_table,
    study_columns,
    to_markdown,
)
from ckd import paths
from ckd.aggregate_settings import read_settings
from ckd.errors import CkdError
from ckd.records import model_name, row_method, row_method_base, study_records
from ckd.stats import mean_std

STUDY_ENV = "CKD_STUDY_DIR"
DEFAULT_STUDY = "smoke"
SCORE_LABEL = {"final": "final", "best": "best-on-dev"}


# ============================================================================ study loading


def default_study_dir(name: str = DEFAULT_STUDY) -> Path:
    """$CKD_STUDY_DIR when set; else results/<name> in the working folder or its parent (a notebook
    runs in notebooks/, so the repository's results/ is one level up)."""
    value = os.environ.get(STUDY_ENV)
    if value:
        return Path(value).expanduser()
    here = Path.cwd()
    for root in (here, here.parent):
        if (root / "results" / name).is_dir():
            return root / "results" / name
    return here.parent / "results" / name if here.name == "notebooks" else here / "results" / name


@dataclass
class Study:
    """A study's scored run records after filters, grouped into table rows."""

    path: Path
    name: str
    records: list[dict]                     # scored records (no TinyBERT stage 1) that pass the filters
    groups: dict[tuple, list[dict]]         # (role, student, method) -> runs, as the tables group them
    columns: list[Column]                   # table columns of the filtered tasks
    loaded: list[dict]                      # every current record of the study, before filters
    stale: list[dict] = field(default_factory=list)
    unplanned: list[dict] = field(default_factory=list)  # runs expected.json no longer lists (not shown)
    expected: dict | None = None
    filters: dict = field(default_factory=dict)
    include_stale: bool = False

    @property
    def tasks(self) -> list[str]:
        return list(dict.fromkeys(c.task for c in self.columns))

    @property
    def students(self) -> list[str]:
        return list(dict.fromkeys(k[1] for k in self.groups if k[0] == "student"))

    @property
    def methods(self) -> list[str]:
        return sorted({k[2] for k in self.groups}, key=method_sort_key)

    def summary(self) -> str:
        """One Markdown paragraph: what was loaded and what the filters kept."""
        n_runs = len(self.records)
        stage1 = sum(r.get("kind") == INTERMEDIATE for r in self.loaded)
        parts = [f"**Study `{self.name}`** ({self.path}): {n_runs} finished run(s) shown "
                 f"out of {len(self.loaded)} record(s)" + (f" ({stage1} TinyBERT first-stage record(s) have no scores)"
                                                           if stage1 else "")]
        if self.stale:
            parts.append(f"{len(self.stale)} stale record(s) (made with another config) left out")
        if self.unplanned:
            parts.append(f"{len(self.unplanned)} record(s) of runs the study no longer plans left out")
        parts.append("tasks: " + (", ".join(self.tasks) or "none"))
        parts.append("students: " + (", ".join(self.students) or "none"))
        parts.append("methods: " + (", ".join(self.methods) or "none"))
        active = {k: v for k, v in self.filters.items() if v}
        parts.append("filters: " + (", ".join(f"{k}={v}" for k, v in active.items()) if active else "none"))
        return "; ".join(parts) + "."


def _as_list(value) -> list[str] | None:
    if value is None:
        return None
    if isinstance(value, str):
        value = [v.strip() for v in value.split(",") if v.strip()]
    return [str(v) for v in value] or None


def load_study(study_dir: str | os.PathLike | None = None, *, tasks: Iterable[str] | str | None = None,
               students: Iterable[str] | str | None = None, methods: Iterable[str] | str | None = None,
               include_stale: bool = False) -> Study:
    """Load a study's run records (`ckd.records.load_records`) and keep those that pass the filters.

    tasks: task names (`sst2`, `syn-sentiment`; aliases as `get_task` takes them); students: student
    model names as in the tables (`tiny-2L`); methods: method names (`kd`, `ckd`, `ckd-pair`, and
    `teacher` for the fine-tuned teachers' rows). None keeps everything. The student filter applies
    to student rows; teacher rows are kept unless a method filter leaves out `teacher`.
    When the study holds an expected.json (the workflow writes one), records made with another config
    and runs the study no longer plans are left out, as `ckd aggregate --expected` does
    (`ckd.records.study_records`; `include_stale=True` keeps the stale ones).
    """
    from ckd.data.tasks import get_task

    path = Path(study_dir) if study_dir is not None else default_study_dir()
    if not path.is_dir():
        raise CkdError(f"{path}: study folder not found; run `make demo` (results/smoke) or set {STUDY_ENV}")
    expected = path / paths.EXPECTED
    loaded = study_records(path, expected if expected.is_file() else None, include_stale)
    records, stale, expected = loaded.records, loaded.stale, loaded.expected
    scored = [r for r in records if r.get("kind") != INTERMEDIATE]

    task_filter = _as_list(tasks)
    student_filter = _as_list(students)
    method_filter = _as_list(methods)
    if task_filter is not None:
        task_filter = [get_task(t).name for t in task_filter]
    known = {
        "tasks": sorted({get_task(r["task"]).name for r in scored}),
        "students": sorted({model_name(r) for r in scored if r.get("_role") != "teacher"}),
        "methods": sorted({row_method(r) for r in scored}, key=method_sort_key),
    }
    for what, wanted in (("tasks", task_filter), ("students", student_filter), ("methods", method_filter)):
        unknown = sorted(set(wanted or ()) - set(known[what]))
        if unknown:
            raise CkdError(f"{what} filter: {', '.join(unknown)} not in study {path.name}; "
                           f"it has {', '.join(known[what]) or 'none'}")

    def keep(record: dict) -> bool:
        if task_filter is not None and get_task(record["task"]).name not in task_filter:
            return False
        if method_filter is not None and row_method(record) not in method_filter:
            return False
        if student_filter is not None and record.get("_role") != "teacher" and model_name(record) not in student_filter:
            return False
        return True

    kept = [r for r in scored if keep(r)]
    if not kept:
        raise CkdError(f"no run of study {path.name} passes the filters (tasks={task_filter}, students={student_filter}, "
                       f"methods={method_filter})")
    groups = group_records(kept)
    name = next((r["study"] for r in records if r.get("study")), path.name)
    return Study(path=path, name=name, records=kept, groups=groups, columns=study_columns(r["task"] for r in kept),
                 loaded=records, stale=stale, unplanned=loaded.unplanned, expected=expected,
                 filters={"tasks": task_filter, "students": student_filter, "methods": method_filter},
                 include_stale=include_stale)


# ============================================================================ tables and plots


TABLES = ("main", "paper_delta", "ablation", "significance", "missing")


def aggregate_settings(study: Study) -> dict:
    """The settings the workflow's `ckd aggregate` made the study's tables with (tables/aggregate.json:
    score, baseline, bootstrap, seed, alternative, reference); `ckd aggregate`'s defaults where the
    study has no tables yet."""
    return read_settings(study.path / paths.TABLES)


def study_tables(study: Study, *, score: str | None = None, baseline: str | None = None, n_boot: int | None = None,
                 seed: int | None = None, alternative: str | None = None, reference: str | os.PathLike | None = None,
                 only: Iterable[str] | None = None) -> dict[str, Table]:
    """The tables of `ckd aggregate` (main, paper_delta, ablation, significance, and missing when no
    filter is set) for the filtered study, as `ckd.aggregate.Table` objects (`.frame` for numbers,
    `table_markdown` to show them). `only`: names of the tables to build. A setting left None is the
    one the study's tables were made with (`aggregate_settings`), so that without filters every cell
    equals the workflow's tables."""
    settings = aggregate_settings(study)
    score = score if score is not None else settings["score"]
    baseline = baseline if baseline is not None else settings["baseline"]
    n_boot = n_boot if n_boot is not None else settings["bootstrap"]
    seed = seed if seed is not None else settings["seed"]
    alternative = alternative if alternative is not None else settings["alternative"]
    reference = reference if reference is not None else settings.get("reference")
    wanted = set(only) if only is not None else set(TABLES)
    unknown = sorted(wanted - set(TABLES))
    if unknown:
        raise CkdError(f"unknown table(s) {', '.join(unknown)}; choose from {', '.join(TABLES)}")
    builders = {
        "main": lambda: main_table(study.groups, study.columns, score, study.name),
        "paper_delta": lambda: paper_delta_table(study.groups, study.columns, score,
                                                 load_reference(reference or DEFAULT_REFERENCE), study.name),
        "ablation": lambda: ablation_table(study.groups, study.columns, score, study.name),
        "significance": lambda: significance_table(study.groups, study.columns, score, baseline, n_boot=n_boot,
                                                   seed=seed, alternative=alternative, study=study.name),
        "missing": lambda: missing_runs(study.path, study.loaded, study.expected, study.name, stale=study.stale,
                                        include_stale=study.include_stale),
    }
    if any(study.filters.values()):
        wanted.discard("missing")  # the missing-runs grid is about the whole study
    return {name: build() for name, build in builders.items() if name in wanted}


def table_markdown(table: Table) -> str:
    """The table as `ckd aggregate` writes its .md (title, caption, rows, notes), with < and > escaped
    so that a notebook's Markdown renderer does not take `<layers>L-<hidden>` for HTML tags."""
    return to_markdown(table).replace("<", "&lt;").replace(">", "&gt;")


def table_frame(table: Table) -> pd.DataFrame:
    """The table's displayed cells as a DataFrame (header as columns)."""
    return pd.DataFrame(table.rows, columns=table.header)


def study_plots(study: Study, out_dir: str | os.PathLike | None = None, *, score: str = "final",
                log=print) -> list[Path]:
    """Every figure of `ckd plots` for the filtered study; returns the PNG files (PDFs are written beside)."""
    from ckd.plots import plot_ablation, plot_cost, plot_curves, plot_size, plot_sweeps

    out = Path(out_dir) if out_dir is not None else Path(tempfile.mkdtemp(prefix="ckd-plots-"))
    out.mkdir(parents=True, exist_ok=True)
    written = []
    written += plot_ablation(study.groups, study.columns, score, out, log)
    written += plot_size(study.groups, study.columns, score, out, log)
    written += plot_sweeps(study.groups, study.columns, score, out, log)
    written += plot_curves(study.groups, out, log)
    written += plot_cost(study.groups, study.columns, score, out, log)
    return [p for p in written if p.suffix == ".png"]


def seed_spread(study: Study, score: str = "final") -> pd.DataFrame:
    """One row per (table row, column): every seed's value x100, mean, sample std, min, max and range."""
    seeds = sorted({r["seed"] for r in study.records})
    rows = []
    for key, runs in study.groups.items():
        for column in study.columns:
            values = {r["seed"]: 100 * run_value(r, score, column.split, column.metric)
                      for r in runs if r["task"] == column.task}
            values = {s: v for s, v in values.items() if math.isfinite(v)}
            if not values:
                continue
            mean, std, n = mean_std(values.values())
            row = {"column": column.name, "metric": column.metric, "role": key[0], "model": key[1], "method": key[2],
                   "n": n, "mean": mean, "std": std, "min": min(values.values()), "max": max(values.values())}
            row["range"] = row["max"] - row["min"]
            row.update({f"seed {s}": values.get(s, math.nan) for s in seeds})
            rows.append(row)
    return pd.DataFrame(rows)


def _agg_figure(fig: Figure) -> Figure:
    FigureCanvasAgg(fig)
    return fig


def seed_spread_figure(study: Study, score: str = "final") -> Figure:
    """Per column: each row's seeds as dots and its mean ± std as a bar, so the seed noise is visible
    next to the differences between methods."""
    frame = seed_spread(study, score)
    columns = [c for c in study.columns if c.name in set(frame["column"])] if len(frame) else []
    keys = list(study.groups)
    fig = _agg_figure(Figure(figsize=(max(6.0, 0.45 * len(keys) * max(1, len(columns)) + 2), 3.8)))
    if not columns:
        fig.text(0.5, 0.5, "no scores to show", ha="center")
        return fig
    seed_cols = [c for c in frame.columns if c.startswith("seed ")]
    for i, column in enumerate(columns):
        ax = fig.add_subplot(1, len(columns), i + 1)
        part = frame[frame["column"] == column.name]
        labels = []
        for x, key in enumerate(k for k in keys if ((part["role"] == k[0]) & (part["model"] == k[1])
                                                   & (part["method"] == k[2])).any()):
            row = part[(part["role"] == key[0]) & (part["model"] == key[1]) & (part["method"] == key[2])].iloc[0]
            values = [row[c] for c in seed_cols if math.isfinite(row[c])]
            ax.errorbar([x], [row["mean"]], yerr=[row["std"] if math.isfinite(row["std"]) else 0], fmt="_",
                        markersize=14, capsize=4, color="black", zorder=2)
            jitter = np.linspace(-0.12, 0.12, len(values)) if len(values) > 1 else [0.0]
            ax.scatter(x + np.asarray(jitter), values, s=18, zorder=3,
                       color="tab:orange" if key[0] == "teacher" else "tab:blue")
            labels.append(key[2] if key[0] == "student" else f"{key[1]} (teacher)")
        ax.set_xticks(range(len(labels)), labels, rotation=60, ha="right", fontsize=7)
        ax.set_title(f"{column.name} ({column.metric} x100)", fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(f"Per-seed dev scores ({SCORE_LABEL[score]}): dots = seeds, bar = mean ± std", fontsize=10)
    fig.tight_layout()
    return fig


# ============================================================================ ablations

FAMILIES = {
    "terms": "Relation terms (which WR/LTR terms matter)",
    "window": "Window size of the WR triple term",
    "weights": "Loss weights (alpha and the relation-term weights)",
    "temperature": "KD temperature",
    "other": "Other variants",
}
# What each family is about, and where a study that lacks it gets it.
FAMILY_HINTS = {
    "terms": "variants that drop relation terms (ckd-wr, ckd-ltr, ckd-pair, ckd-triple, ckd-{wr,ltr}-{pair,triple})",
    "window": "variants that change `window` (ckd-window3/5/11/41 and ckd-full-triple in config/ablation.yaml)",
    "weights": "variants that change alpha or a relation-term weight (ckd-alpha*, ckd-wr_pair*, ... in config/ablation.yaml)",
    "temperature": "variants that change `temperature` (ckd-T1/T2/T8 in config/ablation.yaml)",
}
WEIGHT_SETTINGS = ("alpha", "wr_pair", "wr_triple", "ltr_pair", "ltr_triple", "beta")


def _family(changed: dict, dropped: list, added: list) -> tuple[str, str | None, Any]:
    """(family, swept setting or None, its value) of a variant's differences from full ckd."""
    if (dropped or added) and not changed:
        return "terms", None, None
    if len(changed) == 1 and not (dropped or added):
        (key, value), = changed.items()
        leaf = key.split(".")[-1]
        if leaf == "window":
            return "window", key, value
        if leaf in ("temperature", "T"):
            return "temperature", key, value
        if leaf in WEIGHT_SETTINGS or "weight" in key:
            return "weights", key, value
    return "other", None, None


def _changes_text(changed: dict, dropped: list, added: list) -> str:
    parts = [", ".join(f"{k}={json.dumps(v)}" for k, v in sorted(changed.items()))]
    parts += [f"drops {', '.join(dropped)}" if dropped else "", f"adds {', '.join(added)}" if added else ""]
    return "; ".join(p for p in parts if p) or "(no recorded difference)"


def _setting_of(runs: list[dict], task: str, key: str):
    """The resolved value of a setting (flattened key) in the runs' records for one task; KeyError if unknown."""
    for record in runs:
        if record["task"] != task:
            continue
        settings = flatten_options((record.get("method_resolved") or {}).get("settings") or {})
        overrides = flatten_options(record.get("method_overrides") or {})
        for source in (overrides, settings):
            if key in source:
                return source[key]
    raise KeyError(key)


def ablation_frame(study: Study, score: str = "final") -> pd.DataFrame:
    """One row per (student, column, CKD row): the full `ckd` row (family "full") and each CKD variant
    with its family (terms, window, weights, temperature, other), the setting it sweeps and the value,
    mean/std/n x100, and Δ vs full ckd with the pooled seed std sqrt((std_variant² + std_ckd²) / 2).

    `exceeds` is True when |Δ| is larger than that pooled std, False when not, None when a std is
    unknown (fewer than two seeds on a side)."""
    rows = []
    for student in study.students:
        full = study.groups.get(("student", student, "ckd"), [])
        variants = [k for k in study.groups if k[0] == "student" and k[1] == student
                    and is_ckd_variant(k[2], row_method_base(study.groups[k][0]))]
        if not variants and not full:
            continue
        for column in study.columns:
            fm, fs, fn, _ = cell(full, column, score)
            if fn:
                rows.append({"student": student, "column": column.name, "metric": column.metric, "method": "ckd",
                             "family": "full", "setting": None, "value": None, "changes": "(full objective)",
                             "mean": fm, "std": fs, "n": fn, "ckd_mean": fm, "ckd_std": fs, "ckd_n": fn, "delta": 0.0,
                             "pooled_std": fs, "exceeds": None})
            for key in variants:
                runs = study.groups[key]
                mean, std, n, _ = cell(runs, column, score)
                if not n:
                    continue
                changed, dropped, added = method_changes(runs, full)
                family, setting, value = _family(changed, dropped, added)
                delta = mean - fm if fn else math.nan
                pooled = math.sqrt((std ** 2 + fs ** 2) / 2) if math.isfinite(std) and math.isfinite(fs) else math.nan
                exceeds = None if not (math.isfinite(pooled) and math.isfinite(delta)) else bool(abs(delta) > pooled)
                rows.append({"student": student, "column": column.name, "metric": column.metric, "method": key[2],
                             "family": family, "setting": setting, "value": value,
                             "changes": _changes_text(changed, dropped, added), "mean": mean, "std": std, "n": n,
                             "ckd_mean": fm if fn else math.nan, "ckd_std": fs if fn else math.nan, "ckd_n": fn,
                             "delta": delta, "pooled_std": pooled, "exceeds": exceeds})
    columns = ["student", "column", "metric", "method", "family", "setting", "value", "changes", "mean", "std", "n",
               "ckd_mean", "ckd_std", "ckd_n", "delta", "pooled_std", "exceeds"]
    frame = pd.DataFrame(rows, columns=columns)
    # settings keep their own type (window None = all tokens, not NaN); exceeds stays True/False/None
    for name in ("setting", "value", "exceeds"):
        frame[name] = pd.Series([row[name] for row in rows], dtype=object)
    return frame


def ablation_coverage(frame: pd.DataFrame) -> dict[str, list[str]]:
    """family -> the variant methods the study has for it (empty list: the study lacks that sweep)."""
    present = frame[frame["family"] != "full"] if len(frame) else frame
    return {family: sorted(set(present[present["family"] == family]["method"]), key=method_sort_key)
            for family in FAMILIES}


def missing_ablations(frame: pd.DataFrame) -> list[str]:
    """Sentences naming each ablation this study lacks (and how to get it)."""
    if frame.empty:
        return ["This study has no CKD rows at all (neither `ckd` nor a CKD variant): every ablation is missing. "
                "Run `snakemake --configfile config/ablation.yaml` for the full set."]
    notes = []
    if not (frame["family"] == "full").any():
        notes.append("No full `ckd` row: the variants cannot be compared with the full objective (no Δ).")
    coverage = ablation_coverage(frame)
    for family, methods in coverage.items():
        if family in FAMILY_HINTS and not methods:
            notes.append(f"Missing: **{FAMILIES[family]}** — this study has no {FAMILY_HINTS[family]}.")
    return notes


def _fmt(value: float) -> str:
    return fmt_num(value)


def _value_text(setting: str | None, value) -> str:
    if setting and setting.endswith("window") and value is None:
        return "all"
    return f"{value:g}" if isinstance(value, (int, float)) and not isinstance(value, bool) else json.dumps(value)


def _variant_label(row) -> str:
    if row["family"] in ("window", "weights", "temperature") and row["setting"]:
        return f"`{row['method']}` ({row['setting']}={_value_text(row['setting'], row['value'])})"
    return f"`{row['method']}` ({row['changes']})"


def _versus(row) -> str:
    delta = row["delta"]
    if not math.isfinite(delta):
        return "no full ckd score to compare with"
    if row["exceeds"] is None:
        spread = "the seed spread is unknown (one seed)"
    elif row["exceeds"]:
        spread = f"larger than the seed std ({_fmt(row['pooled_std'])})"
    else:
        spread = f"within the seed std ({_fmt(row['pooled_std'])})"
    return f"{fmt_num(delta, signed=True)} vs full ckd, {spread}"


def _findings(frame: pd.DataFrame) -> list[tuple[str, str, str]]:
    """(family, where: "<column>[, <student>]", sentence) per (student, family, column)."""
    if frame.empty:
        return []
    found = []
    multi_student = frame["student"].nunique() > 1
    for student in dict.fromkeys(frame["student"]):
        part = frame[frame["student"] == student]
        for family in FAMILIES:
            fam = part[part["family"] == family]
            for column in dict.fromkeys(fam["column"]):
                col = fam[fam["column"] == column].sort_values("mean", ascending=False)
                full = part[(part["family"] == "full") & (part["column"] == column)]
                where = column + (f", {student}" if multi_student else "")
                ckd_text = (f"full ckd {_fmt(full.iloc[0]['mean'])} ± {_fmt(full.iloc[0]['std'])}"
                            if len(full) else "no full ckd row")
                best, worst = col.iloc[0], col.iloc[-1]
                if len(col) == 1:
                    text = (f"one variant ({ckd_text}): {_variant_label(best)} at {_fmt(best['mean'])}, "
                            f"{_versus(best)}.")
                else:
                    text = (f"{len(col)} variants ({ckd_text}): best {_variant_label(best)} at "
                            f"{_fmt(best['mean'])} ({_versus(best)}); worst {_variant_label(worst)} at "
                            f"{_fmt(worst['mean'])} ({_versus(worst)}).")
                deltas = col["delta"].dropna()
                if len(deltas) and len(full):
                    if (deltas < 0).all():
                        text += " Full ckd is ahead of every variant here."
                    elif (deltas > 0).all():
                        text += " Every variant scores above full ckd here."
                if family in ("window", "weights", "temperature"):
                    text += _sweep_sentence(col, full)
                clear = col[col["exceeds"] == True]  # noqa: E712 (None means unknown)
                if len(clear) == 0 and col["exceeds"].notna().any():
                    text += (" No difference exceeds the seed std: with these seeds the "
                             + ("variants are" if len(col) > 1 else "variant is") + " not told apart from full ckd.")
                found.append((family, where, text))
    return found


def ablation_findings(frame: pd.DataFrame) -> list[str]:
    """A short reading of the ablation numbers, one Markdown sentence per (student, family, column),
    generated from `ablation_frame`: best and worst variant, by how much vs full ckd, whether the
    difference exceeds the seed std, and for sweeps the score at each value."""
    return [f"**{FAMILIES[family]}, {where}**: {text}" for family, where, text in _findings(frame)]


def _sweep_sentence(col: pd.DataFrame, full: pd.DataFrame) -> str:
    """" Scores by value: alpha 0.1 → 57.0, 0.9 → 61.0." for each swept setting of a family in one column."""
    pieces = []
    for setting in dict.fromkeys(s for s in col["setting"] if s):
        rows = col[col["setting"] == setting]
        points = sorted(((r["value"], r["mean"]) for _, r in rows.iterrows()), key=lambda p: _sort_value(p[0]))
        pieces.append(f"{setting} " + ", ".join(f"{_value_text(setting, v)} → {_fmt(m)}" for v, m in points))
    if not pieces:
        return ""
    return " By value: " + "; ".join(pieces) + (f" (full ckd {_fmt(full.iloc[0]['mean'])})." if len(full) else ".")


def ablation_reading(frame: pd.DataFrame) -> str:
    """The written reading of the ablations as Markdown: per family a heading and one bullet per
    column (`ablation_findings`), what the study lacks (`missing_ablations`) and, per variant run on
    several columns, its average effect (`ablation_overview`). Generated from the numbers only."""
    lines = []
    findings = _findings(frame)
    for family, title in FAMILIES.items():
        mine = [f"- **{where}**: {text}" for fam, where, text in findings if fam == family]
        if mine:
            lines += [f"#### {title}", ""] + mine + [""]
    overview = ablation_overview(frame)
    if overview:
        lines += ["#### Across columns", ""] + [f"- {o}" for o in overview] + [""]
    missing = missing_ablations(frame)
    if missing:
        lines += ["#### Not in this study", ""] + [f"- {m.removeprefix('Missing: ')}" for m in missing] + [""]
    if not lines:
        lines = ["No CKD ablation results to read."]
    return "\n".join(lines).rstrip() + "\n"


def _summary_by_variant(frame: pd.DataFrame) -> pd.DataFrame:
    variants = frame[frame["family"] != "full"]
    if variants.empty:
        return pd.DataFrame(columns=["student", "method", "family", "columns", "mean_delta", "worse", "better", "clear"])
    rows = []
    for (student, method), part in variants.groupby(["student", "method"], sort=False):
        deltas = part["delta"].dropna()
        rows.append({"student": student, "method": method, "family": part["family"].iloc[0], "columns": len(part),
                     "mean_delta": deltas.mean() if len(deltas) else math.nan,
                     "worse": int((deltas < 0).sum()), "better": int((deltas > 0).sum()),
                     "clear": int((part["exceeds"] == True).sum())})  # noqa: E712
    return pd.DataFrame(rows)


def ablation_summary(frame: pd.DataFrame) -> pd.DataFrame:
    """Per variant: mean Δ vs full ckd over the columns, in how many columns it is worse/better, and in
    how many the difference exceeds the seed std."""
    return _summary_by_variant(frame)


def ablation_overview(frame: pd.DataFrame) -> list[str]:
    """One sentence per variant that was run on more than one column: its average Δ and how consistent it is."""
    lines = []
    for _, row in _summary_by_variant(frame).iterrows():
        if row["columns"] < 2 or not math.isfinite(row["mean_delta"]):
            continue
        lines.append(f"`{row['method']}` ({row['family']}): mean Δ {fmt_num(row['mean_delta'], signed=True)} vs full ckd "
                     f"over {row['columns']} columns; worse in {row['worse']}, better in {row['better']}, "
                     f"difference beyond the seed std in {row['clear']}.")
    return lines


def _sort_value(value) -> float:
    if value is None:
        return math.inf  # window null (all tokens) after every finite window
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else math.nan


def _figure_points(frame: pd.DataFrame, family: str, student: str, column: str, study: Study | None) -> list[dict]:
    """The points of one panel of `ablation_figure`: full ckd first (for a sweep: at its own value of
    each swept setting), then the variants, sweeps ordered by setting and value."""
    part = frame[(frame["family"] == family) & (frame["student"] == student) & (frame["column"] == column)]
    full = frame[(frame["family"] == "full") & (frame["student"] == student) & (frame["column"] == column)]
    points = [{"label": r["method"], "setting": r["setting"], "value": r["value"], "mean": r["mean"], "std": r["std"],
               "exceeds": r["exceeds"], "full": False} for _, r in part.iterrows()]
    if family in ("window", "weights", "temperature"):
        for setting in dict.fromkeys(p["setting"] for p in points):
            own = None
            if study is not None and len(full):
                task = next((c.task for c in study.columns if c.name == column), None)
                try:
                    own = _setting_of(study.groups.get(("student", student, "ckd"), []), task, setting)
                except KeyError:
                    own = None
            if len(full) and (own is not None or setting.endswith("window")):
                points.append({"label": f"ckd ({setting.split('.')[-1]}={_value_text(setting, own)})",
                               "setting": setting, "value": own, "mean": full.iloc[0]["mean"],
                               "std": full.iloc[0]["std"], "exceeds": None, "full": True})
        order = list(dict.fromkeys(p["setting"] for p in points))
        points.sort(key=lambda p: (order.index(p["setting"]), _sort_value(p["value"])))
    elif len(full):
        points.insert(0, {"label": "ckd (full)", "setting": None, "value": None, "mean": full.iloc[0]["mean"],
                          "std": full.iloc[0]["std"], "exceeds": None, "full": True})
    return points


def ablation_figure(frame: pd.DataFrame, family: str, study: Study | None = None) -> Figure | None:
    """Error-bar plot of one ablation family: per column, full ckd (black) and each variant's mean ±
    std over seeds (red where |Δ| vs full ckd exceeds the seed std), with full ckd's mean ± std as a
    grey band. Sweeps are ordered by setting and value, full ckd placed at its own value (needs
    `study`). None when the study has no variant of that family."""
    fam = frame[frame["family"] == family]
    if fam.empty:
        return None
    panels = list(dict.fromkeys(zip(fam["student"], fam["column"])))
    cols = min(len(panels), 3)
    nrows = math.ceil(len(panels) / cols)
    widest = max(len(_figure_points(frame, family, s, c, study)) for s, c in panels)
    fig = _agg_figure(Figure(figsize=(max(3.6, 0.45 * widest + 1.6) * cols, 3.6 * nrows), layout="constrained"))
    several_students = len({s for s, _ in panels}) > 1
    for i, (student, column) in enumerate(panels):
        ax = fig.add_subplot(nrows, cols, i + 1)
        points = _figure_points(frame, family, student, column, study)
        for x, p in enumerate(points):
            color = "black" if p["full"] else ("tab:red" if p["exceeds"] else "tab:blue")
            ax.errorbar([x], [p["mean"]], yerr=[p["std"] if math.isfinite(p["std"]) else 0], fmt="s" if p["full"] else "o",
                        capsize=3, color=color)
        for x in range(1, len(points)):
            if points[x]["setting"] != points[x - 1]["setting"]:
                ax.axvline(x - 0.5, color="lightgrey", linewidth=0.8)
        ax.set_xticks(range(len(points)), [p["label"] for p in points], rotation=50, ha="right", fontsize=7)
        ax.set_xlim(-0.6, len(points) - 0.4)
        full = frame[(frame["family"] == "full") & (frame["student"] == student) & (frame["column"] == column)]
        if len(full):
            m, s = full.iloc[0]["mean"], full.iloc[0]["std"]
            ax.axhline(m, color="grey", linestyle="--", linewidth=1, label="full ckd ± std")
            if math.isfinite(s):
                ax.axhspan(m - s, m + s, color="grey", alpha=0.15)
            if i == 0:
                ax.legend(fontsize=7)
        metric = fam[(fam["student"] == student) & (fam["column"] == column)]["metric"].iloc[0]
        ax.set_title(column + (f" · {student}" if several_students else ""), fontsize=9)
        ax.set_ylabel(f"{metric} x100")
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(f"{FAMILIES[family]}: mean ± std over seeds (red: |Δ| vs full ckd > seed std)", fontsize=10)
    return fig


# ============================================================================ figures in notebooks


def figure_png(fig: Figure, dpi: int = 110) -> bytes:
    if not isinstance(fig.canvas, FigureCanvasAgg):
        FigureCanvasAgg(fig)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight", metadata={"Software": None})
    return buffer.getvalue()


def show_figure(fig: Figure | None, dpi: int = 110) -> None:
    """Display a figure in a notebook as a PNG (independent of the kernel's matplotlib backend); its
    title is the image's alternative text."""
    from IPython.display import Image, display

    if fig is not None:
        title = fig._suptitle.get_text() if fig._suptitle is not None else ""
        display(Image(data=figure_png(fig, dpi), alt=title or "figure"))


def show_png(path: str | os.PathLike) -> None:
    """Display a PNG file in a notebook (alternative text: its file name)."""
    from IPython.display import Image, display

    display(Image(filename=str(path), alt=Path(path).stem))


# ============================================================================ relation explorer


@dataclass
class RelationView:
    """The relations CKD compares for one input, teacher vs student.

    wr_*: (K, n, n) WR pair distributions, row i = softmax over j != i of cos(h_i, h_j) in each mapped
    layer; ltr_*: (n, K, K) LTR pair distributions, per token, row a = softmax over b != a of the
    cosines between the token's mapped-layer vectors; angle_*: (K, n, n, n) WR triple angles
    psi(i; j, k) (0 for degenerate triples), the quantity the triple term compares.
    losses: the four CKD relation terms on this input (ckd.losses.relations), with the run's weights.
    per_layer: WR pair and WR triple per mapped layer; per_token: LTR pair and LTR triple per token.
    """

    text: str
    text_b: str | None
    tokens: list[str]
    teacher: str
    student: str
    task: str | None
    layer_map: str
    pairs: list[tuple[int, int]]
    window: int | None
    wr_teacher: np.ndarray
    wr_student: np.ndarray
    ltr_teacher: np.ndarray
    ltr_student: np.ndarray
    angle_teacher: np.ndarray
    angle_student: np.ndarray
    losses: pd.DataFrame
    per_layer: pd.DataFrame
    per_token: pd.DataFrame
    predictions: pd.DataFrame
    record: dict | None = None

    def layer_names(self) -> list[str]:
        return [f"T{t}↔S{s}" for t, s in self.pairs]


def _read_record(folder: Path) -> dict | None:
    path = folder / "record.json"
    if path.is_file():
        return json.loads(path.read_text(encoding="utf-8"))
    return None


def _run_and_model(path: Path) -> tuple[Path | None, Path]:
    """(run folder or None, model folder) from a run folder (holding model/) or a model folder."""
    path = Path(path).expanduser()
    if (path / "model" / "config.json").is_file():
        return path, path / "model"
    if (path / "config.json").is_file():
        return (path.parent if (path.parent / "record.json").is_file() else None), path
    raise CkdError(f"{path}: neither a run folder with model/ nor a saved model folder (config.json); "
                   "point it at results/<study>/runs/<task>/<student>/<method>/seed<k>")


def _resolve_teacher(record: dict, run_dir: Path) -> Path | None:
    """The teacher model folder a student record names, found as written or relative to its study folder."""
    ref = ((record.get("teacher") or {}).get("name_or_path") or (record.get("config", {}).get("teacher") or {}).get("name_or_path"))
    if not ref:
        return None
    ref_path = Path(ref)
    if ref_path.is_dir():
        return ref_path
    parts = ref_path.parts
    study_dir = paths.study_of(run_dir)
    if paths.TEACHERS in parts and study_dir is not None:  # the study was moved: look in the run's own study
        candidate = study_dir.joinpath(*parts[parts.index(paths.TEACHERS):])
        if candidate.is_dir():
            return candidate
    return None


def _saved_runs(study_dir, task: str | None = None, method: str | None = None, model: str | None = None,
                seed: int | None = None) -> list[tuple[paths.RunId, Path]]:
    """The study's teacher and run folders with a saved model, matching the given fields, by model and seed."""
    found = [(run, folder) for run, folder in paths.run_folders(study_dir)
             if (folder / "model" / "config.json").is_file()
             and all(want is None or have == want for have, want in zip(run, (task, model, method, seed)))]
    return sorted(found, key=lambda item: (item[0].model, item[0].seed))


def default_task(study_dir: str | os.PathLike, method: str = "ckd") -> str:
    """A task of the study with a saved `method` student: single-sentence tasks first (shorter inputs,
    clearer heatmaps), then in table order."""
    from ckd.aggregate import task_sort_key
    from ckd.data.tasks import get_task

    tasks = {run.task for run, _ in _saved_runs(study_dir, method=method)}
    if not tasks:
        raise CkdError(f"no finished {method} run with a saved model under {Path(study_dir) / paths.RUNS}; run the study "
                       "(make demo) or pick another method")
    return min(tasks, key=lambda t: (get_task(t).is_pair, task_sort_key(get_task(t).name)))


def find_run(study_dir: str | os.PathLike, task: str | None = None, method: str = "ckd", student: str | None = None,
             seed: int | None = None) -> Path:
    """The run folder runs/<task>/<student>/<method>/seed<k> of a study (first student and lowest seed
    by default; task None: `default_task`)."""
    from ckd.data.tasks import get_task

    study_dir = Path(study_dir)
    task = get_task(task if task is not None else default_task(study_dir, method)).name
    candidates = _saved_runs(study_dir, task, method, student, seed)
    if not candidates:
        raise CkdError(f"no finished {method} run with a saved model under {study_dir / paths.RUNS / task}"
                       f"{'/' + student if student else ''}; run the study (make demo) or pick another method/task")
    return candidates[0][1]


def find_teacher(study_dir: str | os.PathLike, task: str, seed: int | None = None) -> Path:
    """The teacher run folder teachers/<task>/<teacher>/seed<k> of a study (lowest seed by default)."""
    from ckd.data.tasks import get_task

    study_dir = Path(study_dir)
    task = get_task(task).name
    candidates = _saved_runs(study_dir, task, paths.TEACHER_METHOD, seed=seed)
    if not candidates:
        raise CkdError(f"no fine-tuned teacher with a saved model under {study_dir / paths.TEACHERS / task}")
    return candidates[0][1]


def example_sentence(task: str, index: int = 0, *, split: str = "dev", source: str = "auto") -> tuple[str, str | None]:
    """(text_a, text_b) of one example of a task: for the synthetic tasks a dev sentence of their
    vocabulary (source "auto": synthetic for syn-*, else $GLUE_DIR or the hub)."""
    from ckd.data.loading import load_split

    example = load_split(task, split, source=source)[index]
    return example.text_a, example.text_b


@lru_cache(maxsize=8)
def _load(model_dir: Path, task: str | None):
    """A saved model (eval mode) and its tokenizer; cached, as a notebook loads the same teacher for
    several students."""
    with warnings.catch_warnings():
        # tqdm.auto, imported with transformers, warns in a notebook without ipywidgets
        warnings.simplefilter("ignore")
        from transformers import AutoConfig
        from transformers.utils import logging as hf_logging

    from ckd.models import build_model

    if task is not None:  # the task's label names, and a refusal when the head does not fit it
        shape = {"task": task, "head": "trained"}
    else:
        config = AutoConfig.from_pretrained(str(model_dir))
        shape = {"num_labels": int(config.num_labels), "regression": getattr(config, "problem_type", None) == "regression"}
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # "Loading weights" bars would fill the notebook's output
    try:
        built = build_model({"name_or_path": str(model_dir), "init": "pretrained"}, role=str(model_dir), **shape)
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    built.model.eval()
    return built


def _pair_distributions(states) -> np.ndarray:
    """Row softmax (over j != i) of cosines between the rows of each (m, d) matrix in a (..., m, d) array."""
    import torch

    h = torch.as_tensor(states, dtype=torch.float64)
    unit = torch.nn.functional.normalize(h, dim=-1)
    cos = unit @ unit.transpose(-1, -2)
    m = h.shape[-2]
    if m < 2:
        return np.zeros(tuple(h.shape[:-1]) + (m,))
    eye = torch.eye(m, dtype=torch.bool)
    return cos.masked_fill(eye, -math.inf).softmax(dim=-1).masked_fill(eye, 0.0).numpy()


def _angles(states) -> np.ndarray:
    """psi(i; j, k) = cos of the angle at i between h_j and h_k, for (m, d) -> (m, m, m); 0 when j or k == i."""
    import torch

    h = torch.as_tensor(states, dtype=torch.float64)
    diff = h.unsqueeze(0) - h.unsqueeze(1)          # diff[i, j] = h_j - h_i
    norm = diff.norm(dim=-1, keepdim=True)
    unit = torch.where(norm > 1e-12, diff / norm.clamp_min(1e-12), torch.zeros_like(diff))
    return (unit @ unit.transpose(-1, -2)).numpy()   # [i, j, k]


def _method_settings(record: dict | None) -> tuple[dict[str, float], dict]:
    """(term -> weight, settings) of a student's run record (CKD defaults when there is none)."""
    from ckd.losses.relations import DEFAULT_WINDOW

    defaults = {"wr_pair": 1.0, "wr_triple": 10.0, "ltr_pair": 1.0, "ltr_triple": 10.0}
    resolved = (record or {}).get("method_resolved") or {}
    settings = dict(resolved.get("settings") or {})
    settings.setdefault("window", DEFAULT_WINDOW)
    settings.setdefault("released_window_quirks", False)
    terms = resolved.get("terms")
    if terms:
        weights = {t["name"]: float(t["weight"]) for t in terms if t["name"] in defaults}
        # terms the method does not train on are still shown, with weight 0
        weights = {name: weights.get(name, 0.0) for name in defaults}
    else:
        weights = {name: float(settings.get(name, w)) for name, w in defaults.items()}
    return weights, settings


def explore_relations(student: str | os.PathLike, teacher: str | os.PathLike | None = None,
                      text: str | None = None, text_b: str | None = None, *, layer_map: str | None = None,
                      window: int | None | str = "record", max_length: int = 128) -> RelationView:
    """Run a teacher and a student on one input and collect the relations CKD compares.

    student: a run folder (runs/<task>/<student>/<method>/seed<k>, its record gives the task, layer
    map, term weights and window) or a saved model folder. teacher: a run or model folder; default
    the teacher the student's record names. text/text_b: the input (default: the task's first dev
    example). layer_map: default the record's (else uniform+emb). window: the WR triple window
    (default the record's setting; None = all triples).
    """
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tqdm.auto (through transformers) warns in a notebook without ipywidgets
        from ckd.layer_maps import layer_map as build_layer_map
        from ckd.losses.relations import ltr_pair, ltr_triple, wr_pair, wr_triple
        from ckd.models import check_same_tokenizer
        from ckd.runs import run_forward

    run_dir, student_dir = _run_and_model(Path(student))
    record = _read_record(run_dir) if run_dir is not None else None
    task = record.get("task") if record else None
    if teacher is None:
        found = _resolve_teacher(record, run_dir) if record else None
        if found is None and record and paths.study_of(run_dir) is not None:
            try:  # the study's own teacher for the task
                found = find_teacher(paths.study_of(run_dir), record["task"])
            except CkdError:
                found = None
        if found is None:
            raise CkdError(f"{student}: give the teacher (a run or model folder): the student's record names none that exists")
        teacher = found
    teacher_run, teacher_dir = _run_and_model(Path(teacher))
    if text is None:
        if task is None:
            raise CkdError("give text= (the student has no run record naming its task)")
        text, text_b = example_sentence(task)

    t_built, s_built = _load(Path(teacher_dir).resolve(), task), _load(Path(student_dir).resolve(), task)
    check_same_tokenizer(t_built.tokenizer, s_built.tokenizer, str(teacher_dir), str(student_dir))
    tokenizer = s_built.tokenizer
    encoded = tokenizer(text, text_b, truncation=True, max_length=max_length, return_tensors="pt",
                        return_token_type_ids=True)
    batch = {k: encoded[k] for k in ("input_ids", "attention_mask", "token_type_ids")}
    with torch.no_grad():
        t_out = run_forward(t_built.model, batch, hidden=True, capture=False)
        s_out = run_forward(s_built.model, batch, hidden=True, capture=False)

    weights, settings = _method_settings(record)
    map_name = layer_map or ((record or {}).get("layer_map") or {}).get("name") or "uniform+emb"
    lmap = build_layer_map(map_name, t_built.model.config.num_hidden_layers, s_built.model.config.num_hidden_layers)
    t_states, s_states = lmap.select(t_out.hidden_states, s_out.hidden_states)
    mask = batch["attention_mask"]
    if window == "record":
        window = settings.get("window")
    quirks = bool(settings.get("released_window_quirks", False))
    triple_opts = {"window": window, "released_window_quirks": quirks if window is not None else False}

    with torch.no_grad():
        values = {
            "wr_pair": float(wr_pair(t_states, s_states, mask)),
            "wr_triple": float(wr_triple(t_states, s_states, mask, **triple_opts)),
            "ltr_pair": float(ltr_pair(t_states, s_states, mask)),
            "ltr_triple": float(ltr_triple(t_states, s_states, mask)),
        }
        per_layer = [{"layers": f"T{t}↔S{s}", "teacher layer": t, "student layer": s,
                      "wr_pair": float(wr_pair([th], [sh], mask)),
                      "wr_triple": float(wr_triple([th], [sh], mask, **triple_opts))}
                     for (t, s), th, sh in zip(lmap.pairs, t_states, s_states)]
        n = mask.shape[1]
        per_token = []
        for i in range(n):
            only = torch.zeros_like(mask)
            only[0, i] = 1
            per_token.append({"position": i, "ltr_pair": float(ltr_pair(t_states, s_states, only)),
                              "ltr_triple": float(ltr_triple(t_states, s_states, only))})
    tokens = tokenizer.convert_ids_to_tokens(batch["input_ids"][0].tolist())
    losses = pd.DataFrame([{"term": name, "value": value, "weight": weights[name], "weighted": value * weights[name]}
                           for name, value in values.items()])
    per_token_frame = pd.DataFrame(per_token)
    per_token_frame.insert(1, "token", tokens)

    t_np = [h[0].double().numpy() for h in t_states]
    s_np = [h[0].double().numpy() for h in s_states]
    labels = _label_names(task, t_out.logits.shape[-1])
    predictions = pd.DataFrame({
        "label": labels,
        "teacher": _probabilities(t_out.logits[0], task),
        "student": _probabilities(s_out.logits[0], task),
    })
    return RelationView(
        text=text, text_b=text_b, tokens=tokens, teacher=str(teacher_dir), student=str(student_dir), task=task,
        layer_map=map_name, pairs=[tuple(p) for p in lmap.pairs], window=window,
        wr_teacher=np.stack([_pair_distributions(h) for h in t_np]),
        wr_student=np.stack([_pair_distributions(h) for h in s_np]),
        ltr_teacher=_pair_distributions(np.stack(t_np, axis=1)),
        ltr_student=_pair_distributions(np.stack(s_np, axis=1)),
        angle_teacher=np.stack([_angles(h) for h in t_np]), angle_student=np.stack([_angles(h) for h in s_np]),
        losses=losses, per_layer=pd.DataFrame(per_layer), per_token=per_token_frame, predictions=predictions,
        record=record,
    )


def _label_names(task: str | None, count: int) -> list[str]:
    if task is not None:
        from ckd.data.tasks import get_task

        spec = get_task(task)
        if spec.labels:
            return list(spec.labels)
        if spec.is_regression:
            return ["score"]
    return [f"label {i}" for i in range(count)]


def _probabilities(logits, task: str | None) -> list[float]:
    if logits.shape[-1] == 1:
        return [float(logits[0])]
    return logits.double().softmax(-1).tolist()


def _off_diagonal(matrix: np.ndarray) -> np.ndarray:
    """The matrix with its diagonal (j = i, excluded from every pair softmax) set to NaN (drawn grey)."""
    out = np.array(matrix, dtype=float)
    np.fill_diagonal(out, np.nan)
    return out


def _range(*matrices: np.ndarray) -> tuple[float, float]:
    values = np.concatenate([m[np.isfinite(m)].ravel() for m in matrices])
    if not values.size:
        return 0.0, 1.0
    lo, hi = float(values.min()), float(values.max())
    return (lo, hi) if hi > lo else (lo - 1e-9, hi + 1e-9)


def _heatmap(ax, matrix: np.ndarray, labels: Sequence[str] | None, title: str, vmax: float, cmap: str = "viridis",
             vmin: float = 0.0):
    from matplotlib import colormaps

    palette = colormaps[cmap].with_extremes(bad="lightgrey")
    image = ax.imshow(matrix, vmin=vmin, vmax=vmax, cmap=palette)
    if labels is not None:
        ticks = range(len(labels))
        size = 6 if len(labels) <= 20 else 5
        ax.set_xticks(ticks, labels, rotation=90, fontsize=size)
        ax.set_yticks(ticks, labels, fontsize=size)
    ax.set_title(title, fontsize=8)
    return image


def wr_pair_figure(view: RelationView) -> Figure:
    """WR pair distributions per mapped layer: teacher on top, student below, one column per layer
    pair, each column on one colour scale; the title gives that layer's WR pair loss."""
    K = len(view.pairs)
    n = len(view.tokens)
    size = max(2.6, min(5.0, 0.16 * n + 1.2))
    fig = _agg_figure(Figure(figsize=(size * K + 1.2, 2 * size + 0.8), layout="constrained"))
    for k, (t, s) in enumerate(view.pairs):
        t_mat, s_mat = _off_diagonal(view.wr_teacher[k]), _off_diagonal(view.wr_student[k])
        vmin, vmax = _range(t_mat, s_mat)
        loss = view.per_layer.iloc[k]["wr_pair"]
        top = fig.add_subplot(2, K, k + 1)
        _heatmap(top, t_mat, view.tokens, f"teacher h[{t}]", vmax, vmin=vmin)
        bottom = fig.add_subplot(2, K, K + k + 1)
        image = _heatmap(bottom, s_mat, view.tokens, f"student h[{s}] · WR pair KL {loss:.3g}", vmax, vmin=vmin)
        fig.colorbar(image, ax=[top, bottom], shrink=0.6)
    fig.suptitle("Word Relation (pair): row i = softmax over j≠i of cos(h_i, h_j)", fontsize=10)
    return fig


def ltr_figure(view: RelationView, positions: Sequence[int] | None = None, count: int = 3) -> Figure:
    """LTR pair distributions (K x K over the mapped layers), teacher on top and student below: the
    average over tokens, then the tokens given by `positions` (default: the `count` tokens with the
    largest LTR pair loss)."""
    if positions is None:
        positions = list(view.per_token.sort_values("ltr_pair", ascending=False)["position"][:count])
    panels = [("mean over tokens", view.ltr_teacher.mean(axis=0), view.ltr_student.mean(axis=0), None)]
    for p in positions:
        row = view.per_token.iloc[int(p)]
        panels.append((f"'{view.tokens[int(p)]}' (pos {int(p)})", view.ltr_teacher[int(p)], view.ltr_student[int(p)],
                       row["ltr_pair"]))
    names = view.layer_names()
    t_names = [f"T{t}" for t, _ in view.pairs]
    s_names = [f"S{s}" for _, s in view.pairs]
    fig = _agg_figure(Figure(figsize=(2.9 * len(panels) + 0.8, 5.8), layout="constrained"))
    for c, (title, t_mat, s_mat, loss) in enumerate(panels):
        t_mat, s_mat = _off_diagonal(t_mat), _off_diagonal(s_mat)
        vmin, vmax = _range(t_mat, s_mat)
        top = fig.add_subplot(2, len(panels), c + 1)
        _heatmap(top, t_mat, t_names, f"teacher · {title}", vmax, cmap="magma", vmin=vmin)
        bottom = fig.add_subplot(2, len(panels), len(panels) + c + 1)
        extra = f" · LTR pair KL {loss:.3g}" if loss is not None else ""
        image = _heatmap(bottom, s_mat, s_names, f"student{extra}", vmax, cmap="magma", vmin=vmin)
        fig.colorbar(image, ax=[top, bottom], shrink=0.6)
    fig.suptitle(f"Layer Transforming Relation (pair) over mapped layers {', '.join(names)}: "
                 "row a = softmax over b≠a of cos(e_a, e_b)", fontsize=10)
    return fig


def wr_triple_figure(view: RelationView, position: int | None = None, layer: int = -1) -> Figure:
    """WR triple angles psi(i; j, k) at one centre token i in one mapped layer (teacher, student, and
    student − teacher): what the triple term matches, restricted to the window the run used."""
    K = len(view.pairs)
    k = layer % K
    n = len(view.tokens)
    if position is None:
        position = n // 2
    lo, hi = 0, n
    if view.window is not None:
        half = (view.window - 1) // 2
        lo, hi = max(0, position - half), min(n, position + half + 1)
    t_mat = view.angle_teacher[k, position, lo:hi, lo:hi]
    s_mat = view.angle_student[k, position, lo:hi, lo:hi]
    labels = view.tokens[lo:hi]
    size = max(3.0, min(5.0, 0.18 * (hi - lo) + 1.4))
    fig = _agg_figure(Figure(figsize=(3 * size + 1.5, size + 1.0), layout="constrained"))
    t, s = view.pairs[k]
    diff = s_mat - t_mat
    spread = max(float(np.abs(diff).max()), 1e-6)
    for c, (title, matrix, cmap, vmin) in enumerate((
            (f"teacher h[{t}]", t_mat, "coolwarm", -1.0), (f"student h[{s}]", s_mat, "coolwarm", -1.0),
            ("student − teacher", diff, "PuOr", -spread))):
        ax = fig.add_subplot(1, 3, c + 1)
        image = _heatmap(ax, matrix, labels, title, -vmin, cmap=cmap, vmin=vmin)
        fig.colorbar(image, ax=ax, shrink=0.7)
    window = "all tokens" if view.window is None else f"window {view.window}"
    fig.suptitle(f"Word Relation (triple): angles at centre '{view.tokens[position]}' (pos {position}), "
                 f"layers T{t}↔S{s}, {window}", fontsize=10)
    return fig


def compare_students(study_dir: str | os.PathLike, task: str, methods: Sequence[str], text: str,
                     text_b: str | None = None, *, teacher: str | os.PathLike | None = None,
                     layer_map: str | None = "uniform+emb", window: int | None = 21) -> pd.DataFrame:
    """The four CKD relation terms on one input for the first-seed student of each method (methods the
    study lacks are skipped): how close each student's relations are to the teacher's, lower is closer.
    Every student is measured the same way (this layer map and window, unweighted values), whatever
    its method trained on."""
    rows = []
    for method in methods:
        try:
            run = find_run(study_dir, task, method)
        except CkdError:
            continue
        view = explore_relations(run, teacher, text, text_b, layer_map=layer_map, window=window)
        row = {"method": method, "run": str(run)}
        row.update({r["term"]: r["value"] for _, r in view.losses.iterrows()})
        rows.append(row)
    return pd.DataFrame(rows, columns=["method", "wr_pair", "wr_triple", "ltr_pair", "ltr_triple", "run"])
