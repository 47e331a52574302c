"""End to end with the real DVC queue: queued experiments, each in its own temporary copy of the
repo and its own ``dvc exp exec-run`` process, get one MLflow parent run each, shared by all of
their stages, in the workspace's store.  The stages are two trivial scripts around
``kdpipe.tracking.stage_run``, so the test takes DVC's time, not training's (about a minute)."""

from __future__ import annotations

import json
import time

import pytest

from test_e2e import dvc, sh

pytestmark = pytest.mark.e2e

STAGE = """\
import sys
import yaml
from kdpipe.tracking import stage_run

name = sys.argv[1]
with stage_run(name, experiment="queue") as t:
    t.log_metrics({"x": yaml.safe_load(open("params.yaml"))["x"]})
open(f"out_{name}.txt", "w").write(t.run_id)
"""
PIPELINE = """\
stages:
  one:
    cmd: python stage.py one
    deps: [stage.py]
    params: [x]
    outs: [out_one.txt]
  two:
    cmd: python stage.py two
    deps: [out_one.txt]
    outs: [out_two.txt]
"""


def test_queued_experiments_get_a_parent_run_each(tmp_path):
    import mlflow

    root = tmp_path
    (root / "stage.py").write_text(STAGE)
    (root / "dvc.yaml").write_text(PIPELINE)
    (root / "params.yaml").write_text("x: 0\n")
    (root / ".gitignore").write_text("/mlflow.db\n/mlartifacts/\n")
    sh(["git", "init", "-q"], root)
    dvc("init", "-q", root=root)
    dvc("config", "core.analytics", "false", root=root)
    sh(["git", "add", "-A"], root)
    sh(["git", "commit", "-qm", "init"], root)
    for name, x in (("exp-a", 1), ("exp-b", 2)):
        dvc("exp", "run", "--queue", "-n", name, "-S", f"x={x}", root=root)
    dvc("queue", "start", "-j", "2", root=root)
    deadline = time.monotonic() + 240
    while True:
        status = dvc("queue", "status", root=root)
        if status.count("Success") == 2 or "Failed" in status or time.monotonic() > deadline:
            break
        time.sleep(3)
    assert status.count("Success") == 2, status + "".join(
        dvc("queue", "logs", name, root=root) for name in ("exp-a", "exp-b"))

    client = mlflow.MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    exp_id = client.get_experiment_by_name("queue").experiment_id
    parents = {r.info.run_name: r for r in client.search_runs([exp_id], "tags.`kdpipe.kind` = 'pipeline'")}
    assert set(parents) == {"exp-a", "exp-b"}
    keys = {p.data.tags["kdpipe.invocation"] for p in parents.values()}
    assert len(keys) == 2 and all(k.startswith("dvc-") for k in keys)  # found the exec-run process
    for name, x in (("exp-a", 1), ("exp-b", 2)):
        parent = parents[name]
        assert parent.data.tags["kdpipe.dvc_exp"] == name and parent.data.tags.get("kdpipe.dvc_exp_baseline")
        children = client.search_runs([exp_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
        assert sorted(c.info.run_name for c in children) == ["one", "two"]
        assert next(c for c in children if c.info.run_name == "one").data.metrics["x"] == x
    shown = json.loads(dvc("exp", "show", "--json", root=root))
    assert "exp-a" in json.dumps(shown) and "exp-b" in json.dumps(shown)
    assert not list((root / ".dvc").rglob("mlflow.db"))  # nothing tracked into the temporary copies
