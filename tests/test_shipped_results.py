"""The real-data study the repository ships (results/glue-minilm, issue #19): its tables are what
`ckd aggregate` makes from its committed records, byte for byte; every record came from a clean checkout
of one commit of this repository; and the notebooks open it by default."""

from __future__ import annotations

import importlib
import shutil
import subprocess
from pathlib import Path

import pytest

from ckd import explore, paths
from ckd.aggregate import aggregate_study
from ckd.aggregate_settings import SETTINGS_FILE, read_settings
from ckd.records import load_records
from tests.conftest import REPO

STUDY = REPO / "results" / explore.DEFAULT_STUDY
INPUTS = (paths.RECORD, "predictions.json")  # what the tables are made from


def _records() -> list[dict]:
    return load_records(STUDY)


def test_the_shipped_study_is_the_notebooks_default(monkeypatch):
    monkeypatch.delenv(explore.STUDY_ENV, raising=False)
    monkeypatch.chdir(REPO / "notebooks")  # where Jupyter runs a notebook
    assert explore.default_study_dir().resolve() == STUDY.resolve()
    assert len(_records()) > 0, f"{STUDY} holds no run records"


def test_every_record_ran_from_one_clean_commit_of_this_repository():
    records = _records()
    commits = {r["git_commit"] for r in records}
    assert len(commits) == 1, f"records from several commits: {sorted(commits)}"
    assert [r for r in records if r["git_dirty"] is not False] == []
    (commit,) = commits
    known = subprocess.run(["git", "cat-file", "-e", f"{commit}^{{commit}}"], cwd=REPO, capture_output=True)
    if known.returncode != 0 and (REPO / ".git" / "shallow").exists():
        pytest.skip(f"shallow clone: commit {commit} is not in it")
    assert known.returncode == 0, f"records name commit {commit}, which this repository does not have"


def test_committed_tables_are_what_ckd_aggregate_makes_from_the_committed_records(tmp_path: Path):
    study = tmp_path / STUDY.name
    for source in STUDY.rglob("*.json"):
        if source.name in INPUTS or source.name == paths.EXPECTED:
            target = study / source.relative_to(STUDY)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    committed = STUDY / paths.TABLES
    settings = read_settings(committed)
    written = aggregate_study(study, tmp_path / "tables", score=settings["score"], baseline=settings["baseline"],
                              n_boot=settings["bootstrap"], seed=settings["seed"],
                              alternative=settings["alternative"], expected=study / paths.EXPECTED)
    assert SETTINGS_FILE in {path.name for path in written}  # it names expected.json relative to the study
    for path in written:
        assert path.read_bytes() == (committed / path.name).read_bytes(), f"{path.name} differs from {committed}"


def test_the_readme_shows_the_committed_tables(monkeypatch):
    """README.md holds, line for line, the two tables docs/analysis/readme_tables.py prints from the committed
    tables/ (main scores with MRPC accuracy, and significance against KD), so the README cannot drift."""
    monkeypatch.syspath_prepend(str(REPO / "docs" / "analysis"))
    readme_tables = importlib.import_module("readme_tables")
    readme = (REPO / "README.md").read_text(encoding="utf-8").splitlines()
    for table in (readme_tables.main_table(STUDY / "tables"), readme_tables.significance_table(STUDY / "tables")):
        assert len(table) > 3
        start = readme.index(table[0])  # ValueError names the header line the README lacks
        assert readme[start : start + len(table)] == table
