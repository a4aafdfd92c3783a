"""Patient KD's intermediate loss (Sun et al. 2019) on the [CLS] vector (position 0).

Paper reduction (``released_reduction=False``): for each sentence, the sum over the L mapped layers
of || s/|s| - t/|t| ||^2, then the mean over the batch.

Released reduction (``released_reduction=True``; intersun/PKD-for-BERT-Model-Compression
``src/KD_loss.py: patience_loss``): ``F.mse_loss`` on the stacked (B, L, d) normalised vectors, the
mean over batch, layers *and* hidden units, i.e. the paper value divided by L*d (768 for a 6->3
pkd-skip map at d = 384, 3840 for 12->6 at d = 768). The authors' beta grid {10, 100, 500, 1000} was
tuned under this reduction, so config/methods.yaml makes it PKD's default (``pkd_released_reduction``).
Under the paper reduction the same beta weighs the patient term L*d times more.

Each squared distance lies in [0, 4], so the released value lies in [0, 4/d].
Normaliser: B (examples), under both reductions.
"""

from __future__ import annotations

from collections.abc import Sequence

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
    """Patient loss over L already-mapped (B, n, d) states (see ``LayerMap.select``); a scalar.

    ``attention_mask`` is accepted for a uniform loss signature and not needed: [CLS] is always a
    valid token. Teacher states are detached. Widths must match (PKD has no projection): ModelError
    otherwise. A zero [CLS] vector normalises to 0 (``F.normalize``), with finite gradients.
    Normaliser: B (examples)
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
