"""Every method in the methods file completes a tiny `ckd distill` run; impossible pairings fail clearly."""

import json

import pytest

from ckd.cli import main as cli
from ckd.methods import load_methods

MODEL = {"init": "random", "tokenizer": "synthetic", "hidden": 32, "heads": 4, "ffn": 64}
DATA = ["data.max_length=24", "data.synthetic_train_size=48", "data.synthetic_dev_size=16"]
QUIET = ["train.progress=false", "train.tensorboard=false", "train.threads=1", "train.batch_size=16", "train.max_steps=2"]


def spec(role, layers, **changes):
    values = {**MODEL, "layers": layers, **changes}
    return [f"{role}.{key}={value}" for key, value in values.items()]


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("teacher")
    assert cli(["finetune", "task=syn-pair", f"output_dir={folder}", *spec("model", 4), *DATA, *QUIET]) == 0
    return folder


@pytest.mark.parametrize("method", sorted(load_methods(None)["methods"]))
def test_method_completes_a_tiny_run(method, teacher_dir, tmp_path):
    out = tmp_path / method
    code = cli(["distill", "task=syn-pair", f"method={method}", f"output_dir={out}", f"teacher.name_or_path={teacher_dir}/model",
                *spec("student", 2), *DATA, *QUIET])
    assert code == 0
    record = json.loads((out / "record.json").read_text())
    assert record["method"] == method
    expected_kind = "intermediate" if method.startswith("tinybert-intermediate") else "distill"
    assert record["kind"] == expected_kind
    if expected_kind == "distill":
        assert 0.0 <= record["metrics"]["final"]["dev"]["accuracy"] <= 1.0
    terms = {t["name"] for t in record["method_resolved"]["terms"]}
    assert set(record["history"][-1]["loss_terms"]) == terms


def test_minilm_with_unequal_heads_fails_clearly(teacher_dir, tmp_path, capsys):
    code = cli(["distill", "task=syn-pair", "method=minilm", f"output_dir={tmp_path / 'm'}", f"teacher.name_or_path={teacher_dir}/model",
                *spec("student", 2, heads=2), *DATA, *QUIET])
    assert code == 2
    err = capsys.readouterr().err
    assert "needs equal head counts (teacher 4, student 2)" in err and "give the student 4 heads" in err
    assert not (tmp_path / "m" / "record.json").exists()


def test_pkd_with_unequal_widths_fails_before_training(teacher_dir, tmp_path, capsys):
    code = cli(["distill", "task=syn-pair", "method=pkd", f"output_dir={tmp_path / 'p'}", f"teacher.name_or_path={teacher_dir}/model",
                *spec("student", 2, hidden=16), *DATA, *QUIET])
    assert code == 2
    err = capsys.readouterr().err
    assert "teacher width 32 != student width 16" in err and "compares hidden vectors directly" in err
    assert not (tmp_path / "p").exists()
