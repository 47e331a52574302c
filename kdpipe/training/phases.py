"""Multi-phase runs (TinyBERT, MLKD-BERT, CR-ILD): each phase trains on its own, with its own
settings, checkpoint folder and nested MLflow run; afterwards one curve spans them all."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

from kdpipe.config import TrainConfig
from kdpipe.training.engine import TrainResult


@dataclass
class PhaseOutcome:
    """What one phase of a run did."""

    result: TrainResult
    train: TrainConfig   # the phase's resolved train settings
    teacher_signal: str  # "cache", "live" or "none"
    train_examples: int  # the task's train split, plus supplementary text in label-free phases


def phase_run(logger, name: str | None, tags: dict):
    """An MLflow run nested in the stage's run for one phase (``name``), so every phase's curves
    and settings stand on their own in the UI; None: log to the stage's run itself."""
    if name is None or logger is None or not hasattr(logger, "child"):
        return contextlib.nullcontext(logger)
    return logger.child(name, tags)


def merge_phases(results: dict[str, TrainResult]) -> TrainResult:
    """One curve across phases: steps continue from phase to phase, a ``phase`` column says which."""
    if len(results) == 1:
        return next(iter(results.values()))
    train_curve, dev_curve, offset = [], [], 0
    for phase, r in results.items():
        train_curve += [{**row, "step": row["step"] + offset, "phase": phase} for row in r.train_curve]
        dev_curve += [{**row, "step": row["step"] + offset, "phase": phase} for row in r.dev_curve]
        offset += r.train_curve[-1]["step"] if r.train_curve else 0
    last = list(results.values())[-1]
    return TrainResult(selected=last.selected, best_step=last.best_step, best_dev=last.best_dev,
                       last_dev=last.last_dev, train_curve=train_curve, dev_curve=dev_curve)
