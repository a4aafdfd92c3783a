"""MiniLM deep self-attention distillation (Wang et al. 2020), implemented from the paper's equations.

The authors never released MiniLM's distillation code, so this follows the paper:

* attention transfer: per head a, query position t, KL(A_T[a, t, :] || A_S[a, t, :]) with
  A = softmax(Q K^T / sqrt(d_head)) of the *last* layer of each model;
* value relation: the same KL on softmax(V V^T / sqrt(d_head)).

Each is averaged over heads and valid query positions (1 / (heads * sum_b n_b)), as in the paper's
1 / (A_h |x|). Padding is masked in both: padded keys are filled with a finite very negative value
before the softmax (never -inf, whose KL is NaN) and their terms are zeroed; padded query rows
contribute exactly 0. Teacher and student may differ in width and d_head but need equal head counts.
With no released code there is no released form; task-specific use with KD is this suite's adaptation.
Normaliser: sum_b n_b (valid tokens) x H, for both terms.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ckd.errors import ModelError


def _check(teacher: torch.Tensor, student: torch.Tensor, what: str) -> None:
    if teacher.dim() != 4 or student.dim() != 4:
        raise ModelError(
            f"MiniLM {what} must be (B, heads, n, .) tensors, got {tuple(teacher.shape)} and {tuple(student.shape)}; "
            f"take them from AttentionCapture"
        )
    if teacher.shape[1] != student.shape[1]:
        raise ModelError(
            f"MiniLM needs equal attention head counts (teacher {teacher.shape[1]}, student {student.shape[1]}); "
            f"give the student {teacher.shape[1]} heads or use another method"
        )
    if teacher.shape[0] != student.shape[0] or teacher.shape[2] != student.shape[2]:
        raise ModelError(
            f"MiniLM teacher and student {what} cover different batches ({tuple(teacher.shape)} vs "
            f"{tuple(student.shape)}); run both models on the same batch"
        )


def masked_relation_kl(
    teacher_scores: torch.Tensor, student_scores: torch.Tensor, attention_mask: torch.Tensor | None
) -> torch.Tensor:
    """KL(softmax(teacher) || softmax(student)) over keys for (B, heads, n, n) scores.

    Averaged over heads and valid query rows; padded keys are excluded from both distributions.
    Normaliser: sum_b n_b (valid tokens) x H
    """
    batch, heads, length, _ = teacher_scores.shape
    if attention_mask is None:
        valid = torch.ones(batch, length, dtype=torch.bool, device=teacher_scores.device)
    else:
        if attention_mask.shape != (batch, length):
            raise ModelError(
                f"attention_mask of shape {tuple(attention_mask.shape)} does not match scores of shape "
                f"{tuple(teacher_scores.shape)}; pass the (B, n) mask of the batch"
            )
        valid = attention_mask.to(device=teacher_scores.device).bool()

    def key_fill(dtype: torch.dtype) -> torch.Tensor:
        """0 at valid keys, the most negative finite value of `dtype` at padded ones: their softmax weight
        is exactly 0 (exp underflows), without the NaNs of -inf."""
        fill = torch.zeros(valid.shape, dtype=dtype, device=valid.device).masked_fill_(~valid, torch.finfo(dtype).min)
        return fill[:, None, None, :]

    with torch.no_grad():
        log_t = F.log_softmax(teacher_scores + key_fill(teacher_scores.dtype), dim=-1)
        p_t = log_t.exp()  # exactly 0 at padded keys
        teacher_part = torch.where(p_t > 0, p_t * log_t, 0.0).sum(dim=-1)  # sum_k p_t log p_t
    # KL = sum_k p_t log p_t - sum_k p_t s_k + logsumexp_k(s) (the rows of p_t sum to 1): the student's
    # log-softmax is never materialised, and autograd of logsumexp gives softmax(s) - p_t.
    fill = key_fill(student_scores.dtype)
    per_row = teacher_part - (p_t * student_scores).sum(dim=-1) + torch.logsumexp(student_scores + fill, dim=-1)
    per_row = per_row * valid[:, None, :]  # (B, heads, n): padded query rows contribute 0
    return per_row.sum() / (heads * valid.sum()).clamp(min=1)


def attention_kl(
    teacher_scores: torch.Tensor, student_scores: torch.Tensor, attention_mask: torch.Tensor | None
) -> torch.Tensor:
    """Self-attention distribution transfer from unmasked pre-softmax scores (``AttentionCapture.scores``)."""
    _check(teacher_scores, student_scores, "attention scores")
    return masked_relation_kl(teacher_scores, student_scores, attention_mask)


def value_relation_kl(
    teacher_values: torch.Tensor, student_values: torch.Tensor, attention_mask: torch.Tensor | None
) -> torch.Tensor:
    """Value-relation transfer from (B, heads, n, d_head) values (``AttentionCapture.values``)."""
    _check(teacher_values, student_values, "values")

    def relation(v: torch.Tensor) -> torch.Tensor:
        return torch.matmul(v, v.transpose(-1, -2)) * v.shape[-1] ** -0.5

    return masked_relation_kl(relation(teacher_values), relation(student_values), attention_mask)
