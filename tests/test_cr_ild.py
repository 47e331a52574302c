"""CR-ILD: presets, the per-step mixup draw, embedding mixup invariants (taps.Mixup), the Q/K/V relation
and attention/hidden objectives against loop references, the consistency term (by hand, ramp,
stop-gradient), head/width validation, the logit-KD pred phase and padding invariance."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.distributions import Categorical, kl_divergence

from conftest import padded_batch, tiny_bert
from kdpipe.methods.base import MethodConfigError
from kdpipe.methods.registry import build_method
from kdpipe.models.adapters import ModelShape, Shapes
from kdpipe.methods.base import kd_kl_loss
from kdpipe.methods.cr_ild import PRESETS, consistency_loss, draw_mixup_lambda
from kdpipe.methods.relations import masked_row_kl
from kdpipe.models.students import build_student, set_attention_heads
from kdpipe.models.taps import Mixup, ModelOutputs, Needs, run_model

SAME_HEADS = Shapes(ModelShape(2, 32, 4), ModelShape(4, 32, 4))
EQUAL_LENGTHS = [[101, 7592, 2088, 2003, 102], [101, 2023, 2003, 1037, 102]]


def crild(regression=False, shapes=SAME_HEADS, **params):
    return build_method("cr_ild", params, regression=regression, shapes=shapes)


def make_models(student_heads=4):
    """(teacher, student): a wider init than 0.02 so relations are not uniform; the student is cut from a
    differently seeded model so it does not start equal to the teacher."""
    teacher = tiny_bert(layers=4, seed=0, initializer_range=0.3)
    student = build_student(tiny_bert(layers=4, seed=1, initializer_range=0.3), [1, 3])
    if student_heads != 4:
        set_attention_heads(student, student_heads)
    return teacher, student


@pytest.fixture(scope="module")
def models():
    return make_models()


def step_outputs(method, teacher, student, inputs, clean_grad=False):
    """What the engine does for one step: the step's mixup on both models, plus the student's clean pass."""
    mix = method.mixup(inputs["input_ids"].shape[0], "cpu")
    with torch.no_grad():
        t_out = run_model(teacher, inputs, method.teacher_needs, mix)
    s_out = run_model(student, inputs, method.student_needs, mix)
    if mix is not None and method.needs_clean_pass:
        with torch.set_grad_enabled(clean_grad):
            s_out.clean = run_model(student, inputs, method.student_needs)
    return s_out, t_out


def scalar(x: float) -> torch.Tensor:
    return torch.tensor(x, dtype=torch.float32)


# ------------------------------------------------------------------------ slow references (loops)
def slow_row_kl(student, teacher, mask) -> float:
    """Mean over examples of the mean over heads and real rows of KL(teacher row || student row)."""
    b, h, n, _ = student.shape
    per_example = []
    for i in range(b):
        real = [k for k in range(n) if mask[i, k]]
        kls = [kl_divergence(Categorical(logits=teacher[i, a, q, real].detach().double()),
                             Categorical(logits=student[i, a, q, real].detach().double())).item()
               for a in range(h) for q in real]
        per_example.append(sum(kls) / len(kls))
    return sum(per_example) / len(per_example)


def slow_relations(x: torch.Tensor, splits: int) -> torch.Tensor:
    """[B, n, d] -> [B, splits, n, n]: chunk a's x_q . x_k / sqrt(d / splits), pair by pair."""
    b, n, d = x.shape
    w = d // splits
    x = x.detach().double()
    out = torch.zeros(b, splits, n, n, dtype=torch.float64)
    for i in range(b):
        for a in range(splits):
            for q in range(n):
                for k in range(n):
                    out[i, a, q, k] = float(x[i, q, a * w:(a + 1) * w] @ x[i, k, a * w:(a + 1) * w]) / math.sqrt(w)
    return out


def slow_masked_mse(a, b, mask) -> float:
    sq = [(a[i, k] - b[i, k]).detach().double().pow(2).mean().item()
          for i in range(a.shape[0]) for k in range(a.shape[1]) if mask[i, k]]
    return sum(sq) / len(sq)


def projections(model, inputs, mix, layer):
    """The last layer's Q/K/V projection outputs [B, n, d], recomputed from the captured layer input."""
    with torch.no_grad():
        out = run_model(model, inputs, Needs(hidden_states=True), mix)
        attn = model.bert.encoder.layer[layer - 1].attention.self
        h = out.hidden_states[layer - 1]
        return {"query": attn.query(h), "key": attn.key(h), "value": attn.value(h)}, out.attention_mask


# ---------------------------------------------------------------------------------------- presets
@pytest.mark.parametrize("preset, objective, weight", [("released", "qkv", 0.0), ("ah_cr", "ah", 0.1),
                                                       ("qkv_cr", "qkv", 0.1)])
def test_presets_resolve(preset, objective, weight):
    assert PRESETS[preset] == (objective, weight)
    method = crild(preset=preset)
    assert method.objective == objective and method.cr_weight == weight
    assert method.describe()["resolved_objective"] == objective
    assert not method.needs_clean_pass  # epoch 0: the ramp is 0, the clean pass is skipped
    method.begin_training(2)
    method.begin_step(1, 10)
    assert method.needs_clean_pass == (weight > 0)
    method.begin_step(0, 0)
    assert method.student_needs.layers == {2} and method.teacher_needs.layers == {4}  # last <- last
    if objective == "qkv":
        assert method.student_needs.qkv and not method.student_needs.attention_scores
    else:
        assert method.student_needs.attention_scores and method.student_needs.hidden_states
        assert not method.student_needs.qkv
    method.set_phase("pred")
    assert not method.needs_clean_pass and method.teacher_cacheable
    assert method.student_needs == Needs() and method.teacher_needs == Needs()


def test_default_preset_and_overrides():
    method = crild()
    assert method.params.preset == "ah_cr" and method.objective == "ah" and method.cr_weight == 0.1
    override = crild(preset="released", objective="ah", consistency_weight=0.5)
    off = crild(preset="ah_cr", consistency_weight=0.0)
    for m in (override, off):
        m.begin_training(2)
        m.begin_step(1, 10)
    assert override.objective == "ah" and override.cr_weight == 0.5 and override.needs_clean_pass
    assert not off.needs_clean_pass
    with pytest.raises(MethodConfigError, match=r"cr_ild\.consistency_weight.*mixup"):
        crild(preset="ah_cr", mixup=False)


# ------------------------------------------------------------------------------------ mixup draws
def test_draw_mixup_lambda_is_folded_deterministic_and_leaves_global_rng_alone():
    torch_state, np_state = torch.get_rng_state(), np.random.get_state()
    draws = [draw_mixup_lambda(7, step, 1.0) for step in range(2000)]
    assert all(0.5 <= lam <= 1.0 for lam in draws)
    assert draws == [draw_mixup_lambda(7, step, 1.0) for step in range(2000)]  # a pure function of (seed, step)
    assert len(set(draws[:50])) == 50                                          # differs across steps
    assert draw_mixup_lambda(8, 0, 1.0) != draws[0]                            # and across seeds
    # Beta(1, 1) folded to [0.5, 1] is uniform there: mean 0.75 (s.e. ~0.003 over 2000 draws)
    assert abs(sum(draws) / len(draws) - 0.75) < 0.015
    # a small alpha piles Beta's mass at 0 and 1: folded, lambda sits near 1
    assert sum(draw_mixup_lambda(7, s, 0.1) for s in range(500)) / 500 > 0.9
    assert torch.equal(torch.get_rng_state(), torch_state)
    assert np.random.get_state()[1].tolist() == np_state[1].tolist()


def test_method_mixup_follows_phase_step_and_flag():
    method = crild(seed=3, mixup_alpha=0.7)
    method.begin_training(2)
    method.begin_step(1, 5)
    mix = method.mixup(4, "cpu")
    assert mix.lam == draw_mixup_lambda(3, 5, 0.7)
    assert mix.partner.tolist() == [3, 2, 1, 0]
    method.begin_step(1, 6)
    assert method.mixup(4, "cpu").lam == draw_mixup_lambda(3, 6, 0.7) != mix.lam
    assert crild(preset="released", mixup=False).mixup(4, "cpu") is None
    method.set_phase("pred")
    assert method.mixup(4, "cpu") is None


def test_mixup_reversed_batch_mix_and_union_mask_by_hand():
    mix = Mixup.reversed_batch(0.75, 3)
    assert mix.partner.tolist() == [2, 1, 0]
    e = torch.tensor([[[4.0]], [[8.0]], [[0.0]]])  # [B=3, n=1, d=1]
    # 0.75 * e_i + 0.25 * e_{2-i}: [3 + 0, 6 + 2, 0 + 1]
    torch.testing.assert_close(mix.mix(e), torch.tensor([[[3.0]], [[8.0]], [[1.0]]]), rtol=0, atol=1e-6)
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 0], [1, 1, 1, 1]])
    assert mix.union_mask(mask).tolist() == [[1, 1, 1, 1], [1, 1, 1, 0], [1, 1, 1, 1]]


def test_lambda_one_is_exactly_the_clean_forward_for_equal_masks(models):
    teacher, _ = models
    inputs = padded_batch(7, EQUAL_LENGTHS)
    needs = Needs(hidden_states=True)
    with torch.no_grad():
        clean = run_model(teacher, inputs, needs)
        mixed = run_model(teacher, inputs, needs, Mixup.reversed_batch(1.0, 2))
    torch.testing.assert_close(mixed.logits, clean.logits, rtol=0, atol=0)
    for layer in range(5):
        torch.testing.assert_close(mixed.hidden_states[layer], clean.hidden_states[layer], rtol=0, atol=0)
    assert mixed.mix.lam == 1.0 and clean.mix is None


def test_lambda_one_is_the_clean_batch_even_with_different_lengths(models):
    # lambda = 1 mixes nothing in, so the union mask is not applied either: the shorter example
    # does not attend to its partner's extra positions.  Below 1 it does.
    teacher, _ = models
    inputs = padded_batch(8)  # lengths 4 and 6
    with torch.no_grad():
        clean = run_model(teacher, inputs, Needs(hidden_states=True))
        mixed = run_model(teacher, inputs, Needs(hidden_states=True), Mixup.reversed_batch(1.0, 2))
        almost = run_model(teacher, inputs, Needs(hidden_states=True), Mixup.reversed_batch(0.999, 2))
    assert mixed.attention_mask[0].tolist() == [1] * 4 + [0] * 4
    torch.testing.assert_close(mixed.hidden_states[4], clean.hidden_states[4], rtol=0, atol=0)
    assert almost.attention_mask[0].tolist() == [1] * 6 + [0] * 2
    assert (almost.hidden_states[4][0, :4] - clean.hidden_states[4][0, :4]).abs().max() > 1e-4


def test_teacher_and_student_see_the_same_mixed_embeddings():
    teacher = tiny_bert(layers=4, seed=0, initializer_range=0.3)
    student = build_student(teacher, [1, 3])  # same embedding module weights; eval: no dropout
    assert not student.training and not teacher.training
    inputs = padded_batch(8)
    mix = Mixup.reversed_batch(0.6, 2)
    needs = Needs(hidden_states=True, layers=frozenset({0}))
    with torch.no_grad():
        clean = run_model(teacher, inputs, needs).hidden_states[0]
        t_mix = run_model(teacher, inputs, needs, mix)
        s_mix = run_model(student, inputs, needs, mix)
    torch.testing.assert_close(s_mix.hidden_states[0], t_mix.hidden_states[0], rtol=0, atol=0)
    torch.testing.assert_close(t_mix.hidden_states[0], 0.6 * clean + 0.4 * clean.flip(0), rtol=1e-6, atol=1e-6)
    union = torch.tensor([[1] * 6 + [0] * 2] * 2)
    assert torch.equal(t_mix.attention_mask, union) and torch.equal(s_mix.attention_mask, union)


# ----------------------------------------------------------------------------------- objectives
def test_qkv_objective_resplits_into_relation_heads_against_loops():
    # a 2-head student against a 4-head teacher: both are re-split into 4 relation heads of width 8
    teacher, student = make_models(student_heads=2)
    method = crild(preset="released", shapes=Shapes(ModelShape(2, 32, 2), ModelShape(4, 32, 4)))
    assert method.relation_heads == 4
    inputs = padded_batch(8)
    method.begin_step(0, 3)
    s_out, t_out = step_outputs(method, teacher, student, inputs)
    assert s_out.query[2].shape == (2, 2, 8, 16) and t_out.query[4].shape == (2, 4, 8, 8)
    out = method.losses(s_out, t_out, torch.tensor([0, 1]))
    assert set(out) == {"loss", "qkv", "mixup_lambda"}
    assert out["mixup_lambda"].item() == pytest.approx(draw_mixup_lambda(0, 3, 1.0))
    s_x, mask = projections(student, inputs, s_out.mix, 2)
    t_x, _ = projections(teacher, inputs, t_out.mix, 4)
    assert torch.equal(mask, s_out.attention_mask) and mask[0].sum() == 6  # the union mask
    ref = sum(slow_row_kl(slow_relations(s_x[x], 4), slow_relations(t_x[x], 4), mask) for x in s_x)
    torch.testing.assert_close(out["qkv"], scalar(ref), rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(out["loss"], out["qkv"], rtol=0, atol=0)


def test_ah_objective_against_loops(models):
    teacher, student = models
    method = crild(preset="ah_cr", consistency_weight=0.0, hidden_projection="auto",
                   attention_weight=0.5, hidden_weight=2.0)
    assert isinstance(method.fit_dense, torch.nn.Identity)
    inputs = padded_batch(8)
    s_out, t_out = step_outputs(method, teacher, student, inputs)
    out = method.losses(s_out, t_out, torch.tensor([0, 1]))
    assert "consistency" not in out
    with torch.no_grad():
        s_all = run_model(student, inputs, Needs(hidden_states=True, qkv=True), s_out.mix)
        t_all = run_model(teacher, inputs, Needs(hidden_states=True, qkv=True), t_out.mix)
    mask = s_all.attention_mask

    def scores(o, layer):  # per head Q K^T / sqrt(d_k)
        return o.query[layer] @ o.key[layer].transpose(-1, -2) / math.sqrt(8)
    attention = slow_row_kl(scores(s_all, 2), scores(t_all, 4), mask)
    hidden = slow_masked_mse(s_all.hidden_states[2], t_all.hidden_states[4], mask)
    torch.testing.assert_close(out["attention"], scalar(attention), rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(out["hidden"], scalar(hidden), rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(out["loss"], scalar(0.5 * attention + 2.0 * hidden), rtol=1e-4, atol=1e-6)


def test_ah_refuses_a_head_mismatch_and_qkv_validates_relation_heads():
    two_heads = Shapes(ModelShape(2, 32, 2), ModelShape(4, 32, 4))
    with pytest.raises(MethodConfigError, match=r"cr_ild\.objective.*2 heads.*teacher 4"):
        crild(preset="ah_cr", shapes=two_heads)
    assert crild(preset="ah_cr", shapes=two_heads, attention_weight=0.0).objective == "ah"  # hidden only
    assert crild(preset="qkv_cr", shapes=two_heads).relation_heads == 4
    narrow = Shapes(ModelShape(2, 16, 2), ModelShape(4, 32, 4))
    for heads in (1, 2, 4, 8, 16):  # divide both 16 and 32
        assert crild(preset="released", shapes=narrow, relation_heads=heads).relation_heads == heads
    with pytest.raises(MethodConfigError, match=r"cr_ild\.relation_heads.*student width 16"):
        crild(preset="released", shapes=narrow, relation_heads=32)
    odd = Shapes(ModelShape(2, 30, 3), ModelShape(4, 32, 4))
    with pytest.raises(MethodConfigError, match=r"cr_ild\.relation_heads: 4 .*student width 30"):
        crild(preset="released", shapes=odd)  # default: the teacher's 4 heads
    assert crild(preset="released", shapes=odd, relation_heads=2).relation_heads == 2
    with pytest.raises(MethodConfigError, match=r"cr_ild\.relation_heads: 3 .*teacher width 32"):
        crild(preset="released", shapes=Shapes(ModelShape(2, 24, 3), ModelShape(4, 32, 4)), relation_heads=3)


def test_token_losses_refuse_different_tokenizations(models):
    teacher, student = models
    method = crild(preset="released", mixup=False)
    s_out, t_out = step_outputs(method, teacher, student, padded_batch(8))
    t_out.attention_mask = t_out.attention_mask[:, :7]
    with pytest.raises(ValueError, match="share a tokenizer"):
        method.losses(s_out, t_out, torch.tensor([0, 1]))


# ---------------------------------------------------------------------------------- consistency
def masked_sq(s, t, m):
    """Toy distance: mean squared difference over real positions."""
    m = m.to(s.dtype)
    return ((s - t) ** 2 * m).sum() / m.sum()


def test_consistency_loss_by_hand():
    # lambda = 0.75, partner = [1, 0]
    #   own   (mask [[1,0],[1,1]]): (1-0)^2, (5-2)^2, (1-3)^2 over 3 real -> 14/3
    #   other (clean[[1,0]] = [[2,3],[0,0]], mask [[1,1],[1,0]]): (1-2)^2, (7-3)^2, (5-0)^2 -> 42/3 = 14
    #   0.75 * 14/3 + 0.25 * 14 = 3.5 + 3.5 = 7
    mixed = torch.tensor([[1.0, 7.0], [5.0, 1.0]], requires_grad=True)
    clean = torch.tensor([[0.0, 0.0], [2.0, 3.0]], requires_grad=True)
    mask = torch.tensor([[1, 0], [1, 1]])
    loss = consistency_loss(masked_sq, mixed, clean, mask, Mixup.reversed_batch(0.75, 2))
    torch.testing.assert_close(loss, scalar(7.0), rtol=0, atol=1e-6)
    loss.backward()
    assert clean.grad is None and mixed.grad.abs().sum() > 0  # stop-gradient on the clean targets


def test_consistency_loss_is_zero_for_identical_passes_at_lambda_one():
    torch.manual_seed(0)
    x = torch.randn(3, 2, 5, 5)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 1, 0, 0, 0]])
    calls = []

    def row_kl(s, t, m):
        calls.append(m)
        return masked_row_kl(s, t, m)
    loss = consistency_loss(row_kl, x, x.clone(), mask, Mixup.reversed_batch(1.0, 3))
    torch.testing.assert_close(loss, scalar(0.0), rtol=0, atol=1e-7)
    assert len(calls) == 1  # lambda = 1: the partner term is not even computed
    # lambda < 1: the partner term compares with the reversed clean rows under the reversed masks
    calls.clear()
    loss = consistency_loss(row_kl, x, x.clone(), mask, Mixup.reversed_batch(0.6, 3))
    assert torch.equal(calls[1], mask.flip(0))
    expected = 0.4 * masked_row_kl(x, x.flip(0), mask.flip(0))
    torch.testing.assert_close(loss, expected, rtol=1e-6, atol=1e-7)
    assert loss.item() > 1e-3


def test_no_consistency_without_mixup(models):
    teacher, student = models
    method = crild(preset="qkv_cr", mixup=False, consistency_weight=0.0)
    assert not method.needs_clean_pass and method.mixup(2, "cpu") is None
    s_out, t_out = step_outputs(method, teacher, student, padded_batch(8))
    assert s_out.clean is None and s_out.mix is None
    out = method.losses(s_out, t_out, torch.tensor([0, 1]))
    assert set(out) == {"loss", "qkv"}


@pytest.mark.parametrize("preset", ["qkv_cr", "ah_cr"])
def test_consistency_term_against_loops(models, preset):
    teacher, student = models
    method = crild(preset=preset, hidden_projection="auto")
    method.begin_training(4)
    method.begin_step(2, 11)
    inputs = padded_batch(8)
    s_out, t_out = step_outputs(method, teacher, student, inputs)
    out = method.losses(s_out, t_out, torch.tensor([0, 1]))
    mix, clean = s_out.mix, s_out.clean
    lam, rev, clean_mask = mix.lam, [1, 0], clean.attention_mask
    assert 0.5 <= lam < 1 and clean_mask[0].sum() == 4 and s_out.attention_mask[0].sum() == 6
    if preset == "qkv_cr":
        mixed_x, _ = projections(student, inputs, mix, 2)
        clean_x, _ = projections(student, inputs, None, 2)
        ref = 0.0
        for x in ("query", "key", "value"):
            m_rel, c_rel = slow_relations(mixed_x[x], 4), slow_relations(clean_x[x], 4)
            ref += lam * slow_row_kl(m_rel, c_rel, clean_mask)
            ref += (1 - lam) * slow_row_kl(m_rel, c_rel[rev], clean_mask[rev])
        objective = out["qkv"]
    else:
        def scores(o):
            return o.attention_scores[2]
        ref = lam * slow_row_kl(scores(s_out), scores(clean), clean_mask) \
            + (1 - lam) * slow_row_kl(scores(s_out), scores(clean)[rev], clean_mask[rev])
        h_m, h_c = s_out.hidden_states[2], clean.hidden_states[2]
        ref += lam * slow_masked_mse(h_m, h_c, clean_mask) + (1 - lam) * slow_masked_mse(h_m, h_c[rev], clean_mask[rev])
        objective = out["attention"] + out["hidden"]
    torch.testing.assert_close(out["consistency"], scalar(ref), rtol=1e-4, atol=1e-6)
    # ramp: w * e / E = 0.1 * 2 / 4
    torch.testing.assert_close(out["consistency_weight"], scalar(0.05), rtol=0, atol=1e-7)
    torch.testing.assert_close(out["loss"], objective + 0.05 * out["consistency"], rtol=1e-6, atol=1e-6)


def test_consistency_ramp_is_zero_in_the_first_epoch(models):
    teacher, student = models
    method = crild(preset="qkv_cr")
    method.begin_training(4)
    method.begin_step(0, 0)
    out = method.losses(*step_outputs(method, teacher, student, padded_batch(8)), torch.tensor([0, 1]))
    assert "consistency" not in out and out["consistency_weight"].item() == 0  # no clean pass in epoch 0
    torch.testing.assert_close(out["loss"], out["qkv"])
    for epoch, weight in [(1, 0.025), (3, 0.075)]:
        method.begin_step(epoch, 100 * epoch)
        assert method.ramp() == epoch / 4
        out = method.losses(*step_outputs(method, teacher, student, padded_batch(8)), torch.tensor([0, 1]))
        assert out["consistency"].item() > 1e-4
        torch.testing.assert_close(out["consistency_weight"], scalar(weight), rtol=0, atol=1e-7)
        torch.testing.assert_close(out["loss"], out["qkv"] + weight * out["consistency"], rtol=1e-6, atol=1e-7)
    method.begin_training(0)  # never divides by zero
    assert method.ramp() == 3.0


@pytest.mark.parametrize("preset", ["qkv_cr", "ah_cr"])
def test_consistency_gradient_does_not_flow_through_the_clean_pass(preset):
    teacher, student = make_models()
    method = crild(preset=preset)
    method.begin_training(2)
    method.begin_step(1, 4)
    inputs = padded_batch(8)
    params = [p for p in list(student.parameters()) + list(method.parameters()) if p.requires_grad]

    def grads(clean_grad):
        torch.manual_seed(0)
        out = method.losses(*step_outputs(method, teacher, student, inputs, clean_grad), torch.tensor([0, 1]))
        return torch.autograd.grad(out["consistency"], params, allow_unused=True)
    # the clean pass built with autograd on gives the same gradients as the engine's no-grad clean pass
    with_graph, without = grads(True), grads(False)
    used = 0
    for a, b in zip(with_graph, without):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b, rtol=0, atol=0)
            used += int(a.abs().sum() > 0)
    assert used > 5


# -------------------------------------------------------------------------------- pred and padding
def test_pred_phase_is_t2_kl_without_labels(models):
    teacher, student = models
    method = crild()
    method.set_phase("pred")
    s_out, t_out = step_outputs(method, teacher, student, padded_batch(8))
    assert s_out.mix is None and s_out.clean is None and s_out.hidden_states is None
    out = method.losses(s_out, t_out, torch.tensor([0, 1]))
    assert set(out) == {"loss", "kd"}
    torch.testing.assert_close(out["loss"], kd_kl_loss(s_out.logits, t_out.logits, 2.0), rtol=0, atol=0)
    assert abs(out["loss"].item() - kd_kl_loss(s_out.logits, t_out.logits, 1.0).item()) > 1e-4
    assert torch.equal(method.losses(s_out, t_out, torch.tensor([2, 2]))["loss"], out["loss"])
    cached = ModelOutputs(logits=t_out.logits.clone(), attention_mask=None)
    assert torch.equal(method.losses(s_out, cached, torch.tensor([0, 1]))["loss"], out["loss"])


def test_pred_phase_regression_is_mse_of_tempered_outputs():
    method = crild(regression=True)
    method.set_phase("pred")
    s = ModelOutputs(logits=torch.tensor([[1.0], [3.0]]), attention_mask=None)
    t = ModelOutputs(logits=torch.tensor([[2.0], [-1.0]]), attention_mask=None)
    # ((1-2)/2)^2 = 0.25, ((3+1)/2)^2 = 4 -> mean 2.125
    torch.testing.assert_close(method.losses(s, t, torch.tensor([0.0, 5.0]))["loss"], scalar(2.125),
                               rtol=0, atol=1e-6)
    torch.testing.assert_close(method.losses(s, t, torch.tensor([0.0, 5.0]))["loss"],
                               F.mse_loss(s.logits / 2, t.logits / 2), rtol=0, atol=0)


@pytest.mark.parametrize("preset, params", [("released", {"mixup": False}),
                                            ("ah_cr", {"mixup": False, "consistency_weight": 0.0}),
                                            ("qkv_cr", {}), ("ah_cr", {})])
def test_masked_ild_losses_are_invariant_to_extra_padding(models, preset, params):
    teacher, student = models
    method = crild(preset=preset, **params)
    method.begin_training(3)
    method.begin_step(2, 7)
    short = method.losses(*step_outputs(method, teacher, student, padded_batch(8)), torch.tensor([0, 1]))
    long = method.losses(*step_outputs(method, teacher, student, padded_batch(12)), torch.tensor([0, 1]))
    assert set(short) == set(long)
    for key in short:
        torch.testing.assert_close(short[key], long[key], rtol=1e-5, atol=1e-5, msg=key)


def test_unmasked_qkv_depends_on_padding(models):
    teacher, student = models
    method = crild(preset="released", mixup=False, mask_padding=False)
    short = method.losses(*step_outputs(method, teacher, student, padded_batch(8)), torch.tensor([0, 1]))
    long = method.losses(*step_outputs(method, teacher, student, padded_batch(12)), torch.tensor([0, 1]))
    assert abs(short["qkv"].item() - long["qkv"].item()) > 1e-4


@pytest.mark.parametrize("ild_epochs, weight, warned", [(1, None, True), (2, None, False), (1, 0.0, False)])
def test_a_one_epoch_ild_phase_is_said_to_train_without_consistency(ild_epochs, weight, warned):
    """The weight is w * e/E (e the 0-based epoch): 0 for the whole of a 1-epoch phase, which the
    preflight says before training instead of silently training CR-ILD without CR."""
    from kdpipe.config import parse_params
    from kdpipe.methods.registry import build_run_method
    from kdpipe.pipeline.preflight import training_notes

    run = {"method": "cr_ild", "phases": {"ild": {"epochs": ild_epochs}}}
    if weight is not None:
        run["consistency_weight"] = weight
    params = parse_params({"student": {"num_layers": 2}, "distill": {"runs": {"cr": run}}})
    method = build_run_method(params, "cr", tiny_bert(layers=4).config, regression=False)
    notes = training_notes(params, "cr", method)
    assert bool(notes) == warned
    if warned:
        assert notes[0].startswith("distill.runs.cr: CR-ILD's consistency weight") and "1 epoch" in notes[0]
