"""Forward-hook taps: hidden states, pre-softmax scores, per-head Q/K/V and context checked
against Hugging Face's own outputs and an independent slow re-computation; layer selection,
hook hygiene, attention-implementation independence, Needs union, pooling, gradients."""

import math
from collections import Counter

import pytest
import torch
from transformers import (BertConfig, BertForSequenceClassification, DistilBertConfig,
                          DistilBertForSequenceClassification)

from conftest import padded_batch, tiny_bert, tiny_distilbert
from kdpipe.models.taps import ModelOutputs, Needs, attention_scores, cls_vector, masked_mean, mean_pooled, run_model

HEADS, HIDDEN = 4, 32
D_K = HIDDEN // HEADS
ALL = Needs(hidden_states=True, attention_scores=True, qkv=True, context=True)


# ----------------------------------------------------------------------------------- fixtures
def _inputs(batch: int = 3, length: int = 9, seed: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1000, 5000, (batch, length), generator=g)
    mask = torch.ones(batch, length, dtype=torch.long)
    mask[1, 6:] = 0   # 3 padded positions
    mask[2, 3:] = 0   # mostly padding
    ids[mask == 0] = 0
    return {"input_ids": ids, "attention_mask": mask}


@pytest.fixture(scope="module")
def inputs():
    return _inputs()


@pytest.fixture(scope="module")
def bert():
    return tiny_bert(layers=4)


def _distilbert(attn: str):
    """tiny_distilbert's weights under the asked attention implementation."""
    src = tiny_distilbert()
    cfg = DistilBertConfig(vocab_size=30522, dim=HIDDEN, n_layers=2, n_heads=HEADS, hidden_dim=64,
                           max_position_embeddings=128, num_labels=3, attn_implementation=attn)
    model = DistilBertForSequenceClassification(cfg).eval()
    model.load_state_dict(src.state_dict())
    assert model.config._attn_implementation == attn
    return model


def _bert_copy(src, attn: str):
    cfg = BertConfig(**{**src.config.to_dict(), "attn_implementation": attn})
    model = BertForSequenceClassification(cfg).eval()
    model.load_state_dict(src.state_dict())
    assert model.config._attn_implementation == attn
    return model


@pytest.fixture(scope="module")
def distil():
    return tiny_distilbert()  # sdpa: DistilBERT's default implementation


@pytest.fixture(scope="module")
def distil_eager():
    return _distilbert("eager")


def _layers(model):
    return model.bert.encoder.layer if hasattr(model, "bert") else model.distilbert.transformer.layer


def _proj(model, layer, which: str) -> torch.nn.Linear:
    if hasattr(model, "bert"):
        return getattr(layer.attention.self, which)
    return getattr(layer.attention, {"query": "q_lin", "key": "k_lin", "value": "v_lin"}[which])


def _hook_count(model) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def _additive(mask: torch.Tensor) -> torch.Tensor:
    """[B, n] 1 = real -> [B, 1, 1, n] additive (-inf on padding keys)."""
    return torch.zeros(mask.shape, dtype=torch.float32).masked_fill(mask == 0, float("-inf"))[:, None, None, :]


def _slow_context(model, layer, hidden_in: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """softmax(Q K^T / sqrt(d_k) + mask) V per head, from the raw weights, heads concatenated."""
    wq, wk, wv = (_proj(model, layer, w) for w in ("query", "key", "value"))
    heads = []
    for h in range(HEADS):
        rows = slice(h * D_K, (h + 1) * D_K)
        q = hidden_in @ wq.weight[rows].T + wq.bias[rows]
        k = hidden_in @ wk.weight[rows].T + wk.bias[rows]
        v = hidden_in @ wv.weight[rows].T + wv.bias[rows]
        s = q @ k.transpose(-1, -2) / math.sqrt(D_K)
        s = s.masked_fill(mask[:, None, :] == 0, float("-inf"))
        heads.append(torch.softmax(s, -1) @ v)
    return torch.cat(heads, -1)


# ------------------------------------------------------------------------------ hidden states
@pytest.mark.parametrize("kind", ["bert", "distilbert"])
def test_hidden_states_equal_hf_output_hidden_states(kind, inputs, bert, distil):
    model = bert if kind == "bert" else distil
    with torch.no_grad():
        ref = model(**inputs, output_hidden_states=True).hidden_states
        out = run_model(model, inputs, Needs(hidden_states=True))
    assert sorted(out.hidden_states) == list(range(len(ref)))  # 0 = embeddings .. L
    assert len(ref) == (5 if kind == "bert" else 3)
    for layer, expected in enumerate(ref):
        assert out.hidden_states[layer].shape == (3, 9, HIDDEN)
        torch.testing.assert_close(out.hidden_states[layer], expected, rtol=0, atol=0)
    # the layers really differ from each other (a hook stuck on one module would fail above)
    assert not torch.allclose(out.hidden_states[0], out.hidden_states[1])
    # logits and mask are passed through unchanged
    torch.testing.assert_close(out.logits, model(**inputs).logits)
    assert out.attention_mask is inputs["attention_mask"]
    assert out.attention_scores is None and out.query is None and out.context is None


# ------------------------------------------------------------------------ attention scores
@pytest.mark.parametrize("kind", ["bert", "distilbert"])
def test_scores_plus_mask_softmaxed_equal_hf_eager_attention_probs(kind, inputs, bert, distil_eager):
    model = bert if kind == "bert" else distil_eager
    with torch.no_grad():
        probs = model(**inputs, output_attentions=True).attentions
        out = run_model(model, inputs, Needs(attention_scores=True))
    assert sorted(out.attention_scores) == list(range(1, len(probs) + 1))
    mask = inputs["attention_mask"]
    for layer, expected in enumerate(probs, start=1):
        scores = out.attention_scores[layer]
        assert scores.shape == (3, HEADS, 9, 9)
        # pre-softmax and unmasked: padded key columns hold ordinary finite scores
        assert torch.isfinite(scores).all()
        assert scores[1, :, :, 6:].abs().sum() > 0
        got = torch.softmax(scores + _additive(mask), -1)
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    assert out.hidden_states is None and out.query is None  # Q/K used internally, not returned


def test_attention_scores_helper_is_scaled_dot_product():
    q = torch.tensor([[[[1.0, 2.0], [0.0, 1.0]]]])   # [1, 1, 2, 2]
    k = torch.tensor([[[[3.0, 0.0], [1.0, 1.0]]]])
    expected = torch.tensor([[[[3.0, 3.0], [0.0, 1.0]]]]) / math.sqrt(2)
    torch.testing.assert_close(attention_scores(q, k), expected)


# ----------------------------------------------------------------------------- Q/K/V, context
@pytest.mark.parametrize("kind", ["bert", "distilbert"])
def test_qkv_are_the_projections_split_into_heads(kind, inputs, bert, distil):
    model = bert if kind == "bert" else distil
    with torch.no_grad():
        hs = model(**inputs, output_hidden_states=True).hidden_states
        out = run_model(model, inputs, Needs(qkv=True, attention_scores=True))
        for i, layer in enumerate(_layers(model)):
            n = i + 1
            for which, captured in (("query", out.query), ("key", out.key), ("value", out.value)):
                assert captured[n].shape == (3, HEADS, 9, D_K)
                flat = _proj(model, layer, which)(hs[i])                     # [B, n, d]
                expected = torch.stack([flat[..., h * D_K:(h + 1) * D_K] for h in range(HEADS)], 1)
                torch.testing.assert_close(captured[n], expected)
            # scores are Q K^T / sqrt(d_k) of exactly those tensors
            torch.testing.assert_close(out.attention_scores[n],
                                       out.query[n] @ out.key[n].transpose(-1, -2) / math.sqrt(D_K))
    assert sorted(out.query) == sorted(out.key) == sorted(out.value) == list(range(1, len(hs)))
    assert not torch.allclose(out.query[1], out.key[1])  # not the same projection hooked twice


@pytest.mark.parametrize("kind", ["bert", "distilbert"])
def test_context_matches_slow_reference_and_reproduces_the_layer(kind, inputs, bert, distil):
    model = bert if kind == "bert" else distil
    mask = inputs["attention_mask"]
    with torch.no_grad():
        hs = model(**inputs, output_hidden_states=True).hidden_states
        out = run_model(model, inputs, Needs(context=True))
        assert sorted(out.context) == list(range(1, len(hs)))
        for i, layer in enumerate(_layers(model)):
            ctx = out.context[i + 1]
            assert ctx.shape == (3, 9, HIDDEN)
            torch.testing.assert_close(ctx, _slow_context(model, layer, hs[i], mask), rtol=1e-5, atol=1e-5)
            # W_O (+ residual, LayerNorm) and the FFN applied to the context give the layer's output
            if kind == "bert":
                attn_out = layer.attention.output(ctx, hs[i])
                rebuilt = layer.feed_forward_chunk(attn_out)
            else:
                attn_out = layer.sa_layer_norm(layer.attention.out_lin(ctx) + hs[i])
                rebuilt = layer.output_layer_norm(layer.ffn(attn_out) + attn_out)
            torch.testing.assert_close(rebuilt, hs[i + 1], rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------- layer selection
def test_layers_restricts_every_signal_to_the_asked_layers(bert, inputs):
    needs = Needs(hidden_states=True, attention_scores=True, qkv=True, context=True, layers=frozenset({0, 2}))
    with torch.no_grad():
        full = run_model(bert, inputs, ALL)
        part = run_model(bert, inputs, needs)
    assert set(part.hidden_states) == {0, 2}
    for field in ("attention_scores", "query", "key", "value", "context"):
        assert set(getattr(part, field)) == {2}, field  # layer 0 has no attention
        torch.testing.assert_close(getattr(part, field)[2], getattr(full, field)[2], rtol=0, atol=0)
    # numbering is by position in the model, not by position among the kept layers
    torch.testing.assert_close(part.hidden_states[2], full.hidden_states[2], rtol=0, atol=0)
    torch.testing.assert_close(part.hidden_states[0], full.hidden_states[0], rtol=0, atol=0)

    with torch.no_grad():
        last = run_model(bert, inputs, Needs(hidden_states=True, layers=frozenset({4})))
    assert set(last.hidden_states) == {4}
    torch.testing.assert_close(last.hidden_states[4], full.hidden_states[4], rtol=0, atol=0)


def _baseline(model, inputs) -> int:
    """Hooks present before any tap: transformers v5 installs its own output-capturing hooks
    (permanently) the first time hidden states / attentions are requested; install them now."""
    with torch.no_grad():
        model(**inputs, output_hidden_states=True, output_attentions=True)
    return _hook_count(model)


class _HookProbe:
    """A pre-hook on the classifier that counts the hooks registered anywhere mid-forward."""

    def __init__(self, model):
        self.model, self.seen = model, []
        self.handle = model.classifier.register_forward_pre_hook(self)

    def __call__(self, module, args):
        self.seen.append(_hook_count(self.model) - 1)  # minus this probe


def _hooks_by_module(model) -> Counter:
    return Counter({name: len(m._forward_hooks) + len(m._forward_pre_hooks)
                    for name, m in model.named_modules() if m._forward_hooks or m._forward_pre_hooks})


def test_no_layer_signal_registers_no_hooks(inputs, bert):
    base = _baseline(bert, inputs)
    probe = _HookProbe(bert)
    try:
        with torch.no_grad():
            out = run_model(bert, inputs, Needs())
            run_model(bert, inputs, Needs(layers=frozenset({1})))  # layers alone is no signal
        assert probe.seen == [base, base]
        assert out.hidden_states is None and out.attention_scores is None and out.context is None
        with torch.no_grad():
            run_model(bert, inputs, ALL)
        # the probe does see taps when some are asked for: embeddings + 4 x (layer, q, k, v, W_O)
        assert probe.seen[-1] == base + 1 + 4 * 5
    finally:
        probe.handle.remove()
    assert _hook_count(bert) == base  # and they are gone after the call


@pytest.mark.parametrize("needs, hooked", [
    (Needs(hidden_states=True), {"bert.embeddings", "layer"}),
    (Needs(hidden_states=True, layers=frozenset({2, 3})), {"layer"}),          # no layer 0: no embeddings hook
    (Needs(qkv=True), {"attention.self.query", "attention.self.key", "attention.self.value"}),
    (Needs(attention_scores=True), {"attention.self.query", "attention.self.key"}),
    (Needs(context=True), {"attention.output.dense"}),
])
def test_only_the_modules_a_signal_needs_are_hooked(bert, inputs, needs, hooked):
    base = _baseline(bert, inputs)
    seen = []
    probe = bert.classifier.register_forward_pre_hook(lambda m, a: seen.append(_hooks_by_module(bert)))
    try:
        with torch.no_grad():
            run_model(bert, inputs, needs)
    finally:
        probe.remove()
    extra = seen[0] - _hooks_by_module(bert)   # hooks present mid-forward that are not there after
    assert _hook_count(bert) == base
    kinds = {"layer" if name.startswith("bert.encoder.layer.") and name.count(".") == 3
             else name.split(".", 4)[-1] if name.startswith("bert.encoder.layer.") else name for name in extra}
    assert kinds - {"classifier"} == hooked


def test_hooks_are_removed_when_forward_raises(inputs, bert):
    base = _baseline(bert, inputs)

    def boom(module, args, output):
        raise RuntimeError("boom")

    mine = bert.bert.encoder.layer[1].register_forward_hook(boom)
    try:
        with pytest.raises(RuntimeError, match="boom"):
            run_model(bert, inputs, ALL)
    finally:
        mine.remove()
    assert _hook_count(bert) == base
    # the model still works, and a fresh capture numbers layers from the start again
    with torch.no_grad():
        out = run_model(bert, inputs, Needs(hidden_states=True))
    assert sorted(out.hidden_states) == [0, 1, 2, 3, 4]
    assert _hook_count(bert) == base


# ---------------------------------------------------------------- attention implementations
def test_signals_do_not_depend_on_the_attention_implementation(bert, inputs):
    sdpa = _bert_copy(bert, "sdpa")
    with torch.no_grad():
        a = run_model(bert, inputs, ALL)
        b = run_model(sdpa, inputs, ALL)
    for field in ("hidden_states", "attention_scores", "query", "key", "value", "context"):
        da, db = getattr(a, field), getattr(b, field)
        assert da.keys() == db.keys() and len(da) >= 4, field
        for layer in da:
            torch.testing.assert_close(db[layer], da[layer], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(b.logits, a.logits, rtol=1e-5, atol=1e-5)


def test_distilbert_sdpa_and_eager_give_the_same_signals(distil_eager, distil, inputs):
    sdpa = distil
    assert sdpa.config._attn_implementation == "sdpa"
    with torch.no_grad():
        a = run_model(distil_eager, inputs, ALL)
        b = run_model(sdpa, inputs, ALL)
    for field in ("hidden_states", "attention_scores", "context"):
        for layer, value in getattr(a, field).items():
            torch.testing.assert_close(getattr(b, field)[layer], value, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------------- Needs
def test_needs_union_ors_flags_and_unions_layers():
    a = Needs(hidden_states=True, layers=frozenset({1, 2}))
    b = Needs(qkv=True, layers=frozenset({2, 4}))
    u = a | b
    assert (u.hidden_states, u.qkv, u.attention_scores, u.context) == (True, True, False, False)
    assert u.layers == frozenset({1, 2, 4})
    assert (b | a) == u


def test_needs_union_all_layers_wins():
    some = Needs(context=True, layers=frozenset({3}))
    every = Needs(attention_scores=True)
    assert (some | every).layers is None
    assert (every | some).layers is None
    assert (some | every).context and (some | every).attention_scores


def test_needs_without_layer_signal_does_not_restrict():
    some = Needs(hidden_states=True, layers=frozenset({3}))
    assert (some | Needs()).layers == frozenset({3})
    assert (Needs() | some).layers == frozenset({3})
    # a stray layers set on a Needs that asks for nothing per-layer is ignored
    stray = Needs(layers=frozenset({1}))
    assert (some | stray).layers == frozenset({3})
    assert (stray | Needs(qkv=True)).layers is None
    assert (stray | stray).layers is None and not (stray | stray).any_layer_signal
    assert Needs() | Needs() == Needs()


def test_needs_wants():
    assert Needs().wants(7)
    n = Needs(hidden_states=True, layers=frozenset({0, 3}))
    assert n.wants(0) and n.wants(3) and not n.wants(1)
    assert not Needs().any_layer_signal and Needs(context=True).any_layer_signal


# ----------------------------------------------------------------------------- pooling
def test_masked_mean_hand_computed_and_ignores_padding():
    states = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]],
                           [[2.0, 0.0], [9.0, 9.0], [9.0, 9.0]]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    expected = torch.tensor([[2.0, 3.0], [2.0, 0.0]])
    torch.testing.assert_close(masked_mean(states, mask), expected)
    garbage = states.clone()
    garbage[0, 2] = torch.tensor([1e4, -3e4])
    garbage[1, 1:] = 7e3
    torch.testing.assert_close(masked_mean(garbage, mask), expected)
    # a float mask and a bool mask behave like the integer one
    torch.testing.assert_close(masked_mean(states, mask.float()), expected)
    torch.testing.assert_close(masked_mean(states, mask.bool()), expected)
    # an all-padding row gives zeros, not NaN
    torch.testing.assert_close(masked_mean(states, torch.tensor([[1, 1, 0], [0, 0, 0]]))[1], torch.zeros(2))


def test_cls_and_mean_prefer_cached_vectors():
    hs = {1: torch.arange(12.0).view(1, 3, 4), 2: torch.ones(1, 3, 4)}
    mask = torch.tensor([[1, 1, 0]])
    cached_cls = {1: torch.full((1, 4), -1.0)}
    cached_mean = {1: torch.full((1, 4), -2.0)}
    out = ModelOutputs(torch.zeros(1, 2), mask, hidden_states=hs, cls=cached_cls, mean=cached_mean)
    assert cls_vector(out, 1) is cached_cls[1]
    assert mean_pooled(out, 1) is cached_mean[1]
    # a layer the cache lacks falls back to the hidden states
    torch.testing.assert_close(cls_vector(out, 2), torch.ones(1, 4))
    torch.testing.assert_close(mean_pooled(out, 2), torch.ones(1, 4))


def test_cls_and_mean_derive_from_hidden_states():
    hs = {1: torch.arange(12.0).view(1, 3, 4)}      # tokens [0..3], [4..7], [8..11]
    out = ModelOutputs(torch.zeros(1, 2), torch.tensor([[1, 1, 0]]), hidden_states=hs)
    torch.testing.assert_close(cls_vector(out, 1), torch.tensor([[0.0, 1.0, 2.0, 3.0]]))
    torch.testing.assert_close(mean_pooled(out, 1), torch.tensor([[2.0, 3.0, 4.0, 5.0]]))  # padding excluded
    with pytest.raises(KeyError, match="Needs"):
        cls_vector(out, 2)
    with pytest.raises(KeyError, match="layer 3"):
        mean_pooled(ModelOutputs(torch.zeros(1, 2), None), 3)


def test_mean_pooled_of_a_live_model_ignores_padding(bert, inputs):
    """Padding positions' states are real numbers in BERT; they must not leak into the mean."""
    with torch.no_grad():
        out = run_model(bert, inputs, Needs(hidden_states=True, layers=frozenset({2})))
    pooled = mean_pooled(out, 2)
    expected = out.hidden_states[2][2, :3].mean(0)  # row 2 has 3 real tokens
    torch.testing.assert_close(pooled[2], expected)
    assert not torch.allclose(pooled[2], out.hidden_states[2][2].mean(0))
    torch.testing.assert_close(cls_vector(out, 2), out.hidden_states[2][:, 0])


# ----------------------------------------------------------------------------- gradients
def test_gradients_flow_from_captured_states_to_the_student():
    model = tiny_bert(layers=3).train()
    out = run_model(model, _inputs(), Needs(hidden_states=True, context=True, qkv=True, attention_scores=True,
                                             layers=frozenset({2})))
    emb = model.bert.embeddings.word_embeddings.weight
    for name in ("hidden_states", "context", "query", "key", "value", "attention_scores"):
        signal = getattr(out, name)[2]
        assert signal.requires_grad, name
        (grad,) = torch.autograd.grad(signal.pow(2).mean(), emb, retain_graph=True)
        assert grad.abs().sum() > 0, name
    out.hidden_states[2].pow(2).mean().backward()
    layers = model.bert.encoder.layer
    for p in (emb, layers[0].output.dense.weight, layers[1].attention.self.query.weight,
              layers[1].output.dense.weight):
        assert p.grad is not None and p.grad.abs().sum() > 0
    # nothing above layer 2 was involved
    assert layers[2].attention.self.query.weight.grad is None
    assert model.classifier.weight.grad is None


def test_taps_reach_inside_a_ddp_style_wrapper():
    """Under `accelerate launch` the engine passes a DistributedDataParallel wrapper, which has
    no config or layers of its own: hooks must go on ``wrapper.module``."""
    import torch
    from torch import nn

    from kdpipe.models.taps import Needs, run_model

    class Wrapper(nn.Module):  # what DDP looks like from outside: .module, forward passes through
        def __init__(self, module):
            super().__init__()
            self.module = module

        def forward(self, **kw):
            return self.module(**kw)

    model = tiny_bert()
    inputs = padded_batch(8)
    needs = Needs(hidden_states=True, qkv=True, context=True)
    direct, wrapped = run_model(model, inputs, needs), run_model(Wrapper(model), inputs, needs)
    for layer in range(1, 5):
        torch.testing.assert_close(wrapped.query[layer], direct.query[layer], rtol=0, atol=0)
        torch.testing.assert_close(wrapped.context[layer], direct.context[layer], rtol=0, atol=0)
    torch.testing.assert_close(wrapped.hidden_states[0], direct.hidden_states[0], rtol=0, atol=0)
