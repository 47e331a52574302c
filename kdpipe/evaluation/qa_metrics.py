"""Extractive QA metrics: SQuAD's exact match and token F1, max over the reference answers.

The answer normalisation is the official SQuAD v1.1 evaluation script's, in its order: lower
case, drop punctuation, drop the articles a/an/the, collapse whitespace.  A question without
references (SQuAD v2.0 unanswerable) counts as right only for an empty prediction, as in v2.0's
script.  Torch-free.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Mapping, Sequence

_PUNCTUATION = set(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)


def normalize_answer(text: str) -> str:
    """SQuAD's normalisation: "The  Eiffel-Tower!" -> "eiffeltower"."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match(prediction: str, reference: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(reference))


def token_f1(prediction: str, reference: str) -> float:
    """F1 of the normalised tokens' multiset overlap; two empty answers agree (1.0)."""
    pred, ref = normalize_answer(prediction).split(), normalize_answer(reference).split()
    if not pred or not ref:
        return float(pred == ref)
    common = sum((Counter(pred) & Counter(ref)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def question_scores(prediction: str, references: Sequence[str]) -> tuple[float, float]:
    """(exact match, F1) of one question: the best over its references; none = unanswerable."""
    references = list(references) or [""]
    return (max(exact_match(prediction, r) for r in references),
            max(token_f1(prediction, r) for r in references))


def squad_scores(predictions: Mapping[str, str], references: Mapping[str, Sequence[str]]) -> dict[str, float]:
    """``exact_match`` and ``f1`` in percent over every question of ``references`` (question id ->
    its reference answers); a question without a prediction scores 0, as in the official script."""
    if not references:
        raise ValueError("no reference questions to score")
    missing = [q for q in references if q not in predictions]
    scores = [question_scores(predictions.get(q, ""), refs) if q not in missing else (0.0, 0.0)
              for q, refs in references.items()]
    return {"exact_match": 100 * sum(s[0] for s in scores) / len(scores),
            "f1": 100 * sum(s[1] for s in scores) / len(scores)}
