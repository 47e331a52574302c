"""Logit KD loss: hand-derived values, batch averaging, T^2 scaling, regression, gradients."""

import math

import pytest
import torch

from kdpipe.methods.registry import build_method
from kdpipe.methods.vanilla_kd import kd_kl_loss, kd_mse_loss
from kdpipe.models.taps import ModelOutputs


def test_kl_matches_hand_computation_at_t1():
    # p_T = softmax([ln 3, 0]) = [3/4, 1/4]; p_S = [1/2, 1/2]
    # KL = 3/4 ln(3/2) + 1/4 ln(1/2)
    expected = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)
    got = kd_kl_loss(torch.tensor([[0.0, 0.0]]), torch.tensor([[math.log(3), 0.0]]), temperature=1.0)
    assert got.item() == pytest.approx(expected, abs=1e-6)


def test_kl_temperature_softens_and_scales_by_t_squared():
    # T = 2: p_T = softmax([ln3 / 2, 0]) = [√3, 1] / (√3 + 1); p_S uniform; loss = 4 * KL
    r3 = math.sqrt(3)
    p = [r3 / (r3 + 1), 1 / (r3 + 1)]
    expected = 4 * sum(pi * math.log(pi / 0.5) for pi in p)
    got = kd_kl_loss(torch.tensor([[0.0, 0.0]]), torch.tensor([[math.log(3), 0.0]]), temperature=2.0)
    assert got.item() == pytest.approx(expected, abs=1e-6)


def test_kl_is_a_batch_mean_and_zero_for_equal_logits():
    s = torch.tensor([[0.0, 0.0]])
    t = torch.tensor([[math.log(3), 0.0]])
    one = kd_kl_loss(s, t, 1.0)
    two = kd_kl_loss(torch.cat([s, s]), torch.cat([t, t]), 1.0)
    assert two.item() == pytest.approx(one.item(), abs=1e-7)
    z = torch.randn(4, 5)
    assert kd_kl_loss(z, z.clone(), 3.0).item() == pytest.approx(0.0, abs=1e-6)


def test_kl_gradient_matches_closed_form():
    # d/dz_S of T^2 KL(p_T || softmax(z_S/T)) averaged over B is T * (p_S - p_T) / B
    torch.manual_seed(0)
    zs = torch.randn(3, 4, dtype=torch.double, requires_grad=True)
    zt = torch.randn(3, 4, dtype=torch.double)
    T = 2.5
    kd_kl_loss(zs, zt, T).backward()
    expected = T * (torch.softmax(zs.detach() / T, -1) - torch.softmax(zt / T, -1)) / 3
    assert torch.allclose(zs.grad, expected, atol=1e-10)
    assert torch.autograd.gradcheck(lambda x: kd_kl_loss(x, zt, T),
                                    (torch.randn(3, 4, dtype=torch.double, requires_grad=True),))


def test_vanilla_kd_total_combines_hard_and_soft_terms():
    method = build_method("vanilla_kd", {"temperature": 1.0, "alpha": 0.25}, regression=False)
    zs = torch.tensor([[0.0, 0.0]])
    zt = torch.tensor([[math.log(3), 0.0]])
    out = method.losses(ModelOutputs(zs, torch.ones(1, 3)), ModelOutputs(zt, torch.ones(1, 3)), torch.tensor([0]))
    kl = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)
    ce = math.log(2)  # -log softmax([0, 0])[0]
    assert out["kd"].item() == pytest.approx(kl, abs=1e-6)
    assert out["hard"].item() == pytest.approx(ce, abs=1e-6)
    assert out["loss"].item() == pytest.approx(0.75 * ce + 0.25 * kl, abs=1e-6)


def test_regression_uses_mse_to_teacher_and_labels():
    method = build_method("vanilla_kd", {"alpha": 0.5}, regression=True)
    zs, zt, y = torch.tensor([[1.0], [3.0]]), torch.tensor([[2.0], [2.0]]), torch.tensor([0.0, 3.0])
    out = method.losses(ModelOutputs(zs, torch.ones(2, 3)), ModelOutputs(zt, torch.ones(2, 3)), y)
    assert out["kd"].item() == pytest.approx(1.0)          # ((1-2)^2 + (3-2)^2) / 2
    assert out["hard"].item() == pytest.approx(0.5)        # ((1-0)^2 + 0) / 2
    assert out["loss"].item() == pytest.approx(0.75)
    assert kd_mse_loss(zs, zs).item() == 0


def test_finetune_ignores_the_teacher():
    method = build_method("finetune", {}, regression=False)
    assert not method.needs_teacher
    out = method.losses(ModelOutputs(torch.zeros(1, 2), torch.ones(1, 3)), None, torch.tensor([1]))
    assert out["loss"].item() == pytest.approx(math.log(2))
