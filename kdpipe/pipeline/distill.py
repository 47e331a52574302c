"""Stage ``distill@<run>``: distil run ``<run>`` of ``distill.runs`` once per seed of
``distill.seeds``, one student each.

Three named steps: ``setup_run`` (data, teacher, student, method, teacher cache), ``train_phase``
(once per phase of the method, each starting from the student the previous phase selected) and
``summarize``; ``distill`` runs them and saves the student.  One process trains all of a run's
seeds (its start-up, 7-10 s of imports and tracking, is paid once): ``seed_fingerprint`` lets the
stage keep a seed's student that nothing it depends on has changed since (a seed added to
``distill.seeds`` trains only the new one), and ``remove_other_seeds`` drops the seeds no longer listed.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
from torch.utils.data import ConcatDataset, Dataset

from kdpipe.config import ConfigError, Params, RunConfig, StudentConfig, student_name
from kdpipe.data.batches import DistillCollator, Encoder
from kdpipe.data.splits import TextDataset, load_datasets
from kdpipe.data.tasks import TaskSpec, supplementary_frame
from kdpipe.env import repo_root
from kdpipe.evaluation.cards import model_card, student_card_facts
from kdpipe.files import write_csv
from kdpipe.methods.base import Method
from kdpipe.methods.mapping import format_rows
from kdpipe.methods.registry import build_run_method, run_student
from kdpipe.models.adapters import num_layers
from kdpipe.models.loading import count_parameters, encoder_for, load_classifier, load_tokenizer, read_model_meta
from kdpipe.models.students import make_student
from kdpipe.evaluation.predict import split_outputs
from kdpipe.pipeline.common import save_trained, split_outputs_key, summary, with_main_metric
from kdpipe.pipeline.ptp import ptp_encoder_dir
from kdpipe.pipeline.teacher_outputs import open_cache
from kdpipe.training.checkpoints import finished_phase, fingerprint, mark_phase_done, remove_checkpoints
from kdpipe.training.engine import is_main_process, train
from kdpipe.training.phases import PhaseOutcome, merge_phases, phase_run
from kdpipe.training.teacher_cache import TeacherCache


@dataclass
class RunSetup:
    """Everything a run's phases share, built once."""

    name: str                   # the run
    seed: int                   # the student's seed (data order, dropout, fresh heads, method draws)
    run: RunConfig
    spec: TaskSpec
    sets: dict[str, TextDataset]
    teacher: torch.nn.Module
    tokenizer: object
    student: torch.nn.Module
    student_cfg: StudentConfig
    layers: list[int]           # teacher layers the student was cut from
    init_source: str            # where its weights came from: teacher, pretrained or ptp:<name>
    method: Method
    mapping: list[dict]         # the resolved layer mapping as rows ([] without one)
    cache: TeacherCache | None
    student_encoder: Encoder
    teacher_encoder: Encoder
    inputs: str                 # fingerprint of the run's inputs; each phase adds its own settings
    supplementary: Dataset | None
    supplementary_hash: str | None

    @property
    def model_name(self) -> str:
        """``<run>/seed-<seed>``: the student's folders and MLflow run (``config.student_name``)."""
        return student_name(self.name, self.seed)

    @property
    def multi_phase(self) -> bool:
        """Each phase then has its own nested MLflow run, checkpoint folder and curves."""
        return len(self.method.phases) > 1


def setup_run(params: Params, run_name: str, data_dir: Path, teacher_dir: Path,
              teacher_cache_dir: Path | None = None, ptp_dir: Path = Path("models/ptp"), echo=print,
              seed: int | None = None) -> RunSetup:
    """``seed``: the student's seed; None = the first of ``distill.seeds``."""
    run = params.distill.runs[run_name]
    seed = params.distill.seeds[0] if seed is None else seed
    teacher = load_classifier(teacher_dir)
    tokenizer = load_tokenizer(teacher_dir)
    spec, sets = load_datasets(data_dir, tokenizer, params.max_length)
    regression = spec.problem == "regression"
    student_cfg = run_student(params, run_name)
    ptp_source = ptp_encoder_dir(ptp_dir, student_cfg, echo) if student_cfg.init == "ptp" else None
    student, layers = make_student(student_cfg, teacher, teacher_dir, seed, ptp_source)
    # init: ptp falls back to the teacher's layers where the ptp stage skipped PTP (regression)
    init_source = f"ptp:{ptp_source.name}" if ptp_source else \
        ("teacher" if student_cfg.init == "ptp" else student_cfg.init)
    method = build_run_method(params, run_name, teacher.config, regression, seed=seed)
    mapping = method.mapping_table()
    if mapping:
        echo(format_rows(mapping, f"[{run_name}] {run.method} layer mapping"))
    cache = open_cache(params, teacher_cache_dir, teacher_dir, data_dir, len(sets["train"])) \
        if method.needs_teacher else None
    # Hashed once per run (the teacher's weights and the data are read here), then per phase.
    inputs = fingerprint("distill", run_name, run.model_dump(), student_cfg.model_dump(), seed,
                         params.max_length, data_dir, teacher_dir, ptp_source, code=__name__)
    extra, extra_hash = supplementary_set(params, run_name, spec) if run.supplementary else (None, None)
    return RunSetup(run_name, seed, run, spec, sets, teacher, tokenizer, student, student_cfg, layers, init_source,
                    method, mapping, cache, encoder_for(student, tokenizer, params.max_length),
                    encoder_for(teacher, tokenizer, params.max_length), inputs, extra, extra_hash)


def train_phase(params: Params, setup: RunSetup, phase: str, checkpoint_dir: Path, logger=None) -> PhaseOutcome:
    """Train (or, if it already finished under the same inputs, reload) one phase of the run."""
    method, run_name = setup.method, setup.name
    method.set_phase(phase)
    cfg = params.run_train_config(run_name, phase, method.phase_train(phase))
    cached = setup.cache is not None and method.teacher_cacheable
    live_teacher = method.needs_teacher and not cached
    # The teacher's inputs are only tokenised when the teacher runs live.
    collator = DistillCollator(setup.student_encoder, setup.teacher_encoder if live_teacher else None,
                               setup.spec.problem == "regression")
    # Supplementary unlabeled text joins the phases whose losses never read labels.
    train_set = setup.sets["train"]
    if setup.supplementary is not None and phase in method.label_free_phases:
        if cached:  # cache rows are addressed by train index; supplementary rows have none
            raise ConfigError(f"distill.runs.{run_name}.supplementary: phase {phase} reads the teacher cache")
        train_set = ConcatDataset([setup.sets["train"], setup.supplementary])
    name = f"{setup.model_name}/{phase}" if setup.multi_phase else setup.model_name
    inputs = fingerprint(setup.inputs, phase, cfg.model_dump(), cached, len(train_set),
                         setup.supplementary_hash if train_set is not setup.sets["train"] else None, code=__name__)
    phase_dir = Path(checkpoint_dir) / phase if setup.multi_phase else Path(checkpoint_dir)
    with phase_run(logger, name if setup.multi_phase else None,
                   {"kdpipe.phase": phase, "kdpipe.method": setup.run.method}) as tracker:
        if setup.multi_phase and tracker is not None:
            tracker.log_params({"phase": phase, "train": cfg.model_dump(), "train_examples": len(train_set)})
        result = finished_phase(phase_dir, inputs, setup.student)
        if result is None:
            result = train(setup.student, method, setup.spec, train_set, setup.sets["dev"], collator, cfg,
                           seed=setup.seed, checkpoint_dir=phase_dir, fingerprint=inputs,
                           teacher=setup.teacher if live_teacher else None,
                           teacher_cache=setup.cache if cached else None, logger=tracker, desc=name)
            if setup.multi_phase:
                mark_phase_done(phase_dir, inputs, result)
        if setup.multi_phase and tracker is not None:
            tracker.log_metrics({"best_dev": result.best_dev, "last_dev": result.last_dev})
    signal = "cache" if cached else ("live" if method.needs_teacher else "none")
    return PhaseOutcome(result, cfg, signal, len(train_set))


def summarize(setup: RunSetup, outcomes: dict[str, PhaseOutcome]) -> dict:
    """The run's metrics file: the final phase's result, the student, and per-phase details."""
    spec = setup.spec
    final = outcomes[setup.method.phases[-1]].result
    out = {**summary(final, spec), "total_steps": sum(summary(o.result, spec)["steps"] for o in outcomes.values()),
           "method": setup.run.method, "init_layers": setup.layers,
           "student": {**setup.student_cfg.model_dump(), "init_source": setup.init_source,
                       "effective_layers": num_layers(setup.student),
                       "parameters": count_parameters(setup.student)},
           "teacher_signal": {p: o.teacher_signal for p, o in outcomes.items()}}
    if setup.multi_phase:
        out["phases"] = {p: {**summary(o.result, spec), "train": o.train.model_dump(),
                             "train_examples": o.train_examples} for p, o in outcomes.items()}
    if setup.mapping:
        out["mapping"] = setup.mapping
    records = {p: o.result.epoch_records for p, o in outcomes.items() if o.result.epoch_records}
    if records:
        out["epoch_records"] = records
    return out


def write_phase_curves(plots_dir: Path, setup: RunSetup, outcomes: dict[str, PhaseOutcome]) -> None:
    """A train and a dev curve per phase, each from step 0 (plots/phases/<run>/seed-<seed>/<phase>_*.csv)."""
    folder = Path(plots_dir) / "phases" / setup.model_name
    shutil.rmtree(folder, ignore_errors=True)
    for phase, o in outcomes.items():
        write_csv(folder / f"{phase}_train.csv", o.result.train_curve)
        write_csv(folder / f"{phase}_dev.csv", with_main_metric(o.result.dev_curve, setup.spec.main_metric))


def distill(params: Params, run_name: str, data_dir: Path, teacher_dir: Path, out_dir: Path,
            checkpoint_dir: Path, plots_dir: Path, logger=None, teacher_cache_dir: Path | None = None,
            ptp_dir: Path = Path("models/ptp"), echo=print, seed: int | None = None,
            inputs_fingerprint: str | None = None) -> dict:
    """Distil one student with run ``run_name`` under ``seed`` (None = the first of
    ``distill.seeds``) and save it to ``out_dir``; returns its summary.  ``teacher_cache_dir``
    (the teacher_outputs stage's folder) replaces the live teacher where the method's teacher
    signal is cached.  ``inputs_fingerprint`` (``seed_fingerprint``) is kept in the student's
    ``kdpipe.json``, for ``is_current``."""
    setup = setup_run(params, run_name, data_dir, teacher_dir, teacher_cache_dir, ptp_dir, echo, seed)
    started = time.perf_counter()
    outcomes = {phase: train_phase(params, setup, phase, checkpoint_dir, logger) for phase in setup.method.phases}
    result = summarize(setup, outcomes)
    # the cost the report compares: this process's training time (a resumed run counts only its rest)
    result["train_seconds"] = round(time.perf_counter() - started, 1)
    if setup.multi_phase and is_main_process():
        write_phase_curves(plots_dir, setup, outcomes)
    curve = merge_phases({p: o.result for p, o in outcomes.items()})
    # dev/test outputs of the selected weights, scored by the evaluate stage without predicting again
    outputs = None
    if is_main_process():
        collator = DistillCollator(setup.student_encoder, None, setup.spec.problem == "regression")
        outputs = (split_outputs(setup.student, setup.sets, collator), split_outputs_key(data_dir, params.max_length))
    save_trained(setup.student, setup.tokenizer, out_dir, plots_dir, setup.model_name, curve, setup.spec, {
        "role": "student", "run": run_name, "seed": setup.seed, "method": setup.method.describe(), "init_layers": setup.layers,
        "task": setup.spec.to_dict(), "max_length": params.max_length, "training": result,
        "inputs_fingerprint": inputs_fingerprint},
        card=model_card(student_card_facts(params, run_name, setup.seed, result, setup.spec.to_dict())), outputs=outputs)
    remove_checkpoints(checkpoint_dir)
    return result


def supplementary_set(params: Params, run_name: str, spec: TaskSpec) -> tuple[TextDataset, str]:
    """The run's supplementary unlabeled inputs (another task's train texts, or a text file) in
    this task's format, and a hash of their content (a file edited in place is a new input);
    labels are placeholders, never read by the phases that use them."""
    frame = supplementary_frame(params.distill.runs[run_name].supplementary, params.task, spec, params.seed,
                                repo_root(), where=f"distill.runs.{run_name}.supplementary")
    return TextDataset(frame), str(int(pd.util.hash_pandas_object(frame, index=True).sum()))


def seed_fingerprint(params: Params, run_name: str, inputs: list[Path]):
    """``seed -> hash`` of everything one seed's student depends on: what the stage's DVC entry
    lists (the run's params, the shared distill and student settings, the data options, the input
    folders and files ``inputs``, and the code), but for the other seeds.  The folders are read
    once, here."""
    run = params.distill.runs[run_name]
    # folders are read whole; a file by its bytes, a missing one by its name (never a path: the
    # same project elsewhere has the same fingerprints)
    contents = [p if p.is_dir() else (p.read_bytes().hex() if p.is_file() else f"missing {p.name}")
                for p in map(Path, inputs)]
    shared = fingerprint("distill", run_name, run.model_dump(), run_student(params, run_name).model_dump(),
                         params.seed, params.max_length, params.task.model_dump(), params.student.model_dump(),
                         params.distill.train.model_dump(), params.distill.teacher_cache.model_dump(),
                         *contents, code=__name__)
    return lambda seed: f"{shared}-seed-{seed}"  # the code and folders are already in `shared`


def is_current(out_dir: Path, metrics_file: Path, inputs_fingerprint: str) -> bool:
    """Whether ``out_dir`` holds a student trained under ``inputs_fingerprint``, with its metrics file."""
    try:
        return Path(metrics_file).is_file() and read_model_meta(out_dir).get("inputs_fingerprint") == inputs_fingerprint
    except (FileNotFoundError, ValueError):  # no student yet, or a half-read meta file
        return False


def remove_other_seeds(params: Params, run_name: str, root: Path) -> list[int]:
    """Delete run ``run_name``'s students, metrics and curves of seeds no longer in ``distill.seeds``
    (the stage's outputs then hold exactly the listed seeds); returns those seeds."""
    keep = {f"seed-{seed}" for seed in params.distill.seeds}
    removed = set()
    folders = [root / "models/students" / run_name, root / "metrics/distill" / run_name,
               root / "plots/train" / run_name, root / "plots/dev" / run_name, root / "plots/phases" / run_name]
    for folder in folders:
        for item in folder.glob("seed-*") if folder.is_dir() else []:
            stem = item.name.removesuffix(".json").removesuffix(".csv")
            if stem not in keep and stem.removeprefix("seed-").isdigit():
                shutil.rmtree(item) if item.is_dir() else item.unlink()
                removed.add(int(stem.removeprefix("seed-")))
    return sorted(removed)
