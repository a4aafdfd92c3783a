"""Kill anywhere, resume exactly: `ckd finetune` / `ckd distill` killed at chosen points, re-run, same record.

The runs stop themselves at named pause points (ckd/pause.py, CKD_TEST_PAUSE_AT) so each kill lands in
a known phase: training, evaluation, a checkpoint being written, a checkpoint being swapped into
place, the run record being written. Which occurrence of a phase is hit is drawn from a seeded RNG
($CKD_KILL_SEED, default 0). After each kill the same command runs again; the last one finishes
and its record, predictions and weights must equal an uninterrupted run's (timings aside).
"""

from __future__ import annotations

import json
import os
import queue
import random
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from ckd.config import resolve_config
from ckd.runs import execute

MODEL = {"init": "random", "tokenizer": "synthetic", "hidden": 32, "heads": 4, "ffn": 64}
QUIET = ["train.progress=false", "train.tensorboard=false", "train.threads=1", "data.max_length=32"]
DATA = ["data.synthetic_train_size=160", "data.synthetic_dev_size=48"]
# 10 steps per epoch, 20 in all; evaluations at 5, 10, 15, 20; checkpoints at 3, 6, ..., 18
SCHEDULE = ["train.batch_size=16", "train.epochs=2", "train.eval_every=5", "train.checkpoint_every=3", "train.lr=1e-3",
            "use_task_settings=false"]
STEPS = 20
KILL_SEED = int(os.environ.get("CKD_KILL_SEED", "0"))
REPORT: list[str] = []  # printed at the end of the session with -s; also attached to failures


def spec(role: str, layers: int) -> list[str]:
    return [f"{role}.{key}={value}" for key, value in {**MODEL, "layers": layers}.items()]


def finetune_args(out: Path) -> list[str]:
    return ["finetune", "task=syn-pair", f"output_dir={out}", *spec("model", 2), *DATA, *QUIET, *SCHEDULE[:-1]]


def distill_args(out: Path, teacher: Path) -> list[str]:
    return ["distill", "task=syn-pair", "method=ckd", f"output_dir={out}", f"teacher.name_or_path={teacher}/model",
            *spec("student", 1), *DATA, *QUIET, *SCHEDULE]


def run_in_process(args: list[str]) -> dict:
    kind, overrides = args[0], args[1:]
    execute(kind, resolve_config(kind, None, overrides))
    out = Path(next(a.split("=", 1)[1] for a in overrides if a.startswith("output_dir=")))
    return json.loads((out / "record.json").read_text())


@dataclass
class Outcome:
    returncode: int
    output: str
    paused: int = 0  # pauses seen in the requested phase
    exit_s: float = 0.0  # from SIGTERM to exit


class Child:
    """A `python -m ckd.cli ...` process whose output is read line by line in the background."""

    def __init__(self, args: list[str], pause_at: str | None = None):
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false"}
        env.pop("CKD_TEST_PAUSE_AT", None)
        if pause_at:
            env["CKD_TEST_PAUSE_AT"] = pause_at
        self.proc = subprocess.Popen([sys.executable, "-m", "ckd.cli", *args], env=env, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True, bufsize=1)
        self.lines: queue.Queue = queue.Queue()
        self.output: list[str] = []
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        for line in self.proc.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def next_line(self, timeout: float) -> str | None:
        line = self.lines.get(timeout=timeout)
        if line is not None:
            self.output.append(line)
        return line

    def finish(self, timeout: float = 240) -> Outcome:
        deadline = time.time() + timeout
        while self.next_line(max(1.0, deadline - time.time())) is not None:
            pass
        return Outcome(self.proc.wait(timeout=30), "".join(self.output))

    def wait_stopped(self, timeout: float = 30) -> None:
        """The pause line comes just before the child's SIGSTOP: a SIGCONT sent in between would be lost."""
        deadline = time.time() + timeout
        while time.time() < deadline and self.proc.poll() is None:
            with open(f"/proc/{self.proc.pid}/stat") as handle:
                if handle.read().rsplit(")", 1)[1].split()[0] in ("T", "t"):
                    return
            time.sleep(0.005)
        raise AssertionError("the child did not stop at its pause point")

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)


SIGNALS = {"term": signal.SIGTERM, "int": signal.SIGINT}


def run_and_stop(args: list[str], phase: str, occurrence: int, how: str = "kill", timeout: float = 240) -> Outcome:
    """Run until the `occurrence`-th pause in `phase`, then SIGKILL it (how="kill"), or send it SIGTERM
    (how="term", pre-emption) or SIGINT (how="int", Ctrl-C) and let it react."""
    child = Child(args, pause_at=phase)
    seen = 0
    deadline = time.time() + timeout
    try:
        while True:
            try:
                line = child.next_line(max(1.0, deadline - time.time()))
            except queue.Empty:
                raise AssertionError(f"no pause in {phase} within {timeout}s:\n{''.join(child.output)}") from None
            if line is None:
                outcome = Outcome(child.proc.wait(timeout=30), "".join(child.output), seen)
                raise AssertionError(f"the run ended (rc {outcome.returncode}) after {seen} pause(s) in {phase}, "
                                     f"before pause {occurrence}:\n{outcome.output}")
            if line.strip() != f"ckd-pause: {phase}":
                continue
            seen += 1
            child.wait_stopped()
            if seen < occurrence:
                child.proc.send_signal(signal.SIGCONT)
                continue
            if how == "kill":
                child.kill()
                return Outcome(child.proc.returncode, "".join(child.output), seen)
            sent = time.time()
            child.proc.send_signal(SIGNALS[how])
            child.proc.send_signal(signal.SIGCONT)
            outcome = child.finish(timeout=60)
            outcome.paused, outcome.exit_s = seen, time.time() - sent
            return outcome
    finally:
        child.kill()


def checkpoint_step(run_dir: Path) -> int | None:
    for folder in (run_dir / "checkpoints" / "latest", run_dir / "checkpoints" / ".latest.old"):
        state = folder / "state.pt"
        if state.is_file():
            return int(torch.load(state, map_location="cpu", weights_only=False)["step"])
    return None


def comparable(record: dict) -> dict:
    """Everything but timings, the output folder and the commit (the repository may gain commits meanwhile)."""
    record = json.loads(json.dumps(record))
    record.pop("timing")
    record.pop("git_commit")
    record["config"].pop("output_dir")
    return record


def assert_same_result(reference: Path, resumed: Path) -> None:
    a = json.loads((reference / "record.json").read_text())
    b = json.loads((resumed / "record.json").read_text())
    assert comparable(a) == comparable(b)
    assert a["config_fingerprint"] == b["config_fingerprint"]
    for name in ("predictions.json", "model/model.safetensors"):
        assert (reference / name).read_bytes() == (resumed / name).read_bytes(), name
    assert not (resumed / "checkpoints").exists()
    leftovers = [p.name for p in resumed.iterdir() if p.name.startswith(".")]
    assert not leftovers, f"temporaries left behind: {leftovers}"


def kill_chain(args: list[str], run_dir: Path, plan: list[tuple[str, int, str]], label: str,
               final_stop: tuple[str, str] | None = None) -> None:
    """Stop the same command at each (phase, occurrence, how) in turn, re-running it each time; then let it
    finish (with `final_stop` = (phase, how): a signal sent in that phase of the last run, which must still finish)."""
    for phase, occurrence, how in plan:
        before = checkpoint_step(run_dir)
        moved_aside = (run_dir / "checkpoints" / ".latest.old").is_dir() and not (run_dir / "checkpoints" / "latest").exists()
        model_aside = (run_dir / ".model.old").is_dir() and not (run_dir / "model").exists()
        outcome = run_and_stop(args, phase, occurrence, how)
        after = checkpoint_step(run_dir)
        assert not (run_dir / "record.json").exists(), f"{phase}: a record appeared although the run was stopped"
        if before is not None:
            assert f"from step {before}/{STEPS}" in outcome.output, outcome.output
        if moved_aside:
            assert "recovered checkpoint" in outcome.output, outcome.output
        if model_aside:
            assert f"recovered {run_dir / 'model'} from an interrupted replacement" in outcome.output, outcome.output
            assert not (run_dir / ".model.old").exists()
        resumed = "resumed" if before is not None else "fresh start"
        aside = " (moved aside to .latest.old)" if not (run_dir / "checkpoints" / "latest").exists() and after is not None else ""
        if (run_dir / ".model.old").is_dir() and not (run_dir / "model").exists():
            aside += " (model/ moved aside to .model.old)"
        line = (f"{label}: {how.upper()} at {phase} #{occurrence} ({resumed}, checkpoint {before}); "
                f"checkpoint now at step {after}{aside}")
        if how in SIGNALS:
            name = SIGNALS[how].name
            assert outcome.returncode == 2, outcome.output
            assert "checkpoint saved" in outcome.output and f"stopped by {name} after step" in outcome.output, outcome.output
            stopped_at = int(outcome.output.split(f"stopped by {name} after step ")[1].split("/")[0])
            assert after == stopped_at, (after, stopped_at)  # nothing lost, not even the steps since the last periodic checkpoint
            if before is None:
                assert stopped_at == occurrence
            assert outcome.exit_s < 20, outcome.exit_s
            line += f", exit {outcome.returncode} after {outcome.exit_s:.1f}s"
        else:
            assert outcome.returncode == -signal.SIGKILL
        REPORT.append(line)
    before = checkpoint_step(run_dir)
    model_aside = (run_dir / ".model.old").is_dir() and not (run_dir / "model").exists()
    if final_stop is None:
        outcome = Child(args).finish()
    else:
        outcome = run_and_stop(args, *final_stop[:1], 1, final_stop[1])
        name = SIGNALS[final_stop[1]].name
        assert f"ckd: {name} arrived during the final save; the final save was completed first" in outcome.output, outcome.output
    assert outcome.returncode == 0, outcome.output
    if before is not None:
        assert f"from step {before}/{STEPS}" in outcome.output, outcome.output
    if model_aside:  # the previous model/ was put back first, then replaced by the finished one
        assert f"recovered {run_dir / 'model'} from an interrupted replacement" in outcome.output, outcome.output
    stop = f" ({final_stop[1].upper()} at {final_stop[0]}: the save finished first, exit 0)" if final_stop else ""
    REPORT.append(f"{label}: final re-run resumed from step {before} and finished{stop}")


@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("kill-teacher")
    run_in_process(["finetune", "task=syn-pair", f"output_dir={folder}", *spec("model", 2), *DATA, *QUIET,
                    "train.batch_size=16", "train.max_steps=10", "train.lr=1e-3"])
    return folder


@pytest.fixture(scope="module", autouse=True)
def print_report():
    yield
    if REPORT:
        print(f"\nkill-and-resume log (CKD_KILL_SEED={KILL_SEED}):\n  " + "\n  ".join(REPORT))


@pytest.mark.slow
def test_distill_killed_in_every_phase_resumes_to_the_uninterrupted_record(teacher, tmp_path):
    reference, resumed = tmp_path / "reference", tmp_path / "resumed"
    run_in_process(distill_args(reference, teacher))
    rng = random.Random(KILL_SEED)
    plan = [
        ("train-step", rng.randint(4, 8), "kill"),     # mid-training, after at least one checkpoint
        ("eval", rng.randint(1, 2), "kill"),           # during a dev evaluation
        ("dir-write:latest", rng.randint(1, 2), "kill"),  # checkpoint written, not yet renamed
        ("dir-swap:latest", 1, "kill"),                # old checkpoint moved aside, new one not in place
        ("file-write:predictions.json", 1, "kill"),    # training done, model/ saved, predictions not yet renamed
        ("dir-swap:model", 1, "kill"),                 # model/ moved aside to .model.old, the new one not in place
    ]
    kill_chain(distill_args(resumed, teacher), resumed, plan, "distill ckd")
    assert_same_result(reference, resumed)


@pytest.mark.slow
def test_killed_before_the_record_rename_the_run_is_complete_on_the_next_start(teacher, tmp_path):
    """Killed after owner.record.json was written but before record.json took its name: the next start restores
    the record (everything it describes is saved), trains nothing and removes the checkpoints."""
    reference, resumed = tmp_path / "reference", tmp_path / "resumed"
    run_in_process(distill_args(reference, teacher))
    outcome = run_and_stop(distill_args(resumed, teacher), "file-write:record.json", 1, "kill")
    assert outcome.returncode == -signal.SIGKILL and not (resumed / "record.json").exists()
    assert (resumed / "checkpoints").is_dir()
    final = Child(distill_args(resumed, teacher)).finish()
    assert final.returncode == 0, final.output
    assert "restored it from owner.record.json" in final.output and "resuming" not in final.output, final.output
    assert_same_result(reference, resumed)
    REPORT.append("distill ckd: KILL at file-write:record.json #1; the next start restored the record, trained nothing")


@pytest.mark.slow
def test_finetune_preempted_and_killed_resumes_to_the_uninterrupted_record(tmp_path):
    reference, resumed = tmp_path / "reference", tmp_path / "resumed"
    run_in_process(finetune_args(reference))
    rng = random.Random(KILL_SEED + 1)
    plan = [
        ("train-step", rng.choice([4, 5, 7, 8]), "term"),  # pre-emption between periodic checkpoints: saved at that step, exit 2
        ("train-step", rng.choice([1, 2, 4]), "int"),      # Ctrl-C: the same, checkpoint at that step, exit 2
        ("eval", rng.randint(1, 2), "kill"),
        ("file-write:predictions.json", 1, "kill"),
    ]
    # and SIGTERM while the finished model is being saved: the save completes first, exit 0
    kill_chain(finetune_args(resumed), resumed, plan, "finetune", final_stop=("dir-write:model", "term"))
    assert_same_result(reference, resumed)
