"""The benchmark's baseline: the dense definition of the CKD relation terms (ckd.losses.relations_dense),
which builds explicit cosine, difference-vector and angle tensors much as the authors' released code
does ((B, K, n, w, d) gathered neighbours for a window, (B, K, n, n, d) for all triples, (B, n, K, K, d)
across layers), and the size of those intermediates. Arguments are those of ckd.losses.relations.
"""

from __future__ import annotations

from ckd.losses.relations_dense import DENSE

__all__ = ["DENSE", "dense_bytes"]


def dense_bytes(term: str, K: int, B: int, n: int, d: int, window: int | None = 21, itemsize: int = 4) -> int:
    """Size of one of the largest intermediates the dense term builds (used to estimate what cannot run)."""
    if term == "wr_triple":
        m = n if window is None else window
        return B * K * n * m * d * itemsize
    if term == "ltr_triple":
        return B * n * K * K * d * itemsize
    return B * K * n * d * itemsize
