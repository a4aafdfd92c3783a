"""CKD relation losses (Park, Kim & Yang, EMNLP 2021): Word Relation (WR) and Layer Transforming
Relation (LTR), each as a pair (cosine-softmax KL) and a triple (angle MSE) term.

All four take the *already mapped* teacher and student states: two lists of the same length K of
(B, n, d) tensors (d may differ between teacher and student) and an attention mask (B, n) whose
non-zero entries mark valid tokens. Relations live inside each model's own space, so no projection
is needed. Teacher relations carry no gradient. Definitions and the (released) denominators are
those of METHODS.md, "CKD relation losses":

* ``wr_pair``:    KL(P_T || P_S) of row softmaxes of token cosines, / (K * sum_b n_b^2)
* ``ltr_pair``:   the same over the K x K layer cosines of each token, / (K^2 * sum_b n_b)
* ``wr_triple``:  (psi_S - psi_T)^2 of angles at a centre token over a window of w positions,
                  / (K * sum_b n_b * w^2); ``window=None``: all valid i, j, k, / (K * sum_b n_b^3)
* ``ltr_triple``: the same angles over the K layer vectors of each token, / (K^3 * sum_b n_b)

Everything is computed from one Gram matrix per layer and side (angles via
<h_j - h_i, h_k - h_i> = G_jk - G_ij - G_ik + G_ii): no (B, n, n, d), (B, n, w, d) or (B, n, n, n)
tensor is ever built. The window triple gathers Gram entries into (K * B, block, w, w) tensors for
blocks of centre tokens; the full triple (window=None) reduces the O(n^3) sum to batched matrix
products over (K * B, n, n) tensors in float64. With several blocks, each block is recomputed in
backward (activation checkpointing), so memory stays at a few block-sized tensors.

Half-precision inputs are computed in float32, float32/float64 as given; autocast is disabled inside.
"""

from __future__ import annotations

import contextlib
from typing import Callable, Sequence

import torch
from torch.utils.checkpoint import checkpoint

__all__ = ["wr_pair", "wr_triple", "ltr_pair", "ltr_triple", "RELATION_LOSSES", "DEFAULT_WINDOW"]

DEFAULT_WINDOW = 21  # the authors' released default

# Logits are cosines in [-1, 1]; exp(-1e4) is exactly 0 in float32 and float64, so masked entries get
# probability 0 without the NaNs that -inf produces in KL (and in its gradient).
_MASK_FILL = -1e4
# Target size of a block's intermediates (all layers and sentences, a block of centre tokens) in wr_triple.
_CHUNK_BYTES = 64 * 2**20
# A squared difference below this fraction of |h_i|^2 + |h_j|^2 is rounding noise of the Gram trick:
# the two points coincide and the angle is 0, as for j == i.
_COINCIDE_EPS_FACTOR = 64


# ----------------------------------------------------------------------------- input handling


def _as_layer_list(states, side: str) -> list[torch.Tensor]:
    if isinstance(states, torch.Tensor):
        if states.dim() != 4:
            raise ValueError(
                f"{side}_states must be a list of (B, n, d) tensors (one per mapped layer) or a (K, B, n, d) "
                f"tensor, got a tensor of shape {tuple(states.shape)}"
            )
        return list(states.unbind(0))
    if not isinstance(states, Sequence) or not all(isinstance(h, torch.Tensor) for h in states):
        raise TypeError(f"{side}_states must be a list of (B, n, d) tensors, got {type(states).__name__}")
    return list(states)


def _check_inputs(teacher_states, student_states, attention_mask):
    """Returns (teacher list, student list, valid (B, n) bool mask)."""
    teacher = _as_layer_list(teacher_states, "teacher")
    student = _as_layer_list(student_states, "student")
    if not teacher or len(teacher) != len(student):
        raise ValueError(
            f"need the same non-zero number of mapped teacher and student layers, got {len(teacher)} and "
            f"{len(student)}; select them with the layer map"
        )
    if not isinstance(attention_mask, torch.Tensor) or attention_mask.dim() != 2:
        raise ValueError("attention_mask must be a (B, n) tensor of 1 (valid token) / 0 (padding)")
    shape = tuple(attention_mask.shape)
    for side, layers in (("teacher", teacher), ("student", student)):
        for k, h in enumerate(layers):
            if h.dim() != 3 or tuple(h.shape[:2]) != shape:
                raise ValueError(
                    f"{side}_states[{k}] has shape {tuple(h.shape)}; expected (B, n, d) with (B, n) = {shape} "
                    f"from attention_mask"
                )
            if not h.is_floating_point():
                raise TypeError(f"{side}_states[{k}] must be floating point, got {h.dtype}")
    valid = attention_mask.to(device=student[0].device) != 0
    return [h.detach() for h in teacher], student, valid


def _compute_dtype(h: torch.Tensor) -> torch.dtype:
    # Half precision loses too much in Gram differences (G_jj - 2 G_ij + G_ii): use float32.
    return h.dtype if h.dtype in (torch.float32, torch.float64) else torch.float32


def _no_autocast(device: torch.device):
    if device.type in ("cpu", "cuda"):
        return torch.autocast(device_type=device.type, enabled=False)
    return contextlib.nullcontext()


def _check_window(window) -> None:
    if window is None:
        return
    if isinstance(window, bool) or not isinstance(window, int):
        raise ValueError(f"window must be an odd positive integer or None (all tokens), got {window!r}")
    if window < 1 or window % 2 == 0:
        raise ValueError(
            f"window must be an odd positive integer (positions i-(w-1)/2 .. i+(w-1)/2) or None, got {window}"
        )


def _denominator(value: torch.Tensor) -> torch.Tensor:
    # An all-padding batch has nothing to average: the loss is then exactly 0, not 0/0.
    return value.clamp_min(1)


# ----------------------------------------------------------------------------- shared pieces


def _masked_kl(logits_t: torch.Tensor, logits_s: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """sum over kept entries of P_T log(P_T / P_S), with row softmaxes over the kept entries."""
    log_pt = logits_t.masked_fill(~keep, _MASK_FILL).log_softmax(dim=-1)
    log_ps = logits_s.masked_fill(~keep, _MASK_FILL).log_softmax(dim=-1)
    # Rows with nothing kept are uniform over fill values; `where` drops them without NaN or gradient.
    return torch.where(keep, log_pt.exp() * (log_pt - log_ps), 0).sum()


def _cosines(gram: torch.Tensor) -> torch.Tensor:
    """Cosine matrix from a Gram matrix (..., m, m); a zero vector has cosine 0 with everything."""
    # Clamping before rsqrt (as F.normalize's eps does) keeps the gradient finite for zero vectors.
    inv_norm = gram.diagonal(dim1=-2, dim2=-1).clamp_min(1e-24).rsqrt()
    return gram * inv_norm.unsqueeze(-1) * inv_norm.unsqueeze(-2)


def _rays(g_ii: torch.Tensor, g_ij: torch.Tensor, g_jj: torch.Tensor, keep: torch.Tensor, gram_dtype=None):
    """Per centre i and neighbour j: x_ij = 1 / |h_j - h_i| and c_ij = G_ij - G_ii / 2, from Gram entries
    (|h_j - h_i|^2 = G_jj - 2 G_ij + G_ii), so that

        psi(i; j, k) = <h_j - h_i, h_k - h_i> x_ij x_ik = (G_jk - c_ij - c_ik) x_ij x_ik.

    x is 0 where `keep` is False and where the difference vanishes (j == i, or a point coinciding with
    the centre), which makes every angle involving j exactly 0 on both sides: masked terms drop out
    without a mask on the (.., w, w) angles. rsqrt only sees safely positive values, so gradients stay
    finite at coincident points. `gram_dtype`: the precision the Gram entries were computed in.
    """
    sq = g_ii - 2 * g_ij + g_jj
    eps = _COINCIDE_EPS_FACTOR * torch.finfo(gram_dtype or sq.dtype).eps
    ok = keep & (sq > eps * (g_ii + g_jj))
    x = torch.where(ok, torch.rsqrt(torch.where(ok, sq, torch.ones_like(sq))), 0)
    return x, g_ij - g_ii / 2


def _angles(g_jk: torch.Tensor, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """psi(i; j, k) (..., w, w) from neighbour Gram entries g_jk and the rays x, c (..., w)."""
    return (g_jk - c.unsqueeze(-1) - c.unsqueeze(-2)) * (x.unsqueeze(-1) * x.unsqueeze(-2))


def _centred_grams(
    layers: list[torch.Tensor], valid: torch.Tensor, dtype: torch.dtype, zero_padding: bool
) -> torch.Tensor:
    """(K * B, n, n) Gram matrices of each layer's states, centred on the mean valid token.

    Angles only see differences, so centring is exact; it keeps Gram entries near the scale of the
    differences, which limits cancellation in G_jj - 2 G_ij + G_ii.
    """
    v = valid.unsqueeze(-1)
    count = v.sum(dim=1, keepdim=True).clamp_min(1).to(dtype)
    grams = []
    for h in layers:
        h = h.to(dtype)
        centred = h - torch.where(v, h, 0).sum(dim=1, keepdim=True) / count
        if zero_padding:
            centred = torch.where(v, centred, 0)
        grams.append(torch.bmm(centred, centred.transpose(1, 2)))
    return torch.cat(grams, dim=0)


# ----------------------------------------------------------------------------- public losses


def wr_pair(teacher_states, student_states, attention_mask) -> torch.Tensor:
    """Word Relation pair loss: per mapped layer, row-softmax of token cosines (j != i, j valid),
    KL(P_T || P_S) summed over layers, sentences and valid rows, / (K * sum_b n_b^2)."""
    teacher, student, valid = _check_inputs(teacher_states, student_states, attention_mask)
    n = valid.shape[1]
    dtype = _compute_dtype(student[0])
    with _no_autocast(valid.device):
        v = valid.unsqueeze(-1)
        keep = valid.unsqueeze(1) & valid.unsqueeze(2) & ~torch.eye(n, dtype=torch.bool, device=valid.device)
        total = None
        for t, s in zip(teacher, student):
            with torch.no_grad():
                t = torch.where(v, t.to(dtype), 0)
                cos_t = _cosines(torch.bmm(t, t.transpose(1, 2)))
            s = torch.where(v, s.to(dtype), 0)
            kl = _masked_kl(cos_t, _cosines(torch.bmm(s, s.transpose(1, 2))), keep)
            total = kl if total is None else total + kl
        lengths = valid.sum(dim=1).to(dtype)
        return total / _denominator(len(student) * lengths.square().sum())


def ltr_pair(teacher_states, student_states, attention_mask) -> torch.Tensor:
    """Layer Transforming Relation pair loss: per valid token, row-softmax of the K x K cosines of its
    mapped-layer vectors (diagonal excluded), KL(P_T || P_S) summed, / (K^2 * sum_b n_b)."""
    teacher, student, valid = _check_inputs(teacher_states, student_states, attention_mask)
    K = len(student)
    dtype = _compute_dtype(student[0])
    with _no_autocast(valid.device):
        v = valid.unsqueeze(-1)

        def layer_cosines(layers):  # (B, n, K, K)
            e = torch.stack([torch.where(v, h.to(dtype), 0) for h in layers], dim=2)
            return _cosines(e @ e.transpose(-1, -2))

        with torch.no_grad():
            cos_t = layer_cosines(teacher)
        cos_s = layer_cosines(student)
        offdiag = ~torch.eye(K, dtype=torch.bool, device=valid.device)
        keep = valid[:, :, None, None] & offdiag
        total = _masked_kl(cos_t, cos_s, keep)
        return total / _denominator(K * K * valid.sum().to(dtype))


def ltr_triple(teacher_states, student_states, attention_mask) -> torch.Tensor:
    """Layer Transforming Relation triple loss: per valid token, angles psi(a; b, c) over its K
    mapped-layer vectors, all K^3 triples, (psi_S - psi_T)^2 summed, / (K^3 * sum_b n_b)."""
    teacher, student, valid = _check_inputs(teacher_states, student_states, attention_mask)
    K = len(student)
    dtype = _compute_dtype(student[0])
    with _no_autocast(valid.device):
        v = valid.unsqueeze(-1)

        def layer_angles(layers):  # (B, n, K, K, K)
            e = torch.stack([torch.where(v, h.to(dtype), 0) for h in layers], dim=2)
            e = e - e.mean(dim=2, keepdim=True)  # centring over layers is exact
            g = e @ e.transpose(-1, -2)
            d = g.diagonal(dim1=-2, dim2=-1)
            x, c = _rays(d.unsqueeze(-1), g, d.unsqueeze(-2), v.unsqueeze(-1))
            return _angles(g.unsqueeze(-3), x, c)

        with torch.no_grad():
            psi_t = layer_angles(teacher)
        total = (layer_angles(student) - psi_t).square().sum()
        return total / _denominator(K**3 * valid.sum().to(dtype))


def wr_triple(
    teacher_states,
    student_states,
    attention_mask,
    *,
    window: int | None = DEFAULT_WINDOW,
    released_window_quirks: bool = False,
    chunk_size: int | None = None,
) -> torch.Tensor:
    """Word Relation triple loss: angles psi(i; j, k) = <u_ij, u_ik> with u_ij = (h_j - h_i)/|h_j - h_i|
    (0 when a difference vanishes) at each valid centre i, (psi_S - psi_T)^2 summed.

    window=w (odd): j, k in i-(w-1)/2 .. i+(w-1)/2, / (K * sum_b n_b * w^2).
      described (default): a (j, k) term counts only if j and k are valid in-sentence positions.
      released_window_quirks=True: positions are clamped to [0, n-1] (edge positions repeat) and
      padding neighbours count; only the centre is masked.
    window=None: all valid i, j, k, / (K * sum_b n_b^3) (released_window_quirks does not apply).
    chunk_size: centre tokens per block (None: automatic, blocks of a few tens of MB).
    """
    _check_window(window)
    if chunk_size is not None and (isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1):
        raise ValueError(f"chunk_size must be a positive integer (centre tokens per block) or None, got {chunk_size!r}")
    if not isinstance(released_window_quirks, bool):
        raise ValueError(f"released_window_quirks must be True or False, got {released_window_quirks!r}")
    teacher, student, valid = _check_inputs(teacher_states, student_states, attention_mask)
    K = len(student)
    dtype = _compute_dtype(student[0])
    lengths = valid.sum(dim=1).to(dtype)
    with _no_autocast(valid.device):
        if window is None:
            total = _full_triple(teacher, student, valid, dtype, chunk_size).to(dtype)
            return total / _denominator(K * lengths.pow(3).sum())
        total = _window_triple(teacher, student, valid, dtype, window, released_window_quirks, chunk_size)
        return total / _denominator(K * lengths.sum() * window**2)


def _blocks(n: int, chunk_size: int | None, bytes_per_centre: int) -> list[tuple[int, int]]:
    """(start, stop) of blocks of centre tokens, about _CHUNK_BYTES of intermediates each."""
    size = chunk_size or max(1, _CHUNK_BYTES // max(1, bytes_per_centre))
    return [(start, min(start + size, n)) for start in range(0, n, size)]


def _sum_blocks(block_sum, g_s: torch.Tensor, g_t: torch.Tensor, blocks) -> torch.Tensor:
    """sum of block_sum(g_s, g_t, start, stop) over blocks of centre tokens. With several blocks, each
    is recomputed in backward rather than keeping every block's activations alive."""
    recompute = len(blocks) > 1 and torch.is_grad_enabled() and g_s.requires_grad
    total = g_s.new_zeros(())
    for start, stop in blocks:
        if recompute:
            total = total + checkpoint(block_sum, g_s, g_t, start, stop, use_reentrant=False, preserve_rng_state=False)
        else:
            total = total + block_sum(g_s, g_t, start, stop)
    return total


def _window_triple(teacher, student, valid, dtype, window, quirks, chunk_size) -> torch.Tensor:
    """Sum of (psi_S - psi_T)^2 over windows, from (rows, centres, w, w) gathers of the Gram matrices."""
    n = valid.shape[1]
    with torch.no_grad():
        g_t = _centred_grams(teacher, valid, dtype, zero_padding=not quirks)
    g_s = _centred_grams(student, valid, dtype, zero_padding=not quirks)
    rows = g_s.shape[0]
    valid_rows = valid.repeat(len(student), 1)  # row l * B + b of the stacked Grams is layer l, sentence b

    radius = (window - 1) // 2
    pos = torch.arange(n, device=valid.device).unsqueeze(1) + torch.arange(-radius, radius + 1, device=valid.device)
    idx = pos.clamp(0, n - 1)  # (n, w): the released code's clamped window, edge positions repeated
    flat = idx.unsqueeze(2) * n + idx.unsqueeze(1)  # (n, w, w) indices into the flattened Gram
    keep = valid_rows.unsqueeze(-1)  # the centre must be valid ...
    if quirks:
        keep = keep.expand(rows, n, window)
    else:  # ... and, as described, each neighbour a valid in-sentence position
        keep = keep & (pos >= 0) & (pos < n) & valid_rows[:, idx]

    def angles(g, start, stop):
        c = stop - start
        g_ii = g.diagonal(dim1=1, dim2=2)[:, start:stop].unsqueeze(-1)
        g_ij = g[:, start:stop].gather(2, idx[start:stop].expand(rows, c, window))
        g_jk = g.reshape(rows, n * n).gather(1, flat[start:stop].reshape(1, -1).expand(rows, -1))
        g_jk = g_jk.view(rows, c, window, window)
        x, cc = _rays(g_ii, g_ij, g_jk.diagonal(dim1=-2, dim2=-1), keep[:, start:stop])
        return _angles(g_jk, x, cc)

    def block_sum(gs, gt, start, stop):
        with torch.no_grad():
            psi_t = angles(gt, start, stop)
        return (angles(gs, start, stop) - psi_t).square().sum()

    # about 8 (rows, block, w, w) tensors are alive at once in a block
    return _sum_blocks(block_sum, g_s, g_t, _blocks(n, chunk_size, 8 * rows * window**2 * g_s.element_size()))


def _full_triple(teacher, student, valid, dtype, chunk_size) -> torch.Tensor:
    """Sum over valid i, j, k of (psi_S - psi_T)^2 with O(n^2) memory and O(n^3) work in matrix products.

    With psi_i = diag(x_i) G diag(x_i) - y_i x_i^T - x_i y_i^T (rays of centre i, y = c * x), each
    centre's sum of squared differences is |psi_S,i|^2 - 2 <psi_S,i, psi_T,i> + |psi_T,i|^2 (Frobenius),
    and every such inner product reduces to bilinear forms of G, i.e. batched matrix products. The
    expansion cancels when psi_S ~ psi_T, so it runs in float64 whatever the input precision.
    """
    # Positions after the last valid token of every sentence take no part: drop them.
    # (An all-padding batch keeps one position, so the result is a 0 that still backpropagates.)
    any_valid = valid.any(dim=0).nonzero()
    n = int(any_valid.max()) + 1 if any_valid.numel() else 1
    valid = valid[:, :n]
    with torch.no_grad():
        g_t = _centred_grams([t[:, :n] for t in teacher], valid, dtype, zero_padding=True).double()
    g_s = _centred_grams([s[:, :n] for s in student], valid, dtype, zero_padding=True).double()
    rows = g_s.shape[0]
    valid_rows = valid.repeat(len(student), 1)

    def rays(g, start, stop):  # x, y of centres start..stop-1: (rows, c, n)
        d = g.diagonal(dim1=1, dim2=2)
        keep = valid_rows[:, start:stop, None] & valid_rows[:, None, :]
        x, c = _rays(d[:, start:stop, None], g[:, start:stop], d[:, None, :], keep, gram_dtype=dtype)
        return x, c * x

    def inner(ga, xa, ya, gb, xb, yb):  # sum over the block's centres of <psi_a,i, psi_b,i>
        z = xa * xb
        mm = (torch.bmm(z, ga * gb) * z).sum()
        mr = (torch.bmm(xa * yb, ga) * z).sum() + (torch.bmm(ya * xb, gb) * z).sum()
        rr = ((ya * yb).sum(-1) * z.sum(-1) + (ya * xb).sum(-1) * (xa * yb).sum(-1)).sum()
        return mm - 2 * mr + 2 * rr

    def block_sum(gs, gt, start, stop):
        x_s, y_s = rays(gs, start, stop)
        with torch.no_grad():
            x_t, y_t = rays(gt, start, stop)
            tt = inner(gt, x_t, y_t, gt, x_t, y_t)
        return inner(gs, x_s, y_s, gs, x_s, y_s) - 2 * inner(gs, x_s, y_s, gt, x_t, y_t) + tt

    # about 16 (rows, block, n) tensors are alive at once in a block
    return _sum_blocks(block_sum, g_s, g_t, _blocks(n, chunk_size, 16 * rows * n * g_s.element_size()))


RELATION_LOSSES: dict[str, Callable[..., torch.Tensor]] = {
    "wr_pair": wr_pair,
    "wr_triple": wr_triple,
    "ltr_pair": ltr_pair,
    "ltr_triple": ltr_triple,
}
