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

import functools
import io
import math
import os
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ckd import paths

# the ablation reading and the relation explorer, under the names the notebooks use
from ckd.ablation_reading import (  # noqa: F401
    FAMILIES,
    FAMILY_HINTS,
    ablation_coverage,
    ablation_figure,
    ablation_findings,
    ablation_frame,
    ablation_overview,
    ablation_reading,
    ablation_summary,
    missing_ablations,
)
from ckd.aggregate_settings import SETTINGS_FILE, read_settings
from ckd.errors import CkdError
from ckd.frame import INTERMEDIATE, runs_frame
from ckd.plots import agg_figure
from ckd.records import model_name, row_method, study_records
from ckd.relation_explorer import (  # noqa: F401
    RelationView,
    compare_students,
    default_task,
    example_sentence,
    explore_relations,
    find_run,
    find_teacher,
    ltr_figure,
    wr_pair_figure,
    wr_triple_figure,
)
from ckd.stats import mean_std
from ckd.tables.ablation import ablation_table
from ckd.tables.common import Column, Table, frame_groups, method_sort_key, seed_values, study_columns
from ckd.tables.main import DEFAULT_REFERENCE, load_reference, main_table, paper_delta_table
from ckd.tables.missing import missing_runs
from ckd.tables.one_class import one_class_table
from ckd.tables.render import read_table, to_markdown
from ckd.tables.significance import significance_table

STUDY_ENV = "CKD_STUDY_DIR"
DEFAULT_STUDY = "glue-minilm"  # the real-data study the repository ships (records, tables; no weights)
WEIGHTS_STUDY = "smoke"  # what the relation explorer opens by default: it needs model weights, which `make demo` writes
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
    frame: pd.DataFrame | None = None       # the tidy runs frame (`ckd.frame`) of the whole study, unfiltered

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
        raise CkdError(f"{path}: study folder not found; point STUDY_DIR or {STUDY_ENV} at results/<study> "
                       f"(results/{DEFAULT_STUDY} is in the repository; `make demo` writes results/{WEIGHTS_STUDY})")
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

    frame = runs_frame(loaded)
    keep = frame["shown"].copy()
    if task_filter is not None:
        keep &= frame["task"].isin(task_filter)
    if method_filter is not None:
        keep &= frame["method"].isin(method_filter)
    if student_filter is not None:
        keep &= (frame["role"] == "teacher") | frame["student"].isin(student_filter)
    if not keep.any():
        raise CkdError(f"no run of study {path.name} passes the filters (tasks={task_filter}, students={student_filter}, "
                       f"methods={method_filter})")
    groups = frame_groups(frame.assign(shown=keep), {r["_path"]: r for r in records})
    kept = [run for runs in groups.values() for run in runs]
    name = next((r["study"] for r in records if r.get("study")), path.name)
    return Study(path=path, name=name, records=kept, groups=groups, columns=study_columns(r["task"] for r in kept),
                 loaded=records, stale=stale, unplanned=loaded.unplanned, expected=expected,
                 filters={"tasks": task_filter, "students": student_filter, "methods": method_filter},
                 include_stale=include_stale, frame=frame)


# ============================================================================ tables and plots


TABLES = ("main", "paper_delta", "ablation", "significance", "one_class", "missing")


def aggregate_settings(study: Study) -> dict:
    """The settings the workflow's `ckd aggregate` made the study's tables with (tables/aggregate.json:
    score, baseline, bootstrap, seed, alternative, reference); `ckd aggregate`'s defaults where the
    study has no tables yet."""
    return read_settings(study.path / paths.TABLES)


def study_tables(study: Study, *, score: str | None = None, baseline: str | None = None, n_boot: int | None = None,
                 seed: int | None = None, alternative: str | None = None, reference: str | os.PathLike | None = None,
                 only: Iterable[str] | None = None, recompute: bool = False) -> dict[str, Table]:
    """The tables of `ckd aggregate` (main, paper_delta, ablation, significance, one_class, and missing when
    no filter is set) for the filtered study, as `ckd.tables.common.Table` objects (`.frame` for numbers,
    `table_markdown` to show them). `only`: names of the tables to build. A setting left None is the
    one the study's tables were made with (`aggregate_settings`).

    Without filters or other settings, the tables are the files the workflow wrote (tables/<name>.md
    and .csv, read back by `ckd.tables.render.read_table`), so the notebook's numbers are the workflow's
    by construction; they are computed here only when a filter or setting differs, when a record is
    newer than the written tables (then with the workflow's settings), or with `recompute`."""
    settings = aggregate_settings(study)
    asked = {"score": score, "baseline": baseline, "bootstrap": n_boot, "seed": seed, "alternative": alternative,
             "reference": None if reference is None else str(Path(reference).resolve())}
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
    @functools.cache
    def one_class() -> Table:  # the one_class table and the main table's caption read the same predictions
        return one_class_table([record for runs in study.groups.values() for record in runs], score, study.name)

    builders = {
        "main": lambda: main_table(study.groups, study.columns, score, study.name, one_class=one_class()),
        "paper_delta": lambda: paper_delta_table(study.groups, study.columns, score,
                                                 load_reference(reference or DEFAULT_REFERENCE), study.name),
        "ablation": lambda: ablation_table(study.groups, study.columns, score, study.name),
        "significance": lambda: significance_table(study.groups, study.columns, score, baseline, n_boot=n_boot,
                                                   seed=seed, alternative=alternative, study=study.name),
        "one_class": one_class,
        "missing": lambda: missing_runs(study.path, study.frame, study.expected, study.name),
    }
    if any(study.filters.values()):
        wanted.discard("missing")  # the missing-runs grid is about the whole study
    written = None if recompute else _written_tables(study, wanted, asked, settings)
    if written is not None:
        return written
    return {name: build() for name, build in builders.items() if name in wanted}


def _written_tables(study: Study, wanted: set[str], asked: dict, settings: dict) -> dict[str, Table] | None:
    """The workflow's own tables when they are what `study_tables` was asked for, else None."""
    tables_dir = study.path / paths.TABLES
    settings_file = tables_dir / SETTINGS_FILE
    if any(study.filters.values()) or study.include_stale != bool(settings.get("include_stale")):
        return None
    if any(value is not None and value != settings.get(key) for key, value in asked.items()):
        return None
    files = [tables_dir / f"{name}.{ext}" for name in wanted for ext in ("md", "csv")]
    if not settings_file.is_file() or not all(f.is_file() for f in files):
        return None
    newest_record = max((Path(r["_path"]).stat().st_mtime for r in study.loaded), default=0.0)
    if newest_record > settings_file.stat().st_mtime:
        return None  # runs finished after the tables were written: compute them afresh
    return {name: read_table(tables_dir, name) for name in TABLES if name in wanted}


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
    from ckd.plots import plot_ablation, plot_curves, plot_score_vs_cost, plot_size, plot_sweeps

    out = Path(out_dir) if out_dir is not None else Path(tempfile.mkdtemp(prefix="ckd-plots-"))
    out.mkdir(parents=True, exist_ok=True)
    written = []
    written += plot_ablation(study.groups, study.columns, score, out, log)
    written += plot_size(study.groups, study.columns, score, out, log)
    written += plot_sweeps(study.groups, study.columns, score, out, log)
    written += plot_curves(study.groups, out, log)
    written += plot_score_vs_cost(study.groups, study.columns, score, out, log)
    return [p for p in written if p.suffix == ".png"]


def study_frame(study: Study) -> pd.DataFrame:
    """The tidy runs frame (`ckd.frame`) of what the notebook shows: without filters the workflow's own
    tables/scores.csv when the study has one (every record, flagged), else the frame of the filtered
    records (all of them shown)."""
    from ckd.frame import read_scores, runs_frame
    from ckd.records import StudyRecords

    written = study.path / paths.TABLES / "scores.csv"
    if written.is_file() and not any(study.filters.values()) and not study.include_stale:
        return read_scores(written)
    return runs_frame(StudyRecords(study.path, study.records, include_stale=study.include_stale))


def seed_spread(study: Study, score: str = "final") -> pd.DataFrame:
    """One row per (table row, column): every seed's value x100, mean, sample std, min, max and range."""
    seeds = sorted({r["seed"] for r in study.records})
    rows = []
    for key, runs in study.groups.items():
        for column in study.columns:
            values = seed_values(runs, column, score).to_dict()
            if not values:
                continue
            mean, std, n = mean_std(values.values())
            row = {"column": column.name, "metric": column.metric, "role": key[0], "model": key[1], "method": key[2],
                   "n": n, "mean": mean, "std": std, "min": min(values.values()), "max": max(values.values())}
            row["range"] = row["max"] - row["min"]
            row.update({f"seed {s}": values.get(s, math.nan) for s in seeds})
            rows.append(row)
    return pd.DataFrame(rows)


def seed_spread_figure(study: Study, score: str = "final") -> Figure:
    """Per column: each row's seeds as dots and its mean ± std as a bar, so the seed noise is visible
    next to the differences between methods."""
    frame = seed_spread(study, score)
    columns = [c for c in study.columns if c.name in set(frame["column"])] if len(frame) else []
    keys = list(study.groups)
    fig = agg_figure(Figure(figsize=(max(6.0, 0.45 * len(keys) * max(1, len(columns)) + 2), 3.8)))
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
