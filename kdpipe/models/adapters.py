"""The registry of encoder families and the questions every other module asks a model:
its family, its layers, its shape."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from kdpipe.models.bert import BERT
from kdpipe.models.distilbert import DISTILBERT
from kdpipe.models.family import EncoderFamily
from kdpipe.models.sources import ModelError

FAMILIES: tuple[EncoderFamily, ...] = (BERT, DISTILBERT)


def family_of(model_or_config) -> EncoderFamily:
    """The family of a model or of its config (by ``config.model_type``)."""
    config = getattr(model_or_config, "config", model_or_config)
    model_type = getattr(config, "model_type", None)
    for family in FAMILIES:
        if model_type in family.model_types:
            return family
    supported = ", ".join(t for f in FAMILIES for t in f.model_types)
    raise ModelError(f"model type {model_type!r} is not supported (supported: {supported}); "
                     f"add an EncoderFamily for it (kdpipe/models/family.py)")


def encoder_layers(model: nn.Module) -> nn.ModuleList:
    return family_of(model).layer_list(model)


def num_layers(model: nn.Module) -> int:
    """Effective depth: the layers a forward runs (an SPS model runs its physical layers twice)."""
    return len(encoder_layers(model))


def num_heads(model_or_config) -> int:
    config = getattr(model_or_config, "config", model_or_config)
    return family_of(config).heads(config)


@dataclass(frozen=True)
class ModelShape:
    layers: int   # transformer layers (hidden_states has layers + 1 entries)
    hidden: int   # width d
    heads: int    # attention heads A

    @classmethod
    def of(cls, config) -> "ModelShape":
        """From a Hugging Face config of any registered family."""
        family = family_of(config)
        return cls(family.depth(config), family.width(config), family.heads(config))


@dataclass(frozen=True)
class Shapes:
    student: ModelShape
    teacher: ModelShape
