"""QA windows and NER tag alignment through the real MiniLM tokenizer, and the readers on the
real SQuAD v1.1 and CoNLL-2003 files (../shared/data)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest

from conftest import REPO
from kdpipe.data.conll import IGNORE, TaggingDataError, align_tags, label_names, read_conll, read_tagged_jsonl
from kdpipe.data.squad import QADataError, QAExample, best_answer, example_answers, make_windows, read_squad
from kdpipe.data.tasks import TaskDataError

SHARED = REPO.parent / "shared" / "data"


def _decode(tokenizer, windows, w):
    ids = windows.input_ids[w][windows.start_positions[w]:windows.end_positions[w] + 1]
    return tokenizer.decode(ids)


def test_long_context_windows_overlap_and_only_a_window_holding_the_answer_points_at_it(tokenizer):
    filler = " ".join(f"word{i}" for i in range(120))
    context = f"{filler} The capital of France is Paris. {filler}"
    answer_start = context.index("Paris")
    example = QAExample("q1", "What is the capital of France?", context, ["Paris"], [answer_start])
    windows = make_windows([example], tokenizer, max_length=64, stride=16)
    assert len(windows.input_ids) > 3 and set(windows.example_index) == {0}
    assert all(len(ids) <= 64 for ids in windows.input_ids)
    holding = [w for w in range(len(windows.input_ids)) if windows.start_positions[w] > 0]
    assert holding and all(_decode(tokenizer, windows, w) == "paris" for w in holding)
    # every other window points at [CLS], and the question is in every window
    question = tokenizer("What is the capital of France?")["input_ids"][1:-1]
    for w in range(len(windows.input_ids)):
        assert windows.input_ids[w][1:1 + len(question)] == question
        if w not in holding:
            assert windows.start_positions[w] == windows.end_positions[w] == 0
    # consecutive windows share `stride` context tokens
    spans = [[o for o in windows.offsets[w] if o is not None] for w in range(2)]
    assert spans[0][-16:] == spans[1][:16]


def test_unanswerable_question_points_at_cls(tokenizer):
    example = QAExample("q2", "Who?", "Nobody knows.", [], [])
    windows = make_windows([example], tokenizer, max_length=32, stride=8)
    assert windows.start_positions == [0] and windows.end_positions == [0]


def test_best_span_respects_order_context_and_length_and_windows_merge_by_score(tokenizer):
    context = "Paris is big"
    offsets = [None, None, (0, 5), (6, 8), (9, 12), None]  # [CLS] q [Paris] [is] [big] [SEP]
    start = np.array([9.0, 0, 5, 0, 0.5, 0])  # [CLS] scores highest but is not in the context
    end = np.array([0.0, 0, 0, -1, 4, 8])     # [SEP] highest: not in the context either
    assert best_answer(start, end, offsets, context) == ("Paris is big", 9.0)
    assert best_answer(start, end, offsets, context, max_answer_tokens=2)[0] == "Paris"  # 5 + 0 beats 0.5 + 4, 5 - 1, 0 + 4
    # logits past the window (batch padding) are never a span; a window without context has none
    assert best_answer(np.r_[start, 99.0], np.r_[end, 99.0], offsets, context) == ("Paris is big", 9.0)
    assert best_answer(start, end, [None] * 6, context) == ("", float("-inf"))
    # an end before the start is no span: the best end alone sits before the best start
    assert best_answer(np.array([0, 0, 0, 0, 9.0, 0]), np.array([0, 0, 7.0, 0, 0, 0]), offsets, context) == ("big", 9.0)
    # two windows of one question: the higher-scoring one wins
    examples = [QAExample("q", "q", context, ["Paris"], [0])]
    windows = SimpleNamespace(example_index=[0, 0], offsets=[offsets, offsets])
    answers = example_answers(examples, windows, [start, np.array([0, 0, 20.0, 0, 0, 0])],
                              [end, np.array([0, 0, 20.0, 0, 0, 0])])
    assert answers == {"q": "Paris"}


def test_align_tags_labels_the_first_sub_token_only(tokenizer):
    words, tags = ["Huggingface", "is", "in", "Brooklyn"], ["B-ORG", "O", "O", "B-LOC"]
    enc = tokenizer(words, is_split_into_words=True)
    labels = label_names([type("S", (), {"tags": tags})()])
    assert labels == ["O", "B-LOC", "I-LOC", "B-ORG", "I-ORG"]
    ids = align_tags(enc.word_ids(), tags, {t: i for i, t in enumerate(labels)})
    assert ids[0] == IGNORE and ids[-1] == IGNORE  # [CLS], [SEP]
    firsts = [i for i, (w, prev) in enumerate(zip(enc.word_ids(), [None] + enc.word_ids()[:-1])) if w is not None and w != prev]
    assert [ids[i] for i in firsts] == [3, 0, 0, 1]
    assert sum(i != IGNORE for i in ids) == 4  # "huggingface" is several sub-tokens: only its first counts


def test_read_conll_converts_iob1_and_needs_no_leading_docstart(tmp_path):
    f = tmp_path / "x.conll"
    f.write_text("EU NNP B-NP I-ORG\nrejects VBZ B-VP O\n\n-DOCSTART- -X- -X- O\n\nPeter NNP B-NP I-PER\nSmith NNP I-NP I-PER\n")
    sentences = read_conll(f)
    assert [(s.tokens, s.tags) for s in sentences] == [(["EU", "rejects"], ["B-ORG", "O"]),
                                                       (["Peter", "Smith"], ["B-PER", "I-PER"])]
    f.write_text("EU NNP B-NP X-ORG\n")
    with pytest.raises(TaggingDataError, match=r"x.conll:1: tag 'X-ORG'"):
        read_conll(f)
    j = tmp_path / "x.jsonl"
    j.write_text(json.dumps({"tokens": ["a", "b"], "tags": ["O"]}) + "\n")
    with pytest.raises(TaggingDataError, match=r"x.jsonl:1: 2 tokens but 1 tags"):
        read_tagged_jsonl(j)


def test_the_real_files_read_completely():
    if not (SHARED / "squad").exists() or not (SHARED / "conll2003").exists():
        pytest.skip("../shared/data not present")
    dev = read_squad(SHARED / "squad" / "dev-v1.1.json")
    assert len(dev) == 10_570 and np.mean([len(e.answers) for e in dev]) == pytest.approx(3.29, abs=0.01)
    assert len(read_squad(SHARED / "squad" / "train-v1.1.part.json")) == 11_877
    testa = read_conll(SHARED / "conll2003" / "eng.testa")
    assert len(testa) == 3_250 and sum(len(s.tokens) for s in testa) == 51_362
    assert all(not t.startswith("I-") or i > 0 for s in testa for i, t in enumerate(s.tags))  # IOB2
    assert label_names(testa) == ["O", "B-LOC", "I-LOC", "B-MISC", "I-MISC", "B-ORG", "I-ORG", "B-PER", "I-PER"]


def test_bad_squad_file_names_the_question(tmp_path):
    f = tmp_path / "s.json"
    f.write_text(json.dumps({"data": [{"paragraphs": [{"context": "abc", "qas": [
        {"id": "q9", "question": "?", "answers": [{"text": "zz", "answer_start": 0}]}]}]}]}))
    with pytest.raises(QADataError, match="question q9: answer 'zz' is not at character 0"):
        read_squad(f)
    # a task-data error: stages print it as one line and exit 2, like any other bad task input
    assert issubclass(QADataError, TaskDataError) and issubclass(TaggingDataError, TaskDataError)
