"""What every training stage does with a finished run: summarise it, write its curves, save it."""

from __future__ import annotations

from pathlib import Path

from kdpipe.data.tasks import TaskSpec
from kdpipe.evaluation.cards import CARD_FILE
from kdpipe.evaluation.predict import save_split_outputs
from kdpipe.files import atomic_dir, write_csv
from kdpipe.models.loading import save_model
from kdpipe.training.checkpoints import fingerprint
from kdpipe.training.engine import TrainResult, is_main_process


def split_outputs_key(data_dir: Path, max_length: int) -> str:
    """What a model's saved dev/test outputs depend on besides its weights: the prepared data,
    max_length and the prediction code."""
    return fingerprint("split_outputs", Path(data_dir), max_length, code="kdpipe.evaluation.predict")


def summary(result: TrainResult, spec: TaskSpec) -> dict:
    return {"selected": result.selected, "best_step": result.best_step,
            "best_dev": result.best_dev, "last_dev": result.last_dev, "main_metric": spec.main_metric,
            "steps": result.train_curve[-1]["step"] if result.train_curve else 0}


def with_main_metric(rows: list[dict], main: str) -> list[dict]:
    """Dev rows with a ``main_metric`` column, the one DVC's plots read for every task."""
    return [{"step": r["step"], "main_metric": r[main], **r} for r in rows]


def write_curves(plots_dir: Path, name: str, result: TrainResult, spec: TaskSpec) -> None:
    write_csv(Path(plots_dir) / "train" / f"{name}.csv", result.train_curve)
    write_csv(Path(plots_dir) / "dev" / f"{name}.csv", with_main_metric(result.dev_curve, spec.main_metric))


def save_trained(model, tokenizer, out_dir: Path, plots_dir: Path, name: str, result: TrainResult,
                 spec: TaskSpec, meta: dict, card: str | None = None,
                 outputs: tuple[dict, str] | None = None) -> None:
    """Model folder (atomically) with its model card ``card`` (README.md), its dev/test
    ``outputs`` (``evaluation.predict.split_outputs`` and their ``split_outputs_key``), and
    curves; under a multi-process launch, rank 0 alone writes."""
    if is_main_process():
        with atomic_dir(out_dir) as tmp:
            save_model(model, tokenizer, tmp, extra=meta)
            if card is not None:
                (tmp / CARD_FILE).write_text(card)
            if outputs is not None:
                save_split_outputs(tmp, *outputs)
        write_curves(plots_dir, name, result, spec)
