"""Dense CKD relation terms, computed the way the authors' released code computes them: the mapped
layers stacked into one tensor, explicit difference vectors gathered per centre token ((B*K, n, w, d)
for a window, (B*K, n, n, d) for all triples, (B*n, K, K, d) across layers), normalised, and angle
matrices from batched matrix products.

This is the benchmark's baseline only. It differs from the released code where METHODS.md asks it
to, so that its values equal ckd.losses.relations: finite mask fill instead of -inf in the pair
softmaxes, the described neighbour masking (or the clamped, centre-only released quirks), and the
METHODS.md denominators. Arguments are those of ckd.losses.relations.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

_FILL = -1e4


def _stack(layers, dim: int) -> torch.Tensor:
    return torch.stack(list(layers), dim=dim)


def _pair_kl(t_d, s_d, mask, keep):
    """The released WR_Dist / LTR_Dist ("cos", "kldiv") on (rows, m, m) cosines: masked softmaxes
    multiplied by the mask, then kl_div summed. -inf fills replaced by a finite one (see METHODS.md)."""
    with torch.no_grad():
        t_d = (t_d * mask).masked_fill(~keep, _FILL).masked_fill(mask == 0, _FILL)
        t_d = F.softmax(t_d, dim=-1) * mask
    s_d = (s_d * mask).masked_fill(~keep, _FILL).masked_fill(mask == 0, _FILL)
    s_d = F.log_softmax(s_d, dim=-1) * mask
    return F.kl_div(s_d, t_d, reduction="sum")


def _cosine_matrices(t_embed: torch.Tensor, s_embed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Batched cosine matrices of (N, m, d) rows; the teacher's without gradient."""
    with torch.no_grad():
        t_norm = F.normalize(t_embed, p=2, dim=2)
        t_d = torch.bmm(t_norm, t_norm.transpose(1, 2))
    s_norm = F.normalize(s_embed, p=2, dim=2)
    return t_d, torch.bmm(s_norm, s_norm.transpose(1, 2))


def dense_wr_pair(teacher, student, attention_mask):
    t_embed, s_embed = _stack(teacher, 1), _stack(student, 1)  # (B, K, n, d), as the released code gets them
    B, K, n, _ = t_embed.shape
    t_embed, s_embed = t_embed.flatten(0, 1), s_embed.flatten(0, 1)
    m = attention_mask.float()
    mask = (m.unsqueeze(2) * m.unsqueeze(1)).unsqueeze(1).repeat(1, K, 1, 1).view(-1, n, n)
    off_diagonal = ~torch.eye(n, dtype=torch.bool, device=attention_mask.device)
    t_d, s_d = _cosine_matrices(t_embed, s_embed)
    return _pair_kl(t_d, s_d, mask, off_diagonal) / mask.sum().item()


def dense_ltr_pair(teacher, student, attention_mask):
    t_embed, s_embed = _stack(teacher, 1), _stack(student, 1)
    B, K, n, _ = t_embed.shape
    t_embed = t_embed.transpose(1, 2).reshape(B * n, K, -1)  # (B*n, K, d)
    s_embed = s_embed.transpose(1, 2).reshape(B * n, K, -1)
    mask = attention_mask.float().reshape(-1, 1, 1).repeat(1, K, K)
    off_diagonal = ~torch.eye(K, dtype=torch.bool, device=attention_mask.device)
    t_d, s_d = _cosine_matrices(t_embed, s_embed)
    return _pair_kl(t_d, s_d, mask, off_diagonal) / mask.sum().item()


def _angles(points: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    """points (..., m, d) around centres (..., d): (..., m, m) cosines of the unit differences."""
    sub = F.normalize(points - centres.unsqueeze(-2), p=2, dim=-1)
    flat = sub.flatten(0, -3)
    return torch.bmm(flat, flat.transpose(1, 2)).view(*sub.shape[:-1], sub.shape[-2])


def dense_ltr_triple(teacher, student, attention_mask):
    valid = attention_mask != 0
    K = len(student)

    def angles(layers):  # (B*n, K, K, K): the K x K x d differences of each token's layer vectors
        e = _stack(layers, 2).flatten(0, 1)
        return _angles(e.unsqueeze(1).expand(-1, K, -1, -1), e)

    with torch.no_grad():
        psi_t = angles(teacher)
    keep = valid.reshape(-1, 1, 1, 1)
    total = ((angles(student) - psi_t) * keep).square().sum()
    return total / (K**3 * valid.sum())


def dense_wr_triple(teacher, student, attention_mask, *, window=21, released_window_quirks=False):
    valid = attention_mask != 0
    K, (B, n) = len(student), valid.shape
    if window is None:
        return _dense_full_triple(teacher, student, valid)
    radius = (window - 1) // 2
    pos = torch.arange(n, device=valid.device).unsqueeze(1) + torch.arange(-radius, radius + 1, device=valid.device)
    idx = pos.clamp(0, n - 1)  # (n, w), edge positions repeated as in the released code
    if released_window_quirks:
        keep_j = valid.unsqueeze(-1).expand(B, n, window)
    else:
        keep_j = valid.unsqueeze(-1) & (pos >= 0) & (pos < n) & valid[:, idx]
    keep = (keep_j.unsqueeze(-1) & keep_j.unsqueeze(-2)).repeat_interleave(K, 0)  # (B*K, n, w, w)

    def angles(layers):  # (B*K, n, w, d) gathered neighbours -> (B*K, n, w, w)
        h = _stack(layers, 1).flatten(0, 1)
        return _angles(h[:, idx], h)

    with torch.no_grad():
        psi_t = angles(teacher)
    total = ((angles(student) - psi_t) * keep).square().sum()
    return total / (K * valid.sum() * window**2)


def _dense_full_triple(teacher, student, valid):
    K, n = len(student), valid.shape[1]
    keep = valid[:, :, None, None] & valid[:, None, :, None] & valid[:, None, None, :]
    keep = keep.repeat_interleave(K, 0)  # (B*K, n, n, n)

    def angles(layers):  # (B*K, n, n, d) differences -> (B*K, n, n, n)
        h = _stack(layers, 1).flatten(0, 1)
        return _angles(h.unsqueeze(1).expand(-1, n, -1, -1), h)

    with torch.no_grad():
        psi_t = angles(teacher)
    total = ((angles(student) - psi_t) * keep).square().sum()
    return total / (K * valid.sum(1).double().pow(3).sum())


DENSE = {
    "wr_pair": dense_wr_pair,
    "ltr_pair": dense_ltr_pair,
    "ltr_triple": dense_ltr_triple,
    "wr_triple": dense_wr_triple,
}


def dense_bytes(term: str, K: int, B: int, n: int, d: int, window: int | None = 21, itemsize: int = 4) -> int:
    """Size of one of the largest intermediates the dense term builds (used to estimate what cannot run)."""
    if term == "wr_triple":
        m = n if window is None else window
        return B * K * n * m * d * itemsize
    if term == "ltr_triple":
        return B * n * K * K * d * itemsize
    return B * K * n * d * itemsize
