"""Runs record the recipe they used; chained TinyBERT stages each run under their own recipe."""

import json

import pytest

from ckd.cli import main as cli

MODEL = {"init": "random", "tokenizer": "synthetic", "hidden": 32, "heads": 4, "ffn": 64}
DATA = ["data.max_length=24", "data.synthetic_train_size=32", "data.synthetic_dev_size=16"]
QUIET = ["train.progress=false", "train.tensorboard=false", "train.threads=1", "train.batch_size=16", "train.max_steps=1"]


def spec(role, layers):
    return [f"{role}.{key}={value}" for key, value in {**MODEL, "layers": layers}.items()]


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("teacher")
    assert cli(["finetune", "task=syn-pair", f"output_dir={folder}", *spec("model", 4), *DATA, *QUIET]) == 0
    return folder


def distill(teacher_dir, out, *args):
    code = cli(["distill", "task=syn-pair", f"output_dir={out}", f"teacher.name_or_path={teacher_dir}/model",
                *spec("student", 2), *DATA, *QUIET, *args])
    assert code == 0
    return json.loads((out / "record.json").read_text())


def test_tinybert_stages_run_under_their_own_recipes(teacher_dir, tmp_path):
    # A second-stage option (the temperature) must not be refused by the first stage, which has none.
    record = distill(teacher_dir, tmp_path / "tb", "method=tinybert-released", "method_options.temperature=2.0")
    stage2 = record["method_resolved"]
    assert stage2["recipe"]["name"] == "tinybert-stage2"
    assert stage2["settings"]["temperature"] == 2.0 and stage2["recipe"]["values"]["temperature"] == 1.0
    assert stage2["settings"]["lr"] == pytest.approx(3e-5) and stage2["settings"]["epochs"] == 3
    assert stage2["terms"] == [{"name": "tinybert_prediction", "weight": 1.0,
                                "options": {"released_regression": True, "class_mean": True}}]
    stage1 = json.loads((tmp_path / "tb" / "stage1" / "record.json").read_text())
    assert stage1["method"] == "tinybert-intermediate-released" and stage1["kind"] == "intermediate"
    assert stage1["method_resolved"]["recipe"]["name"] == "tinybert-stage1"
    assert stage1["method_resolved"]["settings"]["lr"] == pytest.approx(5e-5)
    assert stage1["method_resolved"]["settings"]["epochs"] == 10
    assert "temperature" not in stage1["config"]["method_options"]
    assert {t["name"]: t["options"] for t in stage1["method_resolved"]["terms"]} == {
        name: {"released_padding": True} for name in ("tinybert_embedding", "tinybert_hidden", "tinybert_attention")}


def test_pkd_record_names_its_recipe_and_reduction(teacher_dir, tmp_path):
    record = distill(teacher_dir, tmp_path / "pkd", "method=pkd")
    resolved = record["method_resolved"]
    assert resolved["recipe"]["name"] == "pkd" and resolved["recipe"]["task"] is None
    assert resolved["recipe"]["values"] == {"alpha": 0.5, "temperature": 10.0, "beta": 100.0, "lr": 5e-5, "epochs": 4}
    assert {t["name"]: t.get("options") for t in resolved["terms"]} == {"kd": None, "pkd": {"released_reduction": True}}
