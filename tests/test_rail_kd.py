"""RAIL-KD: the normalised distance, pooling, the per-epoch/per-batch draw, projections, padding,
the teacher cache, gradients and config-time errors."""

import math

import pytest
import torch
from conftest import forward_pair, padded_batch, tiny_bert
from pydantic import ValidationError

from kdpipe.methods.base import MethodConfigError
from kdpipe.models.adapters import ModelShape, Shapes
from kdpipe.methods.rail_kd import RailKDConcat, RailKDLayerwise, normalized_spread, pooled_layer, rail_distance
from kdpipe.models.taps import ModelOutputs, cls_vector, mean_pooled

SHAPES = Shapes(student=ModelShape(2, 32, 4), teacher=ModelShape(4, 32, 4))  # the tiny_bert pair below


def build(cls, regression=False, shapes=SHAPES, **params):
    return cls(cls.Params(**params), regression=regression, shapes=shapes)


@pytest.fixture(scope="module")
def models():
    return tiny_bert(layers=2, seed=1), tiny_bert(layers=4, seed=0)  # student, teacher


LABELS = torch.tensor([0, 2])


def forward(method, models, pad_to=7):
    student, teacher = models
    return forward_pair(method, student, teacher, padded_batch(pad_to))


# ------------------------------------------------------------------------------------ pure losses
def test_rail_distance_matches_hand_computation():
    # layer 1, ex 1: s = [3,4] -> [.6,.8]; t = [1,0]; diff [-.4,.8] -> squared .16 + .64 = .8 (= 2 - 2 cos)
    # layer 1, ex 2: s = [-1,0], t = [1,0]: opposite unit vectors -> diff [-2,0] -> 4 (norm 2)
    # layer 2: s = [0,2] vs t = [0,5] and s = [1,1] vs t = [2,2]: same directions -> 0
    s = torch.tensor([[[3.0, 4.0], [-1.0, 0.0]], [[0.0, 2.0], [1.0, 1.0]]])  # [M=2, B=2, u=2]
    t = torch.tensor([[[1.0, 0.0], [1.0, 0.0]], [[0.0, 5.0], [2.0, 2.0]]])
    assert rail_distance(s, t).item() == pytest.approx((0.8 + 4) / 4)
    assert rail_distance(s, t, squared=False).item() == pytest.approx((math.sqrt(0.8) + 2) / 4)
    # only directions count
    assert rail_distance(2 * s, 5 * t).item() == pytest.approx((0.8 + 4) / 4)


def test_rail_distance_matches_a_loop_reference():
    torch.manual_seed(0)
    s, t = torch.randn(3, 4, 5), torch.randn(3, 4, 5)
    for squared in (True, False):
        total = 0.0
        for m in range(3):
            for b in range(4):
                sn = [x / math.sqrt(sum(v * v for v in s[m, b].tolist())) for x in s[m, b].tolist()]
                tn = [x / math.sqrt(sum(v * v for v in t[m, b].tolist())) for x in t[m, b].tolist()]
                sq = sum((a - c) ** 2 for a, c in zip(sn, tn))
                total += sq if squared else math.sqrt(sq)
        assert rail_distance(s, t, squared).item() == pytest.approx(total / 12, rel=1e-5)


def test_rail_distance_gradcheck():
    torch.manual_seed(0)
    s = torch.randn(2, 3, 4, dtype=torch.double, requires_grad=True)
    t = torch.randn(2, 3, 4, dtype=torch.double, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: rail_distance(a, b, True), (s, t))
    assert torch.autograd.gradcheck(lambda a, b: rail_distance(a, b, False), (s, t))


def test_normalized_spread_is_zero_for_collapsed_vectors():
    collapsed = torch.tensor([[[1.0, 2.0], [2.0, 4.0], [0.5, 1.0]]])  # one direction, any length
    assert normalized_spread(collapsed).item() == pytest.approx(0.0, abs=1e-7)
    # [1,0] and [-1,0]: per-dim variance (1, 0) -> total 1
    assert normalized_spread(torch.tensor([[[1.0, 0.0], [-3.0, 0.0]]])).item() == pytest.approx(1.0)


def test_mean_pooling_ignores_garbage_at_padded_positions():
    states = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [1e4, -1e4]]])  # position 2 is padding
    out = ModelOutputs(logits=torch.zeros(1, 2), attention_mask=torch.tensor([[1, 1, 0]]),
                       hidden_states={1: states})
    assert torch.equal(pooled_layer(out, 1, "mean"), torch.tensor([[2.0, 3.0]]))
    # parity option: every position, padding included
    expected = torch.tensor([[(1 + 3 + 1e4) / 3, (2 + 4 - 1e4) / 3]])
    assert torch.allclose(pooled_layer(out, 1, "mean_all"), expected)


def test_pooling_reads_cached_vectors_and_mean_all_needs_token_states():
    vec = torch.randn(2, 4)
    cached = ModelOutputs(logits=torch.zeros(2, 3), attention_mask=torch.ones(2, 5), mean={3: vec})
    assert pooled_layer(cached, 3, "mean") is vec
    with pytest.raises(KeyError, match="mean_all"):
        pooled_layer(cached, 3, "mean_all")


# ------------------------------------------------------------------------------------- the draw
def test_epoch_draw_is_constant_within_an_epoch_and_changes_across_epochs():
    method = build(RailKDLayerwise, seed=3)
    draws = {}
    for epoch in range(8):
        seen = set()
        for step in range(epoch * 5, epoch * 5 + 5):  # step counts within the phase
            method.begin_step(epoch, step)
            seen.add(tuple(method.current_draw()))
        assert len(seen) == 1
        draws[epoch] = seen.pop()
        assert list(draws[epoch]) == method.epoch_record(epoch)["teacher_layers"]
        assert list(draws[epoch]) == sorted(draws[epoch]) and len(set(draws[epoch])) == 2
    assert len(set(draws.values())) > 1


def test_batch_draw_changes_between_steps_and_epoch_record_gives_the_first():
    method = build(RailKDLayerwise, resample="batch", seed=3)
    assert method.epoch_record(0)["teacher_layers"] == method.mapping.draw(0, 0)  # before any step
    draws = []
    for step in range(5):
        method.begin_step(0, step)
        draws.append(tuple(method.current_draw()))
    assert len(set(draws)) > 1
    # epoch 1 starts at step 5: called before its first begin_step, or right after it
    before = method.epoch_record(1)
    method.begin_step(1, 5)
    after = method.epoch_record(1)
    assert before["teacher_layers"] == after["teacher_layers"] == method.current_draw() == method.mapping.draw(1, 5)
    assert after["teacher_layers_step"] == 5 and "batch" in after["teacher_layers_note"]


def test_exclude_last_shrinks_the_pool_and_the_teacher_needs():
    method = build(RailKDLayerwise, exclude_last=1)
    assert method.teacher_needs.layers == frozenset({1, 2, 3})
    assert method.student_needs.layers == frozenset({1, 2})
    assert sorted(method.teacher_maps.keys()) == ["1", "2", "3"]
    for epoch in range(20):
        assert 4 not in method.epoch_record(epoch)["teacher_layers"]
    full = build(RailKDLayerwise)
    assert full.teacher_needs.layers == frozenset({1, 2, 3, 4})


def test_losses_use_the_current_draw(models):
    """The RAIL term equals a slow reference computed from the logged draw, per epoch."""
    method = build(RailKDLayerwise, teacher_projection="trainable", projection_dim=8, seed=3)
    s_out, t_out = forward(method, models)
    mask = s_out.attention_mask
    values = {}
    for epoch in range(4):
        method.begin_step(epoch, epoch * 10)
        got = method.losses(s_out, t_out, LABELS)["rail"].item()
        drawn = method.epoch_record(epoch)["teacher_layers"]
        total = 0.0
        for student_layer, teacher_layer in zip((1, 2), drawn):
            for b in range(2):
                real = [p for p in range(mask.shape[1]) if mask[b, p] == 1]
                sv = sum(s_out.hidden_states[student_layer][b, p] for p in real) / len(real)
                tv = sum(t_out.hidden_states[teacher_layer][b, p] for p in real) / len(real)
                ws, wt = method.student_maps[str(student_layer)], method.teacher_maps[str(teacher_layer)]
                sp, tp = ws.weight @ sv + ws.bias, wt.weight @ tv + wt.bias
                total += ((sp / sp.norm() - tp / tp.norm()) ** 2).sum().item()
        assert got == pytest.approx(total / 4, rel=1e-5)
        values[tuple(drawn)] = got
    assert len(values) > 1  # different draws, different losses


# ---------------------------------------------------------------------------------- projections
def trainable_count(module):
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def frozen_count(module):
    return sum(p.numel() for p in module.parameters() if not p.requires_grad)


def test_layerwise_projection_parameter_counts():
    # L_S = 2 student maps d_S -> u; L_T = 4 teacher maps d_T -> u (one per teacher layer id)
    ident = build(RailKDLayerwise)
    assert trainable_count(ident) == 2 * (32 * 32 + 32) and frozen_count(ident) == 0
    orth = build(RailKDLayerwise, teacher_projection="orthogonal", projection_dim=16)
    assert trainable_count(orth) == 2 * (32 * 16 + 16)
    assert frozen_count(orth) == 4 * 32 * 16  # no bias, requires_grad False
    w = orth.teacher_maps["2"].weight
    assert torch.allclose(w @ w.T, torch.eye(16), atol=1e-5)  # orthonormal rows
    assert not torch.allclose(w, orth.teacher_maps["3"].weight)  # seeded per layer
    assert torch.equal(w, build(RailKDLayerwise, teacher_projection="orthogonal", projection_dim=16)
                       .teacher_maps["2"].weight)  # reproducible from the seed alone
    train = build(RailKDLayerwise, teacher_projection="trainable", projection_dim=16)
    assert trainable_count(train) == 2 * (32 * 16 + 16) + 4 * (32 * 16 + 16) and frozen_count(train) == 0


def test_concat_projection_shapes_and_counts(models):
    # m = 2 pooled vectors concatenated: student 2*32 -> u, teacher 2*32 -> u
    ident = build(RailKDConcat)
    assert (ident.student_map.in_features, ident.student_map.out_features) == (64, 64)
    assert trainable_count(ident) == 64 * 64 + 64 and frozen_count(ident) == 0
    orth = build(RailKDConcat, teacher_projection="orthogonal", projection_dim=16)
    assert (orth.student_map.in_features, orth.student_map.out_features) == (64, 16)
    assert tuple(orth.teacher_map.weight.shape) == (16, 64) and frozen_count(orth) == 16 * 64
    train = build(RailKDConcat, teacher_projection="trainable", projection_dim=16)
    assert trainable_count(train) == 2 * (64 * 16 + 16)
    out = train.losses(*forward(train, models), LABELS)
    assert out["rail"].ndim == 0 and 0 <= out["rail"].item() <= 4
    assert 0 <= out["rail_teacher_spread"].item() <= 1


def test_concat_matches_a_reference_on_the_concatenated_vectors(models):
    method = build(RailKDConcat, teacher_projection="orthogonal", projection_dim=16, squared=False)
    s_out, t_out = forward(method, models)
    method.begin_step(2, 0)
    drawn = method.current_draw()
    s_cat = torch.cat([mean_pooled(s_out, 1), mean_pooled(s_out, 2)], -1)
    t_cat = torch.cat([mean_pooled(t_out, drawn[0]), mean_pooled(t_out, drawn[1])], -1)
    sp, tp = method.student_map(s_cat), t_cat @ method.teacher_map.weight.T
    expected = (sp / sp.norm(dim=-1, keepdim=True) - tp / tp.norm(dim=-1, keepdim=True)).norm(dim=-1).mean()
    assert method.losses(s_out, t_out, LABELS)["rail"].item() == pytest.approx(expected.item(), rel=1e-5)


# ------------------------------------------------------------------------------ method-level loss
VARIANTS = [(RailKDLayerwise, {}), (RailKDLayerwise, {"teacher_projection": "orthogonal", "projection_dim": 16}),
            (RailKDLayerwise, {"teacher_projection": "trainable", "squared": False}),
            (RailKDConcat, {}), (RailKDConcat, {"teacher_projection": "orthogonal", "projection_dim": 16})]


@pytest.mark.parametrize("cls,params", VARIANTS)
def test_losses_do_not_depend_on_padding_length(models, cls, params):
    method = build(cls, **params)
    method.begin_step(1, 3)
    short = method.losses(*forward(method, models, pad_to=6), LABELS)
    long = method.losses(*forward(method, models, pad_to=13), LABELS)
    assert short.keys() == long.keys()
    for key in short:
        assert torch.allclose(short[key], long[key], atol=1e-5), key


def test_mean_all_pooling_does_depend_on_padding(models):
    method = build(RailKDLayerwise, pooling="mean_all")
    short = method.losses(*forward(method, models, pad_to=6), LABELS)["rail"]
    long = method.losses(*forward(method, models, pad_to=13), LABELS)["rail"]
    assert not torch.allclose(short, long, atol=1e-4)


def test_total_weights_the_three_terms(models):
    method = build(RailKDLayerwise, ce_weight=0.2, kd_weight=0.3, rail_weight=0.5, temperature=2.0)
    out = method.losses(*forward(method, models), LABELS)
    assert set(out) == {"loss", "hard", "kd", "rail"}
    expected = 0.2 * out["hard"] + 0.3 * out["kd"] + 0.5 * out["rail"]
    assert out["loss"].item() == pytest.approx(expected.item(), rel=1e-6)
    assert build(RailKDLayerwise).params.ce_weight == pytest.approx(1 / 3)


def test_regression_uses_mse_prediction_losses():
    method = build(RailKDLayerwise, regression=True)
    torch.manual_seed(0)
    mask = torch.ones(2, 3)
    student = ModelOutputs(torch.tensor([[1.0], [3.0]]), mask, hidden_states={i: torch.randn(2, 3, 32) for i in (1, 2)})
    teacher = ModelOutputs(torch.tensor([[2.0], [2.0]]), mask, mean={j: torch.randn(2, 32) for j in range(1, 5)})
    out = method.losses(student, teacher, torch.tensor([0.0, 3.0]))
    assert out["kd"].item() == pytest.approx(1.0)    # ((1-2)^2 + (3-2)^2) / 2
    assert out["hard"].item() == pytest.approx(0.5)  # ((1-0)^2 + 0) / 2
    assert out["loss"].item() == pytest.approx((1.5 + out["rail"].item()) / 3, rel=1e-6)


@pytest.mark.parametrize("cls", [RailKDLayerwise, RailKDConcat])
def test_cached_teacher_gives_the_live_teacher_loss(models, cls):
    method = build(cls, teacher_projection="orthogonal", projection_dim=16)
    assert method.teacher_cacheable and not build(cls, pooling="mean_all").teacher_cacheable
    s_out, t_out = forward(method, models)
    pool = sorted(method.teacher_needs.layers)
    cached = ModelOutputs(logits=t_out.logits, attention_mask=None, hidden_states=None,  # as TeacherCache.lookup
                          mean={t: mean_pooled(t_out, t) for t in pool}, cls={t: cls_vector(t_out, t) for t in pool})
    for epoch in range(3):
        method.begin_step(epoch, 0)
        live, from_cache = method.losses(s_out, t_out, LABELS), method.losses(s_out, cached, LABELS)
        for key in live:
            assert torch.allclose(live[key], from_cache[key], atol=1e-6), key


# -------------------------------------------------------------------------------------- gradients
def test_gradients_reach_student_and_trainable_maps_only(models):
    student, teacher = models
    for cls, kind in [(RailKDLayerwise, "trainable"), (RailKDLayerwise, "orthogonal"),
                      (RailKDConcat, "trainable"), (RailKDConcat, "orthogonal")]:
        method = build(cls, teacher_projection=kind, projection_dim=16)
        method.begin_step(0, 0)
        student.zero_grad(set_to_none=True)
        method.losses(*forward(method, models), LABELS)["rail"].backward()
        assert student.bert.encoder.layer[0].attention.self.query.weight.grad.abs().sum() > 0
        assert all(p.grad is None for p in teacher.parameters())
        drawn = {str(t) for t in method.current_draw()}
        if cls is RailKDLayerwise:
            student_maps, used = list(method.student_maps.values()), [method.teacher_maps[k] for k in drawn]
            unused = [m for k, m in method.teacher_maps.items() if k not in drawn]
        else:
            student_maps, used, unused = [method.student_map], [method.teacher_map], []
        assert all(m.weight.grad.abs().sum() > 0 for m in student_maps)
        if kind == "trainable":
            assert all(m.weight.grad.abs().sum() > 0 for m in used)
            assert all(m.weight.grad is None for m in unused)  # not drawn this epoch
        else:
            assert all(not p.requires_grad and p.grad is None for m in used + unused for p in m.parameters())
    student.zero_grad(set_to_none=True)


def test_squared_and_unsquared_distances_differ_on_the_model(models):
    squared = build(RailKDLayerwise)
    plain = build(RailKDLayerwise, squared=False)
    plain.load_state_dict(squared.state_dict())
    s_out, t_out = forward(squared, models)
    a, b = squared.losses(s_out, t_out, LABELS)["rail"], plain.losses(s_out, t_out, LABELS)["rail"]
    # mean of squares >= square of the mean (Jensen), with equality only if all distances were equal
    assert a.item() > b.item() ** 2 and not torch.allclose(a, b)


# ---------------------------------------------------------------------------------- config errors
def test_config_errors_name_the_param():
    with pytest.raises(MethodConfigError, match="shapes"):
        build(RailKDLayerwise, shapes=None)
    with pytest.raises(MethodConfigError, match=r"rail_kd_l\.projection_dim"):
        build(RailKDLayerwise, projection_dim=16)  # identity keeps d_T = 32
    with pytest.raises(MethodConfigError, match=r"rail_kd_c\.projection_dim"):
        build(RailKDConcat, projection_dim=32)  # identity keeps m * d_T = 64
    assert build(RailKDConcat, projection_dim=64).dim == 64
    with pytest.raises(MethodConfigError, match=r"rail_kd_l\.exclude_last"):
        build(RailKDLayerwise, exclude_last=3)  # 1 teacher layer left for 2 student layers
    with pytest.raises(ValidationError, match="pooling"):
        RailKDLayerwise.Params(pooling="cls")
    with pytest.raises(ValidationError, match="exclude_last"):
        RailKDLayerwise.Params(exclude_last=-1)
    with pytest.raises(ValidationError, match="projection_dim"):
        RailKDLayerwise.Params(projection_dim=0)


def test_records_and_description():
    method = build(RailKDConcat, exclude_last=1, projection_dim=64)
    rows = method.mapping_table()
    assert [r["student_layer"] for r in rows] == ["1", "2", "note"]
    assert "random" in rows[-1]["teacher_layers"]
    info = method.describe()
    assert info["method"] == "rail_kd_c" and info["teacher_pool"] == [1, 2, 3] and info["projection_dim_used"] == 64


def test_rail_loss_is_fp32_under_bf16_autocast(models):
    method = build(RailKDLayerwise)
    s_out, t_out = forward(method, models)
    reference = method.losses(s_out, t_out, LABELS)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # the projections run in bf16, the distance in fp32
        out = method.losses(s_out, t_out, LABELS)
    assert out["rail"].dtype == out["loss"].dtype == torch.float32
    assert out["rail"].item() == pytest.approx(reference["rail"].item(), abs=2e-2)
