"""Vanilla logit KD (Hinton et al., 2015).  See docs/methods.md §1.1.

    L = (1 - alpha) * CE(y, z_S) + alpha * T^2 * KL(softmax(z_T / T) || softmax(z_S / T))

Regression (STS-B): L = (1 - alpha) * MSE(z_S, y) + alpha * MSE(z_S, z_T).
"""

from __future__ import annotations

from pydantic import Field

from kdpipe.methods.base import Method, MethodParams, kd_kl_loss, kd_mse_loss, prediction_losses

__all__ = ["VanillaKD", "kd_kl_loss", "kd_mse_loss"]


class VanillaKDParams(MethodParams):
    temperature: float = Field(default=4.0, gt=0)
    alpha: float = Field(default=0.5, ge=0, le=1)  # weight of the distillation term


class VanillaKD(Method):
    name = "vanilla_kd"
    Params = VanillaKDParams
    teacher_cacheable = True  # logits only
    not_per_token = None  # KD per word, over the words with a label

    def losses(self, student, teacher, labels):
        p = self.params
        parts = prediction_losses(student, teacher, labels, self.regression, p.temperature)
        return {"loss": (1 - p.alpha) * parts["hard"] + p.alpha * parts["kd"], **parts}
