"""Which logit column is which label: read from a model's config by label NAME, never assumed.

A classifier's config carries `id2label` (logit column -> name). Checkpoints on the hub list their
labels in many orders (MNLI: the hub dataset order is entailment, neutral, contradiction; many
checkpoints use the legacy contradiction, neutral, entailment), so taking argmax column k as the
task's label k silently swaps classes. The rule, applied to every model ckd loads with a head:

* real names (anything but transformers' defaults): matched to the task's label names after
  `normalise_label` (case, surrounding blanks and the separators `_`, `-`, space are ignored, so
  "NOT_ENTAILMENT", "not-entailment" and "Not Entailment" are one name). The names must be exactly
  the task's names, each once; synonyms ("pos", "positive_sentiment") and other label sets are refused
  (`ModelError` naming both sets), because a wrong guess is a wrong result that looks fine.
* generic names (`LABEL_0`, `LABEL_1`, ... or "0", "1", ...: each names its own column): the model says
  nothing about its order, so the task's order is assumed, and the record says so (`by: "position"`).

`align_classifier` then permutes the output layer's rows so that column k IS task label k, and writes
the task's names into `config.id2label`/`label2id`; every later consumer (evaluation, teacher logits,
caches, a saved copy read by `transformers.pipeline`) sees task order and the right names.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ckd.errors import ModelError

_GENERIC = re.compile(r"^(?:label_)?(\d+)$", re.IGNORECASE)


def normalise_label(name: Any) -> str:
    """The form label names are compared in: lower case, blanks trimmed, `-` and spaces read as `_`."""
    return re.sub(r"[\s\-_]+", "_", str(name).strip().lower())


def checkpoint_label_names(config: Any) -> list[str]:
    """The config's label names in logit-column order (`id2label[0]`, `id2label[1]`, ...)."""
    id2label = getattr(config, "id2label", None) or {}
    names = {int(k): str(v) for k, v in dict(id2label).items()}
    count = int(getattr(config, "num_labels", len(names)))
    return [names.get(i, f"LABEL_{i}") for i in range(count)]


def is_generic(names: Sequence[str]) -> bool:
    """True when every name only restates its column (LABEL_k or k): the config carries no label names."""
    for column, name in enumerate(names):
        match = _GENERIC.match(str(name).strip())
        if not match or int(match.group(1)) != column:
            return False
    return True


@dataclass(frozen=True)
class LabelMapping:
    """columns[k] is the checkpoint's logit column holding task label k."""

    columns: tuple[int, ...]
    by: str  # "name" (read from id2label) | "position" (generic names: task order assumed)
    checkpoint_labels: tuple[str, ...]

    @property
    def is_identity(self) -> bool:
        return self.columns == tuple(range(len(self.columns)))

    def to_record(self) -> dict[str, Any]:
        note = None if self.by == "name" else "the checkpoint's labels are unnamed (LABEL_k): task order assumed"
        return {"by": self.by, "checkpoint_labels": list(self.checkpoint_labels), "columns": list(self.columns), "note": note}


def label_mapping(names: Sequence[str], task_labels: Sequence[str]) -> LabelMapping | None:
    """How a checkpoint's columns (named `names`, in column order) map onto the task's labels.

    None when they cannot: another number of labels, or real names that are not exactly the task's
    label names (each once). Generic names map by position.
    """
    names = [str(n) for n in names]
    if len(names) != len(task_labels):
        return None
    if is_generic(names):
        return LabelMapping(tuple(range(len(names))), "position", tuple(names))
    wanted = {normalise_label(label): k for k, label in enumerate(task_labels)}
    columns: dict[int, int] = {}
    for column, name in enumerate(names):
        k = wanted.get(normalise_label(name))
        if k is None or k in columns:
            return None
        columns[k] = column
    return LabelMapping(tuple(columns[k] for k in range(len(task_labels))), "name", tuple(names))


def output_layer(model: nn.Module) -> nn.Linear:
    """The classifier's last linear layer (the one producing the logits) outside the base encoder."""
    prefix = getattr(model, "base_model_prefix", "")
    count = int(model.config.num_labels)
    candidates = [
        module for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and module.out_features == count and not (prefix and name.startswith(prefix + "."))
    ]
    if len(candidates) != 1:
        raise ModelError(
            f"cannot find the classifier output layer of {type(model).__name__} ({len(candidates)} candidate layers with "
            f"{count} outputs): only BERT-family sequence classifiers are supported"
        )
    return candidates[0]


@torch.no_grad()
def align_classifier(model: nn.Module, mapping: LabelMapping, task_labels: Sequence[str]) -> None:
    """Permute the classifier's output rows so logit column k is task label k; write the task's names."""
    if not mapping.is_identity:
        layer = output_layer(model)
        index = torch.tensor(mapping.columns, dtype=torch.long, device=layer.weight.device)
        layer.weight.copy_(layer.weight[index].clone())
        if layer.bias is not None:
            layer.bias.copy_(layer.bias[index].clone())
    set_task_labels(model.config, task_labels)


def set_task_labels(config: Any, task_labels: Sequence[str] | None, regression: bool = False) -> None:
    """Write the task's label names and problem type into a model config (what a saved model carries)."""
    if regression:
        config.problem_type = "regression"
        return
    if not task_labels:
        return
    config.id2label = {i: str(label) for i, label in enumerate(task_labels)}
    config.label2id = {str(label): i for i, label in enumerate(task_labels)}
    config.problem_type = "single_label_classification"
