import math

import pytest
import torch

from ckd.errors import ModelError
from ckd.losses.pkd import pkd_patient

F64 = torch.float64


def states(k, b=4, n=6, d=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, n, d, generator=g, dtype=F64) for _ in range(k)]


def mask(lengths, n=6):
    return torch.tensor([[1 if i < length else 0 for i in range(n)] for length in lengths])


def ref(teacher, student):
    total = 0.0
    batch = teacher[0].shape[0]
    for t, s in zip(teacher, student):
        for b in range(batch):
            tv, sv = t[b, 0].tolist(), s[b, 0].tolist()
            tn, sn = math.sqrt(sum(x * x for x in tv)), math.sqrt(sum(x * x for x in sv))
            total += sum((x / sn - y / tn) ** 2 for x, y in zip(sv, tv))
    return total / batch


def test_matches_reference():
    teacher, student = states(3), states(3, seed=1)
    expected = ref(teacher, student)
    torch.testing.assert_close(pkd_patient(teacher, student), torch.tensor(expected, dtype=F64), atol=1e-6, rtol=0)
    released = pkd_patient(teacher, student, mask([6, 3, 1, 0]), released_reduction=True)
    torch.testing.assert_close(released, torch.tensor(expected / (3 * 5), dtype=F64), atol=1e-6, rtol=0)


def test_released_reduction_equals_mse_of_normalised_cls():
    teacher, student = states(2), states(2, seed=1)
    t = torch.stack([torch.nn.functional.normalize(x[:, 0], dim=-1) for x in teacher], 1)
    s = torch.stack([torch.nn.functional.normalize(x[:, 0], dim=-1) for x in student], 1)
    torch.testing.assert_close(pkd_patient(teacher, student, released_reduction=True),
                               torch.nn.functional.mse_loss(s, t), atol=1e-6, rtol=0)


def test_identical_and_scale_invariant_is_zero():
    teacher = states(2)
    assert pkd_patient(teacher, [3.0 * t for t in teacher]).item() == pytest.approx(0.0, abs=1e-12)


def test_only_cls_matters():
    teacher, student = states(2), states(2, seed=1)
    before = pkd_patient(teacher, student, mask([6, 2, 1, 3]))
    changed = [s.clone() for s in student]
    for s in changed:
        s[:, 1:] = 1e3
    assert pkd_patient(teacher, changed, mask([6, 2, 1, 3])).item() == pytest.approx(before.item(), abs=1e-12)


def test_gradients_finite_and_teacher_detached():
    teacher = [t.requires_grad_() for t in states(2)]
    student = [s.requires_grad_() for s in states(2, seed=1)]
    with torch.no_grad():
        student[0][1, 0] = 0.0  # a zero [CLS] vector must not produce NaN
    loss = pkd_patient(teacher, student, mask([6, 3, 1, 0]))
    loss.backward()
    assert torch.isfinite(loss)
    assert all(t.grad is None for t in teacher)
    assert all(torch.isfinite(s.grad).all() for s in student)


def test_errors():
    with pytest.raises(ModelError, match="width"):
        pkd_patient(states(1), states(1, d=4))
    with pytest.raises(ModelError, match="same non-zero number"):
        pkd_patient(states(2), states(1))
