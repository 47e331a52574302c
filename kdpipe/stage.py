"""What every DVC stage script does around its one call into kdpipe: read and validate
params.yaml, open its MLflow child run, and turn expected failures into one clear line."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from kdpipe.config import ConfigError, Params, load_params
from kdpipe.env import apply_defaults, repo_root
from kdpipe.files import remove_stale_temporaries

# Where stages write: a hard-killed stage's temporary siblings are removed from these at the
# start of every stage, whichever stage it is.
OUTPUT_FOLDERS = ("data", "models", "exports", "metrics", "plots", "checkpoints")


@dataclass
class StageContext:
    params: Params
    root: Path
    tracker: Any  # kdpipe.tracking.Tracker or NullTracker
    is_main: bool = True  # False on ranks > 0 under `accelerate launch`: they neither log nor write
    name: str = ""
    sections: Sequence[str] = ()
    tags: dict[str, Any] | None = None

    def path(self, relative: str) -> Path:
        return self.root / relative

    def track(self, run_name: str, tags: dict[str, Any] | None = None):
        """One more MLflow run of this stage under the pipeline's parent, with the stage's params
        sections logged (a stage that trains several models: one run per model, in turn)."""
        return _stage_run(self.name, self.params, self.is_main, run_name, {**(self.tags or {}), **(tags or {})},
                          self.sections)


@contextlib.contextmanager
def _stage_run(name: str, params: Params, is_main: bool, run_name: str | None, tags: dict[str, Any],
               sections: Sequence[str]):
    """The stage's MLflow run (``tracking.stage_run``) with its params sections logged."""
    from kdpipe.tracking import stage_run

    dumped = params.model_dump()
    with stage_run(name, experiment=params.tracking.experiment, enabled=params.tracking.enabled and is_main,
                   run_name=run_name, tags={"kdpipe.task": params.task.name, **tags}) as tracker:
        tracker.log_params({key: dumped[key] for key in sections})
        yield tracker


def _user_errors() -> tuple[type[BaseException], ...]:
    from kdpipe.data.tasks import TaskDataError
    from kdpipe.models.sources import ModelError
    from kdpipe.pipeline.export import ExportCheckError
    return ConfigError, ModelError, TaskDataError, ExportCheckError, FileNotFoundError


def _fail(stage_name: str, error: BaseException, code: int):
    """One line naming what is wrong, no traceback: these are the user's input errors."""
    print(f"kdpipe {stage_name}: error: {error}", file=sys.stderr)
    raise SystemExit(code) from None


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


@contextlib.contextmanager
def stage(name: str, sections: list[str], run_name: str | None = None,
          tags: dict[str, Any] | None = None, reads: Sequence[str] = (), models: bool = True,
          tracked: bool = True) -> Iterator[StageContext]:
    """``sections`` are the params.yaml sections this stage reads (logged as the run's params);
    ``reads`` the model folders it loads (checked in the preflight, before any work).
    ``models=False``: a stage that reads only reports (summary) skips the preflight against the
    models' shapes, and with it the torch and transformers imports (8 of its 9 s).
    ``tracked=False``: no MLflow run for the stage itself; it opens one per model it trains
    (``StageContext.track``)."""
    # SIGTERM (a scheduler, `kill`) unwinds like Ctrl-C, so temporary outputs are cleaned up
    # and the MLflow run is marked KILLED instead of the process vanishing mid-write.
    apply_defaults()
    signal.signal(signal.SIGTERM, _raise_interrupt)
    root = repo_root()
    if os.environ.get("RANK", "0") == "0":  # one process of a multi-process launch cleans
        remove_stale_temporaries(root, OUTPUT_FOLDERS)
    try:
        params = load_params(root / "params.yaml")
        if models:
            from kdpipe.pipeline.preflight import preflight
            preflight(params, [root / r for r in reads])
        if params.tracking.enabled:
            from kdpipe.tracking import check_store
            check_store()
    except _user_errors() as e:
        _fail(name, e, code=2)
    from kdpipe.tracking import NullTracker

    if models:
        from kdpipe.training.engine import is_main_process
        is_main = is_main_process()
    else:  # a single process: no launcher, no torch
        is_main = os.environ.get("RANK", "0") == "0"
    run = _stage_run(name, params, is_main, run_name, tags or {}, sections) if tracked \
        else contextlib.nullcontext(NullTracker())
    with run as tracker:
        try:
            yield StageContext(params, root, tracker, is_main, name, sections, tags)
        except _user_errors() as e:
            _fail(name, e, code=1)
