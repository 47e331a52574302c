"""Pea-KD (Cho & Kang, 2022): Pretraining with Teacher's Predictions, then PKD on an SPS student.
See docs/methods.md §7.  Pea-KD has three parts, each in the layer it belongs to: the SPS student
architecture (``kdpipe/models/sps.py``), the PTP labels and the final KD method (this module), and
the PTP training stage (``kdpipe/pipeline/ptp.py``).

PTP (docs/methods.md §7.3): every example gets one of four labels from the fine-tuned
teacher's prediction on it:

    class 0  confident_correct     teacher right, confidence >  t1
    class 1  unconfident_correct   teacher right, confidence <= t1
    class 2  confident_wrong       teacher wrong, confidence >  t2
    class 3  unconfident_wrong     teacher wrong, confidence <= t2

confidence = the teacher's max softmax probability at T = 1.  The student is first trained to
predict these labels (plain CE, a 4-way head that is then dropped), which teaches it where the
teacher is reliable before distillation.  The labels use gold labels to decide right/wrong, so
PTP is task-supervised, and it is undefined for regression.
"""

from __future__ import annotations

import numpy as np
from pydantic import Field

from kdpipe.methods.pkd import PKD, PKDParams

PTP_CLASSES: tuple[str, ...] = ("confident_correct", "unconfident_correct", "confident_wrong", "unconfident_wrong")

# (t1, t2) from the released code (src/PTP.py); other tasks get ``auto_thresholds``.
TASK_THRESHOLDS: dict[str, tuple[float, float]] = {
    "rte": (0.8, 0.6), "mrpc": (0.95, 0.75), "sst2": (0.98, 0.8), "qnli": (0.98, 0.7), "cola": (0.95, 0.7)}

__all__ = ["PTP_CLASSES", "TASK_THRESHOLDS", "teacher_confidence", "ptp_labels", "auto_thresholds",
           "resolve_thresholds", "class_histogram", "PeaKD", "PeaKDParams"]


def teacher_confidence(logits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """logits [N, C] -> (predicted class [N], max softmax probability [N]), T = 1."""
    z = logits - logits.max(axis=1, keepdims=True)  # stable softmax
    probs = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    return probs.argmax(axis=1), probs.max(axis=1)


def ptp_labels(logits: np.ndarray, labels: np.ndarray, t1: float, t2: float) -> np.ndarray:
    """PTP class [N] (0..3, see the module docstring) of each example.

    Args: logits [N, C] the teacher's; labels [N] gold class ids; t1/t2 thresholds in (0, 1).
    A confidence equal to the threshold counts as unconfident (the code's ``>``).
    """
    predicted, confidence = teacher_confidence(np.asarray(logits, dtype=np.float64))
    correct = predicted == np.asarray(labels)
    return np.where(correct, np.where(confidence > t1, 0, 1), np.where(confidence > t2, 2, 3)).astype(np.int64)


def auto_thresholds(logits: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """(t1, t2) from the teacher's confidences on the train split: t1 = the 75th percentile over
    correct predictions, t2 = the median over wrong ones (the spec's proposal), so about a
    quarter of the correct and half of the wrong predictions count as confident.  Without any
    wrong prediction t2 falls back to t1 (classes 2 and 3 stay empty either way)."""
    predicted, confidence = teacher_confidence(np.asarray(logits, dtype=np.float64))
    correct = predicted == np.asarray(labels)
    t1 = float(np.percentile(confidence[correct], 75)) if correct.any() else 0.5
    t2 = float(np.median(confidence[~correct])) if (~correct).any() else t1
    return t1, t2


def resolve_thresholds(t1: float | None, t2: float | None, task: str, logits: np.ndarray,
                       labels: np.ndarray) -> dict:
    """The thresholds to use and where each came from: ``params`` (ptp.t1/t2), ``task`` (the
    Pea-KD code's table) or ``auto`` (``auto_thresholds`` on these train predictions)."""
    table = TASK_THRESHOLDS.get(task)
    auto = auto_thresholds(logits, labels) if (t1 is None or t2 is None) and table is None else None
    chosen = {}
    for name, given, index in (("t1", t1, 0), ("t2", t2, 1)):
        if given is not None:
            chosen[name], chosen[f"{name}_source"] = float(given), "params"
        elif table is not None:
            chosen[name], chosen[f"{name}_source"] = table[index], "task"
        else:
            chosen[name], chosen[f"{name}_source"] = round(auto[index], 4), "auto"
    return chosen


def class_histogram(ptp: np.ndarray) -> dict[str, int]:
    """Examples per PTP class, by name (every class listed, empty ones with 0)."""
    counts = np.bincount(np.asarray(ptp, dtype=np.int64), minlength=len(PTP_CLASSES))
    return {name: int(n) for name, n in zip(PTP_CLASSES, counts)}


# ------------------------------------------------------------------------------------------ Pea-KD
class PeaKDParams(PKDParams):
    """Pea-KD's final stage (docs/methods.md §7.4, ``finetune.py --train_type pkd``): alpha = 0.7, so
    0.3 CE + 0.7 KD, T = 10, beta = 100, normalised [CLS] patient loss, teacher layers by skip."""

    ce_weight: float = Field(default=0.3, ge=0)
    kd_weight: float = Field(default=0.7, ge=0)


class PeaKD(PKD):
    """Pea-KD (Cho & Kang, 2022): PKD on a Shuffled-Parameter-Sharing student that starts from the
    PTP encoder.  The student settings are a preset: a run's ``student: {sps: null}`` (no SPS),
    ``{init: teacher}`` (no PTP) or ``{sps: {shuffle: none}}`` (SPS without shuffle) gives the
    paper's ablations.  Mapping: the SPS student has 2L effective layers, so its patient layers
    are 1..2L-1 (for L = 3 on a 6-layer teacher: teacher layers 1..5, "skip")."""

    name = "pea_kd"
    not_per_token = ("PTP's confidence classes and PKD's [CLS] loss are per sentence; a per-word form "
                       "is not defined yet")
    Params = PeaKDParams
    student_defaults = {"init": "ptp", "sps": {"shuffle": "upper_swap"}}
