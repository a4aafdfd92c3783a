"""What every table shares: the row groups and columns of a study, the cell statistic, and the
number formats. Values in the tables are x100 (`ckd.frame` keeps fractions)."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field

import pandas as pd

from ckd.errors import CkdError
from ckd.records import TEACHER_METHOD, model_info, model_name, record_cells
from ckd.stats import canonical_metric, mean_std

PAPER_TASK_ORDER = ("cola", "sst2", "stsb", "qqp", "mnli", "qnli", "rte", "mrpc", "wnli")
METHOD_ORDER = ("finetune", "kd", "pkd", "tinybert", "minilm", "distilbert", "ckd")
SCORES = {
    "final": "final checkpoint (end of training)",
    "best": "best-on-dev checkpoint (selected on the dev metric itself, hence optimistic)",
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
    markdown: str | None = None  # the .md text, for a table read back from the files `ckd aggregate` wrote


class RunGroup(list):
    """The runs of one table row: their records (a list, task names canonical) and `scores`, the
    frame's rows of those runs, from which `cell` computes."""

    def __init__(self, records: Iterable[dict] = (), scores: pd.DataFrame | None = None):
        super().__init__(records)
        self.scores = scores if scores is not None else scores_of(self)


def task_spec(name: str):
    from ckd.data.tasks import get_task

    return get_task(name)


def scores_of(records: Iterable[dict]) -> pd.DataFrame:
    """The frame's (task, seed, score, split, metric, value) rows of records (`ckd.frame.record_cells`)."""
    rows = [dict(task=task_spec(r["task"]).name, seed=r["seed"], path=r.get("_path"), **c)
            for r in records for c in record_cells(r)]
    return pd.DataFrame(rows, columns=["task", "seed", "path", "score", "split", "metric", "value"])


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
        spec = task_spec(name)
        columns += [Column(col, spec.name, split, metric) for col, split, metric in spec.report]
    return columns


def group_params(runs: list[dict]) -> float:
    for record in runs:
        value = model_info(record).get("params")
        if isinstance(value, (int, float)):
            return float(value)
    return math.nan


def _row_order(groups: dict[RowKey, list[dict]]):
    def order(key: RowKey):
        params = group_params(groups[key])
        return (key[0] != "teacher", -(params if math.isfinite(params) else -1), key[1], method_sort_key(key[2]))

    return {key: groups[key] for key in sorted(groups, key=order)}


def frame_groups(frame: pd.DataFrame, records: dict[str, dict], intermediate: bool = False) -> dict[RowKey, RunGroup]:
    """Rows of the tables from the frame's shown rows: (role, student, method) -> its runs, teacher
    rows first, then by size (largest first), model name and method. `records`: record by path;
    `intermediate`: also the current first-stage runs (the figures draw their training curves).
    Raises CkdError when two shown records are the same run (task, model, method, seed)."""
    shown = frame[frame["current"] if intermediate else frame["shown"]]
    runs = shown.drop_duplicates("path")
    twins = runs[runs.duplicated(["role", "student", "method", "task", "seed"], keep=False)]
    if not twins.empty:
        first = twins.iloc[0]
        same = twins[(twins[["role", "student", "method", "task", "seed"]] == first[
            ["role", "student", "method", "task", "seed"]]).all(axis=1)]["path"].tolist()
        raise CkdError(f"two records for task {first.task}, {first.student}, {first.method}, seed {first.seed}: "
                       f"{same[0]} and {same[1]}; remove the stale one")
    groups = {}
    for key, rows in shown.groupby(["role", "student", "method"], sort=False):
        paths = list(dict.fromkeys(rows["path"]))
        group = [dict(records[p], task=task_spec(records[p]["task"]).name) for p in paths]
        groups[key] = RunGroup(group, rows[rows["score"].notna()])
    return _row_order(groups)


def group_records(records: list[dict]) -> dict[RowKey, RunGroup]:
    """`frame_groups` of records that are all current (a study filtered for a notebook), first stages included."""
    from ckd.frame import records_frame_of

    return frame_groups(records_frame_of(records), {r["_path"]: r for r in records}, intermediate=True)


def seed_values(runs: list[dict], column: Column, score: str, metric: str | None = None) -> pd.Series:
    """Each seed's value x100 of one row for one column (index: seed, sorted): the frame's value of that
    task, split, score and metric (a record naming the metric by an alias, e.g. `acc`, counts); seeds
    without a finite value are left out (a missing seed, never a 0)."""
    scores = runs.scores if isinstance(runs, RunGroup) else scores_of(runs)
    rows = scores[(scores["task"] == column.task) & (scores["score"] == score) & (scores["split"] == column.split)]
    wanted = metric or column.metric
    exact = rows["metric"] == wanted
    alias = rows["metric"].map(canonical_metric) == canonical_metric(wanted) if canonical_metric(wanted) else exact
    has_exact = rows["path"].isin(rows.loc[exact, "path"])
    rows = rows[exact | (alias & ~has_exact)].drop_duplicates("path").dropna(subset=["value"])
    return (100 * rows.set_index(rows["seed"].astype(int))["value"]).sort_index()


def cell(runs: list[dict], column: Column, score: str, metric: str | None = None) -> tuple[float, float, int, list[int]]:
    """(mean, sample std with ddof=1, n, seeds) x100 over the seeds of one row for one column (`seed_values`)."""
    values = seed_values(runs, column, score, metric)
    mean, std, n = mean_std(values)
    return mean, std, n, list(values.index)


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


def run_regime(runs: list[dict]) -> str:
    """The distillation regime of a row's runs ("task-specific" unless the records say otherwise)."""
    from ckd.frame import DEFAULT_REGIME

    return next((r["regime"] for r in runs if r.get("regime")), DEFAULT_REGIME)


def row_label(role: str, student: str) -> str:
    return f"{student} (teacher)" if role == "teacher" else student


def student_size(runs: list[dict]) -> str:
    info = model_info(runs[0])
    if info.get("layers") and info.get("hidden"):
        return f"{info['layers']}L-{info['hidden']}"
    return model_name(runs[0])
