"""DistilBERT-style cosine loss (Sanh et al. 2019) on the last hidden states.

Mean over valid tokens of 1 - cos(h_S, h_T), as DistilBERT's ``CosineEmbeddingLoss`` (target 1)
over the non-padded positions. Padded tokens are ignored; a batch with no valid token gives 0.
Task-specific use (with KD) is this suite's adaptation; the released code distils while pre-training.
Normaliser: sum_b n_b (valid tokens)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ckd.errors import ModelError


def cosine_hidden_loss(
    teacher_last: torch.Tensor, student_last: torch.Tensor, attention_mask: torch.Tensor | None
) -> torch.Tensor:
    """1 - cos between (B, n, d) teacher and student last hidden states, averaged over valid tokens.

    Normaliser: sum_b n_b (valid tokens)
    """
    if teacher_last.shape[-1] != student_last.shape[-1]:
        raise ModelError(
            f"the cosine hidden-state loss needs equal widths (teacher {teacher_last.shape[-1]}, student "
            f"{student_last.shape[-1]}); use a student with hidden size {teacher_last.shape[-1]} or drop this loss"
        )
    if teacher_last.shape[:2] != student_last.shape[:2]:
        raise ModelError(
            f"teacher states {tuple(teacher_last.shape)} and student states {tuple(student_last.shape)} cover "
            f"different batches; run both models on the same batch"
        )
    per_token = 1.0 - F.cosine_similarity(student_last, teacher_last.detach(), dim=-1)  # (B, n)
    if attention_mask is None:
        return per_token.mean()
    if attention_mask.shape != per_token.shape:
        raise ModelError(
            f"attention_mask of shape {tuple(attention_mask.shape)} does not match states of shape "
            f"{tuple(teacher_last.shape)}; pass the (B, n) mask of the batch"
        )
    valid = attention_mask.to(device=per_token.device).bool()
    return torch.where(valid, per_token, 0.0).sum() / valid.sum().clamp(min=1)
