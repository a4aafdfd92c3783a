"""ckd.paths, the one description of the results layout: formatting and parsing agree, and the
workflow's outputs and logs are where it says."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from ckd import paths
from tests.conftest import snakemake


def test_folders_format_and_parse_back(tmp_path: Path):
    study = tmp_path / "results" / "paper"
    run = paths.run_dir(study, "rte", "6L-768", "ckd-wr", 3)
    teacher = paths.teacher_dir(study, "rte", "bert-base", 0)
    assert run == study / "runs" / "rte" / "6L-768" / "ckd-wr" / "seed3"
    assert teacher == study / "teachers" / "rte" / "bert-base" / "seed0"
    assert paths.parse_run_dir(run, study) == paths.RunId("rte", "6L-768", "ckd-wr", 3)
    assert paths.parse_run_dir(teacher, study) == paths.RunId("rte", "bert-base", "teacher", 0)
    for ident in (paths.RunId("rte", "6L-768", "ckd-wr", 3), paths.RunId("rte", "bert-base", "teacher", 0)):
        assert paths.parse_run_dir(paths.folder_of(study, ident), study) == ident
    # not a run of the grid: a search run, a folder above a seed, a seed folder at the wrong depth
    search = study / paths.SEARCH_RUN.format(task="rte", student="6L-768", method="ckd", point="lr1e-4", seed=1)
    for other in (search, run.parent, study / "runs" / "rte" / "seed1", tmp_path / "elsewhere" / "seed1"):
        assert paths.parse_run_dir(other, study) is None, other
    # the study folder of a run, a teacher, or a file inside one (was `parents[4]` in ckd.explore)
    assert paths.study_of(run) == study and paths.study_of(run / "model" / "config.json") == study
    assert paths.study_of(teacher / "model") == study
    assert paths.study_of(tmp_path / "model") is None and paths.study_of(search) is None


def test_folders_and_logs_found_on_disk(tmp_path: Path):
    study = tmp_path / "s"
    for folder in (paths.run_dir(study, "sst2", "tiny", "kd", 1), paths.teacher_dir(study, "sst2", "bert", 2),
                   study / "search" / "runs" / "sst2" / "tiny" / "kd" / "p0" / "seed1"):
        folder.mkdir(parents=True)
    for log in (paths.RUN_LOG.format(task="sst2", student="tiny", method="kd", seed=1),
                paths.TEACHER_LOG.format(task="sst2", teacher="bert", seed=2),
                "logs/teachers/sst2/bert/seed2.logits.log"):  # another job's log of the same teacher
        (study / log).parent.mkdir(parents=True, exist_ok=True)
        (study / log).write_text("")
    assert sorted(run for run, _ in paths.run_folders(study)) == [("sst2", "bert", "teacher", 2), ("sst2", "tiny", "kd", 1)]
    assert sorted(run for run, _ in paths.run_logs(study)) == [("sst2", "bert", "teacher", 2), ("sst2", "tiny", "kd", 1)]


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory) -> tuple[Path, str]:
    results = tmp_path_factory.mktemp("layout")
    planned = snakemake("-n", "--configfile", "config/tuned.yaml", "--config", f"results_dir={results}")
    assert planned.returncode == 0, planned.stdout[-3000:]
    return results / "tuned", planned.stdout


def test_workflow_writes_the_layout_ckd_paths_describes(dry_run):
    """Every record, log and search run the workflow plans (a study with a grid search) is where
    ckd.paths puts it: the rules take their paths from it, the tables parse them with it."""
    study, out = dry_run
    records = [Path(p) for p in re.findall(r"output: (\S+/record\.json)", out)]
    assert len(records) > 100
    grid = [r for r in records if "/search/" not in str(r)]
    searched = [r for r in records if "/search/" in str(r)]
    assert grid and searched
    for record in grid:
        run = paths.parse_run_dir(record.parent, study)
        assert run is not None and paths.folder_of(study, run) == record.parent, record
        log = paths.TEACHER_LOG.format(task=run.task, teacher=run.model, seed=run.seed) if run.method == "teacher" \
            else paths.RUN_LOG.format(task=run.task, student=run.model, method=run.method, seed=run.seed)
        assert f"log: {study / log}" in out, log
    pattern = re.escape(str(study / paths.SEARCH_RUN)).replace(r"\{", "{").replace(r"\}", "}")
    pattern = re.sub(r"\{\w+\}", "[^/]+", pattern) + "/record.json"
    assert all(re.fullmatch(pattern, str(r)) for r in searched), searched[:3]
    for name in ("tables/main.csv", "tables/aggregate.json", "expected.json"):
        assert str(study / name) in out
