"""Stage ``data``: load the task and write tokenizer-independent splits."""

from __future__ import annotations

from pathlib import Path

from kdpipe.config import Params
from kdpipe.data.splits import save_splits
from kdpipe.data.tasks import load_task
from kdpipe.files import atomic_dir


def prepare_data(params: Params, root: Path, out_dir: Path) -> dict[str, int]:
    spec, splits = load_task(params.task, params.seed, root)
    with atomic_dir(out_dir) as tmp:
        save_splits(tmp, spec, splits)
    return {name: len(frame) for name, frame in splits.items()}
