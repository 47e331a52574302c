"""Batches that carry separate teacher and student inputs, tokenised from raw text.

Each batch is tokenised twice from the same raw text, once per model, and each model gets
exactly the inputs its own forward takes.  That is what stops a student without
``token_type_ids`` from making a BERT teacher see all-zero segment ids.  Build an ``Encoder``
for a model with ``kdpipe.models.loading.encoder_for``.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler
from transformers.trainer_pt_utils import get_length_grouped_indices

from kdpipe.data.conll import IGNORE


def word_split(texts) -> bool:
    """Whether examples are lists of words (tagging) rather than strings."""
    return bool(texts) and not isinstance(texts[0], str)


class Encoder:
    """Tokenises raw text for one model: dynamic padding, truncation, only its own inputs."""

    def __init__(self, tokenizer, input_names: Sequence[str], max_length: int):
        self.tokenizer, self.input_names, self.max_length = tokenizer, list(input_names), max_length

    def __call__(self, text_a: list[str] | list[list[str]], text_b: list[str] | None) -> dict[str, torch.Tensor]:
        enc = self._encode(text_a, text_b)
        return {n: enc[n] for n in self.input_names}

    def _encode(self, text_a, text_b, padding=True, tensors="pt"):
        return self.tokenizer(text_a, text_b, truncation=True, max_length=self.max_length, padding=padding,
                              return_tensors=tensors, is_split_into_words=word_split(text_a))

    def words(self, words: list[list[str]]) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """Inputs for word-split examples, and ``first_tokens`` [B, W] (W = the batch's most words):
        the position of each word's first sub-token, -1 for padding and for words cut off by
        truncation.  Word-level outputs (tagging) are read at these positions, so a teacher and a
        student with different tokenizers still answer for the same words."""
        enc = self._encode(words, None)
        first = torch.full((len(words), max(map(len, words), default=0)), -1, dtype=torch.long)
        for b in range(len(words)):
            previous = None
            for position, word in enumerate(enc.word_ids(b)):
                if word is not None and word != previous:
                    first[b, word] = position
                previous = word
        return {n: enc[n] for n in self.input_names}, first

    def windows(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        """Extractive QA: a batch of ready token windows (``QADataset`` rows), padded to the longest,
        with only this model's inputs (a model without ``token_type_ids`` drops them)."""
        features = {"input_ids": [r["input_ids"] for r in rows]}
        if rows[0]["token_type_ids"] is not None:
            features["token_type_ids"] = [r["token_type_ids"] for r in rows]
        enc = self.tokenizer.pad(features, return_tensors="pt", return_attention_mask=True)
        return {n: enc[n] for n in self.input_names}

    def lengths(self, dataset) -> list[int]:
        """Tokens per example of ``dataset`` (rows as ``TextDataset``'s, e.g. a ``ConcatDataset`` of
        train and supplementary text; QA: its windows) after truncation: what ``__call__`` pads to."""
        if getattr(dataset, "windows", None) is not None:
            return [len(ids) for ids in dataset.windows.input_ids]
        rows = [dataset[i] for i in range(len(dataset))]
        if not rows:
            return []
        text_b = None if rows[0]["text_b"] is None else [r["text_b"] for r in rows]
        enc = self._encode([r["text_a"] for r in rows], text_b, padding=False, tensors=None)
        return [len(ids) for ids in enc["input_ids"]]


class DistillCollator:
    """Batches ``{"student": inputs, "teacher": inputs | None, "labels", "index"}``.

    Tagging (each example a list of words): ``labels`` [B, W] tag ids (``IGNORE`` for padding
    words and for words truncation cut off, so neither the losses nor the metrics see them) and
    ``student_words``/``teacher_words`` [B, W], each model's first sub-token per word
    (``Encoder.words``).

    Extractive QA (``QADataset`` windows): ``labels`` [B, 2] the answer's start and end token
    (0, [CLS], where the window does not hold it) and ``example`` [B], each window's question."""

    def __init__(self, student: Encoder, teacher: Encoder | None, regression: bool):
        self.student, self.teacher, self.regression = student, teacher, regression

    def __call__(self, rows: list[dict]) -> dict:
        if "input_ids" in rows[0]:
            return {"student": self.student.windows(rows),
                    "teacher": None if self.teacher is None else self.teacher.windows(rows),
                    "labels": torch.tensor([r["label"] for r in rows], dtype=torch.long),
                    "example": torch.tensor([r["example"] for r in rows], dtype=torch.long),
                    "index": torch.tensor([r["index"] for r in rows], dtype=torch.long)}
        text_a = [r["text_a"] for r in rows]
        text_b = None if rows[0]["text_b"] is None else [r["text_b"] for r in rows]
        if word_split(text_a):
            return self._words(rows, text_a)
        dtype = torch.float32 if self.regression else torch.long
        return {
            "student": self.student(text_a, text_b),
            "teacher": None if self.teacher is None else self.teacher(text_a, text_b),
            "labels": torch.tensor([r["label"] for r in rows], dtype=dtype),
            "index": torch.tensor([r["index"] for r in rows], dtype=torch.long),
        }

    def _words(self, rows: list[dict], words: list[list[str]]) -> dict:
        student, student_words = self.student.words(words)
        teacher, teacher_words = self.teacher.words(words) if self.teacher is not None else (None, None)
        labels = torch.full(student_words.shape, IGNORE, dtype=torch.long)
        for b, r in enumerate(rows):
            labels[b, :len(r["label"])] = torch.tensor(r["label"], dtype=torch.long)
        cut = student_words < 0 if teacher_words is None else (student_words < 0) | (teacher_words < 0)
        return {"student": student, "teacher": teacher, "labels": labels.masked_fill(cut, IGNORE),
                "student_words": student_words, "teacher_words": teacher_words,
                "index": torch.tensor([r["index"] for r in rows], dtype=torch.long)}


def split_labels(dataset, encoder: Encoder | None) -> np.ndarray:
    """A split's gold labels as the metrics read them: [N] for sentence tasks; for tagging [N, W]
    tag ids (W = the split's most words, what ``predict`` pads to), ``IGNORE`` for padding and for
    the words ``encoder`` truncates away, as in training batches; for extractive QA [Q] each
    question's reference answers (``QADataset.references``)."""
    if getattr(dataset, "windows", None) is not None:
        return dataset.references()
    if not word_split(dataset.text_a):
        return np.asarray(dataset.labels)
    _, first = encoder.words(dataset.text_a)  # [N, W], -1 past each example's words and where cut
    labels = np.full(first.shape, IGNORE, dtype=np.int64)
    for i, tags in enumerate(dataset.labels):
        labels[i, :len(tags)] = tags
    return np.where(first.numpy() >= 0, labels, IGNORE)


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
