import pytest
import torch

from ckd.errors import ConfigError, ModelError
from ckd.losses.tinybert import TinyBertProjections, attention_mse, hidden_mse

F64 = torch.float64
LENGTHS = [6, 3, 1, 0]  # includes a fully padded sentence


def rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=F64)


def mask(lengths, n=6):
    return torch.tensor([[1 if i < length else 0 for i in range(n)] for length in lengths])


def ref_hidden(teacher, student, linears, m):
    total = 0.0
    for k, (t, s) in enumerate(zip(teacher, student)):
        lin = linears[k]
        acc, count = 0.0, 0
        for b in range(t.shape[0]):
            for i in range(t.shape[1]):
                if not m[b, i]:
                    continue
                x = s[b, i].tolist()
                if lin is None:
                    y = x
                else:
                    w, bias = lin.weight.tolist(), lin.bias.tolist()
                    y = [sum(w[o][c] * x[c] for c in range(len(x))) + bias[o] for o in range(len(bias))]
                acc += sum((a - c) ** 2 for a, c in zip(y, t[b, i].tolist())) / len(y)
                count += 1
        total += acc / max(count, 1)
    return total


def ref_attention(teacher, student, m):
    total = 0.0
    for t, s in zip(teacher, student):
        acc, count = 0.0, 0
        batch, heads, n, _ = t.shape
        for b in range(batch):
            for h in range(heads):
                for i in range(n):
                    for j in range(n):
                        if m[b, i] and m[b, j]:
                            acc += (s[b, h, i, j].item() - t[b, h, i, j].item()) ** 2
                            count += 1
        total += acc / max(count, 1)
    return total


@pytest.mark.parametrize("sharing, slots", [("paper", [0, 1, 1]), ("per-state", [0, 1, 2]), ("released", [0, 0, 0])])
def test_hidden_mse_matches_reference(sharing, slots):
    torch.manual_seed(0)
    proj = TinyBertProjections(3, 5, 3, sharing=sharing).double()
    teacher = [rand(4, 6, 5, seed=k) for k in range(3)]
    student = [rand(4, 6, 3, seed=10 + k) for k in range(3)]
    m = mask(LENGTHS)
    linears = [proj.maps[slot] for slot in slots]
    expected = torch.tensor(ref_hidden(teacher, student, linears, m), dtype=F64)
    torch.testing.assert_close(hidden_mse(teacher, student, proj, m), expected, atol=1e-6, rtol=0)


def test_projection_sharing():
    count = lambda p: sum(isinstance(x, torch.nn.Linear) for x in p.modules())  # noqa: E731
    assert count(TinyBertProjections(3, 5, 4, sharing="paper")) == 2
    assert count(TinyBertProjections(3, 5, 4, sharing="per-state")) == 4
    assert count(TinyBertProjections(3, 5, 4, sharing="released")) == 1
    same = TinyBertProjections(5, 5, 4)
    assert count(same) == 0 and not list(same.parameters())
    assert all(lin.bias is not None for lin in TinyBertProjections(3, 5, 2).maps)


def test_hidden_mse_without_mask_is_plain_mean():
    teacher, student = [rand(2, 4, 5)], [rand(2, 4, 5, seed=1)]
    plain = torch.nn.functional.mse_loss(student[0], teacher[0])
    torch.testing.assert_close(hidden_mse(teacher, student, None, None), plain)


def test_equal_widths_use_identity():
    teacher, student = [rand(4, 6, 5)], [rand(4, 6, 5, seed=1)]
    m = mask(LENGTHS)
    expected = torch.tensor(ref_hidden(teacher, student, [None], m), dtype=F64)
    loss = hidden_mse(teacher, student, TinyBertProjections(5, 5, 1), m)
    torch.testing.assert_close(loss, expected, atol=1e-6, rtol=0)


def test_hidden_identical_zero_padding_invariant_and_grads():
    teacher = [rand(4, 6, 5, seed=k) for k in range(2)]
    proj = TinyBertProjections(5, 5, 2)
    m = mask(LENGTHS)
    assert hidden_mse(teacher, [t.clone() for t in teacher], proj, m).item() == 0.0
    student = [rand(4, 6, 5, seed=10 + k) for k in range(2)]
    before = hidden_mse(teacher, student, proj, m)
    padded = [s.clone() for s in student]
    for s in padded:
        s[~m.bool()] = 1e3
    assert hidden_mse(teacher, padded, proj, m).item() == pytest.approx(before.item(), abs=1e-12)
    teacher = [t.requires_grad_() for t in teacher]
    student = [s.requires_grad_() for s in student]
    loss = hidden_mse(teacher, student, proj, mask([1, 0, 0, 0]))
    loss.backward()
    assert torch.isfinite(loss) and all(torch.isfinite(s.grad).all() for s in student)
    assert all(t.grad is None for t in teacher)
    assert hidden_mse(teacher, student, proj, mask([0, 0, 0, 0])).item() == 0.0


def test_attention_mse_matches_reference():
    teacher = [rand(4, 3, 6, 6, seed=k) for k in range(2)]
    student = [rand(4, 3, 6, 6, seed=10 + k) for k in range(2)]
    m = mask(LENGTHS)
    expected = torch.tensor(ref_attention(teacher, student, m), dtype=F64)
    torch.testing.assert_close(attention_mse(teacher, student, m), expected, atol=1e-6, rtol=0)
    full = torch.tensor(ref_attention(teacher, student, mask([6] * 4)), dtype=F64)
    torch.testing.assert_close(attention_mse(teacher, student, None), full, atol=1e-6, rtol=0)


def test_attention_identical_zero_padding_invariant_and_grads():
    teacher = [rand(4, 3, 6, 6, seed=k) for k in range(2)]
    m = mask(LENGTHS)
    assert attention_mse(teacher, [t.clone() for t in teacher], m).item() == 0.0
    student = [rand(4, 3, 6, 6, seed=10 + k) for k in range(2)]
    before = attention_mse(teacher, student, m)
    pair = (m.bool()[:, :, None] & m.bool()[:, None, :])[:, None].expand(-1, 3, -1, -1)
    padded = [s.masked_fill(~pair, -1e4) for s in student]
    assert attention_mse(teacher, padded, m).item() == pytest.approx(before.item(), abs=1e-12)
    teacher = [t.requires_grad_() for t in teacher]
    student = [s.requires_grad_() for s in student]
    loss = attention_mse(teacher, student, mask([2, 0, 0, 0]))
    loss.backward()
    assert torch.isfinite(loss) and all(torch.isfinite(s.grad).all() for s in student)
    assert all(t.grad is None for t in teacher)


def test_errors():
    with pytest.raises(ModelError, match="head counts"):
        attention_mse([rand(2, 4, 3, 3)], [rand(2, 2, 3, 3)], None)
    with pytest.raises(ModelError, match="TinyBertProjections"):
        hidden_mse([rand(2, 3, 5)], [rand(2, 3, 4)], None, None)
    with pytest.raises(ModelError, match="num_pairs=2"):
        hidden_mse([rand(2, 3, 5)] * 2, [rand(2, 3, 4)] * 2, TinyBertProjections(4, 5, 3), None)
    with pytest.raises(ConfigError, match="sharing"):
        TinyBertProjections(4, 5, 3, sharing="shared")
