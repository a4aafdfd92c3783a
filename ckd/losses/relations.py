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

The readable definition of the same four terms, tensor by tensor, is ``ckd.losses.relations_dense``;
tests/test_relations.py checks this engine equal to it (values and gradients).

Everything is computed from Gram matrices (angles via <h_j - h_i, h_k - h_i> = G_jk - G_ij - G_ik +
G_ii): no (B, n, n, d), (B, n, w, d) or (B, n, n, n) tensor is ever built. WR terms take one
(B, n, n) Gram matrix per layer and side (on CPU with right padding, products over each sentence's
valid prefix only); LTR terms one K x K matrix per valid token, built from cache-sized chunks of
tokens (no (B, n, K, d) stack). The window triple gathers Gram entries into (centres, w, w) tensors
for blocks of valid centre tokens; the full triple (window=None) reduces the O(n^3) sum to batched
matrix products over (B, n, n) tensors in float64. Pair KL, window and full triple gradients with
respect to the Gram matrices are written out in closed form; the LTR ones come from autograd on the
small per-token matrices.

Memory: each term is one autograd node per layer (per term for LTR) that computes the gradient of
the loss with respect to its small Gram matrices during the forward pass and keeps only that. Its
backward maps it to the states with one more product (recomputing the centred or stacked vectors),
so neither the (B, n, d)-sized copies nor the Gram-sized intermediates stay alive until backward.

Half-precision inputs are computed in float32, float32/float64 as given; autocast is disabled inside.

Cached teacher: each loss also takes, instead of the teacher's states, a `TeacherGrams` holding the
teacher side it would compute (``token_grams`` / ``layer_grams``, e.g. read back from the teacher
cache, ckd.teacher_store); the student side is then computed exactly as with live states.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

__all__ = [
    "wr_pair", "wr_triple", "ltr_pair", "ltr_triple", "batch_normaliser", "RELATION_LOSSES", "DEFAULT_WINDOW",
    "TeacherGrams", "token_grams", "layer_grams",
]

DEFAULT_WINDOW = 21  # the authors' released default

# Logits are cosines in [-1, 1]; exp(-1e4) is exactly 0 in float32 and float64, so masked entries get
# probability 0 without the NaNs that -inf produces in KL (and in its gradient).
_MASK_FILL = -1e4
# Target size of a block's intermediates (one layer's sentences, a block of centre tokens) in wr_triple.
_CHUNK_BYTES = 64 * 2**20
# The same for the full triple, whose blocks are (B, block, n) float64 tensors in batched matrix products.
_FULL_CHUNK_BYTES = 256 * 2**20
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


@dataclass(frozen=True)
class TeacherGrams:
    """The teacher side of the relation terms, precomputed for one batch of K mapped layers (None: not held).

    token:         K (B, n, n) Gram matrices of the raw token vectors (``token_grams(centre=False)``): wr_pair
    token_centred: K (B, n, n) Gram matrices of the token vectors centred on their sentence's mean valid
                   token, padding 0 (``token_grams(centre=True)``): wr_triple (not with released_window_quirks)
    layer:         (N_valid, K, K) per valid token (row-major over (b, position)) Gram matrices of its K
                   layer vectors (``layer_grams(centre=False)``): ltr_pair
    layer_centred: the same of the layer vectors centred over the K layers (``layer_grams(centre=True)``): ltr_triple
    Entries at padded positions are never read.
    """

    token: Sequence[torch.Tensor] | None = None
    token_centred: Sequence[torch.Tensor] | None = None
    layer: torch.Tensor | None = None
    layer_centred: torch.Tensor | None = None

    def get(self, name: str, term: str):
        value = getattr(self, name)
        if value is None:
            raise ValueError(f"{term} needs the teacher's {name.replace('_', ' ')} Gram matrices, which this TeacherGrams lacks")
        return value


def _check_inputs(teacher_states, student_states, attention_mask):
    """Returns (teacher list, or the TeacherGrams given, student list, valid (B, n) bool mask)."""
    student = _as_layer_list(student_states, "student")
    if isinstance(teacher_states, TeacherGrams):
        if not student:
            raise ValueError("need a non-zero number of mapped student layers; select them with the layer map")
        _check_side("student", student, attention_mask)
        return teacher_states, student, attention_mask.to(device=student[0].device) != 0
    teacher = _as_layer_list(teacher_states, "teacher")
    if not teacher or len(teacher) != len(student):
        raise ValueError(
            f"need the same non-zero number of mapped teacher and student layers, got {len(teacher)} and "
            f"{len(student)}; select them with the layer map"
        )
    _check_side("teacher", teacher, attention_mask)
    _check_side("student", student, attention_mask)
    valid = attention_mask.to(device=student[0].device) != 0
    return [h.detach() for h in teacher], student, valid


def _check_side(side: str, layers: list[torch.Tensor], attention_mask) -> None:
    if not isinstance(attention_mask, torch.Tensor) or attention_mask.dim() != 2:
        raise ValueError("attention_mask must be a (B, n) tensor of 1 (valid token) / 0 (padding)")
    shape = tuple(attention_mask.shape)
    for k, h in enumerate(layers):
        if h.dim() != 3 or tuple(h.shape[:2]) != shape:
            raise ValueError(
                f"{side}_states[{k}] has shape {tuple(h.shape)}; expected (B, n, d) with (B, n) = {shape} "
                f"from attention_mask"
            )
        if not h.is_floating_point():
            raise TypeError(f"{side}_states[{k}] must be floating point, got {h.dtype}")


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


# ----------------------------------------------------------------------------- shared numerics


def _masked_kl(logits_t: torch.Tensor, logits_s: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """sum over kept entries of P_T log(P_T / P_S), with row softmaxes over the kept entries."""
    log_pt = logits_t.masked_fill(~keep, _MASK_FILL).log_softmax(dim=-1)
    log_ps = logits_s.masked_fill(~keep, _MASK_FILL).log_softmax(dim=-1)
    # Rows with nothing kept are uniform over fill values; `where` drops them without NaN or gradient.
    return torch.where(keep, log_pt.exp() * (log_pt - log_ps), 0).sum()


def _cosine_scale(gram: torch.Tensor) -> torch.Tensor:
    """r_i r_j with r = diag(G)^-1/2, so that G * r_i r_j is the cosine matrix (..., m, m)."""
    # Clamping before rsqrt (as F.normalize's eps does) keeps the gradient finite for zero vectors.
    inv_norm = gram.diagonal(dim1=-2, dim2=-1).clamp_min(1e-24).rsqrt()
    return inv_norm.unsqueeze(-1) * inv_norm.unsqueeze(-2)


def _cosines(gram: torch.Tensor) -> torch.Tensor:
    """Cosine matrix from a Gram matrix (..., m, m); a zero vector has cosine 0 with everything."""
    return gram * _cosine_scale(gram)


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


def _through_grams(grams, value, *states) -> torch.Tensor:
    if torch.is_grad_enabled() and any(h.requires_grad for h in states):
        return _ThroughGrams.apply(grams, value, *states)
    return value(grams.forward(states), False)[0]  # no gradient to prepare (e.g. under no_grad)


class _TokenGram:
    """One layer's (B, n, n) Gram matrix of its token vectors: raw, or centred on the mean valid token
    (exact for angles, and it keeps Gram entries near the scale of the differences, which limits
    cancellation in G_jj - 2 G_ij + G_ii) with padding zeroed, or kept for the released quirks.

    With right padding (on CPU) each sentence's valid prefix is multiplied on its own: the padding's
    share of the work is skipped and padded entries are 0. Otherwise one batched product over all
    positions, whose padded entries are masked later; padded rows must then be finite for 0 * value to
    be 0, so a non-finite Gram diagonal (NaN or inf in a row, or a row so large its norm overflows)
    makes `forward` zero the padding and recompute, and `backward` do the same. Use one instance
    (`fresh()`) per layer.
    """

    def __init__(self, valid: torch.Tensor, dtype: torch.dtype, *, centre: bool = False, zero_padding: bool = True):
        self.dtype, self.centre, self.zero_padding = dtype, centre, zero_padding
        self.pad = ~valid.unsqueeze(-1)
        self.weights = valid.to(dtype).unsqueeze(1)  # (B, 1, n): sums over valid tokens as products
        self.count = self.weights.sum(dim=-1, keepdim=True).clamp_min(1)
        self.clean = False  # zero the padding first (batched path)
        self.lengths = _prefix_lengths(valid) if zero_padding or not centre else None

    def fresh(self) -> _TokenGram:
        return copy.copy(self)

    def vectors(self, h: torch.Tensor) -> torch.Tensor:  # batched path
        h = h.to(self.dtype)
        if self.clean:
            h = h.masked_fill(self.pad, 0)
        if not self.centre:
            return h
        x = h - torch.bmm(self.weights, h) / self.count
        return x.masked_fill_(self.pad, 0) if self.zero_padding else x

    def prefix_vectors(self, h: torch.Tensor) -> torch.Tensor:  # per-sentence path: only prefixes are read
        h = h.to(self.dtype)
        if not self.centre:
            return h
        mean = torch.bmm(self.weights, h) / self.count
        if not bool(mean.isfinite().all()):  # non-finite padding (0 * value): zero it first
            mean = torch.bmm(self.weights, h.masked_fill(self.pad, 0)) / self.count
        return h - mean

    def forward(self, states):
        h = states[0]
        if self.lengths is not None:
            x = self.prefix_vectors(h)
            gram = h.new_zeros(h.shape[0], h.shape[1], h.shape[1], dtype=self.dtype)
            for b, length in enumerate(self.lengths):
                torch.mm(x[b, :length], x[b, :length].T, out=gram[b, :length, :length])
            return (gram,)
        x = self.vectors(h)
        gram = torch.bmm(x, x.transpose(1, 2))
        if not self.clean and not bool(gram.diagonal(dim1=1, dim2=2).isfinite().all()):
            self.clean = True
            return self.forward(states)
        return (gram,)

    def backward(self, states, d_small):
        h, d_gram = states[0], d_small[0]
        if self.lengths is not None:
            x = self.prefix_vectors(h)
            gh = torch.empty(h.shape, dtype=self.dtype, device=h.device)
            for b, length in enumerate(self.lengths):
                torch.mm(d_gram[b, :length, :length], x[b, :length], out=gh[b, :length])
                gh[b, length:] = 0
            if self.centre:  # back through x = h - mean of valid h (padded rows stay 0)
                gh.addcmul_(self.weights.transpose(1, 2), gh.sum(dim=1, keepdim=True) / self.count, value=-1)
            return (gh.to(h.dtype),)
        gx = torch.bmm(d_gram, self.vectors(h))
        if self.centre:  # back through x = mask * (h - mean of valid h)
            if self.zero_padding:
                gx.masked_fill_(self.pad, 0)
            gx -= self.weights.transpose(1, 2) * (gx.sum(dim=1, keepdim=True) / self.count.transpose(1, 2))
        if self.clean:
            gx.masked_fill_(self.pad, 0)
        return (gx.to(h.dtype),)


def _prefix_lengths(valid: torch.Tensor, worthwhile: float = 0.8) -> list[int] | None:
    """Each sentence's number of valid tokens when they form a prefix (right padding), on CPU, and
    when skipping the padding saves more than 1 - `worthwhile` of an (n x n) product; else None."""
    if valid.device.type != "cpu" or valid.numel() == 0:
        return None
    lengths = valid.sum(dim=1)
    n = valid.shape[1]
    if not torch.equal(valid, torch.arange(n, device=valid.device) < lengths.unsqueeze(1)):
        return None
    if float(lengths.double().square().sum()) > worthwhile * valid.shape[0] * n * n:
        return None
    return lengths.tolist()


class _LayerGram:
    """Per valid token, the K x K Gram matrix of its K mapped-layer vectors (centred over the layers
    if asked): an (N_valid, K, K) tensor built chunk by chunk, gathering each chunk of tokens' layer
    vectors into one reused, cache-sized (K, chunk, d) buffer (no (B, n, K, d) stack)."""

    def __init__(self, valid: torch.Tensor, dtype: torch.dtype, num_layers: int, width: int, *, centre: bool):
        self.dtype, self.centre, self.num_layers = dtype, centre, num_layers
        self.index = valid.flatten().nonzero().squeeze(1)
        self.pad_index = (~valid).flatten().nonzero().squeeze(1)
        self.chunk = max(1, _TOKEN_CHUNK_BYTES // (num_layers * width * torch.finfo(dtype).bits // 8))

    def _chunks(self, states):
        """(start, stop, (c, K, d) layer vectors) for the valid tokens start..stop-1."""
        flat = [h.reshape(-1, h.shape[-1]) for h in states]
        buffer = flat[0].new_empty(len(flat), min(self.chunk, len(self.index)), flat[0].shape[-1])
        for start in range(0, len(self.index), self.chunk):
            stop = min(start + self.chunk, len(self.index))
            idx = self.index[start:stop]
            for layer, h in enumerate(flat):
                torch.index_select(h, 0, idx, out=buffer[layer, : stop - start])
            e = buffer[:, : stop - start].transpose(0, 1).to(self.dtype)
            yield start, stop, (e - e.mean(dim=1, keepdim=True) if self.centre else e)

    def forward(self, states):
        out = torch.empty(len(self.index), self.num_layers, self.num_layers, dtype=self.dtype, device=self.index.device)
        for start, stop, e in self._chunks(states):
            torch.bmm(e, e.transpose(1, 2), out=out[start:stop])
        return (out,)

    def backward(self, states, d_small):
        grads = [h.new_empty(h.shape[0] * h.shape[1], h.shape[-1]) for h in states]
        for g in grads:
            g.index_fill_(0, self.pad_index, 0)
        for start, stop, e in self._chunks(states):
            ge = torch.bmm(d_small[0][start:stop], e)
            if self.centre:
                ge -= ge.mean(dim=1, keepdim=True)
            idx = self.index[start:stop]
            for layer, g in enumerate(grads):
                g.index_copy_(0, idx, ge[:, layer].to(g.dtype))
        return [g.view_as(h) for g, h in zip(grads, states)]


# ----------------------------------------------------------------------------- public losses


def token_grams(states, attention_mask, *, centre: bool, dtype: torch.dtype | None = None) -> list[torch.Tensor]:
    """The (B, n, n) Gram matrix of each layer's token vectors, as the WR terms compute the teacher side
    (no gradient): raw (``centre=False``: wr_pair) or centred on each sentence's mean valid token with
    padding zeroed (``centre=True``: wr_triple). states: K (B, n, d) tensors; attention_mask: (B, n).
    dtype: the compute precision (default: float32 for half-precision states, else theirs). Entries at
    padded positions carry no meaning."""
    layers = [h.detach() for h in _as_layer_list(states, "teacher")]
    _check_side("teacher", layers, attention_mask)
    valid = attention_mask.to(device=layers[0].device) != 0
    dtype = dtype or _compute_dtype(layers[0])
    grams = _TokenGram(valid, dtype, centre=centre)
    with torch.no_grad(), _no_autocast(valid.device):
        return [grams.fresh().forward([h])[0] for h in layers]


def layer_grams(states, attention_mask, *, centre: bool, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Per valid token (row-major over (b, position)), the K x K Gram matrix of its K layer vectors, as
    the LTR terms compute the teacher side (no gradient): raw (``centre=False``: ltr_pair) or centred
    over the layers (``centre=True``: ltr_triple). Returns (N_valid, K, K)."""
    layers = [h.detach() for h in _as_layer_list(states, "teacher")]
    _check_side("teacher", layers, attention_mask)
    valid = attention_mask.to(device=layers[0].device) != 0
    dtype = dtype or _compute_dtype(layers[0])
    with torch.no_grad(), _no_autocast(valid.device):
        return _LayerGram(valid, dtype, len(layers), layers[0].shape[-1], centre=centre).forward(layers)[0]


def _teacher_token_grams(teacher, field: str, grams: _TokenGram, count: int, term: str, n: int | None = None):
    """The teacher's per-layer Gram matrices, one at a time: from a TeacherGrams (first n positions) or
    computed from the teacher's states with `grams` (a configured _TokenGram) under no_grad."""
    if isinstance(teacher, TeacherGrams):
        cached = teacher.get(field, term)
        if len(cached) != count:
            raise ValueError(f"{term}: the teacher side holds {len(cached)} layers, the student side {count}; use the same layer map")
        for g in cached:
            g = g.to(device=grams.weights.device, dtype=grams.dtype)
            yield g if n is None else g[:, :n, :n]
        return
    for t in teacher:
        with torch.no_grad():
            g = grams.fresh().forward([t])[0]
        yield g  # outside no_grad: the caller's loop body runs at the yield


def _teacher_layer_gram(teacher, field: str, valid, dtype, count: int, term: str, centre: bool) -> torch.Tensor:
    if isinstance(teacher, TeacherGrams):
        g = teacher.get(field, term)
        if g.shape[-1] != count or g.shape[0] != int(valid.sum()):
            raise ValueError(f"{term}: the teacher side is {tuple(g.shape)}, expected ({int(valid.sum())}, {count}, {count}) "
                             "(valid tokens, mapped layers)")
        return g.to(device=valid.device, dtype=dtype)
    with torch.no_grad():
        return _LayerGram(valid, dtype, count, teacher[0].shape[-1], centre=centre).forward(teacher)[0]


def batch_normaliser(term: str, attention_mask: torch.Tensor, *, window: int | None = DEFAULT_WINDOW, **_) -> torch.Tensor:
    """The batch-dependent part of a relation term's denominator, from the (B, n) attention mask:
    sum_b n_b^2 (``wr_pair``), sum_b n_b (``ltr_pair``, ``ltr_triple``, windowed ``wr_triple``) or
    sum_b n_b^3 (``wr_triple`` with window=None); n_b = valid tokens of sentence b. The constant part
    (K, K^2, K^3, w^2) is the same for every batch. Each loss divides by this same count, so
    loss * count is additive over any split of a batch (the training loop uses that to make gradient
    accumulation and multi-process training exact)."""
    lengths = (attention_mask != 0).sum(dim=1).to(torch.float64)
    power = {"wr_pair": 2, "ltr_pair": 1, "ltr_triple": 1, "wr_triple": 1 if window is not None else 3}
    if term not in power:
        raise ValueError(f"unknown relation term {term!r}: one of {', '.join(power)}")
    return lengths.pow(power[term]).sum()


def wr_pair(teacher_states, student_states, attention_mask) -> torch.Tensor:
    """Word Relation pair loss: per mapped layer, row-softmax of token cosines (j != i, j valid),
    KL(P_T || P_S) summed over layers, sentences and valid rows, / (K * sum_b n_b^2)."""
    teacher, student, valid = _check_inputs(teacher_states, student_states, attention_mask)
    n = valid.shape[1]
    dtype = _compute_dtype(student[0])
    with _no_autocast(valid.device):
        keep = valid.unsqueeze(1) & valid.unsqueeze(2) & ~torch.eye(n, dtype=torch.bool, device=valid.device)
        # Cosines are in [-1, 1]: adding the fill to masked entries takes them as far below the kept ones
        # as replacing them would (their softmax weight is exactly 0), in one pass with the cosines.
        fill = (~keep).to(dtype) * _MASK_FILL
        any_kept = keep.any(dim=-1, keepdim=True).to(dtype)  # (B, n, 1): rows with a softmax at all
        none_kept = -any_kept
        grams = _TokenGram(valid, dtype)
        total = None
        for g_t, s in zip(_teacher_token_grams(teacher, "token", grams, len(student), "wr_pair"), student):
            with torch.no_grad():
                logits_t = torch.addcmul(fill, g_t, _cosine_scale(g_t))
                # -P_T on kept entries, 0 elsewhere: masked entries have probability exactly 0, and rows
                # with nothing kept are zeroed by any_kept.
                neg_p_t = logits_t.softmax(dim=-1).mul_(none_kept)
            value = _PairKL(logits_t.log_softmax(dim=-1), neg_p_t, any_kept, fill)
            kl = _through_grams(grams.fresh(), value, s)
            total = kl if total is None else total + kl
        return total / _denominator(len(student) * batch_normaliser("wr_pair", valid).to(dtype))


class _PairKL:
    """sum over kept (i, j) of P_T log(P_T / P_S) for P_S the row softmax of the student's cosines,
    with its gradient with respect to the student's Gram matrix in closed form."""

    def __init__(self, log_pt: torch.Tensor, neg_p_t: torch.Tensor, any_kept: torch.Tensor, fill: torch.Tensor):
        self.log_pt, self.neg_p_t, self.any_kept, self.fill = log_pt, neg_p_t, any_kept, fill

    def __call__(self, small, need_grad: bool):
        gram = small[0]
        scale = _cosine_scale(gram)
        logits = torch.addcmul(self.fill, gram, scale)  # as the teacher's, to the last bit
        log_ps = logits.log_softmax(dim=-1)
        # softmax rather than exp(log_ps): exp is slow on the underflowing masked entries
        p_s = logits.softmax(dim=-1) if need_grad else None
        loss = -torch.dot(self.neg_p_t.flatten(), torch.sub(self.log_pt, log_ps, out=log_ps).flatten())
        if not need_grad:
            return loss, None
        # d loss / d logits = P_S - P_T on rows with a kept entry (0 elsewhere, and 0 off the kept entries).
        d_cos = torch.addcmul(self.neg_p_t, p_s, self.any_kept)
        d_cos = d_cos + d_cos.transpose(1, 2)
        # cos = G_ij r_i r_j with r = diag(G)^-1/2, so the diagonal of the symmetrised gradient also gets
        # -r_i^2 * sum_j (D_ij + D_ji) cos_ij (0 where the norm was clamped); D is 0 where logits != cos.
        d_diag = torch.linalg.vecdot(d_cos, logits).mul_(scale.diagonal(dim1=-2, dim2=-1))
        d_diag = torch.where(gram.diagonal(dim1=-2, dim2=-1) >= 1e-24, d_diag, 0)
        d_gram = d_cos.mul_(scale)
        d_gram.diagonal(dim1=-2, dim2=-1).sub_(d_diag)
        return loss, [d_gram]


def ltr_pair(teacher_states, student_states, attention_mask) -> torch.Tensor:
    """Layer Transforming Relation pair loss: per valid token, row-softmax of the K x K cosines of its
    mapped-layer vectors (diagonal excluded), KL(P_T || P_S) summed, / (K^2 * sum_b n_b)."""
    teacher, student, valid = _check_inputs(teacher_states, student_states, attention_mask)
    K = len(student)
    dtype = _compute_dtype(student[0])
    with _no_autocast(valid.device):
        g_t = _teacher_layer_gram(teacher, "layer", valid, dtype, K, "ltr_pair", centre=False)
        with torch.no_grad():
            cos_t = _cosines(g_t)
        keep = ~torch.eye(K, dtype=torch.bool, device=valid.device)
        grams = _LayerGram(valid, dtype, K, student[0].shape[-1], centre=False)

        def value(small, need_grad):
            return _value_and_grad(lambda g: _masked_kl(cos_t, _cosines(g), keep), small, need_grad)

        total = _through_grams(grams, value, *student)
        return total / _denominator(K * K * batch_normaliser("ltr_pair", valid).to(dtype))


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
        g_t = _teacher_layer_gram(teacher, "layer_centred", valid, dtype, K, "ltr_triple", centre=True)
        with torch.no_grad():
            psi_t = _layer_angles(g_t)
        grams = _LayerGram(valid, dtype, K, student[0].shape[-1], centre=True)

        def value(small, need_grad):
            return _value_and_grad(lambda g: (_layer_angles(g) - psi_t).square().sum(), small, need_grad)

        total = _through_grams(grams, value, *student)
        return total / _denominator(K**3 * batch_normaliser("ltr_triple", valid).to(dtype))


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
    count = batch_normaliser("wr_triple", valid, window=window).to(dtype)
    with _no_autocast(valid.device):
        if window is None:
            # Positions after the last valid token of every sentence take no part: drop them.
            # (An all-padding batch keeps one position, so the result is a 0 that still backpropagates.)
            any_valid = valid.any(dim=0).nonzero()
            n = int(any_valid.max()) + 1 if any_valid.numel() else 1
            if not isinstance(teacher, TeacherGrams):
                teacher = [t[:, :n] for t in teacher]
            student, valid = [s[:, :n] for s in student], valid[:, :n]
            value_of = _FullTriple(valid, dtype, chunk_size)
            zero_padding = True
        else:
            if released_window_quirks and isinstance(teacher, TeacherGrams):
                raise ValueError("wr_triple with released_window_quirks reads padding neighbours, which a precomputed "
                                 "(padding-free) teacher side cannot hold: pass the teacher's states")
            value_of = _WindowTriple(valid, window, released_window_quirks, chunk_size)
            zero_padding = not released_window_quirks
            n = None
        grams = _TokenGram(valid, dtype, centre=True, zero_padding=zero_padding)
        total = None
        for g_t, s in zip(_teacher_token_grams(teacher, "token_centred", grams, K, "wr_triple", n), student):
            layer = _through_grams(grams.fresh(), value_of.against(g_t), s)
            total = layer if total is None else total + layer
        if window is None:
            return total.to(dtype) / _denominator(K * count)
        return total / _denominator(K * count * window**2)


def _blocks(n: int, chunk_size: int | None, bytes_per_centre: int, budget: int = _CHUNK_BYTES) -> list[tuple[int, int]]:
    """(start, stop) of blocks of centre tokens, about `budget` bytes of intermediates each."""
    size = chunk_size or max(1, budget // max(1, bytes_per_centre))
    return [(start, min(start + size, n)) for start in range(0, n, size)]


class _WindowTriple:
    """Sum of (psi_S - psi_T)^2 over the windows of valid centre tokens, from (centres, w, w) gathers of
    one layer's Gram matrices, with the gradient with respect to the student's Gram matrix in closed
    form (scattered back onto the Gram entries the angles were gathered from).

    Per centre i, with A_jk = G_jk - c_j - c_k, psi = A x_j x_k and D = psi_S - psi_T:
    d/dG_jk = 2 D_jk x_j x_k =: F_jk, d/dc_j = -2 sum_k F_jk and, through x_j = |h_j - h_i|^-1,
    d/d|h_j - h_i|^2 = -2 x_j^2 sum_k D_jk psi_S,jk (F and D are symmetric in j, k).
    """

    def __init__(self, valid: torch.Tensor, window: int, quirks: bool, chunk_size: int | None):
        n = valid.shape[1]
        self.window, self.chunk_size = window, chunk_size
        radius = (window - 1) // 2
        centres = valid.flatten().nonzero().squeeze(1)  # only valid centres count, in both behaviours
        b, i = centres // n, centres % n
        pos = i.unsqueeze(1) + torch.arange(-radius, radius + 1, device=valid.device)  # (centres, w)
        j = pos.clamp(0, n - 1)  # the released code's clamped window, edge positions repeated
        if quirks:  # padding neighbours count; only the centre is masked
            self.keep = torch.ones_like(j, dtype=torch.bool)
        else:  # as described, each neighbour a valid in-sentence position
            self.keep = (pos >= 0) & (pos < n) & valid[b.unsqueeze(1), j]
        # indices into a (B, n, n) Gram matrix flattened
        base = (b * n * n).unsqueeze(1)
        self.ii = (b * n * n + i * (n + 1)).unsqueeze(1)
        self.ij = base + (i * n).unsqueeze(1) + j
        self.jj = base + j * (n + 1)
        self.jk = (base + j * n).unsqueeze(2) + j.unsqueeze(1)

    def angles(self, g: torch.Tensor, start: int, stop: int):
        """psi (c, w, w), the rays x (c, w) and x_j x_k (c, w, w) of centres start..stop-1 (g: flattened Gram)."""
        g_ii, g_ij, g_jj = (torch.take(g, index[start:stop]) for index in (self.ii, self.ij, self.jj))
        x, c = _rays(g_ii, g_ij, g_jj, self.keep[start:stop])
        xx = x.unsqueeze(-1) * x.unsqueeze(-2)
        psi = torch.take(g, self.jk[start:stop]).sub_(c.unsqueeze(-1)).sub_(c.unsqueeze(-2)).mul_(xx)
        return psi, x, xx

    def against(self, g_t: torch.Tensor):
        g_t = g_t.flatten()

        def value(small, need_grad):
            g_s = small[0].flatten()
            total = g_s.new_zeros(())
            d_gram = torch.zeros_like(g_s) if need_grad else None
            # about 6 (block, w, w) tensors are alive at once in a block
            for start, stop in _blocks(len(self.keep), self.chunk_size, 6 * self.window**2 * g_s.element_size()):
                psi_t, _, _ = self.angles(g_t, start, stop)
                psi_s, x, xx = self.angles(g_s, start, stop)
                diff = torch.sub(psi_s, psi_t, out=psi_t)
                total = total + torch.dot(diff.flatten(), diff.flatten())
                if need_grad:
                    d_sq = torch.linalg.vecdot(diff, psi_s).mul_(x.square()).mul_(-2)
                    f = diff.mul_(xx).mul_(2)
                    d_c = f.sum(dim=-1).mul_(-2)
                    d_gram.index_add_(0, self.jk[start:stop].flatten(), f.flatten())
                    d_gram.index_add_(0, self.ij[start:stop].flatten(), (d_c - 2 * d_sq).flatten())
                    d_gram.index_add_(0, self.jj[start:stop].flatten(), d_sq.flatten())
                    d_gram.index_add_(0, self.ii[start:stop].flatten(), (d_sq - d_c / 2).sum(dim=-1))
            if not need_grad:
                return total, None
            d_gram = d_gram.view_as(small[0])
            return total, [d_gram + d_gram.transpose(1, 2)]

        return value


class _FullTriple:
    """Sum over valid i, j, k of (psi_S - psi_T)^2 with O(n^2) memory and O(n^3) work in matrix products.

    With psi_i = diag(x_i) G diag(x_i) - y_i x_i^T - x_i y_i^T (rays of centre i, y = c * x), each
    centre's sum of squared differences is |psi_S,i|^2 - 2 <psi_S,i, psi_T,i> + |psi_T,i|^2 (Frobenius),
    and each inner product <psi_a,i, psi_b,i> = z^T (G_a * G_b) z - 2 (u^T G_a z + v^T G_b z)
    + 2 [(y_a.y_b)(x_a.x_b) + (y_a.x_b)(x_a.y_b)] with z = x_a x_b, u = x_a y_b, v = y_a x_b is a
    bilinear form of G: batched matrix products over blocks of centres, whose gradients (2 M z,
    Z^T Z, G u, U^T Z) are matrix products too, written out below. The expansion cancels when
    psi_S ~ psi_T, so it runs in float64 whatever the input precision.
    """

    def __init__(self, valid: torch.Tensor, dtype: torch.dtype, chunk_size: int | None):
        self.valid, self.dtype, self.chunk_size = valid, dtype, chunk_size

    def rays(self, g, start, stop):  # x, c, y = c * x of centres start..stop-1: (B, c, n)
        d = g.diagonal(dim1=1, dim2=2)
        keep = self.valid[:, start:stop, None] & self.valid[:, None, :]
        x, c = _rays(d[:, start:stop, None], g[:, start:stop], d[:, None, :], keep, gram_dtype=self.dtype)
        return x, c, c * x

    def against(self, g_t: torch.Tensor):
        g_t = g_t.double()
        gt_gt = g_t * g_t

        def value(small, need_grad):
            g_s = small[0].double()
            gs_gs, gs_gt = g_s * g_s, g_s * g_t
            total = g_s.new_zeros(())
            d_gram = torch.zeros_like(g_s) if need_grad else None
            n = g_s.shape[1]
            # about 30 (B, block, n) float64 tensors are alive at once in a block
            for start, stop in _blocks(n, self.chunk_size, 30 * g_s.shape[0] * n * 8, _FULL_CHUNK_BYTES):
                total = total + self.block(g_s, gs_gs, gs_gt, g_t, gt_gt, start, stop, d_gram)
            if not need_grad:
                return total, None
            return total, [(d_gram + d_gram.transpose(1, 2)).to(small[0].dtype)]

        return value

    def block(self, g_s, gs_gs, gs_gt, g_t, gt_gt, start, stop, d_gram):
        """The block's sum; adds its gradient with respect to g_s (every entry free) to d_gram if given."""
        c = stop - start
        x_t, _, y_t = self.rays(g_t, start, stop)
        x_s, c_s, y_s = self.rays(g_s, start, stop)
        z_tt, z_ss, z_st = x_t * x_t, x_s * x_s, x_s * x_t
        u_ss, u_st, v_st = x_s * y_s, x_s * y_t, y_s * x_t
        p_ss, p_st, r_st = torch.bmm(z_ss, gs_gs), torch.bmm(z_st, gs_gt), torch.bmm(z_st, g_t)
        z = torch.cat([z_ss, z_st], dim=1)
        q = torch.bmm(z, g_s)
        q_ss, q_st = q[:, :c], q[:, c:]

        def dot(a, b):
            return torch.dot(a.flatten(), b.flatten())

        vdot = torch.linalg.vecdot
        a1, a2, a3 = vdot(y_s, y_s), vdot(x_s, x_s), vdot(y_s, x_s)
        b1, b2, b3, b4 = vdot(y_s, y_t), vdot(x_s, x_t), vdot(y_s, x_t), vdot(x_s, y_t)
        inner_ss = dot(p_ss, z_ss) - 4 * dot(u_ss, q_ss) + 2 * (dot(a1, a2) + dot(a3, a3))
        inner_st = dot(p_st, z_st) - 2 * (dot(u_st, q_st) + dot(v_st, r_st)) + 2 * (dot(b1, b2) + dot(b3, b4))
        u_tt = x_t * y_t
        inner_tt = (dot(torch.bmm(z_tt, gt_gt), z_tt) - 4 * dot(u_tt, torch.bmm(z_tt, g_t))
                    + 2 * (dot(vdot(y_t, y_t), vdot(x_t, x_t)) + dot(u_tt.sum(-1), u_tt.sum(-1))))
        if d_gram is None:
            return inner_ss - 2 * inner_st + inner_tt
        # matrix terms: d/dG (z^T M z) = M's factor * Z^T Z, d/dG (u^T G z) = U^T Z
        d_gram.add_(torch.bmm(z_ss.transpose(1, 2), z_ss).mul_(g_s), alpha=2)
        d_gram.add_(torch.bmm(z_st.transpose(1, 2), z_st).mul_(g_t), alpha=-2)
        d_gram.baddbmm_(torch.cat([u_ss, u_st.neg()], dim=1).transpose(1, 2), z, alpha=-4)
        gu = torch.bmm(torch.cat([u_ss, u_st], dim=1), g_s)
        # a quarter of d/dx_s and d/dy_s: through z = x x', u = x y', v = y x' and the rank-one terms
        d_x = torch.add(p_ss, gu[:, :c], alpha=-2).mul_(x_s)
        d_x.addcmul_(x_t, gu[:, c:].add_(torch.bmm(v_st, g_t)).sub_(p_st))
        d_x.addcmul_(y_s, q_ss, value=-1).addcmul_(y_t, q_st)
        d_x.addcmul_(x_s, a1.unsqueeze(-1)).addcmul_(y_s, a3.unsqueeze(-1))
        d_x.addcmul_(x_t, b1.unsqueeze(-1), value=-1).addcmul_(y_t, b3.unsqueeze(-1), value=-1)
        d_y = torch.mul(x_t, r_st).addcmul_(x_s, q_ss, value=-1)
        d_y.addcmul_(y_s, a2.unsqueeze(-1)).addcmul_(x_s, a3.unsqueeze(-1))
        d_y.addcmul_(y_t, b2.unsqueeze(-1), value=-1).addcmul_(x_t, b4.unsqueeze(-1), value=-1)
        d_x.addcmul_(c_s, d_y)  # y = c x
        # x = |h_j - h_i|^-1 with |h_j - h_i|^2 = G_ii - 2 G_ij + G_jj, c = G_ij - G_ii / 2:
        # d_sq = -2 x^3 d_x, d_c = 4 x d_y (quarters undone)
        t = x_s.pow(3).mul_(d_x)
        w = torch.addcmul(t, x_s, d_y)
        d_gram[:, start:stop].add_(w, alpha=4)  # d_c - 2 d_sq on G_ij
        d_gram.diagonal(dim1=1, dim2=2).add_(t.sum(dim=1), alpha=-2)  # d_sq on G_jj
        d_gram.diagonal(dim1=1, dim2=2)[:, start:stop].add_(w.sum(dim=-1), alpha=-2)  # d_sq - d_c / 2 on G_ii
        return inner_ss - 2 * inner_st + inner_tt


RELATION_LOSSES: dict[str, Callable[..., torch.Tensor]] = {
    "wr_pair": wr_pair,
    "wr_triple": wr_triple,
    "ltr_pair": ltr_pair,
    "ltr_triple": ltr_triple,
}
