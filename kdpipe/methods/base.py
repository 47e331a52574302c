"""The contract between the training engine and a distillation method.

A method is an ``nn.Module`` so that whatever it trains besides the student (projections)
is registered, optimised in its own parameter group, checkpointed with the run and never
exported with the student.  It never touches the optimizer, the data loader or MLflow.

A method is built for known model shapes (``Shapes``), so a mapping that is out of range, a
width mismatch without a projection or a head-count mismatch fails at construction, which
the pipeline's preflight does before any model is loaded.
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from kdpipe.data.conll import IGNORE
from kdpipe.methods.mapping import LayerMap, MappingError, build_mapping
from kdpipe.models.adapters import Shapes
from kdpipe.models.taps import Mixup, ModelOutputs, Needs


class MethodParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class MethodConfigError(ValueError):
    """A method's params do not fit the models (range, width, heads); names the key at fault."""


class Method(nn.Module):
    """Subclasses set ``Params``, ``needs_teacher`` and the needs, and implement ``losses``.

    ``student_needs``/``teacher_needs`` may be properties (they can depend on the phase).
    ``teacher_cacheable``: the teacher signal is per-example vectors only (logits, [CLS] or
    mean-pooled states per layer), so it can come from the precomputed teacher cache.
    ``student_defaults``: student settings the method implies (see ``Params.run_student``).
    ``phases``: a multi-phase method is trained once per phase, each phase starting from the
    student the previous one selected; ``phase_train`` gives each phase's default train settings.
    ``label_free_phases``: phases whose losses never read labels, so they may also train on
    supplementary unlabeled text (``distill.runs.<run>.supplementary``).
    ``mixup``/``needs_clean_pass``: a method that mixes inputs (CR-ILD) returns the step's
    ``Mixup``; the engine runs teacher and student on it, plus a no-grad clean student pass
    (``ModelOutputs.clean``) when the method asks for one.
    """

    name: ClassVar[str] = "method"  # the registry name used in params.yaml
    Params: ClassVar[type[MethodParams]] = MethodParams
    needs_teacher: ClassVar[bool] = True
    teacher_cacheable: ClassVar[bool] = False
    phases: ClassVar[tuple[str, ...]] = ("main",)
    label_free_phases: ClassVar[tuple[str, ...]] = ()
    needs_shapes: ClassVar[bool] = False  # intermediate-layer methods resolve mappings from shapes
    # A preset's student settings (pea_kd: PTP init, SPS), over the `student` section and under
    # the run's own `student:` overrides.
    student_defaults: ClassVar[dict] = {}
    # Token-level tasks (tagging: logits per word; extractive QA: start/end over positions): None
    # where the method applies as it is; otherwise the one-line reason the preflight refuses it with.
    not_per_token: ClassVar[str | None] = "not implemented for token tagging or extractive QA yet"
    student_needs: Needs = Needs()
    teacher_needs: Needs = Needs()
    mapping: LayerMap | None = None

    def __init__(self, params: MethodParams, regression: bool, shapes: Shapes | None = None):
        super().__init__()
        if self.needs_shapes and shapes is None:
            raise MethodConfigError(f"{self.name}: needs the student and teacher shapes (layers, width, heads)")
        self.params, self.regression, self.shapes = params, regression, shapes
        self.phase = self.phases[0]
        self.epoch, self.step, self.epochs = 0, 0, 1

    def resolve_mapping(self, strategy, **kwargs) -> LayerMap:
        """``build_mapping`` for this method's shapes; its errors become ``MethodConfigError``."""
        try:
            return build_mapping(strategy, self.shapes.student.layers, self.shapes.teacher.layers, **kwargs)
        except MappingError as e:
            raise MethodConfigError(str(e)) from e

    def losses(self, student: ModelOutputs, teacher: ModelOutputs | None,
               labels: torch.Tensor) -> dict[str, torch.Tensor]:
        """Named loss terms; key ``loss`` is the total that is back-propagated."""
        raise NotImplementedError

    def forward(self, student, teacher, labels):  # lets DDP wrap a method that has parameters
        return self.losses(student, teacher, labels)

    # ---- hooks the engine calls
    def set_phase(self, phase: str) -> None:
        if phase not in self.phases:
            raise ValueError(f"{self.name}: no phase {phase!r} (phases: {', '.join(self.phases)})")
        self.phase = phase

    def phase_train(self, phase: str) -> dict:
        """Default train-setting overrides of ``phase`` (the user's params override these)."""
        return {}

    def begin_training(self, epochs: int) -> None:
        """Called once before a phase trains: how many epochs it runs (started ones count)."""
        self.epochs = epochs

    def begin_step(self, epoch: int, step: int) -> None:
        """Called before every training step (step counts from 0 within the phase)."""
        self.epoch, self.step = epoch, step

    def mixup(self, batch_size: int, device) -> Mixup | None:
        """The input mixing of the current step, or None (the default: clean inputs)."""
        return None

    @property
    def needs_clean_pass(self) -> bool:
        return False

    def epoch_record(self, epoch: int) -> dict | None:
        """Something to log at the start of each epoch (RAIL-KD: the layers drawn), or None."""
        return None

    def mapping_table(self) -> list[dict]:
        """The resolved layer mapping (at the current epoch/step) as rows; [] without a mapping."""
        return self.mapping.table(self.epoch, self.step) if self.mapping is not None else []

    def describe(self) -> dict:
        """What gets logged as this method's resolved settings."""
        return {"method": self.name, **self.params.model_dump()}


def upcast(x: torch.Tensor) -> torch.Tensor:
    """Losses are computed in at least fp32: bf16/fp16 autocast loses small probabilities."""
    return x.float() if x.is_floating_point() and x.element_size() < 4 else x


def labelled_words(labels: torch.Tensor) -> torch.Tensor | None:
    """Tagging's labels [B, W] -> the words that count ([B, W] bool: not ``IGNORE``); None for
    sentence-level labels [B]."""
    return labels != IGNORE if labels.ndim == 2 else None


def mask_logits(logits: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """``logits`` (upcast) with the positions outside ``keep`` (bool or 0/1, broadcastable) at the
    dtype's lowest value, so a softmax gives them no probability."""
    logits = upcast(logits)
    return logits.masked_fill(~keep.bool(), torch.finfo(logits.dtype).min)


def row_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
           keep: torch.Tensor | None = None) -> torch.Tensor:
    """KL(softmax(teacher) || softmax(student)) along the last dim, one value per row:
    [..., n] -> [...].  ``keep`` [..., n] (broadcastable; None = all): positions outside it get no
    probability on either side and add nothing (p_T = 0 there, and 0 * log(0 / x) = 0)."""
    s, t = upcast(student_logits), upcast(teacher_logits)
    if keep is not None:
        s, t = mask_logits(s, keep), mask_logits(t, keep)
    log_p_s, log_p_t = F.log_softmax(s, dim=-1), F.log_softmax(t, dim=-1)
    terms = log_p_t.exp() * (log_p_t - log_p_s)
    return (terms if keep is None else terms.masked_fill(~keep.bool(), 0.0)).sum(-1)


def label_loss(logits: torch.Tensor, labels: torch.Tensor, regression: bool) -> torch.Tensor:
    """Hard-label loss: CE over classes, or MSE on the single regression output; per word for
    tagging (CE over the words whose label is not ``IGNORE``).

    Args: logits [B, C] (C = 1 for regression) or [B, W, C] (tagging); labels [B] (long, or float
    for regression) or [B, W] (long).
    """
    if logits.ndim == 3:
        return F.cross_entropy(upcast(logits).flatten(0, 1), labels.flatten(), ignore_index=IGNORE)
    if regression:
        return F.mse_loss(upcast(logits.squeeze(-1)), labels.to(upcast(logits).dtype))
    return F.cross_entropy(upcast(logits), labels)


def kd_kl_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float,
               words: torch.Tensor | None = None) -> torch.Tensor:
    """T^2 * KL(p_T || p_S) with p = softmax(z / T), averaged over the batch; for tagging, over
    the words in ``words``.

    Args: student_logits, teacher_logits [B, C], or [B, W, C] per word with ``words`` [B, W]
    (True where a word counts).  Returns a scalar.  The T^2 factor keeps the gradient scale
    comparable across temperatures (Hinton et al.).  Computed in fp32 so bf16 autocast does not
    lose the small probabilities (see ``upcast``).
    """
    if student_logits.ndim == 3:
        if words is None:
            raise ValueError("per-word logits [B, W, C] need the words that count ([B, W] mask)")
        kl = row_kl(upcast(student_logits) / temperature, upcast(teacher_logits) / temperature)  # [B, W]
        keep = words.bool()
        return kl[keep].sum() / keep.sum().clamp(min=1) * temperature**2
    log_p_s = F.log_softmax(upcast(student_logits) / temperature, dim=-1)
    log_p_t = F.log_softmax(upcast(teacher_logits) / temperature, dim=-1)
    return F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True) * temperature**2


def kd_mse_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """Regression distillation: MSE between outputs [B, 1] (or [B])."""
    return F.mse_loss(upcast(student_logits), upcast(teacher_logits))


class PredictionParams(MethodParams):
    """Hard-label and logit-KD weights shared by the intermediate-layer methods."""

    ce_weight: float = Field(default=0.5, ge=0)   # gold-label CE (MSE for regression)
    kd_weight: float = Field(default=0.5, ge=0)   # logit KD: T^2 KL (MSE to teacher outputs for regression)
    temperature: float = Field(default=1.0, gt=0)


def prediction_losses(student: ModelOutputs, teacher: ModelOutputs, labels: torch.Tensor, regression: bool,
                      temperature: float) -> dict[str, torch.Tensor]:
    """{"hard": label loss, "kd": logit KD} for one batch (see ``label_loss`` / ``kd_*_loss``);
    tagging: both per word, over the words with a label."""
    kd = (kd_mse_loss(student.logits, teacher.logits) if regression
          else kd_kl_loss(student.logits, teacher.logits, temperature, labelled_words(labels)))
    return {"hard": label_loss(student.logits, labels, regression), "kd": kd}


class FineTune(Method):
    """Plain supervised training on gold labels: the teacher stage, and the no-KD baseline."""

    name = "finetune"
    needs_teacher = False
    not_per_token = None  # CE per word

    def losses(self, student, teacher, labels):
        return {"loss": label_loss(student.logits, labels, self.regression)}
