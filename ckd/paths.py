"""The results layout, in one place: where a study's teachers, runs, search runs, tables, plots and logs live.

    results/<study>/                                   the study folder (`study_dir` below)
      teachers/<task>/<teacher>/seed<k>/               a fine-tuned teacher (record.json, model/, ...)
      runs/<task>/<student>/<method>/seed<k>/          a distillation run (a TinyBERT first stage too)
      search/runs/<task>/<student>/<method>/<point>/seed<k>/   a grid-search run (`ckd select` reads it)
      search/plan/<task>/<student>/<method>.json       what `ckd select` compares
      search/selected/<task>/<student>/<method>.{yaml,json}   the setting it chose
      expected.json                                    the runs the study plans (`ckd aggregate --expected`)
      tables/, plots/                                  `ckd aggregate`, `ckd plots`
      logs/teachers/<task>/<teacher>/seed<k>.log, logs/runs/<task>/<student>/<method>/seed<k>.log

The templates are `str.format` patterns relative to the study folder whose field names are the
workflow's wildcards, so `f"{STUDY_DIR}/{paths.RUN}"` is a Snakemake output pattern as it stands.
The workflow (workflow/rules/common.smk, search_common.smk), the tables (`ckd.aggregate`), the
records (`ckd.records`), the figures and the notebooks (`ckd.explore`) all take the layout from here.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

TEACHERS = "teachers"
RUNS = "runs"
SEARCH = "search"
TABLES = "tables"
PLOTS = "plots"
LOGS = "logs"
EXPECTED = "expected.json"
RECORD = "record.json"
TEACHER_METHOD = "teacher"  # the method of a teacher's row in the tables and in expected.json

TEACHER = TEACHERS + "/{task}/{teacher}/seed{seed}"
RUN = RUNS + "/{task}/{student}/{method}/seed{seed}"
SEARCH_RUN = SEARCH + "/runs/{task}/{student}/{method}/{point}/seed{seed}"
SEARCH_PLAN = SEARCH + "/plan/{task}/{student}/{method}.json"
SELECTED = SEARCH + "/selected/{task}/{student}/{method}"  # + .yaml (settings) / .json (summary)
TEACHER_LOG = LOGS + "/teachers/{task}/{teacher}/seed{seed}.log"
RUN_LOG = LOGS + "/runs/{task}/{student}/{method}/seed{seed}.log"

_SEED = re.compile(r"^seed(\d+)$")


class RunId(NamedTuple):
    """One run of a study's grid: a teacher has method "teacher" and its name as `model`."""

    task: str
    model: str
    method: str
    seed: int


def teacher_dir(study_dir, task: str, teacher: str, seed: int) -> Path:
    return Path(study_dir) / TEACHER.format(task=task, teacher=teacher, seed=seed)


def run_dir(study_dir, task: str, student: str, method: str, seed: int) -> Path:
    return Path(study_dir) / RUN.format(task=task, student=student, method=method, seed=seed)


def folder_of(study_dir, run: RunId) -> Path:
    """The folder of a run of the grid (teachers/... for method "teacher", else runs/...)."""
    if run.method == TEACHER_METHOD:
        return teacher_dir(study_dir, run.task, run.model, run.seed)
    return run_dir(study_dir, run.task, run.model, run.method, run.seed)


def selected_summaries(study_dir) -> list[Path]:
    """Every search/selected/<task>/<student>/<method>.json of a study, sorted."""
    return sorted((Path(study_dir) / SELECTED.split("/{")[0]).glob("*/*/*.json"))


def parse_run_dir(folder, study_dir) -> RunId | None:
    """RunId of teachers/<task>/<teacher>/seed<k> or runs/<task>/<student>/<method>/seed<k> under
    `study_dir`; None for any other folder (search runs included). The task is as written (no alias
    resolution)."""
    try:
        parts = Path(folder).relative_to(study_dir).parts
    except ValueError:
        return None
    match = _SEED.match(parts[-1]) if parts else None
    if not match:
        return None
    if len(parts) == 5 and parts[0] == RUNS:
        return RunId(parts[1], parts[2], parts[3], int(match.group(1)))
    if len(parts) == 4 and parts[0] == TEACHERS:
        return RunId(parts[1], parts[2], TEACHER_METHOD, int(match.group(1)))
    return None


def is_teacher_path(path, study_dir) -> bool:
    """Whether a file or folder lies under the study's teachers/."""
    try:
        parts = Path(path).relative_to(study_dir).parts
    except ValueError:
        parts = Path(path).parts
    return TEACHERS in parts[:-1]


def is_tabulated(record_path, study_dir) -> bool:
    """Whether a record.json belongs to the study's tables: not under search/ (a grid search's own runs,
    read by `ckd select`) nor in a temporary folder (ckd.atomic's start with a dot)."""
    parts = Path(record_path).relative_to(study_dir).parts
    return not (any(part.startswith(".") for part in parts) or parts[0] == SEARCH)


def run_folders(study_dir) -> Iterator[tuple[RunId, Path]]:
    """Every seed folder of the study's teachers/ and runs/, finished or not."""
    study_dir = Path(study_dir)
    for pattern in (RUN, TEACHER):
        for folder in study_dir.glob(re.sub(r"\{\w+\}", "*", pattern)):
            run = parse_run_dir(folder, study_dir)
            if run is not None and folder.is_dir():
                yield run, folder


def run_logs(study_dir) -> Iterator[tuple[RunId, Path]]:
    """The workflow's log of each teacher and run: logs/teachers/.../seed<k>.log, logs/runs/.../seed<k>.log."""
    study_dir = Path(study_dir)
    for pattern, teacher in ((RUN_LOG, False), (TEACHER_LOG, True)):
        for path in study_dir.glob(re.sub(r"\{\w+\}", "*", pattern)):
            parts = path.relative_to(study_dir).parts
            match = _SEED.match(path.stem)
            if match and len(parts) == (5 if teacher else 6):
                yield RunId(parts[2], parts[3], TEACHER_METHOD if teacher else parts[4], int(match.group(1))), path


def study_of(folder) -> Path | None:
    """The study folder of a teacher or run folder (or of a file inside one), from the layout; None
    when the path does not follow it."""
    path = Path(folder)
    for seed_folder in (path, *path.parents):
        if not _SEED.match(seed_folder.name):
            continue
        for depth in (3, 4):  # teachers/<task>/<teacher>/seed<k>, runs/<task>/<student>/<method>/seed<k>
            if len(seed_folder.parents) > depth and parse_run_dir(seed_folder, seed_folder.parents[depth]):
                return seed_folder.parents[depth]
    return None
