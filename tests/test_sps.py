"""Shuffled Parameter Sharing: one tensor per shared weight, the upper pass = the lower layer with
Q/K swapped, L layers' parameters, 2L layers to the taps, save/reload and ONNX with sharing intact."""

from __future__ import annotations

import copy

import pytest
import torch
from safetensors import safe_open

from conftest import padded_batch, tiny_bert, tiny_distilbert
from kdpipe.models.adapters import encoder_layers
from kdpipe.models.loading import count_parameters, load_classifier, load_tokenizer, save_model
from kdpipe.models.sps import apply_sps, physical_layers, physical_state_dict
from kdpipe.models.taps import Needs, run_model

L = 2


def reference_model(plain, swap_flags_lower=(False,) * L, swap_flags_upper=(True,) * L):
    """An independent 2L-layer model with *copied* (unshared) weights: layer L+i = layer i, with
    Q/K exchanged where the flag says so.  What an SPS forward must equal."""
    ref = tiny_bert(layers=2 * L, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    source = encoder_layers(plain)
    for index, layer in enumerate(encoder_layers(ref)):
        physical = index % L
        swap = (swap_flags_upper if index >= L else swap_flags_lower)[physical]
        state = copy.deepcopy(source[physical].state_dict())
        if swap:
            for leaf in ("weight", "bias"):
                q, k = f"attention.self.query.{leaf}", f"attention.self.key.{leaf}"
                state[q], state[k] = state[k], state[q]
        layer.load_state_dict(state)
    for name in ("bert.embeddings", "bert.pooler", "classifier"):
        ref.get_submodule(name).load_state_dict(plain.get_submodule(name).state_dict())
    return ref


def plain_and_sps(shuffle="upper_swap"):
    plain = tiny_bert(layers=L, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    return plain, apply_sps(copy.deepcopy(plain), shuffle)


def test_upper_pass_shares_one_tensor_with_qk_swapped():
    _, sps = plain_and_sps()
    layers = encoder_layers(sps)
    assert len(layers) == 2 * L and physical_layers(sps) == L
    for i in range(L):
        low, up = layers[i].attention.self, layers[L + i].attention.self
        assert up.query.weight is low.key.weight and up.key.weight is low.query.weight
        assert up.query.bias is low.key.bias and up.value.weight is low.value.weight
        assert layers[L + i].output.dense.weight.data_ptr() == layers[i].output.dense.weight.data_ptr()
        assert layers[L + i] is not layers[i]  # distinct modules: hooks tell the passes apart


def test_parameter_count_is_that_of_the_physical_layers():
    plain, sps = plain_and_sps()
    assert count_parameters(sps) == count_parameters(plain)
    assert len(list(sps.parameters())) == len(list(plain.parameters()))


@pytest.mark.parametrize("shuffle,upper_swapped", [("upper_swap", True), ("none", False)])
def test_forward_equals_an_unshared_model_with_swapped_copies(shuffle, upper_swapped):
    plain, sps = plain_and_sps(shuffle)
    ref = reference_model(plain, swap_flags_upper=(upper_swapped,) * L).eval()
    batch = padded_batch(8)
    torch.testing.assert_close(sps.eval()(**batch).logits, ref(**batch).logits, rtol=0, atol=1e-6)


def test_gradient_of_a_shared_weight_sums_both_passes():
    plain, sps = plain_and_sps()
    ref = reference_model(plain)
    batch = padded_batch(8)
    sps(**batch).logits.sum().backward()
    ref(**batch).logits.sum().backward()
    r = encoder_layers(ref)
    expected = r[0].attention.self.query.weight.grad + r[L].attention.self.key.weight.grad
    torch.testing.assert_close(encoder_layers(sps)[0].attention.self.query.weight.grad, expected)


def test_taps_see_2L_layers_and_the_upper_query_is_the_key_projection():
    _, sps = plain_and_sps()
    batch = padded_batch(8)
    out = run_model(sps, batch, Needs(hidden_states=True, qkv=True))
    assert sorted(out.hidden_states) == list(range(2 * L + 1))
    layers = encoder_layers(sps)
    upper_input = out.hidden_states[L]  # the input of layer L+1 (the first upper pass)
    key_of_layer_1 = layers[0].attention.self.key(upper_input)
    b, n, d = key_of_layer_1.shape
    torch.testing.assert_close(out.query[L + 1], key_of_layer_1.view(b, n, 4, d // 4).transpose(1, 2))


def test_save_keeps_physical_layers_and_reload_restores_sharing(tmp_path, tokenizer):
    _, sps = plain_and_sps()
    save_model(sps, tokenizer, tmp_path / "m")
    with safe_open(str(tmp_path / "m" / "model.safetensors"), "pt") as f:
        layer_ids = {int(k.split(".")[3]) for k in f.keys() if k.startswith("bert.encoder.layer.")}
    assert layer_ids == set(range(L))  # no tensor written twice
    again = load_classifier(tmp_path / "m")
    layers = encoder_layers(again)
    assert len(layers) == 2 * L and layers[L].attention.self.query.weight is layers[0].attention.self.key.weight
    batch = padded_batch(8)
    torch.testing.assert_close(again.eval()(**batch).logits, sps.eval()(**batch).logits, rtol=0, atol=0)
    assert load_tokenizer(tmp_path / "m") is not None


def test_plain_transformers_load_gets_every_physical_weight(tmp_path, tokenizer):
    from transformers import AutoModelForSequenceClassification

    _, sps = plain_and_sps()
    save_model(sps, tokenizer, tmp_path / "m")
    plain, info = AutoModelForSequenceClassification.from_pretrained(str(tmp_path / "m"), output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert len(encoder_layers(plain)) == L


def test_physical_state_dict_of_a_plain_model_is_its_state_dict():
    plain = tiny_bert(layers=L)
    assert physical_state_dict(plain).keys() == plain.state_dict().keys()


def test_applying_twice_or_an_unknown_shuffle_fails():
    from kdpipe.models.sources import ModelError
    _, sps = plain_and_sps()
    with pytest.raises(ModelError, match="already"):
        apply_sps(sps)
    with pytest.raises(ModelError, match="student.sps.shuffle"):
        apply_sps(tiny_bert(layers=L), "sideways")


def test_distilbert_layout_is_shared_and_swapped():
    model = tiny_distilbert()
    before = count_parameters(model)
    apply_sps(model)
    layers = encoder_layers(model)
    assert len(layers) == 4 and count_parameters(model) == before
    assert layers[2].attention.q_lin.weight is layers[0].attention.k_lin.weight


def test_random_per_step_swaps_drawn_layers_in_both_passes_and_never_in_eval():
    plain, sps = plain_and_sps("random_per_step")
    batch = padded_batch(8)
    torch.testing.assert_close(sps.eval()(**batch).logits,
                               reference_model(plain, swap_flags_upper=(False,) * L).eval()(**batch).logits,
                               rtol=0, atol=1e-6)
    sps.train()
    seen = set()
    for seed in range(12):
        torch.manual_seed(seed)
        logits = sps(**batch).logits
        flags = tuple(bool(f) for f in sps.kdpipe_qk_swap.flags)
        seen.add(flags)
        ref = reference_model(plain, swap_flags_lower=flags, swap_flags_upper=flags).train()
        torch.testing.assert_close(logits, ref(**batch).logits, rtol=0, atol=1e-6)
    assert len(seen) > 1 and (False, False) in seen
    layers = encoder_layers(sps)  # swaps are undone after every forward
    assert layers[0].attention.self.query.weight is encoder_layers(sps)[L].attention.self.query.weight


def test_onnx_export_matches_pytorch(tmp_path):
    from kdpipe.export.convert import export_onnx, parity

    _, sps = plain_and_sps()
    batches = [padded_batch(8), padded_batch(11)]
    export_onnx(sps.eval(), batches[0], tmp_path / "m.onnx")
    assert parity(sps, tmp_path / "m.onnx", batches)["max_abs_diff"] < 1e-5
