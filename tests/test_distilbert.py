import math

import pytest
import torch

from ckd.errors import ModelError
from ckd.losses.distilbert import cosine_hidden_loss

F64 = torch.float64


def rand(b=4, n=6, d=5, seed=0):
    return torch.randn(b, n, d, generator=torch.Generator().manual_seed(seed), dtype=F64)


def mask(lengths, n=6):
    return torch.tensor([[1 if i < length else 0 for i in range(n)] for length in lengths])


def ref(teacher, student, m):
    total, count = 0.0, 0
    for b in range(teacher.shape[0]):
        for i in range(teacher.shape[1]):
            if m[b, i]:
                t, s = teacher[b, i].tolist(), student[b, i].tolist()
                dot = sum(x * y for x, y in zip(t, s))
                total += 1 - dot / (math.sqrt(sum(x * x for x in t)) * math.sqrt(sum(x * x for x in s)))
                count += 1
    return total / max(count, 1)


LENGTHS = [6, 3, 1, 0]


def test_matches_reference():
    teacher, student, m = rand(), rand(seed=1), mask(LENGTHS)
    expected = torch.tensor(ref(teacher, student, m), dtype=F64)
    torch.testing.assert_close(cosine_hidden_loss(teacher, student, m), expected, atol=1e-6, rtol=0)
    full = torch.tensor(ref(teacher, student, mask([6] * 4)), dtype=F64)
    torch.testing.assert_close(cosine_hidden_loss(teacher, student, None), full, atol=1e-6, rtol=0)


def test_identical_is_zero():
    teacher = rand()
    assert cosine_hidden_loss(teacher, 2 * teacher, mask(LENGTHS)).item() == pytest.approx(0.0, abs=1e-12)


def test_padding_values_do_not_matter():
    teacher, student, m = rand(), rand(seed=1), mask(LENGTHS)
    before = cosine_hidden_loss(teacher, student, m)
    student2, teacher2 = student.clone(), teacher.clone()
    student2[~m.bool()] = 7.0
    teacher2[~m.bool()] = -3.0
    assert cosine_hidden_loss(teacher2, student2, m).item() == pytest.approx(before.item(), abs=1e-12)


def test_heavy_padding_finite_and_teacher_detached():
    teacher = rand().requires_grad_()
    student = rand(seed=1).requires_grad_()
    loss = cosine_hidden_loss(teacher, student, mask([1, 0, 0, 0]))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(student.grad).all() and teacher.grad is None
    assert cosine_hidden_loss(teacher, student, mask([0, 0, 0, 0])).item() == 0.0


def test_errors():
    with pytest.raises(ModelError, match="equal widths"):
        cosine_hidden_loss(rand(), rand(d=4), None)
    with pytest.raises(ModelError, match="attention_mask"):
        cosine_hidden_loss(rand(), rand(), mask([6, 6, 6]))
