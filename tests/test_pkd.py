"""BERT-PKD: the patient loss by hand and by loops, layer choice, needs, padding, cache, grads, errors."""

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import forward_pair, padded_batch, tiny_bert

from kdpipe.methods.base import MethodConfigError, kd_kl_loss
from kdpipe.models.adapters import ModelShape, Shapes
from kdpipe.methods.pkd import PKD, patient_loss
from kdpipe.models.taps import ModelOutputs, run_model

def shapes(student_layers=2, teacher_layers=4, student_hidden=32, teacher_hidden=32) -> Shapes:
    return Shapes(student=ModelShape(student_layers, student_hidden, 4), teacher=ModelShape(teacher_layers,
                                                                                         teacher_hidden, 4))


def pkd(regression=False, shape=None, **params) -> PKD:
    return PKD(PKD.Params(**params), regression=regression, shapes=shape or shapes())


@pytest.fixture(scope="module")
def models():
    return tiny_bert(layers=4, seed=0), tiny_bert(layers=2, seed=1)


def forward(method, models, pad_to=8):
    teacher, student = models
    return forward_pair(method, student, teacher, padded_batch(pad_to))


# ------------------------------------------------------------------------------------ patient_loss
def test_patient_loss_by_hand_normalised_and_raw():
    # s = [3, 4] -> [0.6, 0.8]; t = [0, 2] -> [0, 1]; diff [0.6, -0.2]: (0.36 + 0.04) / 2 dims = 0.2
    s, t = torch.tensor([[[3.0, 4.0]]]), torch.tensor([[[0.0, 2.0]]])
    assert patient_loss(s, t).item() == pytest.approx(0.2, abs=1e-6)
    # raw: diff [3, 2]: (9 + 4) / 2 = 6.5
    assert patient_loss(s, t, normalize=False).item() == pytest.approx(6.5, abs=1e-6)


def test_patient_loss_is_a_mean_over_layers_batch_and_dims():
    # layer 1 as above (squared sum 0.4); layer 2: [1, 0] vs [0, 1] (squared sum 2): 2.4 / (2 layers * 2 dims)
    s = torch.tensor([[[3.0, 4.0]], [[1.0, 0.0]]])
    t = torch.tensor([[[0.0, 2.0]], [[0.0, 1.0]]])
    assert patient_loss(s, t).item() == pytest.approx(0.6, abs=1e-6)


def test_patient_loss_matches_a_loop_reference_and_ignores_scale():
    torch.manual_seed(0)
    s, t = torch.randn(3, 5, 7), torch.randn(3, 5, 7)
    total = 0.0
    for m in range(3):
        for b in range(5):
            sn = s[m, b] / math.sqrt(sum(x * x for x in s[m, b].tolist()))
            tn = t[m, b] / math.sqrt(sum(x * x for x in t[m, b].tolist()))
            total += sum((x - y) ** 2 for x, y in zip(sn.tolist(), tn.tolist()))
    assert patient_loss(s, t).item() == pytest.approx(total / (3 * 5 * 7), rel=1e-5)
    scale = torch.rand(3, 5, 1) * 10 + 0.1  # normalised: a positive scale per vector changes nothing
    assert patient_loss(s * scale, t).item() == pytest.approx(patient_loss(s, t).item(), rel=1e-5)
    assert patient_loss(s, s.clone()).item() == pytest.approx(0.0, abs=1e-7)


@pytest.mark.parametrize("normalize", [True, False])
def test_patient_loss_gradcheck(normalize):
    torch.manual_seed(0)
    s = torch.randn(2, 3, 4, dtype=torch.double, requires_grad=True)
    t = torch.randn(2, 3, 4, dtype=torch.double)
    assert torch.autograd.gradcheck(lambda x: patient_loss(x, t, normalize), (s,))


def test_patient_loss_computes_in_fp32_for_half_inputs():
    s, t = torch.tensor([[[3.0, 4.0]]], dtype=torch.bfloat16), torch.tensor([[[0.0, 2.0]]], dtype=torch.bfloat16)
    out = patient_loss(s, t)
    assert out.dtype == torch.float32 and out.item() == pytest.approx(0.2, abs=1e-6)


# ----------------------------------------------------------------------------- mapping and needs
def test_skip_and_last_pick_the_spec_layers_and_only_those_are_needed():
    skip = pkd(shape=shapes(3, 6))  # student 1 <- 2, 2 <- 4 (the last student layer is left out)
    assert [(r["student_layer"], r["teacher_layers"]) for r in skip.mapping_table()] == [("1", "2"), ("2", "4")]
    assert skip.student_needs.layers == {1, 2} and skip.teacher_needs.layers == {2, 4}
    last = pkd(shape=shapes(3, 6), variant="last")  # 1 <- 4, 2 <- 5
    assert last.teacher_needs.layers == {4, 5}
    small = pkd()  # 2-layer student, 4-layer teacher
    assert small.student_needs.layers == {1} and small.teacher_needs.layers == {2}
    assert small.student_needs.hidden_states and not small.student_needs.attention_scores
    assert pkd(variant="last").teacher_needs.layers == {3}
    assert small.teacher_cacheable


def test_explicit_teacher_layers_override_the_variant():
    method = pkd(shape=shapes(3, 6), variant="last", teacher_layers=[1, 3])
    assert method.teacher_needs.layers == {1, 3}
    assert method.describe()["resolved_mapping"] == {"1": 1, "2": 3}


@pytest.mark.parametrize("params, shape, names", [
    ({"teacher_layers": [5]}, shapes(2, 4), "pkd.teacher_layers"),        # teacher has layers 1..4
    ({"teacher_layers": [0]}, shapes(2, 4), "pkd.teacher_layers"),        # 0 is the embeddings
    ({"teacher_layers": [1, 2]}, shapes(2, 4), "pkd.teacher_layers"),     # one layer per student layer 1..L_S-1
    ({}, shapes(4, 2), "pkd.variant"),                                    # student deeper than teacher
    ({}, shapes(2, 4, student_hidden=16), "width"),
    ({}, shapes(1, 4), "at least 2 layers"),
])
def test_config_errors_name_the_param(params, shape, names):
    with pytest.raises(MethodConfigError, match=names) as err:
        pkd(shape=shape, **params)
    assert "pkd" in str(err.value)


def test_shapes_are_required():
    with pytest.raises(MethodConfigError, match="shapes"):
        PKD(PKD.Params(), regression=False, shapes=None)


# --------------------------------------------------------------------------------- method losses
def test_total_is_weighted_sum_and_patient_reads_mapped_cls(models):
    method = pkd(ce_weight=0.2, kd_weight=0.3, beta=50.0, temperature=5.0)
    s, t = forward(method, models)
    labels = torch.tensor([0, 2])
    out = method.losses(s, t, labels)
    patient = F.mse_loss(F.normalize(s.hidden_states[1][:, 0], dim=-1), F.normalize(t.hidden_states[2][:, 0], dim=-1))
    assert out["patient"].item() == pytest.approx(patient.item(), rel=1e-6)
    assert out["kd"].item() == pytest.approx(kd_kl_loss(s.logits, t.logits, 5.0).item(), rel=1e-6)
    assert out["hard"].item() == pytest.approx(F.cross_entropy(s.logits, labels).item(), rel=1e-6)
    expected = 0.2 * out["hard"] + 0.3 * out["kd"] + 50.0 * out["patient"]
    assert out["loss"].item() == pytest.approx(expected.item(), rel=1e-6)


def test_loss_is_invariant_to_extra_padding(models):
    method = pkd()
    labels = torch.tensor([1, 0])
    short = method.losses(*forward(method, models, pad_to=6), labels)
    long = method.losses(*forward(method, models, pad_to=11), labels)
    for key in ("loss", "patient", "kd", "hard"):
        assert torch.allclose(short[key], long[key], atol=1e-5), key


def test_cached_teacher_gives_the_live_teachers_loss(models):
    method = pkd()
    s, live = forward(method, models)
    cached = ModelOutputs(logits=live.logits.clone(), attention_mask=live.attention_mask,
                          cls={layer: h[:, 0].clone() for layer, h in live.hidden_states.items()})
    assert cached.hidden_states is None
    labels = torch.tensor([2, 1])
    a, b = method.losses(s, live, labels), method.losses(s, cached, labels)
    assert torch.equal(a["loss"], b["loss"]) and torch.equal(a["patient"], b["patient"])


def test_patient_gradients_reach_only_supervised_student_layers_and_never_the_teacher():
    teacher, student = tiny_bert(layers=4, seed=0), tiny_bert(layers=2, seed=1)
    method = pkd(ce_weight=0.0, kd_weight=0.0)  # the patient loss alone
    inputs = padded_batch(8)
    t = run_model(teacher, inputs, method.teacher_needs)  # no no_grad: the method must cut the teacher off
    s = run_model(student, inputs, method.student_needs)
    method.losses(s, t, torch.tensor([0, 1]))["loss"].backward()
    assert all(p.grad is None for p in teacher.parameters())
    below = student.bert.encoder.layer[0].attention.self.query.weight.grad
    assert below is not None and below.abs().sum() > 0
    # Student layer 2 (its last) is not in the patient loss: it only sees zero-weighted logits.
    above = student.bert.encoder.layer[1].output.dense.weight.grad
    assert above is None or above.abs().sum() == 0


def test_full_loss_trains_the_student_head():
    teacher, student = tiny_bert(layers=4, seed=0), tiny_bert(layers=2, seed=1)
    method = pkd()
    inputs = padded_batch(8)
    t = run_model(teacher, inputs, method.teacher_needs)
    s = run_model(student, inputs, method.student_needs)
    method.losses(s, t, torch.tensor([0, 1]))["loss"].backward()
    assert student.classifier.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in teacher.parameters())


def test_regression_uses_mse_terms_and_keeps_the_patient_loss():
    teacher = tiny_bert(num_labels=1, layers=4, seed=0, problem="regression")
    student = tiny_bert(num_labels=1, layers=2, seed=1, problem="regression")
    method = pkd(regression=True, ce_weight=0.25, kd_weight=0.75, beta=10.0)
    inputs = padded_batch(8)
    with torch.no_grad():
        t = run_model(teacher, inputs, method.teacher_needs)
    s = run_model(student, inputs, method.student_needs)
    y = torch.tensor([0.5, 4.0])
    out = method.losses(s, t, y)
    assert out["hard"].item() == pytest.approx(F.mse_loss(s.logits.squeeze(-1), y).item(), rel=1e-6)
    assert out["kd"].item() == pytest.approx(F.mse_loss(s.logits, t.logits).item(), rel=1e-6)
    assert out["patient"].item() > 0
    expected = 0.25 * out["hard"] + 0.75 * out["kd"] + 10.0 * out["patient"]
    assert out["loss"].item() == pytest.approx(expected.item(), rel=1e-6)
