"""The Snakemake workflow through the real `snakemake` command: the smoke study end to end (once per
session, into a temporary results folder), incremental re-runs, dry runs of the other studies,
config validation and the HTML report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from ckd.prefetch import study_items
from tests.conftest import job_counts, snakemake
from tests.fixtures.markdown import compact_markdown

REPO = Path(__file__).resolve().parent.parent
SMOKE = yaml.safe_load((REPO / "config" / "smoke.yaml").read_text())


@pytest.fixture(scope="session")
def smoke(smoke_results) -> Path:
    return smoke_results


def smoke_args(results: Path) -> list[str]:
    return ["--config", f"results_dir={results}"]


def test_smoke_study_runs_end_to_end(smoke):
    study = smoke / SMOKE["study"]
    teachers = sorted(study.glob("teachers/*/*/seed*/record.json"))
    runs = sorted(study.glob("runs/*/*/*/seed*/record.json"))
    n_tasks, n_seeds = len(SMOKE["tasks"]), len(SMOKE["seeds"])
    assert len(teachers) == n_tasks * len(SMOKE["teacher_seeds"])
    # every student's methods once per (task, seed), TinyBERT twice (its first stage is a run of its own)
    methods = [m for s in SMOKE["students"].values() for m in s.get("methods") or SMOKE["methods"]]
    assert len(runs) == n_tasks * n_seeds * (len(methods) + methods.count("tinybert"))
    for name in ("main", "paper_delta", "ablation", "significance"):
        for ext in ("csv", "md", "tex"):
            assert (study / "tables" / f"{name}.{ext}").stat().st_size > 0
    main = compact_markdown((study / "tables" / "main.md").read_text())
    for method in SMOKE["methods"]:
        assert f"| {method} |" in main
    assert "No missing runs." in (study / "tables" / "missing.md").read_text()
    assert list((study / "plots").glob("*.png"))
    for path in (study / "logs").rglob("*.log"):
        assert "Traceback" not in path.read_text(), path


def test_smoke_teachers_learn(smoke):
    """A tiny teacher beats chance on every synthetic task, and its student rows are not all chance."""
    chance = {"syn-sentiment": 0.5, "syn-pair": 1 / 3}
    for path in (smoke / SMOKE["study"]).glob("teachers/*/*/seed*/record.json"):
        record = json.loads(path.read_text())
        accuracy = record["metrics"]["best"]["dev"]["accuracy"]
        assert accuracy > chance[record["task"]] + 0.05, (path, accuracy)
    kd = [json.loads(p.read_text()) for p in (smoke / SMOKE["study"]).glob("runs/*/*/kd/seed*/record.json")]
    assert any(r["metrics"]["final"]["dev"]["accuracy"] > chance[r["task"]] + 0.05 for r in kd)


def test_second_invocation_runs_nothing(smoke):
    again = snakemake("--cores", "2", *smoke_args(smoke))
    assert again.returncode == 0, again.stdout[-3000:]
    assert "Nothing to be done" in again.stdout


def test_deleted_record_reruns_only_that_run_and_its_dependents(smoke):
    record = smoke / SMOKE["study"] / "runs" / SMOKE["tasks"][0] / next(iter(SMOKE["students"])) / "kd" / "seed1" / "record.json"
    record.unlink()
    planned = snakemake("-n", *smoke_args(smoke))
    assert job_counts(planned.stdout) == {"distill": 1, "aggregate": 1, "plots": 1, "cost": 1, "all": 1}, planned.stdout[-3000:]
    assert str(record.parent / "record.json") in planned.stdout
    rerun = snakemake("--cores", "2", *smoke_args(smoke))
    assert rerun.returncode == 0, rerun.stdout[-3000:]
    assert job_counts(rerun.stdout) == {"distill": 1, "aggregate": 1, "plots": 1, "cost": 1, "all": 1}
    assert record.is_file()
    assert "Nothing to be done" in snakemake("-n", *smoke_args(smoke)).stdout


def test_report(smoke, tmp_path):
    report = tmp_path / "report.html"
    made = snakemake("--report", str(report), *smoke_args(smoke))
    assert made.returncode == 0, made.stdout[-3000:]
    html = report.read_text(errors="replace")
    assert "main.csv" in html and "curves_" in html


def expected_jobs(config: dict) -> int:
    """The job count of a study, worked out from its grid: a teacher per (task, teacher, teacher
    seed), plus its logits cache when the study caches them (every study here has a logit-only
    method, kd) and its teacher cache (teacher_cache: what CKD, PKD and MiniLM read); a run per (task, student, method, seed), TinyBERT being two runs; then
    expected_runs, aggregate, plots, cost and all; and one prefetch job when the study reads models or data
    from the hub."""
    tasks, seeds = len(config["tasks"]), len(config["seeds"])
    teachers = tasks * len(config["teachers"]) * len(config.get("teacher_seeds") or config["seeds"])
    caches = teachers * (bool(config.get("teacher_logits")) + bool(config.get("teacher_cache")))
    runs = 0
    for student in config["students"].values():
        methods = student.get("methods") or config["methods"]
        runs += tasks * seeds * (len(methods) + ("tinybert" in methods))
    prefetch = 1 if study_items(config) else 0  # ckd prefetch's own list (hub models; GLUE when GLUE_DIR is unset)
    # general distillation: one run per general entry a student starts from, one pack per (corpus, tokenizer, length)
    general = {s["general"] for s in config["students"].values() if "general" in s}
    entries = [config["general"][name] for name in general]
    packs = {(e["corpus"], e["teacher"].get("tokenizer") or e["teacher"]["name_or_path"], e.get("max_length", 128)) for e in entries}
    # DynaBERT: the teacher rewired per task; per (task, objective, seed) the width stage, the depth stage,
    # the evaluation and the export of every (width, depth); one report
    dynabert = config.get("dynabert")
    chains = tasks * len(dynabert["objectives"]) * len(dynabert.get("seeds") or config["seeds"]) if dynabert else 0
    dynabert_jobs = tasks + 4 * chains + 1 if dynabert else 0
    return teachers + caches + runs + 5 + prefetch + len(general) + len(packs) + dynabert_jobs


@pytest.mark.parametrize("study, jobs", [("paper", 993), ("glue-small", 135), ("ablation", 381), ("glue-minilm", 185)])
def test_dry_run_plans_the_study_grid(study, jobs, tmp_path, glue_dir):
    """(With GLUE_DIR set, as in CI: the GLUE studies read it instead of the hub's dataset.)"""
    config = yaml.safe_load((REPO / "config" / f"{study}.yaml").read_text())
    assert expected_jobs(config) == jobs
    planned = snakemake("-n", "--configfile", f"config/{study}.yaml", "--config", f"results_dir={tmp_path}")
    assert planned.returncode == 0, planned.stdout[-3000:]
    assert sum(job_counts(planned.stdout).values()) == jobs


def test_study_file_replaces_the_embedded_default(tmp_path):
    """A --configfile study is not merged with smoke.yaml: no smoke student or task leaks in."""
    planned = snakemake("-n", "--configfile", "config/paper.yaml", "--config", f"results_dir={tmp_path}")
    assert "tiny-2L" not in planned.stdout and "syn-sentiment" not in planned.stdout


@pytest.mark.parametrize("edit, culprit", [
    (lambda c: c.update(trian=c.pop("train")), "'trian' was unexpected"),
    (lambda c: c["train"].update(batch_sise=16), "'batch_sise' was unexpected"),
    (lambda c: c["students"]["tiny-2L"]["model"].update(layer=2), "'layer' was unexpected"),
    (lambda c: c.update(seeds=["one"]), "'one' is not of type 'integer'"),
    (lambda c: c.update(methods=["kd", "kdd"]), "unknown method 'kdd'"),
    (lambda c: c.update(variants={"ckd-w5": {"base": "ckd", "options": {"windw": 5}}}), "method_options.windw"),
])
def test_bad_config_fails_before_any_job_naming_the_key(edit, culprit, tmp_path):
    config = yaml.safe_load((REPO / "config" / "smoke.yaml").read_text())
    edit(config)
    config["results_dir"] = str(tmp_path / "results")
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(config))
    planned = snakemake("-n", "--configfile", str(path))
    assert planned.returncode != 0
    assert culprit in planned.stdout, planned.stdout[-3000:]
    assert not (tmp_path / "results").exists()
