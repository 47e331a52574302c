"""Metrics against tiny fixtures whose values are worked out by hand in the comments."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

from kdpipe.evaluation.metrics import compute_metrics, is_better
from kdpipe.data.tasks import TaskSpec, get_task

BINARY = TaskSpec("bin", "classification", ("neg", "pos"), 1, ("accuracy", "f1", "matthews"), "accuracy")
THREE = TaskSpec("three", "classification", ("a", "b", "c"), 1, ("accuracy", "macro_f1"), "accuracy")
REG = TaskSpec("reg", "regression", None, 2, ("pearson", "spearman"), "pearson")


def logits_for(classes: list[int], num_labels: int) -> np.ndarray:
    """Logits whose argmax is ``classes``."""
    out = np.zeros((len(classes), num_labels), dtype=np.float32)
    out[np.arange(len(classes)), classes] = 3.0
    return out


def test_accuracy_f1_matthews_binary_by_hand():
    gold = np.array([1, 1, 1, 1, 0, 0, 0])
    pred = [1, 1, 1, 0, 0, 0, 1]
    # TP=3 FN=1 TN=2 FP=1
    out = compute_metrics(BINARY, logits_for(pred, 2), gold)
    assert set(out) == {"accuracy", "f1", "matthews"}
    assert all(type(v) is float for v in out.values())
    assert out["accuracy"] == pytest.approx(5 / 7)
    # precision 3/4, recall 3/4 -> F1 = 3/4
    assert out["f1"] == pytest.approx(0.75)
    # MCC = (TP*TN - FP*FN) / sqrt((TP+FP)(TP+FN)(TN+FP)(TN+FN)) = (6-1)/sqrt(4*4*3*3) = 5/12
    assert out["matthews"] == pytest.approx(5 / 12)


def test_f1_uses_class_one_as_positive():
    gold = np.array([0, 0, 0, 1])
    pred = [0, 0, 1, 1]
    # positive class 1: TP=1 FP=1 FN=0 -> P=1/2 R=1 -> F1 = 2/3 (class 0 would give 4/5)
    assert compute_metrics(BINARY, logits_for(pred, 2), gold)["f1"] == pytest.approx(2 / 3)


def test_macro_f1_three_classes_by_hand():
    gold = np.array([0, 0, 1, 1, 2, 2])
    pred = [0, 1, 1, 1, 2, 0]
    # class 0: TP=1 FP=1 FN=1 -> F1 1/2; class 1: TP=2 FP=1 FN=0 -> F1 4/5; class 2: TP=1 FP=0 FN=1 -> F1 2/3
    out = compute_metrics(THREE, logits_for(pred, 3), gold)
    assert out["macro_f1"] == pytest.approx((1 / 2 + 4 / 5 + 2 / 3) / 3)
    assert out["accuracy"] == pytest.approx(4 / 6)


def test_class_ids_are_accepted_instead_of_logits():
    gold = np.array([0, 1, 2])
    assert compute_metrics(THREE, np.array([0, 1, 1]), gold)["accuracy"] == pytest.approx(2 / 3)


def test_pearson_three_points_by_hand():
    # x = 1,2,3 ; y = 1,2,4: sum dx*dy = 3, |dx| = sqrt 2, |dy| = sqrt(42)/3 -> r = 9/sqrt(84)
    out = compute_metrics(REG, np.array([1.0, 2.0, 3.0]), np.array([1.0, 2.0, 4.0]))
    assert out["pearson"] == pytest.approx(9 / math.sqrt(84))
    # same ranks -> Spearman 1
    assert out["spearman"] == pytest.approx(1.0)


def test_spearman_by_hand_and_column_predictions():
    # ranks x = 1,2,3 ; y = 3,1,2 -> d = -2,1,1, sum d^2 = 6 -> rho = 1 - 6*6/(3*(9-1)) = -0.5
    out = compute_metrics(REG, np.array([[1.0], [2.0], [3.0]]), np.array([3.0, 1.0, 2.0]))
    assert out["spearman"] == pytest.approx(-0.5)
    assert type(out["pearson"]) is float


def test_degenerate_inputs_give_zero_without_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        reg = compute_metrics(REG, np.full(4, 2.5), np.array([1.0, 2.0, 3.0, 4.0]))
        assert reg == {"pearson": 0.0, "spearman": 0.0}
        assert compute_metrics(REG, np.array([1.0]), np.array([2.0])) == {"pearson": 0.0, "spearman": 0.0}
        # constant predictions of class 0: no positives predicted -> F1 0, MCC 0
        cls = compute_metrics(BINARY, logits_for([0, 0, 0, 0], 2), np.array([0, 1, 0, 1]))
        assert cls == {"accuracy": 0.5, "f1": 0.0, "matthews": 0.0}


def test_registry_specs_produce_exactly_their_metrics():
    gold = np.array([0, 1, 1, 0])
    for name in ("cola", "mrpc", "rte", "tweets"):
        spec = get_task(name)
        labels = gold % spec.num_labels
        out = compute_metrics(spec, logits_for(list(labels), spec.num_labels), labels)
        assert tuple(out) == spec.metrics
        assert out[spec.main_metric] == pytest.approx(1.0)
    stsb = get_task("stsb")
    assert tuple(compute_metrics(stsb, np.array([0.1, 2.0, 4.9]), np.array([0.0, 2.5, 5.0]))) == stsb.metrics


def test_bad_shapes_raise():
    with pytest.raises(ValueError, match="3 columns"):
        compute_metrics(BINARY, np.zeros((2, 3)), np.array([0, 1]))
    with pytest.raises(ValueError, match="labels have shape"):
        compute_metrics(BINARY, np.zeros((2, 2)), np.array([0, 1, 1]))
    with pytest.raises(ValueError, match="regression"):
        compute_metrics(REG, np.zeros((2, 2)), np.array([0.0, 1.0]))
    with pytest.raises(ValueError, match="zero examples"):
        compute_metrics(REG, np.zeros(0), np.zeros(0))


def test_is_better_higher_wins_ties_and_nan_lose():
    spec = get_task("mrpc")
    assert is_better(spec, 0.81, 0.80)
    assert not is_better(spec, 0.80, 0.81)
    assert not is_better(spec, 0.80, 0.80)
    assert is_better(spec, 0.1, float("nan"))
    assert not is_better(spec, float("nan"), 0.1)
    assert is_better(get_task("stsb"), -0.1, -0.2)
