"""Stage ``data``: load the task and write tokenizer-independent splits."""

from __future__ import annotations

from pathlib import Path

from kdpipe.config import ConfigError, Params
from kdpipe.data.splits import save_splits
from kdpipe.data.tasks import load_task
from kdpipe.files import atomic_dir


def prepare_data(params: Params, root: Path, out_dir: Path) -> dict[str, int]:
    spec, splits = load_task(params.task, params.seed, root)
    qa = {"doc_stride": params.task.doc_stride, "max_answer_length": params.task.max_answer_length} \
        if spec.problem == "qa" else None
    if qa and params.task.doc_stride >= params.max_length:
        raise ConfigError(f"task.doc_stride ({params.task.doc_stride}) must be below max_length ({params.max_length})")
    with atomic_dir(out_dir) as tmp:
        save_splits(tmp, spec, splits, qa)
    return {name: len(frame) for name, frame in splits.items()}
