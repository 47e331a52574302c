"""Method registry: the names usable as ``distill.runs.<run>.method`` in params.yaml."""

from __future__ import annotations

from kdpipe.methods.base import FineTune, Method, MethodConfigError, MethodParams, ModelShape, Shapes
from kdpipe.methods.alp_kd import AlpKD, AlpKDNonOverlap, AlpKDPartialOverlap
from kdpipe.methods.cr_ild import CRILD
from kdpipe.methods.mlkd import MLKD
from kdpipe.methods.pkd import PKD, PeaKD
from kdpipe.methods.rail_kd import RailKDConcat, RailKDLayerwise
from kdpipe.methods.tinybert import TinyBERT
from kdpipe.methods.vanilla_kd import VanillaKD

METHODS: dict[str, type[Method]] = {cls.name: cls for cls in (
    FineTune,   # gold labels only: the no-distillation baseline
    VanillaKD,  # logits (Hinton et al.)
    PKD,        # + normalised [CLS] of intermediate layers (BERT-PKD)
    PeaKD,      # PKD on an SPS student initialised by PTP (Pea-KD)
    TinyBERT,   # attention scores + hidden states, then logits (two phases)
    RailKDLayerwise, RailKDConcat,                  # random sorted teacher layers, mean-pooled
    AlpKD, AlpKDNonOverlap, AlpKDPartialOverlap,    # attention over teacher layers' [CLS]
    MLKD,       # token/MHA-split relations + hidden states, then sample relations + logits (two phases)
    CRILD,      # last-layer ILD on mixup inputs (+ consistency), then logits (two phases)
)}


def build_method(name: str, params: dict, regression: bool, shapes: Shapes | None = None) -> Method:
    cls = METHODS[name]
    return cls(cls.Params(**params), regression=regression, shapes=shapes)


__all__ = ["METHODS", "Method", "MethodConfigError", "MethodParams", "ModelShape", "Shapes", "build_method"]
