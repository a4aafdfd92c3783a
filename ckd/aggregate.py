"""`ckd aggregate`: every table of a study from its tidy runs frame (`ckd.frame`), written as CSV
(numbers, one fact per column), Markdown and LaTeX under tables/, with the frame itself
(tables/scores.csv), the per-run summary (runs.csv) and the settings used (aggregate.json, which the
notebooks read). The tables are built by `ckd.tables`; values in them are x100.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ckd import paths
from ckd.aggregate_settings import DEFAULTS, SETTINGS_FILE
from ckd.atomic import atomic_write_json, atomic_write_text
from ckd.errors import ConfigError
from ckd.frame import INTERMEDIATE, runs_frame, write_scores
from ckd.records import TEACHER_METHOD, records_frame, row_method, study_records
from ckd.tables.ablation import ablation_table
from ckd.tables.common import SCORES, frame_groups, method_sort_key, study_columns
from ckd.tables.main import DEFAULT_REFERENCE, load_reference, main_table, paper_delta_table
from ckd.tables.missing import missing_runs
from ckd.tables.one_class import one_class_table
from ckd.tables.render import write_table
from ckd.tables.selection import label_selection, load_selections, match_selections, selected_settings_table
from ckd.tables.significance import significance_table

SCORES_FILE = "scores.csv"  # the tidy runs frame (ckd.frame)


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
    # A first stage (TinyBERT's intermediate run) has no scores of its own: it counts as present in
    # missing.md but gets no row in the score tables.
    records, expected_runs = loaded.records, loaded.expected
    intermediate = {row_method(r) for r in records if r.get("kind") == INTERMEDIATE}
    scored = [r for r in records if r.get("kind") != INTERMEDIATE]
    selections, unmatched = match_selections(load_selections(study_dir), scored)
    frame = runs_frame(loaded, selections)
    groups = frame_groups(frame, {r["_path"]: r for r in records})
    columns = study_columns(list(frame.loc[frame["current"], "task"]) + [key[0] for key in expected_runs or ()])
    placeholders = sorted({("teacher" if m == TEACHER_METHOD else "student", s, m) for _, s, m, _ in expected_runs or ()
                           if m not in intermediate} - set(groups),
                          key=lambda k: (k[0] != "teacher", k[1], method_sort_key(k[2])))
    study = next((r["study"] for r in records if r.get("study")), study_dir.name)
    by_path = {r["_path"]: r for r in scored}
    shown = [by_path[p] for p in dict.fromkeys(frame.loc[frame["shown"], "path"]) if p in by_path]
    one_class = one_class_table(shown, score, study)  # the runs of `groups`: the main table's caption counts them
    tables = [
        main_table(groups, columns, score, study, placeholders, one_class),
        paper_delta_table(groups, columns, score, ref, study),
        ablation_table(groups, columns, score, study),
        significance_table(groups, columns, score, baseline, n_boot=n_boot, seed=seed, alternative=alternative,
                           study=study),
    ]
    label_selection(tables, selections)
    tables.append(selected_settings_table(selections, study, unmatched))
    written = []
    for table in tables:
        written += write_table(table, out_dir)
    written += write_table(one_class, out_dir, ("md", "csv"))
    missing = missing_runs(study_dir, frame, expected_runs, study)
    written += write_table(missing, out_dir, ("md", "csv"))
    runs = _study_relative(records_frame(scored), study_dir)
    atomic_write_text(out_dir / "runs.csv", runs.to_csv(index=False, float_format="%.10g", lineterminator="\n"))
    written.append(out_dir / "runs.csv")
    write_scores(_study_relative(frame, study_dir), out_dir / SCORES_FILE)
    written.append(out_dir / SCORES_FILE)
    settings = {"score": score, "baseline": baseline, "bootstrap": n_boot, "seed": seed, "alternative": alternative,
                "reference": _relative_to(reference, study_dir) if reference is not None else None,
                "expected": _relative_to(expected, study_dir) if expected is not None and not isinstance(expected, dict) else None,
                "include_stale": include_stale}
    atomic_write_json(out_dir / SETTINGS_FILE, settings)
    written.append(out_dir / SETTINGS_FILE)
    return written


def _study_relative(frame: pd.DataFrame, study_dir: Path) -> pd.DataFrame:
    """`frame` with its `path` column (record files) relative to the study folder, so that runs.csv and
    scores.csv do not depend on where the study lies: a committed study's tables are re-made byte for byte
    from its records anywhere."""
    return frame.assign(path=frame["path"].map(lambda path: _relative_to(path, study_dir))) if "path" in frame else frame


def _relative_to(path: str | Path, study_dir: Path) -> str:
    """`path` relative to the study folder when it lies inside it (POSIX form), else resolved."""
    resolved, root = Path(path).resolve(), study_dir.resolve()
    return resolved.relative_to(root).as_posix() if resolved.is_relative_to(root) else str(resolved)
