"""MLflow tracking: one parent run per pipeline invocation, one child run per stage and method.

DVC runs every stage in its own process, so the parent run is found again by a key of the
invocation: the ``dvc`` process that spawned the stage (pid + start time).  Every stage of one
``dvc repro`` / ``dvc exp run`` therefore lands under the same parent in the MLflow UI; a stage
script run by hand gets a parent of its own.  ``KDPIPE_PIPELINE_RUN_ID`` pins the parent
explicitly (e.g. for a wrapper that runs several repros as one).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from pathlib import Path
from typing import Any, Iterator

from kdpipe.env import repo_root

INVOCATION_TAG = "kdpipe.invocation"


def store_root() -> Path:
    """Where the local MLflow store lives: $DVC_ROOT is the user's workspace even for queued
    experiments run in a temporary copy, so every run of the project lands in one store."""
    return Path(os.environ.get("DVC_ROOT") or repo_root()).resolve()


def tracking_uri(root: Path | None = None) -> str:
    """$MLFLOW_TRACKING_URI (a team server), else ``sqlite:///<repo>/mlflow.db`` (absolute).

    Absolute on purpose: relative sqlite URIs resolve against the CWD of each process.
    """
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{(root or store_root()) / 'mlflow.db'}"


def invocation_key() -> str:
    """Identifies the ``dvc`` process running this stage, or this process if there is none."""
    import psutil

    me = psutil.Process()
    for proc in me.parents():
        try:
            cmd = " ".join(proc.cmdline())
        except (psutil.Error, OSError):
            continue
        if "dvc" in Path(cmd.split(" ")[0]).name or " -m dvc" in cmd or "/dvc " in cmd:
            return f"dvc-{proc.pid}-{int(proc.create_time())}"
    return f"proc-{me.pid}-{int(me.create_time())}"


def git_commit(root: Path) -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


class Tracker:
    """The logging surface stages and the engine use; ``NullTracker`` when tracking is off."""

    def __init__(self, mlflow_module, run, parent_id: str | None = None):
        self._mlflow, self.run = mlflow_module, run
        self.run_id, self.parent_id = run.info.run_id, parent_id

    def log_params(self, params: dict[str, Any]) -> None:
        flat = _flatten(params)
        items = list(flat.items())
        for i in range(0, len(items), 100):  # MLflow caps a batch at 100 params
            self._mlflow.log_params({k: str(v)[:6000] for k, v in items[i:i + 100]})

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        clean = _numeric(metrics)
        if clean:
            self._mlflow.log_metrics(clean, step=step)

    def log_pipeline_metrics(self, metrics: dict[str, float]) -> None:
        """Summary metrics on the pipeline's parent run, so whole pipelines compare in the UI."""
        if self.parent_id:
            clean = _numeric(metrics)
            self._mlflow.MlflowClient().log_batch(
                self.parent_id, metrics=[self._mlflow.entities.Metric(k, v, int(time.time() * 1000), 0)
                                         for k, v in clean.items()])

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        path = Path(path)
        if path.is_dir():
            self._mlflow.log_artifacts(str(path), artifact_path)
        elif path.exists():
            self._mlflow.log_artifact(str(path), artifact_path)

    def log_text(self, text: str, artifact_file: str) -> None:
        self._mlflow.log_text(text, artifact_file)

    def set_tags(self, tags: dict[str, Any]) -> None:
        self._mlflow.set_tags({k: str(v) for k, v in tags.items() if v is not None})

    @property
    def mlflow(self):
        return self._mlflow

    @contextlib.contextmanager
    def child(self, name: str, tags: dict[str, Any] | None = None) -> Iterator["Tracker"]:
        """A run nested under this one (a phase of a multi-phase method, one PTP student): its
        curves get their own run in the UI.  Logging goes to the child until the block ends."""
        inherited = {k: v for k, v in self.run.data.tags.items() if k.startswith("kdpipe.")}
        with self._mlflow.start_run(experiment_id=self.run.info.experiment_id, run_name=name, nested=True,
                                    parent_run_id=self.run_id,
                                    tags={**inherited, **{k: str(v) for k, v in (tags or {}).items()}}) as run:
            yield Tracker(self._mlflow, run, self.parent_id)


class NullTracker:
    run_id = None
    mlflow = None

    @contextlib.contextmanager
    def child(self, name, tags=None):
        yield self

    def log_params(self, params): pass
    def log_metrics(self, metrics, step=None): pass
    def log_pipeline_metrics(self, metrics): pass
    def log_artifact(self, path, artifact_path=None): pass
    def log_text(self, text, artifact_file): pass
    def set_tags(self, tags): pass


def _numeric(metrics: dict) -> dict[str, float]:
    """Flattened numeric leaves (bools and strings dropped), with names MLflow accepts."""
    return {k.replace("@", "_"): float(v) for k, v in _flatten(metrics).items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)}


def _flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _experiment_id(mlflow, name: str, root: Path) -> str:
    exp = mlflow.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    artifacts = (root / "mlartifacts").resolve().as_uri()
    try:
        return mlflow.create_experiment(name, artifact_location=None if _remote() else artifacts)
    except Exception:  # created meanwhile by a concurrent stage
        return mlflow.get_experiment_by_name(name).experiment_id


def _remote() -> bool:
    return os.environ.get("MLFLOW_TRACKING_URI", "").startswith(("http://", "https://", "databricks"))


def _pipeline_parent(client, experiment_id: str, tags: dict[str, str]) -> str:
    pinned = os.environ.get("KDPIPE_PIPELINE_RUN_ID")
    if pinned:
        return pinned
    key = invocation_key()
    found = client.search_runs([experiment_id], filter_string=f"tags.`{INVOCATION_TAG}` = '{key}'",
                               max_results=1)
    if found:
        return found[0].info.run_id
    name = os.environ.get("DVC_EXP_NAME") or f"pipeline {time.strftime('%Y-%m-%d %H:%M:%S')}"
    run = client.create_run(experiment_id, run_name=name,
                            tags={INVOCATION_TAG: key, "kdpipe.kind": "pipeline", **tags})
    return run.info.run_id


@contextlib.contextmanager
def stage_run(stage: str, *, experiment: str = "kdpipe", enabled: bool = True,
              run_name: str | None = None, tags: dict[str, Any] | None = None) -> Iterator[Tracker | NullTracker]:
    """A child MLflow run for one stage (or one method of a stage) under the pipeline's parent."""
    if not enabled:
        yield NullTracker()
        return
    import mlflow

    root = store_root()
    mlflow.set_tracking_uri(tracking_uri(root))
    exp_id = _experiment_id(mlflow, experiment, root)
    client = mlflow.MlflowClient()
    common = {"mlflow.source.git.commit": git_commit(repo_root()), "kdpipe.dvc_exp": os.environ.get("DVC_EXP_NAME")}
    common = {k: v for k, v in common.items() if v}
    parent_id = _pipeline_parent(client, exp_id, common)
    all_tags = {**common, "kdpipe.stage": stage, **{k: str(v) for k, v in (tags or {}).items() if v is not None}}
    status = "FAILED"
    with mlflow.start_run(experiment_id=exp_id, run_name=run_name or stage, parent_run_id=parent_id,
                          nested=True, tags=all_tags) as run:
        try:
            yield Tracker(mlflow, run, parent_id)
            status = "FINISHED"
        except KeyboardInterrupt:
            status = "KILLED"
            raise
        finally:
            mlflow.end_run(status)
            client.set_terminated(parent_id, status="FINISHED" if status == "FINISHED" else status)


def log_onnx_model(tracker: Tracker | NullTracker, path: Path, name: str = "student_onnx") -> None:
    """Log the deployable ONNX student as an MLflow model (CPU provider, dynamic batch/sequence)."""
    if tracker.mlflow is None:
        return
    import numpy as np
    import onnx
    from mlflow.models import ModelSignature
    from mlflow.types.schema import Schema, TensorSpec

    proto = onnx.load(str(path))
    inputs = [i.name for i in proto.graph.input]
    # A hand-written signature: infer_signature would freeze the example's sequence length.
    signature = ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.int64), (-1, -1), n) for n in inputs]),
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, -1), "logits")]))
    tracker.mlflow.onnx.log_model(proto, name=name, signature=signature,
                                  onnx_execution_providers=["CPUExecutionProvider"],
                                  save_as_external_data=False)
