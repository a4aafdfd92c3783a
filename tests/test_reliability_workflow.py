"""Reliability of the Snakemake workflow on a tiny study (one task, one seed, a teacher and three
student runs): a workflow killed mid-job is re-run and the job resumes from its checkpoint, finished
jobs are never recomputed, and with --keep-going a failing job still leaves tables in which its cell
is missing and missing.md names it with its error."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from tests.conftest import job_counts
from tests.fixtures.markdown import compact_markdown

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
MODEL = {"init": "random", "tokenizer": "synthetic", "hidden": 32, "heads": 4, "ffn": 64}


def study_config(results: Path) -> dict:
    """config/smoke.yaml cut down; `kd-broken` is a variant that passes planning but fails at run time."""
    config = yaml.safe_load((REPO / "config" / "smoke.yaml").read_text())
    config.update(
        study="rel", results_dir=str(results), tasks=["syn-pair"], seeds=[1], teacher_seeds=[1],
        teachers={"tiny-2L": {"model": {**MODEL, "layers": 2}}},
        students={"tiny-1L": {"model": {**MODEL, "layers": 1}}},
        methods=["kd", "ckd", "kd-broken"], variants={"kd-broken": {"base": "kd", "options": {"alpha": 2.0}}},
        aggregate={"bootstrap": 20},
    )
    config["data"].update(synthetic_train_size=640, synthetic_dev_size=64)
    config["train"].update(epochs=2, checkpoint_every=5)  # 80 steps, a checkpoint every 5
    return config


def snakemake_command(workdir: Path, config_file: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(workdir),
            "--configfile", str(config_file), "--cores", "2", *args]


def environment() -> dict:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", "HF_HUB_OFFLINE": "1"}
    env.pop("CKD_TEST_PAUSE_AT", None)
    return env


def ckd_pids(output_dir: Path) -> list[int]:
    """The `ckd` processes writing to output_dir (found through /proc)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"output_dir={output_dir}".encode() in cmdline and any(part.endswith(b"ckd") for part in cmdline[:2]):
            pids.append(int(entry.name))
    return pids


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """Run the study, SIGKILL the whole workflow once the ckd job has a checkpoint, then run it again."""
    root = tmp_path_factory.mktemp("rel-workflow")
    work, results = root / "work", root / "results"
    work.mkdir()
    config_file = root / "study.yaml"
    config_file.write_text(yaml.safe_dump(study_config(results)))
    study_dir = results / "rel"
    ckd_run = study_dir / "runs" / "syn-pair" / "tiny-1L" / "ckd" / "seed1"
    state = ckd_run / "checkpoints" / "latest" / "state.pt"

    first = subprocess.Popen(snakemake_command(work, config_file, "--keep-going"), env=environment(), text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.time() + 240
        while not state.exists() and first.poll() is None and time.time() < deadline:
            time.sleep(0.01)
        assert state.exists(), "the ckd job wrote no checkpoint"
        victims = ckd_pids(ckd_run)
    finally:
        os.killpg(first.pid, signal.SIGKILL)  # a dead node: the workflow and its jobs at once
    for pid in victims:  # in case a job left the process group
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    first.communicate(timeout=60)
    assert not (ckd_run / "record.json").exists(), "the ckd job finished before it could be killed"
    killed_at = int(torch.load(state, weights_only=False)["step"])
    before = {p: (p.read_bytes(), (p.parent / "model" / "model.safetensors").stat().st_mtime_ns)
              for p in study_dir.rglob("record.json")}

    # the dead workflow left its lock behind; in this private working directory unlocking is safe
    unlock = subprocess.run(snakemake_command(work, config_file, "--unlock"), env=environment(), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=120)
    assert unlock.returncode == 0, unlock.stdout[-3000:]
    second = subprocess.run(snakemake_command(work, config_file, "--keep-going"), env=environment(), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=300)
    return {"dir": study_dir, "ckd_run": ckd_run, "killed_at": killed_at, "before": before, "second": second}


@pytest.mark.slow
def test_a_killed_workflow_reruns_the_killed_job_which_resumes(study):
    second = study["second"]
    assert (study["ckd_run"] / "record.json").is_file(), second.stdout[-5000:]
    log = (study["dir"] / "logs" / "runs" / "syn-pair" / "tiny-1L" / "ckd" / "seed1.log").read_text()
    assert f"from step {study['killed_at']}/80" in log, log
    assert not (study["ckd_run"] / "checkpoints").exists()


def log_of(study_dir: Path, record: Path) -> str:
    relative = record.parent.relative_to(study_dir)
    return (study_dir / "logs" / relative.parent / f"{relative.name}.log").read_text()


@pytest.mark.slow
def test_finished_jobs_are_not_recomputed(study):
    """A run that had finished keeps its record and weights. Snakemake may still run its job again when the
    kill came before it saw the job end (rerun-incomplete, profiles/default): then ckd restores the record
    without training (its log says so) and Snakemake only touches the record's timestamp."""
    second = study["second"]
    finished = study["before"]
    assert finished, "nothing had finished before the kill"
    restored = []
    for record, (content, weights) in finished.items():
        assert record.read_bytes() == content, record
        assert (record.parent / "model" / "model.safetensors").stat().st_mtime_ns == weights, record
        log = log_of(study["dir"], record)
        if "restored it from owner.record.json" in log:  # run again by Snakemake, not trained again
            assert "resuming" not in log and "Writing model shards" not in log, log
            restored.append(record)
    counts = job_counts(second.stdout)
    runs_restored = sum("/runs/" in str(p) for p in restored)
    assert counts.get("finetune_teacher", 0) == sum("/teachers/" in str(p) for p in restored), counts
    assert counts.get("distill", 0) == 3 - sum("/runs/" in str(p) for p in finished) + runs_restored, counts


@pytest.mark.slow
def test_keep_going_leaves_tables_with_the_failed_run_missing_and_listed(study):
    second = study["second"]
    assert second.returncode != 0  # kd-broken fails, every time
    broken_log = study["dir"] / "logs" / "runs" / "syn-pair" / "tiny-1L" / "kd-broken" / "seed1.log"
    assert "alpha must lie in [0, 1]" in broken_log.read_text()
    assert (study["dir"] / "runs" / "syn-pair" / "tiny-1L" / "kd" / "seed1" / "record.json").is_file()
    tables = study["dir"] / "tables"
    main = pd.read_csv(tables / "main.csv")
    assert set(main["method"]) == {"teacher", "kd", "ckd", "kd-broken"}
    broken = main[main["method"] == "kd-broken"].iloc[0]
    assert broken["Syn-Pair_n"] == 0 and pd.isna(broken["Syn-Pair"])
    assert main[main["method"] == "ckd"].iloc[0]["Syn-Pair_n"] == 1
    missing = compact_markdown((tables / "missing.md").read_text())
    assert ("| syn-pair | tiny-1L | kd-broken | 1 | failed: method_options.alpha must lie in [0, 1], got 2.0 "
            "(log: logs/runs/syn-pair/tiny-1L/kd-broken/seed1.log) |") in missing
    assert "| kd-broken | – |" in compact_markdown((tables / "main.md").read_text())


# ------------------------------------------------------------------ Snakemake itself killed after a job finished


def stopped(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] in ("T", "t")
    except OSError:
        return False


@pytest.fixture(scope="module")
def killed_after_finish(tmp_path_factory):
    """Snakemake SIGKILLed (with its job) after `ckd` wrote the teacher's record atomically but before Snakemake
    saw the job end: the record exists and Snakemake's metadata still marks it incomplete. Then: the re-run
    without the workflow's default profile (what Snakemake does on its own) and the plain re-run."""
    root = tmp_path_factory.mktemp("rel-incomplete")
    work, results = root / "work", root / "results"
    work.mkdir()
    config_file = root / "study.yaml"
    config_file.write_text(yaml.safe_dump(study_config(results)))
    teacher_dir = results / "rel" / "teachers" / "syn-pair" / "tiny-2L" / "seed1"
    target = str(teacher_dir / "record.json")
    env = {**environment(), "CKD_TEST_PAUSE_AT": "run-finished"}  # ckd stops itself once the run is finished
    first = subprocess.Popen(snakemake_command(work, config_file, target), env=env, text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.time() + 240
        paused = []
        while time.time() < deadline and first.poll() is None and not paused:
            paused = [pid for pid in ckd_pids(teacher_dir) if stopped(pid)]
            time.sleep(0.05)
        assert paused, "the teacher job never reached run-finished"
    finally:
        os.killpg(first.pid, signal.SIGKILL)
    for pid in ckd_pids(teacher_dir):
        os.kill(pid, signal.SIGKILL)
    first.communicate(timeout=60)
    record = (teacher_dir / "record.json").read_bytes()
    weights = teacher_dir / "model" / "model.safetensors"
    weights_stat = (weights.stat().st_ino, weights.stat().st_mtime_ns)
    run = lambda *args: subprocess.run(snakemake_command(work, config_file, *args), env=environment(), text=True,  # noqa: E731
                                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=300)
    assert run("--unlock").returncode == 0
    without_profile = run("--workflow-profile", "none", target)
    plain = run(target)
    log = (results / "rel" / "logs" / "teachers" / "syn-pair" / "tiny-2L" / "seed1.log").read_text()
    return {"record": record, "dir": teacher_dir, "weights_stat": weights_stat, "without_profile": without_profile,
            "plain": plain, "log": log}


@pytest.mark.slow
def test_snakemake_alone_stops_at_a_finished_but_unregistered_run(killed_after_finish):
    # what the workflow's default profile (profiles/default: rerun-incomplete) is there for
    done = killed_after_finish["without_profile"]
    assert done.returncode != 0 and "IncompleteFilesException" in done.stdout, done.stdout[-3000:]


@pytest.mark.slow
def test_a_plain_rerun_after_snakemake_was_killed_keeps_the_finished_run(killed_after_finish):
    plain, folder = killed_after_finish["plain"], killed_after_finish["dir"]
    assert plain.returncode == 0, plain.stdout[-5000:]
    assert "IncompleteFilesException" not in plain.stdout
    assert "Using workflow specific profile profiles/default" in plain.stdout
    # not recomputed: the same record bytes, the same weight file (inode and mtime), the restore said so
    assert (folder / "record.json").read_bytes() == killed_after_finish["record"]
    weights = (folder / "model" / "model.safetensors").stat()
    assert (weights.st_ino, weights.st_mtime_ns) == killed_after_finish["weights_stat"]
    assert "restored it from owner.record.json" in killed_after_finish["log"], killed_after_finish["log"]
    assert "resuming" not in killed_after_finish["log"]
