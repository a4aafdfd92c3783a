"""Losses on the prediction layer: hard labels, KD (Hinton et al. 2015) and the released variants.

All functions return a scalar averaged over the batch. Teacher logits are detached, so the teacher
never receives a gradient. Regression logits have shape (B, 1) (``num_labels=1``); targets (B,).

Scale conventions (docs/methods.md): the soft terms here sum over the C classes and average over the
B examples. The released PKD code (``nn.KLDivLoss(reduction='mean')``) and TinyBERT's stage 2
(``.mean()``) average over B*C instead, i.e. they are C times smaller; ``class_mean=True`` gives that
form. With gradient clipping at 1.0 the factor C changes how often and how hard the step is clipped.
Every loss here is a per-example mean, whatever ``class_mean`` is:
Normaliser: B (examples)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ckd.errors import ConfigError, ModelError


def _check_temperature(temperature: float) -> None:
    if not temperature > 0:
        raise ConfigError(f"distillation temperature must be > 0 (got {temperature!r}); set a positive 'temperature'")


def _regression_column(logits: torch.Tensor, who: str) -> torch.Tensor:
    if logits.dim() == 2 and logits.shape[-1] == 1:
        return logits[:, 0]
    if logits.dim() == 1:
        return logits
    raise ModelError(
        f"regression needs {who} logits of shape (B, 1), got {tuple(logits.shape)}; build the model with num_labels=1"
    )


def cross_entropy(student_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of (B, C) logits against (B,) class indices.

    Normaliser: B (examples)
    """
    return F.cross_entropy(student_logits, labels)


def mse(student_logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean squared error of (B, 1) regression logits against (B,) float targets.

    Normaliser: B (examples)
    """
    prediction = _regression_column(student_logits, "student")
    return F.mse_loss(prediction, targets.to(prediction.dtype))


def kd_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float, *, t2_scale: bool = True,
    class_mean: bool = False,
) -> torch.Tensor:
    """T^2 * KL(softmax(z_T/T) || softmax(z_S/T)) for (B, C) logits, summed over classes, averaged over B.

    ``t2_scale=False`` drops the T^2 factor (which keeps gradient magnitudes independent of T).
    ``class_mean=True`` averages over B*C instead of B (divides by C): the released PKD code's
    ``nn.KLDivLoss(reduction='mean')(log_softmax(z_S/T), softmax(z_T/T)) * T * T``.
    Normaliser: B (examples)
    """
    _check_temperature(temperature)
    log_p_student = F.log_softmax(student_logits / temperature, dim=-1)
    log_p_teacher = F.log_softmax(teacher_logits.detach() / temperature, dim=-1)
    kl = F.kl_div(log_p_student, log_p_teacher, reduction="batchmean", log_target=True)
    if class_mean:
        kl = kl / student_logits.shape[-1]
    return kl * temperature**2 if t2_scale else kl


def kd_regression(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """STS-B logit distillation: MSE(z_S, z_T) of (B, 1) logits.

    Normaliser: B (examples)
    """
    student = _regression_column(student_logits, "student")
    teacher = _regression_column(teacher_logits.detach(), "teacher")
    return F.mse_loss(student, teacher)


def soft_cross_entropy(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float, *, class_mean: bool = False
) -> torch.Tensor:
    """-sum_c softmax(z_T/T) * log_softmax(z_S/T) for (B, C) logits, averaged over B; no T^2 factor.

    The released CKD objective (and TinyBERT stage 2 as described). ``class_mean=True`` averages over
    B*C instead (divides by C): TinyBERT's released ``(-targets_prob * student_likelihood).mean()``.
    Normaliser: B (examples)
    """
    _check_temperature(temperature)
    p_teacher = F.softmax(teacher_logits.detach() / temperature, dim=-1)
    log_p_student = F.log_softmax(student_logits / temperature, dim=-1)
    per_class = -(p_teacher * log_p_student)
    return per_class.mean() if class_mean else per_class.sum(dim=-1).mean()


def mse_scaled(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Released CKD STS-B objective: MSE(z_S/T, z_T/T) of (B, 1) logits.

    Normaliser: B (examples)
    """
    _check_temperature(temperature)
    student = _regression_column(student_logits, "student")
    teacher = _regression_column(teacher_logits.detach(), "teacher")
    return F.mse_loss(student / temperature, teacher / temperature)
