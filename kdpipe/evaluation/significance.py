"""Is a difference between two models real?  The tests the reports and the int8 gate use.

- ``paired_difference``: the main-metric difference of two models scored on the same examples,
  with a percentile interval from ``scipy.stats.bootstrap`` (paired: each resample draws the
  same examples for both models, and for every seed of each: seeds' predictions are pooled).  The metric is recomputed on every resample, so the interval
  holds for metrics that are not a mean over examples (F1, Matthews, Pearson) as for accuracy.
- ``verdict``: "better" when the whole interval lies above zero, "worse" when below, otherwise
  "no detectable difference": never a bare ranking of noise.
- ``almost_stochastic_order``: deepsig's ε_min over seeds (Dror et al. 2019, as implemented by
  Ulmer et al. 2022), for runs trained under several seeds.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
from scipy.stats import bootstrap

from kdpipe.data.tasks import TaskSpec
from kdpipe.evaluation.metrics import compute_metrics, entity_counts, entity_f1, predicted_values, qa_metric, qa_scores
from kdpipe.evaluation.verdicts import BETTER, TIE, WORSE, verdict

__all__ = ["BETTER", "TIE", "WORSE", "verdict", "Difference", "paired_difference", "metric_interval",
           "almost_stochastic_order", "almost_stochastic_orders", "seed_values", "RESAMPLES", "CONFIDENCE", "ASO_THRESHOLD"]

# Percentile intervals, not BCa: BCa's jackknife costs one metric call per example (40k on QQP).
# With 1000 resamples the bounds move by about 2 % of the interval's width from seed to seed
# (measured on RTE and MRPC); the fixed seed makes every verdict reproducible.
RESAMPLES = 1000
CONFIDENCE = 0.95
SEED = 0
_BATCH = 100  # resamples held at once: memory is batch x examples
# ASO: ε_min below this says A is better than B (Ulmer et al.'s recommended threshold).
ASO_THRESHOLD = 0.2



@dataclass(frozen=True)
class Difference:
    """metric(A) - metric(B) on the same examples, and its bootstrap interval."""

    observed: float
    low: float
    high: float
    confidence: float = CONFIDENCE

    @property
    def verdict(self) -> str:
        return verdict(self.low, self.high)


def _example_bootstrap(n: int, statistic, resamples: int, confidence: float, seed: int) -> tuple[float, float]:
    """scipy's percentile bootstrap over the N examples: ``statistic(idx)`` is recomputed on each
    resample's example indices, so every model (and every seed of it) sees the same draw."""
    result = bootstrap((np.arange(n),), statistic, vectorized=False, n_resamples=resamples, batch=_BATCH,
                       confidence_level=confidence, method="percentile", rng=np.random.default_rng(seed))
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


def seed_values(spec: TaskSpec, outputs, labels: np.ndarray | None = None) -> np.ndarray:
    """``[S, N]`` predicted values of one model: ``outputs`` is one array (logits ``[N, C]``,
    class ids or scores ``[N]``) or a list of them, one per seed, on the same N examples (as many
    as ``labels``, when given)."""
    many = list(outputs) if isinstance(outputs, (list, tuple)) else [outputs]
    if spec.problem == "tagging":  # per example: its entity counts (metrics.entity_counts), [S, N, 3]
        if labels is None:
            raise ValueError("tagging outputs are scored per example against their labels: pass labels")
        values = [entity_counts(spec, o, labels) for o in many]
    elif spec.problem == "qa":  # per question: its (exact match, F1) against its references, [S, Q, 2]
        if labels is None:
            raise ValueError("QA answers are scored per question against their references: pass labels")
        values = [qa_scores(o, labels) for o in many]
    else:
        values = [predicted_values(spec, o) for o in many]
    if not values or len({len(v) for v in values}) != 1:
        raise ValueError(f"need one or more seeds' outputs on the same examples; got lengths {[len(v) for v in values]}")
    if labels is not None and not len(values[0]) == len(labels) > 0:
        raise ValueError(f"need the same, non-zero number of outputs and labels; got {len(values[0])}, {len(labels)}")
    return np.stack(values)


def _pooled_metric(spec: TaskSpec):
    """metric(values [S, N], gold [N]): the main metric of every seed's predictions pooled (for
    accuracy, the mean over seeds), the score a multi-seed run is compared by."""
    main = dataclasses.replace(spec, metrics=(spec.main_metric,))
    if spec.problem == "tagging":  # values: entity counts [S, N, 3]; F1 of their sums
        return lambda values, gold: entity_f1(values)
    if spec.problem == "qa":  # values: per-question scores [S, Q, 2]; the mean of the main one
        return lambda values, gold: qa_metric(values, spec.main_metric)

    def metric(values: np.ndarray, gold: np.ndarray) -> float:
        return compute_metrics(main, values.ravel(), np.tile(gold, len(values)))[spec.main_metric]
    return metric


def paired_difference(spec: TaskSpec, outputs_a, outputs_b, labels: np.ndarray, resamples: int = RESAMPLES,
                      confidence: float = CONFIDENCE, seed: int = SEED) -> Difference:
    """``spec.main_metric`` of A minus that of B, both scored against ``labels`` on the same N
    examples.  ``outputs_*``: logits ``[N, C]``, class ids ``[N]`` or scores ``[N]``, or a list of
    those, one per seed (predictions pooled across seeds; each resample draws the same examples
    for every seed of both models)."""
    gold = np.asarray(labels)
    a, b = seed_values(spec, outputs_a, gold), seed_values(spec, outputs_b, gold)
    metric = _pooled_metric(spec)
    observed = metric(a, gold) - metric(b, gold)
    if a.shape == b.shape and np.array_equal(a, b):  # every resample gives 0 (scipy: degenerate distribution)
        return Difference(0.0, 0.0, 0.0, confidence)
    low, high = _example_bootstrap(len(gold), lambda i: metric(a[:, i], gold[i]) - metric(b[:, i], gold[i]),
                                   resamples, confidence, seed)
    return Difference(observed, low, high, confidence)


def metric_interval(spec: TaskSpec, outputs, labels: np.ndarray, resamples: int = RESAMPLES,
                    confidence: float = CONFIDENCE, seed: int = SEED) -> tuple[float, float, float]:
    """(value, low, high): ``spec.main_metric`` of one model on N examples (one array, or a list
    of them, one per seed, pooled) and its bootstrap percentile interval: the dev set's own noise."""
    gold = np.asarray(labels)
    values = seed_values(spec, outputs, gold)
    metric = _pooled_metric(spec)
    value = metric(values, gold)
    low, high = _example_bootstrap(len(gold), lambda i: metric(values[:, i], gold[i]), resamples, confidence, seed)
    if np.isnan(low) or np.isnan(high):  # every resample gave the same score (all right, or all wrong)
        low = high = value
    return value, low, high


def almost_stochastic_order(scores_a, scores_b, confidence: float = CONFIDENCE, seed: int = SEED) -> float:
    """ε_min of "A is stochastically better than B" over per-seed scores (higher = better):
    below ``ASO_THRESHOLD`` A is better, 0.5 and above it is not; two seeds each at least."""
    from deepsig import aso

    if len(scores_a) < 2 or len(scores_b) < 2:
        raise ValueError("almost stochastic order needs at least two seeds per model")
    return float(aso(list(scores_a), list(scores_b), confidence_level=confidence, show_progress=False, seed=seed))


def almost_stochastic_orders(pairs, jobs: int = 1, confidence: float = CONFIDENCE, seed: int = SEED) -> list[float]:
    """``almost_stochastic_order`` of each ``(scores_a, scores_b)`` of ``pairs``, in order, over
    ``jobs`` processes: deepsig's bootstrap is pure Python (3.4 s a pair on this 2-core CPU,
    whatever the number of seeds), so pairs run side by side; each result is the same as alone."""
    pairs = [(list(a), list(b)) for a, b in pairs]
    if jobs <= 1 or len(pairs) < 2:
        return [almost_stochastic_order(a, b, confidence, seed) for a, b in pairs]
    from joblib import Parallel, delayed

    return Parallel(n_jobs=min(jobs, len(pairs)))(delayed(almost_stochastic_order)(a, b, confidence, seed)
                                                  for a, b in pairs)
