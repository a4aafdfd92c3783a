"""The results layout, in one place: where a study's teachers, runs, search runs, tables, plots and logs live.

    results/<study>/                                   the study folder (`study_dir` below)
      teachers/<task>/<teacher>/seed<k>/               a fine-tuned teacher (record.json, model/, ...)
      runs/<task>/<student>/<method>/seed<k>/          a distillation run (a TinyBERT first stage too)
      search/runs/<task>/<student>/<method>/<point>/seed<k>/   a grid-search run (`ckd select` reads it)
      search/plan/<task>/<student>/<method>.json       what `ckd select` compares
      search/selected/<task>/<student>/<method>.{yaml,json}   the setting it chose
      corpora/<corpus>/<tokenizer>-len<L>/             a packed corpus (ckd pack-corpus)
      general/<general>/                               a general-distilled student (ckd general-distill; not tabulated)
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
# general (task-agnostic) distillation: packed corpora (one per corpus, tokenizer and length) and general students
CORPORA = "corpora"
GENERAL = "general"
CORPUS_PACK = CORPORA + "/{corpus}/{tokenizer}-len{length}"   # ckd pack-corpus: manifest.json + shards
GENERAL_RUN = GENERAL + "/{general}"                          # ckd general-distill: record.json, model/
CORPUS_LOG = LOGS + "/" + CORPUS_PACK + ".log"
GENERAL_LOG = LOGS + "/" + GENERAL_RUN + ".log"

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
    read by `ckd select`), general/ or corpora/ (the general stage: its task runs are tabulated), dynabert/
    (its own tables: ckd.dynabert.report) nor in a temporary folder (ckd.atomic's start with a dot)."""
    parts = Path(record_path).relative_to(study_dir).parts
    return not (any(part.startswith(".") for part in parts) or parts[0] in (SEARCH, GENERAL, CORPORA, DYNABERT))


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


# DynaBERT (ckd/dynabert, workflow/rules/dynabert.smk): the teacher's rewired copy per teacher seed, then
# per objective (a method of ckd/resources/dynabert_methods.yaml) and seed the two stages' run folders,
# the dev scores of every (width, depth) and the exported sub-networks (one folder each + sizes.json).
#   dynabert/<task>/<teacher>/rewired/seed<k>/
#   dynabert/<task>/<teacher>/<objective>/{width,depth}/seed<k>/
#   dynabert/<task>/<teacher>/<objective>/eval/seed<k>.json
#   dynabert/<task>/<teacher>/<objective>/export/seed<k>/{w<m_w>-d<m_d>/, sizes.json}
#   dynabert/report/   tables and plots (ckd.dynabert.report)
DYNABERT = "dynabert"
DYNABERT_REWIRED = DYNABERT + "/{task}/{teacher}/rewired/seed{seed}"
DYNABERT_STAGE = DYNABERT + "/{task}/{teacher}/{objective}/{stage}/seed{seed}"
DYNABERT_EVAL = DYNABERT + "/{task}/{teacher}/{objective}/eval/seed{seed}.json"
DYNABERT_EXPORT = DYNABERT + "/{task}/{teacher}/{objective}/export/seed{seed}"
DYNABERT_REPORT = DYNABERT + "/report"
DYNABERT_LOG = LOGS + "/dynabert/{task}/{teacher}/{objective}/{step}/seed{seed}.log"


def dynabert_results(study_dir) -> Iterator[tuple[dict, Path, Path]]:
    """({task, teacher, objective, seed}, eval JSON, export folder) of every evaluated DynaBERT run of a study."""
    study_dir = Path(study_dir)
    for path in sorted(study_dir.glob(re.sub(r"\{\w+\}", "*", DYNABERT_EVAL))):
        parts = path.relative_to(study_dir).parts
        match = _SEED.match(path.stem)
        if match and len(parts) == 6:
            key = {"task": parts[1], "teacher": parts[2], "objective": parts[3], "seed": int(match.group(1))}
            yield key, path, study_dir / DYNABERT_EXPORT.format(**key)


# Snakemake `benchmark:` files of the training jobs (workflow/rules/*.smk), one TSV per job: wall seconds
# (`s`), max RSS (MB), CPU seconds (`cpu_time`) of the job's processes. `ckd.cost` reads them with the
# records into the cost table. Keyed by rule; the patterns' fields are the rules' wildcards.
BENCHMARKS = "benchmarks"
BENCHMARK = {
    "finetune_teacher": BENCHMARKS + "/teachers/{task}/{teacher}/seed{seed}.finetune.tsv",
    "cache_teacher_logits": BENCHMARKS + "/teachers/{task}/{teacher}/seed{seed}.logits.tsv",
    "cache_teacher": BENCHMARKS + "/teachers/{task}/{teacher}/seed{seed}.teacher_cache.tsv",
    "search_teacher_logits": BENCHMARKS + "/teachers/{task}/{teacher}/seed{seed}.search_logits.tsv",
    "distill": BENCHMARKS + "/runs/{task}/{student}/{method}/seed{seed}.tsv",
    "search_distill": BENCHMARKS + "/search/{task}/{student}/{method}/{point}/seed{seed}.tsv",
}

# What each of those jobs writes last (the output `snakemake --summary` lists; workflow/rules/*.smk)
JOB_OUTPUT = {
    "finetune_teacher": TEACHER + "/" + RECORD,
    "cache_teacher_logits": TEACHER + "/train_logits.pt",
    "cache_teacher": TEACHER + "/teacher_cache/manifest.json",
    "search_teacher_logits": TEACHER + "/search_train_logits.pt",
    "distill": RUN + "/" + RECORD,
    "search_distill": SEARCH_RUN + "/" + RECORD,
}


def pattern_regex(pattern: str) -> re.Pattern:
    """A regex matching a path made from a template (each `{field}` a named group, one path part), to the end."""
    fields = re.split(r"(\{\w+\})", pattern)
    return re.compile("".join(
        f"(?P<{part[1:-1]}>[^/]+?)" if part.startswith("{") else re.escape(part) for part in fields) + "$")


def benchmark_files(study_dir) -> Iterator[tuple[str, dict[str, str], Path]]:
    """(rule, wildcards, path) of every benchmark file a study's jobs wrote (BENCHMARK), sorted by path;
    `seed` stays a string as in the file name."""
    study_dir = Path(study_dir)
    found = []
    for rule, pattern in BENCHMARK.items():
        regex = pattern_regex(pattern)
        for path in study_dir.glob(re.sub(r"\{\w+\}", "*", pattern)):
            match = regex.match(path.relative_to(study_dir).as_posix())
            if match:
                found.append((rule, match.groupdict(), path))
    return iter(sorted(found, key=lambda item: str(item[2])))
