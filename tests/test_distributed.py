"""Multi-process training (torchrun, gloo on CPU) and mixed precision."""

import contextlib
import json
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

ARGS = [
    "task=syn-pair", "model.init=random", "model.tokenizer=synthetic", "model.layers=2", "model.hidden=32", "model.heads=4",
    "model.ffn=64", "model.dropout=0", "train.epochs=2", "train.lr=1e-3", "train.batch_size=32", "train.progress=false",
    "train.tensorboard=false", "train.threads=1", "data.max_length=32", "data.synthetic_train_size=256",
    "data.synthetic_dev_size=128",
]
TOLERANCE = 1e-4  # one process vs two: the same examples and updates, only the summation order differs


def _run(command, cwd):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def _record(folder: Path) -> dict:
    return json.loads((folder / "record.json").read_text())


@pytest.mark.slow
def test_two_processes_match_one_process(tmp_path):
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or "torchrun"
    _run([sys.executable, "-m", "ckd.cli", "finetune", *ARGS, f"output_dir={tmp_path / 'one'}"], tmp_path)
    _run([torchrun, "--standalone", "--nproc_per_node", "2", "-m", "ckd.cli", "finetune", *ARGS, f"output_dir={tmp_path / 'two'}"], tmp_path)
    one, two = _record(tmp_path / "one"), _record(tmp_path / "two")
    assert one["runtime"]["world_size"] == 1 and two["runtime"]["world_size"] == 2
    assert one["timing"]["train_steps"] == two["timing"]["train_steps"] == 16  # global batch kept at 32
    for a, b in zip(one["history"], two["history"]):
        assert a["train_loss"] == pytest.approx(b["train_loss"], abs=TOLERANCE)
        assert a["dev"]["dev"]["accuracy"] == pytest.approx(b["dev"]["dev"]["accuracy"], abs=1 / 128)
    assert not (tmp_path / "two" / "checkpoints").exists()


def test_bf16_autocast_on_cpu_trains_and_is_recorded(tmp_path):
    from ckd.config import resolve_config
    from ckd.runs import execute

    config = resolve_config("finetune", None, [*ARGS, "train.epochs=1", "train.precision=bf16", f"output_dir={tmp_path / 'bf16'}"])
    record = execute("finetune", config)
    assert record["runtime"]["precision"] == "bf16"
    losses = [h["train_loss"] for h in record["history"]]
    assert all(0 < loss < 5 for loss in losses)
    reference = execute("finetune", resolve_config("finetune", None, [*ARGS, "train.epochs=1", f"output_dir={tmp_path / 'fp32'}"]))
    # bf16 rounds activations to 8 bits of mantissa: close to fp32, not identical
    assert losses[0] == pytest.approx(reference["history"][0]["train_loss"], rel=0.05)
    assert losses[0] != reference["history"][0]["train_loss"]


def test_fp16_on_cpu_is_refused(tmp_path):
    from ckd.config import resolve_config
    from ckd.errors import ConfigError
    from ckd.runs import execute

    with pytest.raises(ConfigError, match="fp16 needs a CUDA device"):
        execute("finetune", resolve_config("finetune", None, [*ARGS, "train.precision=fp16", f"output_dir={tmp_path / 'x'}"]))


def _torchrun(nproc: int, args: list[str], out: Path, cwd: Path):
    _torchrun_done(nproc, args, out, cwd)
    return _record(out)


def _torchrun_done(nproc: int, args: list[str], out: Path, cwd: Path) -> subprocess.CompletedProcess:
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or "torchrun"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    command = [torchrun, "--standalone", "--nproc_per_node", str(nproc), "-m", "ckd.cli", *args, f"output_dir={out}"]
    # A hang (a collective that one rank never joins) would wait forever: the timeout turns it into a failure.
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


EDGE = [
    "task=syn-pair", "model.init=random", "model.tokenizer=synthetic", "model.layers=1", "model.hidden=16", "model.heads=2",
    "model.ffn=32", "model.dropout=0", "train.lr=1e-3", "train.progress=false", "train.tensorboard=false", "train.threads=1",
    "data.max_length=24", "data.synthetic_dev_size=8", "train.epochs=1",
]


@pytest.mark.slow
@pytest.mark.parametrize("nproc, examples, batch, accum", [
    (2, 33, 32, 1),   # the last step has 1 example: rank 1 has none
    (3, 1, 1, 1),     # one example in all: two ranks idle at every step
    (2, 5, 4, 2),     # grad_accum larger than a rank's share of the last step
    (3, 7, 2, 2),     # every step has fewer examples than processes
])
def test_any_step_completes_under_torchrun(nproc, examples, batch, accum, tmp_path):
    """No step may leave a rank out of a collective, whatever the process count, batch and split."""
    record = _torchrun(nproc, ["finetune", *EDGE, f"data.synthetic_train_size={examples}", f"train.batch_size={batch}",
                               f"train.grad_accum={accum}"], tmp_path / "run", tmp_path)
    assert record["runtime"]["world_size"] == nproc
    assert record["timing"]["train_steps"] == -(-examples // batch)
    assert record["metrics"]["final"]["dev"]["accuracy"] is not None


@pytest.mark.slow
def test_two_processes_match_one_for_relation_terms(tmp_path):
    """CKD's relation terms are normalised by token counts, not examples: two processes (with an idle
    rank on the last step) must still give one process's losses; dropout 0, so the same computation."""
    teacher = tmp_path / "teacher"
    _run([sys.executable, "-m", "ckd.cli", "finetune", *EDGE, "model.layers=2", "data.synthetic_train_size=33",
          "train.batch_size=16", f"output_dir={teacher}"], tmp_path)
    student = [f"student.{k}" for k in ("init=random", "tokenizer=synthetic", "layers=1", "hidden=16", "heads=2", "ffn=32",
                                          "dropout=0")]
    args = ["distill", "method=ckd", f"teacher.name_or_path={teacher}/model", *student,
            *[a for a in EDGE if not a.startswith("model.")], "data.synthetic_train_size=33", "train.batch_size=32",
            "data.synthetic_dev_size=9"]
    _run([sys.executable, "-m", "ckd.cli", *args, f"output_dir={tmp_path / 'one'}"], tmp_path)
    one = _record(tmp_path / "one")
    two = _torchrun(2, args, tmp_path / "two", tmp_path)
    assert len(one["history"]) == len(two["history"]) >= 1
    for a, b in zip(one["history"], two["history"]):
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-5)
        for name, value in a["loss_terms"].items():
            assert b["loss_terms"][name] == pytest.approx(value, rel=1e-5, abs=1e-9), name
    # dev evaluation is sharded across the two processes (5 + 4 of 9 examples) and gathered in order
    predictions = [json.loads((tmp_path / run / "predictions.json").read_text())["dev"] for run in ("one", "two")]
    assert len(predictions[0]["labels"]) == 9 and predictions[1] == predictions[0]


def _children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(c) for c in (task / "children").read_text().split()]
    return found


def _rank(pid: int) -> int:
    environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return int(next(v for v in environ if v.startswith(b"RANK=")).split(b"=", 1)[1])


class _Torchrun:
    """torchrun whose output is read line by line in the background (select on a buffered pipe would
    miss lines already read into the buffer). It runs in a session of its own; torchrun starts each
    worker in a session of its own too, so `kill` signals the three process groups."""

    def __init__(self, args, out, cwd, env):
        torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or "torchrun"
        command = [torchrun, "--standalone", "--nproc_per_node", "2", "-m", "ckd.cli", *args, f"output_dir={out}"]
        self.proc = subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                     start_new_session=True)
        self.lines: queue.Queue = queue.Queue()
        self.output: list[str] = []
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        for line in self.proc.stderr:
            self.lines.put(line)
        self.lines.put(None)

    def kill(self) -> None:
        """SIGKILL to torchrun's process group and each worker's (as when a node is lost); workers
        stopped at a pause point die too (SIGKILL needs no SIGCONT)."""
        groups = [self.proc.pid]
        with contextlib.suppress(FileNotFoundError):  # torchrun has ended (after ending its workers)
            groups += _children(self.proc.pid)
        for group in groups:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(group, signal.SIGKILL)
        self.proc.wait(timeout=30)

    def next_line(self, timeout: float = 120) -> str | None:
        try:
            line = self.lines.get(timeout=timeout)
        except queue.Empty:
            self.kill()
            raise AssertionError(f"no output from torchrun within {timeout} s:\n{''.join(self.output)}") from None
        if line is not None:
            self.output.append(line)
        return line

    def finish(self, timeout: float = 120) -> str:
        while self.next_line(timeout) is not None:
            pass
        self.proc.wait(timeout=30)
        return "".join(self.output)


PAUSE = "ckd-pause: train-step"


def _paused_torchrun(args, out, cwd, pauses: int):
    """torchrun with both ranks stopping themselves after each optimiser step; returns it and the two
    worker pids by rank once both ranks have paused `pauses` times (the workers stay stopped). Pause
    lines are counted, not matched whole: the workers share torchrun's stderr, so another process's
    unfinished line may precede one (each pause line is written in one piece, ckd/pause.py)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "CKD_TEST_PAUSE_AT": "train-step"}
    run = _Torchrun(args, out, cwd, env)
    try:
        for count in range(1, pauses + 1):
            paused = 0
            while paused < 2:
                line = run.next_line()
                assert line is not None, "torchrun ended before both ranks paused:\n" + "".join(run.output)
                paused += line.count(PAUSE)
            assert paused == 2, "".join(run.output)
            workers = {_rank(pid): pid for pid in _children(run.proc.pid)}
            assert sorted(workers) == [0, 1], workers
            for pid in workers.values():
                _wait_stopped(pid)  # the pause line comes just before SIGSTOP: a SIGCONT sent in between is lost
            if count < pauses:
                for pid in workers.values():
                    os.kill(pid, signal.SIGCONT)
    except BaseException:
        run.kill()
        raise
    return run, workers


def _wait_stopped(pid: int, timeout: float = 60) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] in ("T", "t"):
            return
        time.sleep(0.005)
    raise AssertionError(f"worker {pid} did not stop at its pause point")


def _checkpoint_step(out: Path) -> int:
    return torch.load(out / "checkpoints" / "latest" / "state.pt", map_location="cpu", weights_only=False)["step"]


ARGS_4_STEPS = ["finetune", *EDGE, "data.synthetic_train_size=32", "train.batch_size=8", "train.eval_every=2"]  # checkpoints after step 2


@pytest.fixture(scope="module")
def two_process_reference(tmp_path_factory):
    folder = tmp_path_factory.mktemp("reference")
    return _torchrun(2, ARGS_4_STEPS, folder / "run", folder)


@pytest.mark.slow
def test_a_signal_to_one_process_stops_all_after_the_same_step_and_resumes(two_process_reference, tmp_path):
    """SIGTERM reaches only rank 1 (ranks are a step apart): both ranks checkpoint after the same step
    and stop, no collective waits forever; the same command then resumes to the weights and losses of
    an uninterrupted two-process run."""
    out = tmp_path / "run"
    run, workers = _paused_torchrun(ARGS_4_STEPS, out, tmp_path, pauses=1)
    try:
        os.kill(workers[1], signal.SIGTERM)
        os.kill(workers[1], signal.SIGCONT)
        os.kill(workers[0], signal.SIGCONT)
        rest = run.finish()
    finally:
        if run.proc.poll() is None:
            run.kill()
    assert run.proc.returncode != 0, rest
    # Whichever rank exits first prints its reason; torchrun may then end the other before it prints its own.
    assert re.search(r"stopped by (SIGTERM|a signal to another process) after step 1/4; .* run the same command again to resume",
                     rest), rest
    # Checkpoints come every 2 steps: one after step 1 means rank 0 (the writer) stopped there too.
    assert _checkpoint_step(out) == 1 and not (out / "record.json").exists()
    _assert_resumes_to(two_process_reference, out, tmp_path, from_step=1)


@pytest.mark.slow
def test_sigkill_to_torchrun_and_its_workers_mid_run_resumes_from_the_last_checkpoint(two_process_reference, tmp_path):
    """SIGKILL to torchrun and both workers (a lost node) after step 3 of 4: only the step-2
    checkpoint is left, no record; the same command resumes from step 2 to the losses and final
    metrics of an uninterrupted two-process run."""
    out = tmp_path / "run"
    run, _ = _paused_torchrun(ARGS_4_STEPS, out, tmp_path, pauses=3)
    run.kill()
    assert run.proc.returncode == -signal.SIGKILL
    assert _checkpoint_step(out) == 2 and not (out / "record.json").exists()
    _assert_resumes_to(two_process_reference, out, tmp_path, from_step=2)


def _assert_resumes_to(reference, out, cwd, from_step: int):
    done = _torchrun_done(2, ARGS_4_STEPS, out, cwd)
    assert f"resuming {out} from step {from_step}/4" in done.stderr, done.stderr[-3000:]
    resumed = _record(out)
    assert resumed["runtime"]["world_size"] == 2 and resumed["timing"]["train_steps"] == 4
    assert [h["train_loss"] for h in resumed["history"]] == [h["train_loss"] for h in reference["history"]]
    assert resumed["metrics"]["final"] == reference["metrics"]["final"]
    assert not (out / "checkpoints").exists()
