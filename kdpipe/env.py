"""Process-wide defaults, applied once by the entry points (``kdpipe.stage``, ``kdpipe.cli``,
benchmarks, tests) before transformers/datasets/mlflow are imported.  Importing a kdpipe module
never changes them: a library user who wants them calls ``apply_defaults()``."""

from __future__ import annotations

import logging
import os
from pathlib import Path

OFFLINE_DEFAULTS = {
    # No hub traffic unless the user opts in (HF_HUB_OFFLINE=0): a typo in a local path must
    # not silently become a download attempt.
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
    # transformers v5's LOAD REPORT lists every new task head as MISSING: expected, so errors only
    "TRANSFORMERS_VERBOSITY": "error",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "true",
    "DVC_NO_ANALYTICS": "1",
    "TOKENIZERS_PARALLELISM": "false",
}


class _DropSharedTensorNote(logging.Filter):
    """Accelerate warns on every checkpoint of a model with shared tensors (SPS students) that it
    saved each tensor once; that is the intent, and reloading is tested (tests/test_engine.py)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Removed shared tensor" not in record.getMessage()


_applied = False


def apply_defaults() -> None:
    """Set ``OFFLINE_DEFAULTS`` where the environment does not already, and the log filters."""
    global _applied
    if _applied:
        return
    for key, value in OFFLINE_DEFAULTS.items():
        os.environ.setdefault(key, value)
    logging.getLogger("accelerate.utils.other").addFilter(_DropSharedTensorNote())
    _applied = True


def repo_root(start: str | Path | None = None) -> Path:
    """Where a stage reads and writes artifacts: the nearest folder with dvc.yaml.

    Not $DVC_ROOT: for a queued ``dvc exp run`` that names the user's workspace while the stage
    runs in a temporary copy, and writing there would clobber the workspace.
    """
    here = Path(start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "dvc.yaml").exists():
            return folder
    return here
