"""The missing-runs table: every run the study expects (or, without an expected list, that the runs
present imply) that has no current record, with why: not started, failed (the error line from its
log), started without a record, or stale (made with another config)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ckd import paths
from ckd.errors import CkdError
from ckd.records import TEACHER_METHOD
from ckd.tables.common import Table, method_sort_key, task_sort_key, task_spec


def _short(fingerprint) -> str:
    return str(fingerprint)[:12] if fingerprint else "none"


def _run_logs(study_dir: Path) -> dict[tuple, Path]:
    """The workflow's log of each run (ckd.paths.run_logs), keyed by (task, student, method, seed)."""
    logs = {}
    for run, path in paths.run_logs(study_dir):
        try:
            logs[(task_spec(run.task).name,) + tuple(run[1:])] = path
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


def _identity(row, study_dir: Path) -> tuple:
    """(task, student, method, seed) of a frame row: from its folder when it follows the study layout."""
    run = paths.parse_run_dir(Path(row.path).parent, study_dir)
    ident = tuple(run) if run is not None else (row.task, row.student, row.method, row.seed)
    return (task_spec(ident[0]).name,) + tuple(ident[1:])


def missing_runs(study_dir: Path, frame: pd.DataFrame, expected: dict[tuple, str | None] | None,
                 study: str | None = None) -> Table:
    """The table of the runs `expected` lists (None: inferred from what exists) that have no current
    record in `frame` (`ckd.frame.runs_frame`), each with its status."""
    runs = frame.drop_duplicates("path")
    present = {_identity(row, study_dir): row for row in runs[runs["current"] | ~runs["planned"]].itertuples()}
    stale_runs = {_identity(row, study_dir): row for row in runs[runs["stale"] & ~runs["current"]].itertuples()}
    included_stale = sorted(_identity(row, study_dir) for row in runs[runs["stale"] & runs["current"]].itertuples())
    started = set()
    for run, folder in paths.run_folders(study_dir):
        if not (folder / paths.RECORD).exists():
            started.add((task_spec(run.task).name,) + tuple(run[1:]))
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
            found = stale_runs[key].config_fingerprint
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
    if included_stale:
        notes.append(f"{len(included_stale)} stale run(s) included in the tables (--include-stale): "
                     + "; ".join(f"{t}/{s}/{m}/seed{seed}" for t, s, m, seed in included_stale))
    if expected is not None:
        extra = sorted(set(present) - grid, key=lambda k: (task_sort_key(k[0]), k[1], method_sort_key(k[2]), k[3]))
        if extra:
            notes.append(f"{len(extra)} finished run(s) not in the expected list (no longer planned), left out of the tables: "
                         + "; ".join(f"{t}/{s}/{m}/seed{seed}" for t, s, m, seed in extra))
    return Table("missing", f"Missing and failed runs, study {study or study_dir.name}", caption, header, rows, frame, notes,
                 label_columns=5)
