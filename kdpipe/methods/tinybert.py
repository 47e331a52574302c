"""TinyBERT task-specific distillation (Jiao et al., 2020), two phases.  See docs/methods.md §1.3.

Phase ``ild`` (intermediate-layer distillation, no logits), student layer i <- teacher layer g(i)
(``uniform``: round(i * L_T / L_S); ``last``: L_T - L_S + i):

    L_ild = attention_weight * sum_{i=1..L_S} MSE(S_S^i, S_T^g(i))
          + hidden_weight    * sum_{l=0..L_S} MSE(W_h H_S^l, H_T^g(l)),   g(0) = 0 (embeddings)

S are the pre-softmax attention scores Q K^T / sqrt(d_k) of every head (so A_S must equal A_T),
H the hidden states, and W_h one map d_S -> d_T shared by all layers (the official code's
``fit_dense``), discarded after training.

Phase ``pred`` (prediction-layer distillation):

    L_pred = mean_{b, c} -softmax(z_T / t) * log_softmax(z_S / t)       (t = pred_temperature)

and for regression (STS-B) MSE to the gold labels, as the official code does.

Masking (a deliberate deviation): the official code pads every batch to 128 tokens, zeroes the
attention scores of masked keys (entries <= -100) on both sides and averages over the whole
128 x 128 grid, and averages the hidden MSE over padding tokens too, so its losses depend on the
padded length.  With dynamic padding that would make the loss depend on the batch's longest
example, so here the attention MSE averages over real (query, key) pairs only and the hidden MSE
over real tokens x dims, per layer.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from kdpipe.methods.base import Method, MethodConfigError, MethodParams, label_loss, labelled_words, upcast
from kdpipe.methods.projections import projection
from kdpipe.models.taps import ModelOutputs, Needs

__all__ = ["ILD_PHASE_TRAIN", "TinyBERT", "TinyBERTParams", "attention_score_mse", "hidden_mse",
           "soft_cross_entropy"]

# TinyBERT step 1: constant LR, no warmup; dev accuracy means nothing without a trained head, so
# the last checkpoint goes on rather than the best-on-dev one.  MLKD-BERT's stage 1 is the same.
ILD_PHASE_TRAIN = {"select": "last", "warmup_ratio": 0.0, "schedule": "constant"}


# ------------------------------------------------------------------------------------------ losses
def attention_score_mse(student_scores: torch.Tensor, teacher_scores: torch.Tensor,
                        attention_mask: torch.Tensor) -> torch.Tensor:
    """Squared error of pre-softmax attention scores, averaged over real (query, key) pairs and heads.

    Args: student_scores, teacher_scores [B, A, n, n] (no padding mask added); attention_mask
    [B, n], 1 = real token.  A pair counts only when both its query and its key are real tokens, so
    appending padding leaves the loss unchanged.  Returns a scalar.
    """
    diff = upcast(student_scores) - upcast(teacher_scores)
    mask = attention_mask.to(diff.dtype)
    pair_mask = mask[:, None, :, None] * mask[:, None, None, :]  # [B, 1, n, n]
    heads = diff.shape[1]
    return (diff.square() * pair_mask).sum() / (pair_mask.sum() * heads).clamp_min(1)


def hidden_mse(student_hidden: torch.Tensor, teacher_hidden: torch.Tensor,
               attention_mask: torch.Tensor) -> torch.Tensor:
    """Squared error of hidden states averaged over real tokens x dims.

    Args: student_hidden (already projected to the teacher's width), teacher_hidden [B, n, d];
    attention_mask [B, n], 1 = real token.  Returns a scalar.
    """
    diff = upcast(student_hidden) - upcast(teacher_hidden)
    mask = attention_mask.to(diff.dtype).unsqueeze(-1)  # [B, n, 1]
    return (diff.square() * mask).sum() / (mask.sum() * diff.shape[-1]).clamp_min(1)


def soft_cross_entropy(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                       temperature: float = 1.0, words: torch.Tensor | None = None,
                       over_positions: bool = False) -> torch.Tensor:
    """-softmax(z_T / t) * log_softmax(z_S / t), averaged over batch AND classes (tagging: over
    the words in ``words`` and the classes).

    Args: student_logits, teacher_logits [B, C], or [B, W, C] per word with ``words`` [B, W]
    (True where a word counts).  Returns a scalar.  The mean over classes is the official
    code's convention: 1/C of the usual soft CE (which sums over classes); no t^2 factor.

    ``over_positions`` (extractive QA: logits [B, 2, n], start and end over a window's positions,
    padding at ``taps.PADDING_LOGIT``): the usual soft CE, summed over positions and averaged over
    the B x 2 distributions.  The official code's mean over its fixed 384 padded positions would
    make the loss depend on how far a dynamically padded batch pads.
    """
    log_p_s = F.log_softmax(upcast(student_logits) / temperature, dim=-1)
    p_t = F.softmax(upcast(teacher_logits) / temperature, dim=-1)
    terms = -p_t * log_p_s
    if over_positions:
        return terms.sum(-1).mean()
    if words is None:
        return terms.mean()
    return terms[words.bool()].mean() if words.any() else terms.sum() * 0.0


# ------------------------------------------------------------------------------------------ method
class TinyBERTParams(MethodParams):
    attention_weight: float = Field(default=1.0, ge=0)  # ild: attention-score MSE (0 drops it: A_S may differ)
    hidden_weight: float = Field(default=1.0, ge=0)     # ild: hidden-state MSE
    pred_temperature: float = Field(default=1.0, gt=0)  # pred: soft-CE temperature t
    # auto: W_h is the identity when d_S == d_T (students copied from teacher layers already live in
    # the teacher's space); trainable: always a learnable W_h, as the official code.  d_S != d_T: trainable.
    hidden_projection: Literal["auto", "trainable"] = "auto"
    mapping: Literal["uniform", "last"] = "uniform"


class TinyBERT(Method):
    name = "tinybert"
    Params = TinyBERTParams
    not_per_token = None  # ild is token-level already; pred: soft CE per word
    phases = ("ild", "pred")
    label_free_phases = ("ild",)
    needs_shapes = True

    def __init__(self, params: TinyBERTParams, regression: bool, shapes=None):
        super().__init__(params, regression, shapes)
        s, t = shapes.student, shapes.teacher
        if params.attention_weight == 0 and params.hidden_weight == 0:
            raise MethodConfigError("tinybert.attention_weight, tinybert.hidden_weight: both are 0, so the ild "
                                    "phase has nothing to learn from")
        if params.attention_weight > 0 and s.heads != t.heads:
            raise MethodConfigError(
                f"tinybert.attention_weight: the attention loss compares every head, but the student has "
                f"{s.heads} heads and the teacher {t.heads}; set attention_weight: 0 or match the head counts")
        # embeddings <- embeddings, then student layer i <- teacher layer g(i); a student deeper
        # than its teacher is refused by the mapping itself
        self.mapping = self.resolve_mapping(params.mapping, include_embeddings=True, param="tinybert.mapping")
        trainable = params.hidden_projection == "trainable" or s.hidden != t.hidden
        # W_h: a submodule, so it trains in the method's parameter group and is never exported.
        self.fit_dense = projection(s.hidden, t.hidden, "trainable" if trainable else "identity")

    # ---- what the current phase reads
    @property
    def layer_pairs(self) -> list[tuple[int, int]]:
        """(student layer, teacher layer) for hidden states, embeddings (0, 0) first."""
        return [(i, ts[0]) for i, ts in self.mapping.pairs()]

    def _ild_needs(self, side: int) -> Needs:
        p = self.params
        hidden, attention = p.hidden_weight > 0, p.attention_weight > 0
        layers = frozenset(pair[side] for pair in self.layer_pairs if hidden or pair[0] > 0)
        return Needs(hidden_states=hidden, attention_scores=attention, layers=layers)

    @property
    def student_needs(self) -> Needs:
        return self._ild_needs(0) if self.phase == "ild" else Needs()

    @property
    def teacher_needs(self) -> Needs:
        return self._ild_needs(1) if self.phase == "ild" else Needs()

    @property
    def teacher_cacheable(self) -> bool:
        return self.phase == "pred"  # logits only; ild reads token-level states

    def phase_train(self, phase: str) -> dict:
        return dict(ILD_PHASE_TRAIN) if phase == "ild" else {}

    # ---- losses
    def losses(self, student: ModelOutputs, teacher: ModelOutputs, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        if self.phase == "ild":
            return self._ild_losses(student, teacher)
        if self.regression:  # the official code fits STS-B's gold scores, not the teacher
            hard = label_loss(student.logits, labels, regression=True)
            return {"loss": hard, "hard": hard}
        kd = soft_cross_entropy(student.logits, teacher.logits.detach(), self.params.pred_temperature,
                                labelled_words(labels), over_positions=student.span)
        return {"loss": kd, "kd": kd}

    def _ild_losses(self, student: ModelOutputs, teacher: ModelOutputs) -> dict[str, torch.Tensor]:
        p = self.params
        if student.attention_mask.shape != teacher.attention_mask.shape:
            raise ValueError("tinybert: token-level losses need the teacher and student to share a tokenizer "
                             f"(attention masks {tuple(teacher.attention_mask.shape)} vs "
                             f"{tuple(student.attention_mask.shape)})")
        mask = student.attention_mask
        zero = student.logits.new_zeros((), dtype=torch.float32)
        attention, hidden = zero, zero
        for s, t in self.layer_pairs:
            if p.attention_weight > 0 and s > 0:
                attention = attention + attention_score_mse(
                    student.attention_scores[s], teacher.attention_scores[t].detach(), mask)
            if p.hidden_weight > 0:
                hidden = hidden + hidden_mse(
                    self.fit_dense(student.hidden_states[s]), teacher.hidden_states[t].detach(), mask)
        total = p.attention_weight * attention + p.hidden_weight * hidden
        return {"loss": total, "attention": attention, "hidden": hidden}

    def describe(self) -> dict:
        return {**super().describe(), "resolved_mapping": {str(s): t for s, t in self.layer_pairs},
                "resolved_hidden_projection": "identity" if isinstance(self.fit_dense, nn.Identity) else "trainable"}
