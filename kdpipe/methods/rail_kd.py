"""RAIL-KD: RAndom Intermediate Layer mapping for KD (Haidar et al., 2022).  See docs/methods.md §3.

Each epoch (or each step, ``resample="batch"``) m = L_S teacher layers are drawn without
replacement from the pool 1..L_T - exclude_last, sorted, and paired in order with the student's
layers 1..L_S.  Every selected layer is mean-pooled over its real tokens, mapped into a common
space, L2-normalised, and the student is pulled towards the teacher:

    layer-wise (rail_kd_l):   L_RAIL = mean_{i, b} || n(W_S^i s^i_b) - n(W_T^{A(i)} t^{A(i)}_b) ||^2
    concatenated (rail_kd_c): L_RAIL = mean_b || n(W_S [s^1; ..; s^m]_b) - n(W_T [t^{A(1)}; ..; t^{A(m)}]_b) ||^2

    L = ce_weight * CE + kd_weight * T^2 KL + rail_weight * L_RAIL     (regression: MSEs, see base)

with n(x) = x / ||x||.  Defaults follow the spec's proposals: pool includes the teacher's last
layer, mask-aware mean pooling, squared distance averaged over layers and batch, re-drawn once
per epoch, and a teacher side that is *not* trained (identity, or a frozen random orthogonal map
when a width reduction is asked for), because when both sides are trainable the normalised loss
has a trivial zero (both maps emit one constant direction; §3.5).

The student always gets a trainable map into the common space: d_S -> u per student layer
(layer-wise) or m d_S -> u (concatenated), u = ``projection_dim`` or the teacher's width
(d_T, resp. m d_T).  Teacher-side maps are kept per *teacher layer id* so that each teacher layer
keeps its own map across re-draws (§3.9.4).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from kdpipe.methods.base import Method, MethodConfigError, PredictionParams, prediction_losses, upcast
from kdpipe.methods.projections import projection
from kdpipe.models.taps import ModelOutputs, Needs, mean_pooled

__all__ = ["RailKDConcat", "RailKDLayerwise", "RailKDParams", "normalized_spread", "pooled_layer",
           "rail_distance"]


class RailKDParams(PredictionParams):
    ce_weight: float = Field(default=1 / 3, ge=0)    # lambda_1: gold labels (MSE for regression)
    kd_weight: float = Field(default=1 / 3, ge=0)    # lambda_2: logit KD
    rail_weight: float = Field(default=1 / 3, ge=0)  # lambda_3: the RAIL representation loss
    temperature: float = Field(default=1.0, gt=0)    # the third-party code uses plain softmax (T = 1)
    resample: Literal["epoch", "batch"] = "epoch"    # when the teacher layers are re-drawn
    exclude_last: int = Field(default=0, ge=0)       # drop the teacher's last k layers from the pool
    # "mean": over real tokens; "mean_all": over every position, padding included (third-party
    # parity: it pads to 128, so this mostly averages padding).  "mean_all" needs the teacher's
    # token states, so it cannot use the teacher cache.
    pooling: Literal["mean", "mean_all"] = "mean"
    # "trainable" is for parity experiments only: with both sides trainable the loss can reach 0
    # with no information transferred (both maps output one constant direction; §3.5).
    teacher_projection: Literal["identity", "orthogonal", "trainable"] = "identity"
    projection_dim: int | None = Field(default=None, gt=0)  # u; None = the teacher's width (m d_T concatenated)
    squared: bool = True   # False: the third-party un-squared L2 distance
    seed: int = 0          # the layer draws and frozen maps; the pipeline sets it to params.yaml `seed`


# ------------------------------------------------------------------------------------------ losses
def pooled_layer(out: ModelOutputs, layer: int, pooling: Literal["mean", "mean_all"] = "mean") -> torch.Tensor:
    """One vector per example for ``layer``: [B, d].

    ``mean``: mean over real tokens (attention_mask 1); read through ``mean_pooled`` so a teacher
    cache that stores the pooled vectors serves it.  ``mean_all``: plain mean over all n positions,
    padding included (needs ``hidden_states``).
    """
    if pooling == "mean":
        return mean_pooled(out, layer)
    if out.hidden_states is None or layer not in out.hidden_states:
        raise KeyError(f"pooling 'mean_all' needs the token states of layer {layer} (hidden_states), "
                       f"which a teacher cache does not hold")
    return out.hidden_states[layer].mean(dim=1)


def rail_distance(student_vecs: torch.Tensor, teacher_vecs: torch.Tensor, squared: bool = True) -> torch.Tensor:
    """Distance between L2-normalised vectors, averaged over layers and examples.

    Args: student_vecs, teacher_vecs [M, B, u] (M layers; [1, B, u] or [B, u] for the concatenated
    variant), already projected into the common space.  Each vector is normalised along u, then
    ||s_hat - t_hat||^2 (``squared``) or ||s_hat - t_hat|| is taken per (layer, example) and
    averaged.  The squared form equals 2 - 2 cos(s, t).  Returns a scalar (fp32 at least).
    """
    diff = F.normalize(upcast(student_vecs), dim=-1) - F.normalize(upcast(teacher_vecs), dim=-1)
    if squared:
        return diff.pow(2).sum(-1).mean()
    return torch.linalg.vector_norm(diff, dim=-1).mean()


def normalized_spread(vecs: torch.Tensor) -> torch.Tensor:
    """Collapse monitor for trainable teacher maps: total variance over the batch of the
    L2-normalised vectors, averaged over layers.  vecs [M, B, u] -> scalar in [0, 1]; 0 means every
    example maps to the same direction (the trivial solution of §3.5)."""
    unit = F.normalize(upcast(vecs), dim=-1)
    return unit.var(dim=-2, unbiased=False).sum(-1).mean()


# ----------------------------------------------------------------------------------------- methods
class _RailKD(Method):
    """Shared by the layer-wise and concatenated variants: validation, the draw, pooling, the total."""

    Params = RailKDParams
    params: RailKDParams
    needs_shapes = True
    not_per_token = None  # layer states mean-pooled over every real token; logit KD per word

    def __init__(self, params: RailKDParams, regression: bool, shapes=None):
        super().__init__(params, regression, shapes)
        s, t = shapes.student, shapes.teacher
        self.mapping = self.resolve_mapping("random", resample=params.resample, exclude_last=params.exclude_last,
                                            seed=params.seed, param=f"{self.name}.exclude_last")
        self._began = False  # whether begin_step ran yet (for epoch_record with per-batch draws)
        self.student_needs = Needs(hidden_states=True, layers=self.mapping.student_layers)
        # the draw changes over training, so the teacher exposes its whole pool
        self.teacher_needs = Needs(hidden_states=True, layers=self.mapping.teacher_layers)
        self.build_projections(s.hidden, t.hidden, len(self.mapping.student))

    def build_projections(self, student_width: int, teacher_width: int, m: int) -> None:
        raise NotImplementedError

    def rail_loss(self, student_vecs: list[torch.Tensor], teacher_vecs: list[torch.Tensor],
                  teacher_layers: list[int]) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def _target_dim(self, teacher_space: int, what: str) -> int:
        """u, checked against the teacher-side map kind (identity keeps the teacher's space)."""
        p = self.params
        u = p.projection_dim if p.projection_dim is not None else teacher_space
        if p.teacher_projection == "identity" and u != teacher_space:
            raise MethodConfigError(
                f"{self.name}.projection_dim: {u} with teacher_projection 'identity' -- the identity keeps "
                f"the teacher's {what} ({teacher_space}); leave projection_dim unset, or use teacher_projection "
                f"'orthogonal' (frozen) to reduce it")
        return u

    @property
    def teacher_cacheable(self) -> bool:  # type: ignore[override]
        return self.params.pooling == "mean"  # mean_all reads the teacher's padded token states

    def begin_step(self, epoch: int, step: int) -> None:
        super().begin_step(epoch, step)
        self._began = True

    def current_draw(self) -> list[int]:
        """The teacher layers paired with student layers 1..L_S at the current (epoch, step)."""
        return [ts[0] for _, ts in self.mapping.pairs(self.epoch, self.step)]

    def losses(self, student, teacher, labels):
        p = self.params
        pairs = self.mapping.pairs(self.epoch, self.step)
        student_vecs = [upcast(pooled_layer(student, s, p.pooling)) for s, _ in pairs]
        teacher_layers = [ts[0] for _, ts in pairs]
        # teacher vectors are constants, whether they come from a no_grad forward or the cache
        teacher_vecs = [upcast(pooled_layer(teacher, t, p.pooling)).detach() for t in teacher_layers]
        parts = prediction_losses(student, teacher, labels, self.regression, p.temperature)
        parts.update(self.rail_loss(student_vecs, teacher_vecs, teacher_layers))
        total = p.ce_weight * parts["hard"] + p.kd_weight * parts["kd"] + p.rail_weight * parts["rail"]
        return {"loss": total, **parts}

    def epoch_record(self, epoch: int) -> dict:
        if self.params.resample == "epoch":
            return {"teacher_layers": self.mapping.draw(epoch)}
        # Per-batch draws: report the epoch's first one.  The engine calls this at the start of the
        # epoch, either just before the epoch's first begin_step (the next step is self.step + 1) or
        # just after it (the current step is the first).
        step = self.step if (self._began and self.epoch == epoch) else self.step + int(self._began)
        return {"teacher_layers": self.mapping.draw(epoch, step), "teacher_layers_step": step,
                "teacher_layers_note": "re-drawn every batch; this is the draw of the epoch's first step"}

    def describe(self) -> dict:
        return {**super().describe(), "teacher_pool": list(self.mapping.pool), "projection_dim_used": self.dim}


class RailKDLayerwise(_RailKD):
    """RAIL-KD_l: one distance per (student layer, drawn teacher layer) pair."""

    name = "rail_kd_l"

    def build_projections(self, student_width, teacher_width, m):
        p = self.params
        self.dim = self._target_dim(teacher_width, "width d_T")
        self.student_maps = nn.ModuleDict({
            str(s): projection(student_width, self.dim, "trainable") for s in self.mapping.student})
        # keyed by teacher layer id (every layer of the pool), seeded per layer when frozen random
        self.teacher_maps = nn.ModuleDict({
            str(t): projection(teacher_width, self.dim, p.teacher_projection, seed=_layer_seed(p.seed, t))
            for t in self.mapping.pool})

    def rail_loss(self, student_vecs, teacher_vecs, teacher_layers):
        students = zip(self.mapping.student, student_vecs, strict=True)
        teachers = zip(teacher_layers, teacher_vecs, strict=True)
        s_proj = torch.stack([self.student_maps[str(s)](v) for s, v in students])  # [M, B, u]
        t_proj = torch.stack([self.teacher_maps[str(t)](v) for t, v in teachers])  # [M, B, u]
        out = {"rail": rail_distance(s_proj, t_proj, self.params.squared)}
        if self.params.teacher_projection == "trainable":
            out["rail_teacher_spread"] = normalized_spread(t_proj.detach())
        return out


class RailKDConcat(_RailKD):
    """RAIL-KD_c: concatenate the m pooled vectors (sorted layer order) and take one distance."""

    name = "rail_kd_c"

    def build_projections(self, student_width, teacher_width, m):
        p = self.params
        self.dim = self._target_dim(m * teacher_width, "concatenated width m*d_T")
        self.student_map = projection(m * student_width, self.dim, "trainable")
        # its input changes with every draw (other layers get concatenated): one more reason to
        # keep it fixed rather than trained (§3.4)
        self.teacher_map = projection(m * teacher_width, self.dim, p.teacher_projection, seed=p.seed)

    def rail_loss(self, student_vecs, teacher_vecs, teacher_layers):
        s_proj = self.student_map(torch.cat(student_vecs, dim=-1))  # [B, u]
        t_proj = self.teacher_map(torch.cat(teacher_vecs, dim=-1))  # [B, u]
        out = {"rail": rail_distance(s_proj, t_proj, self.params.squared)}
        if self.params.teacher_projection == "trainable":
            out["rail_teacher_spread"] = normalized_spread(t_proj.detach().unsqueeze(0))
        return out


def _layer_seed(seed: int, teacher_layer: int) -> int:
    """A distinct, reproducible seed for each teacher layer's frozen orthogonal map."""
    return seed * 1000 + teacher_layer
