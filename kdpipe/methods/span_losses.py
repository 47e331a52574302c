"""Losses of extractive QA's per-position heads: a start and an end distribution over a window's
positions.  Small, pure and mask-aware, like the sentence-level ones in ``methods.base`` (which
also covers token tagging: ``label_loss`` and ``kd_kl_loss`` on per-word logits [B, W, C]);
computed in fp32 (``upcast``).

Masks are bool or 0/1 tensors, True where a position counts: for QA the positions an answer can
take (padding never: its logits are set to a large negative before every softmax, student's and
teacher's alike, so neither distribution puts mass there); for tagging the tokens the loss sees.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kdpipe.methods.base import mask_logits, row_kl, upcast


def position_kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, mask: torch.Tensor,
                     temperature: float) -> torch.Tensor:
    """T^2 * KL(p_T || p_S) of one distribution over positions, p = softmax(z / T) over the
    positions in ``mask``, averaged over the batch.

    Args: student_logits, teacher_logits [B, L]; mask [B, L].  Returns a scalar.
    """
    return row_kl(upcast(student_logits) / temperature, upcast(teacher_logits) / temperature, mask).mean() \
        * temperature**2


def span_kd_loss(student_start: torch.Tensor, student_end: torch.Tensor, teacher_start: torch.Tensor,
                 teacher_end: torch.Tensor, mask: torch.Tensor, temperature: float) -> torch.Tensor:
    """QA logit KD: the mean of the start and the end distributions' ``position_kd_loss``.

    Args: the four logits [B, L]; mask [B, L] (the window's real tokens).  Returns a scalar.
    """
    return (position_kd_loss(student_start, teacher_start, mask, temperature)
            + position_kd_loss(student_end, teacher_end, mask, temperature)) / 2


def span_label_loss(start_logits: torch.Tensor, end_logits: torch.Tensor, start_positions: torch.Tensor,
                    end_positions: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """QA hard-label loss: the mean of the start and end cross-entropies over the positions in
    ``mask`` (BERT's SQuAD loss; position 0, [CLS], is the target when the window has no answer).

    Args: start_logits, end_logits [B, L]; start_positions, end_positions [B] (long); mask [B, L].
    """
    return (F.cross_entropy(mask_logits(start_logits, mask), start_positions)
            + F.cross_entropy(mask_logits(end_logits, mask), end_positions)) / 2
