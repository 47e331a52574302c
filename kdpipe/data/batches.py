"""Batches that carry separate teacher and student inputs, tokenised from raw text.

Each batch is tokenised twice from the same raw text, once per model, and each model gets
exactly the inputs its own forward takes.  That is what stops a student without
``token_type_ids`` from making a BERT teacher see all-zero segment ids.  Build an ``Encoder``
for a model with ``kdpipe.models.loading.encoder_for``.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch.utils.data import Sampler

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
