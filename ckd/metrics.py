"""GLUE metrics (scikit-learn / scipy) as fractions in 0..1, and the task's report columns.

Degenerate inputs: Pearson and Spearman are undefined when either side is constant (scipy returns
nan with a warning). We return 0.0 there, "no linear/rank relation", the same convention
scikit-learn uses for the Matthews correlation; it keeps best-on-dev selection and averages over
seeds well defined. F1 with no predicted or no true positives is 0.0 (zero_division=0).
Non-finite regression predictions (a diverged run) give nan, which is reported as such.
"""

from __future__ import annotations

import math
import warnings

import numpy as np

from ckd.data.tasks import TaskSpec, get_task


def accuracy(predictions, labels) -> float:
    predictions, labels = _pair(predictions, labels)
    return float(np.mean(predictions == labels))


def f1(predictions, labels) -> float:
    """Binary F1 of the positive class 1 (MRPC "equivalent", QQP "duplicate")."""
    predictions, labels = _pair(predictions, labels)
    from sklearn.metrics import f1_score  # imported on use: it costs a second at start-up

    return float(f1_score(labels, predictions, pos_label=1, average="binary", zero_division=0))


def mcc(predictions, labels) -> float:
    predictions, labels = _pair(predictions, labels)
    from sklearn.metrics import matthews_corrcoef

    return float(matthews_corrcoef(labels, predictions))


def pearson(predictions, labels) -> float:
    from scipy import stats

    return _correlation(stats.pearsonr, predictions, labels)


def spearman(predictions, labels) -> float:
    from scipy import stats

    return _correlation(stats.spearmanr, predictions, labels)


METRICS = {"accuracy": accuracy, "f1": f1, "mcc": mcc, "pearson": pearson, "spearman": spearman}


def compute_metrics(task: str | TaskSpec, predictions, labels) -> dict[str, float]:
    """The task's metrics. Predictions are class indices (or (N, C) scores, argmax taken) or floats."""
    task = get_task(task)
    predictions = np.asarray(predictions)
    if task.is_regression:
        if predictions.ndim == 2 and predictions.shape[1] == 1:
            predictions = predictions[:, 0]
        predictions = predictions.astype(float)
    elif predictions.ndim == 2:
        predictions = predictions.argmax(axis=1)
    return {name: METRICS[name](predictions, labels) for name in task.metrics}


def report_values(task: str | TaskSpec, split_metrics: dict[str, dict[str, float]]) -> dict[str, float]:
    """Report columns (e.g. {"MNLI-m": .., "MNLI-mm": ..}) from {split: {metric: value}}.

    Columns whose split or metric is absent are left out rather than filled with nan.
    """
    task = get_task(task)
    values = {}
    for column, split, metric in task.report:
        value = split_metrics.get(split, {}).get(metric)
        if value is not None:
            values[column] = float(value)
    return values


def _pair(predictions, labels) -> tuple[np.ndarray, np.ndarray]:
    predictions, labels = np.asarray(predictions), np.asarray(labels)
    if predictions.shape != labels.shape or predictions.ndim != 1:
        raise ValueError(f"predictions {predictions.shape} and labels {labels.shape} must be 1-D and of equal length")
    if len(labels) == 0:
        raise ValueError("metrics need at least one example")
    return predictions, labels


def _correlation(function, predictions, labels) -> float:
    predictions, labels = _pair(np.asarray(predictions, dtype=float), np.asarray(labels, dtype=float))
    if not (np.isfinite(predictions).all() and np.isfinite(labels).all()):
        return math.nan
    if np.ptp(predictions) == 0 or np.ptp(labels) == 0 or len(labels) < 2:
        return 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(function(predictions, labels)[0])
