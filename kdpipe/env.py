"""Process-wide defaults that must be set before transformers/datasets/mlflow are imported."""

from __future__ import annotations

import os
from pathlib import Path

OFFLINE_DEFAULTS = {
    # No hub traffic unless the user opts in (HF_HUB_OFFLINE=0): a typo in a local path must
    # not silently become a download attempt.
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "true",
    "DVC_NO_ANALYTICS": "1",
    "TOKENIZERS_PARALLELISM": "false",
}


def apply_defaults() -> None:
    for key, value in OFFLINE_DEFAULTS.items():
        os.environ.setdefault(key, value)


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
