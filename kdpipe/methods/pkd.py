"""BERT-PKD: patient knowledge distillation (Sun et al., 2019).  See docs/methods.md §1.2.

    L = ce_weight * CE(y, z_S) + kd_weight * T^2 KL(softmax(z_T / T) || softmax(z_S / T)) + beta * L_PT

The patient loss L_PT pulls the [CLS] vectors of the student's intermediate layers 1..L_S-1
towards those of mapped teacher layers, both L2-normalised first (``normalize``).  The student's
last layer is left out: the logit terms already supervise it.

Layer choice (``variant``), for student layer j in 1..L_S-1:
- ``skip``: teacher layer round(j * L_T / L_S) -- every k-th layer (6 <- 12: 2, 4, 6, 8, 10);
- ``last``: teacher layer L_T - L_S + j -- the teacher's top layers below its last;
- ``teacher_layers``: an explicit list of teacher layers (1..L_T), one per student layer 1..L_S-1;
  it overrides ``variant``.

Regression (STS-B): the logit terms become MSE to the gold labels and MSE to the teacher outputs.
The teacher signal is logits and per-layer [CLS] vectors only, so a teacher cache can supply it.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from kdpipe.methods.base import Method, MethodConfigError, PredictionParams, prediction_losses, upcast
from kdpipe.models.taps import ModelOutputs, Needs, cls_vector

__all__ = ["PKD", "PKDParams", "patient_loss"]


# ------------------------------------------------------------------------------------------ losses
def patient_loss(student_cls: torch.Tensor, teacher_cls: torch.Tensor, normalize: bool = True) -> torch.Tensor:
    """PKD's patient loss on stacked [CLS] vectors.

    Args: student_cls, teacher_cls [M, B, d]: M mapped layer pairs, B examples, width d.
    Returns a scalar: ``F.mse_loss`` of the (L2-normalised, when ``normalize``) vectors, i.e. the
    squared distance averaged over M x B x d.

    The paper writes a *sum* over layers of squared distances; the official code
    (``patience_loss``) takes this element mean instead, which is M * d times smaller than the sum
    (unit vectors, so each element's squared difference is tiny); that is why the useful ``beta``
    is large (100-1000).
    [CLS] vectors involve no padding, so there is nothing to mask.
    """
    student_cls, teacher_cls = upcast(student_cls), upcast(teacher_cls)
    if normalize:
        student_cls = F.normalize(student_cls, p=2, dim=-1)
        teacher_cls = F.normalize(teacher_cls, p=2, dim=-1)
    return F.mse_loss(student_cls, teacher_cls)


# ------------------------------------------------------------------------------------------ method
class PKDParams(PredictionParams):
    temperature: float = Field(default=10.0, gt=0)   # the official "kd" preset's T
    beta: float = Field(default=100.0, ge=0)          # weight of the patient loss (large: see patient_loss)
    variant: Literal["skip", "last"] = "skip"
    teacher_layers: list[int] | None = None           # explicit teacher layers for student layers 1..L_S-1
    normalize: bool = True                            # L2-normalise [CLS] vectors before the MSE


class PKD(Method):
    name = "pkd"
    not_per_token = "its patient loss reads the [CLS] vector of each layer, a sentence-level signal"
    Params = PKDParams
    teacher_cacheable = True  # logits + per-layer [CLS] vectors
    needs_shapes = True

    def __init__(self, params: PKDParams, regression: bool, shapes=None):
        super().__init__(params, regression, shapes)
        s, t = shapes.student, shapes.teacher
        if s.hidden != t.hidden:
            raise MethodConfigError(
                f"pkd: student width {s.hidden} != teacher width {t.hidden}; PKD compares [CLS] vectors "
                f"directly, so the student must keep the teacher's hidden size")
        if s.layers < 2:
            raise MethodConfigError(
                f"pkd: the student has {s.layers} layer(s); the patient loss supervises student layers "
                f"1..L_S-1 (the last is covered by the logits), so it needs a student of at least 2 layers "
                f"(or use vanilla_kd)")
        # student layers 1..L_S-1 <- the explicit teacher_layers, else the variant's rule
        student = range(1, s.layers)
        if params.teacher_layers is not None:
            self.mapping = self.resolve_mapping("explicit", student_layers=student,
                                                teacher_layers=params.teacher_layers, param="pkd.teacher_layers")
        else:
            self.mapping = self.resolve_mapping("uniform" if params.variant == "skip" else "last",
                                                student_layers=student, param="pkd.variant")
        self.student_needs = Needs(hidden_states=True, layers=self.mapping.student_layers)
        self.teacher_needs = Needs(hidden_states=True, layers=self.mapping.teacher_layers)

    def losses(self, student: ModelOutputs, teacher: ModelOutputs, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        p = self.params
        pairs = self.mapping.pairs()
        student_cls = torch.stack([cls_vector(student, s) for s, _ in pairs])
        teacher_cls = torch.stack([cls_vector(teacher, ts[0]) for _, ts in pairs]).detach()
        patient = patient_loss(student_cls, teacher_cls, p.normalize)
        fixed_teacher = replace(teacher, logits=teacher.logits.detach())  # targets, never trained
        parts = prediction_losses(student, fixed_teacher, labels, self.regression, p.temperature)
        total = p.ce_weight * parts["hard"] + p.kd_weight * parts["kd"] + p.beta * patient
        return {"loss": total, **parts, "patient": patient}

    def describe(self) -> dict:
        return {**super().describe(), "resolved_mapping": {str(s): ts[0] for s, ts in self.mapping.pairs()}}
