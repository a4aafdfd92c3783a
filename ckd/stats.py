"""Summary statistics and paired significance tests (pure numpy, seeded).

Metrics are computed from sufficient statistics so a bootstrap draw costs little:
classification metrics from a confusion matrix (rows = gold label, columns = prediction),
regression metrics from per-example weights (how often each example was drawn).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

METRIC_ALIASES = {
    "accuracy": ("accuracy", "acc"),
    "f1": ("f1", "f1_score", "binary_f1"),
    "mcc": ("mcc", "matthews", "matthews_corr", "matthews_corrcoef", "matthews_correlation"),
    "pearson": ("pearson", "pearsonr", "pearson_r", "pearson_corr"),
    "spearman": ("spearman", "spearmanr", "spearman_r", "spearman_corr", "spearmanr_corr"),
    "acc_and_f1": ("acc_and_f1", "accuracy_and_f1"),
    "corr": ("corr", "pearson_and_spearman", "pearson_spearman", "spearman_pearson"),
}
CLASSIFICATION_METRICS = ("accuracy", "f1", "mcc", "acc_and_f1")
REGRESSION_METRICS = ("pearson", "spearman", "corr")
_ALIAS_TO_CANONICAL = {alias: name for name, aliases in METRIC_ALIASES.items() for alias in aliases}


def canonical_metric(name: str) -> str | None:
    """'matthews_corr' -> 'mcc', 'Spearmanr' -> 'spearman'; None when unknown."""
    return _ALIAS_TO_CANONICAL.get(str(name).strip().lower().replace("-", "_").replace(" ", "_"))


def lookup_metric(values: dict, name: str) -> float | None:
    """values[name], or the entry whose key is an alias of the same metric."""
    if name in values:
        return values[name]
    wanted = canonical_metric(name)
    if wanted is None:
        return None
    for key, value in values.items():
        if canonical_metric(key) == wanted:
            return value
    return None


def mean_std(values: Iterable[float | None]) -> tuple[float, float, int]:
    """(mean, sample std with ddof=1, n) over the finite values; std is NaN when n < 2, mean NaN when n = 0."""
    clean = np.array([v for v in values if v is not None and math.isfinite(v)], dtype=float)
    n = int(clean.size)
    mean = float(clean.mean()) if n else math.nan
    std = float(clean.std(ddof=1)) if n > 1 else math.nan
    return mean, std, n


# ---------------------------------------------------------------- metrics


def metric_from_confusion(confusion: np.ndarray, metric: str) -> np.ndarray:
    """Classification metric over the last two axes of `confusion` (..., K, K); F1 takes class 1 as positive."""
    name = canonical_metric(metric)
    conf = np.asarray(confusion, dtype=float)
    total = conf.sum(axis=(-2, -1))
    correct = np.trace(conf, axis1=-2, axis2=-1)
    if name == "accuracy":
        return _safe_divide(correct, total)
    if name == "f1":
        tp = conf[..., 1, 1]
        fp = conf[..., :, 1].sum(axis=-1) - tp
        fn = conf[..., 1, :].sum(axis=-1) - tp
        return _safe_divide(2 * tp, 2 * tp + fp + fn)
    if name == "mcc":
        true_counts = conf.sum(axis=-1)
        pred_counts = conf.sum(axis=-2)
        cov_tp = correct * total - (true_counts * pred_counts).sum(axis=-1)
        cov_pp = total**2 - (pred_counts**2).sum(axis=-1)
        cov_tt = total**2 - (true_counts**2).sum(axis=-1)
        return _safe_divide(cov_tp, np.sqrt(cov_pp * cov_tt))
    if name == "acc_and_f1":
        return (metric_from_confusion(conf, "accuracy") + metric_from_confusion(conf, "f1")) / 2
    raise ValueError(f"unknown classification metric {metric!r}; known: {', '.join(CLASSIFICATION_METRICS)}")


def weighted_regression_metric(labels: np.ndarray, predictions: np.ndarray, weights: np.ndarray, metric: str) -> np.ndarray:
    """Regression metric for each row of `weights` (draws, n): weight = times an example was drawn."""
    name = canonical_metric(metric)
    y = np.asarray(labels, dtype=float)
    p = np.asarray(predictions, dtype=float)
    w = np.atleast_2d(np.asarray(weights, dtype=float))
    if name == "pearson":
        return _weighted_pearson(y[None, :], p[None, :], w)
    if name == "spearman":
        return _weighted_pearson(_weighted_ranks(y, w), _weighted_ranks(p, w), w)
    if name == "corr":
        return (weighted_regression_metric(y, p, w, "pearson") + weighted_regression_metric(y, p, w, "spearman")) / 2
    raise ValueError(f"unknown regression metric {metric!r}; known: {', '.join(REGRESSION_METRICS)}")


def confusion_matrix(labels: Sequence, predictions: Sequence, num_labels: int) -> np.ndarray:
    y, p = _as_classes(labels, num_labels), _as_classes(predictions, num_labels)
    return np.bincount(y * num_labels + p, minlength=num_labels * num_labels).reshape(num_labels, num_labels)


def metric_value(metric: str, labels: Sequence, predictions: Sequence, *, is_regression: bool, num_labels: int | None = None) -> float:
    """A metric over all examples (no resampling)."""
    if is_regression:
        return float(weighted_regression_metric(labels, predictions, np.ones((1, len(labels))), metric)[0])
    k = num_labels or _infer_num_labels(labels, predictions)
    return float(metric_from_confusion(confusion_matrix(labels, predictions, k), metric))


def is_known_metric(metric: str, *, is_regression: bool) -> bool:
    return canonical_metric(metric) in (REGRESSION_METRICS if is_regression else CLASSIFICATION_METRICS)


# ---------------------------------------------------------------- tests


@dataclass(frozen=True)
class SeedPair:
    """One seed's dev predictions of the method and the baseline on the same examples."""

    seed: int
    labels: Sequence
    method: Sequence
    baseline: Sequence


@dataclass(frozen=True)
class BootstrapResult:
    diff: float              # mean over seeds of metric(method) - metric(baseline), on all examples
    ci_low: float            # 2.5th percentile of the bootstrap differences
    ci_high: float           # 97.5th percentile
    p_value: float
    alternative: str
    n_seeds: int
    n_boot: int
    seed_diffs: tuple[float, ...] = field(default_factory=tuple)


def paired_bootstrap(
    pairs: Sequence[SeedPair],
    metric: str,
    *,
    is_regression: bool,
    num_labels: int | None = None,
    n_boot: int = 10000,
    seed: int = 0,
    alternative: str = "greater",
    chunk: int = 500,
) -> BootstrapResult:
    """Paired bootstrap over dev examples, pooled across seeds.

    Each draw resamples the examples of every seed independently (with replacement, n out of n),
    scores method and baseline on the same resampled examples, and averages the difference over
    seeds. alternative="greater": p = share of draws with difference <= 0 (evidence that the method
    beats the baseline); "two-sided": p = 2 * min(share <= 0, share >= 0), capped at 1.
    """
    if alternative not in ("greater", "two-sided"):
        raise ValueError(f"alternative must be 'greater' or 'two-sided', not {alternative!r}")
    if not pairs:
        raise ValueError("paired_bootstrap needs at least one seed pair")
    rng = np.random.default_rng(seed)
    boot = np.zeros(n_boot)
    seed_diffs = []
    for pair in pairs:
        if not (len(pair.labels) == len(pair.method) == len(pair.baseline)) or len(pair.labels) == 0:
            raise ValueError(f"seed {pair.seed}: labels and predictions must be non-empty and of equal length")
        if is_regression:
            observed, draws = _regression_draws(pair, metric, rng, n_boot, chunk)
        else:
            observed, draws = _classification_draws(pair, metric, num_labels, rng, n_boot)
        seed_diffs.append(observed)
        boot += draws
    boot /= len(pairs)
    diff = float(np.mean(seed_diffs))
    # differences are exact zeros for identical predictions; a tiny tolerance keeps float noise out
    tol = 1e-12
    below = float(np.mean(boot <= tol))
    above = float(np.mean(boot >= -tol))
    p = below if alternative == "greater" else min(1.0, 2 * min(below, above))
    low, high = np.percentile(boot, [2.5, 97.5])
    return BootstrapResult(diff, float(low), float(high), p, alternative, len(pairs), n_boot, tuple(seed_diffs))


def sign_flip_test(diffs: Sequence[float], *, alternative: str = "greater", n_perm: int | None = None, seed: int = 0) -> float:
    """Permutation test on seed-level differences: flip the sign of each difference at random
    (`scipy.stats.permutation_test`, one sample, permutation_type="samples"; statistic: the mean).

    Exact (all 2^k sign patterns) for k <= 16 seeds unless n_perm is given; otherwise n_perm (default
    100000) random patterns, seeded, with scipy's +1 correction. The smallest attainable exact p is
    1/2^k, so with 3 seeds p >= 0.125. "greater": share of patterns whose mean is at least the observed
    one; "two-sided": 2 * the smaller one-sided p, capped at 1 (the share with |mean| >= |observed|).
    """
    from scipy import stats as scipy_stats

    if alternative not in ("greater", "two-sided"):
        raise ValueError(f"alternative must be 'greater' or 'two-sided', not {alternative!r}")
    d = np.asarray(diffs, dtype=float)
    k = d.size
    if k == 0:
        raise ValueError("sign_flip_test needs at least one difference")
    if k == 1:  # scipy wants two observations; the two patterns are +d and -d
        return 0.5 if alternative == "greater" and d[0] > 0 else 1.0
    exact = n_perm is None and k <= 16
    result = scipy_stats.permutation_test(
        (d,), np.mean, permutation_type="samples", vectorized=True, alternative=alternative,
        n_resamples=np.inf if exact else (n_perm or 100000), random_state=np.random.default_rng(seed),  # rng= from scipy 1.15
    )
    return float(result.pvalue)


# ---------------------------------------------------------------- internals


def _classification_draws(pair: SeedPair, metric: str, num_labels: int | None, rng, n_boot: int):
    k = num_labels or _infer_num_labels(pair.labels, pair.method, pair.baseline)
    y = _as_classes(pair.labels, k)
    m = _as_classes(pair.method, k)
    b = _as_classes(pair.baseline, k)
    n = y.size
    # Resampling n examples with replacement only changes how often each (label, method, baseline)
    # combination occurs: a multinomial draw over the K^3 combinations is the same distribution.
    cells = np.bincount((y * k + m) * k + b, minlength=k**3)
    counts = rng.multinomial(n, cells / n, size=n_boot).reshape(n_boot, k, k, k)
    draws = metric_from_confusion(counts.sum(axis=3), metric) - metric_from_confusion(counts.sum(axis=2), metric)
    full = cells.reshape(k, k, k)
    observed = float(metric_from_confusion(full.sum(axis=2), metric) - metric_from_confusion(full.sum(axis=1), metric))
    return observed, draws


def _regression_draws(pair: SeedPair, metric: str, rng, n_boot: int, chunk: int):
    y = np.asarray(pair.labels, dtype=float)
    m = np.asarray(pair.method, dtype=float)
    b = np.asarray(pair.baseline, dtype=float)
    n = y.size
    ones = np.ones((1, n))
    observed = float(weighted_regression_metric(y, m, ones, metric)[0] - weighted_regression_metric(y, b, ones, metric)[0])
    draws = np.empty(n_boot)
    for start in range(0, n_boot, chunk):
        size = min(chunk, n_boot - start)
        idx = rng.integers(0, n, size=(size, n))
        offsets = (idx + np.arange(size)[:, None] * n).ravel()
        weights = np.bincount(offsets, minlength=size * n).reshape(size, n)
        draws[start : start + size] = _regression_diff(y, m, b, weights, metric)
    return observed, draws


def _regression_diff(y, m, b, w, metric: str) -> np.ndarray:
    """metric(y, m) - metric(y, b) per row of w, ranking the labels once for both."""
    name = canonical_metric(metric)
    if name == "corr":
        return (_regression_diff(y, m, b, w, "pearson") + _regression_diff(y, m, b, w, "spearman")) / 2
    if name == "spearman":
        ry = _weighted_ranks(y, w)
        return _weighted_pearson(ry, _weighted_ranks(m, w), w) - _weighted_pearson(ry, _weighted_ranks(b, w), w)
    return weighted_regression_metric(y, m, w, metric) - weighted_regression_metric(y, b, w, metric)


def _weighted_pearson(x: np.ndarray, y: np.ndarray, w: np.ndarray) -> np.ndarray:
    total = w.sum(axis=1, keepdims=True)
    xc = x - (w * x).sum(axis=1, keepdims=True) / total
    yc = y - (w * y).sum(axis=1, keepdims=True) / total
    cov = (w * xc * yc).sum(axis=1)
    var = (w * xc * xc).sum(axis=1) * (w * yc * yc).sum(axis=1)
    return _safe_divide(cov, np.sqrt(var))


def _weighted_ranks(values: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Average (tie-aware, 1-based) ranks each example would have in the sample that `w` describes."""
    order = np.argsort(values, kind="stable")
    ordered = values[order]
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
    group_sorted = np.cumsum(np.r_[True, ordered[1:] != ordered[:-1]]) - 1
    group = np.empty_like(group_sorted)
    group[order] = group_sorted
    group_weight = np.add.reduceat(w[:, order], starts, axis=1)
    before = np.cumsum(group_weight, axis=1) - group_weight
    group_rank = before + (group_weight + 1) / 2
    return group_rank[:, group]


def _safe_divide(num, den):
    num = np.asarray(num, dtype=float)
    den = np.asarray(den, dtype=float)
    out = np.zeros(np.broadcast(num, den).shape)
    np.divide(num, den, out=out, where=den > 0)
    return out if out.ndim else float(out)


def _as_classes(values: Sequence, num_labels: int) -> np.ndarray:
    array = np.asarray(values)
    classes = np.rint(array.astype(float)).astype(np.int64)
    if array.size and (not np.allclose(classes, array.astype(float)) or classes.min() < 0 or classes.max() >= num_labels):
        raise ValueError(f"class predictions must be integers in [0, {num_labels}), got {array[:5].tolist()}...")
    return classes


def _infer_num_labels(*arrays: Sequence) -> int:
    largest = max((int(round(float(v))) for a in arrays for v in a), default=1)
    return max(2, largest + 1)


__all__ = [
    "BootstrapResult",
    "SeedPair",
    "canonical_metric",
    "confusion_matrix",
    "is_known_metric",
    "lookup_metric",
    "mean_std",
    "metric_from_confusion",
    "metric_value",
    "paired_bootstrap",
    "sign_flip_test",
    "weighted_regression_metric",
]
