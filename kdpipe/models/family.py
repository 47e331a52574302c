"""What kdpipe needs to know about one encoder family, in one place.

An ``EncoderFamily`` names where a Hugging Face model of that family keeps its transformer layers
and embeddings (relative to ``model.base_model``), which config fields hold its depth, width and
head count, and where each layer keeps its attention projections.  Everything else in kdpipe
(taps, SPS, students, shapes) asks the family instead of guessing attribute names.

To support another family: one new module like ``kdpipe/models/bert.py`` defining its
``EncoderFamily``, listed in ``kdpipe/models/adapters.py``'s ``FAMILIES``, plus a test.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

from torch import nn

from kdpipe.models.sources import ModelError


@dataclass(frozen=True)
class AttentionModules:
    """Where one encoder layer keeps its attention projections (module attribute paths)."""

    query: str
    key: str
    value: str
    output: str  # the output projection W_O; its input is the context
    block: str   # the module whose output is the attention block's (after residual + LayerNorm)
    heads_attr: str  # the head-count attribute of the module holding Q/K/V (read by its forward)

    @property
    def heads_module(self) -> str:
        """The module that holds the Q/K/V projections and computes the heads."""
        return self.query.rpartition(".")[0]


@dataclass(frozen=True)
class EncoderFamily:
    name: str
    model_types: tuple[str, ...]  # config.model_type values of this family
    layers: str                   # ModuleList of transformer layers, relative to model.base_model
    embeddings: str               # embeddings module, relative to model.base_model
    depth_field: str              # config fields: layers, width, heads
    width_field: str
    heads_field: str
    attention: AttentionModules

    # ---- config fields
    def depth(self, config) -> int:
        return getattr(config, self.depth_field)

    def width(self, config) -> int:
        return getattr(config, self.width_field)

    def heads(self, config) -> int:
        return getattr(config, self.heads_field)

    # ---- modules
    def layer_list(self, model: nn.Module) -> nn.ModuleList:
        layers = get_module(model.base_model, self.layers)
        if not isinstance(layers, nn.ModuleList):
            raise ModelError(f"{type(model).__name__}: no layer list at base_model.{self.layers} ({self.name})")
        return layers

    def set_layer_list(self, model: nn.Module, layers: nn.ModuleList) -> None:
        parent, _, attr = self.layers.rpartition(".")
        setattr(get_module(model.base_model, parent) if parent else model.base_model, attr, layers)

    def embeddings_module(self, model: nn.Module) -> nn.Module:
        return get_module(model.base_model, self.embeddings)

    def attention_module(self, layer: nn.Module, which: str) -> nn.Module:
        """``which``: query, key, value, output, block or heads_module (see ``AttentionModules``)."""
        return get_module(layer, getattr(self.attention, which))

    @staticmethod
    def input_names(model: nn.Module, tokenizer) -> list[str]:
        """Tokenizer outputs that the model's forward accepts, in the tokenizer's order
        (DistilBERT takes no ``token_type_ids``)."""
        accepted = set(inspect.signature(model.forward).parameters)
        return [n for n in tokenizer.model_input_names if n in accepted]


def get_module(obj, dotted: str):
    """``obj.a.b.c`` for ``"a.b.c"``, or None where a part is missing."""
    for part in dotted.split(".") if dotted else ():
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj
