"""MLflow: stages of one invocation are children of one parent run, in the repo's sqlite store."""

import pytest

from kdpipe.tracking import NullTracker, invocation_key, stage_run, tracking_uri


@pytest.fixture
def repo(tmp_path, monkeypatch):
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("DVC_ROOT", raising=False)
    monkeypatch.delenv("KDPIPE_PIPELINE_RUN_ID", raising=False)
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
