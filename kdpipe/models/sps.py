"""Shuffled Parameter Sharing (SPS, Pea-KD; docs/methods.md §7.2) on an unmodified HF encoder.

An SPS student has L physical layers and runs 2L: layers 1..L, then 1..L again.  The upper copy
of layer i is a second module of the same class whose parameters *are* layer i's parameters
(the same ``nn.Parameter`` objects: one tensor, two passes), so the parameter count stays that
of L layers and every gradient reaches the one shared tensor.  No model code is forked: the
encoder simply iterates a ``ModuleList`` of 2L entries, and hooks (taps) see 2L layers in call
order, which is exactly the effective depth layer mappings must use.

Shuffles (``student.sps.shuffle``):
- ``upper_swap`` (the paper, default): the upper copy computes its queries with layer i's key
  projection and its keys with the query projection (weights and biases).
- ``none``: plain sharing ("SPS-1" / "SPS_no_shuffle").
- ``random_per_step``: the released code's stochastic variant (``finetune_ER.py``): in each
  training forward every physical layer draws a swap flag applied to *both* of its passes; no
  swap in evaluation (so the exported model is plain sharing).  The released code forces
  no swap on every other step; here each step is all-off with probability 1/2 instead, drawn
  like the flags from torch's global RNG, which Accelerate checkpoints, so a resumed run
  replays the same draws.

On disk an SPS model is its L physical layers (``config.num_hidden_layers = L``) plus
``config.kdpipe_sps``; ``kdpipe.models.loading.load_classifier`` re-applies the sharing, and a plain
``from_pretrained`` still loads every weight (as an L-layer model without the second pass).
"""

from __future__ import annotations

import copy
import re
from typing import Literal

import torch
from torch import nn

from kdpipe.models.adapters import family_of, num_layers
from kdpipe.models.family import get_module
from kdpipe.models.sources import ModelError

Shuffle = Literal["upper_swap", "none", "random_per_step"]
SHUFFLES: tuple[str, ...] = ("upper_swap", "none", "random_per_step")
CONFIG_KEY = "kdpipe_sps"

__all__ = ["SHUFFLES", "apply_sps", "sps_settings", "physical_layers", "physical_state_dict"]


def sps_settings(model: nn.Module) -> dict | None:
    """``{"shuffle": ..., "physical_layers": L}`` for an SPS model, else None."""
    return getattr(model.config, CONFIG_KEY, None)


def physical_layers(model: nn.Module) -> int:
    """Distinct transformer layers (L), whatever the effective depth."""
    settings = sps_settings(model)
    return settings["physical_layers"] if settings else num_layers(model)


def _share(upper: nn.Module, lower: nn.Module, rename: dict[str, str]) -> None:
    """Point every parameter of ``upper`` at ``lower``'s parameter of the same (renamed) path."""
    source = dict(lower.named_parameters())
    for module_name, module in upper.named_modules():
        for param_name in list(module._parameters):
            path = f"{module_name}.{param_name}" if module_name else param_name
            prefix, dot, leaf = path.rpartition(".")
            module._parameters[param_name] = source[rename.get(prefix, prefix) + dot + leaf]


def apply_sps(model: nn.Module, shuffle: Shuffle = "upper_swap") -> nn.Module:
    """Turn ``model``'s L encoder layers into 2L effective layers sharing L layers' parameters
    (in place; returns ``model``).  Applying it to a model that already has SPS is an error."""
    if shuffle not in SHUFFLES:
        raise ModelError(f"student.sps.shuffle: {shuffle!r} is not one of {', '.join(SHUFFLES)}")
    family = family_of(model)
    lower = list(family.layer_list(model))
    settings = sps_settings(model)  # also set on a model loaded from disk, which has only its L layers
    if settings and len(lower) != settings["physical_layers"]:
        raise ModelError("apply_sps: the model already shares its layers (config.kdpipe_sps is set)")
    layout = family.attention
    q_parent, q_leaf = layout.query.rsplit(".", 1)
    k_parent, k_leaf = layout.key.rsplit(".", 1)
    swap = {layout.query: layout.key, layout.key: layout.query} if shuffle == "upper_swap" else {}
    upper = []
    for index, layer in enumerate(lower):
        twin = copy.deepcopy(layer)  # the module structure only: its parameters are replaced next
        _share(twin, layer, swap)
        for module in twin.modules():
            if hasattr(module, "layer_idx"):  # position in the stack, for caches
                module.layer_idx = len(lower) + index
        upper.append(twin)
    family.set_layer_list(model, nn.ModuleList([*lower, *upper]))
    setattr(model.config, CONFIG_KEY, {"shuffle": shuffle, "physical_layers": len(lower)})
    if shuffle == "random_per_step":
        model.kdpipe_qk_swap = _RandomQKSwap(model, lower, upper, (q_parent, q_leaf), (k_parent, k_leaf))
        model.kdpipe_qk_swap.attach()
    return model


def physical_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict without the upper copies (what is saved: no tensor appears twice)."""
    settings = sps_settings(model)
    state = model.state_dict()
    if not settings:
        return state
    prefix = f"{model.base_model_prefix}.{family_of(model).layers}"
    pattern = re.compile(rf"^{re.escape(prefix)}\.(\d+)\.")
    keep = {}
    for key, value in state.items():
        match = pattern.match(key)
        if match is None or int(match.group(1)) < settings["physical_layers"]:
            keep[key] = value
    return keep


class _RandomQKSwap:
    """``random_per_step``: per training forward, swap Q/K of randomly drawn physical layers in
    both passes (by exchanging the two Linear modules' parameters for that forward only)."""

    def __init__(self, model, lower, upper, query: tuple[str, str], key: tuple[str, str]):
        self.model, self.flags = model, torch.zeros(len(lower), dtype=torch.bool)
        self.pairs = [(index % len(lower), get_module(layer, query[0]), query[1], get_module(layer, key[0]), key[1])
                      for index, layer in enumerate([*lower, *upper])]
        self.layers = [*lower, *upper]

    def attach(self) -> None:
        self.model.register_forward_pre_hook(self.draw)
        for position, layer in enumerate(self.layers):
            layer.register_forward_pre_hook(lambda module, args, p=position: self.swap(p))
            layer.register_forward_hook(lambda module, args, out, p=position: self.swap(p))

    def draw(self, module, args) -> None:
        if not self.model.training:
            self.flags.zero_()
            return
        step_on = torch.rand(()) < 0.5
        self.flags = (torch.rand(len(self.flags)) < 0.5) & step_on

    def swap(self, position: int) -> None:
        physical, q_owner, q_leaf, k_owner, k_leaf = self.pairs[position]
        if not self.flags[physical]:
            return
        q, k = getattr(q_owner, q_leaf), getattr(k_owner, k_leaf)
        for name in ("weight", "bias"):
            q._parameters[name], k._parameters[name] = k._parameters[name], q._parameters[name]
