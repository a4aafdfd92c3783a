"""The run config of every `ckd dynabert` stage: the common keys (task, seed, data, train, output_dir) plus
the DynaBERT keys below, resolved like `ckd distill`'s (YAML file <- key=value overrides, unknown keys
refused with one line)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ckd.config import COMMON_DEFAULTS, _merge, apply_override, load_yaml
from ckd.errors import ConfigError

DEFAULT_WIDTHS = [0.25, 0.5, 0.75, 1.0]
DEFAULT_DEPTHS = [0.5, 0.75, 1.0]
STAGES = ("width", "depth")

DYNABERT_DEFAULTS: dict[str, Any] = {
    **COMMON_DEFAULTS,
    "teacher": None,           # model spec: the fine-tuned teacher (rewire, width stage) or DynaBERT_W (depth stage)
    "student": None,           # model spec: the rewired teacher (width stage) or DynaBERT_W (depth stage)
    "model": None,             # model spec read by evaluate / export (a stage's model/ folder)
    "method": None,            # an objective of the DynaBERT methods file: dynabert, dynabert-ckd, ...
    "methods_file": None,      # default: ckd/resources/dynabert_methods.yaml
    "method_options": {},
    "use_task_settings": True,
    "widths": DEFAULT_WIDTHS,
    "depths": DEFAULT_DEPTHS,  # the width stage trains depth 1.0 only
    "teacher_width": "same",   # depth stage: distil (w, d) from DynaBERT_W at width w (paper) or at full width
                               # ("full": what the released run_glue.py does, its teacher's width is never set)
    "rewire": {"max_examples": None, "batch_size": 32},
    "latency": {"batch_size": 1, "repeats": 20, "warmup": 3, "threads": 1},
}


def default_methods_file() -> Path:
    return Path(__file__).resolve().parent.parent / "resources" / "dynabert_methods.yaml"


def _check(config: dict[str, Any]) -> None:
    for key in ("widths", "depths"):
        values = config[key]
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{key} must be a non-empty list of multipliers in (0, 1], got {values!r}")
        for value in values:
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < float(value) <= 1:
                raise ConfigError(f"{key}: {value!r} is not a multiplier in (0, 1]; write e.g. {key}=[0.5,1.0]")
        if 1.0 not in [float(v) for v in values]:
            raise ConfigError(f"{key} must include 1.0 (the full network), got {values!r}")
    if config["teacher_width"] not in ("same", "full"):
        raise ConfigError(f"teacher_width must be 'same' (paper) or 'full' (released code), got {config['teacher_width']!r}")
    for section in ("rewire", "latency"):
        for key, value in config[section].items():
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < (0 if key == "warmup" else 1)):
                raise ConfigError(f"{section}.{key} must be a positive integer, got {value!r}")


def resolve(config_file: str | Path | None, overrides: list[str]) -> dict[str, Any]:
    """Defaults <- YAML file <- overrides; unknown keys and bad values raise ConfigError (one line)."""
    given: dict[str, Any] = load_yaml(config_file) if config_file else {}
    for assignment in overrides:
        apply_override(given, assignment)
    config = _merge(DYNABERT_DEFAULTS, given, "")  # model specs and method_options are free-form there
    _check(config)
    return config
