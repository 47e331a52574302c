"""The training loop on a tiny random BERT: it learns, selects checkpoints and resumes exactly."""

import math

import pandas as pd
import pytest
import torch

from kdpipe.config import TrainConfig
from kdpipe.data.batches import DistillCollator, Encoder
from kdpipe.data.splits import TextDataset
from kdpipe.training.engine import train
from kdpipe.methods.registry import build_method
from kdpipe.models.adapters import ModelShape, Shapes
from kdpipe.data.tasks import TaskSpec

from conftest import tiny_bert

SPEC = TaskSpec(name="toy", problem="classification", labels=("neg", "pos"), num_text_fields=1,
                metrics=("accuracy",), main_metric="accuracy")


def toy_frame(n: int, seed: int) -> pd.DataFrame:
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 2, (n,), generator=g).tolist()
    words = {0: "awful terrible bad", 1: "great lovely good"}
    return pd.DataFrame({"text_a": [f"the movie was {words[y].split()[i % 3]}" for i, y in enumerate(labels)],
                         "label": labels})


@pytest.fixture
def setup(tokenizer):
    train_set, dev_set = TextDataset(toy_frame(48, 0)), TextDataset(toy_frame(16, 1))
    enc = Encoder(tokenizer, ["input_ids", "attention_mask", "token_type_ids"], 16)
    return train_set, dev_set, DistillCollator(enc, enc, regression=False)


def run(setup, tmp_path, *, method="vanilla_kd", teacher=True, stop=None, fingerprint="f", method_params=None,
        teacher_layers=2, return_method=False, sps=None, **cfg):
    train_set, dev_set, collator = setup
    student = tiny_bert(num_labels=2, layers=2, seed=1)
    if sps:
        from kdpipe.models.sps import apply_sps
        apply_sps(student, sps)
    cfg = TrainConfig(**{"epochs": 2, "batch_size": 8, "lr": 1e-3, "checkpoint_every": 4, "log_every": 2,
                         "eval_every": 3, **cfg})
    shapes = Shapes(student=ModelShape(2, 32, 4), teacher=ModelShape(teacher_layers, 32, 4))
    kd = build_method(method, method_params or {}, regression=False, shapes=shapes)
    result = train(student, kd, SPEC, train_set, dev_set, collator, cfg,
                   seed=7, checkpoint_dir=tmp_path / "ckpt", fingerprint=fingerprint,
                   teacher=tiny_bert(num_labels=2, layers=teacher_layers, seed=2) if teacher else None,
                   stop_after_steps=stop)
    return (student, result, kd) if return_method else (student, result)


def test_training_learns_and_logs_every_loss_part(setup, tmp_path):
    student, result = run(setup, tmp_path, epochs=4)
    first, last = result.train_curve[0], result.train_curve[-1]
    assert last["loss"] < first["loss"]
    assert {"kd", "hard", "lr", "epoch"} <= set(last)
    assert last["step"] == 24 and result.dev_curve[-1]["step"] == 24
    assert [r["step"] for r in result.dev_curve] == [3, 6, 9, 12, 15, 18, 21, 24]
    assert (tmp_path / "ckpt" / "best" / "model.safetensors").exists()
    assert (tmp_path / "ckpt" / "last" / "model.safetensors").exists()


def test_best_checkpoint_is_restored_when_selected(setup, tmp_path):
    from safetensors.torch import load_file
    student, result = run(setup, tmp_path, select="best")
    best = load_file(tmp_path / "ckpt" / "best" / "model.safetensors")
    assert all(torch.equal(v, best[k]) for k, v in student.state_dict().items())
    assert result.best_dev["accuracy"] == max(r["accuracy"] for r in result.dev_curve)


def test_interrupted_run_resumes_to_the_same_weights(setup, tmp_path):
    reference, ref_result = run(setup, tmp_path / "a", select="last")
    with pytest.raises(KeyboardInterrupt):
        run(setup, tmp_path / "b", select="last", stop=5)  # last checkpoint: step 4, mid-epoch
    resumed, result = run(setup, tmp_path / "b", select="last")
    assert result.resumed_from_step == 4
    for (name, a), b in zip(reference.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name
    assert [r["loss"] for r in result.train_curve] == pytest.approx([r["loss"] for r in ref_result.train_curve])


def test_a_resume_between_two_logged_rows_gives_the_same_loss_curve(setup, tmp_path):
    """Checkpoint at step 3, rows every 2 steps: the row of step 4 averages steps 3 and 4 in both
    runs (the partial sum of step 3 is in the checkpoint)."""
    _, ref_result = run(setup, tmp_path / "a", select="last", checkpoint_every=3, log_every=2)
    with pytest.raises(KeyboardInterrupt):
        run(setup, tmp_path / "b", select="last", checkpoint_every=3, log_every=2, stop=3)
    _, result = run(setup, tmp_path / "b", select="last", checkpoint_every=3, log_every=2)
    assert result.resumed_from_step == 3
    assert result.train_curve == ref_result.train_curve


def test_checkpoint_of_other_inputs_is_not_resumed(setup, tmp_path):
    with pytest.raises(KeyboardInterrupt):
        run(setup, tmp_path, stop=5)
    _, result = run(setup, tmp_path, fingerprint="other inputs")
    assert result.resumed_from_step == 0


def test_finetune_runs_without_a_teacher(setup, tmp_path):
    _, result = run(setup, tmp_path, method="finetune", teacher=False, epochs=1)
    assert set(result.train_curve[-1]) >= {"loss"} and "kd" not in result.train_curve[-1]


def test_bf16_autocast_path_trains_with_fp32_losses(setup, tmp_path):
    """The GPU default (bf16 autocast) exercised on CPU: losses stay finite and are fp32."""
    _, result = run(setup, tmp_path, mixed_precision="bf16", epochs=1)
    assert all(math.isfinite(r["loss"]) for r in result.train_curve)
    assert 0 <= result.last_dev["accuracy"] <= 1


def test_a_finished_run_is_never_resumed(setup, tmp_path):
    run(setup, tmp_path, epochs=1)
    assert not (tmp_path / "ckpt" / "trainer_state.json").exists()
    assert (tmp_path / "ckpt" / "best" / "model.safetensors").exists()
    _, again = run(setup, tmp_path, epochs=1)
    assert again.resumed_from_step == 0


def test_resumed_rail_kd_run_redraws_the_same_layers_and_restores_its_projections(setup, tmp_path):
    """RAIL-KD re-drawn per batch with trainable maps on both sides: the draws, the method's own
    parameters (checkpointed with the run) and the student end as in an uninterrupted run."""
    kw = dict(method="rail_kd_l", teacher_layers=4, select="last", return_method=True,
              method_params={"resample": "batch", "teacher_projection": "trainable"})
    reference, ref_result, ref_method = run(setup, tmp_path / "a", **kw)
    with pytest.raises(KeyboardInterrupt):
        run(setup, tmp_path / "b", stop=5, **kw)  # last checkpoint at step 4, mid-epoch
    resumed, result, method = run(setup, tmp_path / "b", **kw)
    assert result.resumed_from_step == 4
    assert result.epoch_records == ref_result.epoch_records and len(result.epoch_records) == 2
    for (name, a), b in zip(reference.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name
    for (name, a), b in zip(ref_method.state_dict().items(), method.state_dict().values()):
        assert torch.equal(a, b), name


def test_constant_schedule_keeps_the_learning_rate_after_warmup(setup, tmp_path):
    _, result = run(setup, tmp_path, schedule="constant", warmup_ratio=0.0, epochs=1)
    assert {r["lr"] for r in result.train_curve} == {1e-3}


@pytest.mark.parametrize("shuffle", ["upper_swap", "random_per_step"])
def test_interrupted_sps_run_resumes_to_the_same_shared_weights(setup, tmp_path, shuffle):
    """Checkpoints hold each shared tensor once; the resumed student still shares them, and the
    random Q/K swaps replay from the restored RNG."""
    from kdpipe.models.adapters import encoder_layers
    reference, _ = run(setup, tmp_path / "a", select="last", sps=shuffle)
    with pytest.raises(KeyboardInterrupt):
        run(setup, tmp_path / "b", select="last", stop=5, sps=shuffle)
    resumed, result = run(setup, tmp_path / "b", select="last", sps=shuffle)
    assert result.resumed_from_step == 4
    for (name, a), b in zip(reference.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name
    layers = encoder_layers(resumed)
    assert layers[2].attention.self.value.weight is layers[0].attention.self.value.weight


def test_select_by_loss_keeps_the_lowest_dev_loss(setup, tmp_path):
    _, result = run(setup, tmp_path, select="best", select_by="loss", epochs=4)
    assert result.best_dev["loss"] == min(r["loss"] for r in result.dev_curve)


@pytest.mark.parametrize("preset", ["qkv_cr", "ah_cr"])
def test_cr_ild_mixup_and_clean_pass_train_and_resume_exactly(setup, tmp_path, preset):
    """The engine mixes teacher and student inputs with the method's lambda, runs the clean pass
    only once the consistency weight is on (epoch 1 of 2), and a resumed run redraws the same
    mixtures: the same weights as an uninterrupted run."""
    kw = dict(method="cr_ild", method_params={"preset": preset}, select="last", return_method=True)
    reference, ref_result, ref_method = run(setup, tmp_path / "a", **kw)
    rows = ref_result.train_curve
    assert all(0.5 <= r["mixup_lambda"] <= 1 for r in rows)
    weights = [r["consistency_weight"] for r in rows]  # logged every 2 steps; 6 steps per epoch
    assert weights == pytest.approx([0.0, 0.0, 0.0, 0.05, 0.05, 0.05])
    assert "consistency" not in rows[0]  # no clean pass while its weight is 0
    assert rows[-1]["consistency"] > 0
    with pytest.raises(KeyboardInterrupt):
        run(setup, tmp_path / "b", stop=5, **kw)
    resumed, result, method = run(setup, tmp_path / "b", **kw)
    assert result.resumed_from_step == 4
    for (name, a), b in zip(reference.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name
    for (name, a), b in zip(ref_method.state_dict().items(), method.state_dict().values()):
        assert torch.equal(a, b), name
