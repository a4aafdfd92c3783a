"""Patient KD's intermediate loss (Sun et al. 2019) on the [CLS] vector (position 0).

Paper reduction (default): for each sentence, sum over mapped layers of
|| s/|s| - t/|t| ||^2, then the mean over the batch.

``released_reduction=True`` reproduces the authors' code (``F.mse_loss`` on the stacked normalised
vectors), i.e. the mean over batch, layers *and* hidden dimensions: the paper value divided by
(#layers * d). The original beta grid {10, 100, 500, 1000} was tuned under that reduction.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from ckd.errors import ModelError


def pkd_patient(
    teacher_states: Sequence[torch.Tensor],
    student_states: Sequence[torch.Tensor],
    attention_mask: torch.Tensor | None = None,
    *,
    released_reduction: bool = False,
) -> torch.Tensor:
    """Patient loss over already-mapped (B, n, d) states (see ``LayerMap.select``).

    ``attention_mask`` is accepted for a uniform loss signature and not needed: [CLS] is always a
    valid token. Teacher states are detached. Widths must match (PKD has no projection).
    """
    if len(teacher_states) != len(student_states) or not teacher_states:
        raise ModelError(
            f"PKD needs the same non-zero number of teacher and student states (got {len(teacher_states)} and "
            f"{len(student_states)}); select them with LayerMap.select"
        )
    total = None
    for t, s in zip(teacher_states, student_states):
        if t.shape[-1] != s.shape[-1]:
            raise ModelError(
                f"PKD compares [CLS] vectors directly but teacher width {t.shape[-1]} != student width "
                f"{s.shape[-1]}; use a student with hidden size {t.shape[-1]} or a relation-based method (CKD)"
            )
        t_cls = F.normalize(t[:, 0].detach(), dim=-1)
        s_cls = F.normalize(s[:, 0], dim=-1)
        per_sentence = (s_cls - t_cls).pow(2).sum(dim=-1)
        total = per_sentence if total is None else total + per_sentence
    loss = total.mean()
    if released_reduction:
        loss = loss / (len(teacher_states) * teacher_states[0].shape[-1])
    return loss
