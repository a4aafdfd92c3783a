"""TinyBERT intermediate-layer distillation (Jiao et al. 2020), task-specific stage 1.

Choices (each differs from the released code only where stated):

* Projections W are ``nn.Linear`` *with* bias, as the released ``fit_dense``. ``sharing="paper"``
  (default, METHODS.md) uses one W_e for the first pair (the embeddings under the ``tinybert`` map)
  and one W_h shared by all block pairs; ``"per-state"`` gives every pair its own W; ``"released"``
  is the authors' single ``fit_dense`` for everything. When widths match there are no parameters
  and the projection is the identity (the released code projects anyway).
* ``hidden_mse``: per pair, the squared error averaged over hidden dimensions and *valid* tokens;
  summed over pairs. The released code averages over all positions including padding; pass
  ``attention_mask=None`` for that.
* ``attention_mse``: on pre-softmax scores Q K^T / sqrt(d_head) (unmasked, e.g. from
  ``AttentionCapture.scores``), squared error averaged over heads and over (query, key) pairs where
  both tokens are valid; summed over mapped layers. The released code replaced the -inf/-1e4-masked
  entries (padded keys) with 0 and averaged over every entry, padded query rows included;
  ``attention_mask=None`` averages over every entry.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from ckd.errors import ConfigError, ModelError

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


def _valid(attention_mask: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor | None:
    if attention_mask is None:
        return None
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
) -> torch.Tensor:
    """Sum over mapped pairs of MSE(H_S W, H_T), averaged over valid tokens and teacher dimensions."""
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
        if valid is None:
            total = total + squared.mean()
        else:
            total = total + torch.where(valid, squared, 0.0).sum() / valid.sum().clamp(min=1)
    return total


def attention_mse(
    teacher_scores: Sequence[torch.Tensor],
    student_scores: Sequence[torch.Tensor],
    attention_mask: torch.Tensor | None,
) -> torch.Tensor:
    """Sum over mapped attention layers of the MSE of (B, heads, n, n) pre-softmax scores."""
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
        squared = (s - t.detach()).pow(2)
        if attention_mask is None:
            total = total + squared.mean()
            continue
        token = _valid(attention_mask, t[:, 0, :, 0])
        pair = (token[:, :, None] & token[:, None, :])[:, None]  # (B, 1, n, n)
        count = pair.sum() * t.shape[1]
        total = total + torch.where(pair, squared, 0.0).sum() / count.clamp(min=1)
    return total
