"""Token tagging data (NER): CoNLL-2003-style column files or JSON lines with ``tokens``/``tags``,
read as IOB2 word-level tags, and word tags aligned to sub-word tokens.

Alignment: the first sub-token of each word carries the word's tag; the word's other sub-tokens
and the special tokens get ``IGNORE`` (-100), so the loss and the metrics see each word once.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from kdpipe.data.errors import TaskDataError

IGNORE = -100  # torch's cross_entropy ignore_index


class TaggingDataError(TaskDataError):
    """A tagging file that cannot be read; the message names the file and line."""


@dataclass
class TaggedSentence:
    tokens: list[str]
    tags: list[str]  # IOB2


def iob1_to_iob2(tags: Sequence[str]) -> list[str]:
    """CoNLL-2003's IOB1 (``B-`` only between two touching entities of one type) to IOB2 (every
    entity starts with ``B-``): an ``I-X`` that does not continue an ``X`` entity begins one."""
    out: list[str] = []
    for i, tag in enumerate(tags):
        if tag.startswith("I-"):
            kind = tag[2:]
            previous = out[i - 1] if i else "O"
            if previous == "O" or previous[2:] != kind:
                tag = f"B-{kind}"
        out.append(tag)
    return out


def read_conll(path: Path, tag_column: int = -1, scheme: str = "iob1") -> list[TaggedSentence]:
    """Sentences of a CoNLL column file: one ``word ... tag`` line per token, blank lines between
    sentences, ``-DOCSTART-`` lines between documents (not required at the start).  ``scheme``:
    the file's tags, ``iob1`` (CoNLL-2003) or ``iob2``; returned as IOB2."""
    if scheme not in ("iob1", "iob2"):
        raise TaggingDataError(f"{path}: unknown tag scheme {scheme!r}: iob1 or iob2")
    sentences: list[TaggedSentence] = []
    tokens: list[str] = []
    tags: list[str] = []

    def close() -> None:
        if tokens:
            sentences.append(TaggedSentence(list(tokens), iob1_to_iob2(tags) if scheme == "iob1" else list(tags)))
            tokens.clear()
            tags.clear()

    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        fields = line.split()
        if not fields:
            close()
        elif fields[0] == "-DOCSTART-":
            close()
        elif len(fields) < 2:
            raise TaggingDataError(f"{path}:{number}: expected 'word ... tag' columns, got {line!r}")
        else:
            tag = fields[tag_column]
            if tag != "O" and not (tag[:2] in ("B-", "I-") and len(tag) > 2):
                raise TaggingDataError(f"{path}:{number}: tag {tag!r} is not O, B-<type> or I-<type>")
            tokens.append(fields[0])
            tags.append(tag)
    close()
    if not sentences:
        raise TaggingDataError(f"{path}: no sentences")
    return sentences


def read_tagged_jsonl(path: Path, scheme: str = "iob2") -> list[TaggedSentence]:
    """One JSON object per line with ``tokens`` and ``tags`` lists of equal length."""
    sentences = []
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            tokens, tags = list(row["tokens"]), list(row["tags"])
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise TaggingDataError(f"{path}:{number}: expected {{\"tokens\": [...], \"tags\": [...]}} ({e})") from None
        if len(tokens) != len(tags):
            raise TaggingDataError(f"{path}:{number}: {len(tokens)} tokens but {len(tags)} tags")
        sentences.append(TaggedSentence(tokens, iob1_to_iob2(tags) if scheme == "iob1" else tags))
    return sentences


def label_names(sentences: Sequence[TaggedSentence]) -> list[str]:
    """``O`` first, then B-/I- of each entity type in alphabetical order (stable across splits)."""
    kinds = sorted({t[2:] for s in sentences for t in s.tags if t != "O"})
    return ["O"] + [f"{p}-{k}" for k in kinds for p in ("B", "I")]


def align_tags(word_ids: Sequence[int | None], tags: Sequence[str], label_ids: dict[str, int]) -> list[int]:
    """Per sub-token label ids from a tokenizer's ``word_ids()``: the first sub-token of each word
    gets its tag's id, the rest and the special tokens ``IGNORE``.  A word cut off by truncation
    simply has no sub-token."""
    out, previous = [], None
    for word in word_ids:
        out.append(IGNORE if word is None or word == previous else label_ids[tags[word]])
        previous = word
    return out
