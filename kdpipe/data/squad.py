"""Extractive QA data: SQuAD-format JSON (v1.1, and v2.0's unanswerable questions), and the
overlapping token windows a BERT-style model reads.

A context longer than ``max_length`` is cut into windows of question + a slice of the context
that overlap by ``stride`` tokens (the tokenizer's own overflow handling).  Each window's answer is
mapped from characters to tokens through the offsets; a window that does not contain the whole
answer, and an unanswerable question, point start and end at the [CLS] token (index 0), as in
BERT's SQuAD recipe.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from kdpipe.data.errors import TaskDataError


class QADataError(TaskDataError):
    """A QA file that cannot be read; the message names the file and the question."""


@dataclass
class QAExample:
    id: str
    question: str
    context: str
    answers: list[str] = field(default_factory=list)         # reference texts; [] = unanswerable
    answer_starts: list[int] = field(default_factory=list)   # their character offsets in context


@dataclass
class QAWindows:
    """Tokenised windows of some examples (lists, one entry per window)."""

    input_ids: list[list[int]]
    attention_mask: list[list[int]]
    token_type_ids: list[list[int]] | None
    example_index: list[int]                 # which example each window comes from
    offsets: list[list[tuple[int, int] | None]]  # context tokens' character spans; None elsewhere
    start_positions: list[int]
    end_positions: list[int]


def read_squad(path: Path) -> list[QAExample]:
    """Every question of a SQuAD-format file, its first answer the training target."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))["data"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise QADataError(f"{path}: not SQuAD JSON ({{\"data\": [{{\"paragraphs\": ...}}]}}): {e}") from None
    examples = []
    for article in data:
        for paragraph in article.get("paragraphs", []):
            context = paragraph["context"]
            for qa in paragraph.get("qas", []):
                answers = [] if qa.get("is_impossible") else qa.get("answers", [])
                for a in answers:
                    if context[a["answer_start"]:a["answer_start"] + len(a["text"])] != a["text"]:
                        raise QADataError(f"{path}: question {qa['id']}: answer {a['text']!r} is not at "
                                          f"character {a['answer_start']} of its context")
                examples.append(QAExample(qa["id"], qa["question"], context, [a["text"] for a in answers],
                                          [a["answer_start"] for a in answers]))
    if not examples:
        raise QADataError(f"{path}: no questions")
    return examples


def make_windows(examples: list[QAExample], tokenizer, max_length: int, stride: int) -> QAWindows:
    """Question + context windows of at most ``max_length`` tokens overlapping by ``stride``
    (a fast tokenizer: its offsets map answers to tokens).  Truncates only the context."""
    if stride >= max_length:
        raise ValueError(f"stride ({stride}) must be below max_length ({max_length})")
    enc = tokenizer([e.question.lstrip() for e in examples], [e.context for e in examples],
                    truncation="only_second", max_length=max_length, stride=stride,
                    return_overflowing_tokens=True, return_offsets_mapping=True, padding=False)
    starts, ends, offsets = [], [], []
    for w, example_i in enumerate(enc["overflow_to_sample_mapping"]):
        sequence = enc.sequence_ids(w)
        spans = [o if s == 1 else None for o, s in zip(enc["offset_mapping"][w], sequence)]
        offsets.append(spans)
        example = examples[example_i]
        start = end = 0
        if example.answers:
            first, last = example.answer_starts[0], example.answer_starts[0] + len(example.answers[0])
            tokens = [i for i, span in enumerate(spans) if span is not None]
            if spans[tokens[0]][0] <= first and spans[tokens[-1]][1] >= last:
                start = next(i for i in tokens if spans[i][1] > first)
                end = next(i for i in reversed(tokens) if spans[i][0] < last)
        starts.append(start)
        ends.append(end)
    return QAWindows(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"],
                     token_type_ids=enc.get("token_type_ids"), example_index=list(enc["overflow_to_sample_mapping"]),
                     offsets=offsets, start_positions=starts, end_positions=ends)


def best_answer(start_logits, end_logits, offsets: list[tuple[int, int] | None], context: str,
                max_answer_tokens: int = 30, top_k: int = 20) -> tuple[str, float]:
    """(text, score) of the best span of one window: start <= end, both inside the context, at most
    ``max_answer_tokens`` long, score = start + end logit, searched among the ``top_k`` best starts
    and ends (BERT's SQuAD post-processing); ("", -inf) when no span qualifies."""
    from kdpipe.export.runtime import best_span  # the deployed runtime's search: evaluation scores what users get

    start, end, score = best_span(start_logits, end_logits, offsets, max_answer_tokens, top_k)
    return context[start:end], score


def question_answers(examples: list[QAExample], windows: QAWindows, start_logits, end_logits,
                     max_answer_tokens: int = 30) -> list[str]:
    """The best span of every example, in example order, over all of its windows (merged by
    score, as the deployed runtime merges them: ``export.runtime.question_spans``); "" where no
    window offers a span.  Logits [windows, L]."""
    from kdpipe.export.runtime import best_span, question_spans

    spans = (best_span(start_logits[w], end_logits[w], windows.offsets[w], max_answer_tokens)
             for w in range(len(windows.example_index)))
    return [e.context[start:end] for e, (start, end, _) in
            zip(examples, question_spans(windows.example_index, spans, len(examples)))]


def object_array(values) -> np.ndarray:
    """A [N] object array of ``values`` (answer strings, or lists of references), without numpy
    turning equal-length lists into a 2-D array."""
    out = np.empty(len(values), dtype=object)
    out[:] = list(values)
    return out


def example_answers(examples: list[QAExample], windows: QAWindows, start_logits, end_logits,
                    max_answer_tokens: int = 30) -> dict[str, str]:
    """Question id -> the best span over all of its windows (the windows merged by score)."""
    texts = question_answers(examples, windows, start_logits, end_logits, max_answer_tokens)
    return {e.id: text for e, text in zip(examples, texts)}
