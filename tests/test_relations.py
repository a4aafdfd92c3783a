"""ckd.losses.relations (the fast engine) against the dense definition (ckd.losses.relations_dense),
the dense definition against hand-computed values and slow loops (tests/relations_reference.py), and
the invariants of METHODS.md ("CKD relation losses")."""

from __future__ import annotations

import math

import pytest
import torch

from ckd.losses import relations_dense as dense
from ckd.losses.relations import RELATION_LOSSES, ltr_pair, ltr_triple, wr_pair, wr_triple
from tests.relations_reference import ref_ltr_pair, ref_ltr_triple, ref_wr_pair, ref_wr_triple

TOL = 1e-9  # float64 fast vs reference, absolute and relative (asked: 1e-6)
LOOPS = {"wr_pair": ref_wr_pair, "ltr_pair": ref_ltr_pair, "ltr_triple": ref_ltr_triple, "wr_triple": ref_wr_triple}


def make_batch(lengths, n, K, d_t=12, d_s=8, *, seed=0, dtype=torch.float64, requires_grad=False):
    g = torch.Generator().manual_seed(seed)
    mask = torch.zeros(len(lengths), n, dtype=torch.long)
    for b, length in enumerate(lengths):
        mask[b, :length] = 1
    # a common offset and uneven scales, like real hidden states
    teacher = [(torch.randn(len(lengths), n, d_t, generator=g) * 2 + 1).to(dtype) for _ in range(K)]
    student = [(torch.randn(len(lengths), n, d_s, generator=g) * 0.5 - 0.3).to(dtype) for _ in range(K)]
    if requires_grad:
        student = [s.requires_grad_() for s in student]
    return teacher, student, mask


# (name, fast function, keyword arguments) for one window size; dense.DENSE and LOOPS by the function's name
def variants(window):
    return [
        ("wr_pair", wr_pair, {}),
        ("ltr_pair", ltr_pair, {}),
        ("ltr_triple", ltr_triple, {}),
        (f"wr_triple_w{window}", wr_triple, {"window": window}),
        (f"wr_triple_w{window}_released", wr_triple, {"window": window, "released_window_quirks": True}),
        ("wr_triple_full", wr_triple, {"window": None}),
    ]


ALL_LOSSES = variants(5)
WR_TRIPLES = [v for v in ALL_LOSSES if v[0].startswith("wr_triple")]

# K = 3..5 layers, windows 3, 5 and 21 (> n), varied lengths including a length-1 sentence
CASES = [
    dict(lengths=[16, 9, 1, 5], n=16, K=3, window=3, seed=1),
    dict(lengths=[7, 16, 12, 1], n=16, K=4, window=5, seed=2),
    dict(lengths=[1, 16, 3, 10], n=16, K=5, window=21, seed=3),
]
NAMES = ["wr_pair", "ltr_pair", "ltr_triple", "wr_window", "wr_window_released", "wr_full"]


def val(t: torch.Tensor) -> float:
    return t.detach().item()


def assert_close(fast, ref, tol=TOL):
    fast, ref = val(fast), val(ref)
    assert math.isfinite(fast)
    assert abs(fast - ref) <= tol, (fast, ref)
    assert abs(fast - ref) <= tol * abs(ref), (fast, ref)


# ---------------------------------------------------------------- the dense definition on hand-computed values


def test_dense_definition_on_hand_computed_values():
    # Teacher points A = (1, 0), B = (0, 1), C = (1, 1); student A' = (1, 0), B' = (0, 1), C' = (-1, 0).
    # Cosines: teacher AB 0, AC BC 1/sqrt2; student A'B' B'C' 0, A'C' -1.
    # Angles psi(i; j, k), j != k != i: teacher at A and B 1/sqrt2, at C 0; student at A' and C' 1/sqrt2,
    # at B' 0; psi(i; j, j) = 1 and psi(i; i, k) = 0 on both sides.
    r = 1 / math.sqrt(2)
    t_points = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], dtype=torch.float64)
    s_points = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]], dtype=torch.float64)
    torch.testing.assert_close(dense.cosines(t_points), torch.tensor([[1, 0, r], [0, 1, r], [r, r, 1]], dtype=torch.float64))
    psi = dense.angles(t_points)
    assert psi.shape == (3, 3, 3)
    assert psi[0, 1, 2] == pytest.approx(r) and psi[1, 0, 2] == pytest.approx(r) and abs(psi[2, 0, 1]) < 1e-15
    assert psi[0, 1, 1] == pytest.approx(1.0) and (psi[0, 0] == 0).all() and (psi[0, :, 0] == 0).all()

    def kl2(t_logits, s_logits):  # KL between the softmaxes of two logits each
        p = [math.exp(x) / (math.exp(t_logits[0]) + math.exp(t_logits[1])) for x in t_logits]
        q = [math.exp(x) / (math.exp(s_logits[0]) + math.exp(s_logits[1])) for x in s_logits]
        return sum(a * math.log(a / b) for a, b in zip(p, q))

    # rows A, B, C over the two other points
    pair_sum = kl2([0, r], [0, -1]) + kl2([0, r], [0, 0]) + kl2([r, r], [-1, 0])
    # angle errors: at B (1/sqrt2 vs 0) and at C (0 vs 1/sqrt2), each for (j, k) and (k, j): 4 * 1/2
    triple_sum = 2.0
    # WR: one sentence of the 3 points (K = 1), plus a padded position holding anything
    pad = torch.tensor([[7.0, -3.0]], dtype=torch.float64)
    wr_t, wr_s = [torch.cat([t_points, pad])[None]], [torch.cat([s_points, -pad])[None]]
    mask = torch.tensor([[1, 1, 1, 0]])
    # LTR: one token whose K = 3 layer vectors are the 3 points
    ltr_t, ltr_s = list(t_points[:, None, None]), list(s_points[:, None, None])
    token = torch.ones(1, 1)
    expected = [
        (dense.wr_pair(wr_t, wr_s, mask), pair_sum / (1 * 3**2)),
        (dense.ltr_pair(ltr_t, ltr_s, token), pair_sum / (3**2 * 1)),
        (dense.wr_triple(wr_t, wr_s, mask, window=None), triple_sum / (1 * 3**3)),
        # window 3: centre A sees A, B; centre C sees B, C; only centre B keeps its (A, C) angles
        (dense.wr_triple(wr_t, wr_s, mask, window=3), 1.0 / (1 * 3 * 3**2)),
        (dense.ltr_triple(ltr_t, ltr_s, token), triple_sum / (3**3 * 1)),
    ]
    for value, hand in expected:
        assert val(value) == pytest.approx(hand, rel=1e-12)
    # the fast engine gives the same numbers
    fast = [wr_pair(wr_t, wr_s, mask), ltr_pair(ltr_t, ltr_s, token), wr_triple(wr_t, wr_s, mask, window=None),
            wr_triple(wr_t, wr_s, mask, window=3), ltr_triple(ltr_t, ltr_s, token)]
    for value, (_, hand) in zip(fast, expected):
        assert val(value) == pytest.approx(hand, rel=1e-12)


def test_dense_pair_distributions_are_row_softmaxes_without_the_diagonal():
    h = torch.randn(4, 5, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(21))
    p = dense.pair_distributions(h, dense.off_diagonal(5))
    assert p.shape == (4, 5, 5) and (p.diagonal(dim1=-2, dim2=-1) == 0).all()
    torch.testing.assert_close(p.sum(-1), torch.ones(4, 5, dtype=torch.float64))
    row = dense.cosines(h)[1, 2, [0, 1, 3, 4]].softmax(0)
    torch.testing.assert_close(p[1, 2, [0, 1, 3, 4]], row)
    assert (dense.pair_distributions(h[:, :1], dense.off_diagonal(1)) == 0).all()  # one vector: no pairs


# ------------------------------------------ the dense definition against loops, the fast engine against it

CHAINS = ["dense-vs-loops", "fast-vs-dense"]


def checked_and_reference(chain, fast):
    """(the implementation checked, its reference) for a fast function."""
    if chain == "dense-vs-loops":
        return dense.DENSE[fast.__name__], LOOPS[fast.__name__]
    return fast, dense.DENSE[fast.__name__]


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"K{c['K']}-w{c['window']}")
@pytest.mark.parametrize("which", range(6), ids=NAMES)
@pytest.mark.parametrize("chain", CHAINS)
def test_value_matches_reference(chain, case, which):
    name, fast, kwargs = variants(case["window"])[which]
    checked, reference = checked_and_reference(chain, fast)
    teacher, student, mask = make_batch(case["lengths"], case["n"], case["K"], seed=case["seed"])
    value = checked(teacher, student, mask, **kwargs)
    assert value.dtype == torch.float64 and value.dim() == 0
    with torch.no_grad():
        expected = reference(teacher, student, mask, **kwargs)
    assert expected > 0
    assert_close(value, expected)


@pytest.mark.parametrize("which", range(6), ids=NAMES)
@pytest.mark.parametrize("chain", CHAINS)
def test_value_matches_reference_with_coincident_points_and_empty_sentence(chain, which):
    name, fast, kwargs = variants(5)[which]
    checked, reference = checked_and_reference(chain, fast)
    teacher, student, mask = make_batch([9, 0, 4, 1], 10, 3, seed=4)
    for states in (teacher, student):
        for h in states:
            h[0, 3] = h[0, 2]  # the same vector at two positions
            h[2, 1] = h[2, 0]
    student[1][0, 5] = student[1][0, 4]  # a coincidence in the student only
    teacher[2][:, 6] = teacher[1][:, 6]  # and two layers that agree on a token (LTR)
    value = checked(teacher, student, mask, **kwargs)
    with torch.no_grad():
        expected = reference(teacher, student, mask, **kwargs)
    assert_close(value, expected)


# the dense definition against loops; the fast engine against it, also with blocks of 2 centres (recomputed in backward)
GRADIENT_CASES = ([("dense-vs-loops", which, None) for which in range(6)] + [("fast-vs-dense", which, None) for which in range(6)]
                  + [("fast-vs-dense", which, 2) for which in (3, 4, 5)])


@pytest.mark.parametrize("chain,which,chunk_size", GRADIENT_CASES, ids=[f"{c}-{NAMES[w]}-chunk{k}" for c, w, k in GRADIENT_CASES])
def test_gradients_match_reference(chain, which, chunk_size):
    name, fast, kwargs = variants(3)[which]
    checked, reference = checked_and_reference(chain, fast)
    teacher, student, mask = make_batch([6, 4, 1], 6, 3, d_t=5, d_s=4, seed=5, requires_grad=True)
    expected = torch.autograd.grad(reference(teacher, student, mask, **kwargs), student)
    if chunk_size is not None:
        kwargs = {**kwargs, "chunk_size": chunk_size}
    grads = torch.autograd.grad(checked(teacher, student, mask, **kwargs), student)
    for g, e in zip(grads, expected):
        assert e.abs().max() > 0
        torch.testing.assert_close(g, e, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name,fast,kwargs", ALL_LOSSES, ids=[v[0] for v in ALL_LOSSES])
def test_identical_teacher_and_student_give_zero(name, fast, kwargs, dtype):
    _, states, mask = make_batch([12, 7, 1, 0], 12, 4, seed=6, dtype=dtype, requires_grad=True)
    loss = fast(states, states, mask, **kwargs)
    assert abs(val(loss)) <= 1e-12
    grads = torch.autograd.grad(loss, states)
    assert all(g.abs().max() <= 1e-9 for g in grads)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("name,fast,kwargs", ALL_LOSSES, ids=[v[0] for v in ALL_LOSSES])
def test_finite_with_heavy_padding_empty_sentences_and_coincident_points(name, fast, kwargs, dtype):
    teacher, student, mask = make_batch([0, 1, 2, 3, 12], 12, 4, seed=7, dtype=dtype)
    for states in (teacher, student):
        for h in states:
            h[4, 5:9] = h[4, 4]  # a run of identical token vectors
            h[3, 1] = h[3, 0]
        states[2][4, 10] = states[1][4, 10]  # coincident layer vectors
    student[0][4, 11] = 0.0
    student = [s.requires_grad_() for s in student]
    loss = fast(teacher, student, mask, **kwargs)
    assert loss.dtype == torch.float32  # half precision is upcast
    assert torch.isfinite(loss) and loss > 0
    loss.backward()
    for s in student:
        assert torch.isfinite(s.grad).all()
        assert (s.grad[0] == 0).all()  # the fully padded sentence gets no gradient


@pytest.mark.parametrize("name,fast,kwargs", ALL_LOSSES, ids=[v[0] for v in ALL_LOSSES])
def test_all_padding_batch_is_zero_with_zero_gradient(name, fast, kwargs):
    teacher, student, mask = make_batch([0, 0], 5, 3, seed=8, requires_grad=True)
    loss = fast(teacher, student, mask, **kwargs)
    assert val(loss) == 0.0
    loss.backward()
    assert all((s.grad == 0).all() for s in student)


@pytest.mark.parametrize("name,fast,kwargs", ALL_LOSSES, ids=[v[0] for v in ALL_LOSSES])
def test_padded_values_do_not_matter_in_described_behaviour(name, fast, kwargs):
    teacher, student, mask = make_batch([10, 4, 1, 7], 10, 3, seed=9)
    before = fast(teacher, student, mask, **kwargs)
    pad = (mask == 0).unsqueeze(-1)
    g = torch.Generator().manual_seed(10)
    teacher = [torch.where(pad, 1e3 * torch.randn(h.shape, generator=g, dtype=h.dtype), h) for h in teacher]
    student = [torch.where(pad, 1e3 * torch.randn(h.shape, generator=g, dtype=h.dtype), h) for h in student]
    after = fast(teacher, student, mask, **kwargs)
    if kwargs.get("released_window_quirks"):
        assert abs(val(after) - val(before)) > 1e-6  # released: padding neighbours are counted
        return
    assert val(after) == pytest.approx(val(before), rel=1e-12, abs=0)
    # even NaN/inf in padding cannot leak into the loss or the gradient
    student = [torch.where(pad, torch.nan, h).requires_grad_() for h in student]
    teacher = [torch.where(pad, torch.inf, h) for h in teacher]
    loss = fast(teacher, student, mask, **kwargs)
    assert val(loss) == pytest.approx(val(before), rel=1e-12, abs=0)
    loss.backward()
    assert all(torch.isfinite(s.grad).all() for s in student)


@pytest.mark.parametrize("name,fast,kwargs", ALL_LOSSES, ids=[v[0] for v in ALL_LOSSES])
def test_permuting_sentences_does_not_change_the_loss(name, fast, kwargs):
    teacher, student, mask = make_batch([10, 4, 1, 7, 0, 9], 10, 3, seed=11)
    perm = torch.tensor([3, 0, 5, 1, 4, 2])
    value = fast(teacher, student, mask, **kwargs)
    permuted = fast([t[perm] for t in teacher], [s[perm] for s in student], mask[perm], **kwargs)
    assert val(permuted) == pytest.approx(val(value), rel=1e-12, abs=0)


@pytest.mark.parametrize("name,fast,kwargs", ALL_LOSSES, ids=[v[0] for v in ALL_LOSSES])
def test_teacher_gets_no_gradient(name, fast, kwargs):
    teacher, student, mask = make_batch([8, 5], 8, 3, seed=12, requires_grad=True)
    teacher = [t.requires_grad_() for t in teacher]
    loss = fast(teacher, student, mask, **kwargs)
    loss.backward()
    assert all(t.grad is None for t in teacher)
    assert all(s.grad is not None and s.grad.abs().max() > 0 for s in student)


@pytest.mark.parametrize("name,fast,kwargs", ALL_LOSSES, ids=[v[0] for v in ALL_LOSSES])
def test_mask_dtype_and_layer_container_do_not_matter(name, fast, kwargs):
    teacher, student, mask = make_batch([8, 5, 2], 8, 3, seed=13)
    value = val(fast(teacher, student, mask, **kwargs))
    for m in (mask.bool(), mask.float(), mask.double()):
        assert val(fast(teacher, student, m, **kwargs)) == value
    assert val(fast(tuple(teacher), torch.stack(student), mask, **kwargs)) == value


def test_half_precision_is_computed_in_float32():
    teacher, student, mask = make_batch([8, 5, 2], 8, 3, seed=14, dtype=torch.bfloat16)
    for name, fast, kwargs in ALL_LOSSES:
        low = fast(teacher, student, mask, **kwargs)
        upcast = fast([t.float() for t in teacher], [s.float() for s in student], mask, **kwargs)
        assert low.dtype == torch.float32 and val(low) == val(upcast), name


@pytest.mark.parametrize("kwargs", [{"window": 5}, {"window": 5, "released_window_quirks": True}, {"window": None}])
def test_blocks_of_centres_do_not_change_value_or_gradient(kwargs):
    teacher, student, mask = make_batch([16, 9, 1, 5], 16, 3, seed=15, requires_grad=True)
    reference = None
    for chunk_size in (None, 1, 3, 16, 100):
        loss = wr_triple(teacher, student, mask, chunk_size=chunk_size, **kwargs)
        grads = torch.autograd.grad(loss, student)
        if reference is None:
            reference = (loss, grads)
            continue
        assert val(loss) == pytest.approx(val(reference[0]), rel=1e-12, abs=0)
        for g, r in zip(grads, reference[1]):
            torch.testing.assert_close(g, r, rtol=1e-10, atol=1e-12)


def test_a_window_covering_every_sentence_equals_the_full_triple():
    # Two independent code paths (window gathers vs full matrix products) sum the same terms.
    lengths, n = [12, 7, 1, 4], 12
    teacher, student, mask = make_batch(lengths, n, 4, seed=16)
    w = 2 * n + 1
    windowed = wr_triple(teacher, student, mask, window=w) * sum(lengths) * w**2
    full = wr_triple(teacher, student, mask, window=None) * sum(x**3 for x in lengths)
    assert val(windowed) == pytest.approx(val(full), rel=1e-12)


def test_float32_agrees_with_float64():
    teacher, student, mask = make_batch([16, 9, 1, 5], 16, 4, seed=17)
    for name, fast, kwargs in ALL_LOSSES:
        exact = val(fast(teacher, student, mask, **kwargs))
        single = val(fast([t.float() for t in teacher], [s.float() for s in student], mask, **kwargs))
        assert single == pytest.approx(exact, rel=1e-4), name


def test_degenerate_settings_give_zero():
    teacher, student, mask = make_batch([6, 3], 6, 3, seed=20, requires_grad=True)
    # a window of 1 holds only the centre (angle 0); a single layer has no layer relations
    losses = [wr_triple(teacher, student, mask, window=1), ltr_pair(teacher[:1], student[:1], mask),
              ltr_triple(teacher[:1], student[:1], mask)]
    for loss in losses:
        assert val(loss) == 0.0
        assert all(g is None or (g == 0).all() for g in torch.autograd.grad(loss, student, allow_unused=True))
    # two-token sentences: each row has one candidate, so both softmaxes are 1
    assert val(wr_pair(teacher, student, torch.tensor([[1, 1, 0, 0, 0, 0], [0, 0, 0, 0, 1, 1]]))) == 0.0


def test_registry_names_the_four_losses():
    assert RELATION_LOSSES == {"wr_pair": wr_pair, "wr_triple": wr_triple, "ltr_pair": ltr_pair, "ltr_triple": ltr_triple}


@pytest.mark.parametrize("window", [0, -1, 2, 20, 5.0, True, "21"])
def test_invalid_window_is_rejected(window):
    teacher, student, mask = make_batch([4], 4, 2)
    with pytest.raises(ValueError, match="window"):
        wr_triple(teacher, student, mask, window=window)


def test_invalid_options_are_rejected():
    teacher, student, mask = make_batch([4, 2], 4, 2)
    with pytest.raises(TypeError):
        wr_triple(teacher, student, mask, windw=5)  # a typo is not silently ignored
    for fast in (wr_pair, ltr_pair, ltr_triple):
        with pytest.raises(TypeError):
            fast(teacher, student, mask, window=5)
    with pytest.raises(ValueError, match="chunk_size"):
        wr_triple(teacher, student, mask, chunk_size=0)
    with pytest.raises(ValueError, match="released_window_quirks"):
        wr_triple(teacher, student, mask, released_window_quirks="yes")


def test_invalid_inputs_are_rejected():
    teacher, student, mask = make_batch([4, 2], 4, 3)
    with pytest.raises(ValueError, match="number of mapped"):
        wr_pair(teacher[:2], student, mask)
    with pytest.raises(ValueError, match="number of mapped"):
        wr_pair([], [], mask)
    with pytest.raises(ValueError, match="student_states\\[1\\]"):
        wr_pair(teacher, [student[0], student[1][:, :3], student[2]], mask)
    with pytest.raises(ValueError, match="attention_mask"):
        wr_pair(teacher, student, mask[:, :3])
    with pytest.raises(ValueError, match="list of"):
        wr_pair(teacher[0], student[0], mask)  # a single (B, n, d) tensor, not a list of layers
    with pytest.raises(TypeError, match="floating point"):
        wr_pair([t.long() for t in teacher], student, mask)


@pytest.mark.parametrize("name,fast,kwargs", WR_TRIPLES, ids=[v[0] for v in WR_TRIPLES])
def test_points_closer_than_float32_resolution_count_as_coincident(name, fast, kwargs):
    # A difference far below what float32 Gram entries resolve must not turn rounding noise into an
    # angle: the loss equals the one with exactly coincident points (angle 0), and stays finite.
    exact_t, exact_s, mask = make_batch([12, 11], 12, 2, seed=18, dtype=torch.float32)
    for states in (exact_t, exact_s):
        for h in states:
            h[:, 1::2] = h[:, 0::2]
    g = torch.Generator().manual_seed(19)
    near_t, near_s = ([h + 1e-6 * torch.randn(h.shape, generator=g) * (torch.arange(12) % 2)[:, None] for h in states]
                      for states in (exact_t, exact_s))
    near_s = [s.requires_grad_() for s in near_s]
    loss = fast(near_t, near_s, mask, **kwargs)
    assert val(loss) == pytest.approx(val(fast(exact_t, exact_s, mask, **kwargs)), rel=1e-4)
    loss.backward()
    assert all(torch.isfinite(s.grad).all() for s in near_s)
