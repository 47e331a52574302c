"""Every intermediate-layer method through ``dvc repro`` on a real GLUE task (MRPC, real MiniLM):
one distill stage and one child MLflow run per method, their mappings and RAIL-KD's per-epoch
draws logged, cached teacher outputs used where the method allows it, and one evaluate report
comparing them all."""

from __future__ import annotations

import json

import pytest

from test_e2e import dvc, make_project, tiny_params

pytestmark = [pytest.mark.e2e, pytest.mark.heavy]  # pytest -m heavy

RUNS = {
    "pkd": {"method": "pkd", "beta": 100.0},
    "pkd_last": {"method": "pkd", "variant": "last"},
    "tinybert": {"method": "tinybert", "phases": {"ild": {"epochs": 1}, "pred": {"epochs": 1}}},
    "rail_l": {"method": "rail_kd_l", "train": {"epochs": 2}},
    "rail_c": {"method": "rail_kd_c", "resample": "batch"},
    "alp": {"method": "alp_kd"},
    "alp_no": {"method": "alp_kd_no"},
    "alp_po": {"method": "alp_kd_po"},
}
CACHED = {"pkd", "pkd_last", "rail_l", "rail_c", "alp", "alp_no", "alp_po"}


@pytest.fixture(scope="module")
def methods_project(tmp_path_factory, glue_dir, minilm_path):
    params = tiny_params(glue_dir, "mrpc", RUNS)
    params["student"]["num_layers"] = 3  # 6 -> 3: PKD has two intermediate layers, RAIL draws 3 of 6
    root = make_project(tmp_path_factory.mktemp("methods"), params)
    out = dvc("repro", "evaluate", root=root)  # exports are method-independent: test_e2e covers them
    return root, out


def summary(root, run):
    return json.loads((root / f"metrics/distill/{run}/seed-1.json").read_text())


def test_every_method_runs_as_a_stage_and_is_compared(methods_project):
    root, out = methods_project
    for run in RUNS:
        assert f"'distill@{run}'" in out, run
        assert (root / f"models/students/{run}/seed-1/model.safetensors").exists()
    report = json.loads((root / "metrics/evaluate.json").read_text())
    assert report["main_metric"] == "f1" and set(report["students"]) == set(RUNS)
    for run, r in report["students"].items():
        assert 0 <= r["dev"]["f1"] <= 1 and r["layers"] == 3, run
    # (the project stops at evaluate: its compact summary, the only DVC metrics, comes after the exports)


def test_teacher_outputs_are_cached_once_and_read_by_vector_methods(methods_project):
    root, out = methods_project
    assert out.count("Running stage 'teacher_outputs'") == 1
    meta = json.loads((root / "data/teacher_outputs/meta.json").read_text())
    assert meta["examples"] == 64 and meta["layers"] == 6
    for run in RUNS:
        signal = summary(root, run)["teacher_signal"]
        if run in CACHED:
            assert signal == {"main": "cache"}, run
    assert summary(root, "tinybert")["teacher_signal"] == {"ild": "live", "pred": "cache"}


def test_mappings_are_resolved_printed_and_logged(methods_project):
    root, out = methods_project
    assert summary(root, "pkd")["mapping"] == [{"student_layer": "1", "teacher_layers": "2"},
                                               {"student_layer": "2", "teacher_layers": "4"}]
    assert [r["teacher_layers"] for r in summary(root, "pkd_last")["mapping"]] == ["4", "5"]
    assert [r["teacher_layers"] for r in summary(root, "alp_no")["mapping"]] == ["1, 2", "3, 4", "5, 6"]
    assert "[pkd] pkd layer mapping" in out
    draws = summary(root, "rail_l")["epoch_records"]["main"]
    assert [d["epoch"] for d in draws] == [0, 1]
    for d in draws:
        layers = d["teacher_layers"]
        assert layers == sorted(layers) and len(set(layers)) == 3 and set(layers) <= set(range(1, 7))


def test_tinybert_trains_its_two_phases_in_order(methods_project):
    root, _ = methods_project
    s = summary(root, "tinybert")
    assert list(s["phases"]) == ["ild", "pred"]
    assert s["phases"]["ild"]["train"]["schedule"] == "constant" and s["phases"]["ild"]["selected"] == "last"
    rows = (root / "plots/train/tinybert/seed-1.csv").read_text().splitlines()
    header = rows[0].split(",")
    phases = [r.split(",")[header.index("phase")] for r in rows[1:]]
    assert phases == sorted(phases, key=["ild", "pred"].index) and set(phases) == {"ild", "pred"}
    steps = [int(r.split(",")[header.index("step")]) for r in rows[1:]]
    assert steps == sorted(steps)  # the pred phase continues the step axis


def test_each_method_is_a_child_mlflow_run(methods_project):
    import mlflow

    root, _ = methods_project
    client = mlflow.MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    exp = client.get_experiment_by_name("e2e")
    parent = client.search_runs([exp.experiment_id], filter_string="tags.`kdpipe.kind` = 'pipeline'")[0]
    children = {c.info.run_name: c for c in client.search_runs(
        [exp.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'")}
    assert {f"distill/{run}/seed-1" for run in RUNS} | {"teacher_outputs"} <= set(children)
    for run, cfg in RUNS.items():
        assert children[f"distill/{run}/seed-1"].data.tags["kdpipe.method"] == cfg["method"]
    artifacts = {a.path for a in client.list_artifacts(children["distill/rail_l/seed-1"].info.run_id)}
    assert {"layer_mapping.txt", "epoch_records_main.txt"} <= artifacts
    # each tinybert phase is a run nested in the stage's run, with its own curves
    tiny = children["distill/tinybert/seed-1"].info.run_id
    phases = {c.info.run_name: c.info.run_id for c in client.search_runs(
        [exp.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{tiny}'")}
    assert set(phases) == {"tinybert/seed-1/ild", "tinybert/seed-1/pred"}
    assert client.get_metric_history(phases["tinybert/seed-1/ild"], "train/attention")
    assert client.get_metric_history(phases["tinybert/seed-1/pred"], "dev/f1")
    assert (root / "plots/phases/tinybert/seed-1/ild_train.csv").exists()
