import math

import pytest
import torch

from ckd.errors import ModelError
from ckd.losses.minilm import attention_kl, masked_relation_kl, value_relation_kl

F64 = torch.float64
LENGTHS = [6, 3, 1, 0]  # includes a fully padded sentence


def rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=F64)


def mask(lengths, n=6):
    return torch.tensor([[1 if i < length else 0 for i in range(n)] for length in lengths])


def ref_kl(teacher_scores, student_scores, m):
    """Softmax over the valid keys only, KL per valid query row, mean over heads and valid rows."""
    batch, heads, n, _ = teacher_scores.shape
    total, rows = 0.0, 0
    for b in range(batch):
        keys = [j for j in range(n) if m[b, j]]
        for i in keys:
            rows += 1
            for h in range(heads):
                t = [math.exp(teacher_scores[b, h, i, j].item()) for j in keys]
                s = [math.exp(student_scores[b, h, i, j].item()) for j in keys]
                pt, ps = [x / sum(t) for x in t], [x / sum(s) for x in s]
                total += sum(a * math.log(a / c) for a, c in zip(pt, ps))
    return total / max(rows * heads, 1)


def ref_scores(q, k):
    """Loop-built Q K^T / sqrt(d_head)."""
    batch, heads, n, d = q.shape
    out = torch.zeros(batch, heads, n, n, dtype=F64)
    for b in range(batch):
        for h in range(heads):
            for i in range(n):
                for j in range(n):
                    out[b, h, i, j] = sum(q[b, h, i, c].item() * k[b, h, j, c].item() for c in range(d)) / math.sqrt(d)
    return out


def test_attention_kl_matches_reference():
    teacher, student, m = rand(4, 3, 6, 6), rand(4, 3, 6, 6, seed=1) * 2, mask(LENGTHS)
    expected = torch.tensor(ref_kl(teacher, student, m), dtype=F64)
    torch.testing.assert_close(attention_kl(teacher, student, m), expected, atol=1e-6, rtol=0)
    full = torch.tensor(ref_kl(teacher, student, mask([6] * 4)), dtype=F64)
    torch.testing.assert_close(attention_kl(teacher, student, None), full, atol=1e-6, rtol=0)


def test_value_relation_matches_reference_with_different_head_dims():
    teacher_v, student_v, m = rand(4, 3, 6, 8), rand(4, 3, 6, 4, seed=1), mask(LENGTHS)
    expected = ref_kl(ref_scores(teacher_v, teacher_v), ref_scores(student_v, student_v), m)
    torch.testing.assert_close(value_relation_kl(teacher_v, student_v, m), torch.tensor(expected, dtype=F64),
                               atol=1e-6, rtol=0)


def test_identical_is_zero():
    scores, values, m = rand(4, 3, 6, 6), rand(4, 3, 6, 4), mask(LENGTHS)
    assert attention_kl(scores, scores.clone(), m).abs().item() < 1e-12
    assert value_relation_kl(values, values.clone(), m).abs().item() < 1e-12


def test_padding_values_do_not_matter():
    m = mask(LENGTHS)
    teacher, student = rand(4, 3, 6, 6), rand(4, 3, 6, 6, seed=1)
    teacher_v, student_v = rand(4, 3, 6, 4, seed=2), rand(4, 3, 6, 4, seed=3)
    before = attention_kl(teacher, student, m), value_relation_kl(teacher_v, student_v, m)
    pad_token = ~m.bool()
    pair = (pad_token[:, :, None] | pad_token[:, None, :])[:, None].expand(-1, 3, -1, -1)
    student2, teacher2 = student.masked_fill(pair, 50.0), teacher.masked_fill(pair, -30.0)
    student_v2 = student_v.masked_fill(pad_token[:, None, :, None], 9.0)
    assert attention_kl(teacher2, student2, m).item() == pytest.approx(before[0].item(), abs=1e-12)
    assert value_relation_kl(teacher_v, student_v2, m).item() == pytest.approx(before[1].item(), abs=1e-12)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_heavy_padding_finite_and_teacher_detached(dtype):
    m = mask([2, 0, 1, 0])
    teacher = rand(4, 3, 6, 6).to(dtype).requires_grad_()
    student = (rand(4, 3, 6, 6, seed=1) * 30).to(dtype).requires_grad_()
    teacher_v = rand(4, 3, 6, 4, seed=2).to(dtype).requires_grad_()
    student_v = rand(4, 3, 6, 4, seed=3).to(dtype).requires_grad_()
    loss = attention_kl(teacher, student, m) + value_relation_kl(teacher_v, student_v, m)
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.isfinite(student.grad).all() and torch.isfinite(student_v.grad).all()
    assert teacher.grad is None and teacher_v.grad is None
    assert attention_kl(teacher, student, mask([0, 0, 0, 0])).item() == 0.0


def test_errors():
    with pytest.raises(ModelError, match="teacher 12, student 4"):
        attention_kl(rand(2, 12, 3, 3), rand(2, 4, 3, 3), None)
    with pytest.raises(ModelError, match="head counts"):
        value_relation_kl(rand(2, 12, 3, 8), rand(2, 4, 3, 8), None)
    with pytest.raises(ModelError, match="attention_mask"):
        attention_kl(rand(2, 4, 3, 3), rand(2, 4, 3, 3), mask([3, 3, 3], n=3))


def test_mixed_precision_teacher_and_heavy_padding_stay_finite():
    """A float32 teacher (e.g. read from the teacher cache) against a float64 student, with padded keys
    and a fully padded query row: the same value as an all-float64 computation, and finite gradients."""
    g = torch.Generator().manual_seed(3)
    teacher = torch.randn(2, 2, 5, 5, generator=g, dtype=torch.float64) * 4
    student = torch.randn(2, 2, 5, 5, generator=g, dtype=torch.float64).requires_grad_()
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    mixed = masked_relation_kl(teacher.float(), student, mask)
    mixed.backward()
    same = masked_relation_kl(teacher.float().double(), student.detach(), mask)
    assert torch.isfinite(mixed) and torch.isfinite(student.grad).all()
    assert float(mixed) == pytest.approx(float(same), rel=1e-6)
