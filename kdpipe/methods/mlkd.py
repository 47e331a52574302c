"""MLKD-BERT (Zhang, Yang, Ji, 2024): multi-level KD in two stages.  See docs/methods.md §5.

Stage ``ild`` (feature + token-relation knowledge), student layer n <- teacher layer g(n) (uniform):

    L_ild = emb_weight * KL-relation(E_T, E_S)                      embedding output, one split
          + mha_weight * sum_n MHA-split relation(O_T^g(n), O_S^n), A_S splits
          + ffn_weight * sum_n MSE(H_S^n W_h, H_T^g(n))             layer output, W_h: d_S -> d_T

Every relation is row-wise KL(softmax(X_T X_T^T / sqrt(d_T/k)) || softmax(X_S X_S^T / sqrt(d_S/k)))
over real tokens (``relations.token_relation_kl``).  The MHA output O is the heads' concatenated
context before W_O (``mha_output: context``, the spec's proposal) or the attention block's output
after W_O, residual and LayerNorm (``attn_output``).  Both are cut into A_S chunks, A_S being
the *student's* head count: a student head is compared with the matching group of d_T / A_S
teacher dimensions, so A_S is free (any divisor of both widths) and no projection is needed.
The spec's 1/(A_S |x|) average over heads and tokens is taken per layer and example, and the
layers are summed, as the summary writes both L_MHA and L_FFN.

Stage ``pred`` (sample-relation knowledge), on the final-layer [CLS] vectors h of a batch:

    L_pred = ss_weight * (1/b) sum_i KL(softmax(h_T h_T^T / sqrt d_T)_i || softmax(h_S h_S^T / sqrt d_S)_i)
           + sc_weight * SupCon({W_c h_S} u {h_T}, labels, tau_c)     (``relations.supervised_contrastive``)
           + kd_weight * T^2 KL(softmax(z_T / T) || softmax(z_S / T))

with no hard-label CE (as the summary's stage-2 loss).  W_c: d_S -> d_T is learnt; W_h is
dropped after stage 1.  Regression (STS-B): L_SC has no classes and is off; the logit term is
MSE to the teacher's output.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import nn

from kdpipe.methods.base import Method, MethodConfigError, MethodParams, kd_kl_loss, kd_mse_loss
from kdpipe.methods.relations import sample_relation_kl, supervised_contrastive, token_relation_kl
from kdpipe.methods.tinybert import ILD_PHASE_TRAIN, hidden_mse
from kdpipe.methods.projections import projection
from kdpipe.models.taps import ModelOutputs, Needs, cls_vector

__all__ = ["MLKD", "MLKDParams"]


class MLKDParams(MethodParams):
    emb_weight: float = Field(default=1.0, ge=0)   # ild: embedding token-similarity relation
    mha_weight: float = Field(default=1.0, ge=0)   # ild: MHA-split relation
    ffn_weight: float = Field(default=1.0, ge=0)   # ild: hidden-state MSE through W_h
    ss_weight: float = Field(default=1.0, ge=0)    # pred: sample-similarity relation
    sc_weight: float = Field(default=1.0, ge=0)    # pred: supervised contrastive (classification only)
    kd_weight: float = Field(default=1.0, ge=0)    # pred: logit KD
    temperature: float = Field(default=1.0, gt=0)  # pred: logit-KD temperature (the paper's value is unknown)
    contrastive_temperature: float = Field(default=0.07, gt=0)  # tau_c (SupCon default)
    contrastive_anchors: Literal["both", "student"] = "both"   # the summary's 1/2b, or the early repo's
    mha_output: Literal["context", "attn_output"] = "context"
    # W_h: auto (default, as TinyBERT's: the identity when widths match, since a student cut from
    # the teacher lives in its space; else the paper's trainable map), trainable (the paper's one
    # map shared by all layers, always), or per_layer (one map per student layer).  A randomly
    # initialised W_h on a teacher-initialised student pulls its features away in a short ild
    # phase: README "Measured results" (dev 0.48 vs 0.65 on the all-methods suite).
    hidden_projection: Literal["trainable", "per_layer", "auto"] = "auto"
    mapping: Literal["uniform", "last"] = "uniform"


class MLKD(Method):
    name = "mlkd"
    not_per_token = ("its pred phase's sample relations and supervised contrastive loss compare sentences; "
                       "stage 1 alone would apply")
    Params = MLKDParams
    phases = ("ild", "pred")
    label_free_phases = ("ild",)
    needs_shapes = True

    def __init__(self, params: MLKDParams, regression: bool, shapes=None):
        super().__init__(params, regression, shapes)
        s, t = shapes.student, shapes.teacher
        if params.mha_weight > 0:
            for side, width in (("student", s.hidden), ("teacher", t.hidden)):
                if width % s.heads:
                    raise MethodConfigError(
                        f"student.attention_heads: the MHA-split cuts both widths into the student's {s.heads} "
                        f"heads, but the {side} width {width} does not divide by {s.heads}")
        if params.emb_weight + params.mha_weight + params.ffn_weight == 0:
            raise MethodConfigError("mlkd.emb_weight, mha_weight, ffn_weight: all 0, so the ild phase learns nothing")
        self.mapping = self.resolve_mapping(params.mapping, param="mlkd.mapping")
        self.sc_active = params.sc_weight > 0 and not regression  # no classes in regression
        # W_h (ild) and W_c (pred): method submodules, trained with the student, never exported.
        if params.hidden_projection == "per_layer":
            self.fit_dense = nn.ModuleList(projection(s.hidden, t.hidden) for _ in self.mapping.student)
        else:
            kind = "identity" if params.hidden_projection == "auto" and s.hidden == t.hidden else "trainable"
            self.fit_dense = projection(s.hidden, t.hidden, kind)
        self.contrast_projection = projection(s.hidden, t.hidden) if self.sc_active else None

    @property
    def layer_pairs(self) -> list[tuple[int, int]]:
        return [(i, ts[0]) for i, ts in self.mapping.pairs()]

    def _needs(self, side: int) -> Needs:
        p = self.params
        if self.phase == "pred":
            last = (self.shapes.student, self.shapes.teacher)[side].layers
            return Needs(hidden_states=True, layers=frozenset({last}))
        layers = {pair[side] for pair in self.layer_pairs}
        if p.emb_weight > 0:
            layers.add(0)
        mha = p.mha_weight > 0
        return Needs(hidden_states=p.ffn_weight > 0 or p.emb_weight > 0,
                     context=mha and p.mha_output == "context",
                     attention_output=mha and p.mha_output == "attn_output", layers=frozenset(layers))

    @property
    def student_needs(self) -> Needs:
        return self._needs(0)

    @property
    def teacher_needs(self) -> Needs:
        return self._needs(1)

    @property
    def teacher_cacheable(self) -> bool:
        return self.phase == "pred"  # logits and final [CLS]; ild reads token-level states

    def phase_train(self, phase: str) -> dict:
        return dict(ILD_PHASE_TRAIN) if phase == "ild" else {}

    # ---- losses
    def losses(self, student: ModelOutputs, teacher: ModelOutputs, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        if self.phase == "ild":
            return self._ild_losses(student, teacher)
        return self._pred_losses(student, teacher, labels)

    def _ild_losses(self, student: ModelOutputs, teacher: ModelOutputs) -> dict[str, torch.Tensor]:
        p, heads = self.params, self.shapes.student.heads
        mask = student.attention_mask
        zero = student.logits.new_zeros((), dtype=torch.float32)
        emb = mha = ffn = zero
        if p.emb_weight > 0:
            emb = token_relation_kl(student.hidden_states[0], teacher.hidden_states[0], mask)
        for k, (s, t) in enumerate(self.layer_pairs):
            if p.mha_weight > 0:
                source = "context" if p.mha_output == "context" else "attention_output"
                mha = mha + token_relation_kl(getattr(student, source)[s], getattr(teacher, source)[t], mask,
                                              splits=heads)
            if p.ffn_weight > 0:
                fit = self.fit_dense[k] if isinstance(self.fit_dense, nn.ModuleList) else self.fit_dense
                ffn = ffn + hidden_mse(fit(student.hidden_states[s]), teacher.hidden_states[t].detach(), mask)
        total = p.emb_weight * emb + p.mha_weight * mha + p.ffn_weight * ffn
        return {"loss": total, "emb": emb, "mha": mha, "ffn": ffn}

    def _pred_losses(self, student: ModelOutputs, teacher: ModelOutputs, labels: torch.Tensor):
        p = self.params
        h_s = cls_vector(student, self.shapes.student.layers)
        h_t = cls_vector(teacher, self.shapes.teacher.layers).detach()
        ss = sample_relation_kl(h_s, h_t)
        kd = (kd_mse_loss(student.logits, teacher.logits) if self.regression
              else kd_kl_loss(student.logits, teacher.logits.detach(), p.temperature))
        out = {"ss": ss, "kd": kd}
        total = p.ss_weight * ss + p.kd_weight * kd
        if self.sc_active:
            sc = supervised_contrastive(self.contrast_projection(h_s), h_t, labels, p.contrastive_temperature,
                                        p.contrastive_anchors)
            out["sc"] = sc
            total = total + p.sc_weight * sc
        return {"loss": total, **out}

    def describe(self) -> dict:
        return {**super().describe(), "resolved_mapping": {str(s): t for s, t in self.layer_pairs},
                "student_heads": self.shapes.student.heads, "teacher_heads": self.shapes.teacher.heads,
                "mha_split_width": {"student": self.shapes.student.hidden // self.shapes.student.heads,
                                    "teacher": self.shapes.teacher.hidden // self.shapes.student.heads},
                "contrastive": "on" if self.sc_active else "off (regression)" if self.regression else "off"}
