"""Prepared splits on disk (the data stage's output) and the dataset that reads them.

Splits are stored tokenizer-independent (raw text + label) so the teacher and the student can
use different tokenizers.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
from torch.utils.data import Dataset

from kdpipe.data.tasks import TaskSpec

SPLITS = ("train", "dev", "test")
TASK_FILE = "task.json"  # the prepared folder's TaskSpec and row counts


def save_splits(folder: str | Path, spec: TaskSpec, splits: dict[str, pd.DataFrame]) -> None:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for name, frame in splits.items():
        frame.to_parquet(folder / f"{name}.parquet", index=False)
    summary = {name: len(frame) for name, frame in splits.items()}
    (folder / TASK_FILE).write_text(json.dumps({"task": spec.to_dict(), "rows": summary}, indent=2))


def load_splits(folder: str | Path) -> tuple[TaskSpec, dict[str, pd.DataFrame]]:
    folder = Path(folder)
    meta_file = folder / TASK_FILE
    if not meta_file.exists():
        raise FileNotFoundError(f"{meta_file}: no prepared data here; run the data stage first (dvc repro data)")
    spec = TaskSpec.from_dict(json.loads(meta_file.read_text())["task"])
    splits = {s: pd.read_parquet(folder / f"{s}.parquet") for s in SPLITS if (folder / f"{s}.parquet").exists()}
    return spec, splits


class TextDataset(Dataset):
    """Rows of (index, text_a, text_b | None, label); the index addresses teacher caches.  A
    tagging task's text_a is a list of words and its label a list of tag ids, one per word."""

    def __init__(self, frame: pd.DataFrame):
        self.text_a = frame["text_a"].tolist()
        self.text_b = frame["text_b"].tolist() if "text_b" in frame else None
        self.labels = frame["label"].tolist()
        if self.text_a and not isinstance(self.text_a[0], str):  # parquet gives lists back as arrays
            self.text_a = [[str(w) for w in words] for words in self.text_a]
            self.labels = [[int(t) for t in tags] for tags in self.labels]

    def __len__(self) -> int:
        return len(self.text_a)

    def __getitem__(self, i: int) -> dict:
        return {"index": i, "text_a": self.text_a[i],
                "text_b": None if self.text_b is None else self.text_b[i], "label": self.labels[i]}




def load_datasets(folder: str | Path) -> tuple[TaskSpec, dict[str, "TextDataset"]]:
    """The prepared splits as datasets."""
    spec, frames = load_splits(folder)
    return spec, {name: TextDataset(frame) for name, frame in frames.items()}
