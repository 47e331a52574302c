"""CR-ILD (Ko et al., EACL Findings 2023): last-layer ILD on mixup inputs with consistency
regularisation, then logit KD.  See docs/methods.md §6 (the released code, jongwooko/CR-ILD).

Stage ``ild`` (no labels), student layer L_S <- teacher layer L_T only.  Each step draws
lambda ~ Beta(a, a), lambda <- max(lambda, 1 - lambda) in [0.5, 1], and mixes every example with
its partner in the reversed batch at the embedding output; teacher (eval, no grad) and student
see the same mixture and the union attention mask (``taps.Mixup``).  Objectives:

- ``qkv`` (the released script): sum over X in {Q, K, V} of the MiniLMv2 self-relation loss
  KL(softmax(X_T X_T^T / sqrt d_r) || softmax(X_S X_S^T / sqrt d_r)) per relation head;
- ``ah`` (what the consistency flags encode): attention KL on the pre-softmax scores, per head,
  plus the hidden-state MSE through ``fit_dense`` (W_h).

Consistency (CR): the student's own clean pass (no grad) is the target of its mixed pass,

    L_CR = w * (e / E) * [lambda * D(S(x~), sg S(x_i); mask_i) + (1 - lambda) * D(S(x~), sg S(x_rev); mask_rev)]

with e the 0-based epoch and E the phase's epochs (0 for the whole first epoch), and D the
objective's own distance on the same quantities (relation / attention KL; hidden MSE).

Presets (§6.5): ``released`` = qkv + mixup, no CR (the released command: its CR code never runs);
``ah_cr`` = ah + mixup + CR (the flags' intent; the default); ``qkv_cr`` = qkv + mixup + CR.

Stage ``pred``: T^2 KL(softmax(z_T/T) || softmax(z_S/T)) with T = 2 and no hard-label CE (same
gradient as the code's soft CE); regression: MSE(z_S/T, z_T/T).

Masking: the released code adds no mask to the Q/K/V relations, but it pads every batch to 128;
with dynamic padding an unmasked loss would depend on the batch's longest example, so padding
is masked by default (``mask_padding: false`` restores the unmasked form).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from pydantic import Field

from kdpipe.methods.base import Method, MethodConfigError, MethodParams, kd_kl_loss, labelled_words, upcast
from kdpipe.methods.relations import masked_row_kl, merge_heads, relation_logits
from kdpipe.methods.tinybert import hidden_mse
from kdpipe.methods.projections import projection
from kdpipe.models.taps import Mixup, ModelOutputs, Needs

__all__ = ["CRILD", "CRILDParams", "PRESETS", "draw_mixup_lambda", "consistency_loss"]

# preset -> (objective, consistency weight w_ic)
PRESETS: dict[str, tuple[str, float]] = {"released": ("qkv", 0.0), "ah_cr": ("ah", 0.1), "qkv_cr": ("qkv", 0.1)}


class CRILDParams(MethodParams):
    preset: Literal["released", "ah_cr", "qkv_cr"] = "ah_cr"
    objective: Literal["qkv", "ah"] | None = None          # None = the preset's
    consistency_weight: float | None = Field(default=None, ge=0)  # w_ic; None = the preset's (0 or 0.1)
    mixup: bool = True
    mixup_alpha: float = Field(default=1.0, gt=0)          # lambda ~ Beta(alpha, alpha), folded to >= 0.5
    mask_padding: bool = True
    relation_heads: int | None = Field(default=None, gt=0)  # qkv: MiniLMv2 relation heads; None = the teacher's heads
    attention_weight: float = Field(default=1.0, ge=0)     # ah
    hidden_weight: float = Field(default=1.0, ge=0)        # ah
    hidden_projection: Literal["trainable", "auto"] = "trainable"  # ah: W_h (the code's fit_dense)
    temperature: float = Field(default=2.0, gt=0)          # pred
    seed: int = 0                                          # mixup draws (the pipeline passes its seed)


def draw_mixup_lambda(seed: int, step: int, alpha: float) -> float:
    """lambda ~ Beta(alpha, alpha) folded into [0.5, 1], a pure function of (seed, step), so a
    resumed run redraws exactly the interrupted run's mixtures without touching the global RNG."""
    lam = float(np.random.default_rng([seed, step]).beta(alpha, alpha))
    return max(lam, 1.0 - lam)


def consistency_loss(distance, mixed: torch.Tensor, clean: torch.Tensor, mask: torch.Tensor, mix: Mixup):
    """lambda * D(mixed, sg clean_i; mask_i) + (1 - lambda) * D(mixed, sg clean_partner(i); mask_partner(i)).

    Args: ``distance(student, target, mask)``; mixed, clean: the same quantity from the mixed and
    the clean pass, batch first ([B, ...]); mask [B, n] the clean batch's attention mask.
    """
    clean, partner = clean.detach(), mix.partner.to(clean.device)
    own = distance(mixed, clean, mask)
    other = distance(mixed, clean[partner], mask[partner]) if mix.lam < 1 else own.new_zeros(())
    return mix.lam * own + (1 - mix.lam) * other


class CRILD(Method):
    name = "cr_ild"
    Params = CRILDParams
    not_per_token = None  # ild is token-level (last layer, mixed inputs); pred: logit KD per word
    phases = ("ild", "pred")
    label_free_phases = ("ild",)
    needs_shapes = True

    def __init__(self, params: CRILDParams, regression: bool, shapes=None):
        super().__init__(params, regression, shapes)
        s, t = shapes.student, shapes.teacher
        preset_objective, preset_weight = PRESETS[params.preset]
        self.objective = params.objective or preset_objective
        self.cr_weight = preset_weight if params.consistency_weight is None else params.consistency_weight
        if self.cr_weight > 0 and not params.mixup:
            raise MethodConfigError("cr_ild.consistency_weight: consistency compares the mixed pass with the clean "
                                    "one, so it needs mixup: true (or set consistency_weight: 0)")
        if self.objective == "ah":
            if params.attention_weight == 0 and params.hidden_weight == 0:
                raise MethodConfigError("cr_ild.attention_weight, hidden_weight: both 0, so the ah objective learns "
                                        "nothing")
            if params.attention_weight > 0 and s.heads != t.heads:
                raise MethodConfigError(f"cr_ild.objective: ah compares attention maps head by head, but the student "
                                        f"has {s.heads} heads and the teacher {t.heads}; use objective: qkv")
            kind = "identity" if params.hidden_projection == "auto" and s.hidden == t.hidden else "trainable"
            self.fit_dense = projection(s.hidden, t.hidden, kind)
        self.relation_heads = params.relation_heads or t.heads
        if self.objective == "qkv":
            for side, width in (("student", s.hidden), ("teacher", t.hidden)):
                if width % self.relation_heads:
                    raise MethodConfigError(f"cr_ild.relation_heads: {self.relation_heads} relation heads do not "
                                            f"divide the {side} width {width}")
        self.pair = (s.layers, t.layers)  # last <- last (L-ILD)

    # ---- what the current phase reads
    def _needs(self, side: int) -> Needs:
        if self.phase == "pred":
            return Needs()
        layer = frozenset({self.pair[side]})
        if self.objective == "qkv":
            return Needs(qkv=True, layers=layer)
        p = self.params
        return Needs(attention_scores=p.attention_weight > 0, hidden_states=p.hidden_weight > 0, layers=layer)

    @property
    def student_needs(self) -> Needs:
        return self._needs(0)

    @property
    def teacher_needs(self) -> Needs:
        return self._needs(1)

    @property
    def teacher_cacheable(self) -> bool:
        return self.phase == "pred"

    @property
    def needs_clean_pass(self) -> bool:
        """The clean pass is only run while its term counts (not in the first epoch: ramp 0)."""
        return self.phase == "ild" and self.cr_weight > 0 and self.ramp() > 0

    def phase_train(self, phase: str) -> dict:
        if phase == "ild":  # the code never evaluates stage 1; its final model goes on
            return {"select": "last"}
        return {}

    def mixup(self, batch_size: int, device) -> Mixup | None:
        if self.phase != "ild" or not self.params.mixup:
            return None
        lam = draw_mixup_lambda(self.params.seed, self.step, self.params.mixup_alpha)
        return Mixup.reversed_batch(lam, batch_size, device)

    def ramp(self) -> float:
        """e / E: the consistency weight's linear epoch ramp (0 during the first epoch)."""
        return self.epoch / max(self.epochs, 1)

    # ---- losses
    def _mask(self, out: ModelOutputs) -> torch.Tensor | None:
        return out.attention_mask if self.params.mask_padding else None

    def _relations(self, out: ModelOutputs, layer: int) -> dict[str, torch.Tensor]:
        """Q/K/V self-relation scores [B, R, n, n] of ``layer``."""
        return {x: relation_logits(merge_heads(getattr(out, x)[layer]), self.relation_heads)
                for x in ("query", "key", "value")}

    def losses(self, student: ModelOutputs, teacher: ModelOutputs, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        if self.phase == "pred":
            t = self.params.temperature
            kd = (torch.nn.functional.mse_loss(upcast(student.logits) / t, upcast(teacher.logits) / t)
                  if self.regression else kd_kl_loss(student.logits, teacher.logits.detach(), t, labelled_words(labels)))
            return {"loss": kd, "kd": kd}
        if student.attention_mask.shape != teacher.attention_mask.shape:
            raise ValueError("cr_ild: token-level losses need the teacher and student to share a tokenizer")
        s_layer, t_layer = self.pair
        mask = self._mask(student)
        out: dict[str, torch.Tensor] = {}
        if self.objective == "qkv":
            s_rel, t_rel = self._relations(student, s_layer), self._relations(teacher, t_layer)
            out["qkv"] = sum(masked_row_kl(s_rel[x], t_rel[x].detach(), mask) for x in s_rel)
            total = out["qkv"]
        else:
            p = self.params
            zero = student.logits.new_zeros((), dtype=torch.float32)
            out["attention"] = masked_row_kl(student.attention_scores[s_layer],
                                             teacher.attention_scores[t_layer].detach(), mask) \
                if p.attention_weight > 0 else zero
            out["hidden"] = hidden_mse(self.fit_dense(student.hidden_states[s_layer]),
                                       teacher.hidden_states[t_layer].detach(),
                                       student.attention_mask if mask is None else mask) \
                if p.hidden_weight > 0 else zero
            total = p.attention_weight * out["attention"] + p.hidden_weight * out["hidden"]
        if student.mix is not None:
            out["mixup_lambda"] = student.logits.new_tensor(student.mix.lam, dtype=torch.float32)
        if self.cr_weight > 0 and student.mix is not None:
            weight = self.cr_weight * self.ramp()
            out["consistency_weight"] = student.logits.new_tensor(weight, dtype=torch.float32)
            if weight > 0 and student.clean is not None:
                out["consistency"] = self._consistency(student, s_layer)
                total = total + weight * out["consistency"]
        return {"loss": total, **out}

    def _consistency(self, student: ModelOutputs, layer: int) -> torch.Tensor:
        clean, mix = student.clean, student.mix
        clean_mask = clean.attention_mask if self.params.mask_padding else torch.ones_like(clean.attention_mask)
        if self.objective == "qkv":
            mixed_rel, clean_rel = self._relations(student, layer), self._relations(clean, layer)
            return sum(consistency_loss(masked_row_kl, mixed_rel[x], clean_rel[x], clean_mask, mix) for x in mixed_rel)
        p, total = self.params, student.logits.new_zeros((), dtype=torch.float32)
        if p.attention_weight > 0:
            total = total + p.attention_weight * consistency_loss(
                masked_row_kl, student.attention_scores[layer], clean.attention_scores[layer], clean_mask, mix)
        if p.hidden_weight > 0:
            total = total + p.hidden_weight * consistency_loss(
                hidden_mse, self.fit_dense(student.hidden_states[layer]),
                self.fit_dense(clean.hidden_states[layer]), clean_mask, mix)
        return total

    def describe(self) -> dict:
        return {**super().describe(), "resolved_objective": self.objective,
                "resolved_consistency_weight": self.cr_weight,
                "resolved_mapping": {str(self.pair[0]): self.pair[1]},
                "relation_heads": self.relation_heads if self.objective == "qkv" else None}
