"""The SLURM profile against a live single-node Slurm, and GPU jobs launched with torchrun.

workflow/scripts/slurm-local.sh brings up a throwaway Slurm (munged, MariaDB + slurmdbd for
accounting, slurmctld, slurmd) with two pretend GPUs, in a temporary folder and on free ports; the
smoke study, cut to one task, one seed and two methods, goes through
`snakemake --profile workflow/profiles/slurm` and every job through sbatch (checked with sacct); its
records must equal those of the same runs in the local smoke run (`smoke_results`). Run again with
job grouping (CKD_GROUP_RUNS=4) it submits fewer allocations (sacct) and writes the same records. A second study
has a teacher that cannot be built, which fails on every attempt with attempt-scaled memory and time,
and a 2-GPU student run under torchrun. Then Slurm goes down. Needs root (apt-get, daemons): CI
runs as root; elsewhere the Slurm tests are skipped, and under CI=true they fail instead.
"""

from __future__ import annotations

import copy
import json
import os
import re
import socket
import subprocess
from pathlib import Path
from unittest import mock

import pytest
import yaml

from tests.conftest import REPO, job_counts, snakemake

SMOKE = yaml.safe_load((REPO / "config" / "smoke.yaml").read_text())
SCRIPT = REPO / "workflow" / "scripts" / "slurm-local.sh"
PROFILE = "workflow/profiles/slurm"
# The local Slurm answers at once: poll every few seconds instead of the plugin's 40.
FAST_STATUS = ("--slurm-init-seconds-before-status-checks", "5")
DAEMONS = ("munged", "mariadbd", "slurmdbd", "slurmctld", "slurmd")
STUDENT, TEACHER = next(iter(SMOKE["students"])), next(iter(SMOKE["teachers"]))
METHODS = ["kd", "ckd-pair"]


def study_file(path: Path, results: Path, **changes) -> Path:
    """config/smoke.yaml with a smaller grid (and whatever else `changes` replaces)."""
    config = copy.deepcopy(SMOKE)
    # without the smoke study's task-agnostic stage (students started from a general-distilled model)
    config["students"] = {name: spec for name, spec in config["students"].items() if "general" not in spec}
    for key in ("general", "corpus"):
        config.pop(key, None)
    config.update({"tasks": ["syn-pair"], "seeds": [1], "methods": METHODS, "results_dir": str(results), **changes})
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


# ------------------------------------------------------------------ GPUs and torchrun (no Slurm needed)


def _jobs(output: str) -> dict[str, list[str]]:
    """Dry-run job blocks by rule name: each block's text (resources line, shell command)."""
    blocks: dict[str, list[str]] = {}
    for block in re.split(r"\n(?=\[[^\]]+\]\nrule |\[[^\]]+\]\nlocalrule )", output):
        match = re.search(r"^(?:local)?rule (\w+):", block, re.M)
        if match:
            blocks.setdefault(match.group(1), []).append(block)
    return blocks


def test_gpu_resource_launches_torchrun_dry_run(tmp_path):
    resources = copy.deepcopy(SMOKE["resources"])
    resources["distill"].update(gpu=2, threads=4)
    resources["finetune"].update(gpu=1, threads=2)
    study = study_file(tmp_path / "gpu.yaml", tmp_path / "results", resources=resources)
    planned = snakemake("-n", "-p", "--configfile", str(study))
    assert planned.returncode == 0, planned.stdout[-3000:]
    jobs = _jobs(planned.stdout)
    assert len(jobs["distill"]) == len(METHODS) and len(jobs["finetune_teacher"]) == 1
    for block in jobs["distill"]:
        assert re.search(r"resources: .*\bgpu=2\b", block), block
        # two processes, one per GPU, sharing the job's 4 threads
        assert "gpu-pin.sh 2 torchrun --standalone --nproc_per_node 2 -m ckd.cli distill " in block, block
        assert "train.threads=2 " in block, block
    (teacher,) = jobs["finetune_teacher"]
    assert re.search(r"resources: .*\bgpu=1\b", teacher) and "gpu-pin.sh 1 ckd finetune " in teacher, teacher
    assert "torchrun" not in teacher

    # the smoke study asks for no GPU: plain `ckd`, no pinning
    plain = snakemake("-n", "-p", "--configfile", str(study_file(tmp_path / "cpu.yaml", tmp_path / "results")))
    assert plain.returncode == 0, plain.stdout[-3000:]
    for block in _jobs(plain.stdout)["distill"]:
        assert re.search(r"resources: .*\bgpu=0\b", block) and "Shell command: ckd distill " in block, block


def test_local_profile_gives_each_gpu_job_its_own_gpus(tmp_path):
    env = {**os.environ, "CKD_GPUS": "3", "CKD_GPU_LOCKS": str(tmp_path / "locks")}
    pin = REPO / "workflow" / "scripts" / "gpu-pin.sh"
    first = subprocess.Popen(["bash", str(pin), "2", "sh", "-c", "echo $CUDA_VISIBLE_DEVICES; sleep 2"],
                             env=env, stdout=subprocess.PIPE, text=True)
    second = subprocess.run(["bash", str(pin), "1", "sh", "-c", "echo $CUDA_VISIBLE_DEVICES"],
                            env=env, capture_output=True, text=True, timeout=30)
    out, _ = first.communicate(timeout=30)
    assert first.returncode == 0 and second.returncode == 0
    assert sorted(out.split()[0].split(",") + second.stdout.split()) == ["0", "1", "2"]
    too_many = subprocess.run(["bash", str(pin), "4", "true"], env=env, capture_output=True, text=True, timeout=30)
    assert too_many.returncode == 1 and "asks for 4 GPUs and this machine has 3" in too_many.stderr
    # the profile reads CKD_GPUS into --resources gpu=N
    planned = snakemake("-n", "--profile", "workflow/profiles/local", "--config", f"results_dir={tmp_path}")
    assert planned.returncode == 0 and re.search(r"Using profiles? workflow/profiles/local", planned.stdout), planned.stdout[-3000:]


# ------------------------------------------------------------------ a live Slurm


def _free_base_port() -> int:
    """Four free consecutive ports on 127.0.0.1 (slurmctld, slurmd, slurmdbd, MariaDB)."""
    for base in range(16817, 17817, 10):
        try:
            for port in range(base, base + 4):
                with socket.socket() as probe:
                    probe.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
    raise RuntimeError("no four free consecutive ports in 16817..17817")


def _script(command: str, env: dict, timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run(["timeout", str(int(timeout)), "bash", str(SCRIPT), command], env=env, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=timeout + 30)


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    if os.geteuid() != 0:
        message = "the local Slurm needs root (apt-get install, daemons)"
        if os.environ.get("CI"):
            pytest.fail(f"{message}; CI runs as root, so this must not happen there")
        pytest.skip(message)
    folder = tmp_path_factory.mktemp("slurm")
    env = {**os.environ, "CKD_SLURM_DIR": str(folder), "CKD_SLURM_PORT": str(_free_base_port()),
           "CKD_SLURM_FAKE_GPUS": "2", "SLURM_CONF": str(folder / "etc" / "slurm.conf")}
    try:
        started = _script("up", env, timeout=600)  # installs the Debian packages when they are missing
        assert started.returncode == 0, started.stdout[-5000:]
        again = _script("up", env, timeout=60)
        assert again.returncode == 0 and "already up" in again.stdout, again.stdout
        yield {"env": env, "folder": folder}
    finally:
        _script("down", env, timeout=120)


def sacct(env: dict, run_id: str) -> list[dict[str, str]]:
    """The allocations (not their steps) that the snakemake run with this SLURM run ID submitted."""
    fields = ["JobID", "JobName", "State", "ExitCode", "ReqMem", "Timelimit", "AllocTRES", "Comment"]
    done = subprocess.run(
        ["sacct", "-X", "-n", "-P", "--starttime=now-1days", f"--name={run_id}", "-o", ",".join(fields)],
        env=env, capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return [dict(zip(fields, line.split("|"))) for line in done.stdout.splitlines() if line]


def run_through_slurm(study: Path, timeout: float, group_runs: int = 1) -> tuple[subprocess.CompletedProcess, str]:
    """The study through the SLURM profile, `group_runs` short runs per allocation (CKD_GROUP_RUNS; 1: each
    run on its own)."""
    # snakemake() runs under a timeout: a status-check hang fails the test instead of stalling it
    with mock.patch.dict(os.environ, {"CKD_GROUP_RUNS": str(group_runs)}):
        done = snakemake("--profile", PROFILE, *FAST_STATUS, "--configfile", str(study), timeout=timeout)
    run_id = re.search(r"SLURM run ID: (\S+)", done.stdout)
    assert run_id, done.stdout[-5000:]
    return done, run_id.group(1)


def _normalised(path: Path, results: Path) -> dict:
    return json.loads(path.read_text().replace(str(results), "<results>"))


@pytest.fixture(scope="module")
def ungrouped(slurm, tmp_path_factory) -> dict:
    """The cut smoke study through Slurm, every run an allocation of its own (CKD_GROUP_RUNS=1)."""
    folder = tmp_path_factory.mktemp("ungrouped")
    results = folder / "results"
    done, run_id = run_through_slurm(study_file(folder / "study.yaml", results), timeout=480)
    return {"done": done, "run_id": run_id, "results": results, "jobs": sacct(slurm["env"], run_id)}


def assert_same_records(results: Path, smoke_results: Path, count: int) -> None:
    """The same runs as the local smoke study: same configs (but for where they live), same numbers."""
    ours = sorted(p.relative_to(results) for p in results.glob("smoke/**/record.json"))
    assert len(ours) == count, ours
    for relative in ours:
        mine, local = _normalised(results / relative, results), _normalised(smoke_results / relative, smoke_results)
        assert mine["config"] == local["config"], relative
        for key in ("metrics", "history", "data_fingerprint", "method_resolved", "student", "teacher"):
            assert mine[key] == local[key], (relative, key)
        if mine["kind"] == "finetune":  # a distillation's fingerprint holds its teacher's path
            assert mine["config_fingerprint"] == local["config_fingerprint"]
        predictions = relative.parent / "predictions.json"
        assert (results / predictions).read_text() == (smoke_results / predictions).read_text()
    assert (results / "smoke" / "tables" / "main.md").stat().st_size > 0


def test_smoke_study_through_slurm_matches_local_run(ungrouped, smoke_results):
    done, jobs = ungrouped["done"], ungrouped["jobs"]
    assert done.returncode == 0, done.stdout[-5000:]
    counts = job_counts(done.stdout)
    assert counts == {"all": 1, "aggregate": 1, "distill": len(METHODS), "expected_runs": 1,
                      "finetune_teacher": 1, "plots": 1, "cost": 1}, done.stdout[-5000:]

    # every training job went through sbatch, and Slurm's accounting saw each one complete
    submitted = re.findall(r"Job \d+ has been submitted with SLURM jobid (\d+)", done.stdout)
    assert sorted(j["JobID"] for j in jobs) == sorted(submitted) and len(jobs) == 1 + len(METHODS), jobs
    assert {j["State"] for j in jobs} == {"COMPLETED"}, jobs
    assert {j["Comment"] for j in jobs} == {f"rule_finetune_teacher_wildcards_syn-pair_{TEACHER}_1"} | {
        f"rule_distill_wildcards_syn-pair_{STUDENT}_{m}_1" for m in METHODS}, jobs
    for job in jobs:
        assert job["ReqMem"] == "2000M" and job["Timelimit"] == "00:10:00" and "cpu=1" in job["AllocTRES"], job
    assert_same_records(ungrouped["results"], smoke_results, 1 + len(METHODS))


def _steps(env: dict, job_id: str) -> list[dict[str, str]]:
    """The numbered job steps (one srun each) of an allocation, in order, with start and end times."""
    done = subprocess.run(["sacct", "-n", "-P", "-j", job_id, "-o", "JobID,State,Start,End"], env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    rows = [dict(zip(("JobID", "State", "Start", "End"), line.split("|"))) for line in done.stdout.splitlines()]
    return sorted((r for r in rows if re.fullmatch(rf"{job_id}\.\d+", r["JobID"])), key=lambda r: int(r["JobID"].split(".")[1]))


def test_grouped_smoke_study_submits_fewer_jobs_with_the_same_records(slurm, ungrouped, smoke_results, tmp_path):
    """CKD_GROUP_RUNS=4: the two short runs share one allocation, which runs them one after another and asks
    for one run's memory and CPUs and the sum of their runtimes; the records are those of the local run."""
    results = tmp_path / "results"
    done, run_id = run_through_slurm(study_file(tmp_path / "study.yaml", results), timeout=480, group_runs=4)
    assert done.returncode == 0, done.stdout[-5000:]
    jobs = sacct(slurm["env"], run_id)
    assert {j["State"] for j in jobs} == {"COMPLETED"}, jobs
    assert len(jobs) == 2 < len(ungrouped["jobs"]) == 1 + len(METHODS), (jobs, ungrouped["jobs"])
    (group,) = [j for j in jobs if j["Comment"].startswith("rule_runs")]
    assert (group["ReqMem"], group["Timelimit"]) == ("2000M", "00:20:00") and "cpu=1" in group["AllocTRES"], group
    steps = _steps(slurm["env"], group["JobID"])
    assert [s["State"] for s in steps] == ["COMPLETED"] * len(METHODS), steps
    assert all(a["End"] <= b["Start"] for a, b in zip(steps, steps[1:])), steps  # one after another
    assert_same_records(results, smoke_results, 1 + len(METHODS))


def test_failed_job_is_retried_with_more_memory_and_reported_and_gpu_job_runs_torchrun(slurm, smoke_results, tmp_path):
    results = tmp_path / "results"
    resources = copy.deepcopy(SMOKE["resources"])
    resources["distill"].update(gpu=2)
    broken = {"init": "random", "tokenizer": "synthetic", "layers": 2, "hidden": 30, "heads": 4, "ffn": 64}
    study = study_file(
        tmp_path / "study.yaml", results, methods=["finetune"], resources=resources,
        teachers={"broken": {"model": broken}},  # 30 is not divisible by 4 heads: ckd fails at start
        students={STUDENT: {**SMOKE["students"][STUDENT], "teacher": "broken"}},
        train={**SMOKE["train"], "device": "cpu"},  # the pretend GPUs are no CUDA devices
    )
    done, run_id = run_through_slurm(study, timeout=480)
    assert done.returncode != 0, done.stdout[-5000:]
    assert "Error in rule finetune_teacher" in done.stdout
    failed = re.findall(r"SLURM-job '(\d+)' failed, SLURM status is: 'FAILED'", done.stdout)
    jobs = {j["JobID"]: j for j in sacct(slurm["env"], run_id)}

    # the profile's retries: three attempts, each with attempt x the study's memory and time
    attempts = [j for j in jobs.values() if j["Comment"] == "rule_finetune_teacher_wildcards_syn-pair_broken_1"]
    assert sorted(j["JobID"] for j in attempts) == sorted(failed) and len(attempts) == 3, jobs
    assert [(j["State"], j["ReqMem"], j["Timelimit"]) for j in sorted(attempts, key=lambda j: int(j["JobID"]))] == [
        ("FAILED", "2000M", "00:10:00"), ("FAILED", "4000M", "00:20:00"), ("FAILED", "6000M", "00:30:00")]
    log = (results / "smoke" / "logs" / "teachers" / "syn-pair" / "broken" / "seed1.log").read_text()
    assert "hidden 30 is not divisible by heads 4" in log, log[-2000:]

    # resources.distill.gpu: 2 -> sbatch --gpus=2, and the job ran two processes under torchrun
    (student,) = [j for j in jobs.values() if j["Comment"] == f"rule_distill_wildcards_syn-pair_{STUDENT}_finetune_1"]
    assert student["State"] == "COMPLETED" and "gres/gpu=2" in student["AllocTRES"], student
    relative = Path("smoke", "runs", "syn-pair", STUDENT, "finetune", "seed1", "record.json")
    record, single = (json.loads((root / relative).read_text()) for root in (results, smoke_results))
    assert record["runtime"] == {"device": "cpu", "precision": "fp32", "world_size": 2}
    assert single["runtime"]["world_size"] == 1
    # two processes share each step's examples (the global batch is kept): the same number of steps
    # and, but for dropout drawn per process, the same training (test_distributed checks 1e-4 without
    # dropout)
    assert record["timing"]["train_steps"] == single["timing"]["train_steps"]
    for mine, local in zip(record["history"], single["history"], strict=True):
        assert mine["train_loss"] == pytest.approx(local["train_loss"], rel=0.05)
    accuracy = record["metrics"]["final"]["dev"]["accuracy"]
    assert accuracy > 1 / 3 + 0.05 and accuracy == pytest.approx(single["metrics"]["final"]["dev"]["accuracy"], abs=0.05)


def test_down_stops_what_up_started(slurm):
    run = Path(slurm["folder"]) / "run"
    pids = {name: int((run / f"{name}.pid").read_text().split()[0]) for name in DAEMONS}
    assert all(Path(f"/proc/{pid}").exists() for pid in pids.values()), pids
    stopped = _script("down", slurm["env"], timeout=120)
    assert stopped.returncode == 0, stopped.stdout
    assert not [name for name, pid in pids.items() if Path(f"/proc/{pid}").exists()], stopped.stdout
    assert not Path("/etc/slurm/slurm.conf").is_symlink() or \
        os.readlink("/etc/slurm/slurm.conf") != str(Path(slurm["folder"]) / "etc" / "slurm.conf")
    again = _script("down", slurm["env"], timeout=60)
    assert again.returncode == 0
