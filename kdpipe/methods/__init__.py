"""Method registry: the names usable as ``distill.runs.<run>.method`` in params.yaml."""

from __future__ import annotations

from kdpipe.methods.base import FineTune, Method, MethodParams
from kdpipe.methods.vanilla_kd import VanillaKD

METHODS: dict[str, type[Method]] = {cls.name: cls for cls in (
    FineTune,   # gold labels only: the no-distillation baseline
    VanillaKD,
)}


def build_method(name: str, params: dict, regression: bool) -> Method:
    cls = METHODS[name]
    return cls(cls.Params(**params), regression=regression)


__all__ = ["METHODS", "Method", "MethodParams", "build_method"]
