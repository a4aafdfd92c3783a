import math

import numpy as np
import pytest

from ckd.metrics import accuracy, compute_metrics, f1, mcc, pearson, report_values, spearman

# predictions / labels for the hand computations below:
#   tp = 2 (rows 0, 1), fn = 1 (row 2), fp = 1 (row 3), tn = 2 (rows 4, 5)
PRED = [1, 1, 0, 1, 0, 0]
GOLD = [1, 1, 1, 0, 0, 0]


def test_accuracy_by_hand():
    assert accuracy(PRED, GOLD) == pytest.approx(4 / 6)


def test_f1_by_hand():
    # precision 2/3, recall 2/3 -> f1 2/3
    assert f1(PRED, GOLD) == pytest.approx(2 / 3)
    # tp 1, fp 0, fn 2: precision 1, recall 1/3 -> f1 = 2 * 1/3 / (4/3) = 0.5
    assert f1([1, 0, 0, 0], [1, 1, 1, 0]) == pytest.approx(0.5)


def test_f1_no_positive_predictions_is_zero():
    assert f1([0, 0, 0], [1, 0, 1]) == 0.0


def test_mcc_by_hand():
    # (tp*tn - fp*fn) / sqrt((tp+fp)(tp+fn)(tn+fp)(tn+fn)) = (4 - 1) / sqrt(3*3*3*3) = 1/3
    assert mcc(PRED, GOLD) == pytest.approx(1 / 3)
    assert mcc([1, 1, 1, 1], GOLD[:4]) == 0.0  # constant predictions


def test_pearson_and_spearman_by_hand():
    x = [1.0, 2.0, 3.0, 4.0]
    y = [1.0, 3.0, 2.0, 4.0]
    # deviations x (-1.5, -.5, .5, 1.5), y (-1.5, .5, -.5, 1.5): sum of products 2.25 - .25 - .25 + 2.25 = 4,
    # sums of squares 5 and 5 -> r = 4 / 5
    assert pearson(x, y) == pytest.approx(0.8)
    # ranks equal the values: same 0.8
    assert spearman(x, y) == pytest.approx(0.8)
    # monotone but not linear: spearman 1, pearson below 1
    assert spearman([1, 2, 3, 10], [1, 2, 3, 4]) == pytest.approx(1.0)
    assert pearson([1, 2, 3, 10], [1, 2, 3, 4]) < 0.95


def test_constant_predictions_give_zero_correlation():
    assert pearson([2.0, 2.0, 2.0], [1.0, 2.0, 3.0]) == 0.0
    assert spearman([2.0, 2.0, 2.0], [1.0, 2.0, 3.0]) == 0.0
    assert math.isnan(pearson([1.0, float("nan"), 2.0], [1.0, 2.0, 3.0]))


def test_compute_metrics_per_task():
    assert compute_metrics("mrpc", PRED, GOLD) == {"f1": pytest.approx(2 / 3), "accuracy": pytest.approx(4 / 6)}
    assert compute_metrics("CoLA", PRED, GOLD) == {"mcc": pytest.approx(1 / 3)}
    assert compute_metrics("rte", PRED, GOLD) == {"accuracy": pytest.approx(4 / 6)}
    # (N, C) scores are reduced with argmax
    logits = np.array([[0.1, 0.9, 0.0], [2.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    assert compute_metrics("mnli", logits, [1, 0, 1]) == {"accuracy": pytest.approx(2 / 3)}
    stsb = compute_metrics("stsb", np.array([[1.0], [2.0], [3.0], [4.0]]), [1.0, 3.0, 2.0, 4.0])
    assert stsb == {"pearson": pytest.approx(0.8), "spearman": pytest.approx(0.8)}


def test_length_mismatch_is_an_error():
    with pytest.raises(ValueError, match="equal length"):
        accuracy([1, 0], [1])
    with pytest.raises(ValueError, match="at least one"):
        accuracy([], [])


def test_report_values():
    split_metrics = {"dev_matched": {"accuracy": 0.84}, "dev_mismatched": {"accuracy": 0.83}}
    assert report_values("mnli", split_metrics) == {"MNLI-m": 0.84, "MNLI-mm": 0.83}
    assert report_values("mrpc", {"dev": {"f1": 0.89, "accuracy": 0.85}}) == {"MRPC": 0.89}
    assert report_values("stsb", {"dev": {"pearson": 0.88, "spearman": 0.87}}) == {"STS-B": 0.87}
    assert report_values("syn-pair", {"dev": {"accuracy": 0.7}}) == {"Syn-Pair": 0.7}
    assert report_values("mnli", {"dev_matched": {"accuracy": 0.84}}) == {"MNLI-m": 0.84}  # missing split left out
