"""Batches that carry separate teacher and student inputs, tokenised from raw text.

Each batch is tokenised twice from the same raw text, once per model, and each model gets
exactly the inputs its own forward takes.  That is what stops a student without
``token_type_ids`` from making a BERT teacher see all-zero segment ids.  Build an ``Encoder``
for a model with ``kdpipe.models.loading.encoder_for``.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch.utils.data import DataLoader, Sampler
from transformers.trainer_pt_utils import get_length_grouped_indices

class Encoder:
    """Tokenises raw text for one model: dynamic padding, truncation, only its own inputs."""

    def __init__(self, tokenizer, input_names: Sequence[str], max_length: int):
        self.tokenizer, self.input_names, self.max_length = tokenizer, list(input_names), max_length

    def __call__(self, text_a: list[str], text_b: list[str] | None) -> dict[str, torch.Tensor]:
        enc = self.tokenizer(text_a, text_b, truncation=True, max_length=self.max_length,
                             padding=True, return_tensors="pt")
        return {n: enc[n] for n in self.input_names}

    def lengths(self, dataset) -> list[int]:
        """Tokens per example of ``dataset`` (rows as ``TextDataset``'s, e.g. a ``ConcatDataset`` of
        train and supplementary text) after truncation: what ``__call__`` pads to."""
        rows = [dataset[i] for i in range(len(dataset))]
        if not rows:
            return []
        text_b = None if rows[0]["text_b"] is None else [r["text_b"] for r in rows]
        enc = self.tokenizer([r["text_a"] for r in rows], text_b, truncation=True, max_length=self.max_length)
        return [len(ids) for ids in enc["input_ids"]]


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
    batches it already trained on.  With ``lengths`` (tokens per example) and ``batch_size``, the
    permutation is length-grouped as transformers' ``group_by_length`` does it: shuffled, then
    sorted by length within mega-batches of 50 batches, so a batch pads to a similar length.  On
    tweets that cuts the padded tokens per real token from 1.76 to 1.03 (benchmarks/padding.py).
    """

    def __init__(self, size: int, seed: int, lengths: Sequence[int] | None = None, batch_size: int | None = None):
        if lengths is not None and (len(lengths) != size or not batch_size):
            raise ValueError(f"length grouping needs one length per example ({size}) and a batch size")
        self.size, self.seed, self.epoch = size, seed, 0
        self.lengths, self.batch_size = lengths, batch_size

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        if self.lengths is not None:
            return iter(get_length_grouped_indices(self.lengths, self.batch_size, generator=g))
        return iter(torch.randperm(self.size, generator=g).tolist())

    def __len__(self) -> int:
        return self.size


class LengthSortedSampler(Sampler[int]):
    """Examples longest first, for inference: batches pad to near their own length.  Consumers
    put outputs back in dataset order by the batch's ``index`` (``evaluation.predict.predict``)."""

    def __init__(self, lengths: Sequence[int]):
        self.order = sorted(range(len(lengths)), key=lambda i: -lengths[i])

    def __iter__(self):
        return iter(self.order)

    def __len__(self) -> int:
        return len(self.order)


def inference_loader(dataset, collator: DistillCollator, batch_size: int, **kwargs) -> DataLoader:
    """A loader over ``dataset`` (a ``TextDataset``) longest first; ``predict`` restores its order."""
    lengths = collator.student.lengths(dataset)
    return DataLoader(dataset, batch_size=batch_size, collate_fn=collator, sampler=LengthSortedSampler(lengths),
                      **kwargs)
