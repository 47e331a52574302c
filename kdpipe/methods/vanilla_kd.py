"""Vanilla logit KD (Hinton et al., 2015).  Spec: methods.md §1.1.

    L = (1 - alpha) * CE(y, z_S) + alpha * T^2 * KL(softmax(z_T / T) || softmax(z_S / T))

Regression (STS-B): L = (1 - alpha) * MSE(z_S, y) + alpha * MSE(z_S, z_T).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field

from kdpipe.methods.base import Method, MethodParams, label_loss, upcast


def kd_kl_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """T^2 * KL(p_T || p_S) with p = softmax(z / T), averaged over the batch.

    Args: student_logits, teacher_logits [B, C].  Returns a scalar.  The T^2 factor keeps the
    gradient scale comparable across temperatures (Hinton et al.).  Computed in fp32 so bf16
    autocast does not lose the small probabilities (see ``upcast``).
    """
    log_p_s = F.log_softmax(upcast(student_logits) / temperature, dim=-1)
    log_p_t = F.log_softmax(upcast(teacher_logits) / temperature, dim=-1)
    return F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True) * temperature**2


def kd_mse_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """Regression distillation: MSE between outputs [B, 1] (or [B])."""
    return F.mse_loss(upcast(student_logits), upcast(teacher_logits))


class VanillaKDParams(MethodParams):
    temperature: float = Field(default=4.0, gt=0)
    alpha: float = Field(default=0.5, ge=0, le=1)  # weight of the distillation term


class VanillaKD(Method):
    name = "vanilla_kd"
    Params = VanillaKDParams

    def losses(self, student, teacher, labels):
        p = self.params
        if self.regression:
            kd = kd_mse_loss(student.logits, teacher.logits)
        else:
            kd = kd_kl_loss(student.logits, teacher.logits, p.temperature)
        hard = label_loss(student.logits, labels, self.regression)
        return {"loss": (1 - p.alpha) * hard + p.alpha * kd, "kd": kd, "hard": hard}
