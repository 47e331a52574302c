"""Pea-KD through ``dvc repro`` on a real GLUE task (MRPC, real MiniLM): the ptp stage labels the
data with the task's thresholds and trains one PTP student per architecture, pea_kd distils an
SPS student from it, evaluate reports its size and latency, and its ONNX export matches PyTorch."""

from __future__ import annotations

import json
import sys

import pytest
import yaml

from test_e2e import dvc, make_project, sh, tiny_params

pytestmark = [pytest.mark.e2e, pytest.mark.heavy]  # pytest -m heavy

RUNS = {"pea": {"method": "pea_kd"}, "pea_no_sps": {"method": "pea_kd", "student": {"sps": None}}}


@pytest.fixture(scope="module")
def pea_project(tmp_path_factory, glue_dir, minilm_path):
    params = tiny_params(glue_dir, "mrpc", RUNS)
    params["student"]["num_layers"] = 3
    root = make_project(tmp_path_factory.mktemp("pea"), params)
    out = dvc("repro", "evaluate", "export@pea", root=root)
    return root, params, out


def read(root, path):
    return json.loads((root / path).read_text())


def test_ptp_stage_labels_with_task_thresholds_and_trains_each_architecture(pea_project):
    root, _, out = pea_project
    assert out.count("Running stage 'ptp'") == 1
    meta = read(root, "metrics/ptp.json")
    assert meta["thresholds"] == {"t1": 0.95, "t1_source": "task", "t2": 0.75, "t2_source": "task"}
    assert sum(meta["histogram"]["train"].values()) == 64 and sum(meta["histogram"]["dev"].values()) == 48
    assert set(meta["students"]) == {"L3_uniform_sps-upper_swap", "L3_uniform_plain"}
    assert meta["students"]["L3_uniform_sps-upper_swap"]["effective_layers"] == 6
    assert "ptp: classes at t1=0.95 (task)" in out
    saved = read(root, "models/ptp/L3_uniform_sps-upper_swap/config.json")
    assert saved["num_hidden_layers"] == 3 and saved["kdpipe_sps"]["shuffle"] == "upper_swap"
    assert len(saved["id2label"]) == 4


def test_pea_kd_distils_an_sps_student_from_the_ptp_encoder(pea_project):
    root, _, _ = pea_project
    pea, plain = read(root, "metrics/distill/pea/seed-1.json"), read(root, "metrics/distill/pea_no_sps/seed-1.json")
    assert pea["student"]["init_source"] == "ptp:L3_uniform_sps-upper_swap"
    assert plain["student"]["init_source"] == "ptp:L3_uniform_plain"
    assert pea["student"]["effective_layers"] == 6 and plain["student"]["effective_layers"] == 3
    assert pea["student"]["parameters"] == plain["student"]["parameters"]  # SPS adds no parameters
    assert [r["teacher_layers"] for r in pea["mapping"]] == ["1", "2", "3", "4", "5"]
    assert [r["teacher_layers"] for r in plain["mapping"]] == ["2", "4"]
    config = read(root, "models/students/pea/seed-1/config.json")
    assert len(config["id2label"]) == 2  # the 4-way PTP head was dropped for the task's


def test_evaluate_reports_sps_depth_size_and_latency(pea_project):
    root, _, _ = pea_project
    students = read(root, "metrics/evaluate.json")["students"]
    pea, plain = students["pea"], students["pea_no_sps"]
    assert (pea["layers"], pea["physical_layers"], pea["sps"]) == (6, 3, "upper_swap")
    assert pea["parameters"] == plain["parameters"] and pea["size_mb"] == plain["size_mb"]
    assert pea["latency_ms"]["batch_1"] > 0 and plain["layers"] == 3 and "sps" not in plain
    table = sh([sys.executable, "-m", "kdpipe.cli", "compare", "--metrics-dir", str(root / "metrics")], root)
    assert "| pea | pea_kd | 6 (3 shared) |" in table


def test_sps_onnx_export_matches_pytorch(pea_project):
    root, _, _ = pea_project
    report = read(root, "metrics/export/pea.json")
    assert report["parity"]["max_abs_diff"] < 1e-4 and report["fp32"]["latency_ms"]["batch_1"] > 0


def test_ptp_mlflow_run_logs_thresholds_and_histogram(pea_project):
    import mlflow

    root, _, _ = pea_project
    client = mlflow.MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    exp = client.get_experiment_by_name("e2e")
    run = client.search_runs([exp.experiment_id], filter_string="attributes.run_name = 'ptp'")[0]
    assert run.data.params["ptp_thresholds.t1"] == "0.95"
    assert "ptp_classes.train.confident_correct" in run.data.metrics


def test_changing_another_run_reuses_the_ptp_students(pea_project):
    """The ptp stage reads distill.runs, so it re-runs, but it reuses finished PTP students: its
    output is unchanged and the untouched pea_kd run is not retrained."""
    root, params, _ = pea_project
    params["distill"]["runs"]["pea_no_sps"]["beta"] = 10.0
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    out = dvc("repro", "evaluate", root=root)
    assert "Running stage 'ptp'" in out and "Running stage 'distill@pea_no_sps'" in out
    assert "Running stage 'distill@pea'" not in out
