"""MLflow: stages of one invocation are children of one parent run, in the repo's sqlite store."""

import os
import sqlite3
import subprocess
import sys

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
