"""MLKD-BERT on tiny models: every ild/pred term against an independent loop computation, padding
invariance, the free student head count (config validation, set_attention_heads, save/reload),
no hard-label CE, regression, and the cache-shaped teacher of the pred phase."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch.distributions import Categorical, kl_divergence

from conftest import forward_pair, padded_batch, tiny_bert
from kdpipe.methods.base import MethodConfigError
from kdpipe.methods.registry import build_method
from kdpipe.models.adapters import ModelShape, Shapes
from kdpipe.methods.base import kd_kl_loss
from kdpipe.models.sources import ModelError
from kdpipe.models.loading import count_parameters, load_classifier, save_model
from kdpipe.models.students import build_student, set_attention_heads
from kdpipe.models.taps import ModelOutputs, Needs, run_model

SHAPES = Shapes(ModelShape(2, 32, 2), ModelShape(4, 32, 4))
PAIRS = [(1, 2), (2, 4)]  # uniform: student layer n <- teacher layer 2n
LABELS = torch.tensor([0, 1])


def mlkd(regression=False, shapes=SHAPES, **params):
    return build_method("mlkd", params, regression=regression, shapes=shapes)


def make_student(teacher):
    return set_attention_heads(build_student(teacher, [1, 3]), 2)


def make_models():
    """(teacher, 2-head student).  A wider init than the default 0.02 so the relations are not all uniform,
    and the student cut from a differently seeded model so its embeddings differ from the teacher's."""
    teacher = tiny_bert(layers=4, seed=0, initializer_range=0.3)
    return teacher, make_student(tiny_bert(layers=4, seed=1, initializer_range=0.3))


@pytest.fixture(scope="module")
def models():
    return make_models()


def forward(method, models, pad_to=8, teacher_grad=False):
    teacher, student = models
    return forward_pair(method, student, teacher, padded_batch(pad_to), teacher_grad)


# ------------------------------------------------------------------------ slow references (loops)
def slow_relation_kl(s: torch.Tensor, t: torch.Tensor, mask: torch.Tensor, splits: int) -> float:
    """Token relation KL by loops: chunk a of each width gives scores x_q . x_k / sqrt(d / splits) over the
    example's real tokens; KL(teacher row || student row) averaged over real rows and chunks per example,
    then over examples."""
    per_example = []
    for i in range(s.shape[0]):
        real = [k for k in range(s.shape[1]) if mask[i, k]]
        kls = []
        for a in range(splits):
            def rows(x):
                w = x.shape[-1] // splits
                chunk = x[i, :, a * w:(a + 1) * w].double()
                return [[float(chunk[q].detach() @ chunk[k].detach()) / math.sqrt(w) for k in real] for q in real]
            for r_s, r_t in zip(rows(s), rows(t)):
                kls.append(kl_divergence(Categorical(logits=torch.tensor(r_t)),
                                         Categorical(logits=torch.tensor(r_s))).item())
        per_example.append(sum(kls) / len(kls))
    return sum(per_example) / len(per_example)


def slow_masked_mse(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor) -> float:
    sq = [(a[i, k] - b[i, k]).pow(2).mean().item() for i in range(a.shape[0]) for k in range(a.shape[1])
          if mask[i, k]]
    return sum(sq) / len(sq)


def scalar(x: float) -> torch.Tensor:
    return torch.tensor(x, dtype=torch.float32)


# ------------------------------------------------------------------------------- needs and config
def test_needs_mapping_and_cacheability_per_phase():
    method = mlkd()
    assert method.layer_pairs == PAIRS
    s, t = method.student_needs, method.teacher_needs
    assert s.hidden_states and s.context and not s.attention_output and s.layers == {0, 1, 2}
    assert t.hidden_states and t.context and t.layers == {0, 2, 4}
    assert not method.teacher_cacheable  # ild reads token-level states
    assert method.describe()["mha_split_width"] == {"student": 16, "teacher": 16}
    method.set_phase("pred")
    assert method.teacher_cacheable
    assert method.student_needs == Needs(hidden_states=True, layers=frozenset({2}))
    assert method.teacher_needs == Needs(hidden_states=True, layers=frozenset({4}))
    assert method.phase_train("ild")["schedule"] == "constant" and method.phase_train("pred") == {}


def test_student_heads_must_divide_both_widths():
    # 32 % 3 != 0: the student width cannot be cut into 3 MHA-splits
    with pytest.raises(MethodConfigError, match=r"student\.attention_heads.*student width 32"):
        mlkd(shapes=Shapes(ModelShape(2, 32, 3), ModelShape(4, 32, 4)))
    # a 24-wide student with 3 heads is fine on its side, but the 32-wide teacher does not split into 3
    with pytest.raises(MethodConfigError, match=r"student\.attention_heads.*teacher width 32"):
        mlkd(shapes=Shapes(ModelShape(2, 24, 3), ModelShape(4, 32, 4)))
    # without the MHA relation the head count is free
    free = mlkd(shapes=Shapes(ModelShape(2, 24, 3), ModelShape(4, 32, 4)), mha_weight=0.0)
    assert not free.student_needs.context
    # and a 1-head or 8-head student of the 32-wide teacher is accepted (A_S need not equal A_T)
    for heads in (1, 8):
        mlkd(shapes=Shapes(ModelShape(2, 32, heads), ModelShape(4, 32, 4)))
    with pytest.raises(MethodConfigError, match="all 0"):
        mlkd(emb_weight=0.0, mha_weight=0.0, ffn_weight=0.0)


# --------------------------------------------------------------------------------------- ild terms
def test_ild_terms_match_independent_loop_computations(models):
    teacher, student = models
    method = mlkd(emb_weight=0.5, mha_weight=2.0, ffn_weight=0.25)
    inputs = padded_batch(8)
    s, t = forward(method, models)
    out = method.losses(s, t, LABELS)
    assert set(out) == {"loss", "emb", "mha", "ffn"}
    mask = inputs["attention_mask"]
    # independent captures: every layer's context and hidden states
    with torch.no_grad():
        every = Needs(hidden_states=True, context=True)
        s_all, t_all = run_model(student, inputs, every), run_model(teacher, inputs, every)
    # MHA: student context [B, n, 32] in its 2 heads of 16; teacher context in 2 chunks of 16 (2 heads each)
    # summed over the layer pairs, as the spec's L_MHA (and L_FFN)
    mha = sum(slow_relation_kl(s_all.context[i], t_all.context[j], mask, 2) for i, j in PAIRS)
    emb = slow_relation_kl(s_all.hidden_states[0], t_all.hidden_states[0], mask, 1)
    with torch.no_grad():
        ffn = sum(slow_masked_mse(method.fit_dense(s_all.hidden_states[i]), t_all.hidden_states[j], mask)
                  for i, j in PAIRS)
    torch.testing.assert_close(out["mha"], scalar(mha), rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(out["emb"], scalar(emb), rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(out["ffn"], scalar(ffn), rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(out["loss"], scalar(0.5 * emb + 2.0 * mha + 0.25 * ffn), rtol=1e-4, atol=1e-6)
    # splitting by the teacher's 4 heads instead would be a different number: the split count matters
    wrong = sum(slow_relation_kl(s_all.context[i], t_all.context[j], mask, 4) for i, j in PAIRS)
    assert abs(wrong - mha) > 1e-4


def test_emb_term_is_zero_for_a_student_cut_from_the_teacher():
    # same embedding module on both sides: identical token relations, whatever the head counts
    teacher = tiny_bert(layers=4, seed=0, initializer_range=0.3)
    method = mlkd()
    out = method.losses(*forward(method, (teacher, make_student(teacher))), LABELS)
    torch.testing.assert_close(out["emb"], scalar(0.0), rtol=0, atol=1e-7)
    assert out["mha"].item() > 1e-3  # student layer 1 reads the embeddings, teacher layer 2 reads layer 1


def test_mha_attn_output_variant_reads_the_attention_block_output(models):
    teacher, student = models
    method = mlkd(mha_output="attn_output", emb_weight=0.0, ffn_weight=0.0)
    assert method.student_needs.attention_output and not method.student_needs.context
    assert not method.student_needs.hidden_states
    inputs = padded_batch(8)
    out = method.losses(*forward(method, models), LABELS)
    with torch.no_grad():
        s_all = run_model(student, inputs, Needs(attention_output=True))
        t_all = run_model(teacher, inputs, Needs(attention_output=True))
    ref = sum(slow_relation_kl(s_all.attention_output[i], t_all.attention_output[j], inputs["attention_mask"], 2)
              for i, j in PAIRS)
    torch.testing.assert_close(out["mha"], scalar(ref), rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(out["loss"], out["mha"], rtol=0, atol=0)
    assert out["emb"].item() == 0.0 and out["ffn"].item() == 0.0


@pytest.mark.parametrize("phase", ["ild", "pred"])
def test_losses_are_invariant_to_extra_padding(models, phase):
    method = mlkd()
    method.set_phase(phase)
    short = method.losses(*forward(method, models, pad_to=8), LABELS)
    long = method.losses(*forward(method, models, pad_to=12), LABELS)
    assert set(short) == set(long)
    for key in short:
        torch.testing.assert_close(short[key], long[key], rtol=1e-5, atol=1e-5, msg=key)


def test_w_h_is_the_identity_for_equal_widths_and_trainable_otherwise_by_default():
    assert isinstance(mlkd().fit_dense, torch.nn.Identity)  # a student cut from the teacher: its space
    narrow = mlkd(shapes=Shapes(ModelShape(2, 16, 2), ModelShape(4, 32, 4)))
    assert narrow.fit_dense.weight.shape == (32, 16)  # the paper's d_S -> d_T map
    assert mlkd(hidden_projection="trainable").fit_dense.weight.shape == (32, 32)


def test_ild_gradients_reach_student_and_fit_dense_never_teacher():
    teacher, student = make_models()
    method = mlkd(hidden_projection="trainable")
    s, t = forward(method, (teacher, student), teacher_grad=True)  # the method must cut the teacher off
    method.losses(s, t, LABELS)["loss"].backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert method.fit_dense.weight.grad.abs().sum() > 0
    assert student.bert.encoder.layer[1].attention.self.value.weight.grad.abs().sum() > 0
    assert student.classifier.weight.grad is None  # ild never reads the logits


# -------------------------------------------------------------------------------------- pred phase
def test_pred_terms_by_hand_and_no_hard_label_ce(models):
    method = mlkd(ss_weight=0.5, sc_weight=2.0, kd_weight=3.0, temperature=2.0, contrastive_temperature=0.5)
    method.set_phase("pred")
    s, t = forward(method, models)
    out = method.losses(s, t, LABELS)
    assert set(out) == {"loss", "ss", "sc", "kd"}
    h_s, h_t = s.hidden_states[2][:, 0], t.hidden_states[4][:, 0]
    # ss: (1/b) sum_i KL over the batch's [CLS] relation (one "token" per example, no padding)
    ss = slow_relation_kl(h_s[None], h_t[None], torch.ones(1, 2, dtype=torch.long), 1)
    torch.testing.assert_close(out["ss"], scalar(ss), rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(out["kd"], kd_kl_loss(s.logits, t.logits, 2.0), rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(out["loss"], 0.5 * out["ss"] + 2.0 * out["sc"] + 3.0 * out["kd"],
                               rtol=1e-6, atol=1e-6)
    # changing the labels' class structure moves sc only: no hard-label CE anywhere
    other = method.losses(s, t, torch.tensor([0, 0]))
    assert torch.equal(other["ss"], out["ss"]) and torch.equal(other["kd"], out["kd"])
    assert abs(other["sc"].item() - out["sc"].item()) > 1e-4
    # with sc off the loss does not read labels at all
    no_sc = mlkd(sc_weight=0.0)
    no_sc.set_phase("pred")
    assert no_sc.contrast_projection is None
    a, b = no_sc.losses(s, t, torch.tensor([0, 1])), no_sc.losses(s, t, torch.tensor([2, 2]))
    assert set(a) == {"loss", "ss", "kd"}
    assert torch.equal(a["loss"], b["loss"])


def test_pred_sc_uses_the_contrast_projection_and_gradients():
    teacher, student = make_models()
    method = mlkd(hidden_projection="trainable")
    method.set_phase("pred")
    s, t = forward(method, (teacher, student), teacher_grad=True)
    out = method.losses(s, t, LABELS)
    assert method.contrast_projection.weight.shape == (32, 32)
    out["loss"].backward()
    assert method.contrast_projection.weight.grad.abs().sum() > 0
    assert student.classifier.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in teacher.parameters())
    assert method.fit_dense.weight.grad is None  # W_h is an ild-only map


def test_pred_reads_a_cache_shaped_teacher(models):
    method = mlkd()
    method.set_phase("pred")
    s, t = forward(method, models)
    live = method.losses(s, t, LABELS)
    # a teacher cache carries logits and per-layer [CLS] vectors only: no hidden states, no mask
    cached = ModelOutputs(logits=t.logits.clone(), attention_mask=None, cls={4: t.hidden_states[4][:, 0].clone()})
    from_cache = method.losses(s, cached, LABELS)
    for key in live:
        torch.testing.assert_close(from_cache[key], live[key], rtol=0, atol=0, msg=key)
    # the cached [CLS] really is read: a different vector changes ss
    moved = ModelOutputs(logits=t.logits, attention_mask=None, cls={4: 3.0 * t.hidden_states[4][:, 0]})
    assert abs(method.losses(s, moved, LABELS)["ss"].item() - live["ss"].item()) > 1e-6


def test_regression_turns_sc_off_and_uses_mse_to_the_teacher():
    teacher = tiny_bert(num_labels=1, layers=4, seed=0, problem="regression", initializer_range=0.3)
    student = make_student(tiny_bert(num_labels=1, layers=4, seed=1, problem="regression", initializer_range=0.3))
    method = mlkd(regression=True)
    assert method.contrast_projection is None and method.describe()["contrastive"] == "off (regression)"
    method.set_phase("pred")
    s, t = forward(method, (teacher, student))
    out = method.losses(s, t, torch.tensor([0.5, 4.0]))
    assert set(out) == {"loss", "ss", "kd"}
    torch.testing.assert_close(out["kd"], F.mse_loss(s.logits, t.logits), rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(out["loss"], out["ss"] + out["kd"], rtol=1e-6, atol=1e-7)
    assert torch.equal(method.losses(s, t, torch.tensor([-3.0, 1.0]))["loss"], out["loss"])


# -------------------------------------------------------------------------- the free head count
def test_set_attention_heads_keeps_parameters_and_changes_the_computation():
    teacher = tiny_bert(layers=4, seed=0, initializer_range=0.3)
    four = build_student(teacher, [1, 3])
    two = set_attention_heads(build_student(teacher, [1, 3]), 2)
    assert count_parameters(two) == count_parameters(four)
    assert all(torch.equal(a, b) for a, b in zip(two.state_dict().values(), four.state_dict().values()))
    assert two.config.num_attention_heads == 2 and teacher.config.num_attention_heads == 4
    attn = two.bert.encoder.layer[0].attention.self
    assert attn.attention_head_size == 16 and attn.scaling == pytest.approx(16 ** -0.5)
    assert teacher.bert.encoder.layer[0].attention.self.attention_head_size == 8  # the source is untouched
    inputs = padded_batch(8)
    with torch.no_grad():
        out = run_model(two, inputs, Needs(qkv=True))
        assert out.query[1].shape == (2, 2, 8, 16)
        # same weights, different head split: different attention, so different logits
        assert (two(**inputs).logits - four(**inputs).logits).abs().max() > 1e-6
    with pytest.raises(ModelError, match="do not divide"):
        set_attention_heads(build_student(teacher, [1]), 3)


def test_saved_two_head_student_reloads_with_two_heads(models, tokenizer, tmp_path):
    _, student = models
    save_model(student, tokenizer, tmp_path / "student")
    reloaded = load_classifier(tmp_path / "student").eval()
    assert reloaded.config.num_attention_heads == 2
    assert reloaded.bert.encoder.layer[0].attention.self.attention_head_size == 16
    inputs = padded_batch(8)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**inputs).logits, student(**inputs).logits, rtol=0, atol=1e-6)
