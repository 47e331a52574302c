"""Task metrics computed from raw model outputs, with scikit-learn and scipy only.

Every metric here is "higher is better", so checkpoint selection needs no per-metric sign.
Degenerate inputs (a constant prediction vector, a single example) give 0.0 instead of NaN or a
warning: early in training a student often predicts one class, and that must not break the
best-checkpoint comparison or flood the log.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from kdpipe.data.conll import IGNORE
from kdpipe.data.squad import object_array
from kdpipe.data.tasks import KNOWN_METRICS, QA_METRICS, TaskSpec


def _accuracy(pred: np.ndarray, gold: np.ndarray) -> float:
    return float(np.mean(pred == gold))


def _f1(pred: np.ndarray, gold: np.ndarray) -> float:
    from sklearn.metrics import f1_score

    # Binary F1 of class 1 (GLUE's MRPC/QQP convention); no positives anywhere -> 0.0, silently.
    return float(f1_score(gold, pred, average="binary", pos_label=1, zero_division=0))


def _macro_f1(pred: np.ndarray, gold: np.ndarray) -> float:
    from sklearn.metrics import f1_score

    return float(f1_score(gold, pred, average="macro", zero_division=0))


def _matthews(pred: np.ndarray, gold: np.ndarray) -> float:
    from sklearn.metrics import matthews_corrcoef

    return float(matthews_corrcoef(gold, pred))


def _degenerate(pred: np.ndarray, gold: np.ndarray) -> bool:
    # Correlation is undefined for fewer than two points or a constant vector; scipy would warn
    # and return NaN.
    return len(pred) < 2 or bool(np.all(pred == pred[0])) or bool(np.all(gold == gold[0]))


def _pearson(pred: np.ndarray, gold: np.ndarray) -> float:
    from scipy.stats import pearsonr

    if _degenerate(pred, gold):
        return 0.0
    return float(pearsonr(pred, gold)[0])


def _spearman(pred: np.ndarray, gold: np.ndarray) -> float:
    from scipy.stats import spearmanr

    if _degenerate(pred, gold):
        return 0.0
    return float(spearmanr(pred, gold)[0])


_METRICS: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {
    "accuracy": _accuracy,
    "f1": _f1,
    "macro_f1": _macro_f1,
    "matthews": _matthews,
    "pearson": _pearson,
    "spearman": _spearman,
}


def predicted_values(spec: TaskSpec, predictions: np.ndarray) -> np.ndarray:
    """Turn raw model outputs into class ids (classification) or scores (regression).

    Classification accepts logits ``[N, C]`` (argmax) or already-decided class ids ``[N]``;
    regression accepts ``[N]`` or ``[N, 1]``.
    """
    if spec.problem == "qa":  # already decided: each question's answer text
        return object_array(predictions)
    predictions = np.asarray(predictions)
    if spec.problem == "tagging":  # logits [N, W, C] -> tag ids [N, W]
        return predictions.argmax(-1) if predictions.ndim == 3 else predictions
    if spec.problem == "classification":
        if predictions.ndim == 2:
            if predictions.shape[1] != spec.num_labels:
                raise ValueError(
                    f"task {spec.name!r} has {spec.num_labels} labels but predictions have "
                    f"{predictions.shape[1]} columns")
            return predictions.argmax(axis=-1)
        if predictions.ndim == 1 and np.issubdtype(predictions.dtype, np.integer):
            return predictions
        raise ValueError(
            f"task {spec.name!r}: expected logits [N, {spec.num_labels}] or class ids [N], "
            f"got shape {predictions.shape} dtype {predictions.dtype}")
    if predictions.ndim == 2 and predictions.shape[1] == 1:
        predictions = predictions[:, 0]
    if predictions.ndim != 1:
        raise ValueError(f"task {spec.name!r} is regression: expected predictions [N] or [N, 1], "
                         f"got shape {predictions.shape}")
    return predictions.astype(np.float64)


def tag_sequences(spec: TaskSpec, predictions: np.ndarray, labels: np.ndarray) -> tuple[list[list[str]], list[list[str]]]:
    """Tagging: (gold, predicted) IOB2 tag names per example, over the words with a label
    (``labels`` [N, W], ``IGNORE`` elsewhere) from logits [N, W, C] or tag ids [N, W]."""
    predictions, labels = np.asarray(predictions), np.asarray(labels)
    ids = predictions.argmax(-1) if predictions.ndim == 3 else predictions
    if ids.shape != labels.shape:
        raise ValueError(f"task {spec.name!r}: predictions for {ids.shape} words but labels {labels.shape}")
    names = np.asarray(spec.labels)
    keep = labels != IGNORE
    return ([list(names[y[k]]) for y, k in zip(labels, keep)], [list(names[p[k]]) for p, k in zip(ids, keep)])


def entity_counts(spec: TaskSpec, predictions: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Tagging: [N, 3] per example: its entities found with the exact span and type, its
    predicted entities, its gold entities (seqeval's entity reading, as conlleval).  Entity F1
    over any set of examples is ``entity_f1`` of their summed rows, so a bootstrap resamples
    rows instead of re-reading tags."""
    from seqeval.metrics.sequence_labeling import get_entities

    gold, pred = tag_sequences(spec, predictions, labels)
    counts = np.zeros((len(gold), 3), dtype=np.int64)
    for i, (g, p) in enumerate(zip(gold, pred)):
        true, found = set(get_entities(g)), set(get_entities(p))
        counts[i] = len(true & found), len(found), len(true)
    return counts


def entity_f1(counts: np.ndarray) -> float:
    """Micro F1 over entities from ``entity_counts`` rows [..., 3]: 2 TP / (predicted + gold)."""
    tp, predicted, true = np.asarray(counts).reshape(-1, 3).sum(0)
    return float(2 * tp / (predicted + true)) if predicted + true else 0.0


def qa_scores(predictions, references) -> np.ndarray:
    """Extractive QA: [Q, 2] per question: its exact match and token F1 (0 or 1, and 0..1),
    each the best over its references (SQuAD's normalisation; none = unanswerable, right only
    for ""); a metric over any set of questions is the mean of its rows."""
    from kdpipe.evaluation.qa_metrics import question_scores

    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} answers but {len(references)} questions' references")
    return np.array([question_scores(p, r) for p, r in zip(predictions, references)], dtype=np.float64).reshape(-1, 2)


def qa_metric(scores: np.ndarray, metric: str) -> float:
    """``exact_match`` or ``f1`` (0..1) of ``qa_scores`` rows [..., Q, 2], all rows pooled."""
    return float(np.asarray(scores)[..., QA_METRICS.index(metric)].mean())


def _tagging_metrics(spec: TaskSpec, predictions: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    if len(labels) == 0:
        raise ValueError(f"task {spec.name!r}: cannot compute metrics on zero examples")
    return {"entity_f1": entity_f1(entity_counts(spec, predictions, labels))}


def compute_metrics(spec: TaskSpec, predictions: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Every metric in ``spec.metrics``, as python floats, from raw outputs and gold labels
    (tagging: per-word logits [N, W, C] and tag ids [N, W], see ``tag_sequences``; extractive QA:
    answer texts [Q] and reference lists [Q], see ``qa_scores``)."""
    if spec.problem == "tagging":
        return _tagging_metrics(spec, predictions, labels)
    if spec.problem == "qa":  # answer texts [Q] and each question's references [Q]
        if len(labels) == 0:
            raise ValueError(f"task {spec.name!r}: cannot compute metrics on zero questions")
        scores = qa_scores(predictions, labels)
        return {m: qa_metric(scores, m) for m in spec.metrics}
    pred = predicted_values(spec, predictions)
    gold = np.asarray(labels)
    if gold.ndim == 2 and gold.shape[1] == 1:
        gold = gold[:, 0]
    if gold.ndim != 1 or len(gold) != len(pred):
        raise ValueError(f"task {spec.name!r}: {len(pred)} predictions but labels have shape {gold.shape}")
    if len(gold) == 0:
        raise ValueError(f"task {spec.name!r}: cannot compute metrics on zero examples")
    gold = gold.astype(np.float64 if spec.problem == "regression" else np.int64)
    out: dict[str, float] = {}
    for name in spec.metrics:
        if name not in _METRICS:
            raise ValueError(f"task {spec.name!r}: unknown metric {name!r}; known: {', '.join(KNOWN_METRICS)}")
        value = _METRICS[name](pred, gold)
        out[name] = value if math.isfinite(value) else 0.0
    return out


def is_better(spec: TaskSpec, a: float, b: float) -> bool:
    """Whether main-metric value ``a`` beats ``b`` (strictly; ties keep the earlier checkpoint).

    All supported metrics are higher-is-better. A NaN never wins, and anything finite beats NaN.
    """
    if spec.main_metric not in KNOWN_METRICS:
        raise ValueError(f"task {spec.name!r}: unknown main metric {spec.main_metric!r}")
    if math.isnan(a):
        return False
    if math.isnan(b):
        return True
    return a > b
