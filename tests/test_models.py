import pytest
import torch

from kdpipe.models.adapters import encoder_layers
from kdpipe.models.loading import count_parameters, load_classifier, save_model
from kdpipe.models.sources import ModelError, resolve_model_path
from kdpipe.models.students import build_student, select_layers

from conftest import padded_batch, tiny_bert, tiny_distilbert


@pytest.mark.parametrize("choice, expected", [
    ("uniform", [1, 3, 5]), ("first", [0, 1, 2]), ("last", [3, 4, 5]), ([0, 2, 5], [0, 2, 5])])
def test_layer_selection_strategies(choice, expected):
    assert select_layers(6, 3, choice) == expected


def test_uniform_selection_keeps_the_top_layer():
    assert select_layers(12, 4, "uniform") == [2, 5, 8, 11]
    assert select_layers(6, 6, "uniform") == list(range(6))


def test_bad_selections_fail_with_the_key_at_fault():
    with pytest.raises(ModelError, match=r"student\.num_layers: 7 is deeper than the teacher \(6 layers\)"):
        select_layers(6, 7, "uniform")
    with pytest.raises(ModelError, match=r"student\.layers: \[6\] out of range"):
        select_layers(6, 3, [0, 1, 6])


def test_student_copies_the_selected_teacher_layers():
    teacher = tiny_bert(layers=4)
    student = build_student(teacher, [1, 3])
    assert student.config.num_hidden_layers == 2 and len(encoder_layers(student)) == 2
    for s_i, t_i in [(0, 1), (1, 3)]:
        for (name, p_s), (_, p_t) in zip(encoder_layers(student)[s_i].named_parameters(),
                                         encoder_layers(teacher)[t_i].named_parameters()):
            assert torch.equal(p_s, p_t), name
    assert torch.equal(student.classifier.weight, teacher.classifier.weight)
    assert student.bert.embeddings.word_embeddings.weight.data_ptr() != \
        teacher.bert.embeddings.word_embeddings.weight.data_ptr()  # a copy, not shared
    assert count_parameters(student) < count_parameters(teacher)
    assert len(encoder_layers(teacher)) == 4  # the teacher is untouched


def test_distilbert_students_are_supported():
    student = build_student(tiny_distilbert(), [1])
    assert student.config.n_layers == 1
    student(input_ids=torch.tensor([[101, 2000, 102]]))


def test_student_round_trips_through_save_pretrained(tmp_path, tokenizer):
    student = build_student(tiny_bert(layers=4), [0, 3]).eval()
    save_model(student, tokenizer, tmp_path / "s", extra={"role": "student"})
    again = load_classifier(tmp_path / "s").eval()
    ids = tokenizer(["a short test"], return_tensors="pt")
    assert again.config.num_hidden_layers == 2
    assert torch.equal(student(**ids).logits, again(**ids).logits)
    assert (tmp_path / "s" / "model.safetensors").exists() and (tmp_path / "s" / "kdpipe.json").exists()


def test_model_path_errors(tmp_path):
    with pytest.raises(ModelError, match="not a model folder"):
        resolve_model_path(str(tmp_path))


@pytest.mark.parametrize("make", [tiny_bert, tiny_distilbert])
def test_set_attention_heads_reshapes_the_same_weights(make):
    """MLKD-BERT's free head count: the same parameters, heads of d/A, reversible."""
    from kdpipe.models.sources import ModelError
    from kdpipe.models.loading import count_parameters
    from kdpipe.models.students import set_attention_heads
    from kdpipe.models.taps import Needs, num_heads, run_model

    model = make()
    with torch.no_grad():  # sharper attention than the random init's near-uniform one
        for name, p in model.named_parameters():
            if any(k in name for k in ("query.weight", "key.weight", "q_lin.weight", "k_lin.weight")):
                p.mul_(30)
    inputs = padded_batch(8)
    if "token_type_ids" not in model.forward.__code__.co_varnames:
        inputs.pop("token_type_ids")
    last = Needs(hidden_states=True, layers=frozenset({2}))
    before = run_model(model, inputs, last).hidden_states[2]
    n_params = count_parameters(model)
    set_attention_heads(model, 2)  # width 32: 4 heads of 8 -> 2 heads of 16
    assert num_heads(model) == 2 and count_parameters(model) == n_params
    out = run_model(model, inputs, Needs(qkv=True, layers=frozenset({1})))
    assert out.query[1].shape == (2, 2, 8, 16)
    # wider heads attend differently ...
    assert (run_model(model, inputs, last).hidden_states[2] - before).abs().max() > 1e-2
    set_attention_heads(model, 4)  # ... and it is only a reshape: back to the same function
    torch.testing.assert_close(run_model(model, inputs, last).hidden_states[2], before)
    with pytest.raises(ModelError, match="5 attention heads do not divide the hidden width 32"):
        set_attention_heads(model, 5)
