"""Contextual Knowledge Distillation (CKD) and baselines for BERT-style models on GLUE."""

__version__ = "0.1.0"
