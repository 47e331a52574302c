"""The comparison statistics on constructed cases whose answer is known (kdpipe/evaluation/significance.py)."""

from __future__ import annotations

import numpy as np
import pytest

from kdpipe.data.tasks import TaskSpec
from kdpipe.evaluation.significance import (ASO_THRESHOLD, BETTER, TIE, WORSE, almost_stochastic_order, almost_stochastic_orders,
                                            paired_difference, verdict)

BINARY = TaskSpec("t", "classification", ("neg", "pos"), 1, ("accuracy",), "accuracy")
MATTHEWS = TaskSpec("cola", "classification", ("bad", "ok"), 1, ("matthews",), "matthews")


def _clearly_better_model(n=1000, accuracy=0.9, seed=0):
    rng = np.random.default_rng(seed)
    gold = rng.integers(0, 2, n)
    pred = gold.copy()
    wrong = rng.choice(n, int(n * (1 - accuracy)), replace=False)
    pred[wrong] = 1 - pred[wrong]
    return gold, pred


def test_two_identical_models_show_no_detectable_difference():
    gold, pred = _clearly_better_model()
    d = paired_difference(BINARY, pred, pred.copy(), gold)
    assert (d.observed, d.low, d.high) == (0.0, 0.0, 0.0) and d.verdict == TIE


def test_flipping_a_fifth_of_a_clearly_better_models_right_answers_is_worse():
    gold, good = _clearly_better_model()
    worse = good.copy()
    right = np.flatnonzero(good == gold)
    flipped = np.random.default_rng(1).choice(right, len(right) // 5, replace=False)
    worse[flipped] = 1 - worse[flipped]
    d = paired_difference(BINARY, worse, good, gold)
    assert d.observed == pytest.approx(-len(flipped) / len(gold))  # -0.18
    assert d.high < 0 and d.verdict == WORSE
    assert paired_difference(BINARY, good, worse, gold).verdict == BETTER
    assert d.low <= d.observed <= d.high


def test_a_handful_of_flips_either_way_is_a_tie():
    gold, a = _clearly_better_model(n=500)
    b = a.copy()
    b[[3, 17, 99]] = 1 - b[[3, 17, 99]]  # three answers differ: noise on 500 examples
    d = paired_difference(BINARY, a, b, gold)
    assert d.verdict == TIE and d.low <= 0 <= d.high


def test_non_decomposable_metrics_and_logits_work_and_the_interval_is_seeded():
    gold, good = _clearly_better_model(n=400)
    worse = np.where(np.arange(400) % 3 == 0, 1 - good, good)
    logits = np.stack([-worse, worse], axis=1).astype(np.float32)  # argmax = worse
    first = paired_difference(MATTHEWS, logits, good, gold)
    assert first == paired_difference(MATTHEWS, logits, good, gold)
    assert first.verdict == WORSE and first.observed < -0.3


def test_verdict_reads_only_the_interval():
    assert verdict(0.001, 0.2) == BETTER and verdict(-0.2, -0.001) == WORSE
    assert verdict(-0.1, 0.1) == TIE and verdict(0.0, 0.1) == TIE


def test_mismatched_lengths_are_refused():
    with pytest.raises(ValueError, match="same, non-zero number"):
        paired_difference(BINARY, np.array([0, 1]), np.array([0, 1, 1]), np.array([0, 1]))


def test_almost_stochastic_order_over_seeds():
    better = [0.81, 0.80, 0.82, 0.79, 0.81]
    worse = [0.70, 0.72, 0.71, 0.69, 0.70]
    assert almost_stochastic_order(better, worse) < ASO_THRESHOLD
    assert almost_stochastic_order(worse, better) > 0.5
    with pytest.raises(ValueError, match="two seeds"):
        almost_stochastic_order([0.8], worse)


def test_almost_stochastic_orders_in_parallel_equal_each_alone_in_order():
    better, worse = [0.81, 0.80, 0.82], [0.70, 0.72, 0.71]
    pairs = [(better, worse), (worse, better)]
    together = almost_stochastic_orders(pairs, jobs=2)
    assert together == [almost_stochastic_order(a, b) for a, b in pairs]
    assert together[0] < ASO_THRESHOLD < 0.5 < together[1]


def test_metric_interval_matches_the_binomial_interval_of_accuracy():
    """800 of 1,000 right: the normal-approximation 95 % interval is 0.8 +- 1.96 sqrt(.8 .2 / 1000)
    = 0.8 +- 0.0248; the bootstrap percentile interval agrees to a few thousandths."""
    from kdpipe.evaluation.significance import metric_interval
    labels = np.zeros(1000, dtype=int)
    predictions = np.r_[np.zeros(800, dtype=int), np.ones(200, dtype=int)]
    value, low, high = metric_interval(BINARY, predictions, labels)
    assert value == pytest.approx(0.8)
    assert low == pytest.approx(0.8 - 0.0248, abs=0.004) and high == pytest.approx(0.8 + 0.0248, abs=0.004)
    assert metric_interval(BINARY, labels, labels) == (1.0, 1.0, 1.0)  # no spread: the point itself


def _flip_right_answers(pred, gold, share, seed):
    out = pred.copy()
    right = np.flatnonzero(pred == gold)
    flipped = np.random.default_rng(seed).choice(right, int(len(right) * share), replace=False)
    out[flipped] = 1 - out[flipped]
    return out


def test_seeds_pool_their_predictions_and_every_seed_sees_the_same_examples():
    from kdpipe.evaluation.significance import metric_interval, seed_values

    gold, good = _clearly_better_model(n=600)
    seeds = [_flip_right_answers(good, gold, 0.02 * k, seed=k) for k in (1, 2, 3)]  # three seeds of one run
    value, low, high = metric_interval(BINARY, seeds, gold)
    assert value == pytest.approx(np.mean([(s == gold).mean() for s in seeds]))  # accuracy pooled = seed mean
    assert low < value < high
    assert seed_values(BINARY, seeds).shape == (3, 600)
    # a run against itself, seed for seed: no difference at all
    same = paired_difference(BINARY, seeds, [s.copy() for s in seeds], gold)
    assert (same.observed, same.low, same.high, same.verdict) == (0.0, 0.0, 0.0, TIE)
    # three seeds that each flip a fifth of the better run's right answers: worse, whatever its seed count
    worse = [_flip_right_answers(good, gold, 0.2, seed=10 + k) for k in range(3)]
    d = paired_difference(BINARY, worse, seeds[:2], gold)
    assert d.verdict == WORSE and d.high < 0
    assert d.observed == pytest.approx(np.mean([(w == gold).mean() for w in worse])
                                       - np.mean([(s == gold).mean() for s in seeds[:2]]))
    # the interval resamples examples, not (seed, example) pairs: pooling copies of one seed is not evidence
    one = paired_difference(BINARY, worse[0], seeds[0], gold)
    copies = paired_difference(BINARY, [worse[0]] * 3, [seeds[0]] * 3, gold)
    assert (copies.low, copies.high) == pytest.approx((one.low, one.high))
    with pytest.raises(ValueError, match="same examples"):
        seed_values(BINARY, [good, good[:10]])


def test_evaluate_compares_runs_over_their_seeds_and_adds_aso_from_three_seeds():
    from kdpipe.pipeline.evaluate import add_comparisons, combine_seeds

    gold, good = _clearly_better_model(n=400)
    runs = {"finetune": [_flip_right_answers(good, gold, 0.25, seed=20 + k) for k in range(3)],
            "vanilla_kd": [_flip_right_answers(good, gold, 0.01 * k, seed=k) for k in range(3)],
            "pkd": [_flip_right_answers(good, gold, 0.01 * k, seed=k) for k in range(2)]}  # two seeds only
    acc = lambda pred: float((pred == gold).mean())  # noqa: E731
    students = {}
    for name, preds in runs.items():
        students[name] = combine_seeds({7 + k: {"dev": {"accuracy": acc(p)}} for k, p in enumerate(preds)})
        students[name]["method"] = name
    report = {"main_metric": "accuracy", "teacher": {"dev": {"accuracy": acc(good)}}, "students": students}
    kd = students["vanilla_kd"]
    assert kd["seeds"] == [7, 8, 9] and kd["dev"]["accuracy"] == pytest.approx(np.mean([acc(p) for p in runs["vanilla_kd"]]))
    assert kd["dev_std"]["accuracy"] == pytest.approx(np.std([acc(p) for p in runs["vanilla_kd"]], ddof=1))
    add_comparisons(report, BINARY, {"teacher": [good], **runs}, gold)
    assert report["comparisons"] == {"finetune": "finetune", "vanilla_kd": "vanilla_kd", "best": "pkd"}
    versus = kd["versus"]["finetune"]
    assert versus["verdict"] == BETTER and versus["aso"] < ASO_THRESHOLD  # three seeds each, clearly better
    assert students["finetune"]["versus"]["vanilla_kd"]["verdict"] == WORSE
    assert "aso" not in kd["versus"]["best"]  # pkd has two seeds
    assert "vanilla_kd" not in kd["versus"]
