"""A run folder knows whose it is (ckd/run_dir.py): what counts as finished, what --force may replace, the
lock a killed run does not leave stuck, the record restored after a workflow manager removed it, the
model/ swap a kill cut short, and the permissions of what is written (the umask's, not tempfile's 0600)."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ckd import atomic
from ckd.cli import main as cli
from ckd.run_dir import OWNER_FILE, SEALED_RECORD, RunFolderError, claim, finished_record
from tests.test_reliability_kill import run_and_stop

MODEL = ["model.init=random", "model.tokenizer=synthetic", "model.layers=2", "model.hidden=32", "model.heads=4", "model.ffn=64"]
COMMON = ["task=syn-pair", *MODEL, "data.max_length=32", "data.synthetic_train_size=48", "data.synthetic_dev_size=16",
          "train.progress=false", "train.tensorboard=false", "train.threads=1", "train.batch_size=16", "train.max_steps=2",
          "train.lr=1e-3"]


def finetune(out: Path, *extra: str) -> int:
    return cli(["finetune", *COMMON, f"output_dir={out}", *extra])


@pytest.fixture
def finished(tmp_path) -> Path:
    out = tmp_path / "run"
    assert finetune(out) == 0
    return out


def test_a_finished_run_is_skipped_and_left_as_it_is(finished, capsys):
    before = {p.name: p.stat().st_mtime_ns for p in finished.rglob("*") if p.is_file() and p.name != "run.lock"}
    assert finetune(finished) == 0
    assert "run already complete" in capsys.readouterr().err
    assert {p.name: p.stat().st_mtime_ns for p in finished.rglob("*") if p.is_file() and p.name != "run.lock"} == before
    owner = json.loads((finished / OWNER_FILE).read_text())
    record = json.loads((finished / "record.json").read_text())
    assert owner["kind"] == "finetune" and owner["task"] == "syn-pair"
    assert owner["config_fingerprint"] == record["config_fingerprint"]
    assert (finished / SEALED_RECORD).stat().st_ino == (finished / "record.json").stat().st_ino  # one file, two names


@pytest.mark.parametrize("content", [b"", b'{"schema_version": 1, "kind": ', b"[1, 2]", b'{"kind": "finetune"}'])
def test_an_empty_or_truncated_record_is_not_a_finished_run(finished, content, capsys):
    (finished / "record.json").unlink()
    (finished / SEALED_RECORD).unlink()
    (finished / "record.json").write_bytes(content)
    assert finished_record(finished) is None
    assert finetune(finished) == 0  # run again (nothing to resume: the checkpoints went with the finished run)
    assert "already complete" not in capsys.readouterr().err
    record = json.loads((finished / "record.json").read_text())
    assert record["kind"] == "finetune" and record["timing"]["train_steps"] == 2


def test_force_replaces_a_run_of_the_same_kind_and_its_owner(finished):
    old = json.loads((finished / OWNER_FILE).read_text())["config_fingerprint"]
    assert finetune(finished, "train.lr=2e-3") == 2  # refused without --force (the catalogue has the message)
    assert finetune(finished, "train.lr=2e-3", "--force") == 0
    owner = json.loads((finished / OWNER_FILE).read_text())
    record = json.loads((finished / "record.json").read_text())
    assert owner["config_fingerprint"] != old and owner["config_fingerprint"] == record["config_fingerprint"]
    assert record["config"]["train"]["lr"] == pytest.approx(2e-3)


def test_a_removed_record_is_restored_not_recomputed(finished, capsys):
    """What Snakemake does before re-running a job it thinks incomplete: delete its output."""
    record = (finished / "record.json").read_bytes()
    weights = (finished / "model" / "model.safetensors").stat().st_mtime_ns
    (finished / "record.json").unlink()
    assert finetune(finished) == 0
    assert "restored it from owner.record.json" in capsys.readouterr().err
    assert (finished / "record.json").read_bytes() == record
    assert (finished / "model" / "model.safetensors").stat().st_mtime_ns == weights


def test_a_removed_record_of_another_config_is_recomputed(finished, capsys):
    (finished / "record.json").unlink()
    assert finetune(finished, "train.lr=2e-3") == 0
    record = json.loads((finished / "record.json").read_text())
    assert record["config"]["train"]["lr"] == pytest.approx(2e-3)
    assert json.loads((finished / SEALED_RECORD).read_text()) == record


def test_a_model_swap_cut_short_by_a_kill_is_undone_on_the_next_start(finished):
    """A kill between the two renames of model/: the previous model sits in .model.old, model/ is gone."""
    weights = (finished / "model" / "model.safetensors").read_bytes()
    for name in ("record.json", SEALED_RECORD):
        (finished / name).unlink()
    os.replace(finished / "model", finished / ".model.old")
    (finished / ".model.abc.tmp").mkdir()
    folder = claim("finetune", _config(finished), force=False)
    try:
        assert (finished / "model" / "model.safetensors").read_bytes() == weights
        assert not [p.name for p in finished.iterdir() if p.name.startswith(".")]
    finally:
        folder.release()


def test_a_stale_old_model_next_to_a_complete_one_is_removed(finished):
    (finished / "record.json").unlink()
    (finished / SEALED_RECORD).unlink()
    (finished / ".model.old").mkdir()
    (finished / ".model.old" / "model.safetensors").write_bytes(b"old")
    claim("finetune", _config(finished), force=False).release()
    assert not (finished / ".model.old").exists() and (finished / "model" / "model.safetensors").is_file()


def _config(out: Path, *extra: str) -> dict:
    from ckd.config import resolve_config

    return resolve_config("finetune", None, [*COMMON, f"output_dir={out}", *extra])


def test_a_second_writer_is_refused_and_a_killed_writer_leaves_no_stuck_lock(tmp_path):
    """Two processes: the first stops itself mid-training (holding the lock), the second is refused; after
    the first is SIGKILLed the kernel has released its lock and the same command resumes and finishes."""
    out = tmp_path / "run"
    env = {**os.environ, "CKD_TEST_PAUSE_AT": "train-step", "HF_HUB_OFFLINE": "1"}
    first = subprocess.Popen([sys.executable, "-m", "ckd.cli", "finetune", *COMMON, f"output_dir={out}"], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and first.poll() is None:
            with open(f"/proc/{first.pid}/stat") as handle:
                if handle.read().rsplit(")", 1)[1].split()[0] == "T":
                    break
            time.sleep(0.02)
        with pytest.raises(RunFolderError, match=rf"is in use by another ckd process \(pid {first.pid} on "):
            claim("finetune", _config(out, "train.lr=2e-3"), force=True)
    finally:
        first.kill()
        first.wait(timeout=30)
    assert finetune(out) == 0
    assert finished_record(out)["timing"]["train_steps"] == 2


def test_every_process_of_a_torchrun_job_stops_with_the_main_process_refusal(tmp_path):
    """Only the main process locks and writes; the others get its outcome and raise the same line."""
    out = tmp_path / "run"
    out.mkdir()
    from ckd.run_dir import RunLock

    held = RunLock.acquire(out)
    shared = []

    def agree(outcome):  # what gather_objects(...)[0] gives every process
        shared.append(outcome)
        return outcome

    try:
        with pytest.raises(RunFolderError, match="in use by another ckd process") as main_error:
            claim("finetune", _config(out), force=False, is_main=True, agree=agree)
        with pytest.raises(RunFolderError) as other_error:
            claim("finetune", _config(out), force=False, is_main=False, agree=lambda outcome: shared[0])
        assert str(other_error.value) == str(main_error.value)
    finally:
        held.release()


@pytest.mark.parametrize("mask, file_mode, dir_mode", [(0o022, 0o644, 0o755), (0o002, 0o664, 0o775), (0o077, 0o600, 0o700)])
def test_written_files_get_the_umask_permissions(tmp_path, mask, file_mode, dir_mode):
    previous = os.umask(mask)
    try:
        assert atomic.umask() == mask
        atomic.atomic_write_json(tmp_path / "table.json", {"a": 1})
        with atomic.atomic_directory(tmp_path / "folder") as tmp:
            (tmp / "inside.txt").write_text("x")
        out = tmp_path / "run"
        assert finetune(out) == 0
    finally:
        os.umask(previous)
    mode = lambda path: stat.S_IMODE(path.stat().st_mode)  # noqa: E731
    assert mode(tmp_path / "table.json") == file_mode
    assert mode(tmp_path / "folder") == dir_mode and mode(tmp_path / "folder" / "inside.txt") == file_mode
    for name in ("record.json", "predictions.json", OWNER_FILE, "model/model.safetensors", "model/config.json"):
        assert mode(out / name) == file_mode, name
    assert mode(out / "model") == dir_mode


def test_sigint_checkpoints_and_stops_like_sigterm(tmp_path):
    """Ctrl-C during training: the run saves a checkpoint at that step, says so, and the same command resumes."""
    out = tmp_path / "run"
    args = ["finetune", *COMMON, f"output_dir={out}", "train.max_steps=3"]
    stopped = run_and_stop(args, "train-step", 1, how="int")
    assert stopped.returncode == 2, stopped.output
    assert "stopped by SIGINT after step 1/3; checkpoint saved in" in stopped.output, stopped.output
    import torch

    assert torch.load(out / "checkpoints" / "latest" / "state.pt", weights_only=False)["step"] == 1
    assert finetune(out, "train.max_steps=3") == 0


def test_a_removed_record_is_recomputed_when_an_input_changed_since(finished, tmp_path, capsys):
    """A teacher re-written since the student ran (new size or time stamp of a file in its folder): the student's
    record is not restored from owner.record.json; the run is done again."""
    student = [a.replace("model.", "student.").replace("layers=2", "layers=1") for a in MODEL]
    args = ["distill", *[a for a in COMMON if not a.startswith("model.")], *student, "method=kd",
            f"teacher.name_or_path={finished / 'model'}", f"output_dir={tmp_path / 'kd'}"]
    assert cli(args) == 0
    (tmp_path / "kd" / "record.json").unlink()
    weights = finished / "model" / "model.safetensors"
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 10**9))
    capsys.readouterr()
    assert cli(args) == 0
    err = capsys.readouterr().err
    assert "the run's inputs changed since it ran (teacher.name_or_path): running it again" in err, err
    assert "restored" not in err and finished_record(tmp_path / "kd")["kind"] == "distill"
    owner = json.loads((tmp_path / "kd" / OWNER_FILE).read_text())
    assert ["model.safetensors", weights.stat().st_size, weights.stat().st_mtime_ns] in owner["inputs"]["teacher.name_or_path"]


def test_a_removed_record_written_by_another_commit_is_recomputed(finished, capsys):
    """After a code change (another commit) a removed record is not brought back: the run is done again."""
    sealed = json.loads((finished / SEALED_RECORD).read_text())
    (finished / "record.json").unlink()
    sealed["git_commit"] = "0" * 40
    (finished / SEALED_RECORD).unlink()
    (finished / SEALED_RECORD).write_text(json.dumps(sealed))
    capsys.readouterr()
    assert finetune(finished) == 0
    assert "ckd changed since the run (version or commit): running it again" in capsys.readouterr().err
    assert finished_record(finished)["git_commit"] != "0" * 40


def test_a_finished_run_on_a_read_only_filesystem_is_skipped(tmp_path, capsys):
    """Nothing needs writing to see that a run is finished: a results disk mounted read-only still answers."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(disk)], capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {mounted.stderr.strip()}")
    try:
        assert finetune(disk / "run") == 0
        assert subprocess.run(["mount", "-o", "remount,ro", str(disk)], capture_output=True).returncode == 0
        capsys.readouterr()
        assert finetune(disk / "run") == 0
        assert "run already complete" in capsys.readouterr().err
        assert finetune(disk / "run", "train.lr=2e-3") == 2  # another config: refused, not written
        assert "holds a finished run of another config (train.lr 0.001 -> 0.002)" in capsys.readouterr().err
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)
