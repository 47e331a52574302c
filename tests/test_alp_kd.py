"""ALP-KD: attention over teacher layers, the fused-target MSE, bucket masks, scaling, padding,
the teacher cache, gradients (incl. detach_attention), width maps and config-time errors."""

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import forward_pair, padded_batch, tiny_bert
from pydantic import ValidationError

from kdpipe.methods.alp_kd import (
    AlpKD,
    AlpKDNonOverlap,
    AlpKDPartialOverlap,
    alp_loss,
    attention_entropy,
    fuse_layers,
    layer_attention,
)
from kdpipe.methods.base import MethodConfigError
from kdpipe.models.adapters import ModelShape, Shapes
from kdpipe.models.taps import ModelOutputs, cls_vector

SHAPES = Shapes(student=ModelShape(2, 32, 4), teacher=ModelShape(4, 32, 4))  # the tiny_bert pair below
VARIANTS = [AlpKD, AlpKDNonOverlap, AlpKDPartialOverlap]
LABELS = torch.tensor([0, 2])
LN3 = math.log(3)


def build(cls, regression=False, shapes=SHAPES, **params):
    return cls(cls.Params(**params), regression=regression, shapes=shapes)


@pytest.fixture(scope="module")
def models():
    return tiny_bert(layers=2, seed=1), tiny_bert(layers=4, seed=0)  # student, teacher


def forward(method, models, pad_to=7):
    student, teacher = models
    return forward_pair(method, student, teacher, padded_batch(pad_to))


def synthetic(student_layers, teacher_layers, d_s, d_t, batch=2, seed=0, n=3):
    """Student with token states (requires grad) and a cache-style teacher ([CLS] vectors only)."""
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(batch, n)
    student = ModelOutputs(torch.randn(batch, 3, generator=g), mask, hidden_states={
        layer: torch.randn(batch, n, d_s, generator=g).requires_grad_() for layer in range(1, student_layers + 1)})
    teacher = ModelOutputs(torch.randn(batch, 3, generator=g), mask, cls={
        layer: torch.randn(batch, d_t, generator=g) for layer in range(1, teacher_layers + 1)})
    return student, teacher


# ------------------------------------------------------------------------------------ pure losses
# Two teacher layers t1 = [ln 3, 0], t2 = [0, 5] (B = 1, d = 2).
TEACHER = torch.tensor([[[LN3, 0.0], [0.0, 5.0]]])  # [B=1, J=2, d=2]


def test_layer_attention_and_fusion_by_hand():
    # s = [1, 0]: scores [ln 3, 0] -> softmax [3/4, 1/4]; fused = 3/4 t1 + 1/4 t2 = [3/4 ln 3, 5/4]
    w = layer_attention(torch.tensor([[1.0, 0.0]]), TEACHER, scale=1.0)
    assert torch.allclose(w, torch.tensor([[0.75, 0.25]]))
    assert torch.allclose(fuse_layers(w, TEACHER), torch.tensor([[0.75 * LN3, 1.25]]))
    # the scale divides the dot products: s = [2, 0] with scale 2 gives the same weights
    assert torch.allclose(layer_attention(torch.tensor([[2.0, 0.0]]), TEACHER, scale=2.0), w)
    # a masked layer gets exactly 0
    masked = layer_attention(torch.tensor([[1.0, 0.0]]), TEACHER, 1.0, allowed=torch.tensor([False, True]))
    assert masked.tolist() == [[0.0, 1.0]]


def test_alp_loss_by_hand_sums_over_student_layers():
    student = torch.tensor([[[1.0, 0.0]], [[0.0, 0.0]]])  # [I=2, B=1, d=2]
    # layer 1: fused [3/4 ln3, 5/4] -> MSE ((1 - 3/4 ln3)^2 + (5/4)^2) / 2
    # layer 2: scores [0, 0] -> [1/2, 1/2]; fused [ln3 / 2, 5/2] -> MSE ((ln3/2)^2 + (5/2)^2) / 2
    expected = ((1 - 0.75 * LN3) ** 2 + 1.25**2) / 2 + ((LN3 / 2) ** 2 + 2.5**2) / 2
    loss, weights = alp_loss(student, TEACHER, scale=1.0)
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert torch.allclose(weights, torch.tensor([[[0.75, 0.25]], [[0.5, 0.5]]]))
    # buckets {t1} and {t2}: targets t1 and t2 themselves -> (1 - ln3)^2 / 2 + 5^2 / 2
    allowed = torch.tensor([[True, False], [False, True]])
    loss, weights = alp_loss(student, TEACHER, scale=1.0, allowed=allowed)
    assert loss.item() == pytest.approx((1 - LN3) ** 2 / 2 + 25 / 2, rel=1e-6)
    assert weights.tolist() == [[[1.0, 0.0]], [[0.0, 1.0]]]


def test_alp_loss_matches_a_loop_reference():
    torch.manual_seed(0)
    n_s, batch, n_t, d = 3, 2, 4, 5
    student, teacher = torch.randn(n_s, batch, d), torch.randn(batch, n_t, d)
    allowed = torch.tensor([[1, 1, 0, 0], [0, 1, 1, 1], [1, 1, 1, 1]], dtype=torch.bool)
    scale = 1.7
    total = 0.0
    for i in range(n_s):
        sq = 0.0
        for b in range(batch):
            scores = {j: sum(student[i, b, k].item() * teacher[b, j, k].item() for k in range(d)) / scale
                      for j in range(n_t) if allowed[i, j]}
            z = sum(math.exp(v) for v in scores.values())
            fused = [sum(math.exp(scores[j]) / z * teacher[b, j, k].item() for j in scores) for k in range(d)]
            sq += sum((student[i, b, k].item() - fused[k]) ** 2 for k in range(d))
        total += sq / (batch * d)
    assert alp_loss(student, teacher, scale, allowed)[0].item() == pytest.approx(total, rel=1e-5)


def test_alp_loss_gradcheck_and_constant_teacher():
    torch.manual_seed(0)
    student = torch.randn(2, 3, 4, dtype=torch.double, requires_grad=True)
    teacher = torch.randn(3, 5, 4, dtype=torch.double, requires_grad=True)
    allowed = torch.tensor([[1, 1, 1, 0, 0], [0, 0, 1, 1, 1]], dtype=torch.bool)
    assert torch.autograd.gradcheck(lambda s: alp_loss(s, teacher, 2.0)[0], (student,))
    assert torch.autograd.gradcheck(lambda s: alp_loss(s, teacher, 2.0, allowed)[0], (student,))
    alp_loss(student, teacher, 2.0, allowed)[0].backward()
    assert teacher.grad is None  # teacher vectors are constants


def test_detach_attention_keeps_the_value_and_leaves_only_the_mse_gradient():
    torch.manual_seed(0)
    student = torch.randn(2, 3, 4, dtype=torch.double)
    teacher = torch.randn(3, 5, 4, dtype=torch.double)
    full_in, detached_in = student.clone().requires_grad_(), student.clone().requires_grad_()
    full, weights = alp_loss(full_in, teacher, 1.0)
    detached, _ = alp_loss(detached_in, teacher, 1.0, detach_attention=True)
    assert full.item() == pytest.approx(detached.item(), rel=1e-12)
    full.backward()
    detached.backward()
    # with eps fixed, d MSE(s, f) / ds = 2 (s - f) / (B d) for each student layer
    fused = torch.stack([fuse_layers(w, teacher) for w in weights.detach()])
    assert torch.allclose(detached_in.grad, 2 * (student - fused) / (3 * 4))
    assert not torch.allclose(full_in.grad, detached_in.grad)


def test_attention_entropy_by_hand():
    assert attention_entropy(torch.tensor([[0.5, 0.5]])).item() == pytest.approx(math.log(2))
    assert attention_entropy(torch.tensor([[1.0, 0.0]])).item() == 0.0
    # masked layers (weight exactly 0) contribute 0, not nan; rows are averaged
    assert attention_entropy(torch.tensor([[0.5, 0.5, 0.0], [1.0, 0.0, 0.0]])).item() == pytest.approx(math.log(2) / 2)


# ------------------------------------------------------------------------------------- the method
def test_candidate_sets_per_variant():
    # 4 teacher layers, 2 student layers: all {1-4}; buckets {1,2},{3,4}; widened {1,2,3},{2,3,4}
    expected = {AlpKD: [[1, 1, 1, 1], [1, 1, 1, 1]], AlpKDNonOverlap: [[1, 1, 0, 0], [0, 0, 1, 1]],
                AlpKDPartialOverlap: [[1, 1, 1, 0], [0, 1, 1, 1]]}
    for cls, rows in expected.items():
        method = build(cls)
        assert method.teacher_layers == [1, 2, 3, 4]
        assert method.allowed.tolist() == [[bool(x) for x in r] for r in rows]
        assert method.teacher_needs.layers == frozenset({1, 2, 3, 4})
        assert method.student_needs.layers == frozenset({1, 2})
        assert method.teacher_cacheable


@pytest.mark.parametrize("cls", VARIANTS)
def test_weights_are_exactly_zero_outside_the_bucket(models, cls):
    method = build(cls)
    s_out, t_out = forward(method, models)
    _, weights = method.alp_terms(s_out, t_out)  # [I, B, J]
    allowed = method.allowed[:, None, :].expand_as(weights)
    assert torch.all(weights[~allowed] == 0)
    assert torch.all(weights[allowed] > 0)
    assert torch.allclose(weights.sum(-1), torch.ones(2, 2))
    out = method.losses(s_out, t_out, LABELS)
    for i, layer in enumerate((1, 2)):
        assert 0 <= out[f"alp_entropy_s{layer}"].item() <= math.log(int(method.allowed[i].sum())) + 1e-6


@pytest.mark.parametrize("cls", VARIANTS)
def test_losses_do_not_depend_on_padding_length(models, cls):
    method = build(cls)
    short = method.losses(*forward(method, models, pad_to=6), LABELS)
    long = method.losses(*forward(method, models, pad_to=13), LABELS)
    assert short.keys() == long.keys() == {"loss", "hard", "kd", "alp", "alp_entropy_s1", "alp_entropy_s2"}
    for key in short:
        assert torch.allclose(short[key], long[key], atol=1e-5), key


@pytest.mark.parametrize("cls", VARIANTS)
def test_cached_teacher_gives_the_live_teacher_loss(models, cls):
    method = build(cls)
    s_out, t_out = forward(method, models)
    cached = ModelOutputs(logits=t_out.logits, attention_mask=None, hidden_states=None,  # as TeacherCache.lookup
                          cls={t: cls_vector(t_out, t) for t in range(1, 5)})
    live, from_cache = method.losses(s_out, t_out, LABELS), method.losses(s_out, cached, LABELS)
    for key in live:
        assert torch.allclose(live[key], from_cache[key], atol=1e-6), key


def test_total_weights_the_three_terms(models):
    method = build(AlpKD, ce_weight=0.2, kd_weight=0.3, alp_weight=7.0, temperature=2.0)
    out = method.losses(*forward(method, models), LABELS)
    expected = 0.2 * out["hard"] + 0.3 * out["kd"] + 7.0 * out["alp"]
    assert out["loss"].item() == pytest.approx(expected.item(), rel=1e-6)
    defaults = AlpKD.Params()
    assert (defaults.ce_weight, defaults.kd_weight, defaults.alp_weight, defaults.scale) == (0.5, 0.5, 1.0, "sqrt_d")


def test_unscaled_attention_on_wide_vectors_is_near_one_hot():
    shapes = Shapes(student=ModelShape(2, 768, 12), teacher=ModelShape(12, 768, 12))
    student, teacher = synthetic(2, 12, 768, 768, batch=8)
    peak = {}
    for scale in ("none", "sqrt_d"):
        method = build(AlpKD, shapes=shapes, scale=scale)
        _, weights = method.alp_terms(student, teacher)
        out = method.losses(student, teacher, torch.zeros(8, dtype=torch.long))
        peak[scale] = (weights.max(-1).values.mean().item(), out["alp_entropy_s1"].item())
    # dot products of 768-dim N(0, 1) vectors have std ~28: unscaled they saturate the softmax
    assert peak["none"][0] > 0.95 and peak["none"][1] < 0.2
    assert peak["sqrt_d"][0] < 0.6 and peak["sqrt_d"][1] > 1.5


def test_regression_uses_mse_prediction_losses():
    method = build(AlpKDNonOverlap, regression=True)
    student, teacher = synthetic(2, 4, 32, 32)
    student.logits, teacher.logits = torch.tensor([[1.0], [3.0]]), torch.tensor([[2.0], [2.0]])
    out = method.losses(student, teacher, torch.tensor([0.0, 3.0]))
    assert out["kd"].item() == pytest.approx(1.0)    # ((1-2)^2 + (3-2)^2) / 2
    assert out["hard"].item() == pytest.approx(0.5)  # ((1-0)^2 + 0) / 2
    assert out["loss"].item() == pytest.approx(0.5 * 0.5 + 0.5 * 1.0 + 1.0 * out["alp"].item(), rel=1e-6)  # alp_weight 1


# -------------------------------------------------------------------------------------- gradients
def test_student_gets_gradients_and_detach_attention_changes_them_not_the_loss(models):
    student, teacher = models
    grads, values = {}, {}
    for detach in (False, True):
        method = build(AlpKD, detach_attention=detach)
        assert list(method.parameters()) == []  # equal widths: no width map
        student.zero_grad(set_to_none=True)
        out = method.losses(*forward(method, models), LABELS)
        out["alp"].backward()
        values[detach] = out["alp"].item()
        grads[detach] = student.bert.encoder.layer[0].attention.self.query.weight.grad.clone()
        assert grads[detach].abs().sum() > 0
        assert all(p.grad is None for p in teacher.parameters())
    student.zero_grad(set_to_none=True)
    assert values[True] == pytest.approx(values[False], rel=1e-6)
    # a tiny random BERT's [CLS] states barely differ across teacher layers, so eps is near uniform and
    # its gradient share is small; without the detach the two runs would be bitwise equal
    assert (grads[True] - grads[False]).norm() > 1e-6 * grads[False].norm()


def test_detach_attention_on_spread_out_vectors():
    student, teacher = synthetic(2, 4, 32, 32)
    grads = {}
    for detach in (False, True):
        method = build(AlpKDPartialOverlap, scale="none", detach_attention=detach)
        student.hidden_states[2].grad = None
        value = method.losses(student, teacher, LABELS)["alp"]
        value.backward()
        grads[detach] = student.hidden_states[2].grad[:, 0].clone()
    assert (grads[True] - grads[False]).norm() > 0.1 * grads[False].norm()


def test_width_map_when_student_is_narrower():
    shapes = Shapes(student=ModelShape(2, 16, 4), teacher=ModelShape(4, 32, 4))
    method = build(AlpKDPartialOverlap, shapes=shapes)
    assert (method.width_map.in_features, method.width_map.out_features) == (16, 32)
    assert method.scale == pytest.approx(math.sqrt(32))  # the dot product is taken in the teacher's width
    student, teacher = synthetic(2, 4, 16, 32)
    out = method.losses(student, teacher, torch.tensor([0, 1]))
    # reference: W applied to the student [CLS] before both the attention and the MSE
    s_vecs = torch.stack([method.width_map(student.hidden_states[i][:, 0]) for i in (1, 2)])
    t_vecs = torch.stack([teacher.cls[j] for j in (1, 2, 3, 4)], dim=1)
    expected = 0.0
    for i, allowed in enumerate(method.allowed):
        w = torch.softmax((torch.einsum("bd,bjd->bj", s_vecs[i], t_vecs) / math.sqrt(32))
                          .masked_fill(~allowed, float("-inf")), -1)
        expected = expected + F.mse_loss(s_vecs[i], torch.einsum("bj,bjd->bd", w, t_vecs))
    assert out["alp"].item() == pytest.approx(expected.item(), rel=1e-6)
    out["loss"].backward()
    assert method.width_map.weight.grad.abs().sum() > 0
    assert student.hidden_states[1].grad[:, 0].abs().sum() > 0
    assert student.hidden_states[1].grad[:, 1:].abs().sum() == 0  # only [CLS] is read


# ---------------------------------------------------------------------------------- config errors
def test_config_errors_name_the_param():
    with pytest.raises(MethodConfigError, match="shapes"):
        build(AlpKD, shapes=None)
    deep_student = Shapes(student=ModelShape(6, 32, 4), teacher=ModelShape(4, 32, 4))
    with pytest.raises(MethodConfigError, match="alp_kd_no"):
        build(AlpKDNonOverlap, shapes=deep_student)  # 6 buckets cannot be cut from 4 layers
    with pytest.raises(MethodConfigError, match="alp_kd_po"):
        build(AlpKDPartialOverlap, shapes=deep_student)
    assert build(AlpKD, shapes=deep_student).allowed.shape == (6, 4)  # full attention is fine
    with pytest.raises(ValidationError, match="scale"):
        AlpKD.Params(scale="sqrt")
    with pytest.raises(ValidationError, match="alp_weight"):
        AlpKD.Params(alp_weight=-1)


def test_mapping_table_lists_candidates():
    rows = build(AlpKDPartialOverlap).mapping_table()
    assert rows == [{"student_layer": "1", "teacher_layers": "1, 2, 3"},
                    {"student_layer": "2", "teacher_layers": "2, 3, 4"}]


def test_attention_stays_fp32_under_bf16_autocast():
    # a bf16 matmul would perturb 768-dim dot products by ~0.1: visible in the softmax
    torch.manual_seed(0)
    student, teacher = torch.randn(4, 768), 3 * torch.randn(4, 12, 768)
    reference = layer_attention(student, teacher, math.sqrt(768))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        weights = layer_attention(student, teacher, math.sqrt(768))
        loss, _ = alp_loss(student[None], teacher, math.sqrt(768))
    assert weights.dtype == loss.dtype == torch.float32
    assert torch.equal(weights, reference)
    assert loss.item() == alp_loss(student[None], teacher, math.sqrt(768))[0].item()


# ------------------------------------------------------------------------ per-token form (tagging)
def test_token_positions_equal_the_cls_form_over_the_real_tokens_as_examples():
    """positions: tokens is the [CLS] computation with every real token as its own example: built
    by hand from the real tokens' states, the [CLS] form on them gives the same loss."""
    g = torch.Generator().manual_seed(3)
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])  # 5 real tokens
    student = ModelOutputs(torch.randn(2, 3, generator=g), mask, hidden_states={
        layer: torch.randn(2, 4, 32, generator=g) for layer in (1, 2)})
    teacher = ModelOutputs(torch.randn(2, 3, generator=g), mask, hidden_states={
        layer: torch.randn(2, 4, 32, generator=g) for layer in range(1, 5)})
    tokens = build(AlpKD, positions="tokens")
    real = mask.bool()
    as_examples = lambda out: ModelOutputs(out.logits, torch.ones(5, 1), hidden_states={  # noqa: E731
        layer: h[real].unsqueeze(1) for layer, h in out.hidden_states.items()})  # [5, 1, d]: each token a [CLS]
    by_cls, _ = build(AlpKD).alp_terms(as_examples(student), as_examples(teacher))
    by_tokens, weights = tokens.alp_terms(student, teacher)
    assert weights.shape == (2, 5, 4) and torch.allclose(by_tokens, by_cls, atol=1e-6)
    padded = {layer: h.clone() for layer, h in student.hidden_states.items()}
    for h in padded.values():
        h[~real] = 1e3  # padding positions do not count
    moved, _ = tokens.alp_terms(ModelOutputs(student.logits, mask, hidden_states=padded), teacher)
    assert torch.allclose(moved, by_tokens)


def test_token_positions_apply_to_tagging_and_read_the_live_teacher():
    tokens, cls = build(AlpKD, positions="tokens"), build(AlpKD)
    assert tokens.not_per_token is None and not tokens.teacher_cacheable
    assert "positions: tokens" in cls.not_per_token and cls.teacher_cacheable
    with pytest.raises(ValueError, match="one tokenisation"):
        g = torch.Generator().manual_seed(0)
        s = ModelOutputs(None, torch.ones(1, 3), hidden_states={1: torch.randn(1, 3, 32, generator=g)})
        t = ModelOutputs(None, torch.ones(1, 4), hidden_states={1: torch.randn(1, 4, 32, generator=g)})
        tokens.alp_terms(s, t)
