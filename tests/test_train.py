"""The training loop end to end on the synthetic tasks: learning, distillation, resume, records."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from ckd.cli import main as cli
from ckd.config import resolve_config
from ckd.runs import execute

TEACHER = ["model.init=random", "model.tokenizer=synthetic", "model.layers=2", "model.hidden=64", "model.heads=4", "model.ffn=128"]
STUDENT = ["student.init=random", "student.tokenizer=synthetic", "student.layers=1", "student.hidden=32", "student.heads=4", "student.ffn=64"]
TEACHER_RUN = ["train.epochs=6", "train.lr=1e-3", "data.synthetic_dev_size=400"]
QUIET = ["train.progress=false", "train.tensorboard=false", "train.threads=1", "data.max_length=40"]


def finetune(output_dir, *overrides):
    config = resolve_config("finetune", None, [f"output_dir={output_dir}", *QUIET, *TEACHER, *overrides])
    execute("finetune", config)
    return json.loads((Path(output_dir) / "record.json").read_text())


def distill(output_dir, teacher_dir, *overrides):
    config = resolve_config(
        "distill", None, [f"output_dir={output_dir}", f"teacher.name_or_path={teacher_dir}/model", *QUIET, *STUDENT, *overrides]
    )
    execute("distill", config)
    return json.loads((Path(output_dir) / "record.json").read_text())


def dev_score(record, which="final"):
    selection = record["metrics"]["selection"]
    return record["metrics"][which][selection["split"]][selection["metric"]]


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    folder = tmp_path_factory.mktemp("teacher") / "run"
    record = finetune(folder, "task=syn-sentiment", *TEACHER_RUN)
    return folder, record


def test_teacher_beats_chance_clearly(teacher):
    _, record = teacher
    assert dev_score(record) > 0.68, record["history"]  # chance is 0.5; dev has 400 examples
    assert record["kind"] == "finetune" and record["method"] == "finetune"
    assert record["teacher"] is None and record["student"]["layers"] == 2


def test_kd_student_beats_the_same_student_without_a_teacher(teacher, tmp_path):
    teacher_dir, _ = teacher
    common = ["task=syn-sentiment", "train.epochs=6", "train.lr=2e-3", "data.max_train_examples=400", "data.synthetic_dev_size=400",
              "use_task_settings=false"]
    plain = distill(tmp_path / "ft", teacher_dir, "method=finetune", *common)
    kd = distill(tmp_path / "kd", teacher_dir, "method=kd", "method_options.alpha=1.0", "method_options.temperature=2.0", *common)
    assert dev_score(kd) > dev_score(plain) + 0.03, (dev_score(kd), dev_score(plain))


def test_record_is_complete_and_predictions_are_stored(teacher):
    folder, record = teacher
    for key in ("schema_version", "config", "config_fingerprint", "data_fingerprint", "versions", "timing", "history", "seed"):
        assert key in record, key
    assert record["metrics"]["best"]["step"] <= record["metrics"]["final"]["step"]
    assert record["student"]["params"] > 0 and record["timing"]["train_examples_per_s"] > 0
    predictions = json.loads((folder / "predictions.json").read_text())
    assert len(predictions["dev"]["labels"]) == 400 == len(predictions["dev"]["final"]) == len(predictions["dev"]["best"])
    accuracy = sum(p == y for p, y in zip(predictions["dev"]["final"], predictions["dev"]["labels"])) / 400
    assert accuracy == pytest.approx(dev_score(record))
    assert not (folder / "checkpoints").exists()


def test_a_finished_run_is_not_redone(teacher, capsys):
    folder, record = teacher
    before = (folder / "record.json").stat().st_mtime_ns
    config = resolve_config("finetune", None, [f"output_dir={folder}", "task=syn-sentiment", *QUIET, *TEACHER, *TEACHER_RUN])
    assert execute("finetune", config) is None
    assert (folder / "record.json").stat().st_mtime_ns == before
    assert "already complete" in capsys.readouterr().err


def test_regression_task_records_correlations(tmp_path):
    record = finetune(tmp_path / "sim", "task=syn-similarity", "train.epochs=4", "train.lr=5e-4", "data.synthetic_dev_size=200")
    metrics = record["metrics"]["final"]["dev"]
    assert set(metrics) >= {"pearson", "spearman"}
    assert record["history"][-1]["train_loss"] < 0.8 * record["history"][0]["train_loss"]
    assert metrics["pearson"] > 0.2, record["history"]  # a tiny random-init model learns this task slowly


def test_cached_teacher_logits_match_live_teacher(teacher, tmp_path):
    teacher_dir, _ = teacher
    args = ["task=syn-sentiment", f"teacher.name_or_path={teacher_dir}/model", "data.max_train_examples=64", "data.max_length=40"]
    assert cli(["cache-logits", *args, "--out", str(tmp_path / "logits.pt")]) == 0
    payload = torch.load(tmp_path / "logits.pt", weights_only=False)
    assert payload["logits"].shape == (64, 2)
    from ckd.data.encoding import encode_split
    from ckd.data.loading import load_split
    from ckd.models import build_model

    built = build_model({"name_or_path": f"{teacher_dir}/model"}, num_labels=2, regression=False)
    data = encode_split(load_split("syn-sentiment", "train", source="synthetic", max_examples=64), built.tokenizer, 40, "syn-sentiment")
    built.model.eval()
    batch = data.batch([5, 17, 40])
    with torch.no_grad():
        live = built.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], token_type_ids=batch["token_type_ids"]).logits
    assert torch.allclose(payload["logits"][[5, 17, 40]], live, atol=1e-5)
    cached = distill(tmp_path / "kd-cached", teacher_dir, "method=kd", "train.max_steps=4", f"teacher_logits={tmp_path / 'logits.pt'}",
                     "task=syn-sentiment", "data.max_train_examples=64")
    assert cached["metrics"]["final"]["step"] == 4
    with pytest.raises(Exception, match="computed on other training data"):
        distill(tmp_path / "kd-wrong", teacher_dir, "method=kd", "train.max_steps=2", f"teacher_logits={tmp_path / 'logits.pt'}",
                "task=syn-sentiment", "data.max_train_examples=32")


RESUME_ARGS = [
    "finetune", "task=syn-pair", "train.epochs=2", "train.lr=1e-3", "train.eval_every=10", "train.checkpoint_every=5",
    "data.synthetic_train_size=480", "data.synthetic_dev_size=160", *QUIET, *TEACHER,
]


def _run_cli(args, **kwargs):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "ckd.cli", *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, **kwargs)


def _comparable(record):
    return {"metrics": record["metrics"], "history": record["history"], "steps": record["timing"]["train_steps"]}


@pytest.mark.slow
def test_kill_and_resume_gives_the_uninterrupted_result(tmp_path):
    reference = tmp_path / "reference"
    proc = _run_cli([*RESUME_ARGS, f"output_dir={reference}"])
    assert proc.wait(timeout=300) == 0, proc.stdout.read().decode()

    resumed = tmp_path / "resumed"
    proc = _run_cli([*RESUME_ARGS, f"output_dir={resumed}"])
    state = resumed / "checkpoints" / "latest" / "state.pt"
    deadline = time.time() + 240
    while not state.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert state.exists(), "no checkpoint was written before the run ended"
    time.sleep(0.3)  # kill somewhere after the first checkpoint
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert not (resumed / "record.json").exists(), "the run finished before it could be killed; make it longer"
    killed_at = torch.load(state, weights_only=False)["step"]

    proc = _run_cli([*RESUME_ARGS, f"output_dir={resumed}"])
    output = proc.communicate(timeout=300)[0].decode()
    assert proc.returncode == 0, output
    assert f"from step {killed_at}" in output
    a = json.loads((reference / "record.json").read_text())
    b = json.loads((resumed / "record.json").read_text())
    assert _comparable(a) == _comparable(b)
    assert json.loads((reference / "predictions.json").read_text()) == json.loads((resumed / "predictions.json").read_text())
