"""Distillation losses as plain functions on tensors (the library entry point):

    from ckd.losses import wr_pair, wr_triple, ltr_pair, ltr_triple

CKD's relation terms (`relations`, the fast Gram-based engine used for training; `relations_dense`,
the same four losses written formula by formula as explicit tensors, which the tests, the benchmark
baseline and the relation explorer share) and the baselines' losses (`logits`, `pkd`, `tinybert`, `minilm`,
`distilbert`); shapes, normalisers and sources are in each function's docstring and docs/methods.md.
Importing this package needs only torch.
"""

from ckd.losses.relations import DEFAULT_WINDOW, ltr_pair, ltr_triple, wr_pair, wr_triple

__all__ = ["wr_pair", "wr_triple", "ltr_pair", "ltr_triple", "DEFAULT_WINDOW"]
