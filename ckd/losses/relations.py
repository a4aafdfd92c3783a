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

Everything is computed from Gram matrices (angles via <h_j - h_i, h_k - h_i> = G_jk - G_ij - G_ik +
G_ii): no (B, n, n, d), (B, n, w, d) or (B, n, n, n) tensor is ever built. WR terms take one
(B, n, n) Gram matrix per layer and side; LTR terms one K x K matrix per valid token, built from
cache-sized chunks of tokens (no (B, n, K, d) stack). The window triple gathers Gram entries into
(B, block, w, w) tensors for blocks of centre tokens; the full triple (window=None) reduces the
O(n^3) sum to batched matrix products over (B, n, n) tensors in float64.

Memory: each term is one autograd node per layer (per term for LTR) that computes the gradient of
the loss with respect to its small Gram matrices during the forward pass and keeps only that. Its
backward maps it to the states with one more product (recomputing the centred or stacked vectors),
so neither the (B, n, d)-sized copies nor the Gram-sized intermediates stay alive until backward.

Half-precision inputs are computed in float32, float32/float64 as given; autocast is disabled inside.
"""

from __future__ import annotations

import contextlib
from typing import Callable, Sequence

import torch

__all__ = ["wr_pair", "wr_triple", "ltr_pair", "ltr_triple", "RELATION_LOSSES", "DEFAULT_WINDOW"]

DEFAULT_WINDOW = 21  # the authors' released default

# Logits are cosines in [-1, 1]; exp(-1e4) is exactly 0 in float32 and float64, so masked entries get
# probability 0 without the NaNs that -inf produces in KL (and in its gradient).
_MASK_FILL = -1e4
# Target size of a block's intermediates (one layer's sentences, a block of centre tokens) in wr_triple.
_CHUNK_BYTES = 64 * 2**20
# Target size of a chunk of tokens' stacked layer vectors in the LTR terms: small enough to stay in cache.
_TOKEN_CHUNK_BYTES = 2 * 2**20
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


def _finite_padding(h: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Padded positions with non-finite values (NaN/inf, or so large a row sum overflows) set to 0.

    Padded rows take part in the Gram products (their entries are masked afterwards), so they must be
    finite for 0 * value to be 0. Checking the row sums costs one read; the copy is made only if needed.
    """
    if bool(torch.where(valid, 0, h.sum(dim=-1)).isfinite().all()):
        return h
    return h.masked_fill(~valid.unsqueeze(-1), 0)


# ----------------------------------------------------------------------------- shared numerics


def _masked_kl(logits_t: torch.Tensor, logits_s: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """sum over kept entries of P_T log(P_T / P_S), with row softmaxes over the kept entries."""
    log_pt = logits_t.masked_fill(~keep, _MASK_FILL).log_softmax(dim=-1)
    log_ps = logits_s.masked_fill(~keep, _MASK_FILL).log_softmax(dim=-1)
    # Rows with nothing kept are uniform over fill values; `where` drops them without NaN or gradient.
    return torch.where(keep, log_pt.exp() * (log_pt - log_ps), 0).sum()


def _inverse_norms(gram: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    # Clamping before rsqrt (as F.normalize's eps does) keeps the gradient finite for zero vectors.
    diag = gram.diagonal(dim1=-2, dim2=-1)
    return diag.clamp_min(1e-24).rsqrt(), diag


def _cosines(gram: torch.Tensor) -> torch.Tensor:
    """Cosine matrix from a Gram matrix (..., m, m); a zero vector has cosine 0 with everything."""
    inv_norm, _ = _inverse_norms(gram)
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


def _value_and_grad(fn: Callable[..., torch.Tensor], small: Sequence[torch.Tensor], need_grad: bool):
    """fn(*small) and, if asked, its symmetrised gradient D + D^T with respect to each (small, square
    in the last two dimensions) input, right away."""
    if not need_grad:
        return fn(*small), None
    with torch.enable_grad():
        leaves = [s.detach().requires_grad_() for s in small]
        value = fn(*leaves)
        grads = torch.autograd.grad(value, leaves, allow_unused=True)
    return value.detach(), [torch.zeros_like(s) if g is None else g + g.transpose(-1, -2) for s, g in zip(small, grads)]


# ----------------------------------------------------------------------------- lean autograd node


class _ThroughGrams(torch.autograd.Function):
    """loss = value(grams.forward(states)) as one autograd node.

    `grams` maps the large student states to small symmetric Gram matrices and back (`backward`);
    `value(small, need_grad)` returns the loss and, when a gradient is needed, its symmetrised
    gradient D + D^T (D = d loss / d small) computed at once, so that d loss / d X = (D + D^T) X for a
    Gram matrix X X^T. Only the states (alive anyway) and that gradient are kept for backward.
    """

    @staticmethod
    def forward(ctx, grams, value, *states):
        need_grad = any(ctx.needs_input_grad[2:])
        loss, d_small = value(grams.forward(states), need_grad)
        if need_grad:
            ctx.grams, ctx.num_states = grams, len(states)
            ctx.save_for_backward(*states, *d_small)
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        saved = ctx.saved_tensors
        states, d_small = saved[: ctx.num_states], saved[ctx.num_states:]
        with _no_autocast(grad_loss.device):
            grads = ctx.grams.backward(states, [d * grad_loss.to(d.dtype) for d in d_small])
        return (None, None, *grads)


class _TokenGram:
    """One layer's (B, n, n) Gram matrix of its token vectors: raw (padding as given, masked later),
    or centred on the mean valid token with padding zeroed (or kept, for the released quirks).

    Centring is exact for angles and keeps Gram entries near the scale of the differences, which
    limits cancellation in G_jj - 2 G_ij + G_ii.
    """

    def __init__(self, valid: torch.Tensor, dtype: torch.dtype, *, centre: bool = False, zero_padding: bool = True):
        self.dtype, self.centre, self.zero_padding = dtype, centre, zero_padding
        self.pad = ~valid.unsqueeze(-1)
        self.weights = valid.to(dtype).unsqueeze(1)  # (B, 1, n): sums over valid tokens as products
        self.count = self.weights.sum(dim=-1, keepdim=True).clamp_min(1)

    def vectors(self, h: torch.Tensor) -> torch.Tensor:
        h = h.to(self.dtype)
        if not self.centre:
            return h
        x = h - torch.bmm(self.weights, h) / self.count
        return x.masked_fill_(self.pad, 0) if self.zero_padding else x

    def forward(self, states):
        x = self.vectors(states[0])
        return (torch.bmm(x, x.transpose(1, 2)),)

    def backward(self, states, d_small):
        gx = torch.bmm(d_small[0], self.vectors(states[0]))
        if self.centre:  # back through x = mask * (h - mean of valid h)
            if self.zero_padding:
                gx.masked_fill_(self.pad, 0)
            gx -= self.weights.transpose(1, 2) * (gx.sum(dim=1, keepdim=True) / self.count.transpose(1, 2))
        return (gx.to(states[0].dtype),)


class _LayerGram:
    """Per valid token, the K x K Gram matrix of its K mapped-layer vectors (centred over the layers
    if asked): an (N_valid, K, K) tensor built from cache-sized chunks of tokens."""

    def __init__(self, valid: torch.Tensor, dtype: torch.dtype, num_layers: int, width: int, *, centre: bool):
        self.dtype, self.centre, self.num_layers = dtype, centre, num_layers
        self.index = valid.flatten().nonzero().squeeze(1)
        size = max(1, _TOKEN_CHUNK_BYTES // (num_layers * width * torch.finfo(dtype).bits // 8))
        self.spans = [(start, min(start + size, len(self.index))) for start in range(0, len(self.index), size)]

    def _vectors(self, flat: list[torch.Tensor], start: int, stop: int) -> torch.Tensor:  # (c, K, d)
        idx = self.index[start:stop]
        e = torch.stack([h.index_select(0, idx) for h in flat], dim=1).to(self.dtype)
        return e - e.mean(dim=1, keepdim=True) if self.centre else e

    @staticmethod
    def _flat(states):
        return [h.reshape(-1, h.shape[-1]) for h in states]

    def forward(self, states):
        flat = self._flat(states)
        out = torch.empty(len(self.index), self.num_layers, self.num_layers, dtype=self.dtype, device=self.index.device)
        for start, stop in self.spans:
            e = self._vectors(flat, start, stop)
            torch.bmm(e, e.transpose(1, 2), out=out[start:stop])
        return (out,)

    def backward(self, states, d_small):
        flat = self._flat(states)
        sym = d_small[0]
        grads = [torch.zeros_like(h) for h in flat]
        for start, stop in self.spans:
            ge = torch.bmm(sym[start:stop], self._vectors(flat, start, stop))
            if self.centre:
                ge -= ge.mean(dim=1, keepdim=True)
            idx = self.index[start:stop]
            for layer, g in enumerate(grads):
                g.index_copy_(0, idx, ge[:, layer].to(g.dtype))
        return [g.view_as(h) for g, h in zip(grads, states)]


# ----------------------------------------------------------------------------- public losses


def wr_pair(teacher_states, student_states, attention_mask) -> torch.Tensor:
    """Word Relation pair loss: per mapped layer, row-softmax of token cosines (j != i, j valid),
    KL(P_T || P_S) summed over layers, sentences and valid rows, / (K * sum_b n_b^2)."""
    teacher, student, valid = _check_inputs(teacher_states, student_states, attention_mask)
    n = valid.shape[1]
    dtype = _compute_dtype(student[0])
    with _no_autocast(valid.device):
        drop = ~(valid.unsqueeze(1) & valid.unsqueeze(2) & ~torch.eye(n, dtype=torch.bool, device=valid.device))
        any_kept = (~drop).any(dim=-1, keepdim=True).to(dtype)  # (B, n, 1): rows with a softmax at all
        grams = _TokenGram(valid, dtype)
        total = None
        for t, s in zip(teacher, student):
            with torch.no_grad():
                t = _finite_padding(t.to(dtype), valid)
                log_pt = _cosines(torch.bmm(t, t.transpose(1, 2))).masked_fill_(drop, _MASK_FILL).log_softmax(dim=-1)
            kl = _ThroughGrams.apply(grams, _PairKL(log_pt, any_kept, drop), _finite_padding(s, valid))
            total = kl if total is None else total + kl
        lengths = valid.sum(dim=1).to(dtype)
        return total / _denominator(len(student) * lengths.square().sum())


class _PairKL:
    """sum over kept (i, j) of P_T log(P_T / P_S) for P_S the row softmax of the student's cosines,
    with its gradient with respect to the student's Gram matrix in closed form."""

    def __init__(self, log_pt: torch.Tensor, any_kept: torch.Tensor, drop: torch.Tensor):
        self.log_pt, self.any_kept, self.drop = log_pt, any_kept, drop
        # P_T on kept entries, 0 elsewhere: masked entries already have probability exactly 0, and rows
        # with nothing kept (uniform over fill values) are zeroed by any_kept.
        self.p_t = log_pt.exp().mul_(any_kept)

    def __call__(self, small, need_grad: bool):
        gram = small[0]
        inv_norm, diag = _inverse_norms(gram)
        cos = gram * inv_norm.unsqueeze(-1) * inv_norm.unsqueeze(-2)  # as _cosines, to the last bit
        log_ps = cos.masked_fill(self.drop, _MASK_FILL).log_softmax(dim=-1)
        p_s = log_ps.exp() if need_grad else None
        loss = torch.dot(self.p_t.flatten(), (self.log_pt - log_ps).flatten())
        if not need_grad:
            return loss, None
        # d loss / d logits = P_S - P_T on rows with a kept entry (0 elsewhere, and 0 off the kept entries).
        d_cos = p_s.mul_(self.any_kept).sub_(self.p_t)
        d_cos = d_cos + d_cos.transpose(1, 2)
        # cos = G_ij r_i r_j with r = diag(G)^-1/2, so the diagonal of the symmetrised gradient also gets
        # -r_i^2 * sum_j (D_ij + D_ji) cos_ij.
        d_diag = (d_cos * cos).sum(dim=-1).mul_(inv_norm.square()).neg_()
        d_gram = d_cos.mul_(inv_norm.unsqueeze(-1)).mul_(inv_norm.unsqueeze(-2))
        d_gram.diagonal(dim1=-2, dim2=-1).add_(torch.where(diag >= 1e-24, d_diag, 0))
        return loss, [d_gram]


def ltr_pair(teacher_states, student_states, attention_mask) -> torch.Tensor:
    """Layer Transforming Relation pair loss: per valid token, row-softmax of the K x K cosines of its
    mapped-layer vectors (diagonal excluded), KL(P_T || P_S) summed, / (K^2 * sum_b n_b)."""
    teacher, student, valid = _check_inputs(teacher_states, student_states, attention_mask)
    K = len(student)
    dtype = _compute_dtype(student[0])
    with _no_autocast(valid.device):
        with torch.no_grad():
            (g_t,) = _LayerGram(valid, dtype, K, teacher[0].shape[-1], centre=False).forward(teacher)
            cos_t = _cosines(g_t)
        keep = ~torch.eye(K, dtype=torch.bool, device=valid.device)
        grams = _LayerGram(valid, dtype, K, student[0].shape[-1], centre=False)

        def value(small, need_grad):
            return _value_and_grad(lambda g: _masked_kl(cos_t, _cosines(g), keep), small, need_grad)

        total = _ThroughGrams.apply(grams, value, *student)
        return total / _denominator(K * K * valid.sum().to(dtype))


def _layer_angles(gram: torch.Tensor) -> torch.Tensor:
    """psi(a; b, c) (N, K, K, K) from per-token Gram matrices (N, K, K) of layer-centred vectors."""
    d = gram.diagonal(dim1=-2, dim2=-1)
    keep = torch.ones((), dtype=torch.bool, device=gram.device)
    x, c = _rays(d.unsqueeze(-1), gram, d.unsqueeze(-2), keep)
    return _angles(gram.unsqueeze(-3), x, c)


def ltr_triple(teacher_states, student_states, attention_mask) -> torch.Tensor:
    """Layer Transforming Relation triple loss: per valid token, angles psi(a; b, c) over its K
    mapped-layer vectors, all K^3 triples, (psi_S - psi_T)^2 summed, / (K^3 * sum_b n_b)."""
    teacher, student, valid = _check_inputs(teacher_states, student_states, attention_mask)
    K = len(student)
    dtype = _compute_dtype(student[0])
    with _no_autocast(valid.device):
        with torch.no_grad():
            (g_t,) = _LayerGram(valid, dtype, K, teacher[0].shape[-1], centre=True).forward(teacher)
            psi_t = _layer_angles(g_t)
        grams = _LayerGram(valid, dtype, K, student[0].shape[-1], centre=True)

        def value(small, need_grad):
            return _value_and_grad(lambda g: (_layer_angles(g) - psi_t).square().sum(), small, need_grad)

        total = _ThroughGrams.apply(grams, value, *student)
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
            # Positions after the last valid token of every sentence take no part: drop them.
            # (An all-padding batch keeps one position, so the result is a 0 that still backpropagates.)
            any_valid = valid.any(dim=0).nonzero()
            n = int(any_valid.max()) + 1 if any_valid.numel() else 1
            teacher, student, valid = [t[:, :n] for t in teacher], [s[:, :n] for s in student], valid[:, :n]
            value_of = _FullTriple(valid, dtype, chunk_size)
            zero_padding = True
        else:
            value_of = _WindowTriple(valid, window, released_window_quirks, chunk_size)
            zero_padding = not released_window_quirks
        grams = _TokenGram(valid, dtype, centre=True, zero_padding=zero_padding)
        total = None
        for t, s in zip(teacher, student):
            with torch.no_grad():
                (g_t,) = grams.forward([_finite_padding(t, valid)])
            layer = _ThroughGrams.apply(grams, value_of.against(g_t), _finite_padding(s, valid))
            total = layer if total is None else total + layer
        if window is None:
            return total.to(dtype) / _denominator(K * lengths.pow(3).sum())
        return total / _denominator(K * lengths.sum() * window**2)


def _blocks(n: int, chunk_size: int | None, bytes_per_centre: int) -> list[tuple[int, int]]:
    """(start, stop) of blocks of centre tokens, about _CHUNK_BYTES of intermediates each."""
    size = chunk_size or max(1, _CHUNK_BYTES // max(1, bytes_per_centre))
    return [(start, min(start + size, n)) for start in range(0, n, size)]


def _sum_blocks(block_sum, g_s: torch.Tensor, blocks, need_grad: bool):
    """Sum of block_sum(g_s, start, stop) over blocks of centre tokens and, if asked, its gradient with
    respect to g_s, taken block by block so that only one block's intermediates exist at a time."""
    total = g_s.new_zeros(())
    d_gram = torch.zeros_like(g_s) if need_grad else None
    for start, stop in blocks:
        value, grad = _value_and_grad(lambda g: block_sum(g, start, stop), [g_s], need_grad)
        total = total + value
        if need_grad:
            d_gram += grad[0]  # symmetrised already
    return total, (None if d_gram is None else [d_gram])


class _WindowTriple:
    """Sum of (psi_S - psi_T)^2 over windows, from (B, block, w, w) gathers of one layer's Gram matrices."""

    def __init__(self, valid: torch.Tensor, window: int, quirks: bool, chunk_size: int | None):
        n = valid.shape[1]
        self.n, self.window, self.chunk_size = n, window, chunk_size
        radius = (window - 1) // 2
        pos = torch.arange(n, device=valid.device).unsqueeze(1) + torch.arange(-radius, radius + 1, device=valid.device)
        self.idx = pos.clamp(0, n - 1)  # (n, w): the released code's clamped window, edge positions repeated
        self.flat = self.idx.unsqueeze(2) * n + self.idx.unsqueeze(1)  # (n, w, w) indices into the flattened Gram
        keep = valid.unsqueeze(-1)  # the centre must be valid ...
        if quirks:
            keep = keep.expand(*valid.shape, window)
        else:  # ... and, as described, each neighbour a valid in-sentence position
            keep = keep & (pos >= 0) & (pos < n) & valid[:, self.idx]
        self.keep = keep

    def angles(self, g: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        rows, n, window, c = g.shape[0], self.n, self.window, stop - start
        g_ii = g.diagonal(dim1=1, dim2=2)[:, start:stop].unsqueeze(-1)
        g_ij = g[:, start:stop].gather(2, self.idx[start:stop].expand(rows, c, window))
        g_jk = g.reshape(rows, n * n).gather(1, self.flat[start:stop].reshape(1, -1).expand(rows, -1))
        g_jk = g_jk.view(rows, c, window, window)
        x, cc = _rays(g_ii, g_ij, g_jk.diagonal(dim1=-2, dim2=-1), self.keep[:, start:stop])
        return _angles(g_jk, x, cc)

    def against(self, g_t: torch.Tensor):
        def value(small, need_grad):
            def block_sum(g_s, start, stop):
                with torch.no_grad():
                    psi_t = self.angles(g_t, start, stop)
                return (self.angles(g_s, start, stop) - psi_t).square().sum()

            # about 8 (B, block, w, w) tensors are alive at once in a block
            blocks = _blocks(self.n, self.chunk_size, 8 * g_t.shape[0] * self.window**2 * g_t.element_size())
            return _sum_blocks(block_sum, small[0], blocks, need_grad)

        return value


class _FullTriple:
    """Sum over valid i, j, k of (psi_S - psi_T)^2 with O(n^2) memory and O(n^3) work in matrix products.

    With psi_i = diag(x_i) G diag(x_i) - y_i x_i^T - x_i y_i^T (rays of centre i, y = c * x), each
    centre's sum of squared differences is |psi_S,i|^2 - 2 <psi_S,i, psi_T,i> + |psi_T,i|^2 (Frobenius),
    and every such inner product reduces to bilinear forms of G, i.e. batched matrix products. The
    expansion cancels when psi_S ~ psi_T, so it runs in float64 whatever the input precision.
    """

    def __init__(self, valid: torch.Tensor, dtype: torch.dtype, chunk_size: int | None):
        self.valid, self.dtype, self.chunk_size = valid, dtype, chunk_size

    def rays(self, g, start, stop):  # x, y of centres start..stop-1: (B, c, n)
        d = g.diagonal(dim1=1, dim2=2)
        keep = self.valid[:, start:stop, None] & self.valid[:, None, :]
        x, c = _rays(d[:, start:stop, None], g[:, start:stop], d[:, None, :], keep, gram_dtype=self.dtype)
        return x, c * x

    @staticmethod
    def inner(ga, xa, ya, gb, xb, yb):  # sum over the block's centres of <psi_a,i, psi_b,i>
        z = xa * xb
        mm = (torch.bmm(z, ga * gb) * z).sum()
        mr = (torch.bmm(xa * yb, ga) * z).sum() + (torch.bmm(ya * xb, gb) * z).sum()
        rr = ((ya * yb).sum(-1) * z.sum(-1) + (ya * xb).sum(-1) * (xa * yb).sum(-1)).sum()
        return mm - 2 * mr + 2 * rr

    def against(self, g_t: torch.Tensor):
        g_t = g_t.double()

        def value(small, need_grad):
            def block_sum(gs, start, stop):
                gs = gs.double()
                x_s, y_s = self.rays(gs, start, stop)
                with torch.no_grad():
                    x_t, y_t = self.rays(g_t, start, stop)
                    tt = self.inner(g_t, x_t, y_t, g_t, x_t, y_t)
                return self.inner(gs, x_s, y_s, gs, x_s, y_s) - 2 * self.inner(gs, x_s, y_s, g_t, x_t, y_t) + tt

            n = g_t.shape[1]
            # about 16 (B, block, n) float64 tensors are alive at once in a block
            blocks = _blocks(n, self.chunk_size, 16 * g_t.shape[0] * n * 8)
            return _sum_blocks(block_sum, small[0], blocks, need_grad)

        return value


RELATION_LOSSES: dict[str, Callable[..., torch.Tensor]] = {
    "wr_pair": wr_pair,
    "wr_triple": wr_triple,
    "ltr_pair": ltr_pair,
    "ltr_triple": ltr_triple,
}
