"""Measured cost of a study: the Snakemake `benchmark:` files of its training jobs (`ckd.paths.BENCHMARK`)
joined with the run records, as one row per job and as sums per method x task x model and per study.

A benchmark file (Snakemake's TSV: `s` wall seconds, `max_rss` MB, `cpu_time` CPU seconds of the job's
processes, sampled every few seconds; "NA" when the job ended before the first sample) measures the job
as Snakemake last ran it. Units in the frames: seconds, hours, MB. GPU-hours are wall hours x the GPUs
the run used (its record's `runtime`: device cuda, world_size processes, one GPU each); the cache jobs
(teacher logits, teacher cache) use one GPU when their teacher ran on CUDA. CPU-hours are the measured
CPU time, not the CPUs allocated.

A job whose benchmark wall time is below its record's own `timing.wall_s` did not train in the
benchmarked attempt (a finished run restored, or a run resumed from a checkpoint): its row is marked
`partial` and the tables say how many such rows they hold, since their time understates the run's cost.

`write_cost` writes tables/cost_jobs.csv (per job), tables/cost.csv and cost.md (per method x task x
model, with the study's totals) and tables/cost.png (the plot); workflow/rules/cost.smk calls it, and
`ckd estimate` (ckd/commands/estimate.py) reads the per-job frame of an earlier study.
"""

from __future__ import annotations

import io
import json
import math
import os
import re
from collections.abc import Callable
from pathlib import Path

import pandas as pd

from ckd import paths
from ckd.atomic import atomic_write_bytes, atomic_write_text
from ckd.errors import CkdError

Log = Callable[[str], None]


class CostError(CkdError):
    """A benchmark file or cost table cannot be read."""


# rule -> (method shown in the tables, the output each job leaves: "run" folder or a cache path)
RULE_METHOD = {
    "finetune_teacher": paths.TEACHER_METHOD,
    "cache_teacher_logits": "teacher-logits",
    "cache_teacher": "teacher-cache",
    "search_teacher_logits": "teacher-search-logits",
    "distill": None,  # the run's own method
    "search_distill": None,  # "<method>@<point>"
}
JOB_COLUMNS = ["rule", "task", "model", "method", "seed", "point", "wall_s", "cpu_s", "max_rss_mb", "device",
               "gpus", "gpu_h", "cpu_h", "record_wall_s", "partial", "disk_mb", "benchmark"]
GROUP_KEYS = ["task", "model", "method"]
PARTIAL_TOLERANCE = 0.9  # a benchmark below 90 % of the record's own wall time did not measure the training


def read_benchmark(path: str | os.PathLike) -> dict[str, float]:
    """{wall_s, cpu_s, max_rss_mb} of a Snakemake benchmark TSV (its last row: the attempt that finished);
    NaN where Snakemake wrote "NA". Raises CostError naming the file when it is not such a TSV."""
    path = Path(path)
    try:
        frame = pd.read_csv(path, sep="\t", na_values=["NA", "-"])
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise CostError(f"{path}: not a readable Snakemake benchmark file ({exc}); delete it and re-run its job") from exc
    missing = [c for c in ("s", "max_rss", "cpu_time") if c not in frame.columns]
    if missing or frame.empty:
        what = f"column(s) {', '.join(missing)} missing" if missing else "no row"
        raise CostError(f"{path}: not a Snakemake benchmark file ({what}); delete it and re-run its job")
    last = frame.iloc[-1]
    values = {"wall_s": last["s"], "cpu_s": last["cpu_time"], "max_rss_mb": last["max_rss"]}
    out = {}
    for key, value in values.items():
        try:
            out[key] = float(value)
        except (TypeError, ValueError):
            raise CostError(f"{path}: {key} {value!r} is not a number; delete the file and re-run its job") from None
    if not math.isfinite(out["wall_s"]) or out["wall_s"] < 0:
        raise CostError(f"{path}: wall time s={values['wall_s']!r} is not a non-negative number; re-run its job")
    return out


def _json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _size_mb(path: Path) -> float:
    if path.is_file():
        return path.stat().st_size / 2**20
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink()) / 2**20
    return math.nan


def _job_output(study_dir: Path, rule: str, fields: dict[str, str]) -> tuple[Path, Path]:
    """(what the job left on disk: its run folder or its cache, the record that says how it ran)."""
    fields = {**fields, "seed": int(fields["seed"])}
    output = study_dir / paths.JOB_OUTPUT[rule].format(**fields)
    if output.name in (paths.RECORD, "manifest.json"):  # a run folder, a teacher cache folder
        output = output.parent
    if rule in ("distill", "search_distill"):
        return output, output / paths.RECORD
    return output, paths.teacher_dir(study_dir, fields["task"], fields["teacher"], fields["seed"]) / paths.RECORD


def job_costs(study_dir: str | os.PathLike) -> pd.DataFrame:
    """One row per benchmarked training job of a study (columns JOB_COLUMNS): wall, CPU and memory from
    its benchmark file, device and GPUs from its record, the size of what it left on disk (run folder with
    checkpoints and model, or the cache). An empty frame when the study has no benchmark file."""
    study_dir = Path(study_dir)
    rows = []
    for rule, fields, path in paths.benchmark_files(study_dir):
        measured = read_benchmark(path)
        output, record_path = _job_output(study_dir, rule, fields)
        record = _json(record_path)
        runtime = (record or {}).get("runtime") or {}
        device = str(runtime.get("device") or "cpu")
        gpus = int(runtime.get("world_size") or 1) if device.startswith("cuda") else 0
        if rule not in ("finetune_teacher", "distill", "search_distill"):
            gpus = min(gpus, 1)  # the cache commands use one device
        trained = rule in ("finetune_teacher", "distill", "search_distill")
        record_wall = ((record or {}).get("timing") or {}).get("wall_s") if trained else None
        record_wall = float(record_wall) if isinstance(record_wall, (int, float)) else math.nan
        method = RULE_METHOD[rule] or fields["method"]
        rows.append({
            "rule": rule, "task": fields["task"], "model": fields.get("student") or fields["teacher"],
            "method": method, "seed": int(fields["seed"]), "point": fields.get("point", ""),
            **measured, "device": device, "gpus": gpus,
            "gpu_h": measured["wall_s"] * gpus / 3600, "cpu_h": measured["cpu_s"] / 3600,
            "record_wall_s": record_wall,
            "partial": bool(measured["wall_s"] < PARTIAL_TOLERANCE * record_wall),
            "disk_mb": _size_mb(output), "benchmark": str(path.relative_to(study_dir)),
        })
    return pd.DataFrame(rows, columns=JOB_COLUMNS)


def cost_table(jobs: pd.DataFrame) -> pd.DataFrame:
    """Sums per task x model x method (search runs: method "<method>@search"): jobs, wall hours, mean wall
    seconds per job, CPU- and GPU-hours, the largest max RSS (MB), disk (MB), partial jobs."""
    if jobs.empty:
        return pd.DataFrame(columns=GROUP_KEYS + ["jobs", "wall_h", "wall_s_mean", "cpu_h", "gpu_h", "max_rss_mb",
                                                  "disk_mb", "partial"])
    frame = jobs.assign(method=jobs["method"].where(jobs["rule"] != "search_distill", jobs["method"] + "@search"),
                        wall_h=jobs["wall_s"] / 3600)
    table = frame.groupby(GROUP_KEYS, sort=True).agg(
        jobs=("wall_s", "size"), wall_h=("wall_h", "sum"), wall_s_mean=("wall_s", "mean"),
        cpu_h=("cpu_h", lambda s: s.sum(min_count=1)), gpu_h=("gpu_h", "sum"),
        max_rss_mb=("max_rss_mb", "max"), disk_mb=("disk_mb", lambda s: s.sum(min_count=1)),
        partial=("partial", "sum"),
    )
    return table.reset_index()


def study_totals(jobs: pd.DataFrame) -> dict[str, float]:
    """The study's totals: jobs, wall/CPU/GPU hours, largest max RSS (MB), disk (MB), partial jobs."""
    return {
        "jobs": int(len(jobs)), "wall_h": float(jobs["wall_s"].sum() / 3600),
        "cpu_h": float(jobs["cpu_h"].sum()), "gpu_h": float(jobs["gpu_h"].sum()),
        "max_rss_mb": float(jobs["max_rss_mb"].max()) if len(jobs) else math.nan,
        "disk_mb": float(jobs["disk_mb"].sum()), "partial": int(jobs["partial"].sum()),
    }


def _markdown(table: pd.DataFrame, totals: dict, study: str) -> str:
    shown = table.copy()
    for column, digits in (("wall_h", 4), ("wall_s_mean", 1), ("cpu_h", 4), ("gpu_h", 4), ("max_rss_mb", 0),
                           ("disk_mb", 1)):
        shown[column] = shown[column].map(lambda v, d=digits: "n/a" if pd.isna(v) else f"{v:.{d}f}")
    lines = [f"# Cost of study {study}", "",
             "Measured by Snakemake's `benchmark:` files of the training jobs (ckd.cost): wall hours, mean wall "
             "seconds per job, CPU-hours (measured CPU time), GPU-hours (wall x GPUs used), largest max RSS (MB), "
             "disk left by the jobs (run folders with checkpoints and models, caches; MB).", ""]
    if len(table):
        lines += [shown.to_markdown(index=False, tablefmt="github"), ""]
    else:
        lines += [f"No benchmark file under {paths.BENCHMARKS}/: no training job of this study ran with a workflow "
                  "that records them.", ""]
    lines += [f"Study total: {totals['jobs']} jobs, {totals['wall_h']:.4f} wall hours, {totals['cpu_h']:.4f} "
              f"CPU-hours, {totals['gpu_h']:.4f} GPU-hours, largest max RSS "
              f"{'n/a' if math.isnan(totals['max_rss_mb']) else format(totals['max_rss_mb'], '.0f')} MB, "
              f"disk {totals['disk_mb']:.1f} MB."]
    if totals["partial"]:
        lines += ["", f"{totals['partial']} job(s) are partial: their benchmarked attempt ran shorter than the "
                  "run's recorded training (a finished run restored or resumed), so these rows understate the cost."]
    return "\n".join(lines) + "\n"


def plot_hours(table: pd.DataFrame, study: str):
    """Bar chart of hours per method (GPU-hours when any job used a GPU, else wall hours), one bar group per
    task and model (a note when the table is empty); a matplotlib Figure on its own Agg canvas, drawn
    without pyplot as in ckd.plots."""
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if not len(table):
        fig = Figure(figsize=(5.0, 2.0))
        FigureCanvasAgg(fig)
        fig.text(0.5, 0.5, f"study {study}: no benchmark files (no training job ran with this workflow)",
                 ha="center", va="center", fontsize=8)
        return fig
    column, label = ("gpu_h", "GPU-hours") if table["gpu_h"].sum() > 0 else ("wall_h", "wall hours (CPU jobs)")
    pivot = table.pivot_table(index=["task", "model"], columns="method", values=column, aggfunc="sum", fill_value=0)
    fig = Figure(figsize=(min(16.0, max(5.0, 1.2 + 0.35 * pivot.size)), 3.6))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    width = 0.8 / len(pivot.columns)
    palette = colormaps["tab20"]
    for i, method in enumerate(pivot.columns):
        ax.bar([x + (i - (len(pivot.columns) - 1) / 2) * width for x in range(len(pivot.index))], pivot[method],
               width=width, label=method, color=palette(i % 20))
    ax.set_xticks(range(len(pivot.index)), [f"{task}\n{model}" for task, model in pivot.index], fontsize=7)
    ax.set_ylabel(label)
    ax.set_title(f"study {study}: {label} per method (sum over seeds)", fontsize=9)
    ax.legend(fontsize=6, ncols=2)
    fig.tight_layout()
    return fig


def write_cost(study_dir: str | os.PathLike, out_dir: str | os.PathLike | None = None, *,
               log: Log = print) -> list[Path]:
    """Write cost_jobs.csv, cost.csv, cost.md and cost.png into `out_dir` (default <study>/tables); returns
    the files written. A study without benchmark files gets the tables with a note and no plot."""
    study_dir = Path(study_dir)
    out_dir = Path(out_dir) if out_dir is not None else study_dir / paths.TABLES
    jobs = job_costs(study_dir)
    table = cost_table(jobs)
    totals = study_totals(jobs)
    study = study_dir.name
    written = []
    for name, text in (("cost_jobs.csv", jobs.to_csv(index=False)), ("cost.csv", table.to_csv(index=False)),
                       ("cost.md", _markdown(table, totals, study))):
        atomic_write_text(out_dir / name, text)
        written.append(out_dir / name)
    if not len(table):
        log(f"cost: no benchmark file under {study_dir / paths.BENCHMARKS}; the tables are empty")
    buffer = io.BytesIO()
    plot_hours(table, study).savefig(buffer, format="png", dpi=150, metadata={"Software": None})
    atomic_write_bytes(out_dir / "cost.png", buffer.getvalue())
    written.append(out_dir / "cost.png")
    if totals["partial"]:
        log(f"cost: {totals['partial']} partial job(s) (restored or resumed runs) understate the cost")
    return written


# ---------------------------------------------------------------- estimate before submission (ckd estimate)

# the study's resources.<kind> of each rule (workflow/rules/*.smk)
RULE_RESOURCES = {"finetune_teacher": "finetune", "cache_teacher_logits": "cache_logits",
                  "cache_teacher": "cache_logits", "search_teacher_logits": "cache_logits",
                  "distill": "distill", "search_distill": "distill"}
CACHE_RULES = ("cache_teacher_logits", "cache_teacher", "search_teacher_logits")
# where a rule's time is looked up when the measured study never ran it
RULE_FALLBACK = {"search_distill": "distill", "search_teacher_logits": "cache_teacher_logits"}


def planned_jobs(summary: str, all_jobs: bool = False) -> tuple[pd.DataFrame, list[str]]:
    """The training jobs of `snakemake --summary` output (tab-separated: output_file, date, rule, log-file(s),
    status, plan) as rows rule/task/model/method/seed; only those whose plan is an update unless `all_jobs`.
    Also the names of the other rules that would run (not timed; the summary lists outputs, not jobs)."""
    lines = summary.splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith("output_file\t")), None)
    if start is None:
        raise CostError("snakemake --summary printed no table (no line starting with 'output_file'); "
                        "run `snakemake --summary` with the same arguments to see why")
    regexes = {rule: re.compile(r"(?:^|/)" + paths.pattern_regex(pattern).pattern) for rule, pattern in paths.JOB_OUTPUT.items()}
    rows, others = [], set()
    for line in lines[start + 1:]:
        cells = line.split("\t")
        if len(cells) < 6:
            continue
        output, rule, plan = cells[0], cells[2], cells[-1]
        if not all_jobs and plan == "no update":
            continue
        if rule not in regexes:
            if rule != "-":
                others.add(rule)
            continue
        match = regexes[rule].search(output)
        if match is None:
            continue
        fields = match.groupdict()
        rows.append({"rule": rule, "task": fields["task"], "model": fields.get("student") or fields["teacher"],
                     "method": RULE_METHOD[rule] or fields["method"], "seed": int(fields["seed"])})
    return pd.DataFrame(rows, columns=["rule", "task", "model", "method", "seed"]), sorted(others)


def reference_costs(source: str | os.PathLike) -> pd.DataFrame:
    """Measured jobs to time a plan with: a study folder (its benchmark files, else its records' own
    `timing.wall_s`, for teachers and runs) or a cost_jobs.csv that `write_cost` wrote. A partial job
    (restored or resumed) counts with its record's wall time. Raises CostError when there is nothing."""
    source = Path(source)
    if source.is_file():
        try:
            jobs = pd.read_csv(source)
        except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
            raise CostError(f"--measured {source}: not a readable cost_jobs.csv ({exc})") from exc
        missing = [c for c in ("rule", "task", "model", "method", "wall_s") if c not in jobs.columns]
        if missing:
            raise CostError(f"--measured {source}: column(s) {', '.join(missing)} missing; give a cost_jobs.csv "
                            "that ckd.cost wrote (tables/cost_jobs.csv) or a study folder")
    elif source.is_dir():
        jobs = job_costs(source)
        if jobs.empty:  # a study run before the benchmark files: its records' own wall times
            rows = []
            for run, folder in paths.run_folders(source):
                record = _json(folder / paths.RECORD) or {}
                wall = (record.get("timing") or {}).get("wall_s")
                if isinstance(wall, (int, float)) and wall > 0:
                    rows.append({"rule": "finetune_teacher" if run.method == paths.TEACHER_METHOD else "distill",
                                 "task": run.task, "model": run.model, "method": run.method,
                                 "wall_s": float(wall), "disk_mb": _size_mb(folder)})
            jobs = pd.DataFrame(rows, columns=["rule", "task", "model", "method", "wall_s", "disk_mb"])
    else:
        raise CostError(f"--measured {source}: no such file or folder; give a study folder (results/<study>) "
                        "or its tables/cost_jobs.csv")
    if jobs.empty:
        raise CostError(f"--measured {source}: no measured job (no benchmark file, no record with timing.wall_s); "
                        "run a small study first (make demo) and give its folder")
    jobs = jobs.copy()
    if "partial" in jobs.columns and "record_wall_s" in jobs.columns:
        partial = jobs["partial"].astype(bool)
        jobs.loc[partial, "wall_s"] = jobs.loc[partial, "record_wall_s"]
    if "disk_mb" not in jobs.columns:
        jobs["disk_mb"] = math.nan
    bad = jobs["wall_s"].isna() | (jobs["wall_s"] < 0)
    if bad.any():
        raise CostError(f"--measured {source}: {int(bad.sum())} job(s) without a wall time (e.g. rule "
                        f"{jobs.loc[bad, 'rule'].iloc[0]}); re-run them or drop those rows")
    return jobs


def estimate(planned: pd.DataFrame, reference: pd.DataFrame, resources: dict, source: str = "--measured") \
        -> pd.DataFrame:
    """Each planned job with its estimated wall seconds and disk MB: the mean of the measured jobs of the same
    rule, task, model and method, else of the same rule and method, else of the same rule (a search run or
    search logits job falls back to distill / cache_teacher_logits); `match` says which. GPU-hours and
    allocated CPU-hours from the study's `resources` (gpu, threads per job). Raises CostError naming the rule
    when nothing measured can time it."""
    reference = reference.assign(rule=reference["rule"].astype(str), method=reference["method"].astype(str))
    levels = (("exact", ["rule", "task", "model", "method"]), ("method", ["rule", "method"]), ("rule", ["rule"]))
    means = {name: reference.groupby(keys)[["wall_s", "disk_mb"]].mean() for name, keys in levels}
    rows = []
    for job in planned.to_dict("records"):
        found = None
        for rule in (job["rule"], RULE_FALLBACK.get(job["rule"])):
            for name, keys in levels:
                key = tuple(rule if k == "rule" else job[k] for k in keys)
                table = means[name]
                key = key[0] if len(key) == 1 else key
                if rule is not None and key in table.index:
                    found = (name if rule == job["rule"] else f"{name} ({rule})", table.loc[key])
                    break
            if found:
                break
        if found is None:
            raise CostError(f"{source}: no measured {job['rule']} job to time the planned ones (e.g. {job['task']} "
                            f"{job['model']} {job['method']} seed {job['seed']}); measure a study that runs "
                            f"{job['rule']} first (a small version of this study: fewer tasks, seeds or epochs)")
        match, values = found
        kind = resources.get(RULE_RESOURCES[job["rule"]]) or {}
        gpus = int(kind.get("gpu") or 0)
        if job["rule"] in CACHE_RULES:
            gpus = min(gpus, 1)
        wall = float(values["wall_s"])
        rows.append({**job, "match": match, "wall_s": wall, "disk_mb": float(values["disk_mb"]),
                     "gpu_h": wall * gpus / 3600, "cpu_h_alloc": wall * int(kind.get("threads") or 1) / 3600})
    return pd.DataFrame(rows, columns=["rule", "task", "model", "method", "seed", "match", "wall_s", "disk_mb",
                                       "gpu_h", "cpu_h_alloc"])


def estimate_summary(jobs: pd.DataFrame) -> dict:
    """Totals of an estimate: jobs, wall/GPU/CPU hours, checkpoint disk (teachers and runs) and cache disk (MB),
    and {rule: jobs} per rule."""
    cache = jobs["rule"].isin(CACHE_RULES)
    return {"jobs": int(len(jobs)), "wall_h": float(jobs["wall_s"].sum() / 3600),
            "gpu_h": float(jobs["gpu_h"].sum()), "cpu_h_alloc": float(jobs["cpu_h_alloc"].sum()),
            "checkpoint_disk_mb": float(jobs.loc[~cache, "disk_mb"].sum(min_count=1)),
            "cache_disk_mb": float(jobs.loc[cache, "disk_mb"].sum(min_count=1)) if cache.any() else 0.0,
            "per_rule": {rule: int(n) for rule, n in jobs["rule"].value_counts(sort=False).items()}}
