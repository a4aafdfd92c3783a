"""The four CKD relation terms written out tensor by tensor: the readable definition.

Word Relation (WR, tokens of one layer) and Layer Transforming Relation (LTR, mapped layers of one
token), each as a pair term (KL between row softmaxes of cosines) and a triple term (squared error of
angles), as METHODS.md ("CKD relation losses", items 1-4) defines them after Park, Kim & Yang,
"Distilling Linguistic Context for Language Model Compression" (EMNLP 2021, arXiv 2109.08359, Sec. 3:
pair-wise potential = cosine, triple-wise potential = angle, matched between teacher and student).

Every cosine, difference vector and angle is an explicit tensor, the largest being (B, K, n, n) cosines
(WR pair), (B, K, n, w, d) differences (window WR triple), (B, K, n, n, d) differences and (B, K, n, n, n)
angles (full WR triple) and (B, n, K, K, d) differences (LTR triple). The fast, Gram-based engine
(`ckd.losses.relations`, what training uses) is tested equal to these functions, and they are tested
against loops and hand-computed values (tests/test_relations.py); the benchmark baseline
(benchmarks/dense.py) and the relation explorer's heatmaps use them too.

Arguments are those of ckd.losses.relations: K mapped layers of teacher and student states, each a
(B, n, d) tensor (d may differ between the two), and a (B, n) attention mask, non-zero = valid token.
The teacher is detached. Results are 0-dim tensors in the states' dtype.
"""

from __future__ import annotations

import torch

from ckd.losses.relations import DEFAULT_WINDOW

__all__ = ["wr_pair", "ltr_pair", "wr_triple", "ltr_triple", "DENSE", "unit", "cosines", "pair_distributions", "angles",
           "off_diagonal"]

FILL = -1e4  # masked logits: exp(-1e4) is exactly 0 in float32/64, without the NaN that -inf gives in a KL


def unit(v: torch.Tensor) -> torch.Tensor:
    """v / |v| over the last dimension; 0 (with zero gradient) where v = 0."""
    norm = torch.linalg.vector_norm(v, dim=-1, keepdim=True)
    return torch.where(norm > 0, v / torch.where(norm > 0, norm, 1), 0)


def cosines(h: torch.Tensor) -> torch.Tensor:
    """(..., m, d) -> (..., m, m): cos(h_a, h_b), the pair potential; 0 with a zero vector."""
    u = unit(h)
    return u @ u.transpose(-1, -2)


def off_diagonal(m: int, device=None) -> torch.Tensor:
    """(m, m) bool, False on the diagonal: the entries a pair softmax runs over (b != a)."""
    return ~torch.eye(m, dtype=torch.bool, device=device)


def _log_pairs(h: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    return cosines(h).masked_fill(~keep, FILL).log_softmax(dim=-1)


def pair_distributions(h: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """P[..., a, :] = softmax over kept b of cos(h_a, h_b): h (..., m, d), keep (..., m, m) bool
    (broadcast) -> (..., m, m), 0 where not kept (a row with nothing kept is all 0)."""
    return torch.where(keep, _log_pairs(h, keep).exp(), 0)


def _pair_kl(h_t: torch.Tensor, h_s: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Sum over kept entries of P_T log(P_T / P_S)."""
    log_t, log_s = _log_pairs(h_t.detach(), keep), _log_pairs(h_s, keep)
    return torch.where(keep, log_t.exp() * (log_t - log_s), 0).sum()


def angles(h: torch.Tensor, neighbours: torch.Tensor | None = None) -> torch.Tensor:
    """psi[..., i, j, k] = <u_ij, u_ik> with u_ij = (h_j - h_i) / |h_j - h_i| (0 when h_j = h_i, e.g. j = i),
    the triple potential: the cosine of the angle at h_i between h_j and h_k.

    h: (..., m, d). neighbours None: j, k over all m positions -> (..., m, m, m); or an (m, w) long
    tensor of each centre's neighbour positions -> (..., m, w, w).
    """
    points = h.unsqueeze(-3) if neighbours is None else h[..., neighbours, :]  # (..., 1 or m, m or w, d)
    u = unit(points - h.unsqueeze(-2))  # u[..., i, j, :]
    return u @ u.transpose(-1, -2)


def _setup(teacher, student, attention_mask):
    valid = attention_mask != 0
    lengths = valid.sum(dim=1)  # n_b
    return list(teacher), list(student), valid, lengths, len(student)


def wr_pair(teacher, student, attention_mask) -> torch.Tensor:
    """METHODS.md item 1: per layer, P[i, :] = softmax over valid j != i of cos(h_i, h_j); KL(P_T || P_S)
    summed over layers, sentences and valid rows i, / (K * sum_b n_b^2)."""
    teacher, student, valid, lengths, K = _setup(teacher, student, attention_mask)
    keep = valid[:, :, None] & valid[:, None, :] & off_diagonal(valid.shape[1], valid.device)  # (B, n, n)
    total = _pair_kl(torch.stack(teacher, 1), torch.stack(student, 1), keep[:, None])  # states (B, K, n, d)
    return total / (K * lengths.pow(2).sum()).clamp_min(1)


def ltr_pair(teacher, student, attention_mask) -> torch.Tensor:
    """METHODS.md item 2: per valid token, P[a, :] = softmax over b != a of cos(e_a, e_b), e_1..e_K its
    mapped-layer vectors; KL(P_T || P_S) summed, / (K^2 * sum_b n_b)."""
    teacher, student, valid, lengths, K = _setup(teacher, student, attention_mask)
    keep = valid[:, :, None, None] & off_diagonal(K, valid.device)  # (B, n, K, K)
    total = _pair_kl(torch.stack(teacher, 2), torch.stack(student, 2), keep)  # states (B, n, K, d)
    return total / (K * K * lengths.sum()).clamp_min(1)


def wr_triple(teacher, student, attention_mask, *, window: int | None = DEFAULT_WINDOW,
              released_window_quirks: bool = False) -> torch.Tensor:
    """METHODS.md item 3: (psi_S(i; j, k) - psi_T(i; j, k))^2 summed over layers, sentences, valid centres i
    and neighbours j, k.

    window w (odd): j, k in i-(w-1)/2 .. i+(w-1)/2, / (K * sum_b n_b * w^2); described: a neighbour counts
    only if it is a valid in-sentence position; released_window_quirks: positions clamped to [0, n-1]
    (edge positions repeat) and padding neighbours count. window None: all valid i, j, k, / (K * sum_b n_b^3).
    """
    teacher, student, valid, lengths, K = _setup(teacher, student, attention_mask)
    B, n = valid.shape
    if window is None:
        neighbours = None
        keep = valid[:, :, None, None] & valid[:, None, :, None] & valid[:, None, None, :]  # (B, n, n, n)
        denominator = K * lengths.pow(3).sum()
    else:
        r = (window - 1) // 2
        pos = torch.arange(n, device=valid.device)[:, None] + torch.arange(-r, r + 1, device=valid.device)  # (n, w)
        neighbours = pos.clamp(0, n - 1)
        if released_window_quirks:  # only the centre is masked
            keep_j = valid[:, :, None].expand(B, n, window)
        else:
            keep_j = valid[:, :, None] & (pos == neighbours) & valid[:, neighbours]  # (B, n, w)
        keep = keep_j[..., :, None] & keep_j[..., None, :]  # (B, n, w, w)
        denominator = K * lengths.sum() * window**2
    h_t, h_s = torch.stack(teacher, 1).detach(), torch.stack(student, 1)  # (B, K, n, d)
    squared = (angles(h_s, neighbours) - angles(h_t, neighbours)).square()  # (B, K, n, n or w, n or w)
    return torch.where(keep[:, None], squared, 0).sum() / denominator.clamp_min(1)


def ltr_triple(teacher, student, attention_mask) -> torch.Tensor:
    """METHODS.md item 4: per valid token, (psi_S(a; b, c) - psi_T(a; b, c))^2 over all K^3 triples of its
    mapped-layer vectors, summed, / (K^3 * sum_b n_b)."""
    teacher, student, valid, lengths, K = _setup(teacher, student, attention_mask)
    e_t, e_s = torch.stack(teacher, 2).detach(), torch.stack(student, 2)  # (B, n, K, d)
    squared = (angles(e_s) - angles(e_t)).square().sum(dim=(-3, -2, -1))  # (B, n)
    return torch.where(valid, squared, 0).sum() / (K**3 * lengths.sum()).clamp_min(1)


DENSE = {"wr_pair": wr_pair, "ltr_pair": ltr_pair, "wr_triple": wr_triple, "ltr_triple": ltr_triple}
