"""What a loss may read from a model's forward pass, captured only when some loss asks for it.

A method declares its ``Needs`` for the student and the teacher; ``run_model`` returns a
``ModelOutputs`` with exactly those fields filled.  Anything beyond what Hugging Face returns
(pre-softmax scores, per-head Q/K/V, attention context) is added here with forward hooks, so
model code is never forked.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Needs:
    hidden_states: bool = False  # embeddings + every layer output, [B, n, d] each
    attentions: bool = False     # attention probabilities per layer, [B, A, n, n] each

    def __or__(self, other: "Needs") -> "Needs":
        return Needs(**{k: getattr(self, k) or getattr(other, k) for k in self.__dataclass_fields__})


@dataclass
class ModelOutputs:
    logits: torch.Tensor                                 # [B, C]; C = 1 for regression
    attention_mask: torch.Tensor                         # [B, n], 1 = real token
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None


def run_model(model: torch.nn.Module, inputs: dict[str, torch.Tensor], needs: Needs = Needs()) -> ModelOutputs:
    out = model(**inputs, output_hidden_states=needs.hidden_states, output_attentions=needs.attentions,
                return_dict=True)
    if needs.attentions and not out.attentions:
        # sdpa returns an empty tuple instead of raising: make the mistake loud.
        raise RuntimeError("attention maps requested but the model returned none: load it with "
                           "attn_implementation='eager'")
    return ModelOutputs(logits=out.logits, attention_mask=inputs["attention_mask"],
                        hidden_states=out.hidden_states if needs.hidden_states else None,
                        attentions=out.attentions if needs.attentions else None)
