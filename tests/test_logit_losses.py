import math

import pytest
import torch

from ckd.errors import ConfigError, ModelError
from ckd.losses.logits import cross_entropy, kd_loss, kd_regression, mse, mse_scaled, soft_cross_entropy

F64 = torch.float64


def close(a, b):
    torch.testing.assert_close(torch.as_tensor(a, dtype=F64), torch.as_tensor(b, dtype=F64), atol=1e-6, rtol=0)


def softmax_list(row, t):
    exps = [math.exp(v / t) for v in row]
    return [e / sum(exps) for e in exps]


def ref_kd(student, teacher, t, t2=True):
    total = 0.0
    for s_row, t_row in zip(student.tolist(), teacher.tolist()):
        p_s, p_t = softmax_list(s_row, t), softmax_list(t_row, t)
        total += sum(pt * math.log(pt / ps) for pt, ps in zip(p_t, p_s))
    return total / len(student) * (t * t if t2 else 1.0)


@pytest.fixture
def logits():
    g = torch.Generator().manual_seed(0)
    student = torch.randn(5, 3, generator=g, dtype=F64) * 2
    teacher = torch.randn(5, 3, generator=g, dtype=F64) * 2
    return student, teacher, torch.tensor([0, 2, 1, 1, 0])


def test_cross_entropy(logits):
    student, _, labels = logits
    expected = -sum(math.log(softmax_list(r, 1.0)[y]) for r, y in zip(student.tolist(), labels.tolist())) / 5
    close(cross_entropy(student, labels), expected)


@pytest.mark.parametrize("temperature", [1.0, 2.0, 4.0])
def test_kd_matches_reference(logits, temperature):
    student, teacher, _ = logits
    close(kd_loss(student, teacher, temperature), ref_kd(student, teacher, temperature))
    close(kd_loss(student, teacher, temperature, t2_scale=False), ref_kd(student, teacher, temperature, t2=False))


def test_kd_t2_switch(logits):
    student, teacher, _ = logits
    close(kd_loss(student, teacher, 3.0), 9.0 * kd_loss(student, teacher, 3.0, t2_scale=False))


def test_kd_hand_computed_2x2():
    # Row 1: p_T = (1/4, 3/4), p_S = (1/2, 1/2). Row 2: p_T = (1/2, 1/2), p_S = (3/4, 1/4).
    teacher = torch.tensor([[0.0, math.log(3)], [0.0, 0.0]], dtype=F64)
    student = torch.tensor([[0.0, 0.0], [math.log(3), 0.0]], dtype=F64)
    row1 = 0.25 * math.log(0.25 / 0.5) + 0.75 * math.log(0.75 / 0.5)
    row2 = 0.5 * math.log(0.5 / 0.75) + 0.5 * math.log(0.5 / 0.25)
    close(kd_loss(student, teacher, 1.0), (row1 + row2) / 2)
    # At T = 2 with logits doubled the distributions are the same, and T^2 = 4 multiplies the loss.
    close(kd_loss(2 * student, 2 * teacher, 2.0), 4 * (row1 + row2) / 2)
    close(kd_loss(2 * student, 2 * teacher, 2.0, t2_scale=False), (row1 + row2) / 2)


def test_kd_identical_is_zero_and_teacher_gets_no_grad(logits):
    student, teacher, _ = logits
    close(kd_loss(teacher, teacher.clone(), 2.0), 0.0)
    student = student.clone().requires_grad_()
    teacher = teacher.clone().requires_grad_()
    kd_loss(student, teacher, 2.0).backward()
    assert teacher.grad is None and torch.isfinite(student.grad).all()


def test_soft_cross_entropy(logits):
    student, teacher, _ = logits
    t = 3.0
    expected = 0.0
    for s_row, t_row in zip(student.tolist(), teacher.tolist()):
        p_s, p_t = softmax_list(s_row, t), softmax_list(t_row, t)
        expected -= sum(pt * math.log(ps) for pt, ps in zip(p_t, p_s))
    close(soft_cross_entropy(student, teacher, t), expected / 5)
    # = KL (no T^2) + teacher entropy
    p_t = torch.softmax(teacher / t, -1)
    entropy = -(p_t * p_t.log()).sum(-1).mean()
    close(soft_cross_entropy(student, teacher, t), kd_loss(student, teacher, t, t2_scale=False) + entropy)


def test_regression_losses():
    student = torch.tensor([[0.5], [2.0], [-1.0]], dtype=F64, requires_grad=True)
    teacher = torch.tensor([[1.0], [1.5], [0.0]], dtype=F64, requires_grad=True)
    labels = torch.tensor([0.0, 2.0, -3.0], dtype=F64)
    close(mse(student, labels), (0.25 + 0.0 + 4.0) / 3)
    close(kd_regression(student, teacher), (0.25 + 0.25 + 1.0) / 3)
    close(mse_scaled(student, teacher, 2.0), (0.25 + 0.25 + 1.0) / 3 / 4)
    close(kd_regression(teacher, teacher.detach().clone()), 0.0)
    (kd_regression(student, teacher) + mse_scaled(student, teacher, 2.0)).backward()
    assert teacher.grad is None and student.grad is not None


def test_errors(logits):
    student, teacher, labels = logits
    for bad in (0.0, -1.0):
        with pytest.raises(ConfigError, match="temperature"):
            kd_loss(student, teacher, bad)
        with pytest.raises(ConfigError, match="temperature"):
            soft_cross_entropy(student, teacher, bad)
    with pytest.raises(ModelError, match="num_labels=1"):
        mse(student, labels.double())
    with pytest.raises(ModelError, match="num_labels=1"):
        kd_regression(student, teacher)
