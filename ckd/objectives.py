"""A method's loss: its weighted terms, evaluated on one batch's teacher and student outputs."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ckd.errors import ConfigError, ModelError
from ckd.layer_maps import LayerMap, layer_map
from ckd.losses import distilbert, logits, minilm, pkd, relations, tinybert
from ckd.methods import ResolvedMethod, Term


@dataclass
class Outputs:
    """What one model produced for a batch: logits, hidden states (L + 1) and captured attention internals."""

    logits: torch.Tensor
    hidden_states: tuple[torch.Tensor, ...] | None = None
    capture: Any = None  # ckd.hooks.AttentionCapture after the forward
    # a teacher read from its cache (ckd.teacher_store): the relation terms' teacher side, MiniLM's value relations
    relations: relations.TeacherGrams | None = None
    value_relation: torch.Tensor | None = None


@dataclass
class Batch:
    labels: torch.Tensor
    attention_mask: torch.Tensor


TermFn = Callable[["Objective", Term, Batch, Outputs, Outputs | None], torch.Tensor]


def _mapped(obj: Objective, student: Outputs, teacher: Outputs) -> tuple[list, list]:
    return obj.map.select(teacher.hidden_states, student.hidden_states)


def _task(obj, term, batch, student, teacher):
    if obj.regression:
        return logits.mse(student.logits, batch.labels)
    return logits.cross_entropy(student.logits, batch.labels)


def _setting(obj, term, key):
    """A setting a term reads directly; a one-line ConfigError when the method's recipe lacks it."""
    if key not in obj.settings:
        raise ConfigError(
            f"method {obj.method.name!r}: loss term {term.name!r} needs the setting {key!r}; add it to the method's "
            f"recipe or settings in the methods file, or pass method_options.{key}"
        )
    return obj.settings[key]


def _kd(obj, term, batch, student, teacher):
    alpha = float(_setting(obj, term, "alpha"))
    if not 0.0 <= alpha <= 1.0:
        raise ConfigError(f"method_options.alpha must lie in [0, 1], got {alpha}")
    hard = _task(obj, term, batch, student, teacher) if alpha < 1.0 else 0.0
    if obj.regression:
        soft = logits.kd_regression(student.logits, teacher.logits)
    else:
        soft = logits.kd_loss(
            student.logits, teacher.logits, float(_setting(obj, term, "temperature")),
            t2_scale=bool(obj.settings.get("t2_scale", True)), class_mean=bool(obj.settings.get("kd_class_mean", False)),
        )
    return (1.0 - alpha) * hard + alpha * soft


def _kd_released(obj, term, batch, student, teacher):
    temperature = float(_setting(obj, term, "temperature"))
    if obj.regression:
        return logits.mse_scaled(student.logits, teacher.logits, temperature)
    return logits.soft_cross_entropy(student.logits, teacher.logits, temperature)


def _relation(fn):
    def term_fn(obj, term, batch, student, teacher):
        if teacher.relations is not None:  # cached teacher side
            s_states = [student.hidden_states[s] for s in obj.map.student_indices]
            return fn(teacher.relations, s_states, batch.attention_mask, **term.options)
        t_states, s_states = _mapped(obj, student, teacher)
        return fn(t_states, s_states, batch.attention_mask, **term.options)

    return term_fn


def _pkd(obj, term, batch, student, teacher):
    t_states, s_states = _mapped(obj, student, teacher)
    return pkd.pkd_patient(t_states, s_states, batch.attention_mask, **term.options)


def _tinybert_embedding(obj, term, batch, student, teacher):
    t_states, s_states = _mapped(obj, student, teacher)
    return tinybert.hidden_mse(t_states[:1], s_states[:1], obj.embedding_projection, batch.attention_mask, **term.options)


def _tinybert_hidden(obj, term, batch, student, teacher):
    t_states, s_states = _mapped(obj, student, teacher)
    return tinybert.hidden_mse(t_states[1:], s_states[1:], obj.hidden_projection, batch.attention_mask, **term.options)


def _tinybert_attention(obj, term, batch, student, teacher):
    pairs = obj.map.attention_pairs
    t_scores = [teacher.capture.scores(t) for t, _ in pairs]
    s_scores = [student.capture.scores(s) for _, s in pairs]
    return tinybert.attention_mse(t_scores, s_scores, batch.attention_mask, **term.options)


def _tinybert_prediction(obj, term, batch, student, teacher):
    return tinybert.prediction_loss(
        student.logits, teacher.logits, batch.labels, regression=obj.regression,
        temperature=float(_setting(obj, term, "temperature")), **term.options,
    )


def _minilm_attention(obj, term, batch, student, teacher):
    return minilm.attention_kl(teacher.capture.scores(-1), student.capture.scores(-1), batch.attention_mask)


def _minilm_value(obj, term, batch, student, teacher):
    if teacher.value_relation is not None:  # cached teacher side
        from ckd.teacher_store import value_relation

        return minilm.masked_relation_kl(teacher.value_relation, value_relation(student.capture.values(-1)), batch.attention_mask)
    return minilm.value_relation_kl(teacher.capture.values(-1), student.capture.values(-1), batch.attention_mask)


def _distilbert_cosine(obj, term, batch, student, teacher):
    return distilbert.cosine_hidden_loss(teacher.hidden_states[-1], student.hidden_states[-1], batch.attention_mask)


CountFn = Callable[["Objective", Term, Batch], "torch.Tensor | float"]


def _examples(obj, term, batch) -> float:
    """Per-example means (CE, KD, MSE on logits, PKD): the batch size B."""
    return float(batch.labels.shape[0])


def _tokens(obj, term, batch) -> torch.Tensor:
    """Means over valid tokens (sum_b n_b)."""
    return (batch.attention_mask != 0).sum()


def _token_pairs(obj, term, batch) -> torch.Tensor:
    """Means over valid (query, key) pairs (sum_b n_b^2)."""
    return (batch.attention_mask != 0).sum(dim=1).double().square().sum()


def _padding_aware(described: CountFn) -> CountFn:
    """TinyBERT stage 1: `described` (valid tokens / pairs) by default; under `released_padding` the
    released means run over every padded position, n being fixed per optimiser step: B."""

    def count(obj, term, batch):
        return _examples(obj, term, batch) if term.options.get("released_padding") else described(obj, term, batch)

    return count


def _relation_count(name: str) -> CountFn:
    def count(obj, term, batch):
        return relations.batch_normaliser(name, batch.attention_mask, **term.options)

    return count


@dataclass(frozen=True)
class TermKind:
    """A loss term: how to compute it, what it needs, and `count`, the batch-dependent normaliser its
    value is divided by (B, valid tokens, ...). value * count is additive over any split of a batch,
    which is how the training loop makes a step's loss independent of micro-batches and processes."""

    fn: TermFn
    teacher: bool = True       # needs teacher outputs at all
    hidden: bool = False       # needs hidden states
    capture: bool = False      # needs attention internals (Q, K, V)
    layer_map: bool = False    # needs the method's layer map
    count: CountFn = _examples


SAME_WIDTH_TERMS = ("pkd", "distilbert_cosine")

TERMS: dict[str, TermKind] = {
    "task": TermKind(_task, teacher=False),
    "kd": TermKind(_kd),
    "kd_released": TermKind(_kd_released),
    **{
        name: TermKind(_relation(getattr(relations, name)), hidden=True, layer_map=True, count=_relation_count(name))
        for name in ("wr_pair", "wr_triple", "ltr_pair", "ltr_triple")
    },
    "pkd": TermKind(_pkd, hidden=True, layer_map=True),
    "tinybert_embedding": TermKind(_tinybert_embedding, hidden=True, layer_map=True, count=_padding_aware(_tokens)),
    "tinybert_hidden": TermKind(_tinybert_hidden, hidden=True, layer_map=True, count=_padding_aware(_tokens)),
    "tinybert_attention": TermKind(_tinybert_attention, capture=True, layer_map=True, count=_padding_aware(_token_pairs)),
    "tinybert_prediction": TermKind(_tinybert_prediction),
    "minilm_attention": TermKind(_minilm_attention, capture=True, count=_tokens),
    "minilm_value": TermKind(_minilm_value, capture=True, count=_tokens),
    "distilbert_cosine": TermKind(_distilbert_cosine, hidden=True, count=_tokens),
}


def _check_window(window: Any, method_name: str) -> None:
    if window is None:
        return
    if isinstance(window, bool) or not isinstance(window, int) or window < 1 or window % 2 == 0:
        raise ConfigError(f"method {method_name!r}: window must be an odd positive integer or null (all triples), got {window!r}")


class Objective(nn.Module):
    """Weighted sum of a method's terms. Holds any learnable part of the loss (TinyBERT projections)."""

    term_kinds: dict[str, TermKind] = TERMS  # the terms it knows; ckd.general.objective adds the masked-LM ones

    def __init__(self, method: ResolvedMethod, *, regression: bool, teacher_config: Any | None, student_config: Any):
        super().__init__()
        self.method = method
        self.settings = method.settings
        self.regression = regression
        self.terms = [(term, self.term_kinds[term.name]) for term in method.terms if term.weight != 0.0]
        if not self.terms:
            raise ConfigError(f"method {method.name!r}: every loss weight is 0, nothing to train")
        self.needs_teacher = method.needs_teacher and any(kind.teacher for _, kind in self.terms)
        self.needs_hidden = any(kind.hidden for _, kind in self.terms)
        self.needs_capture = any(kind.capture for _, kind in self.terms)
        self.logits_only = self.needs_teacher and not (self.needs_hidden or self.needs_capture)
        self.map: LayerMap | None = None
        if self.needs_teacher and teacher_config is None:
            raise ConfigError(f"method {method.name!r} needs a teacher: set teacher.name_or_path")
        if any(kind.layer_map for _, kind in self.terms):
            if not method.layer_map:
                raise ConfigError(f"method {method.name!r} uses layer-wise terms but names no layer_map")
            self.map = layer_map(method.layer_map, teacher_config.num_hidden_layers, student_config.num_hidden_layers)
        if self.needs_capture:
            for what in ("num_attention_heads",):
                t, s = getattr(teacher_config, what), getattr(student_config, what)
                if t != s:
                    raise ModelError(
                        f"method {method.name!r} transfers attention per head and needs equal head counts "
                        f"(teacher {t}, student {s}): give the student {t} heads or choose another method"
                    )
        for term, _ in self.terms:
            if term.name in SAME_WIDTH_TERMS and teacher_config.hidden_size != student_config.hidden_size:
                raise ModelError(
                    f"method {method.name!r} compares hidden vectors directly (term {term.name}): teacher width "
                    f"{teacher_config.hidden_size} != student width {student_config.hidden_size}; use a student with hidden size "
                    f"{teacher_config.hidden_size} or a relation-based method (CKD)"
                )
            if term.name == "wr_triple":
                _check_window(term.options.get("window", relations.DEFAULT_WINDOW), method.name)
        self.embedding_projection = self.hidden_projection = None
        if any(term.name in ("tinybert_embedding", "tinybert_hidden") for term, _ in self.terms):
            widths = (student_config.hidden_size, teacher_config.hidden_size)
            self.embedding_projection = tinybert.TinyBertProjections(*widths, 1)
            self.hidden_projection = tinybert.TinyBertProjections(*widths, len(self.map.pairs) - 1, sharing="released")

    def capture_layers(self, side: str) -> tuple[int, ...] | None:
        """The 0-based attention layers whose Q/K/V the terms read on `side` ("teacher" or "student");
        None when no term needs attention internals."""
        if not self.needs_capture:
            return None
        layers: set[int] = set()
        for term, _ in self.terms:
            if term.name == "tinybert_attention":
                layers.update(t if side == "teacher" else s for t, s in self.map.attention_pairs)
            elif term.name in ("minilm_attention", "minilm_value"):
                layers.add(-1)
        return tuple(sorted(layers))

    def teacher_hidden_layers(self, count: int) -> set[int]:
        """Indices into the teacher's `count` hidden states that the terms read."""
        used = set(self.map.teacher_indices) if self.map is not None else set()
        if any(term.name == "distilbert_cosine" for term, _ in self.terms):
            used.add(count - 1)
        return used

    @property
    def term_names(self) -> list[str]:
        return [term.name for term, _ in self.terms]

    def counts(self, batch: Batch) -> dict[str, float]:
        """Each term's normaliser on `batch` (see `TermKind.count`), computed from labels and mask only."""
        return {term.name: float(kind.count(self, term, batch)) for term, kind in self.terms}

    def forward(
        self, batch: Batch, student: Outputs, teacher: Outputs | None, shares: dict[str, float] | None = None
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """The weighted loss and each term's value on `batch`.

        shares: per term, this batch's part of the whole optimiser step's count (its `counts()` over
        the step's total). Each term is then its value on this batch times its share, so the sums
        over the micro-batches of a step equal the values on the whole step at once, for every term
        whatever its normalisation. None: the batch is the whole step (every share 1).
        """
        total = None
        values: dict[str, float] = {}
        for term, kind in self.terms:
            value = kind.fn(self, term, batch, student, teacher)
            if shares is not None:
                value = value * shares[term.name]
            values[term.name] = float(value.detach())
            weighted = term.weight * value
            total = weighted if total is None else total + weighted
        return total, values
