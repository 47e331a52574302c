"""Torch-free tagging (NER) on an export folder: ``OnnxTokenTagger`` reads each word at its first
sub-token exactly as training and evaluation do (``Encoder.words`` + ``taps.word_logits``),
decodes entities as seqeval does, maps them back to character spans, and ``kdpipe predict``
prints them.  The folder is a tiny random BERT token classifier exported with kdpipe.export and
the real MiniLM tokenizer."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch
from transformers import BertConfig, BertForTokenClassification

from kdpipe.cli import main
from kdpipe.data.batches import Encoder
from kdpipe.data.tasks import CONLL_SPEC
from kdpipe.export.convert import export_onnx
from kdpipe.export.runtime import (EXPORT_META_FILE, ExportMeta, OnnxTextClassifier, OnnxTokenTagger,
                                   iob2_entities, open_export)
from kdpipe.models.taps import word_logits

MAX_LENGTH = 16
LABELS = list(CONLL_SPEC.labels)
SENTENCES = [["EU", "rejects", "German", "call"], ["Peter", "Blackburn"],
             ["Schwarzenegger's", "unbelievably", "long", "words", "are", "split", "into", "many", "pieces",
              "and", "then", "cut", "off", "by", "truncation", "here"], ["x"]]


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=64, num_labels=len(LABELS), attn_implementation="eager")
    m = BertForTokenClassification(cfg).eval()
    torch.nn.init.normal_(m.classifier.weight, std=0.5)  # varied tags, logits ~1 so tolerances bite
    return m


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory, model, tokenizer):
    folder = tmp_path_factory.mktemp("ner_export")
    sample = dict(tokenizer(["hello world", "a second example"], padding=True, return_tensors="pt"))
    names = export_onnx(model, sample, folder / "model.onnx")
    tokenizer.save_pretrained(folder)
    meta = ExportMeta(labels=LABELS, problem="tagging", max_length=MAX_LENGTH, input_names=names,
                      task={"name": "conll2003", "num_text_fields": 1})
    (folder / EXPORT_META_FILE).write_text(json.dumps(meta.to_json()))
    return folder


def test_word_logits_equal_the_torch_path_including_truncated_words(export_dir, model, tokenizer):
    tagger = OnnxTokenTagger.from_dir(export_dir)
    inputs, first = Encoder(tokenizer, ["input_ids", "attention_mask", "token_type_ids"], MAX_LENGTH).words(SENTENCES)
    with torch.no_grad():
        expected = word_logits(model(**inputs).logits, first).numpy()  # [B, W, C]
    got = tagger.word_logits(SENTENCES, batch_size=3)  # batches cut longest first, put back in order
    assert got.shape == expected.shape == (4, 16, len(LABELS))
    found = first.numpy() >= 0
    assert not found[2].all() and found[2, :5].all()  # the long sentence loses words to truncation
    np.testing.assert_allclose(got[found], expected[found], atol=1e-4)
    assert (got[~found] == 0).all()
    tagged = tagger.tag_words(SENTENCES)
    assert all(t == "O" for t, f in zip(tagged[2]["tags"], found[2]) if not f)  # cut words: O, score 0
    assert tagged[2]["scores"][-1] == 0.0 and len(tagged[1]["tags"]) == 2


def test_entities_are_read_as_seqeval_reads_them():
    from seqeval.metrics.sequence_labeling import get_entities

    assert iob2_entities(["B-PER", "I-PER", "O", "I-LOC", "B-LOC", "I-ORG"]) == \
        [("PER", 0, 1), ("LOC", 3, 3), ("LOC", 4, 4), ("ORG", 5, 5)]
    rng = random.Random(0)
    for _ in range(500):  # random tag sequences, the IOB2 reading of seqeval's default (conlleval) mode
        tags = [rng.choice(LABELS) for _ in range(rng.randint(0, 12))]
        assert iob2_entities(tags) == [tuple(e) for e in get_entities(tags)], tags


def test_predict_gives_character_spans_into_the_raw_text(export_dir):
    tagger = open_export(export_dir)
    assert isinstance(tagger, OnnxTokenTagger)
    text = "  Peter   Blackburn (EU) flew to Köln."
    result = tagger.predict(text)[0]
    assert result["tokens"] == ["Peter", "Blackburn", "(", "EU", ")", "flew", "to", "Köln", "."]
    assert result["tags"] == tagger.tag_words([result["tokens"]])[0]["tags"]
    assert result["entities"], "the random model tags something"
    for e in result["entities"]:
        assert text[e["start"]:e["end"]] == e["text"] and e["type"] in ("LOC", "MISC", "ORG", "PER")
    assert tagger.predict([""])[0] == {"entities": [], "tokens": [], "tags": []}


def test_a_tagging_export_is_not_read_as_a_classifier(export_dir):
    with pytest.raises(ValueError, match="tagging export; read it with OnnxTokenTagger"):
        OnnxTextClassifier.from_dir(export_dir)


def test_cli_prints_entities(export_dir, capsys):
    text = "Peter Blackburn flew to Germany."
    expected = OnnxTokenTagger.from_dir(export_dir).predict(text)[0]
    assert main(["predict", str(export_dir), text, "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record == {"text": text, **expected}
    assert main(["predict", str(export_dir), text]) == 0
    shown = capsys.readouterr().out.rstrip("\n").split("\t")
    assert shown[-1] == text
    assert shown[:-1] == ([f"{e['type']}[{e['start']}:{e['end']}]={e['text']}" for e in expected["entities"]] or ["-"])
    assert main(["predict", str(export_dir), "a", "--pair", "b"]) == 2
    assert "tagging model tags single texts" in capsys.readouterr().err


def test_a_tagging_export_is_an_mlflow_pyfunc_that_returns_entities(export_dir, tmp_path, monkeypatch):
    import pandas as pd

    from conftest import logged_pyfunc

    model = logged_pyfunc(export_dir, tmp_path, monkeypatch, "ner")
    texts = ["Peter Blackburn flew to Germany.", "EU rejects German call"]
    got = model.predict(pd.DataFrame({"text": texts}))
    assert list(got.columns) == ["entities"] and model.metadata.signature.inputs.input_names() == ["text"]
    expected = OnnxTokenTagger.from_dir(export_dir).predict(texts)
    assert [json.loads(e) for e in got["entities"]] == [r["entities"] for r in expected]


def test_int8_agreement_counts_only_the_labelled_words():
    from kdpipe.data.conll import IGNORE
    from kdpipe.pipeline.export import prediction_agreement

    labels = np.array([[1, 0, IGNORE], [0, IGNORE, IGNORE]])  # 3 labelled words
    fp32 = np.eye(len(LABELS))[np.array([[1, 0, 0], [0, 0, 0]])]  # [2, 3, C] one-hot logits
    int8 = fp32.copy()
    int8[0, 2], int8[1, 1] = np.eye(len(LABELS))[5], np.eye(len(LABELS))[3]  # padding words differ: not counted
    assert prediction_agreement(CONLL_SPEC, fp32, int8, labels) == 1.0
    int8[1, 0] = np.eye(len(LABELS))[2]  # one of the three labelled words flips
    assert prediction_agreement(CONLL_SPEC, fp32, int8, labels) == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="pass labels"):
        prediction_agreement(CONLL_SPEC, fp32, int8)
