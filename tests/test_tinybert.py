"""TinyBERT: masked attention/hidden MSE and soft CE by hand and by loops, padding, phases, needs, grads, errors."""

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import forward_pair, padded_batch, tiny_bert

from kdpipe.methods.base import MethodConfigError
from kdpipe.models.adapters import ModelShape, Shapes
from kdpipe.methods.tinybert import TinyBERT, attention_score_mse, hidden_mse, soft_cross_entropy
from kdpipe.models.taps import ModelOutputs

def shapes(student=(2, 32, 4), teacher=(4, 32, 4)) -> Shapes:
    return Shapes(student=ModelShape(*student), teacher=ModelShape(*teacher))


def tinybert(regression=False, shape=None, **params) -> TinyBERT:
    return TinyBERT(TinyBERT.Params(**params), regression=regression, shapes=shape or shapes())


def forward(method, teacher, student, pad_to=8, teacher_grad=False):
    return forward_pair(method, student, teacher, padded_batch(pad_to), teacher_grad)


@pytest.fixture(scope="module")
def models():
    return tiny_bert(layers=4, seed=0), tiny_bert(layers=2, seed=1)


def pad(x: torch.Tensor, dims: tuple[int, ...], extra: int) -> torch.Tensor:
    """Append ``extra`` garbage positions along each of ``dims``."""
    for d in dims:
        shape = list(x.shape)
        shape[d] = extra
        x = torch.cat([x, torch.randn(shape) * 100], dim=d)
    return x


# ------------------------------------------------------------------------------------------ losses
def test_attention_score_mse_by_hand():
    # one head, n = 2.  diffs [[2, 0], [-2, 0]]: all pairs real -> (4 + 0 + 4 + 0) / 4 = 2
    s = torch.tensor([[[[3.0, 5.0], [0.0, 1.0]]]])
    t = torch.tensor([[[[1.0, 5.0], [2.0, 1.0]]]])
    assert attention_score_mse(s, t, torch.tensor([[1, 1]])).item() == pytest.approx(2.0)
    # token 2 is padding: only (query 1, key 1) is real -> 4 / 1 = 4
    assert attention_score_mse(s, t, torch.tensor([[1, 0]])).item() == pytest.approx(4.0)
    # a second head that matches exactly halves the mean over heads: 4 / 2 = 2
    s2, t2 = torch.cat([s, t], dim=1), torch.cat([t, t], dim=1)
    assert attention_score_mse(s2, t2, torch.tensor([[1, 0]])).item() == pytest.approx(2.0)


def test_attention_score_mse_matches_a_loop_reference():
    torch.manual_seed(0)
    s, t = torch.randn(2, 3, 5, 5), torch.randn(2, 3, 5, 5)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    total, count = 0.0, 0
    for b in range(2):
        for a in range(3):
            for q in range(5):
                for k in range(5):
                    if mask[b, q] and mask[b, k]:
                        total += (s[b, a, q, k].item() - t[b, a, q, k].item()) ** 2
                        count += 1
    assert attention_score_mse(s, t, mask).item() == pytest.approx(total / count, rel=1e-5)


def test_hidden_mse_by_hand_and_by_loops():
    # token 2 is padding; token 1: diff [1, 2] -> (1 + 4) / (1 token * 2 dims) = 2.5
    s = torch.tensor([[[1.0, 2.0], [9.0, 9.0]]])
    assert hidden_mse(s, torch.zeros(1, 2, 2), torch.tensor([[1, 0]])).item() == pytest.approx(2.5)
    torch.manual_seed(0)
    s, t = torch.randn(2, 4, 3), torch.randn(2, 4, 3)
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
    sq = [(s[b, i, j].item() - t[b, i, j].item()) ** 2
          for b in range(2) for i in range(4) for j in range(3) if mask[b, i]]
    assert hidden_mse(s, t, mask).item() == pytest.approx(sum(sq) / len(sq), rel=1e-5)


def test_masked_losses_ignore_appended_padding():
    torch.manual_seed(0)
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])
    longer = torch.cat([mask, torch.zeros(2, 3, dtype=mask.dtype)], dim=1)
    s, t = torch.randn(2, 4, 4, 4), torch.randn(2, 4, 4, 4)
    # garbage in padded rows/columns of the original too: only real (query, key) pairs count
    s_garbage = s.clone()
    s_garbage[0, :, 3, :] = 1e3
    s_garbage[0, :, :, 3] = -1e3
    base = attention_score_mse(s, t, mask)
    assert attention_score_mse(s_garbage, t, mask).item() == pytest.approx(base.item(), rel=1e-6)
    assert attention_score_mse(pad(s, (2, 3), 3), pad(t, (2, 3), 3), longer).item() == pytest.approx(base.item(),
                                                                                                     rel=1e-6)
    h_s, h_t = torch.randn(2, 4, 6), torch.randn(2, 4, 6)
    assert hidden_mse(pad(h_s, (1,), 3), pad(h_t, (1,), 3), longer).item() == pytest.approx(
        hidden_mse(h_s, h_t, mask).item(), rel=1e-6)


def test_soft_cross_entropy_is_a_mean_over_batch_and_classes():
    # p_T = softmax([ln 3, 0]) = [3/4, 1/4]; log q_S = log [1/2, 1/2]:
    # -sum_c p log q = ln 2, and the mean over C = 2 classes halves it
    zs, zt = torch.tensor([[0.0, 0.0]]), torch.tensor([[math.log(3), 0.0]])
    assert soft_cross_entropy(zs, zt).item() == pytest.approx(math.log(2) / 2, abs=1e-6)
    # t = 2: p_T = [sqrt3, 1] / (sqrt3 + 1), still against uniform q_S -> ln 2 / 2 again; and a loop reference
    assert soft_cross_entropy(zs, zt, temperature=2.0).item() == pytest.approx(math.log(2) / 2, abs=1e-6)
    torch.manual_seed(0)
    zs, zt = torch.randn(3, 4), torch.randn(3, 4)
    ref = 0.0
    for b in range(3):
        p = [math.exp(x / 2.0) for x in zt[b].tolist()]
        q = [math.exp(x / 2.0) for x in zs[b].tolist()]
        ref += sum(-(pi / sum(p)) * math.log(qi / sum(q)) for pi, qi in zip(p, q))
    assert soft_cross_entropy(zs, zt, 2.0).item() == pytest.approx(ref / (3 * 4), rel=1e-5)


def test_pure_losses_gradcheck():
    torch.manual_seed(0)
    dt = torch.double
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    s = torch.randn(2, 2, 3, 3, dtype=dt, requires_grad=True)
    t = torch.randn(2, 2, 3, 3, dtype=dt)
    assert torch.autograd.gradcheck(lambda x: attention_score_mse(x, t, mask), (s,))
    h = torch.randn(2, 3, 4, dtype=dt, requires_grad=True)
    ht = torch.randn(2, 3, 4, dtype=dt)
    assert torch.autograd.gradcheck(lambda x: hidden_mse(x, ht, mask), (h,))
    z = torch.randn(3, 4, dtype=dt, requires_grad=True)
    zt = torch.randn(3, 4, dtype=dt)
    assert torch.autograd.gradcheck(lambda x: soft_cross_entropy(x, zt, 2.0), (z,))


def test_losses_compute_in_fp32_for_half_inputs():
    s = torch.tensor([[[1.0, 2.0], [9.0, 9.0]]], dtype=torch.bfloat16)
    out = hidden_mse(s, torch.zeros(1, 2, 2, dtype=torch.bfloat16), torch.tensor([[1, 0]]))
    assert out.dtype == torch.float32 and out.item() == pytest.approx(2.5)


# ----------------------------------------------------------------------------- mapping and needs
def test_ild_needs_only_mapped_layers():
    method = tinybert()  # 2-layer student of a 4-layer teacher: emb <- emb, 1 <- 2, 2 <- 4
    assert [(r["student_layer"], r["teacher_layers"]) for r in method.mapping_table()] == [
        ("embeddings", "embeddings"), ("1", "2"), ("2", "4")]
    s, t = method.student_needs, method.teacher_needs
    assert s.hidden_states and s.attention_scores and s.layers == {0, 1, 2}
    assert t.hidden_states and t.attention_scores and t.layers == {0, 2, 4}
    assert not method.teacher_cacheable
    assert tinybert(mapping="last").teacher_needs.layers == {0, 3, 4}
    no_attention = tinybert(attention_weight=0.0)
    assert not no_attention.teacher_needs.attention_scores and no_attention.teacher_needs.layers == {0, 2, 4}
    no_hidden = tinybert(hidden_weight=0.0)  # embeddings are only read by the hidden loss
    assert not no_hidden.student_needs.hidden_states
    assert no_hidden.student_needs.layers == {1, 2} and no_hidden.teacher_needs.layers == {2, 4}


def test_phase_switch_changes_needs_cacheability_and_train_defaults():
    method = tinybert()
    assert method.phases == ("ild", "pred") and method.phase == "ild"
    assert method.phase_train("ild") == {"select": "last", "warmup_ratio": 0.0, "schedule": "constant"}
    assert method.phase_train("pred") == {}
    method.set_phase("pred")
    assert not method.student_needs.any_layer_signal and not method.teacher_needs.any_layer_signal
    assert method.teacher_cacheable
    with pytest.raises(ValueError, match="no phase"):
        method.set_phase("main")


def test_hidden_projection_is_identity_or_a_trainable_submodule():
    assert list(tinybert().parameters()) == []  # auto, equal widths: the identity
    trainable = tinybert(hidden_projection="trainable")
    assert isinstance(trainable.fit_dense, torch.nn.Linear) and trainable.fit_dense.weight.shape == (32, 32)
    narrow = tinybert(shape=shapes(student=(2, 16, 4)))  # d_S != d_T: always trainable, 16 -> 32
    assert narrow.fit_dense.weight.shape == (32, 16)
    assert narrow.describe()["resolved_hidden_projection"] == "trainable"
    assert "fit_dense.weight" in narrow.state_dict()


@pytest.mark.parametrize("params, shape, names", [
    ({}, shapes(student=(2, 32, 2)), r"tinybert\.attention_weight.*attention_weight: 0"),
    ({"mapping": "last"}, shapes(student=(4, 32, 4), teacher=(2, 32, 4)), r"tinybert\.mapping"),
    ({}, shapes(student=(3, 32, 4), teacher=(1, 32, 4)), r"tinybert\.mapping"),  # round(1/3) = 0: embeddings
    ({"attention_weight": 0.0, "hidden_weight": 0.0}, shapes(), r"tinybert\.attention_weight"),
])
def test_config_errors_name_the_param(params, shape, names):
    with pytest.raises(MethodConfigError, match=names):
        tinybert(shape=shape, **params)


def test_head_mismatch_is_fine_without_the_attention_loss():
    method = tinybert(shape=shapes(student=(2, 32, 2)), attention_weight=0.0)
    assert not method.student_needs.attention_scores
    with pytest.raises(MethodConfigError, match="shapes"):
        TinyBERT(TinyBERT.Params(), regression=False, shapes=None)


# --------------------------------------------------------------------------------- method losses
def test_ild_loss_sums_mapped_layers(models):
    method = tinybert(attention_weight=0.5, hidden_weight=2.0)
    s, t = forward(method, *models)
    out = method.losses(s, t, torch.tensor([0, 1]))
    assert set(out) == {"loss", "attention", "hidden"}
    m = s.attention_mask
    attention = sum(attention_score_mse(s.attention_scores[i], t.attention_scores[j], m) for i, j in [(1, 2), (2, 4)])
    hidden = sum(hidden_mse(s.hidden_states[i], t.hidden_states[j], m) for i, j in [(0, 0), (1, 2), (2, 4)])
    assert out["attention"].item() == pytest.approx(attention.item(), rel=1e-6)
    assert out["hidden"].item() == pytest.approx(hidden.item(), rel=1e-6)
    assert out["loss"].item() == pytest.approx(0.5 * attention.item() + 2.0 * hidden.item(), rel=1e-6)


@pytest.mark.parametrize("phase", ["ild", "pred"])
def test_loss_is_invariant_to_extra_padding(models, phase):
    method = tinybert(hidden_projection="trainable")
    method.set_phase(phase)
    labels = torch.tensor([1, 0])
    short = method.losses(*forward(method, *models, pad_to=6), labels)
    long = method.losses(*forward(method, *models, pad_to=13), labels)
    for key in short:
        assert torch.allclose(short[key], long[key], atol=1e-5), key


def test_pred_phase_is_soft_ce_on_logits_only(models):
    method = tinybert(pred_temperature=2.0)
    method.set_phase("pred")
    s, t = forward(method, *models)
    assert s.hidden_states is None and t.attention_scores is None
    out = method.losses(s, t, torch.tensor([0, 1]))
    assert set(out) == {"loss", "kd"}
    assert out["loss"].item() == pytest.approx(soft_cross_entropy(s.logits, t.logits, 2.0).item(), rel=1e-6)
    # a cached teacher (logits only) gives the same loss
    cached = ModelOutputs(logits=t.logits.clone(), attention_mask=t.attention_mask)
    assert torch.equal(method.losses(s, cached, torch.tensor([0, 1]))["loss"], out["loss"])


def test_regression_pred_fits_gold_labels_not_the_teacher():
    teacher = tiny_bert(num_labels=1, layers=4, seed=0, problem="regression")
    student = tiny_bert(num_labels=1, layers=2, seed=1, problem="regression")
    method = tinybert(regression=True)
    y = torch.tensor([0.5, 4.0])
    ild = method.losses(*forward(method, teacher, student), y)  # the ild phase does not look at labels
    assert set(ild) == {"loss", "attention", "hidden"}
    method.set_phase("pred")
    s, t = forward(method, teacher, student)
    out = method.losses(s, t, y)
    assert out["loss"].item() == pytest.approx(F.mse_loss(s.logits.squeeze(-1), y).item(), rel=1e-6)
    moved = ModelOutputs(logits=t.logits + 100.0, attention_mask=t.attention_mask)
    assert torch.equal(method.losses(s, moved, y)["loss"], out["loss"])


def test_gradients_reach_student_and_projection_never_teacher():
    teacher, student = tiny_bert(layers=4, seed=0), tiny_bert(layers=2, seed=1)
    method = tinybert(hidden_projection="trainable")
    s, t = forward(method, teacher, student, teacher_grad=True)  # the method must cut the teacher off
    method.losses(s, t, torch.tensor([0, 1]))["loss"].backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert method.fit_dense.weight.grad.abs().sum() > 0
    assert student.bert.embeddings.word_embeddings.weight.grad.abs().sum() > 0
    assert student.bert.encoder.layer[1].attention.self.key.weight.grad.abs().sum() > 0
    assert student.classifier.weight.grad is None  # ild never reads the logits
    method.set_phase("pred")
    student.zero_grad(set_to_none=True)
    s, t = forward(method, teacher, student, teacher_grad=True)
    method.losses(s, t, torch.tensor([0, 1]))["loss"].backward()
    assert student.classifier.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in teacher.parameters())


def test_narrow_student_trains_through_the_projection():
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(2)
    student = BertForSequenceClassification(BertConfig(
        vocab_size=30522, hidden_size=16, num_hidden_layers=2, num_attention_heads=4, intermediate_size=32,
        max_position_embeddings=128, num_labels=3, attn_implementation="eager")).eval()
    teacher = tiny_bert(layers=4, seed=0)
    method = TinyBERT(TinyBERT.Params(), regression=False,
                      shapes=Shapes(ModelShape.of(student.config), ModelShape.of(teacher.config)))
    s, t = forward(method, teacher, student)
    out = method.losses(s, t, torch.tensor([0, 1]))
    out["loss"].backward()
    assert method.fit_dense.weight.shape == (32, 16) and method.fit_dense.weight.grad.abs().sum() > 0
    assert out["attention"].item() > 0 and out["hidden"].item() > 0
