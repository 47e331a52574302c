"""What a loss may read from a model's forward pass, captured only when some loss asks for it.

A method declares its ``Needs`` for the student and the teacher; ``run_model`` returns a
``ModelOutputs`` with exactly those fields filled, for exactly the layers asked for.  Everything
comes from forward hooks on the unmodified Hugging Face modules (model code is never forked),
so any attention implementation (eager, sdpa, flash) works:

- hidden states: the embeddings module's output (layer 0) and each encoder layer's output;
- per-head Q/K/V: the outputs of the query/key/value projections, split into heads;
- pre-softmax attention scores: Q K^T / sqrt(d_k) from those, without the padding mask;
- attention context: the input of the attention output projection W_O (heads concatenated);
- attention output: the attention block's output (after W_O, residual and LayerNorm).

``run_model`` can also mix the batch at the embedding level (``Mixup``, CR-ILD): a hook on the
embeddings module replaces its output by lambda E + (1 - lambda) E[partner] and the model sees
the union of the two attention masks.

Layer numbers follow Hugging Face's ``hidden_states`` tuple: 0 is the embedding output,
1..L are the transformer layers in the order they run.  Hooks number layers by call order,
so a model that runs a physical layer twice (weight sharing) gets 2L numbered layers.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, fields

import torch
from torch import nn

from kdpipe.models.adapters import family_of, num_heads


@dataclass(frozen=True)
class Needs:
    """Which signals to capture; ``layers`` limits per-layer signals (None = every layer)."""

    hidden_states: bool = False     # [B, n, d] per layer 0..L
    attention_scores: bool = False  # [B, A, n, n] per layer 1..L, pre-softmax, no mask added
    qkv: bool = False               # query/key/value [B, A, n, d_k] per layer 1..L
    context: bool = False           # [B, n, d] per layer 1..L: heads' outputs before W_O
    attention_output: bool = False  # [B, n, d] per layer 1..L: after W_O, residual and LayerNorm
    layers: frozenset[int] | None = None

    def __or__(self, other: "Needs") -> "Needs":
        flags = {f.name: getattr(self, f.name) or getattr(other, f.name) for f in fields(self) if f.name != "layers"}
        if not any(flags.values()):
            layers = None
        elif not self.any_layer_signal:
            layers = other.layers
        elif not other.any_layer_signal:
            layers = self.layers
        elif self.layers is None or other.layers is None:
            layers = None
        else:
            layers = self.layers | other.layers
        return Needs(**flags, layers=layers)

    @property
    def any_layer_signal(self) -> bool:
        return self.hidden_states or self.attention_scores or self.qkv or self.context or self.attention_output

    def wants(self, layer: int) -> bool:
        return self.layers is None or layer in self.layers


@dataclass(frozen=True)
class Mixup:
    """Embedding-level mixup of a batch with a partner ordering (CR-ILD): every example i becomes
    lam * E_i + (1 - lam) * E_partner[i], attending to the union of both examples' tokens."""

    lam: float
    partner: torch.Tensor  # [B] long: the example each one is mixed with

    @classmethod
    def reversed_batch(cls, lam: float, batch_size: int, device=None) -> "Mixup":
        """CR-ILD's pairing: example i with example B - 1 - i."""
        return cls(lam, torch.arange(batch_size - 1, -1, -1, device=device))

    def mix(self, embeddings: torch.Tensor) -> torch.Tensor:
        """[B, n, d] -> [B, n, d]."""
        return self.lam * embeddings + (1 - self.lam) * embeddings[self.partner.to(embeddings.device)]

    def union_mask(self, attention_mask: torch.Tensor) -> torch.Tensor:
        """[B, n] -> [B, n]: a token is real if it is real in either mixed example (lam = 1 mixes
        nothing in, so the batch stays exactly the clean one)."""
        if self.lam >= 1:
            return attention_mask
        return torch.maximum(attention_mask, attention_mask[self.partner.to(attention_mask.device)])


@dataclass
class ModelOutputs:
    """One forward pass.  Per-layer fields map layer number -> tensor and hold only the layers
    that were asked for.  ``cls``/``mean`` are per-example vectors [B, d] per layer: a teacher
    cache fills them directly; for a live model they are derived from ``hidden_states``."""

    logits: torch.Tensor                                  # [B, C]; C = 1 for regression; tagging [B, W, C] per word;
                                                          # QA [B, 2, n]: start and end over positions
    attention_mask: torch.Tensor | None                   # [B, n], 1 = real token; None from a cache
    hidden_states: dict[int, torch.Tensor] | None = None  # [B, n, d]
    attention_scores: dict[int, torch.Tensor] | None = None  # [B, A, n, n]
    query: dict[int, torch.Tensor] | None = None          # [B, A, n, d_k]
    key: dict[int, torch.Tensor] | None = None
    value: dict[int, torch.Tensor] | None = None
    context: dict[int, torch.Tensor] | None = None        # [B, n, d]
    attention_output: dict[int, torch.Tensor] | None = None  # [B, n, d]
    cls: dict[int, torch.Tensor] | None = None            # [B, d]
    mean: dict[int, torch.Tensor] | None = None           # [B, d]
    mix: Mixup | None = None                              # the mixup this pass ran with (mask = union)
    span: bool = False                                    # QA: logits are start/end distributions over positions
    clean: "ModelOutputs | None" = None                   # the same model's unmixed pass (no grad)


# ----------------------------------------------------------------------------- feature extractors
def _need(field: dict | None, layer: int, what: str) -> torch.Tensor:
    if field is None or layer not in field:
        raise KeyError(f"{what} of layer {layer} was not captured: add it to the method's Needs")
    return field[layer]


def cls_vector(out: ModelOutputs, layer: int) -> torch.Tensor:
    """The first token's state ([CLS] / <s>) of ``layer``: [B, d]."""
    if out.cls is not None and layer in out.cls:
        return out.cls[layer]
    return _need(out.hidden_states, layer, "hidden state")[:, 0]


def mean_pooled(out: ModelOutputs, layer: int) -> torch.Tensor:
    """Mean of ``layer``'s token states over real tokens only (padding excluded): [B, d]."""
    if out.mean is not None and layer in out.mean:
        return out.mean[layer]
    return masked_mean(_need(out.hidden_states, layer, "hidden state"), out.attention_mask)


def masked_mean(states: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """states [B, n, d], attention_mask [B, n] (1 = real) -> [B, d]."""
    mask = attention_mask.to(states.dtype).unsqueeze(-1)
    return (states * mask).sum(1) / mask.sum(1).clamp_min(1)


# ----------------------------------------------------------------------------------------- hooks
def _split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """[B, n, A*d_k] -> [B, A, n, d_k]."""
    b, n, d = x.shape
    return x.view(b, n, heads, d // heads).transpose(1, 2)


def _first(output):
    return output[0] if isinstance(output, (tuple, list)) else output


class _Recorder:
    """Hook callbacks that number layers by call order within one forward."""

    def __init__(self, needs: Needs, heads: int):
        self.needs, self.heads = needs, heads
        self.calls: dict[str, int] = {}
        self.store: dict[str, dict[int, torch.Tensor]] = {}

    def _next(self, kind: str) -> int:
        self.calls[kind] = self.calls.get(kind, 0) + 1
        return self.calls[kind]

    def keep(self, kind: str, layer: int, value: torch.Tensor) -> None:
        if self.needs.wants(layer):
            self.store.setdefault(kind, {})[layer] = value

    def embeddings(self, module, args, output):
        self.keep("hidden_states", 0, _first(output))

    def layer_output(self, module, args, output):
        self.keep("hidden_states", self._next("layer"), _first(output))

    def projection(self, kind: str):
        def hook(module, args, output):
            self.keep(kind, self._next(kind), _split_heads(output, self.heads))
        return hook

    def context(self, module, args):
        self.keep("context", self._next("context"), args[0])

    def attention_output(self, module, args, output):
        self.keep("attention_output", self._next("attention_output"), _first(output))


@contextlib.contextmanager
def capture(model: nn.Module, needs: Needs, mix: Mixup | None = None):
    """Register the hooks ``needs`` asks for (and ``mix``'s); yields the recorder whose ``store`` fills up."""
    model = getattr(model, "module", model)  # hooks go on the model inside a DDP wrapper
    family = family_of(model)
    recorder = _Recorder(needs, num_heads(model))
    handles = []
    try:
        layers = family.layer_list(model)
        embeddings = family.embeddings_module(model)
        if mix is not None:  # registered first, so the embedding capture below sees the mixed output
            handles.append(embeddings.register_forward_hook(lambda m, a, out: mix.mix(out)))
        if needs.hidden_states:
            if needs.wants(0):
                handles.append(embeddings.register_forward_hook(recorder.embeddings))
            handles += [layer.register_forward_hook(recorder.layer_output) for layer in layers]
        if needs.qkv or needs.attention_scores or needs.context or needs.attention_output:
            for layer in layers:
                part = lambda which: family.attention_module(layer, which)  # noqa: E731
                if needs.qkv or needs.attention_scores:
                    handles.append(part("query").register_forward_hook(recorder.projection("query")))
                    handles.append(part("key").register_forward_hook(recorder.projection("key")))
                if needs.qkv:
                    handles.append(part("value").register_forward_hook(recorder.projection("value")))
                if needs.context:
                    handles.append(part("output").register_forward_pre_hook(recorder.context))
                if needs.attention_output:
                    handles.append(part("block").register_forward_hook(recorder.attention_output))
        yield recorder
    finally:
        for h in handles:
            h.remove()


def attention_scores(query: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
    """Pre-softmax scores Q K^T / sqrt(d_k): [B, A, n, d_k] x2 -> [B, A, n, n]."""
    return torch.matmul(query, key.transpose(-1, -2)) / math.sqrt(query.shape[-1])


# Extractive QA: the logit of a padding position, so no softmax puts mass there.  Finite and within
# float16/bfloat16 range: a cached teacher keeps it, and 0 * (a - b) stays 0 in a KL term.
PADDING_LOGIT = -1e4


def head_logits(out, attention_mask: torch.Tensor, words: torch.Tensor | None = None) -> torch.Tensor:
    """A forward's task logits: [B, C] (sentence), [B, W, C] per word with ``words`` (tagging),
    or for a question-answering head its start and end logits stacked as [B, 2, n], two
    distributions over the window's positions, padding at ``PADDING_LOGIT``.  The QA layout
    makes the per-row CE and KL of tagging (over the last dim, rows start/end) the span losses."""
    if _is_span(out):
        logits = torch.stack([out.start_logits, out.end_logits], 1)
        return logits.masked_fill(~attention_mask.bool().unsqueeze(1), PADDING_LOGIT)
    return out.logits if words is None else word_logits(out.logits, words)


def _is_span(out) -> bool:
    return getattr(out, "start_logits", None) is not None


def word_logits(logits: torch.Tensor, first_tokens: torch.Tensor) -> torch.Tensor:
    """A token classifier's logits read at each word's first sub-token: [B, n, C] and
    first_tokens [B, W] (-1 = no such token: padding or truncated) -> [B, W, C], zeros at -1."""
    index = first_tokens.clamp(min=0).unsqueeze(-1).expand(-1, -1, logits.shape[-1])
    return logits.gather(1, index).masked_fill((first_tokens < 0).unsqueeze(-1), 0.0)


def run_model(model: nn.Module, inputs: dict[str, torch.Tensor], needs: Needs = Needs(),
              mix: Mixup | None = None, words: torch.Tensor | None = None) -> ModelOutputs:
    """Forward ``model`` on ``inputs`` capturing what ``needs`` asks for (nothing else is kept);
    with ``mix``, on the mixed embeddings and the union attention mask; with ``words`` (tagging:
    each word's first sub-token, ``Encoder.words``), logits per word."""
    if mix is not None:
        inputs = {**inputs, "attention_mask": mix.union_mask(inputs["attention_mask"])}
    if not needs.any_layer_signal and mix is None:
        out = model(**inputs, return_dict=True)
        return ModelOutputs(logits=head_logits(out, inputs["attention_mask"], words),
                            attention_mask=inputs["attention_mask"], span=_is_span(out))
    with capture(model, needs, mix) as rec:
        out = model(**inputs, return_dict=True)
    s = rec.store
    scores = None
    if needs.attention_scores:
        scores = {layer: attention_scores(q, s["key"][layer]) for layer, q in s.get("query", {}).items()}
    return ModelOutputs(
        logits=head_logits(out, inputs["attention_mask"], words), attention_mask=inputs["attention_mask"],
        hidden_states=s.get("hidden_states", {}) if needs.hidden_states else None,
        attention_scores=scores,
        query=s.get("query", {}) if needs.qkv else None,
        key=s.get("key", {}) if needs.qkv else None,
        value=s.get("value", {}) if needs.qkv else None,
        context=s.get("context", {}) if needs.context else None,
        attention_output=s.get("attention_output", {}) if needs.attention_output else None, mix=mix,
        span=_is_span(out))
