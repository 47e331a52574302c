"""Projections between student and teacher spaces (TinyBERT's W_h, RAIL-KD's maps, ALP-KD's W).

They are created when the method is built, live on the method (an ``nn.Module``), are trained
in the method's own optimizer group, are saved in the resumable training checkpoint, and are
never part of the exported student.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

ProjectionKind = Literal["trainable", "identity", "orthogonal"]


def projection(in_dim: int, out_dim: int, kind: ProjectionKind = "trainable", seed: int = 0) -> nn.Module:
    """A map R^in_dim -> R^out_dim.

    - ``trainable``: a linear layer with bias (PyTorch's default init).
    - ``identity``: no parameters; needs in_dim == out_dim.
    - ``orthogonal``: a frozen random (semi-)orthogonal matrix drawn from ``seed`` alone, so it is
      the same in every process and after a resume without being checkpointed.
    """
    if kind == "identity":
        if in_dim != out_dim:
            raise ValueError(f"an identity projection needs equal widths, got {in_dim} -> {out_dim}")
        return nn.Identity()
    if kind == "trainable":
        return nn.Linear(in_dim, out_dim)
    if kind == "orthogonal":
        layer = nn.Linear(in_dim, out_dim, bias=False)
        g = torch.Generator().manual_seed(seed)
        q, _ = torch.linalg.qr(torch.randn(max(in_dim, out_dim), min(in_dim, out_dim), generator=g))
        layer.weight.data.copy_(q if out_dim >= in_dim else q.T)  # [out, in] with orthonormal rows/cols
        return layer.requires_grad_(False)
    raise ValueError(f"unknown projection kind {kind!r} (trainable, identity, orthogonal)")


def width_map(student_dim: int, teacher_dim: int) -> nn.Module:
    """Student -> teacher width: the identity when widths match, else a trainable linear map."""
    return nn.Identity() if student_dim == teacher_dim else nn.Linear(student_dim, teacher_dim)
