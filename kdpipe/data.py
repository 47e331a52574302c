"""Prepared splits on disk, and batches that carry separate teacher and student inputs.

Splits are stored tokenizer-independent (raw text + label) so the teacher and the student can
use different tokenizers: each batch is tokenised twice from the same raw text, once per
model, and each model gets exactly the inputs its own forward takes.  That is what stops a
student without ``token_type_ids`` from making a BERT teacher see all-zero segment ids.
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Sequence

import pandas as pd
import torch
from torch.utils.data import Dataset, Sampler

from kdpipe.tasks import TaskSpec

SPLITS = ("train", "dev", "test")


def save_splits(folder: str | Path, spec: TaskSpec, splits: dict[str, pd.DataFrame]) -> None:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for name, frame in splits.items():
        frame.to_parquet(folder / f"{name}.parquet", index=False)
    summary = {name: len(frame) for name, frame in splits.items()}
    (folder / "task.json").write_text(json.dumps({"task": spec.to_dict(), "rows": summary}, indent=2))


def load_splits(folder: str | Path) -> tuple[TaskSpec, dict[str, pd.DataFrame]]:
    folder = Path(folder)
    meta_file = folder / "task.json"
    if not meta_file.exists():
        raise FileNotFoundError(f"{meta_file}: no prepared data here; run the data stage first (dvc repro data)")
    spec = TaskSpec.from_dict(json.loads(meta_file.read_text())["task"])
    splits = {s: pd.read_parquet(folder / f"{s}.parquet") for s in SPLITS if (folder / f"{s}.parquet").exists()}
    return spec, splits


class TextDataset(Dataset):
    """Rows of (index, text_a, text_b | None, label); the index addresses teacher caches."""

    def __init__(self, frame: pd.DataFrame):
        self.text_a = frame["text_a"].tolist()
        self.text_b = frame["text_b"].tolist() if "text_b" in frame else None
        self.labels = frame["label"].tolist()

    def __len__(self) -> int:
        return len(self.text_a)

    def __getitem__(self, i: int) -> dict:
        return {"index": i, "text_a": self.text_a[i],
                "text_b": None if self.text_b is None else self.text_b[i], "label": self.labels[i]}


def model_input_names(model: torch.nn.Module, tokenizer) -> list[str]:
    """Tokenizer outputs that the model's forward accepts, in the tokenizer's order."""
    accepted = set(inspect.signature(model.forward).parameters)
    return [n for n in tokenizer.model_input_names if n in accepted]


class Encoder:
    """Tokenises raw text for one model: dynamic padding, truncation, only its own inputs."""

    def __init__(self, tokenizer, input_names: Sequence[str], max_length: int):
        self.tokenizer, self.input_names, self.max_length = tokenizer, list(input_names), max_length

    def __call__(self, text_a: list[str], text_b: list[str] | None) -> dict[str, torch.Tensor]:
        enc = self.tokenizer(text_a, text_b, truncation=True, max_length=self.max_length,
                             padding=True, return_tensors="pt")
        return {n: enc[n] for n in self.input_names}


class DistillCollator:
    """Batches ``{"student": inputs, "teacher": inputs | None, "labels", "index"}``."""

    def __init__(self, student: Encoder, teacher: Encoder | None, regression: bool):
        self.student, self.teacher, self.regression = student, teacher, regression

    def __call__(self, rows: list[dict]) -> dict:
        text_a = [r["text_a"] for r in rows]
        text_b = None if rows[0]["text_b"] is None else [r["text_b"] for r in rows]
        dtype = torch.float32 if self.regression else torch.long
        return {
            "student": self.student(text_a, text_b),
            "teacher": None if self.teacher is None else self.teacher(text_a, text_b),
            "labels": torch.tensor([r["label"] for r in rows], dtype=dtype),
            "index": torch.tensor([r["index"] for r in rows], dtype=torch.long),
        }


class EpochShuffleSampler(Sampler[int]):
    """A seeded permutation per epoch: the order of epoch e depends only on (seed, e).

    That makes resuming exact: a run restarted in epoch e replays the same order and skips the
    batches it already trained on.
    """

    def __init__(self, size: int, seed: int):
        self.size, self.seed, self.epoch = size, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        return iter(torch.randperm(self.size, generator=g).tolist())

    def __len__(self) -> int:
        return self.size
