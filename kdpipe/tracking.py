"""MLflow tracking: one parent run per pipeline invocation, one child run per stage and method.

DVC runs every stage in its own process, so the parent run is found again by a key of the
invocation: the ``dvc`` process that spawned the stage (pid + start time), plus the DVC
experiment's name when there is one.  Every stage of one ``dvc repro`` / ``dvc exp run``
therefore lands under the same parent in the MLflow UI; a stage script run by hand gets a parent
of its own.  Queued experiments (``dvc exp run --queue`` + ``dvc queue start -j N``) each run in a
``dvc exp exec-run`` process of their own, in a temporary copy of the repo, with DVC_EXP_NAME,
DVC_EXP_BASELINE_REV and DVC_ROOT (the user's workspace) set by DVC for all their stages: each
gets its own parent, named and tagged after the experiment.  ``KDPIPE_PIPELINE_RUN_ID`` pins the
parent explicitly (e.g. for a wrapper that runs several repros as one).
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Iterator

from kdpipe.config import ConfigError
from kdpipe.env import repo_root

INVOCATION_TAG = "kdpipe.invocation"
# Seconds between attempts when the store fails (a locked sqlite file, a server restarting).
# MLflow itself waits up to 20 s on a locked sqlite file per statement, so three attempts; then
# the stage carries on without tracking, tries the store again every RETRY_AFTER_S, and catches up.
BACKOFF_S = (1.0, 2.0)
RETRY_AFTER_S = 30.0
MAX_PENDING = 10_000  # logging calls kept for catching up while the store is away


def _retry(call: Callable[[], Any], backoff=BACKOFF_S):
    """``call()``, retried after each delay of ``backoff``; the last failure is raised."""
    for delay in (*backoff, None):
        try:
            return call()
        except Exception:  # noqa: BLE001 - whatever the store raises, tracking only observes
            if delay is None:
                raise
            time.sleep(delay)


@contextlib.contextmanager
def _env_set(**values: str) -> Iterator[None]:
    """Environment variables set for the duration of the block only."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _brief(error: Exception) -> str:
    return f"{type(error).__name__}: {(str(error).splitlines() or [''])[0][:200]}"


def _warn(message: str) -> None:
    print(f"kdpipe: warning: tracking: {message}", file=sys.stderr, flush=True)


def check_store() -> None:
    """Fail before any work when the local MLflow store is unreadable (not merely locked)."""
    uri = tracking_uri()
    if not uri.startswith("sqlite:///"):
        return
    path = Path(uri.removeprefix("sqlite:///"))
    if not path.exists():
        return
    try:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=1)) as db:
            db.execute("PRAGMA quick_check").fetchall()
            db.execute("SELECT count(*) FROM sqlite_master").fetchall()
    except sqlite3.OperationalError as e:
        if "locked" in str(e):
            return  # busy, not broken: the stage retries and carries on
        raise ConfigError(_store_error(path, e)) from None
    except sqlite3.DatabaseError as e:
        raise ConfigError(_store_error(path, e)) from None


def _store_error(path: Path, error: Exception) -> str:
    return (f"{path}: the MLflow store is not readable ({error}); move it aside (mv {path} {path}.broken) "
            f"to start a new one, or set tracking.enabled: false")


def store_root() -> Path:
    """Where the local MLflow store lives: $DVC_ROOT is the user's workspace even for queued
    experiments run in a temporary copy, so every run of the project lands in one store."""
    return Path(os.environ.get("DVC_ROOT") or repo_root()).resolve()


def tracking_uri(root: Path | None = None) -> str:
    """$MLFLOW_TRACKING_URI (a team server), else ``sqlite:///<repo>/mlflow.db`` (absolute).

    Absolute on purpose: relative sqlite URIs resolve against the CWD of each process.
    """
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{(root or store_root()) / 'mlflow.db'}"


def dvc_experiment() -> dict[str, str]:
    """What DVC says about the experiment this stage belongs to (``dvc exp run``, queued or not;
    nothing under a plain ``dvc repro``): its name and baseline commit."""
    found = {"kdpipe.dvc_exp": os.environ.get("DVC_EXP_NAME"),
             "kdpipe.dvc_exp_baseline": os.environ.get("DVC_EXP_BASELINE_REV")}
    return {k: v for k, v in found.items() if v}


def invocation() -> tuple[str, int, int]:
    """(kind, pid, start time) of the ``dvc`` process running this stage, or of this process
    if there is none."""
    import psutil

    me = psutil.Process()
    for proc in me.parents():
        try:
            cmd = " ".join(proc.cmdline())
        except (psutil.Error, OSError):
            continue
        if "dvc" in Path(cmd.split(" ")[0]).name or " -m dvc" in cmd or "/dvc " in cmd:
            return "dvc", proc.pid, int(proc.create_time())
    return "proc", me.pid, int(me.create_time())


def invocation_key() -> str:
    """Identifies one pipeline invocation: ``dvc-<pid>-<start>`` of the ``dvc`` process running
    this stage (``proc-...`` of this process if there is none), ``-exp-<name>`` appended inside a
    DVC experiment, so two experiments never share a parent even if they shared a process."""
    kind, pid, started = invocation()
    exp = re.sub(r"[^\w.-]", "_", os.environ.get("DVC_EXP_NAME", ""))  # quoted in a search filter
    return f"{kind}-{pid}-{started}" + (f"-exp-{exp}" if exp else "")


def git_commit(root: Path) -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


class Tracker:
    """The logging surface stages and the engine use; ``NullTracker`` when tracking is off.

    Tracking observes, it never takes training down: a failing call is retried with backoff
    (``BACKOFF_S``), then the stage carries on with one warning; while the store is away each
    call is tried once, and the calls that failed are replayed, in order, at the next call that
    succeeds.  Ending a run and logging a model are tried out of band (``_call_now``): never kept,
    never held up by a kept call that still fails.  Calls go to this run by id, so a child run can
    be logged to while another is active.
    """

    def __init__(self, mlflow_module, run, parent_id: str | None = None):
        self._mlflow, self.run = mlflow_module, run
        self.run_id, self.parent_id = run.info.run_id, parent_id
        self._client = mlflow_module.MlflowClient()
        self._pending: list[tuple[str, Callable[[], Any]]] = []
        self._degraded_at: float | None = None  # when the store last failed us, while it is away

    def _call(self, what: str, call: Callable[[], Any]) -> bool:
        """``call()`` in order after what is pending; True when it reached the store."""
        if self._degraded_at is not None and time.monotonic() - self._degraded_at < RETRY_AFTER_S:
            self._keep(what, call)  # the store is away: do not stall training on it at every step
            return False
        if self._pending and not self._catch_up():
            self._degraded_at = time.monotonic()
            self._keep(what, call)
            return False
        try:
            _retry(call, () if self._degraded_at is not None else BACKOFF_S)
        except Exception as e:  # noqa: BLE001
            if self._degraded_at is None:
                _warn(f"{what} failed ({_brief(e)}); training goes on, its metrics still go to DVC's files, "
                      f"and MLflow catches up when the store answers")
            self._degraded_at = time.monotonic()
            self._keep(what, call)
            return False
        if self._degraded_at is not None:
            _warn("the store answers again; caught up")
            self._degraded_at = None
        return True

    def _call_now(self, what: str, call: Callable[[], Any], consequence: str, backoff=BACKOFF_S) -> bool:
        """``call()`` out of band, retried after each delay of ``backoff``, never kept for later:
        for calls that must not wait behind (or, failing for their own reasons, block) the pending
        ones (ending a run) or are too heavy to replay (logging a model).  True when it reached
        the store."""
        try:
            _retry(call, backoff)
        except Exception as e:  # noqa: BLE001
            _warn(f"{what} failed ({_brief(e)}); {consequence}")
            return False
        return True

    def _keep(self, what: str, call: Callable[[], Any]) -> None:
        if len(self._pending) < MAX_PENDING:
            self._pending.append((what, call))

    def _catch_up(self) -> bool:
        """Replay what failed, in order; True when nothing is left pending."""
        while self._pending:
            what, call = self._pending[0]
            try:
                call()
            except Exception:  # noqa: BLE001
                return False
            self._pending.pop(0)
        return True

    def log_params(self, params: dict[str, Any]) -> None:
        items = list(_flatten(params).items())
        for i in range(0, len(items), 100):  # MLflow caps a batch at 100 params
            batch = [self._mlflow.entities.Param(k, str(v)[:6000]) for k, v in items[i:i + 100]]
            self._call("logging params", lambda b=batch: self._client.log_batch(self.run_id, params=b))

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        clean = _numeric(metrics)
        if clean:
            stamp = int(time.time() * 1000)
            batch = [self._mlflow.entities.Metric(k, v, stamp, step or 0) for k, v in clean.items()]
            self._call("logging metrics", lambda: self._client.log_batch(self.run_id, metrics=batch))

    def log_pipeline_metrics(self, metrics: dict[str, float]) -> None:
        """Summary metrics on the pipeline's parent run, so whole pipelines compare in the UI."""
        if self.parent_id:
            stamp = int(time.time() * 1000)
            batch = [self._mlflow.entities.Metric(k, v, stamp, 0) for k, v in _numeric(metrics).items()]
            self._call("logging pipeline metrics", lambda: self._client.log_batch(self.parent_id, metrics=batch))

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        path = Path(path)
        if path.is_dir():
            self._call("logging artifacts", lambda: self._client.log_artifacts(self.run_id, str(path), artifact_path))
        elif path.exists():
            self._call("logging an artifact", lambda: self._client.log_artifact(self.run_id, str(path), artifact_path))

    def log_pipeline_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        """A file or folder on the pipeline's parent run (the report), next to its summary metrics."""
        if self.parent_id and Path(path).exists():
            run_id, self.run_id = self.run_id, self.parent_id
            try:
                self.log_artifact(path, artifact_path)
            finally:
                self.run_id = run_id

    def log_text(self, text: str, artifact_file: str) -> None:
        self._call("logging text", lambda: self._client.log_text(self.run_id, text, artifact_file))

    def set_tags(self, tags: dict[str, Any]) -> None:
        for k, v in tags.items():
            if v is not None:
                self._call("setting tags", lambda k=k, v=v: self._client.set_tag(self.run_id, k, str(v)))

    def log_export_model(self, export_dir: str | Path, registered_name: str | None = None,
                         tags: dict[str, Any] | None = None) -> dict[str, Any] | None:
        """Log export folder ``export_dir`` as an MLflow pyfunc model of this run (raw text in,
        label and score out; see ``PYFUNC_CODE``) and, with ``registered_name``, add a version of
        that registered model, tagged with ``tags`` and this run's pipeline run.  Retried as every
        call is; still failing, it warns and the stage goes on (not replayed later: too heavy, and
        a registry may refuse for its own reasons).  Returns ``{"model_uri", "version", "seconds"}``,
        or None when the store did not take it."""
        import tempfile

        started = time.perf_counter()
        done: dict[str, Any] = {}
        with tempfile.TemporaryDirectory(prefix="kdpipe-pyfunc-") as code:
            try:
                spec = pyfunc_spec(Path(export_dir), Path(code))
            except Exception as e:  # noqa: BLE001 - a broken export folder is the export stage's to report
                _warn(f"cannot log {export_dir} as an MLflow model ({_brief(e)})")
                return None

            def log() -> None:
                import mlflow.pyfunc
                from mlflow.models import Model

                # its serving-input check downloads the model: no progress bar in the stage's log
                with _env_set(MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR="false"):
                    done["info"] = Model.log(artifact_path=None, name=PYFUNC_NAME, flavor=mlflow.pyfunc,
                                             run_id=self.run_id, **spec)

            if not self._call_now("logging the model", log, f"{export_dir} is not in MLflow (the folder is fine)"):
                return None
        if registered_name:
            version_tags = {"kdpipe.pipeline_run": self.parent_id, "kdpipe.stage_run": self.run_id,
                            **{k: v for k, v in self.run.data.tags.items()
                               if k in ("kdpipe.dvc_exp", "kdpipe.run", "mlflow.source.git.commit")},
                            **(tags or {})}

            def register() -> None:
                if "version" not in done:
                    done["version"] = self._mlflow.register_model(
                        done["info"].model_uri, registered_name,
                        tags={k: str(v) for k, v in version_tags.items() if v is not None}).version

            if not self._call_now("registering the model", register,
                                  f"the model is logged ({done['info'].model_uri}) but not in the registry"):
                return None
        return {"model_uri": done["info"].model_uri, "version": done.get("version"),
                "seconds": round(time.perf_counter() - started, 2)}

    @property
    def mlflow(self):
        return self._mlflow

    @contextlib.contextmanager
    def child(self, name: str, tags: dict[str, Any] | None = None) -> Iterator["Tracker"]:
        """A run nested under this one (a phase of a multi-phase method, one PTP student): its
        curves get their own run in the UI.  If the store cannot open it, logging goes to this run."""
        inherited = {k: v for k, v in self.run.data.tags.items() if k.startswith("kdpipe.")}
        all_tags = {**inherited, **{k: str(v) for k, v in (tags or {}).items()}, "mlflow.parentRunId": self.run_id}
        try:
            run = _retry(lambda: self._client.create_run(self.run.info.experiment_id, run_name=name, tags=all_tags))
        except Exception as e:  # noqa: BLE001
            _warn(f"cannot open the nested run {name!r} ({type(e).__name__}); logging to {self.run.info.run_name!r}")
            yield self
            return
        child = Tracker(self._mlflow, run, self.parent_id)
        yield from _until_done(child, lambda status: [("ending the run", lambda: self._client.set_terminated(
            run.info.run_id, status))])


def _until_done(tracker: "Tracker", finish: Callable[[str], list]):
    """Yield ``tracker``; afterwards catch up and end its run(s) FINISHED, FAILED or KILLED (Ctrl-C,
    SIGTERM), each ending call as resilient as logging."""
    status = "FAILED"
    try:
        yield tracker
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        tracker._degraded_at = None  # the end of a run is worth one more full try
        lost = len(tracker._pending) if tracker._pending and not tracker._catch_up() else 0
        for what, call in finish(status):  # even when a kept call still fails: no run left RUNNING
            tracker._call_now(what, call, "the run stays RUNNING until the next stage closes it",
                              backoff=() if lost else BACKOFF_S)  # the store may be away: one try
        if lost:
            _warn(f"{lost} logging call(s) could not reach the store and are lost to MLflow "
                  f"(DVC's metrics files have them)")


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
    def log_pipeline_artifact(self, path, artifact_path=None): pass
    def log_text(self, text, artifact_file): pass
    def set_tags(self, tags): pass
    def log_export_model(self, export_dir, registered_name=None, tags=None): return None


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
    _, pid, started = invocation()
    run = client.create_run(experiment_id, run_name=name,
                            tags={INVOCATION_TAG: key, "kdpipe.kind": "pipeline", "kdpipe.host": socket.gethostname(),
                                  "kdpipe.pid": str(pid), "kdpipe.pid_started": str(started), **tags})
    return run.info.run_id


@contextlib.contextmanager
def stage_run(stage: str, *, experiment: str = "kdpipe", enabled: bool = True,
              run_name: str | None = None, tags: dict[str, Any] | None = None) -> Iterator[Tracker | NullTracker]:
    """A child MLflow run for one stage (or one method of a stage) under the pipeline's parent.

    Runs left RUNNING by a hard-killed stage of this project are marked KILLED first, and the new
    run of the same stage links to the one it resumes (tag ``kdpipe.resumes``).  A store that does
    not answer (after retries) leaves the stage untracked, with a warning."""
    if not enabled:
        yield NullTracker()
        return
    import mlflow

    try:
        run, client, parent_id = _retry(lambda: _open_stage_run(mlflow, stage, experiment, run_name, tags or {}))
    except Exception as e:  # noqa: BLE001
        _warn(f"cannot open the MLflow run ({type(e).__name__}: {str(e).splitlines()[0][:200]}); this stage "
              f"runs untracked (its metrics still go to DVC's files)")
        yield NullTracker()
        return

    def finish(status: str) -> list:
        return [("ending the run", lambda: mlflow.end_run(status)),
                ("ending the pipeline run", lambda: client.set_terminated(parent_id, status=status))]

    yield from _until_done(Tracker(mlflow, run, parent_id), finish)


@contextlib.contextmanager
def track(step: str, params=None, *, enabled: bool | None = None, run_name: str | None = None,
          tags: dict[str, Any] | None = None, echo=print) -> Iterator[Tracker | NullTracker]:
    """MLflow tracking for the Python API, when asked for: what a DVC stage gets, without DVC.

    A run named ``run_name or step`` (tag ``kdpipe.stage``) under one parent run per Python
    process (``KDPIPE_PIPELINE_RUN_ID`` pins another), in the store the stages use
    (:func:`tracking_uri`), with ``params`` (a ``Params``) logged and its ``tracking.experiment``.
    Pass the tracker as ``logger=`` to ``train_teacher``/``distill``/``pretrain_ptp`` for the
    curves, ``log_metrics`` a step's report, ``log_export_model`` an export folder.  ``enabled``
    defaults to ``params.tracking.enabled`` (True without params); off, it yields a
    ``NullTracker``.  Echoes where the run went."""
    on = enabled if enabled is not None else (params.tracking.enabled if params is not None else True)
    experiment = params.tracking.experiment if params is not None else "kdpipe"
    task = {"kdpipe.task": params.task.name} if params is not None else {}
    with stage_run(step, experiment=experiment, enabled=on, run_name=run_name,
                   tags={**task, **(tags or {})}) as tracker:
        if params is not None:
            tracker.log_params(params.model_dump())
        yield tracker
    if tracker.run_id:
        echo(f"MLflow: {run_name or step} logged as run {tracker.run_id} (pipeline run {tracker.parent_id}) "
             f"in {tracking_uri()}")


def _open_stage_run(mlflow, stage: str, experiment: str, run_name: str | None, tags: dict):
    import psutil

    root = store_root()
    mlflow.set_tracking_uri(tracking_uri(root))
    exp_id = _experiment_id(mlflow, experiment, root)
    client = mlflow.MlflowClient()
    common = {"mlflow.source.git.commit": git_commit(repo_root()), **dvc_experiment()}
    common = {k: v for k, v in common.items() if v}
    name = run_name or stage
    killed = close_orphaned_runs(client, exp_id)
    parent_id = _pipeline_parent(client, exp_id, common)
    me = psutil.Process()
    all_tags = {**common, "kdpipe.stage": stage, **{k: str(v) for k, v in tags.items() if v is not None},
                "kdpipe.host": socket.gethostname(), "kdpipe.pid": str(me.pid),
                "kdpipe.pid_started": str(int(me.create_time()))}
    resumes = [r.info.run_id for r in killed if r.info.run_name == name and r.data.tags.get("kdpipe.stage") == stage]
    if resumes:
        all_tags["kdpipe.resumes"] = resumes[0]
    while mlflow.active_run() is not None:  # a failed earlier attempt of this call left one open
        mlflow.end_run("FAILED")
    run = mlflow.start_run(experiment_id=exp_id, run_name=name, parent_run_id=parent_id, nested=True, tags=all_tags)
    return run, client, parent_id


def close_orphaned_runs(client, experiment_id: str) -> list:
    """Mark KILLED the runs still RUNNING whose process (on this host) is gone: stage runs by
    their ``kdpipe.pid`` tag, pipeline runs by their invocation's ``dvc`` process (the same tags;
    runs of older versions only have it in their invocation key).  Returns the stage runs it
    closed (best effort: a store error leaves them as they are)."""
    import psutil

    def alive(pid: str | None, started: str | None) -> bool:
        try:
            return psutil.Process(int(pid)).create_time() // 1 == int(started)
        except (psutil.Error, TypeError, ValueError):
            return False

    try:
        running = client.search_runs([experiment_id], filter_string="attributes.status = 'RUNNING'", max_results=500)
    except Exception:  # noqa: BLE001
        return []
    killed = []
    for run in running:
        tags = run.data.tags
        if tags.get("kdpipe.kind") == "pipeline" and "kdpipe.pid" not in tags:
            _, pid, started = (tags.get(INVOCATION_TAG, "") + "--").split("-")[:3]
            gone = not alive(pid, started)
        elif "kdpipe.pid" in tags and tags.get("kdpipe.host") == socket.gethostname():
            gone = not alive(tags["kdpipe.pid"], tags.get("kdpipe.pid_started"))
        else:
            continue
        if gone:
            with contextlib.suppress(Exception):
                client.set_terminated(run.info.run_id, status="KILLED")
                if tags.get("kdpipe.kind") != "pipeline":
                    killed.append(run)
    return killed


# ------------------------------------------------------------------ the export as an MLflow model
PYFUNC_NAME = "model"  # the logged model's name in its run
RUNTIME_MODULE = "kdpipe_export_runtime"  # kdpipe/export/runtime.py, shipped with the model as code
PYFUNC_REQUIREMENTS = ("mlflow", "onnxruntime", "tokenizers", "numpy", "pandas")
# The model's code, written next to the runtime when logging (MLflow "models from code": this
# MLflow refuses to unpickle a PythonModel by default).  It needs neither kdpipe nor torch.
PYFUNC_CODE = """\"\"\"kdpipe export as an MLflow pyfunc: raw text (and text_b for sentence pairs) in,
label and score out (tagging: the entities as a JSON list of type, text, start, end, score;
extractive QA: question and context in, answer, its character span and score out).
Written by kdpipe.tracking; loads kdpipe/export/runtime.py shipped as code.\"\"\"

import json

import mlflow
import pandas as pd
from mlflow.pyfunc import PythonModel


class KdpipeTextClassifier(PythonModel):
    def load_context(self, context):
        from kdpipe_export_runtime import open_export

        variant = (context.model_config or {}).get("variant", "fp32")
        self.clf = open_export(context.artifacts["export"], variant=variant)

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        batch_size = int((params or {}).get("batch_size", 32))
        if self.clf.meta.problem == "qa":
            rows = self.clf.answer(_column(model_input, "question"), _column(model_input, "context"), batch_size)
            return pd.DataFrame({"answer": [r["answer"] for r in rows], "start": [r["start"] for r in rows],
                                 "end": [r["end"] for r in rows],
                                 "score": [float("nan") if r["score"] is None else r["score"] for r in rows]})
        texts = _column(model_input, "text")
        if self.clf.meta.problem == "tagging":
            rows = self.clf.predict(texts, batch_size=batch_size)
            return pd.DataFrame({"entities": [json.dumps(r["entities"], ensure_ascii=False) for r in rows]})
        pairs = _column(model_input, "text_b") if "text_b" in model_input.columns else None
        rows = self.clf.predict(texts, pairs, batch_size=batch_size)
        scores = [r["score"] for r in rows]
        if self.clf.meta.problem == "regression":
            return pd.DataFrame({"score": scores}, dtype="float64")
        return pd.DataFrame({"label": [r["label"] for r in rows], "score": scores})


def _column(frame, name):
    values = frame[name].tolist()
    # MLflow turns {"text": [...]} into one row holding the list
    if len(values) == 1 and not isinstance(values[0], str) and hasattr(values[0], "__len__"):
        return [str(v) for v in values[0]]
    return [str(v) for v in values]


mlflow.models.set_model(KdpipeTextClassifier())
"""


def registered_model_name(experiment: str, run: str) -> str:
    """The registry name of export run ``run``: ``<tracking.experiment>-<run>`` (``kdpipe-vanilla_kd``
    with the default experiment), so that two projects sharing a server do not share a model."""
    return f"{experiment}-{run}"


def pyfunc_requirements() -> list[str]:
    """What loading the model needs, pinned to this environment (no pip inference: it is slow,
    and it may try the network)."""
    from importlib.metadata import version

    return [f"{name}=={version(name)}" for name in PYFUNC_REQUIREMENTS]


def pyfunc_spec(export_dir: Path, code: Path) -> dict[str, Any]:
    """``Model.log`` arguments for an export folder: the code (written to folder ``code``), the
    export folder as the ``export`` artifact (ONNX fp32 + int8, tokenizer, kdpipe.json), the
    signature and an input example."""
    import shutil

    import pandas as pd
    from mlflow.models import ModelSignature
    from mlflow.types.schema import ColSpec, ParamSchema, ParamSpec, Schema

    from kdpipe.export import runtime

    meta = runtime.ExportMeta.load(Path(export_dir) / runtime.EXPORT_META_FILE)
    pairs = int(meta.task.get("num_text_fields", 1)) == 2
    (code / "kdpipe_pyfunc.py").write_text(PYFUNC_CODE)
    shutil.copy(runtime.__file__, code / f"{RUNTIME_MODULE}.py")
    example = {"text": ["Peter Blackburn flew to Germany." if meta.problem == "tagging" else "A man is playing a guitar."]}
    inputs = [ColSpec("string", "text")]
    if meta.problem == "qa":
        example = {"question": ["Who won the game?"], "context": ["The Broncos beat the Panthers 24-10 to win the game."]}
        inputs = [ColSpec("string", "question"), ColSpec("string", "context")]
    elif pairs:
        example["text_b"] = ["Someone plays music."]
        inputs.append(ColSpec("string", "text_b"))
    outputs = ([ColSpec("double", "score")] if meta.problem == "regression" else
               [ColSpec("string", "entities")] if meta.problem == "tagging" else
               [ColSpec("string", "answer"), ColSpec("long", "start"), ColSpec("long", "end"),
                ColSpec("double", "score")] if meta.problem == "qa" else
               [ColSpec("string", "label"), ColSpec("double", "score")])
    signature = ModelSignature(inputs=Schema(inputs), outputs=Schema(outputs),
                               params=ParamSchema([ParamSpec("batch_size", "long", 32)]))
    return {"python_model": str(code / "kdpipe_pyfunc.py"), "code_paths": [str(code / f"{RUNTIME_MODULE}.py")],
            "artifacts": {"export": str(Path(export_dir).resolve())}, "signature": signature,
            "input_example": pd.DataFrame(example), "pip_requirements": pyfunc_requirements(),
            "model_config": {"variant": "fp32"}}
