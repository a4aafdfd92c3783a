"""`Example`: one labelled text (or text pair), the unit every data source produces."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Example:
    text_a: str
    text_b: str | None
    label: int | float  # index into TaskSpec.labels, or the float score for regression
    guid: str  # "<file>:<line>" for TSV rows, "<split>-<i>" otherwise
