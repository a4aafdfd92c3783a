"""TinyBERT task-specific distillation (Jiao et al. 2020): stage 1 (intermediate) and stage 2 (prediction).

Each loss has the form the paper describes (default) and the form the authors released
(huawei-noah/Pretrained-Language-Model ``TinyBERT/task_distill.py``), one flag apart. Scale
conventions and normalisers are stated per function and in docs/methods.md.

* Projections W are ``nn.Linear`` *with* bias, as the released ``fit_dense``. ``sharing="paper"``
  (default, METHODS.md) uses one W_e for the first pair (the embeddings under the ``tinybert`` map)
  and one W_h shared by all block pairs; ``"per-state"`` gives every pair its own W; ``"released"``
  is the authors' single ``fit_dense`` for everything. When widths match there are no parameters
  and the projection is the identity (the released code projects anyway).
* ``hidden_mse`` (embeddings and blocks): per pair the squared error averaged over teacher hidden
  units and *valid* tokens, summed over pairs. ``released_padding=True``: ``MSELoss()`` over every
  position, padding included.
* ``attention_mse``: on pre-softmax scores Q K^T / sqrt(d_head) (unmasked, e.g. from
  ``AttentionCapture.scores``), per layer the squared error averaged over heads and (query, key)
  pairs where both tokens are valid; summed over mapped layers. ``released_padding=True``: -10000
  added at padded keys (BERT's extended mask), every entry <= -100 set to 0 in both models, and
  ``MSELoss()`` over all B*H*n*n entries, padded query rows included.
* ``prediction_loss`` (stage 2): soft cross-entropy at T summed over classes, averaged over B
  (``class_mean=True``: the released ``.mean()`` over B*C); regression MSE(z_S, z_T) as described,
  or MSE(z_S, y) against the gold score as released (``released_regression=True``, no teacher).

``attention_mask=None`` means every token is valid, in both forms.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ckd.errors import ConfigError, ModelError
from ckd.losses import logits

SHARING = ("paper", "per-state", "released")


class TinyBertProjections(nn.Module):
    """Learnable maps from the student's width to the teacher's, one slot per mapped state."""

    def __init__(self, student_width: int, teacher_width: int, num_pairs: int, *, sharing: str = "paper"):
        super().__init__()
        if sharing not in SHARING:
            raise ConfigError(f"unknown TinyBERT projection sharing '{sharing}'; choose one of {', '.join(SHARING)}")
        if num_pairs < 1:
            raise ConfigError(f"TinyBERT projections need at least one mapped state (got {num_pairs})")
        self.student_width, self.teacher_width, self.num_pairs = student_width, teacher_width, num_pairs
        self.sharing = sharing
        if student_width == teacher_width:
            self.maps = nn.ModuleList()
            self._slot = [None] * num_pairs
            return
        if sharing == "per-state":
            slots = list(range(num_pairs))
        elif sharing == "paper":
            slots = [0] + [1] * (num_pairs - 1)
        else:
            slots = [0] * num_pairs
        self.maps = nn.ModuleList(nn.Linear(student_width, teacher_width) for _ in range(max(slots) + 1))
        self._slot = slots

    def project(self, index: int, student_state: torch.Tensor) -> torch.Tensor:
        slot = self._slot[index]
        return student_state if slot is None else self.maps[slot](student_state)


def _valid(attention_mask: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    """The (B, n) boolean mask of valid tokens for (B, n, ...) tensor `like`; all True when None."""
    if attention_mask is None:
        return torch.ones(like.shape[:2], dtype=torch.bool, device=like.device)
    if attention_mask.shape != like.shape[:2]:
        raise ModelError(
            f"attention_mask of shape {tuple(attention_mask.shape)} does not match states of shape "
            f"{tuple(like.shape)}; pass the (B, n) mask of the batch the states came from"
        )
    return attention_mask.to(device=like.device).bool()


def hidden_mse(
    teacher_states: Sequence[torch.Tensor],
    student_states: Sequence[torch.Tensor],
    projections: TinyBertProjections | None,
    attention_mask: torch.Tensor | None,
    *,
    released_padding: bool = False,
) -> torch.Tensor:
    """Sum over K mapped pairs of MSE(H_S W, H_T) for (B, n, d_S) student and (B, n, d_T) teacher states.

    Described (default): per pair the mean over valid tokens and the d_T teacher units; a batch with
    no valid token gives 0. ``released_padding=True``: the mean over all B*n positions and d_T units,
    padding included (released ``MSELoss()(student_rep, teacher_rep)``). Teacher states are detached.
    Raises ModelError on mismatched counts, widths or mask shape.
    Normaliser: sum_b n_b (valid tokens) described; B (examples) released, with n padded to the step's longest row
    """
    if len(teacher_states) != len(student_states) or not teacher_states:
        raise ModelError(
            f"TinyBERT needs the same non-zero number of teacher and student states (got {len(teacher_states)} "
            f"and {len(student_states)}); select them with LayerMap.select"
        )
    if projections is not None and projections.num_pairs != len(student_states):
        raise ModelError(
            f"TinyBertProjections has {projections.num_pairs} slots for {len(student_states)} mapped states; "
            f"build it with num_pairs={len(student_states)}"
        )
    total = 0.0
    for k, (t, s) in enumerate(zip(teacher_states, student_states)):
        projected = projections.project(k, s) if projections is not None else s
        if projected.shape[-1] != t.shape[-1]:
            raise ModelError(
                f"TinyBERT state {k}: student width {projected.shape[-1]} != teacher width {t.shape[-1]}; pass "
                f"TinyBertProjections({s.shape[-1]}, {t.shape[-1]}, num_pairs)"
            )
        squared = (projected - t.detach()).pow(2).mean(dim=-1)  # (B, n)
        valid = _valid(attention_mask, t)
        if released_padding:
            total = total + squared.mean()
        else:
            total = total + torch.where(valid, squared, 0.0).sum() / valid.sum().clamp(min=1)
    return total


RELEASED_MASK_FILL = -10000.0  # BERT's extended attention mask at padded keys (released scores include it)
RELEASED_ZERO_BELOW = -100.0   # task_distill.py: torch.where(att <= -1e2, 0, att) in both models


def _released_scores(scores: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    masked = scores + (~valid)[:, None, None, :].to(scores.dtype) * RELEASED_MASK_FILL
    return torch.where(masked <= RELEASED_ZERO_BELOW, torch.zeros_like(masked), masked)


def attention_mse(
    teacher_scores: Sequence[torch.Tensor],
    student_scores: Sequence[torch.Tensor],
    attention_mask: torch.Tensor | None,
    *,
    released_padding: bool = False,
) -> torch.Tensor:
    """Sum over mapped attention layers of the MSE of (B, H, n, n) pre-softmax scores (unmasked).

    Described (default): per layer the mean over heads and (query, key) pairs with both tokens valid.
    ``released_padding=True``: -10000 added at padded keys, entries <= -100 zeroed in both models, the
    mean over all B*H*n*n entries (padded query rows included). Teacher scores are detached.
    Raises ModelError on unequal head counts or layer counts.
    Normaliser: sum_b n_b^2 (valid token pairs) x H described; B (examples) released, with n padded to the step's longest row
    """
    if len(teacher_scores) != len(student_scores) or not teacher_scores:
        raise ModelError(
            f"TinyBERT needs the same non-zero number of teacher and student attention layers (got "
            f"{len(teacher_scores)} and {len(student_scores)}); use the tinybert map's attention_pairs"
        )
    total = 0.0
    for t, s in zip(teacher_scores, student_scores):
        if t.shape[1] != s.shape[1]:
            raise ModelError(
                f"TinyBERT attention transfer needs equal head counts (teacher {t.shape[1]}, student {s.shape[1]}); "
                f"give the student {t.shape[1]} attention heads"
            )
        token = _valid(attention_mask, t[:, 0, :, 0])
        t = t.detach()
        if released_padding:
            total = total + (_released_scores(s, token) - _released_scores(t, token)).pow(2).mean()
            continue
        pair = (token[:, :, None] & token[:, None, :])[:, None]  # (B, 1, n, n)
        count = pair.sum() * t.shape[1]
        total = total + torch.where(pair, (s - t).pow(2), 0.0).sum() / count.clamp(min=1)
    return total


def prediction_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    regression: bool,
    temperature: float = 1.0,
    released_regression: bool = False,
    class_mean: bool = False,
) -> torch.Tensor:
    """TinyBERT stage 2 (prediction-layer distillation) on (B, C) logits, (B, 1) for regression.

    Classification: soft cross-entropy -sum_c softmax(z_T/T) log softmax(z_S/T), averaged over B
    (``class_mean=True``: over B*C, the released ``.mean()``, C times smaller). Regression:
    MSE(z_S, z_T) as the paper describes, or MSE(z_S, y) against the gold score
    (``released_regression=True``, the released code; the teacher is not used). Errors as
    ``ckd.losses.logits`` (temperature, regression logit shapes).
    Normaliser: B (examples)
    """
    if regression:
        if released_regression:
            return logits.mse(student_logits, labels)
        return logits.kd_regression(student_logits, teacher_logits)
    return logits.soft_cross_entropy(student_logits, teacher_logits, temperature, class_mean=class_mean)
