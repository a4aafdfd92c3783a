"""Loop references for the CKD relation terms, straight from METHODS.md: the independent check of the
dense definition (ckd.losses.relations_dense), which in turn is the reference of the fast engine.

Explicit Python loops over layers, sentences, tokens and neighbours on lists of vectors; every angle
from the raw difference vectors, every softmax over an explicit list of kept entries. Float64 and
differentiable (torch ops on scalars), so gradients can be compared too. Slow: small inputs only.
"""

from __future__ import annotations

import torch


def _unit(v):
    norm = torch.linalg.vector_norm(v)
    return v / norm if float(norm.detach()) > 0 else torch.zeros_like(v)


def _cos(a, b):
    return torch.dot(_unit(a), _unit(b))


def _pair_kl(t, s):
    """Sum over rows a of KL(P_T[a] || P_S[a]), P[a] = softmax over b != a of cos(v_a, v_b), for lists of vectors."""
    total = torch.zeros((), dtype=torch.float64)
    for a in range(len(s)):
        others = [b for b in range(len(s)) if b != a]
        if others:
            log_p_t = torch.log_softmax(torch.stack([_cos(t[a], t[b]) for b in others]), dim=0)
            log_p_s = torch.log_softmax(torch.stack([_cos(s[a], s[b]) for b in others]), dim=0)
            total = total + (log_p_t.exp() * (log_p_t - log_p_s)).sum()
    return total


def _angle_error(t, s, i, neighbours):
    """Sum over j, k in neighbours of (psi_S(i; j, k) - psi_T(i; j, k))^2 for lists (or index-able) vectors."""
    u_t = {j: _unit(t[j] - t[i]) for j in set(neighbours)}
    u_s = {j: _unit(s[j] - s[i]) for j in set(neighbours)}
    return sum((torch.dot(u_s[j], u_s[k]) - torch.dot(u_t[j], u_t[k])) ** 2 for j in neighbours for k in neighbours)


def _sides(teacher, student, layer, b):
    return teacher[layer][b].double().detach(), student[layer][b].double()


def _layer_vectors(teacher, student, b, i):
    K = len(student)
    return ([teacher[k][b, i].double().detach() for k in range(K)], [student[k][b, i].double() for k in range(K)])


def ref_wr_pair(teacher, student, mask):
    valid = (mask != 0).tolist()
    total = sum(_pair_kl(*[[h[i] for i, ok in enumerate(row) if ok] for h in _sides(teacher, student, layer, b)])
                for layer in range(len(student)) for b, row in enumerate(valid))
    return total / (len(student) * sum(sum(row) ** 2 for row in valid))


def ref_ltr_pair(teacher, student, mask):
    valid = (mask != 0).tolist()
    total = sum(_pair_kl(*_layer_vectors(teacher, student, b, i)) for b, row in enumerate(valid) for i, ok in enumerate(row) if ok)
    return total / (len(student) ** 2 * sum(map(sum, valid)))


def ref_ltr_triple(teacher, student, mask):
    valid, K = (mask != 0).tolist(), len(student)
    total = sum(_angle_error(*_layer_vectors(teacher, student, b, i), a, range(K))
                for b, row in enumerate(valid) for i, ok in enumerate(row) if ok for a in range(K))
    return total / (K**3 * sum(map(sum, valid)))


def ref_wr_triple(teacher, student, mask, window=21, released_window_quirks=False):
    valid, K = (mask != 0).tolist(), len(student)
    total = torch.zeros((), dtype=torch.float64)
    for layer in range(K):
        for b, row in enumerate(valid):
            n = len(row)
            for i in (i for i in range(n) if row[i]):
                if window is None:
                    neighbours = [j for j in range(n) if row[j]]
                elif released_window_quirks:  # clamped positions, padding counted
                    neighbours = [min(max(i + o, 0), n - 1) for o in range(-(window // 2), window // 2 + 1)]
                else:
                    neighbours = [i + o for o in range(-(window // 2), window // 2 + 1) if 0 <= i + o < n and row[i + o]]
                total = total + _angle_error(*_sides(teacher, student, layer, b), i, neighbours)
    if window is None:
        return total / (K * sum(sum(row) ** 3 for row in valid))
    return total / (K * sum(map(sum, valid)) * window**2)
