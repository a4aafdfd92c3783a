"""The `dynabert:` section of a study config as a JSON-schema fragment (ckd.config_schema puts it into
workflow/schemas/config.schema.yaml). Light: no torch. The keys are read by workflow/rules/dynabert.smk."""

from __future__ import annotations

from typing import Any


def _multipliers(doc: str) -> dict[str, Any]:
    return {"type": "array", "minItems": 1, "uniqueItems": True, "contains": {"const": 1.0},
            "items": {"type": "number", "exclusiveMinimum": 0, "maximum": 1}, "description": doc}


def dynabert_schema() -> dict[str, Any]:
    positive = {"type": ["integer", "null"], "minimum": 1}
    return {
        "description": (
            "DynaBERT (docs/dynabert.md, workflow/rules/dynabert.smk): rewire a fine-tuned teacher, train DynaBERT_W and "
            "DynaBERT per objective and seed, score every (width, depth) on dev, export each as a smaller model"),
        "type": "object", "additionalProperties": False,
        "properties": {
            "teacher": {"type": "string", "description": "a key of teachers (default: the first)"},
            "objectives": {"type": "array", "minItems": 1, "uniqueItems": True, "items": {"type": "string"},
                           "description": "methods of ckd/resources/dynabert_methods.yaml (default: dynabert, dynabert-ckd)"},
            "tasks": {"type": "array", "minItems": 1, "uniqueItems": True, "items": {"type": "string"},
                      "description": "default: the study's tasks"},
            "seeds": {"type": "array", "minItems": 1, "uniqueItems": True, "items": {"type": "integer", "minimum": 0},
                      "description": "default: the study's seeds"},
            "widths": _multipliers("width multipliers (default 0.25, 0.5, 0.75, 1.0); must include 1.0"),
            "depths": _multipliers("depth multipliers (default 0.5, 0.75, 1.0); must include 1.0"),
            "train": {"$ref": "#/$defs/train", "description": "train.* of each stage, over the study's train"},
            "method_options": {"type": "object", "description": "settings of the objective (hidden_weight, wr_pair, ...)"},
            "use_task_settings": {"type": "boolean"},
            "methods_file": {"type": "string"},
            "teacher_width": {"enum": ["same", "full"], "description": (
                "depth stage: distil (w, d) from DynaBERT_W at width w (paper, default) or at full width (released code)")},
            "rewire": {"type": "object", "additionalProperties": False, "properties": {
                "max_examples": positive, "batch_size": {"type": "integer", "minimum": 1}}},
            "latency": {"type": "object", "additionalProperties": False, "properties": {
                "batch_size": {"type": "integer", "minimum": 1}, "repeats": {"type": "integer", "minimum": 1},
                "warmup": {"type": "integer", "minimum": 0}, "threads": {"type": "integer", "minimum": 1}}},
        },
    }
