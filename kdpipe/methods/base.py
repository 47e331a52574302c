"""The contract between the training engine and a distillation method.

A method is an ``nn.Module`` so that whatever it trains besides the student (projections)
is registered, optimised in its own parameter group, checkpointed with the run and never
exported with the student.  It never touches the optimizer, the data loader or MLflow.
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict
from torch import nn

from kdpipe.taps import ModelOutputs, Needs


class MethodParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Method(nn.Module):
    """Subclasses set ``Params``, ``needs_teacher`` and the ``*_needs``, and implement ``losses``."""

    name: ClassVar[str] = "method"  # the registry name used in params.yaml
    Params: ClassVar[type[MethodParams]] = MethodParams
    needs_teacher: ClassVar[bool] = True
    student_needs: ClassVar[Needs] = Needs()
    teacher_needs: ClassVar[Needs] = Needs()

    def __init__(self, params: MethodParams, regression: bool):
        super().__init__()
        self.params, self.regression = params, regression

    def losses(self, student: ModelOutputs, teacher: ModelOutputs | None,
               labels: torch.Tensor) -> dict[str, torch.Tensor]:
        """Named loss terms; key ``loss`` is the total that is back-propagated."""
        raise NotImplementedError

    def forward(self, student, teacher, labels):  # lets DDP wrap a method that has parameters
        return self.losses(student, teacher, labels)

    def describe(self) -> dict:
        """What gets logged as this method's resolved settings."""
        return {"method": self.name, **self.params.model_dump()}


def upcast(x: torch.Tensor) -> torch.Tensor:
    """Losses are computed in at least fp32: bf16/fp16 autocast loses small probabilities."""
    return x.float() if x.is_floating_point() and x.element_size() < 4 else x


def label_loss(logits: torch.Tensor, labels: torch.Tensor, regression: bool) -> torch.Tensor:
    """Hard-label loss: CE over classes, or MSE on the single regression output.

    Args: logits [B, C] (C = 1 for regression); labels [B] (long, or float for regression).
    """
    if regression:
        return F.mse_loss(upcast(logits.squeeze(-1)), labels.to(upcast(logits).dtype))
    return F.cross_entropy(upcast(logits), labels)


class FineTune(Method):
    """Plain supervised training on gold labels: the teacher stage, and the no-KD baseline."""

    name = "finetune"
    needs_teacher = False

    def losses(self, student, teacher, labels):
        return {"loss": label_loss(student.logits, labels, self.regression)}
