"""SQuAD exact match / F1 and entity-level F1 against hand-computed cases."""

from __future__ import annotations

import pytest

from kdpipe.data.conll import iob1_to_iob2
from kdpipe.evaluation.entity_metrics import entity_scores
from kdpipe.evaluation.qa_metrics import normalize_answer, question_scores, squad_scores, token_f1


def test_squad_normalisation_drops_case_punctuation_articles_and_extra_whitespace():
    assert normalize_answer("The  Eiffel Tower!") == "eiffel tower"
    assert normalize_answer("an apple, a pear") == "apple pear"
    # punctuation goes before the articles: "the-end" -> "theend" keeps its letters
    assert normalize_answer("the-end") == "theend"
    assert normalize_answer("Theatre") == "theatre"  # an article only as a whole word
    assert normalize_answer("  ") == ""


def test_token_f1_by_hand():
    # pred "the cat sat" -> [cat, sat]; ref "a cat sat down" -> [cat, sat, down]: 2 common,
    # precision 2/2, recall 2/3, F1 = 2 * 1 * (2/3) / (5/3) = 0.8
    assert token_f1("the cat sat", "a cat sat down") == pytest.approx(0.8)
    # repeated tokens count as a multiset: pred [to, to, be] vs ref [to, be]: common 2, P 2/3, R 1, F1 0.8
    assert token_f1("to to be", "to be") == pytest.approx(0.8)
    assert token_f1("", "") == 1.0 and token_f1("x", "") == 0.0 and token_f1("dog", "cat") == 0.0


def test_multi_reference_question_takes_the_best_reference_for_each_metric():
    refs = ["Denver Broncos", "the Broncos", "Broncos"]
    em, f1 = question_scores("Broncos", refs)
    assert (em, f1) == (1.0, 1.0)  # "the Broncos" and "Broncos" both normalise to "broncos"
    # "Denver" alone: EM 0 everywhere; F1 best against "Denver Broncos": P 1, R 1/2 -> 2/3
    assert question_scores("Denver", refs) == pytest.approx((0.0, 2 / 3))


def test_squad_scores_in_percent_with_unanswerable_and_missing_questions():
    refs = {"q1": ["Paris"], "q2": ["1990", "in 1990"], "q3": [], "q4": ["blue"]}
    preds = {"q1": "paris.", "q2": "in the year 1990", "q3": ""}  # q4 has no prediction: 0
    # q1: EM 1 F1 1; q2: best F1 vs "in 1990": pred [in, year, 1990] vs [in, 1990]: P 2/3 R 1 -> 0.8, EM 0;
    # q3: unanswerable, empty prediction: 1, 1; q4: 0, 0
    scores = squad_scores(preds, refs)
    assert scores["exact_match"] == pytest.approx(100 * 2 / 4)
    assert scores["f1"] == pytest.approx(100 * (1 + 0.8 + 1 + 0) / 4)
    with pytest.raises(ValueError, match="no reference"):
        squad_scores({}, {})


def test_iob1_to_iob2():
    # CoNLL-2003: B- only where two entities of one type touch
    assert iob1_to_iob2(["I-PER", "I-PER", "O", "I-LOC", "B-LOC", "I-ORG", "I-MISC"]) == \
        ["B-PER", "I-PER", "O", "B-LOC", "B-LOC", "B-ORG", "B-MISC"]
    assert iob1_to_iob2([]) == []


def test_entity_f1_counts_whole_entities_only():
    refs = [["B-PER", "I-PER", "O", "B-LOC"], ["B-ORG", "O", "B-PER"]]
    # sentence 1: PER right, LOC missed; sentence 2: ORG and PER right, plus a spurious MISC
    preds = [["B-PER", "I-PER", "O", "O"], ["B-ORG", "B-MISC", "B-PER"]]
    # gold 4 entities (PER, LOC, ORG, PER); predicted 4 (PER, ORG, MISC, PER), of which PER(s1), ORG, PER(s2) correct
    s = entity_scores(refs, preds)
    assert s["precision"] == pytest.approx(75.0) and s["recall"] == pytest.approx(75.0) and s["f1"] == pytest.approx(75.0)
    # per type: PER 2/2 right -> 100; LOC 0/1 -> 0; ORG 1/1 -> 100; MISC 0 correct of 1 predicted -> 0
    assert s["per_type"] == pytest.approx({"LOC": 0.0, "MISC": 0.0, "ORG": 100.0, "PER": 100.0})
    # a partly right span is a wrong entity: B-PER O against B-PER I-PER
    assert entity_scores([["B-PER", "I-PER"]], [["B-PER", "O"]])["f1"] == 0.0
    with pytest.raises(ValueError, match="same length"):
        entity_scores([["O"]], [["O", "O"]])
