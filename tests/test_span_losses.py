"""The per-position losses (QA spans: kdpipe.methods.span_losses; token tags: methods.base's
label_loss and kd_kl_loss on per-word logits) on hand-computed fixtures, with padding and
gradient checks."""

from __future__ import annotations

import math

import pytest
import torch

from kdpipe.data.conll import IGNORE
from kdpipe.methods.base import kd_kl_loss, label_loss
from kdpipe.methods.span_losses import position_kd_loss, span_kd_loss, span_label_loss


def token_kd_loss(student, teacher, mask, temperature):  # tagging's logit KD: per-word logits [B, W, C]
    return kd_kl_loss(student, teacher, temperature, mask)


def token_label_loss(logits, labels):
    return label_loss(logits, labels, regression=False)

# one window of 2 real positions + 1 padded one; teacher p = [3/4, 1/4], student p = [1/2, 1/2]
MASK = torch.tensor([[True, True, False]])
TEACHER = torch.tensor([[math.log(3.0), 0.0, 50.0]])  # the padded logit is huge: it must not count
STUDENT = torch.tensor([[0.0, 0.0, -7.0]])
KL = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)  # KL(p_T || p_S) by hand, ~0.1308


def test_position_kd_by_hand_and_padding_never_counts():
    assert position_kd_loss(STUDENT, TEACHER, MASK, 1.0).item() == pytest.approx(KL, rel=1e-6)
    # at T = 2 the teacher needs logits twice as far apart for the same p_T; the loss carries T^2
    assert position_kd_loss(STUDENT, 2 * TEACHER, MASK, 2.0).item() == pytest.approx(4 * KL, rel=1e-6)
    other = STUDENT.clone()
    other[0, 2] = 123.0
    assert position_kd_loss(other, TEACHER, MASK, 1.0).item() == pytest.approx(KL, rel=1e-6)


def test_span_kd_is_the_mean_of_start_and_end_and_its_gradient_skips_padding():
    student_start = STUDENT.clone().requires_grad_()
    student_end = torch.zeros(1, 3, requires_grad=True)
    same = torch.zeros(1, 3)
    loss = span_kd_loss(student_start, student_end, TEACHER, same, MASK, 1.0)
    assert loss.item() == pytest.approx(KL / 2, rel=1e-6)  # the end distributions agree: KL 0
    loss.backward()
    assert student_start.grad[0, 2] == 0 and student_end.grad[0, 2] == 0
    # d/dz_S of KL(p_T || p_S) = p_S - p_T over the real positions, halved by the mean
    assert student_start.grad[0, :2].tolist() == pytest.approx([(0.5 - 0.75) / 2, (0.5 - 0.25) / 2], abs=1e-6)


def test_span_label_loss_by_hand():
    start = torch.tensor([[0.0, math.log(3.0), 9.0]])  # over the 2 real positions p = [1/4, 3/4]
    end = torch.tensor([[0.0, 0.0, 9.0]])
    loss = span_label_loss(start, end, torch.tensor([1]), torch.tensor([0]), MASK)
    assert loss.item() == pytest.approx((-math.log(0.75) - math.log(0.5)) / 2, rel=1e-6)


def _slow_token_kd(student, teacher, mask, t):
    total, n = 0.0, 0
    for b in range(student.shape[0]):
        for i in range(student.shape[1]):
            if mask[b, i]:
                p_t = torch.softmax(teacher[b, i] / t, -1)
                p_s = torch.softmax(student[b, i] / t, -1)
                total += float((p_t * (p_t.log() - p_s.log())).sum())
                n += 1
    return total / n * t * t


def test_token_kd_averages_over_counted_tokens_only():
    g = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(2, 4, 5, generator=g), torch.randn(2, 4, 5, generator=g)
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0]])
    assert token_kd_loss(student, teacher, mask, 2.0).item() == pytest.approx(_slow_token_kd(student, teacher, mask, 2.0), rel=1e-5)
    padded = student.clone()
    padded[0, 3] += 100
    assert token_kd_loss(padded, teacher, mask, 2.0).item() == pytest.approx(token_kd_loss(student, teacher, mask, 2.0).item())
    assert token_kd_loss(student, teacher, torch.zeros(2, 4), 1.0).item() == 0.0


def test_token_label_loss_ignores_sub_tokens_and_specials():
    logits = torch.tensor([[[math.log(3.0), 0.0], [5.0, -5.0], [0.0, 0.0]]])
    labels = torch.tensor([[0, IGNORE, 1]])
    # token 0: p(0) = 3/4; token 1 ignored; token 2: p(1) = 1/2
    assert token_label_loss(logits, labels).item() == pytest.approx((-math.log(0.75) - math.log(0.5)) / 2, rel=1e-6)
