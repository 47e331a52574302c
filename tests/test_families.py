"""Encoder-family adapters: every family answers the same questions (layers, embeddings, shape,
attention projections), and everything built on them (taps, students, SPS) works for each."""

from __future__ import annotations

import pytest
import torch

from conftest import tiny_bert, tiny_distilbert
from kdpipe.models.adapters import FAMILIES, ModelShape, encoder_layers, family_of, num_heads
from kdpipe.models.sources import ModelError
from kdpipe.models.sps import apply_sps, physical_layers
from kdpipe.models.students import build_student
from kdpipe.models.taps import Needs, run_model


def tiny_roberta():
    from transformers import RobertaConfig, RobertaForSequenceClassification

    torch.manual_seed(0)
    config = RobertaConfig(vocab_size=100, hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
                           intermediate_size=64, max_position_embeddings=40, num_labels=2,
                           attn_implementation="eager")
    return RobertaForSequenceClassification(config).eval()


MODELS = {"bert": tiny_bert, "distilbert": tiny_distilbert, "roberta": tiny_roberta}
INPUTS = {"input_ids": torch.tensor([[0, 5, 6, 7, 2], [0, 8, 9, 2, 1]]),
          "attention_mask": torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 1, 0]])}


@pytest.mark.parametrize("kind", sorted(MODELS))
def test_family_answers_match_the_model(kind):
    model = MODELS[kind]()
    family = family_of(model)
    assert family.name == ("distilbert" if kind == "distilbert" else "bert")
    shape = ModelShape.of(model.config)
    assert (shape.layers, shape.hidden, shape.heads) == (len(encoder_layers(model)), 32, num_heads(model))
    for which in ("query", "key", "value", "output"):
        assert isinstance(family.attention_module(encoder_layers(model)[0], which), torch.nn.Linear)


@pytest.mark.parametrize("kind", sorted(MODELS))
def test_taps_students_and_sps_work_for_every_family(kind):
    model = MODELS[kind]()
    with torch.no_grad():
        reference = model(**INPUTS, output_hidden_states=True).hidden_states
        out = run_model(model, INPUTS, Needs(hidden_states=True, qkv=True))
    assert len(out.hidden_states) == len(reference)
    for layer, states in out.hidden_states.items():
        torch.testing.assert_close(states, reference[layer])
    assert out.query[1].shape == (2, num_heads(model), 5, 32 // num_heads(model))
    student = build_student(model, [0, len(encoder_layers(model)) - 1])
    assert len(encoder_layers(student)) == 2 and ModelShape.of(student.config).layers == 2
    apply_sps(student, "upper_swap")
    assert len(encoder_layers(student)) == 4 and physical_layers(student) == 2
    with torch.no_grad():
        assert torch.isfinite(student(**INPUTS).logits).all()


def test_an_unsupported_model_type_names_itself_and_the_supported_ones():
    from transformers import GPT2Config

    with pytest.raises(ModelError, match=r"model type 'gpt2' is not supported \(supported: bert, .*distilbert"):
        family_of(GPT2Config())


def test_every_family_names_distinct_model_types():
    types = [t for f in FAMILIES for t in f.model_types]
    assert len(types) == len(set(types))
