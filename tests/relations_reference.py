"""Slow, obviously-correct references for ckd.losses.relations, straight from METHODS.md.

Explicit Python loops over layers, sentences, tokens and neighbours; every angle is computed from
the raw difference vectors (no Gram trick), every softmax over an explicit list of kept entries.
Everything is float64 and differentiable (torch ops on scalars), so gradients can be compared too.
"""

from __future__ import annotations

import torch


def _lengths(mask):
    return [int(m.sum()) for m in (mask != 0)]


def _unit(v):
    norm = torch.linalg.vector_norm(v)
    return v / norm if float(norm.detach()) > 0 else torch.zeros_like(v)


def _cos(a, b):
    return torch.dot(a, b) / (torch.linalg.vector_norm(a) * torch.linalg.vector_norm(b))


def _kl_row(logits_t, logits_s):
    p_t = torch.softmax(torch.stack(logits_t), dim=0)
    log_p_t = torch.log_softmax(torch.stack(logits_t), dim=0)
    log_p_s = torch.log_softmax(torch.stack(logits_s), dim=0)
    return (p_t * (log_p_t - log_p_s)).sum()


def _angle(h, i, j, k):
    """psi(i; j, k) for the rows of h (a (m, d) tensor), from the difference vectors."""
    return torch.dot(_unit(h[j] - h[i]), _unit(h[k] - h[i]))


def ref_wr_pair(teacher, student, mask):
    valid = mask != 0
    K, (B, n) = len(student), valid.shape
    total = torch.zeros((), dtype=torch.float64)
    for layer in range(K):
        for b in range(B):
            t, s = teacher[layer][b].double().detach(), student[layer][b].double()
            for i in range(n):
                if not valid[b, i]:
                    continue
                cols = [j for j in range(n) if j != i and valid[b, j]]
                if cols:
                    total = total + _kl_row([_cos(t[i], t[j]) for j in cols], [_cos(s[i], s[j]) for j in cols])
    return total / (K * sum(x * x for x in _lengths(mask)))


def ref_ltr_pair(teacher, student, mask):
    valid = mask != 0
    K, (B, n) = len(student), valid.shape
    total = torch.zeros((), dtype=torch.float64)
    for b in range(B):
        for i in range(n):
            if not valid[b, i]:
                continue
            t = [teacher[layer][b, i].double().detach() for layer in range(K)]
            s = [student[layer][b, i].double() for layer in range(K)]
            for a in range(K):
                cols = [c for c in range(K) if c != a]
                if cols:
                    total = total + _kl_row([_cos(t[a], t[c]) for c in cols], [_cos(s[a], s[c]) for c in cols])
    return total / (K * K * sum(_lengths(mask)))


def ref_ltr_triple(teacher, student, mask):
    valid = mask != 0
    K, (B, n) = len(student), valid.shape
    total = torch.zeros((), dtype=torch.float64)
    for b in range(B):
        for i in range(n):
            if not valid[b, i]:
                continue
            t = torch.stack([teacher[layer][b, i].double().detach() for layer in range(K)])
            s = torch.stack([student[layer][b, i].double() for layer in range(K)])
            for a in range(K):
                for c in range(K):
                    for e in range(K):
                        total = total + (_angle(s, a, c, e) - _angle(t, a, c, e)) ** 2
    return total / (K**3 * sum(_lengths(mask)))


def ref_wr_triple(teacher, student, mask, window=21, released_window_quirks=False):
    valid = mask != 0
    K, (B, n) = len(student), valid.shape
    lengths = _lengths(mask)
    total = torch.zeros((), dtype=torch.float64)
    for layer in range(K):
        for b in range(B):
            t, s = teacher[layer][b].double().detach(), student[layer][b].double()
            for i in range(n):
                if not valid[b, i]:
                    continue
                if window is None:
                    neighbours = [j for j in range(n) if valid[b, j]]
                elif released_window_quirks:
                    r = (window - 1) // 2
                    neighbours = [min(max(i + o, 0), n - 1) for o in range(-r, r + 1)]
                else:
                    r = (window - 1) // 2
                    neighbours = [i + o for o in range(-r, r + 1) if 0 <= i + o < n and valid[b, i + o]]
                # unit difference vectors from the centre, one per distinct neighbour
                u_s = {j: _unit(s[j] - s[i]) for j in set(neighbours)}
                u_t = {j: _unit(t[j] - t[i]) for j in set(neighbours)}
                for j in neighbours:
                    for k in neighbours:
                        total = total + (torch.dot(u_s[j], u_s[k]) - torch.dot(u_t[j], u_t[k])) ** 2
    if window is None:
        return total / (K * sum(x**3 for x in lengths))
    return total / (K * sum(lengths) * window**2)
