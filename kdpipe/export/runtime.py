"""Torch-free inference on an exported model: onnxruntime + tokenizers only.

Users deploy an export folder without torch or transformers, so this module must never import
either (a test checks ``sys.modules`` in a fresh interpreter).  An export folder holds:

- ``model.onnx``       fp32 graph; inputs int64 [batch, seq], output ``logits`` float32 [batch, n]
                       (tagging: [batch, seq, n], one row per sub-token)
- ``model.int8.onnx``  optional dynamically quantised copy
- ``tokenizer.json``   written by a transformers tokenizer's ``save_pretrained``
- ``kdpipe.json``      ``{"labels": [...] | null, "problem": "classification" | "regression" | "tagging",
                         "max_length": int, "input_names": [...], "task": {...}}``
- ``config.json``      the Hugging Face config, for optimum and ``AutoConfig``; not read here
                       (docs/onnx.md §4)
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

MODEL_FILES: dict[str, str] = {"fp32": "model.onnx", "int8": "model.int8.onnx"}
TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
EXPORT_META_FILE = "kdpipe.json"  # the export folder's ExportMeta (not a model folder's kdpipe.json)
OUTPUT_NAME = "logits"
PROBLEMS = ("classification", "regression", "tagging", "qa")
QA_OUTPUT_NAMES = ("start_logits", "end_logits")  # a QA graph's two outputs, as Optimum's QA models read them

Variant = Literal["fp32", "int8"]


def disable_telemetry() -> None:
    """Turn off onnxruntime's usage events, before every session kdpipe makes and every
    quantisation, so no process of kdpipe's runs ORT with them on.  (On onnxruntime 1.31 for
    Linux the native library still resolves its telemetry host a few seconds after it loads,
    flag or not; nothing depends on the answer: tests/test_runtime.py runs an export with no
    network at all.)"""
    ort.disable_telemetry_events()


def make_session(path: str | Path, threads: int | None = None) -> ort.InferenceSession:
    """An ORT session on the CPU provider, named explicitly so that ORT builds with other
    providers never pick one silently.  ``threads=None`` keeps ORT's default (all cores)."""
    disable_telemetry()
    options = ort.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


def session_logits(session: ort.InferenceSession, feeds: Mapping[str, np.ndarray]) -> np.ndarray:
    """Run ``session`` on the graph's own inputs, taken from ``feeds`` and cast to int64.

    Extra keys (``labels``, ``token_type_ids`` for a model without them) are ignored, so a
    tokenizer's or collator's batch can be passed as is.  Returns float32 [batch, num_labels]; a
    QA graph's start and end logits stacked as [batch, 2, seq].
    """
    names = [i.name for i in session.get_inputs()]
    missing = [n for n in names if n not in feeds]
    if missing:
        raise KeyError(f"the ONNX model needs inputs {missing}; got {sorted(feeds)}")
    inputs = {n: np.asarray(feeds[n], dtype=np.int64) for n in names}
    if session.get_outputs()[0].name == QA_OUTPUT_NAMES[0]:
        return np.stack(session.run(list(QA_OUTPUT_NAMES), inputs), axis=1)
    return session.run([OUTPUT_NAME], inputs)[0]


@dataclass(frozen=True)
class ExportMeta:
    """The contents of ``kdpipe.json``."""

    labels: list[str] | None
    problem: Literal["classification", "regression", "tagging", "qa"]
    max_length: int
    input_names: list[str]
    task: dict[str, Any] = field(default_factory=dict)
    qa: dict[str, int] = field(default_factory=dict)  # extractive QA: doc_stride, max_answer_length

    @classmethod
    def load(cls, path: str | Path) -> ExportMeta:
        try:
            raw = json.loads(Path(path).read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON (line {e.lineno}, column {e.colno}: {e.msg}); "
                             f"re-export the model (dvc repro export@<run>)") from None
        except UnicodeDecodeError:
            raise ValueError(f"{path}: not a UTF-8 text file; re-export the model (dvc repro export@<run>)") from None
        if not isinstance(raw, dict) or "max_length" not in raw:
            raise ValueError(f"{path}: expected an object with at least 'max_length'")
        problem = raw.get("problem", "classification")
        if problem not in PROBLEMS:
            raise ValueError(f"{path}: problem must be one of {', '.join(PROBLEMS)}, got {problem!r}")
        qa = dict(raw.get("qa") or {})
        if problem == "qa" and not {"doc_stride", "max_answer_length"} <= set(qa):
            raise ValueError(f"{path}: a QA export needs 'qa': {{'doc_stride': ..., 'max_answer_length': ...}}")
        return cls(labels=raw.get("labels"), problem=problem, max_length=int(raw["max_length"]),
                   input_names=list(raw.get("input_names") or []), task=dict(raw.get("task") or {}), qa=qa)

    def to_json(self) -> dict[str, Any]:
        return {"labels": self.labels, "problem": self.problem, "max_length": self.max_length,
                "input_names": self.input_names, "task": self.task, **({"qa": self.qa} if self.qa else {})}


def load_tokenizer(folder: str | Path, max_length: int) -> Tokenizer:
    """``tokenizer.json`` set up to match transformers' ``tok(texts, [pairs], padding=True,
    truncation=True, max_length=max_length)``.

    The saved file may carry fixed-length padding and another truncation length (MiniLM's
    pads to 128), so both are replaced: truncate to ``max_length`` (longest_first for pairs)
    and pad to the longest sequence in the batch.
    """
    folder = Path(folder)
    try:
        tokenizer = Tokenizer.from_file(str(_require(folder / TOKENIZER_FILE)))
    except Exception as e:  # noqa: BLE001 - tokenizers raises a bare Exception for a broken file
        if isinstance(e, FileNotFoundError):
            raise
        raise ValueError(f"{folder / TOKENIZER_FILE}: not a readable tokenizer ({str(e)[:200]}); "
                         f"re-export the model (dvc repro export@<run>)") from None
    pad_token, pad_type_id = _pad_token(tokenizer, folder)
    pad_id = tokenizer.token_to_id(pad_token)
    if pad_id is None:
        raise ValueError(f"{folder / TOKENIZER_FILE}: pad token {pad_token!r} is not in the vocabulary")
    tokenizer.enable_truncation(max_length, strategy="longest_first")
    tokenizer.enable_padding(pad_id=pad_id, pad_token=pad_token, pad_type_id=pad_type_id)
    return tokenizer


def _pad_token(tokenizer: Tokenizer, folder: Path) -> tuple[str, int]:
    """The pad token: the one saved in tokenizer.json's padding, else tokenizer_config.json's,
    else the first well-known pad token in the vocabulary."""
    if tokenizer.padding is not None:
        return tokenizer.padding["pad_token"], int(tokenizer.padding.get("pad_type_id", 0))
    config_path = folder / TOKENIZER_CONFIG_FILE
    if config_path.exists():
        config = json.loads(config_path.read_text())
        token = config.get("pad_token")
        if isinstance(token, dict):  # older AddedToken serialisation
            token = token.get("content")
        if token:
            return token, int(config.get("pad_token_type_id", 0))
    for token in ("[PAD]", "<pad>"):
        if tokenizer.token_to_id(token) is not None:
            return token, 0
    raise ValueError(f"{folder}: cannot tell the pad token; save the tokenizer with save_pretrained")


def _require(path: Path) -> Path:
    if not path.is_file():
        raise FileNotFoundError(f"{path.name} not found in export folder {path.parent} ({path})")
    return path


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax of float [batch, n], stable for large logits."""
    shifted = logits - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=-1, keepdims=True)


def to_predictions(logits: np.ndarray, labels: Sequence[str] | None,
                   problem: Literal["classification", "regression"]) -> list[dict[str, Any]]:
    """Logits [batch, n] → one dict per row.

    classification: ``{"label": name, "score": p(label), "probs": {name: p}}``; names default to
    ``LABEL_i`` (transformers' convention) when the export has no label names.
    regression: ``{"score": value}`` from the single output.
    """
    if problem == "regression":
        return [{"score": float(row[0])} for row in logits]
    names = list(labels) if labels else [f"LABEL_{i}" for i in range(logits.shape[-1])]
    if len(names) != logits.shape[-1]:
        raise ValueError(f"{len(names)} labels but the model gives {logits.shape[-1]} logits")
    results = []
    for row in softmax(logits.astype(np.float64)):
        best = int(row.argmax())
        results.append({"label": names[best], "score": float(row[best]),
                        "probs": {name: float(p) for name, p in zip(names, row)}})
    return results


class OnnxExport:
    """An export folder's ONNX session, tokenizer and ``kdpipe.json``; ``open_export`` gives the
    subclass that fits its task."""

    def __init__(self, session: ort.InferenceSession, tokenizer: Tokenizer, meta: ExportMeta) -> None:
        self.session = session
        self.tokenizer = tokenizer
        self.meta = meta
        self.input_names = [i.name for i in session.get_inputs()]

    @classmethod
    def from_dir(cls, export_dir: str | Path, variant: Variant = "fp32", threads: int | None = None):
        """Load ``model.onnx`` (or ``model.int8.onnx``), ``tokenizer.json`` and ``kdpipe.json``.

        Raises FileNotFoundError naming the missing file, ValueError for an unknown variant or an
        export of another kind of task than this class reads.
        """
        if variant not in MODEL_FILES:
            raise ValueError(f"variant must be one of {sorted(MODEL_FILES)}, got {variant!r}")
        folder = Path(export_dir)
        if not folder.is_dir():
            raise FileNotFoundError(f"export folder {folder} not found")
        meta = ExportMeta.load(_require(folder / EXPORT_META_FILE))
        reader = _READERS.get(meta.problem, OnnxTextClassifier)
        if reader is not cls and cls is not OnnxExport:
            raise ValueError(f"{folder}: a {meta.problem} export; read it with {reader.__name__} (or open_export)")
        model_path = _require(folder / MODEL_FILES[variant])
        tokenizer = load_tokenizer(folder, meta.max_length)
        try:
            session = make_session(model_path, threads)
        except Exception as e:  # noqa: BLE001 - ORT raises its own types (InvalidProtobuf, Fail, ...)
            first = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise ValueError(f"{model_path}: onnxruntime cannot load it ({type(e).__name__}: {first[:200]}); "
                             f"re-export the model (dvc repro export@<run>)") from None
        return cls(session, tokenizer, meta)

    @property
    def labels(self) -> list[str] | None:
        return self.meta.labels


def open_export(export_dir: str | Path, variant: Variant = "fp32",
                threads: int | None = None) -> OnnxTextClassifier | OnnxTokenTagger | OnnxQuestionAnswerer:
    """The export folder's model as an ``OnnxTokenTagger`` (tagging), an ``OnnxQuestionAnswerer``
    (extractive QA) or an ``OnnxTextClassifier``."""
    meta = ExportMeta.load(_require(Path(export_dir) / EXPORT_META_FILE)) if Path(export_dir).is_dir() else None
    kind = _READERS.get(meta.problem, OnnxTextClassifier) if meta is not None else OnnxTextClassifier
    return kind.from_dir(export_dir, variant, threads)


class OnnxTextClassifier(OnnxExport):
    """Text (or text-pair) classification/regression with an exported model, no torch needed.

    >>> clf = OnnxTextClassifier.from_dir("exports/vanilla_kd", variant="int8")
    >>> clf.predict(["what a day"])  # [{"label": "positive", "score": 0.93, "probs": {...}}]
    """

    @property
    def num_text_fields(self) -> int:
        """1 (single text) or 2 (sentence pairs), from the export's task; 1 if unknown."""
        return int(self.meta.task.get("num_text_fields", 1))

    def encode(self, texts: Sequence[str], pairs: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """Tokenise one batch → int64 arrays [batch, longest] for input_ids, attention_mask and
        token_type_ids (all three, whatever the model takes; ``logits`` feeds only its own)."""
        if pairs is None:
            encodings = self.tokenizer.encode_batch(list(texts))
        else:
            encodings = self.tokenizer.encode_batch(list(zip(texts, pairs)))
        return _feeds(encodings)

    def logits(self, texts: str | Sequence[str], pairs: str | Sequence[str] | None = None,
               batch_size: int = 32) -> np.ndarray:
        """Raw model outputs, float32 [len(texts), num_labels] (num_labels = 1 for regression),
        in the order given.  Batches are cut from blocks of 64 batches sorted by length, so each
        pads only to its own longest text (the same outputs, about 40 % less compute on tweets)."""
        texts, pairs = _as_lists(texts, pairs)
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.check_inputs(texts, pairs, allow_empty=True)
        out = np.zeros((len(texts), self._num_outputs()), dtype=np.float32)
        block = 64 * batch_size
        for start in range(0, len(texts), block):
            feeds = self.encode(texts[start:start + block], None if pairs is None else pairs[start:start + block])
            lengths = feeds["attention_mask"].sum(axis=1)  # padding is on the right (enable_padding)
            order = np.argsort(-lengths, kind="stable")
            for i in range(0, len(order), batch_size):
                rows = order[i:i + batch_size]
                width = int(lengths[rows].max())
                out[start + rows] = session_logits(self.session, {k: v[rows, :width] for k, v in feeds.items()})
        return out

    def check_inputs(self, texts: Sequence[str], pairs: Sequence[str] | None,
                     names: Sequence[str] | None = None, allow_empty: bool = False) -> None:
        """Refuse what the model would silently misread: a sentence pair for a single-text model,
        a single text for a pair model, and an empty (or whitespace-only) text.  ``names`` say
        where each input came from (``line 3``), for the message.  ``allow_empty`` (the Python
        API): an empty text is scored as ``[CLS] [SEP]``, as transformers does, with a warning."""
        where = names or [f"text {i + 1}" for i in range(len(texts))]
        task = self.meta.task.get("name", "this model")
        fields = self.meta.task.get("num_text_fields")
        if fields == 1 and pairs is not None:
            raise ValueError(f"{where[0]}: got a sentence pair (TAB-separated or --pair), but {task} takes "
                             f"single texts")
        if fields == 2 and pairs is None:
            raise ValueError(f"{where[0]}: got a single text, but {task} takes sentence pairs "
                             f"(give 'first<TAB>second', or TEXT with --pair)")
        for i, text in enumerate(texts):
            empty = "the text is empty" if not str(text).strip() else \
                "the second text of the pair is empty" if pairs is not None and not str(pairs[i]).strip() else None
            if empty and not allow_empty:
                raise ValueError(f"{where[i]}: {empty}")
            if empty:
                warnings.warn(f"{where[i]}: {empty}; it is scored as an empty input", stacklevel=3)

    def predict(self, texts: str | Sequence[str], pairs: str | Sequence[str] | None = None,
                batch_size: int = 32) -> list[dict[str, Any]]:
        """One dict per text; see :func:`to_predictions` for the keys."""
        return to_predictions(self.logits(texts, pairs, batch_size), self.meta.labels, self.meta.problem)

    def _num_outputs(self) -> int:
        dim = self.session.get_outputs()[0].shape[-1]
        if isinstance(dim, int):
            return dim
        return 1 if self.meta.problem == "regression" else len(self.meta.labels or [])


def iob2_entities(tags: Sequence[str]) -> list[tuple[str, int, int]]:
    """(type, first word, last word) of each entity in an IOB2 tag sequence, read as conlleval
    and seqeval's default mode do: ``B-X`` starts an entity, ``I-X`` continues an ``X`` entity and
    starts one after anything else, ``O`` ends it."""
    entities: list[tuple[str, int, int]] = []
    kind, start = None, 0
    for i, tag in enumerate(list(tags) + ["O"]):
        prefix, _, tag_kind = tag.partition("-")
        if kind is not None and (prefix != "I" or tag_kind != kind):
            entities.append((kind, start, i - 1))
            kind = None
        if prefix in ("B", "I") and kind is None:
            kind, start = tag_kind, i
    return entities


class OnnxTokenTagger(OnnxExport):
    """Token tagging (NER) with an exported model, no torch needed: raw text is split into words
    by the tokenizer's own pre-tokenizer (BERT's: whitespace and punctuation, as CoNLL-2003
    splits), each word is read at its first sub-token, as in training and evaluation.

    >>> tagger = OnnxTokenTagger.from_dir("exports/vanilla_kd")
    >>> tagger.predict(["Angela Merkel visited Paris."])[0]["entities"]
    [{"type": "PER", "text": "Angela Merkel", "start": 0, "end": 13, "score": 0.98}, ...]
    """

    def split_words(self, text: str) -> list[tuple[str, tuple[int, int]]]:
        """``text``'s words with their character spans [start, end)."""
        pre = self.tokenizer.pre_tokenizer
        if pre is None:
            import re
            return [(m.group(), m.span()) for m in re.finditer(r"\S+", text)]
        return [(w, (a, b)) for w, (a, b) in pre.pre_tokenize_str(text)]

    def encode_words(self, words: Sequence[Sequence[str]]) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """int64 inputs [batch, longest] for word-split examples, and ``first`` [batch, W] (W = the
        most words): each word's first sub-token position, -1 for padding and truncated words."""
        encodings = self.tokenizer.encode_batch([list(w) for w in words], is_pretokenized=True)
        first = np.full((len(words), max(map(len, words), default=0)), -1, dtype=np.int64)
        for b, e in enumerate(encodings):
            previous = None
            for position, word in enumerate(e.word_ids):
                if word is not None and word != previous:
                    first[b, word] = position
                previous = word
        return _feeds(encodings), first

    def word_logits(self, words: Sequence[Sequence[str]], batch_size: int = 32) -> np.ndarray:
        """Per-word logits float32 [N, W, C] (W = the most words; zeros past each example's words
        and for words truncation cut off), in the order given.  Batches are cut longest first."""
        return self._word_logits(words, batch_size)[0]

    def _word_logits(self, words: Sequence[Sequence[str]], batch_size: int) -> tuple[np.ndarray, np.ndarray]:
        """(``word_logits``, found [N, W] bool: the word has a sub-token in the model's input)."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        most = max(map(len, words), default=0)
        out = np.zeros((len(words), most, len(self.meta.labels or [])), dtype=np.float32)
        found = np.zeros((len(words), most), dtype=bool)
        order = np.argsort([-len(w) for w in words], kind="stable")
        for i in range(0, len(order), batch_size):
            rows = order[i:i + batch_size]
            feeds, first = self.encode_words([words[r] for r in rows])
            width = int(feeds["attention_mask"].sum(axis=1).max())
            logits = session_logits(self.session, {k: v[:, :width] for k, v in feeds.items()})  # [b, T, C]
            picked = np.take_along_axis(logits, np.maximum(first, 0)[:, :, None], axis=1)  # [b, w, C]
            out[rows, :first.shape[1]] = np.where(first[:, :, None] >= 0, picked, 0.0)
            found[rows, :first.shape[1]] = first >= 0
        return out, found

    def tag_words(self, words: Sequence[Sequence[str]], batch_size: int = 32) -> list[dict[str, Any]]:
        """One dict per word-split example: ``{"tags": [...], "scores": [...], "entities": [...]}``;
        each entity ``{"type", "words": [first, last], "score"}`` (score: the mean probability of
        its words' tags).  A word truncation cut off is tagged ``O`` with score 0."""
        names = list(self.meta.labels or [])
        logits, found = self._word_logits(words, batch_size)
        results = []
        for example, row, seen in zip(words, logits, found):
            probs = softmax(row[:len(example)].astype(np.float64))
            ids = probs.argmax(-1)
            tags = [names[i] if s else "O" for i, s in zip(ids, seen)]
            scores = [float(p[i]) if s else 0.0 for p, i, s in zip(probs, ids, seen)]
            entities = [{"type": kind, "words": [a, b], "score": float(np.mean(scores[a:b + 1]))}
                        for kind, a, b in iob2_entities(tags)]
            results.append({"tags": tags, "scores": scores, "entities": entities})
        return results

    def predict(self, texts: str | Sequence[str], batch_size: int = 32) -> list[dict[str, Any]]:
        """One dict per raw text: ``{"entities": [{"type", "text", "start", "end", "score"}],
        "tokens": [...], "tags": [...]}``, entity spans as character offsets [start, end) in the
        text."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        split = [self.split_words(t) for t in texts]
        tagged = self.tag_words([[w for w, _ in s] or [""] for s in split], batch_size)
        results = []
        for text, words, tags in zip(texts, split, tagged):
            entities = []
            for e in tags["entities"] if words else []:
                start, end = words[e["words"][0]][1][0], words[e["words"][1]][1][1]
                entities.append({"type": e["type"], "text": text[start:end], "start": start, "end": end,
                                 "score": e["score"]})
            results.append({"entities": entities, "tokens": [w for w, _ in words],
                            "tags": tags["tags"][:len(words)]})
        return results


def best_span(start_logits, end_logits, offsets: list[tuple[int, int] | None], max_answer_tokens: int = 30,
              top_k: int = 20) -> tuple[int, int, float]:
    """The best answer span of one window as character offsets [start, end) in the context, and
    its score: start <= end, both context tokens (``offsets`` None elsewhere), at most
    ``max_answer_tokens`` long, score = start + end logit, searched among the ``top_k`` best
    starts and ends (BERT's SQuAD post-processing); (0, 0, -inf) when no span qualifies.
    Evaluation (``data.squad.question_answers``) calls it too, so dev scores are what users get."""
    n = len(offsets)  # logits past it are padding
    context_token = np.array([o is not None for o in offsets], dtype=bool)
    starts = np.where(context_token, np.asarray(start_logits, dtype=np.float64)[:n], -np.inf)
    ends = np.where(context_token, np.asarray(end_logits, dtype=np.float64)[:n], -np.inf)
    s = np.argsort(starts)[::-1][:top_k]
    e = np.argsort(ends)[::-1][:top_k]
    length = e[None, :] - s[:, None] + 1                                     # [k, k]
    scores = np.where((length >= 1) & (length <= max_answer_tokens), starts[s][:, None] + ends[e][None, :], -np.inf)
    i, j = np.unravel_index(np.argmax(scores), scores.shape)
    if not np.isfinite(scores[i, j]):
        return 0, 0, float("-inf")
    return offsets[s[i]][0], offsets[e[j]][1], float(scores[i, j])


def question_spans(window_question: Sequence[int], window_spans: Iterable[tuple[int, int, float]],
                   questions: int) -> list[tuple[int, int, float]]:
    """Each question's best span over its windows (the highest-scoring ``best_span``), in question
    order; (0, 0, -inf) for a question without a qualifying span.  ``window_question``: the
    question each window reads."""
    best = [(0, 0, float("-inf"))] * questions
    for i, span in zip(window_question, window_spans):
        if span[2] > best[i][2]:
            best[i] = span
    return best


class OnnxQuestionAnswerer(OnnxExport):
    """Extractive QA with an exported model, no torch needed: each question + context is read in
    the windows training and evaluation read (the tokenizer's own overflow, ``qa.doc_stride``
    tokens of overlap), and the answer is the best span over all windows (start + end logit, at
    most ``qa.max_answer_length`` tokens, inside the context: ``data.squad.best_span``).

    >>> qa = OnnxQuestionAnswerer.from_dir("exports/vanilla_kd")
    >>> qa.answer(["Who won?"], ["The Broncos beat the Panthers."])[0]
    {"answer": "The Broncos", "start": 0, "end": 11, "score": 7.1}
    """

    def __init__(self, session, tokenizer, meta) -> None:
        super().__init__(session, tokenizer, meta)
        padding = tokenizer.padding or {}
        self.pad_id, self.pad_type_id = int(padding.get("pad_id", 0)), int(padding.get("pad_type_id", 0))
        tokenizer.no_padding()  # windows are padded per batch below, after the overflow split
        tokenizer.enable_truncation(meta.max_length, stride=int(meta.qa["doc_stride"]), strategy="only_second")

    def windows(self, questions: Sequence[str], contexts: Sequence[str]) -> list[tuple[int, Any]]:
        """(question index, encoding) of every window, in order (the first window, then its overflow)."""
        encodings = self.tokenizer.encode_batch([(q.lstrip(), c) for q, c in zip(questions, contexts)])
        return [(i, w) for i, e in enumerate(encodings) for w in [e, *e.overflowing]]

    def window_logits(self, windows: Sequence[tuple[int, Any]], batch_size: int = 32) -> list[np.ndarray]:
        """Start and end logits [2, n] of each window (n its own length), longest windows batched together."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        out: list[np.ndarray] = [np.empty(0)] * len(windows)
        order = np.argsort([-len(w.ids) for _, w in windows], kind="stable")
        for i in range(0, len(order), batch_size):
            rows = order[i:i + batch_size]
            width = max(len(windows[r][1].ids) for r in rows)
            feeds = {"input_ids": np.full((len(rows), width), self.pad_id, dtype=np.int64),
                     "attention_mask": np.zeros((len(rows), width), dtype=np.int64),
                     "token_type_ids": np.full((len(rows), width), self.pad_type_id, dtype=np.int64)}
            for b, r in enumerate(rows):
                w = windows[r][1]
                feeds["input_ids"][b, :len(w.ids)] = w.ids
                feeds["attention_mask"][b, :len(w.ids)] = 1
                feeds["token_type_ids"][b, :len(w.ids)] = w.type_ids
            logits = session_logits(self.session, feeds)  # [b, 2, width]
            for b, r in enumerate(rows):
                out[r] = logits[b, :, :len(windows[r][1].ids)]
        return out

    def answer(self, questions: str | Sequence[str], contexts: str | Sequence[str],
               batch_size: int = 32) -> list[dict[str, Any]]:
        """One dict per question: ``{"answer": text, "start", "end": character offsets [start, end)
        in its context, "score": start + end logit}`` ("" and score None when no span qualifies)."""
        questions, contexts = _as_lists(questions, contexts)
        for i, (q, c) in enumerate(zip(questions, contexts)):
            if not str(q).strip() or not str(c).strip():
                raise ValueError(f"question {i + 1}: the {'question' if not str(q).strip() else 'context'} is empty")
        windows = self.windows(questions, contexts)
        longest = int(self.meta.qa["max_answer_length"])
        spans = (best_span(logits[0], logits[1], [o if s == 1 else None for o, s in zip(w.offsets, w.sequence_ids)],
                           longest) for (_, w), logits in zip(windows, self.window_logits(windows, batch_size)))
        results = []
        for context, (start, end, score) in zip(contexts, question_spans([i for i, _ in windows], spans, len(contexts))):
            results.append({"answer": context[start:end], "start": start, "end": end,
                            "score": float(score) if np.isfinite(score) else None})
        return results


_READERS: dict[str, type[OnnxExport]] = {"tagging": OnnxTokenTagger, "qa": OnnxQuestionAnswerer}


def _feeds(encodings) -> dict[str, np.ndarray]:
    """int64 [batch, longest] input_ids, attention_mask and token_type_ids of padded encodings."""
    return {"input_ids": np.array([e.ids for e in encodings], dtype=np.int64),
            "attention_mask": np.array([e.attention_mask for e in encodings], dtype=np.int64),
            "token_type_ids": np.array([e.type_ids for e in encodings], dtype=np.int64)}


def _as_lists(texts: str | Iterable[str],
              pairs: str | Iterable[str] | None) -> tuple[list[str], list[str] | None]:
    # A bare string is one text, not a sequence of characters.
    text_list = [texts] if isinstance(texts, str) else list(texts)
    if pairs is None:
        return text_list, None
    pair_list = [pairs] if isinstance(pairs, str) else list(pairs)
    if len(pair_list) != len(text_list):
        raise ValueError(f"got {len(text_list)} texts but {len(pair_list)} pair texts")
    return text_list, pair_list
