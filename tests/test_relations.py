"""Relation losses (MLKD-BERT, CR-ILD, MiniLMv2): hand-derived fixtures, slow loop references,
KL direction, padding invariance, per-example averaging, gradients and the SupCon edge cases."""

import math

import pytest
import torch
from torch.distributions import Categorical, kl_divergence

from conftest import padded_batch, tiny_bert
from kdpipe.methods.relations import (masked_row_kl, merge_heads, relation_logits, sample_relation_kl,
                                      supervised_contrastive, token_relation_kl)
from kdpipe.models.taps import Needs, _split_heads, run_model

LN2, LN3, E = math.log(2.0), math.log(3.0), math.e


def scalar(value: float) -> torch.Tensor:
    return torch.tensor(value, dtype=torch.float32)


# ----------------------------------------------------------------------- slow references (loops)
def slow_row_kl(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor | None = None) -> float:
    """Mean over examples of (mean over heads and real query rows of KL(teacher row || student row)),
    each row a categorical over the example's real keys only."""
    b, h, n, _ = student.shape
    mask = torch.ones(b, n, dtype=torch.long) if mask is None else mask
    per_example = []
    for i in range(b):
        real = [k for k in range(n) if mask[i, k]]
        kls = []
        for a in range(h):
            for q in real:
                p_t = Categorical(logits=teacher[i, a, q, real].double())
                p_s = Categorical(logits=student[i, a, q, real].double())
                kls.append(kl_divergence(p_t, p_s).item())
        per_example.append(sum(kls) / len(kls))
    return sum(per_example) / len(per_example)


def slow_relation(x: torch.Tensor, splits: int) -> torch.Tensor:
    """[B, n, d] -> [B, splits, n, n] with explicit per-pair dot products."""
    b, n, d = x.shape
    w = d // splits
    out = torch.zeros(b, splits, n, n, dtype=torch.float64)
    for i in range(b):
        for a in range(splits):
            chunk = x[i, :, a * w:(a + 1) * w].double()
            for q in range(n):
                for k in range(n):
                    out[i, a, q, k] = sum(chunk[q, c] * chunk[k, c] for c in range(w)) / math.sqrt(w)
    return out


def slow_supcon(student, teacher, labels, tau) -> list[float | None]:
    """Per-anchor SupCon losses over [student; teacher] (None: no positive), by the docstring formula."""
    z = [v / v.norm() for v in torch.cat([student, teacher]).double()]
    y = labels.tolist() * 2
    losses = []
    for i in range(len(z)):
        others = [k for k in range(len(z)) if k != i]
        denom = sum(math.exp(float(z[i] @ z[k]) / tau) for k in others)
        pos = [p for p in others if y[p] == y[i]]
        if not pos:
            losses.append(None)
            continue
        losses.append(sum(-math.log(math.exp(float(z[i] @ z[p]) / tau) / denom) for p in pos) / len(pos))
    return losses


# ----------------------------------------------------------------------------------- masked_row_kl
# Row 0: teacher softmax([0, ln 3]) = [1/4, 3/4], student softmax([0, 0]) = [1/2, 1/2]
#   KL(T || S) = 1/4 ln(1/2) + 3/4 ln(3/2) = 3/4 ln 3 - ln 2      (~0.1308)
#   KL(S || T) = 1/2 ln 2 + 1/2 ln(2/3)   = ln 2 - 1/2 ln 3      (~0.1438)
# Row 1: both softmax([0, 0]): KL = 0 either way.  Mean over the 2 real rows halves each.
TEACHER_2x2 = torch.tensor([[[[0.0, LN3], [0.0, 0.0]]]])
STUDENT_2x2 = torch.tensor([[[[0.0, 0.0], [5.0, 5.0]]]])  # row 1: shift-invariant, still uniform
KL_T_S = (0.75 * LN3 - LN2) / 2
KL_S_T = (LN2 - 0.5 * LN3) / 2


def test_masked_row_kl_by_hand_and_direction_is_teacher_to_student():
    torch.testing.assert_close(masked_row_kl(STUDENT_2x2, TEACHER_2x2), scalar(KL_T_S), rtol=0, atol=1e-6)
    # swapping the arguments makes the student the target: a different, also hand-computed, value
    torch.testing.assert_close(masked_row_kl(TEACHER_2x2, STUDENT_2x2), scalar(KL_S_T), rtol=0, atol=1e-6)
    assert abs(KL_T_S - KL_S_T) > 5e-3  # 0.0065 apart: far beyond the 1e-6 tolerance


def test_masked_row_kl_by_hand_with_a_padded_position():
    # n = 3, position 2 is padding: its row and column hold garbage, the loss is the 2 x 2 one above
    s = torch.full((1, 1, 3, 3), 1e4)
    t = torch.full((1, 1, 3, 3), -7.0)
    s[..., :2, :2], t[..., :2, :2] = STUDENT_2x2, TEACHER_2x2
    t[0, 0, 0, 2] = 50.0  # a huge teacher score on a padding key would dominate row 0 if it were not masked
    mask = torch.tensor([[1, 1, 0]])
    torch.testing.assert_close(masked_row_kl(s, t, mask), scalar(KL_T_S), rtol=0, atol=1e-6)
    # without the mask the padding takes part and the value moves
    assert abs(masked_row_kl(s, t).item() - KL_T_S) > 1e-2


def test_masked_row_kl_ignores_appended_padding_garbage():
    torch.manual_seed(0)
    s, t = torch.randn(2, 3, 5, 5), torch.randn(2, 3, 5, 5)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    base = masked_row_kl(s, t, mask)
    # 4 more positions (keys and queries) full of large garbage
    s_long, t_long = torch.randn(2, 3, 9, 9) * 50, torch.randn(2, 3, 9, 9) * 50
    s_long[..., :5, :5], t_long[..., :5, :5] = s, t
    long_mask = torch.cat([mask, torch.zeros(2, 4, dtype=mask.dtype)], dim=1)
    torch.testing.assert_close(masked_row_kl(s_long, t_long, long_mask), base, rtol=1e-6, atol=1e-7)
    # garbage in the already padded positions of example 0 changes nothing either
    s_g = s.clone()
    s_g[0, :, 3:, :] = 1e3
    s_g[0, :, :, 3:] = -1e3
    torch.testing.assert_close(masked_row_kl(s_g, t, mask), base, rtol=1e-6, atol=1e-7)


def test_masked_row_kl_averages_per_example_then_over_the_batch():
    torch.manual_seed(1)
    s, t = torch.randn(2, 2, 5, 5) * 2, torch.randn(2, 2, 5, 5) * 2
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    ref = slow_row_kl(s, t, mask)
    torch.testing.assert_close(masked_row_kl(s, t, mask), scalar(ref), rtol=1e-5, atol=1e-6)
    # the per-example average is not the pooled mean over all real rows (3 rows vs 5 rows): the test can tell
    pooled = []
    for i, length in enumerate((3, 5)):
        for a in range(2):
            for q in range(length):
                pooled.append(kl_divergence(Categorical(logits=t[i, a, q, :length]),
                                            Categorical(logits=s[i, a, q, :length])).item())
    assert abs(sum(pooled) / len(pooled) - ref) > 1e-3
    # no mask: every position is real
    torch.testing.assert_close(masked_row_kl(s, t), scalar(slow_row_kl(s, t)), rtol=1e-5, atol=1e-6)


def test_masked_row_kl_is_zero_for_identical_relations():
    torch.manual_seed(2)
    x = torch.randn(2, 3, 4, 4) * 3
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
    torch.testing.assert_close(masked_row_kl(x, x.clone(), mask), scalar(0.0), rtol=0, atol=1e-7)
    assert masked_row_kl(x + 0.1 * torch.randn_like(x), x, mask).item() > 1e-5


def test_masked_row_kl_gradient_reaches_student_only_and_is_zero_on_padding():
    torch.manual_seed(3)
    s = torch.randn(2, 2, 5, 5, requires_grad=True)
    t = torch.randn(2, 2, 5, 5, requires_grad=True)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 0]])
    masked_row_kl(s, t.detach(), mask).backward()
    assert t.grad is None
    g = s.grad
    for i, length in enumerate((3, 4)):
        assert torch.equal(g[i, :, length:, :], torch.zeros_like(g[i, :, length:, :]))  # padded query rows
        assert torch.equal(g[i, :, :, length:], torch.zeros_like(g[i, :, :, length:]))  # padded keys
        assert (g[i, :, :length, :length].abs() > 0).all()
    assert torch.isfinite(g).all()


def test_masked_row_kl_in_double_passes_gradcheck():
    torch.manual_seed(4)
    s = torch.randn(2, 2, 4, 4, dtype=torch.double, requires_grad=True)
    t = torch.randn(2, 2, 4, 4, dtype=torch.double)
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])
    assert torch.autograd.gradcheck(lambda x: masked_row_kl(x, t, mask), (s,))


# --------------------------------------------------------------------------------- relation_logits
X_3x4 = torch.tensor([[[1.0, 0.0, 2.0, 1.0],
                       [0.0, 1.0, 1.0, 1.0],
                       [1.0, 1.0, 0.0, 2.0]]])


def test_relation_logits_splits_into_contiguous_chunks_by_hand():
    out = relation_logits(X_3x4, 2)
    assert out.shape == (1, 2, 3, 3)
    # chunk 0 = columns 0:2, rows (1,0), (0,1), (1,1); chunk 1 = columns 2:4, rows (2,1), (1,1), (0,2);
    # each Gram matrix is divided by sqrt(d / splits) = sqrt(2)
    chunk0 = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 1.0], [1.0, 1.0, 2.0]]) / math.sqrt(2)
    chunk1 = torch.tensor([[5.0, 3.0, 2.0], [3.0, 2.0, 2.0], [2.0, 2.0, 4.0]]) / math.sqrt(2)
    torch.testing.assert_close(out[0, 0], chunk0, rtol=0, atol=1e-6)
    torch.testing.assert_close(out[0, 1], chunk1, rtol=0, atol=1e-6)
    # one split: the full Gram matrix / sqrt(4)
    full = torch.tensor([[6.0, 3.0, 3.0], [3.0, 3.0, 3.0], [3.0, 3.0, 6.0]]) / 2
    torch.testing.assert_close(relation_logits(X_3x4, 1)[0, 0], full, rtol=0, atol=1e-6)


def test_relation_logits_matches_loops_and_rejects_a_non_dividing_width():
    torch.manual_seed(5)
    x = torch.randn(2, 4, 6)
    for splits in (1, 2, 3, 6):
        torch.testing.assert_close(relation_logits(x, splits).double(), slow_relation(x, splits),
                                   rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="cannot split width 6 into 4"):
        relation_logits(x, 4)


def test_relation_logits_are_fp32_for_half_inputs():
    out = relation_logits(X_3x4.to(torch.bfloat16), 2)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, relation_logits(X_3x4, 2), rtol=0, atol=1e-6)


# ------------------------------------------------------------------------------- token_relation_kl
def test_token_relation_kl_with_different_widths_and_same_splits():
    torch.manual_seed(6)
    s = torch.randn(2, 5, 4)   # student width 4 -> 2 chunks of 2, scaled by 1/sqrt(2)
    t = torch.randn(2, 5, 8)   # teacher width 8 -> 2 chunks of 4, scaled by 1/sqrt(4)
    mask = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 0, 0]])
    ref = slow_row_kl(slow_relation(s, 2), slow_relation(t, 2), mask)
    torch.testing.assert_close(token_relation_kl(s, t, mask, splits=2), scalar(ref), rtol=1e-5, atol=1e-6)
    # splits = 1 compares whole vectors (MLKD's embedding relation)
    ref1 = slow_row_kl(slow_relation(s, 1), slow_relation(t, 1), mask)
    torch.testing.assert_close(token_relation_kl(s, t, mask), scalar(ref1), rtol=1e-5, atol=1e-6)
    assert abs(ref - ref1) > 1e-4
    with pytest.raises(ValueError, match="cannot split"):
        token_relation_kl(s, torch.randn(2, 5, 6), mask, splits=4)


def test_token_relation_kl_blocks_the_teacher_gradient():
    torch.manual_seed(7)
    s = torch.randn(2, 5, 4, requires_grad=True)
    t = torch.randn(2, 5, 8, requires_grad=True)  # not detached by the caller
    mask = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 1, 1]])
    token_relation_kl(s, t, mask, splits=2).backward()
    assert t.grad is None
    assert s.grad.abs().sum() > 0
    # a padded token's vector does not influence the loss
    assert torch.equal(s.grad[0, 4], torch.zeros(4))


# ------------------------------------------------------------------------------ sample_relation_kl
def test_sample_relation_kl_by_hand():
    # teacher d = 1, vectors [0], [sqrt(ln 3)]: logits h h^T / 1 = [[0, 0], [0, ln 3]]
    #   rows: softmax([0, 0]) = [1/2, 1/2] and softmax([0, ln 3]) = [1/4, 3/4]
    # student d = 4, zero vectors: both rows uniform
    #   (1/b) sum_i KL(R_T,i || R_S,i) = (0 + 3/4 ln 3 - ln 2) / 2;  the other direction (ln 2 - 1/2 ln 3) / 2
    teacher = torch.tensor([[0.0], [math.sqrt(LN3)]])
    student = torch.zeros(2, 4)
    torch.testing.assert_close(sample_relation_kl(student, teacher), scalar((0.75 * LN3 - LN2) / 2),
                               rtol=0, atol=1e-6)
    torch.testing.assert_close(sample_relation_kl(teacher, student), scalar((LN2 - 0.5 * LN3) / 2),
                               rtol=0, atol=1e-6)


def test_sample_relation_kl_b3_matches_a_loop_and_blocks_the_teacher():
    torch.manual_seed(8)
    s = torch.randn(3, 6, requires_grad=True)
    t = torch.randn(3, 10, requires_grad=True)
    rows, s0, t0 = [], s.detach(), t.detach()
    for i in range(3):  # R = softmax(h h^T / sqrt d), explicit
        r_s = [float(s0[i] @ s0[k]) / math.sqrt(6) for k in range(3)]
        r_t = [float(t0[i] @ t0[k]) / math.sqrt(10) for k in range(3)]
        rows.append(kl_divergence(Categorical(logits=torch.tensor(r_t)), Categorical(logits=torch.tensor(r_s))))
    loss = sample_relation_kl(s, t)
    torch.testing.assert_close(loss, scalar(sum(r.item() for r in rows) / 3), rtol=1e-5, atol=1e-6)
    loss.backward()
    assert t.grad is None and s.grad.abs().sum() > 0


# -------------------------------------------------------------------------- supervised_contrastive
UNIT = torch.tensor([[1.0, 0.0], [0.0, 1.0]])


def test_supcon_one_positive_per_anchor_by_hand():
    # s1 = t1 = (1, 0), s2 = t2 = (0, 1), labels [0, 1], tau = 1.  Anchor s1: others s2, t1, t2 with
    # cosines 0, 1, 0 -> denominator 2 + e; its only positive is t1: -log(e / (2 + e)) = log(2 + e) - 1.
    # Every anchor looks the same.
    loss = supervised_contrastive(UNIT, UNIT.clone(), torch.tensor([0, 1]), temperature=1.0)
    torch.testing.assert_close(loss, scalar(math.log(2 + E) - 1), rtol=0, atol=1e-6)


def test_supcon_all_same_class_by_hand():
    # labels [0, 0]: anchor s1 has positives s2, t1, t2 with log-probs -log(2+e), 1 - log(2+e), -log(2+e):
    # l = log(2 + e) - 1/3, the same for every anchor
    loss = supervised_contrastive(UNIT, UNIT.clone(), torch.tensor([0, 0]), temperature=1.0)
    torch.testing.assert_close(loss, scalar(math.log(2 + E) - 1 / 3), rtol=0, atol=1e-6)


def test_supcon_student_anchors_differ_from_both_by_hand():
    # s1 = (1,0), s2 = (0,1), t1 = t2 = (1,0); labels [0, 1]; tau = 1; L = log(1 + 2e)
    #   s1: others s2, t1, t2 -> cos 0, 1, 1, positive t1: L - 1
    #   s2: others s1, t1, t2 -> cos 0, 0, 0, positive t2: log 3
    #   t1: others s1, s2, t2 -> cos 1, 0, 1, positive s1: L - 1
    #   t2: others s1, s2, t1 -> cos 1, 0, 1, positive s2: L
    big_l = math.log(1 + 2 * E)
    teacher = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    labels = torch.tensor([0, 1])
    both = supervised_contrastive(UNIT, teacher, labels, temperature=1.0)
    student = supervised_contrastive(UNIT, teacher, labels, temperature=1.0, anchors="student")
    torch.testing.assert_close(both, scalar((3 * big_l - 2 + LN3) / 4), rtol=0, atol=1e-6)
    torch.testing.assert_close(student, scalar((big_l - 1 + LN3) / 2), rtol=0, atol=1e-6)


def test_supcon_matches_a_loop_reference():
    torch.manual_seed(9)
    s, t = torch.randn(5, 6), torch.randn(5, 6)
    labels = torch.tensor([0, 1, 0, 2, 1])
    per_anchor = slow_supcon(s, t, labels, 0.5)
    both = supervised_contrastive(s, t, labels, temperature=0.5)
    student = supervised_contrastive(s, t, labels, temperature=0.5, anchors="student")
    torch.testing.assert_close(both, scalar(sum(per_anchor) / 10), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(student, scalar(sum(per_anchor[:5]) / 5), rtol=1e-5, atol=1e-6)


def test_supcon_skips_anchors_without_a_positive():
    # The counterpart always shares the label, so with class ids every anchor has a positive; a NaN label
    # (NaN != NaN) is the one way to get an anchor without one.  Example 1's two anchors are skipped and the
    # mean is over s1 and t1 only, each log(2 + e) - 1 as in the one-positive case (not half of it).
    labels = torch.tensor([0.0, float("nan")])
    loss = supervised_contrastive(UNIT, UNIT.clone(), labels, temperature=1.0)
    torch.testing.assert_close(loss, scalar(math.log(2 + E) - 1), rtol=0, atol=1e-6)


def test_supcon_without_any_positive_is_zero_and_differentiable():
    s = torch.randn(3, 4, requires_grad=True)
    loss = supervised_contrastive(s, torch.randn(3, 4), torch.full((3,), float("nan")))
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert torch.equal(s.grad, torch.zeros(3, 4))


def test_supcon_teacher_gets_no_gradient_and_features_are_normalised():
    torch.manual_seed(10)
    s = torch.randn(4, 5, requires_grad=True)
    t = torch.randn(4, 5, requires_grad=True)
    labels = torch.tensor([0, 1, 1, 0])
    loss = supervised_contrastive(s, t, labels, temperature=0.2)
    loss.backward()
    assert t.grad is None and s.grad.abs().sum() > 0
    scaled = supervised_contrastive(3.7 * s.detach(), 0.2 * t.detach(), labels, temperature=0.2)
    torch.testing.assert_close(scaled, loss.detach(), rtol=1e-5, atol=1e-6)
    # the temperature does matter
    assert abs(supervised_contrastive(s.detach(), t.detach(), labels, temperature=1.0).item() - loss.item()) > 1e-3


# ------------------------------------------------------------------------------------- merge_heads
def test_merge_heads_inverts_the_taps_head_split():
    torch.manual_seed(11)
    x = torch.randn(2, 5, 12)
    for heads in (1, 3, 4):
        split = _split_heads(x, heads)
        assert split.shape == (2, heads, 5, 12 // heads)
        assert torch.equal(merge_heads(split), x)
    # [B, A, n, d_k] -> [B, n, A * d_k] puts head a at columns a*d_k:(a+1)*d_k
    y = torch.arange(2 * 3 * 4 * 2, dtype=torch.float32).reshape(2, 3, 4, 2)
    merged = merge_heads(y)
    assert torch.equal(merged[1, 2, 4:6], y[1, 2, 2])


def test_merge_heads_of_captured_query_is_the_projection_output():
    model = tiny_bert(layers=2)
    inputs = padded_batch(7)
    with torch.no_grad():
        out = run_model(model, inputs, Needs(hidden_states=True, qkv=True))
        q_proj = model.bert.encoder.layer[0].attention.self.query(out.hidden_states[0])
    torch.testing.assert_close(merge_heads(out.query[1]), q_proj, rtol=0, atol=1e-6)
    # MiniLMv2 relation heads = the model's heads: per-head Q Q^T / sqrt(d_k)
    q = out.query[1]
    per_head = q @ q.transpose(-1, -2) / math.sqrt(q.shape[-1])
    torch.testing.assert_close(relation_logits(merge_heads(q), 4), per_head, rtol=1e-5, atol=1e-5)


def test_supervised_contrastive_runs_in_fp32_under_bf16_autocast():
    """The engine trains under bf16 autocast on GPUs: the similarities must not be bf16 (the
    self-pair fill would overflow it, and sharp tau = 0.07 logits would lose precision)."""
    torch.manual_seed(0)
    s = torch.randn(6, 8, requires_grad=True)
    t = torch.randn(6, 8)
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    plain = supervised_contrastive(s, t, labels)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = supervised_contrastive(s.bfloat16(), t.bfloat16(), labels)
        relation = relation_logits(torch.randn(1, 3, 4).bfloat16(), 2)
    assert mixed.dtype == torch.float32 and relation.dtype == torch.float32
    torch.testing.assert_close(mixed, plain, rtol=2e-2, atol=2e-2)  # only the bf16 inputs' rounding
    mixed.backward()
    assert s.grad is not None and torch.isfinite(s.grad).all()
