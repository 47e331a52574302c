"""MLKD-BERT and CR-ILD through ``dvc repro`` on a real GLUE task (MRPC, real MiniLM): two-phase
runs, each phase a nested MLflow run and a DVC plot; the fewer-head MLKD student exported with
its own head count and timed against the teacher's; CR-ILD's supplementary RTE inputs in its ILD
phase; and the few-sample / noisy-label data options feeding every stage."""

from __future__ import annotations

import json

import pytest

from test_e2e import dvc, make_project, tiny_params

pytestmark = [pytest.mark.e2e, pytest.mark.heavy]  # pytest -m heavy

RUNS = {
    "mlkd": {"method": "mlkd", "student": {"attention_heads": 3},
             "phases": {"ild": {"epochs": 1}, "pred": {"epochs": 1}}},
    "cr_ild": {"method": "cr_ild", "preset": "ah_cr", "supplementary": {"task": "rte", "max_examples": 24},
               "phases": {"ild": {"epochs": 2}, "pred": {"epochs": 1}}, "train": {"log_every": 1}},
    "cr_ild_released": {"method": "cr_ild", "preset": "released"},
}


@pytest.fixture(scope="module")
def relations_project(tmp_path_factory, glue_dir, minilm_path):
    params = tiny_params(glue_dir, "mrpc", RUNS)
    params["task"].update(downsample=40, label_noise=0.25)
    root = make_project(tmp_path_factory.mktemp("relations"), params)
    out = dvc("repro", root=root)
    return root, out


def summary(root, run):
    return json.loads((root / f"metrics/distill/{run}/seed-1.json").read_text())


def test_data_options_shape_the_prepared_train_split(relations_project):
    import pandas as pd

    root, _ = relations_project
    train = pd.read_parquet(root / "data/prepared/train.parquet")
    assert len(train) == 40  # downsample after the 64-example cap
    assert 0 < (train["label"] != train["clean_label"]).sum() < 40
    teacher = json.loads((root / "metrics/teacher.json").read_text())
    assert teacher["steps"] == 3  # the teacher trains on the 40 noisy examples too (batch 16)


def test_both_methods_train_two_phases_and_are_evaluated(relations_project):
    root, out = relations_project
    for run in RUNS:
        assert f"'distill@{run}'" in out and f"'export@{run}'" in out
        s = summary(root, run)
        assert list(s["phases"]) == ["ild", "pred"] and s["phases"]["ild"]["selected"] == "last"
        assert s["teacher_signal"] == {"ild": "live", "pred": "cache"}
    # CR-ILD's ILD phase also trains on 24 RTE pairs; its KD phase on the task's own 40 examples
    assert summary(root, "cr_ild")["phases"]["ild"]["train_examples"] == 64
    assert summary(root, "cr_ild")["phases"]["pred"]["train_examples"] == 40
    assert summary(root, "cr_ild_released")["phases"]["ild"]["train_examples"] == 40
    report = json.loads((root / "metrics/evaluate.json").read_text())
    assert set(report["students"]) == set(RUNS)
    for run, r in report["students"].items():
        assert 0 <= r["dev"]["f1"] <= 1, run


def test_the_mlkd_student_runs_and_exports_with_its_own_head_count(relations_project):
    import numpy as np
    import pandas as pd
    import torch

    from kdpipe.models.loading import load_classifier, load_tokenizer
    from kdpipe.models.students import set_attention_heads
    from kdpipe.export.runtime import OnnxTextClassifier

    root, _ = relations_project
    report = json.loads((root / "metrics/evaluate.json").read_text())
    mlkd = report["students"]["mlkd"]
    assert mlkd["attention_heads"] == 3 and report["teacher"]["attention_heads"] == 12
    assert mlkd["latency_ms_at_heads"]["heads"] == 12 and mlkd["latency_ms_at_heads"]["batch_1"] > 0
    assert "latency_ms_at_heads" not in report["students"]["cr_ild"]  # same heads as the teacher
    export = json.loads((root / "metrics/export/mlkd.json").read_text())
    assert export["parity"]["max_abs_diff"] < 1e-4
    # The ONNX graph computes 3-head attention: it matches the 3-head model, not the same
    # weights run with 12 heads.
    student_dir = root / "models/students/mlkd/seed-1"
    model = load_classifier(student_dir).eval()
    tokenizer = load_tokenizer(student_dir)
    dev = pd.read_parquet(root / "data/prepared/dev.parquet").head(8)
    inputs = tokenizer(dev["text_a"].tolist(), dev["text_b"].tolist(), padding=True, truncation=True,
                       max_length=64, return_tensors="pt")
    with torch.no_grad():
        three = model(**inputs).logits.numpy()
        twelve = set_attention_heads(model, 12)(**inputs).logits.numpy()
    onnx = OnnxTextClassifier.from_dir(root / "exports/mlkd").logits(dev["text_a"].tolist(), dev["text_b"].tolist())
    np.testing.assert_allclose(onnx, three, atol=1e-4)
    assert np.abs(onnx - twelve).max() > 1e-3


def test_each_phase_is_a_nested_mlflow_run_with_its_losses(relations_project):
    import mlflow

    root, _ = relations_project
    client = mlflow.MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    exp = client.get_experiment_by_name("e2e")
    runs = {r.info.run_name: r for r in client.search_runs([exp.experiment_id])}
    expected = {"mlkd/seed-1/ild": {"train/emb", "train/mha", "train/ffn"}, "mlkd/seed-1/pred": {"train/ss", "train/sc", "train/kd"},
                "cr_ild/seed-1/ild": {"train/attention", "train/hidden", "train/consistency", "train/mixup_lambda"},
                "cr_ild/seed-1/pred": {"train/kd", "dev/f1"}, "cr_ild_released/seed-1/ild": {"train/qkv"}}
    for name, metrics in expected.items():
        run = runs[name]
        stage = runs[f"distill/{name.rsplit('/', 1)[0]}"]
        assert run.data.tags["mlflow.parentRunId"] == stage.info.run_id, name
        assert metrics <= set(run.data.metrics), (name, sorted(run.data.metrics))
    assert "train/consistency" not in runs["cr_ild_released/seed-1/ild"].data.metrics  # the released script: no CR
    # lambda in [0.5, 1]; the consistency weight ramps from 0 (epoch 0) to w/2 (epoch 1 of 2)
    cr = runs["cr_ild/seed-1/ild"].info.run_id
    lam = [m.value for m in client.get_metric_history(cr, "train/mixup_lambda")]
    assert lam and all(0.5 <= v <= 1 for v in lam)
    weights = [m.value for m in client.get_metric_history(cr, "train/consistency_weight")]
    assert weights[0] == 0 and weights[-1] == pytest.approx(0.05)


def test_each_phase_has_its_own_dvc_plot(relations_project):
    root, _ = relations_project
    for run in RUNS:
        for phase in ("ild", "pred"):
            for kind in ("train", "dev"):
                assert (root / f"plots/phases/{run}/seed-1/{phase}_{kind}.csv").exists(), (run, phase, kind)
    shown = json.loads(dvc("plots", "show", "--json", root=root))
    assert "plots/phases/mlkd/seed-1/ild_train.csv" in shown["data"] and "plots/phases/cr_ild/seed-1/pred_dev.csv" in shown["data"]
