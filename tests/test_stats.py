"""Statistics checked against hand-computed values and exhaustive enumeration of every resample."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from scipy.stats import spearmanr

from ckd.stats import (
    SeedPair,
    canonical_metric,
    mean_std,
    metric_value,
    paired_bootstrap,
    sign_flip_test,
    weighted_regression_metric,
)


def test_mean_std_by_hand():
    mean, std, n = mean_std([1.0, 2.0, 3.0, 4.0])
    assert (mean, n) == (2.5, 4)
    assert std == pytest.approx(math.sqrt(5 / 3))  # squared deviations 2.25+0.25+0.25+2.25 = 5, / (n-1)
    mean, std, n = mean_std([0.7])
    assert mean == 0.7 and math.isnan(std) and n == 1
    mean, std, n = mean_std([None, float("nan")])
    assert n == 0 and math.isnan(mean)


def test_metrics_by_hand():
    labels = [1, 1, 1, 0, 0, 0]
    preds = [1, 1, 0, 1, 0, 0]  # tp=2 fn=1 fp=1 tn=2
    assert metric_value("accuracy", labels, preds, is_regression=False) == pytest.approx(4 / 6)
    assert metric_value("f1", labels, preds, is_regression=False) == pytest.approx(2 * 2 / (2 * 2 + 1 + 1))
    # mcc = (tp*tn - fp*fn) / sqrt((tp+fp)(tp+fn)(tn+fp)(tn+fn)) = (4 - 1) / sqrt(3*3*3*3) = 1/3
    assert metric_value("matthews_corr", labels, preds, is_regression=False) == pytest.approx(1 / 3)
    assert metric_value("spearman", [1.0, 2.0, 3.0, 4.0], [10.0, 30.0, 20.0, 40.0], is_regression=True) == pytest.approx(0.8)
    assert canonical_metric("Spearmanr") == "spearman" and canonical_metric("mcc") == "mcc"


def test_weighted_spearman_equals_spearman_of_the_resample():
    rng = np.random.default_rng(3)
    y = rng.normal(size=30).round(1)  # rounding makes ties
    p = (y + rng.normal(size=30)).round(1)
    idx = rng.integers(0, 30, size=30)
    weights = np.bincount(idx, minlength=30)[None, :]
    assert weighted_regression_metric(y, p, weights, "spearman")[0] == pytest.approx(spearmanr(y[idx], p[idx])[0])


def test_bootstrap_strictly_better_and_identical():
    labels = [0, 1, 2, 1, 0, 2, 1, 0]
    wrong = [(y + 1) % 3 for y in labels]
    pairs = [SeedPair(s, labels, labels, wrong) for s in (1, 2)]
    result = paired_bootstrap(pairs, "accuracy", is_regression=False, num_labels=3, n_boot=2000)
    assert result.diff == 1.0 and result.p_value == 0.0 and (result.ci_low, result.ci_high) == (1.0, 1.0)

    same = [SeedPair(s, labels, wrong, wrong) for s in (1, 2)]
    for alternative in ("greater", "two-sided"):
        result = paired_bootstrap(same, "mcc", is_regression=False, num_labels=3, n_boot=500, alternative=alternative)
        assert result.diff == 0.0 and result.p_value == 1.0 and result.ci_low == result.ci_high == 0.0

    # (with very few examples a resample of one repeated example has zero variance and scores 0 for both)
    y = [0.1 * i for i in range(12)]
    result = paired_bootstrap([SeedPair(0, y, y, y[::-1])], "spearman", is_regression=True, n_boot=500)
    assert result.diff == pytest.approx(2.0) and result.p_value == 0.0


def _exhaustive_p(seeds, score):
    """Exact bootstrap p: every combination of index tuples (one per seed), each equally likely."""
    per_seed = []
    for labels, method, baseline in seeds:
        n = len(labels)
        diffs = []
        for idx in itertools.product(range(n), repeat=n):
            pick = lambda xs, idx=idx: [xs[i] for i in idx]  # noqa: E731
            diffs.append(score(pick(labels), pick(method)) - score(pick(labels), pick(baseline)))
        per_seed.append(diffs)
    combos = [np.mean(c) for c in itertools.product(*per_seed)]
    return float(np.mean(np.array(combos) <= 1e-12))


def test_bootstrap_matches_exhaustive_enumeration():
    # one seed, accuracy, n=4: method right on examples 0,1,2, baseline right on 0 and 3
    labels = [1, 0, 1, 0]
    seed1 = (labels, [1, 0, 1, 1], [1, 1, 0, 0])
    acc = lambda y, p: metric_value("accuracy", y, p, is_regression=False)  # noqa: E731
    exact = _exhaustive_p([seed1], acc)
    result = paired_bootstrap([SeedPair(1, *seed1)], "accuracy", is_regression=False, n_boot=40000, seed=1)
    assert result.p_value == pytest.approx(exact, abs=0.01)

    # F1 (not a mean over examples) pooled over two seeds of 4 examples: 256 x 256 combinations
    f1 = lambda y, p: metric_value("f1", y, p, is_regression=False)  # noqa: E731
    seed2 = ([1, 1, 0, 0], [1, 0, 1, 0], [0, 1, 0, 0])
    exact = _exhaustive_p([seed1, seed2], f1)
    result = paired_bootstrap([SeedPair(1, *seed1), SeedPair(2, *seed2)], "f1", is_regression=False,
                              n_boot=40000, seed=2)
    assert 0.05 < exact < 0.95
    assert result.p_value == pytest.approx(exact, abs=0.01)


def test_regression_bootstrap_matches_exhaustive_enumeration():
    y = [0.0, 1.0, 2.0, 3.0]
    method, baseline = [0.2, 0.8, 2.5, 2.9], [0.5, 0.1, 2.0, 3.5]
    spear = lambda a, b: metric_value("spearman", a, b, is_regression=True)  # noqa: E731
    exact = _exhaustive_p([(y, method, baseline)], spear)
    result = paired_bootstrap([SeedPair(0, y, method, baseline)], "spearman", is_regression=True, n_boot=40000, seed=3)
    assert result.p_value == pytest.approx(exact, abs=0.01)


def test_sign_flip_by_hand():
    assert sign_flip_test([1.0, 2.0, 3.0]) == pytest.approx(1 / 8)  # only all-positive reaches the observed mean
    assert sign_flip_test([0.0, 0.0, 0.0]) == 1.0
    # d = (-1, 2, 3): signed sums 4, 6, 0, 2, -2, 0, -6, -4; observed 4 -> {4, 6}; two-sided |s| >= 4 -> 4 of 8
    assert sign_flip_test([-1.0, 2.0, 3.0]) == pytest.approx(2 / 8)
    assert sign_flip_test([-1.0, 2.0, 3.0], alternative="two-sided") == pytest.approx(4 / 8)
    assert sign_flip_test([1.0] * 20, n_perm=20000, seed=0) < 0.001


def test_sign_flip_equals_enumerating_every_sign_pattern():
    """The scipy-based test against a brute-force reference: all 2^k sign patterns of the seed differences."""
    rng = np.random.default_rng(3)
    for k in range(1, 8):
        for trial in range(6):
            d = rng.normal(0.2, 1.0, size=k).round(1 if trial % 2 else 6)
            means = [np.mean(np.multiply(signs, d)) for signs in itertools.product((-1, 1), repeat=k)]
            greater = np.mean([m >= d.mean() - 1e-12 for m in means])
            two_sided = np.mean([abs(m) >= abs(d.mean()) - 1e-12 for m in means])
            assert sign_flip_test(d) == pytest.approx(greater), d
            assert sign_flip_test(d, alternative="two-sided") == pytest.approx(two_sided), d
    with pytest.raises(ValueError, match="alternative"):
        sign_flip_test([1.0, 2.0], alternative="less")


@pytest.mark.parametrize("num_labels", [2, 3])
def test_bootstrap_metrics_agree_with_the_reported_metrics(num_labels):
    """stats.py scores a bootstrap draw from a confusion matrix (classification) or example weights
    (regression); on all examples it must give what ckd.metrics (scikit-learn, scipy) reports."""
    from ckd import metrics

    rng = np.random.default_rng(num_labels)
    for trial in range(20):
        n = int(rng.integers(5, 60))
        labels = rng.integers(0, num_labels, size=n)
        predictions = np.where(rng.random(n) < 0.7, labels, rng.integers(0, num_labels, size=n))
        if trial == 0:
            predictions = np.zeros(n, dtype=int)  # one class predicted: MCC 0, F1 0 (no positive prediction)
        names = ("accuracy", "mcc") + (("f1",) if num_labels == 2 else ())
        for name in names:
            ours = metric_value(name, labels, predictions, is_regression=False, num_labels=num_labels)
            assert ours == pytest.approx(metrics.METRICS[name](predictions, labels), abs=1e-12), (name, trial)
        gold = rng.normal(size=n)
        guess = gold + rng.normal(scale=0.5, size=n)
        if trial == 1:
            guess = np.full(n, 2.5)  # constant predictions: both give 0, not NaN
        if trial == 2:
            gold, guess = np.round(gold), np.round(guess)  # ties in the ranks
        for name in ("pearson", "spearman"):
            ours = metric_value(name, gold, guess, is_regression=True)
            assert ours == pytest.approx(metrics.METRICS[name](guess, gold), abs=1e-10), (name, trial)
