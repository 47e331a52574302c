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


def save_splits(folder: str | Path, spec: TaskSpec, splits: dict[str, pd.DataFrame],
                qa_windows: dict | None = None) -> None:
    """``qa_windows`` (extractive QA): ``doc_stride`` and ``max_answer_length``, kept with the
    splits so that every stage cuts the same windows and a change re-runs what reads them."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for name, frame in splits.items():
        frame.to_parquet(folder / f"{name}.parquet", index=False)
    summary = {name: len(frame) for name, frame in splits.items()}
    meta = {"task": spec.to_dict(), "rows": summary, **({"qa_windows": qa_windows} if qa_windows else {})}
    (folder / TASK_FILE).write_text(json.dumps(meta, indent=2))


def qa_settings(folder: str | Path) -> dict:
    """The prepared QA task's ``doc_stride`` and ``max_answer_length``."""
    return json.loads((Path(folder) / TASK_FILE).read_text())["qa_windows"]


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




class QADataset(Dataset):
    """Extractive QA: one row per window of question + context (``data.squad.make_windows``), so
    training batches, the teacher cache and inference all address windows by row; ``examples``
    keeps the questions, ``windows.example_index`` which question each window reads.  Windows
    are token ids of one tokenizer: teacher and student read the same ones (QA's preflight
    refuses a student with another vocabulary)."""

    def __init__(self, frame: pd.DataFrame, tokenizer, max_length: int, doc_stride: int,
                 max_answer_length: int = 30):
        from kdpipe.data.squad import QAExample, make_windows

        self.examples = [QAExample(str(r.id), r.text_a, r.text_b, [str(a) for a in r.answers],
                                   [int(a) for a in r.answer_starts]) for r in frame.itertuples(index=False)]
        self.windows = make_windows(self.examples, tokenizer, max_length, doc_stride)
        self.windows_stride, self.max_answer_length = doc_stride, max_answer_length
        self.text_a = self.text_b = None  # no raw text per row: the rows are token windows

    def __len__(self) -> int:
        return len(self.windows.input_ids)

    def __getitem__(self, i: int) -> dict:
        w = self.windows
        return {"index": i, "input_ids": w.input_ids[i],
                "token_type_ids": None if w.token_type_ids is None else w.token_type_ids[i],
                "label": (w.start_positions[i], w.end_positions[i]), "example": w.example_index[i]}

    def references(self):
        """Each question's reference answers ([] = unanswerable): [Q] object array of lists."""
        from kdpipe.data.squad import object_array

        return object_array([list(e.answers) for e in self.examples])

    def answers(self, logits):
        """Window logits [windows, 2, L] -> each question's best answer over its windows ([Q]
        object array of str; SQuAD's post-processing, ``data.squad.question_answers``)."""
        from kdpipe.data.squad import object_array, question_answers

        return object_array(question_answers(self.examples, self.windows, logits[:, 0], logits[:, 1],
                                             self.max_answer_length))


def load_datasets(folder: str | Path, tokenizer=None, max_length: int | None = None) -> tuple[TaskSpec, dict[str, Dataset]]:
    """The prepared splits as datasets: ``TextDataset`` rows, or for extractive QA ``QADataset``
    windows, which need the ``tokenizer`` and ``max_length`` (the stride is the prepared data's)."""
    spec, frames = load_splits(folder)
    if spec.problem != "qa":
        return spec, {name: TextDataset(frame) for name, frame in frames.items()}
    if tokenizer is None or max_length is None:
        raise ValueError("extractive QA datasets are token windows: pass the tokenizer and max_length")
    qa = qa_settings(folder)
    return spec, {name: QADataset(frame, tokenizer, max_length, qa["doc_stride"], qa["max_answer_length"])
                  for name, frame in frames.items()}
