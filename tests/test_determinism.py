"""Determinism: the same command twice gives the same run record (timings aside) on CPU, and the record
says whether the run was deterministic (GPU runs are flagged as not bit-reproducible)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from ckd.cli import main as cli
from ckd.run_record import determinism
from tests.test_reliability_kill import run_and_stop

SHAPE = {"init": "random", "tokenizer": "synthetic", "hidden": 32, "heads": 4, "ffn": 64}
COMMON = ["task=syn-pair", "data.max_length=32", "data.synthetic_train_size=96", "data.synthetic_dev_size=32",
          "train.progress=false", "train.tensorboard=false", "train.threads=1", "train.batch_size=16", "train.max_steps=8",
          "train.eval_every=4", "train.lr=1e-3"]


def shape(role: str, layers: int) -> list[str]:
    return [f"{role}.{key}={value}" for key, value in {**SHAPE, "layers": layers}.items()]


def without_timing(record: dict) -> dict:
    """Timings differ run to run; the commit only if the repository gains one meanwhile."""
    return {k: v for k, v in record.items() if k not in ("timing", "git_commit")}


def run_twice(args: list[str], out: Path) -> tuple[dict, dict, list[bytes], list[bytes]]:
    """The same command twice in the same folder (--force redoes a finished run): records and output files."""
    results = []
    for extra in ([], ["--force"]):
        assert cli([*args, f"output_dir={out}", *extra]) == 0
        files = [p.read_bytes() for p in (out / "predictions.json", out / "model" / "model.safetensors") if p.is_file()]
        results.append((json.loads((out / "record.json").read_text()), files))
    (a, files_a), (b, files_b) = results
    return a, b, files_a, files_b


@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("det-teacher")
    assert cli(["finetune", *COMMON, *shape("model", 2), f"output_dir={out}"]) == 0
    return out / "model"


def test_finetune_twice_gives_identical_records(tmp_path):
    a, b, files_a, files_b = run_twice(["finetune", *COMMON, *shape("model", 2), "model.dropout=0.1"], tmp_path / "ft")
    assert without_timing(a) == without_timing(b)
    assert files_a == files_b and len(files_a) == 2
    assert a["deterministic"] is True and a["determinism_note"] is None
    assert a["runtime"]["device"] == "cpu" and a["timing"]["train_steps"] == 8


@pytest.mark.parametrize("method", ["ckd", "tinybert-intermediate"])
def test_distill_twice_gives_identical_records(method, teacher, tmp_path):
    args = ["distill", *COMMON, f"method={method}", f"teacher.name_or_path={teacher}", *shape("student", 1),
            "use_task_settings=false"]
    a, b, files_a, files_b = run_twice(args, tmp_path / method)
    assert without_timing(a) == without_timing(b)
    assert files_a == files_b
    assert a["deterministic"] is True and len(files_a) == (1 if method == "tinybert-intermediate" else 2)
    assert a["history"][-1]["loss_terms"]  # the relation / projection terms were trained


def test_gpu_runs_are_flagged_not_deterministic():
    assert determinism({"device": "cpu", "precision": "bf16", "world_size": 1}) == {"deterministic": True, "determinism_note": None}
    flagged = determinism({"device": "cuda:0", "precision": "fp32", "world_size": 1})
    assert flagged["deterministic"] is False and "not bit-reproducible" in flagged["determinism_note"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_cuda_run_records_that_it_is_not_deterministic(tmp_path):
    out = tmp_path / "gpu"
    assert cli(["finetune", *COMMON, *shape("model", 2), "train.device=cuda", f"output_dir={out}"]) == 0
    record = json.loads((out / "record.json").read_text())
    assert record["runtime"]["device"].startswith("cuda") and record["deterministic"] is False


def test_a_resume_must_use_the_thread_count_of_its_checkpoint(tmp_path):
    """On CPU the thread count changes how reductions are split, hence the last bits of each step: it is not
    part of the config fingerprint (a finished run is not redone for it) but a resume must match it."""

    out = tmp_path / "run"
    args = ["finetune", *COMMON, *shape("model", 2), f"output_dir={out}"]
    stopped = run_and_stop(args, "train-step", 1, how="term")
    assert stopped.returncode == 2 and "stopped by SIGTERM after step 1/8" in stopped.output, stopped.output
    assert cli([*args, "train.threads=2"]) == 2
    assert not (out / "record.json").exists()
    assert cli(args) == 0  # the checkpoint's count (train.threads=1 in COMMON)
    record = json.loads((out / "record.json").read_text())
    assert record["config"]["train"]["threads"] == 1 and record["timing"]["train_steps"] == 8
    assert cli([*args, "train.threads=2"]) == 0  # finished: not redone for another thread count
