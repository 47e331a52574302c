"""One function per pipeline step; the DVC stages in ``stages/`` are thin wrappers around these.

Usable without DVC: ``prepare_data`` → ``train_teacher`` → ``distill`` → ``evaluate_models`` →
``export_student``, each taking the validated ``Params`` and explicit folders.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from accelerate.utils import set_seed
from torch.utils.data import ConcatDataset, DataLoader

from kdpipe.artifacts import atomic_dir, write_csv, write_json
from kdpipe.config import ConfigError, Params, StudentConfig
from kdpipe.data import DistillCollator, Encoder, TextDataset, load_splits, model_input_names, save_splits
from kdpipe.engine import TrainResult, is_main_process, train
from kdpipe.env import repo_root
from kdpipe.evaluation import evaluate_split, torch_latency
from kdpipe.mapping import format_rows
from kdpipe.methods import METHODS, MethodConfigError, ModelShape, Shapes, build_method
from kdpipe.methods.base import FineTune, MethodParams
from kdpipe.models import (ModelError, build_student, count_parameters, load_classifier, load_encoder,
                           load_tokenizer, model_file_bytes, num_layers, resolve_model_path, save_model,
                           select_layers, set_attention_heads, with_new_head)
from kdpipe.sps import apply_sps, physical_layers, sps_settings
from kdpipe.taps import num_heads
from kdpipe.tasks import TaskDataError, TaskSpec, check_supplementary, load_task


# ----------------------------------------------------------------------------------- preflight
def preflight(params: Params) -> None:
    """Cheap checks run by every stage before any work: an unknown task, a missing teacher
    package/path, a student deeper than the teacher (read from the teacher's config), or a run
    whose layer mapping, widths or head counts cannot work fail here."""
    from transformers import AutoConfig

    from kdpipe.tasks import get_task

    problem = params.task.problem or "classification"
    if params.task.name != "custom":
        problem = get_task(params.task.name).problem  # an unknown name fails here, listing the known ones
    config = AutoConfig.from_pretrained(resolve_model_path(params.teacher.model))
    depth = getattr(config, "num_hidden_layers", None) or config.n_layers  # DistilBERT: n_layers
    select_layers(depth, params.student.num_layers, params.student.layers)
    # Mappings, widths and head counts of every run, against the real shapes (cheap: no weights).
    for run_name in params.distill.runs:
        student = params.run_student(run_name)
        try:
            select_layers(depth, student.num_layers, student.layers)
        except ModelError as e:
            raise ConfigError(f"params.yaml: distill.runs.{run_name}: {e}") from None
        build_run_method(params, run_name, config, regression=problem == "regression")
        extra = params.distill.runs[run_name].supplementary
        if extra is not None:
            try:
                check_supplementary(extra, params.task, repo_root(), f"distill.runs.{run_name}.supplementary")
            except TaskDataError as e:
                raise ConfigError(f"params.yaml: {e}") from None


# ---------------------------------------------------------------------------------------- data
def prepare_data(params: Params, root: Path, out_dir: Path) -> dict[str, int]:
    spec, splits = load_task(params.task, params.seed, root)
    with atomic_dir(out_dir) as tmp:
        save_splits(tmp, spec, splits)
    return {name: len(frame) for name, frame in splits.items()}


def _datasets(data_dir: Path) -> tuple[TaskSpec, dict[str, TextDataset]]:
    spec, splits = load_splits(data_dir)
    return spec, {name: TextDataset(frame) for name, frame in splits.items()}


def _fingerprint(*parts) -> str:
    """Hash of configs, input files and kdpipe's own code: a resumable checkpoint is only reused
    by a run with the same inputs and the same code."""
    h = hashlib.sha256()
    for source in sorted(Path(__file__).parent.rglob("*.py")):
        h.update(source.read_bytes())
    for part in parts:
        if isinstance(part, Path) and part.is_dir():
            for f in sorted(part.rglob("*")):
                if f.is_file():
                    h.update(f.name.encode())
                    h.update(f.read_bytes())
        else:
            h.update(json.dumps(part, sort_keys=True, default=str).encode())
    return h.hexdigest()[:16]


def _write_curves(plots_dir: Path, name: str, result: TrainResult, spec: TaskSpec) -> None:
    write_csv(plots_dir / "train" / f"{name}.csv", result.train_curve)
    write_csv(plots_dir / "dev" / f"{name}.csv", _with_main(result.dev_curve, spec.main_metric))


def _with_main(rows: list[dict], main: str) -> list[dict]:
    return [{"step": r["step"], "main_metric": r[main], **r} for r in rows]


def _save_trained(model, tokenizer, out_dir: Path, plots_dir: Path, name: str, result: TrainResult,
                  spec: TaskSpec, meta: dict) -> None:
    """Model folder (atomically) and curves; under a multi-process launch, rank 0 alone writes."""
    if is_main_process():
        with atomic_dir(out_dir) as tmp:
            save_model(model, tokenizer, tmp, extra=meta)
        _write_curves(plots_dir, name, result, spec)


def _summary(result: TrainResult, spec: TaskSpec) -> dict:
    return {"selected": result.selected, "best_step": result.best_step,
            "best_dev": result.best_dev, "last_dev": result.last_dev, "main_metric": spec.main_metric,
            "steps": result.train_curve[-1]["step"] if result.train_curve else 0}


# ------------------------------------------------------------------------------------- teacher
def train_teacher(params: Params, data_dir: Path, out_dir: Path, checkpoint_dir: Path, plots_dir: Path,
                  logger=None) -> dict:
    spec, sets = _datasets(data_dir)
    base = resolve_model_path(params.teacher.model)
    tokenizer = load_tokenizer(base)
    set_seed(params.seed)  # the new classification head is drawn from the RNG
    model = load_classifier(base, spec.num_labels, spec.problem)
    if spec.labels:
        model.config.id2label = dict(enumerate(spec.labels))
        model.config.label2id = {name: i for i, name in enumerate(spec.labels)}
    collator = DistillCollator(Encoder(tokenizer, model_input_names(model, tokenizer), params.max_length),
                               None, spec.problem == "regression")
    method = FineTune(MethodParams(), regression=spec.problem == "regression")
    fingerprint = _fingerprint("teacher", params.teacher.model_dump(), params.seed, params.max_length, data_dir)
    result = train(model, method, spec, sets["train"], sets["dev"], collator, params.teacher.train,
                   seed=params.seed, checkpoint_dir=checkpoint_dir, fingerprint=fingerprint, logger=logger,
                   desc="teacher")
    summary = _summary(result, spec)
    _save_trained(model, tokenizer, out_dir, plots_dir, "teacher", result, spec, {
        "role": "teacher", "base_model": params.teacher.model, "task": spec.to_dict(),
        "max_length": params.max_length, "training": summary})
    return summary


# ------------------------------------------------------------------------------------- distill
def _read_meta(model_dir: Path) -> dict:
    return json.loads((Path(model_dir) / "kdpipe.json").read_text())


def make_student(params: Params, student_cfg: StudentConfig, teacher: torch.nn.Module, teacher_dir: Path,
                 ptp_source: Path | None = None,
                 head: Sequence[str] | None = None) -> tuple[torch.nn.Module, list[int]]:
    """The student of ``student_cfg``: teacher layers chosen by ``layers``, taken from the
    fine-tuned teacher (``init: teacher``, head included) or from the teacher's pre-trained
    checkpoint (``pretrained``, fresh head); then the encoder of the PTP student in
    ``ptp_source`` (``init: ptp``, fresh task head: its 4-way head is dropped), a fresh head for
    ``head`` labels instead of the task's (the PTP stage's own students), and SPS when ``sps``."""
    layers = select_layers(num_layers(teacher), student_cfg.num_layers, student_cfg.layers)
    set_seed(params.seed)  # fresh heads are drawn from the RNG
    if student_cfg.init == "pretrained":
        base = resolve_model_path(_read_meta(teacher_dir)["base_model"])
        source = load_classifier(base, teacher.config.num_labels,
                                 "regression" if teacher.config.problem_type == "regression" else None)
        source.config.id2label, source.config.label2id = teacher.config.id2label, teacher.config.label2id
        student = build_student(source, layers)
    else:  # teacher; or ptp, whose encoder replaces these layers' weights next
        student = build_student(teacher, layers)
    if ptp_source is not None or head is not None:
        student = with_new_head(student, head or [teacher.config.id2label[i] for i in range(teacher.config.num_labels)])
    if ptp_source is not None:
        from safetensors.torch import load_file
        load_encoder(student, load_file(str(ptp_source / "model.safetensors")), source=str(ptp_source))
    if student_cfg.attention_heads:
        set_attention_heads(student, student_cfg.attention_heads)
    if student_cfg.sps:
        apply_sps(student, student_cfg.sps.shuffle)
    return student, layers


def _ptp_student_dir(ptp_dir: Path, student_cfg: StudentConfig, echo) -> Path | None:
    """The ptp stage's encoder for this student; None (start from teacher layers) where the
    stage skipped PTP (regression).  A missing encoder otherwise is an error."""
    meta_file = Path(ptp_dir) / "meta.json"
    if not meta_file.exists():
        raise FileNotFoundError(f"{meta_file}: student.init is ptp but the ptp stage has not run (dvc repro ptp)")
    meta = json.loads(meta_file.read_text())
    if meta.get("skipped"):
        echo(f"student.init: ptp ignored ({meta['skipped']}); the student starts from the teacher's layers")
        return None
    name = ptp_student_name(student_cfg)
    if name not in meta.get("students", {}):
        raise FileNotFoundError(f"{meta_file}: no PTP student {name!r} (trained: {sorted(meta.get('students', {}))}); "
                                f"re-run the ptp stage (dvc repro ptp)")
    return meta_file.parent / name


def ptp_student_name(student_cfg: StudentConfig) -> str:
    """Folder name of the PTP student for this architecture (depth, layer choice, SPS mode)."""
    layers = student_cfg.layers if isinstance(student_cfg.layers, str) else "-".join(map(str, student_cfg.layers))
    sps = f"sps-{student_cfg.sps.shuffle}" if student_cfg.sps else "plain"
    heads = f"_A{student_cfg.attention_heads}" if student_cfg.attention_heads else ""
    return f"L{student_cfg.num_layers}_{layers}_{sps}{heads}"


def method_shapes(student_cfg: StudentConfig, teacher_config) -> Shapes:
    """Student and teacher geometry: the student is the teacher's width, fewer layers (an SPS
    student counts its effective 2L layers: mappings see every pass), and the teacher's heads
    unless ``student.attention_heads`` says otherwise (it must divide the width)."""
    teacher = ModelShape.of(teacher_config)
    heads = student_cfg.attention_heads or teacher.heads
    if teacher.hidden % heads:
        divisors = [k for k in range(1, teacher.hidden + 1) if teacher.hidden % k == 0]
        raise MethodConfigError(f"student.attention_heads: {heads} does not divide the student's width "
                                f"{teacher.hidden}; use one of {divisors}")
    return Shapes(student=ModelShape(student_cfg.effective_layers, teacher.hidden, heads), teacher=teacher)


def build_run_method(params: Params, run_name: str, teacher_config, regression: bool):
    """The run's method, built (and so validated) against the real model shapes."""
    run = params.distill.runs[run_name]
    method_params = dict(run.method_params)
    if "seed" in METHODS[run.method].Params.model_fields:
        method_params.setdefault("seed", params.seed)  # RAIL-KD's layer draws follow the pipeline seed
    try:
        shapes = method_shapes(params.run_student(run_name), teacher_config)
        return build_method(run.method, method_params, regression, shapes)
    except MethodConfigError as e:
        raise ConfigError(f"params.yaml: distill.runs.{run_name} ({run.method}): {e}") from None


def teacher_outputs(params: Params, data_dir: Path, teacher_dir: Path, out_dir: Path) -> dict:
    """Stage ``teacher_outputs``: the teacher's per-example vectors on the train split (cache)."""
    from kdpipe.teacher_cache import cache_key, compute_teacher_cache

    cfg = params.distill.teacher_cache
    if not cfg.enabled:
        with atomic_dir(out_dir) as tmp:
            write_json(tmp / "meta.json", {"key": None, "enabled": False})
        return {"enabled": False}
    _, sets = _datasets(data_dir)
    teacher = load_classifier(teacher_dir, attn_implementation="sdpa")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    meta = compute_teacher_cache(teacher, load_tokenizer(teacher_dir), sets["train"], out_dir,
                                 key=cache_key(teacher_dir, data_dir, params.max_length), max_length=params.max_length,
                                 batch_size=cfg.batch_size, dtype=cfg.dtype, device=device)
    return {"enabled": True, **meta}


def _open_cache(params: Params, cache_dir: Path | None, teacher_dir: Path, data_dir: Path, examples: int):
    if cache_dir is None or not params.distill.teacher_cache.enabled:
        return None
    from kdpipe.teacher_cache import TeacherCache, cache_key
    return TeacherCache.open(cache_dir, cache_key(teacher_dir, data_dir, params.max_length), examples)


def distill(params: Params, run_name: str, data_dir: Path, teacher_dir: Path, out_dir: Path,
            checkpoint_dir: Path, plots_dir: Path, logger=None, teacher_cache_dir: Path | None = None,
            ptp_dir: Path = Path("models/ptp"), echo=print) -> dict:
    """Distil one student with run ``run_name``; every phase of the method in turn, each starting
    from the student the previous phase selected.  ``teacher_cache_dir`` (the teacher_outputs
    stage's folder) replaces the live teacher where the method's teacher signal is cached."""
    run = params.distill.runs[run_name]
    spec, sets = _datasets(data_dir)
    regression = spec.problem == "regression"
    teacher = load_classifier(teacher_dir)
    tokenizer = load_tokenizer(teacher_dir)
    student_cfg = params.run_student(run_name)
    ptp_source = _ptp_student_dir(ptp_dir, student_cfg, echo) if student_cfg.init == "ptp" else None
    student, layers = make_student(params, student_cfg, teacher, teacher_dir, ptp_source)
    # where the weights came from (init: ptp falls back to the teacher's layers where PTP was skipped)
    init_source = f"ptp:{ptp_source.name}" if ptp_source else \
        ("teacher" if student_cfg.init == "ptp" else student_cfg.init)
    method = build_run_method(params, run_name, teacher.config, regression)
    table = method.mapping_table()
    if table:
        echo(format_rows(table, f"[{run_name}] {run.method} layer mapping"))
    cache = _open_cache(params, teacher_cache_dir, teacher_dir, data_dir, len(sets["train"])) \
        if method.needs_teacher else None
    student_encoder = Encoder(tokenizer, model_input_names(student, tokenizer), params.max_length)
    teacher_encoder = Encoder(tokenizer, model_input_names(teacher, tokenizer), params.max_length)
    phases, results = method.phases, {}
    multi = len(phases) > 1  # each phase: its own nested MLflow run and checkpoint folder
    # Hashed once per run (the teacher's weights and the data are read here), then per phase.
    inputs = _fingerprint("distill", run_name, run.model_dump(), student_cfg.model_dump(), params.seed,
                          params.max_length, data_dir, teacher_dir, ptp_source)
    extra, extra_hash = supplementary_set(params, run_name, spec) if run.supplementary else (None, None)
    for phase in phases:
        method.set_phase(phase)
        cfg = params.run_train_config(run_name, phase, method.phase_train(phase))
        cached = cache is not None and method.teacher_cacheable
        live_teacher = method.needs_teacher and not cached
        # The teacher's inputs are only tokenised when the teacher runs live.
        collator = DistillCollator(student_encoder, teacher_encoder if live_teacher else None, regression)
        # Supplementary unlabeled text joins the phases whose losses never read labels.
        train_set = sets["train"]
        if extra is not None and phase in method.label_free_phases:
            if cached:  # cache rows are addressed by train index; supplementary rows have none
                raise ConfigError(f"distill.runs.{run_name}.supplementary: phase {phase} reads the teacher cache")
            train_set = ConcatDataset([sets["train"], extra])
        name = f"{run_name}/{phase}" if multi else run_name
        fingerprint = _fingerprint(inputs, phase, cfg.model_dump(), cached, len(train_set),
                                   extra_hash if train_set is not sets["train"] else None)
        phase_dir = Path(checkpoint_dir) / phase if multi else Path(checkpoint_dir)
        with _phase_run(logger, name if multi else None,
                        {"kdpipe.phase": phase, "kdpipe.method": run.method}) as tracker:
            if multi and tracker is not None:
                tracker.log_params({"phase": phase, "train": cfg.model_dump(), "train_examples": len(train_set)})
            result = _finished_phase(phase_dir, fingerprint, student)
            if result is None:
                result = train(student, method, spec, train_set, sets["dev"], collator, cfg, seed=params.seed,
                               checkpoint_dir=phase_dir, fingerprint=fingerprint,
                               teacher=teacher if live_teacher else None, teacher_cache=cache if cached else None,
                               logger=tracker, desc=name)
                if multi:
                    _mark_phase_done(phase_dir, fingerprint, result)
            if multi and tracker is not None:
                tracker.log_metrics({"best_dev": result.best_dev, "last_dev": result.last_dev})
        results[phase] = (result, cfg, cached, len(train_set))
    final = results[phases[-1]][0]
    summary = {**_summary(final, spec), "method": run.method, "init_layers": layers,
               "student": {**student_cfg.model_dump(), "init_source": init_source,
                           "effective_layers": num_layers(student), "parameters": count_parameters(student)},
               "teacher_signal": {p: "cache" if c else ("live" if method.needs_teacher else "none")
                                  for p, (_, _, c, _) in results.items()}}
    if multi:
        summary["phases"] = {p: {**_summary(r, spec), "train": cfg.model_dump(), "train_examples": n}
                             for p, (r, cfg, _, n) in results.items()}
    if table:
        summary["mapping"] = table
    records = {p: r.epoch_records for p, (r, *_) in results.items() if r.epoch_records}
    if records:
        summary["epoch_records"] = records
    curve = _merge_phases({p: r for p, (r, *_) in results.items()})
    if multi and is_main_process():  # a train and a dev curve per phase, each from step 0
        shutil.rmtree(Path(plots_dir) / "phases" / run_name, ignore_errors=True)
        for p, (r, *_) in results.items():
            write_csv(Path(plots_dir) / "phases" / run_name / f"{p}_train.csv", r.train_curve)
            write_csv(Path(plots_dir) / "phases" / run_name / f"{p}_dev.csv", _with_main(r.dev_curve, spec.main_metric))
    _save_trained(student, tokenizer, out_dir, plots_dir, run_name, curve, spec, {
        "role": "student", "run": run_name, "method": method.describe(), "init_layers": layers,
        "task": spec.to_dict(), "max_length": params.max_length, "training": summary})
    return summary


def _phase_run(logger, name: str | None, tags: dict):
    """An MLflow run nested in the stage's run for one phase (``name``), so every phase's curves
    and settings stand on their own in the UI; None: log to the stage's run itself."""
    if name is None or logger is None or not hasattr(logger, "child"):
        return contextlib.nullcontext(logger)
    return logger.child(name, tags)


def supplementary_set(params: Params, run_name: str, spec: TaskSpec) -> tuple[TextDataset, str]:
    """The run's supplementary unlabeled inputs (another task's train texts, or a text file) in
    this task's format, and a hash of their content (a file edited in place is a new input);
    labels are placeholders, never read by the phases that use them."""
    import pandas as pd

    from kdpipe.tasks import supplementary_frame

    frame = supplementary_frame(params.distill.runs[run_name].supplementary, params.task, spec, params.seed,
                                repo_root(), where=f"distill.runs.{run_name}.supplementary")
    return TextDataset(frame), str(int(pd.util.hash_pandas_object(frame, index=True).sum()))


def _finished_phase(phase_dir: Path, fingerprint: str, student) -> TrainResult | None:
    """A phase that already completed (the run was interrupted in a later phase): its selected
    weights are loaded into ``student`` and its result returned, so it is not trained again."""
    marker = phase_dir / "phase_done.json"
    if not marker.exists():
        return None
    done = json.loads(marker.read_text())
    if done["fingerprint"] != fingerprint:
        return None
    from safetensors.torch import load_model
    load_model(student, str(phase_dir / done["result"]["selected"] / "model.safetensors"))
    return TrainResult(**done["result"])


def _mark_phase_done(phase_dir: Path, fingerprint: str, result: TrainResult) -> None:
    if is_main_process():
        write_json(phase_dir / "phase_done.json", {"fingerprint": fingerprint, "result": asdict(result)})


def _merge_phases(results: dict[str, TrainResult]) -> TrainResult:
    """One curve across phases: steps continue from phase to phase, a ``phase`` column says which."""
    if len(results) == 1:
        return next(iter(results.values()))
    train_curve, dev_curve, offset = [], [], 0
    for phase, r in results.items():
        train_curve += [{**row, "step": row["step"] + offset, "phase": phase} for row in r.train_curve]
        dev_curve += [{**row, "step": row["step"] + offset, "phase": phase} for row in r.dev_curve]
        offset += r.train_curve[-1]["step"] if r.train_curve else 0
    last = list(results.values())[-1]
    return TrainResult(selected=last.selected, best_step=last.best_step, best_dev=last.best_dev,
                       last_dev=last.last_dev, train_curve=train_curve, dev_curve=dev_curve)


# ----------------------------------------------------------------------------------------- ptp
def ptp_students(params: Params) -> dict[str, StudentConfig]:
    """The PTP students the runs ask for (``student.init: ptp``), one per architecture."""
    students = {}
    for run_name in params.distill.runs:
        cfg = params.run_student(run_name)
        if cfg.init == "ptp":
            students.setdefault(ptp_student_name(cfg), cfg)
    return students


def pretrain_ptp(params: Params, data_dir: Path, teacher_dir: Path, out_dir: Path, checkpoint_dir: Path,
                 logger=None, echo=print) -> dict:
    """Stage ``ptp`` (Pea-KD): label train and dev with the teacher's PTP classes, then train one
    student per architecture the runs need on those labels (CE, best dev loss) and save it;
    ``make_student`` later keeps its encoder and drops the 4-way head."""
    from kdpipe import ptp

    spec, frames = load_splits(data_dir)
    students = ptp_students(params)
    meta: dict = {"students": {}}
    if spec.problem == "regression":
        meta["skipped"] = f"task {spec.name} is regression: PTP needs right/wrong teacher predictions"
    elif not students:
        meta["skipped"] = "no run has student.init: ptp"
    if "skipped" in meta:
        echo(f"ptp: skipped ({meta['skipped']})")
        if is_main_process():
            with atomic_dir(out_dir) as tmp:
                write_json(tmp / "meta.json", meta)
        return meta
    teacher = load_classifier(teacher_dir)
    tokenizer = load_tokenizer(teacher_dir)
    collator = DistillCollator(Encoder(tokenizer, model_input_names(teacher, tokenizer), params.max_length),
                               None, False)
    from kdpipe.evaluation import predict
    predictions = {split: predict(teacher, DataLoader(TextDataset(frames[split]), batch_size=64,
                                                      collate_fn=collator))[:2]
                   for split in ("train", "dev")}
    logits, labels = predictions["train"]
    thresholds = ptp.resolve_thresholds(params.ptp.t1, params.ptp.t2, spec.name, logits, labels)
    ptp_sets, histograms = {}, {}
    for split, (z, y) in predictions.items():
        classes = ptp.ptp_labels(z, y, thresholds["t1"], thresholds["t2"])
        histograms[split] = ptp.class_histogram(classes)
        ptp_sets[split] = TextDataset(frames[split].assign(label=classes))
    empty = sorted({name for h in histograms.values() for name, n in h.items() if n == 0})
    meta.update(thresholds=thresholds, histogram=histograms, empty_classes=empty)
    echo(format_rows([{"split": split, **h} for split, h in histograms.items()],
                     f"ptp: classes at t1={thresholds['t1']} ({thresholds['t1_source']}), "
                     f"t2={thresholds['t2']} ({thresholds['t2_source']})"))
    if empty:
        echo(f"ptp: warning: empty PTP class(es) {', '.join(empty)}: the student never sees them "
             f"(set ptp.t1 / ptp.t2 to rebalance)")
    ptp_spec = TaskSpec(name=f"{spec.name}-ptp", problem="classification", labels=ptp.PTP_CLASSES,
                        num_text_fields=spec.num_text_fields, metrics=("accuracy",), main_metric="accuracy")
    trained = {}
    for name, student_cfg in students.items():
        # PTP starts from ``ptp.init`` layers (pre-trained, as Pea-KD, or the teacher's) with a 4-way head
        student, _ = make_student(params, student_cfg.model_copy(update={"init": params.ptp.init}), teacher,
                                  teacher_dir, head=ptp.PTP_CLASSES)
        result = _train_ptp_student(params, name, student, ptp_spec, ptp_sets, collator, teacher_dir, data_dir,
                                    thresholds, checkpoint_dir / name, logger)
        trained[name] = (student, student_cfg, result)
        meta["students"][name] = {**_summary(result, ptp_spec), "parameters": count_parameters(student),
                                  "effective_layers": num_layers(student)}
    if is_main_process():
        with atomic_dir(out_dir) as tmp:
            for name, (student, student_cfg, result) in trained.items():
                save_model(student, tokenizer, tmp / name, extra={
                    "role": "ptp", "student": student_cfg.model_dump(), "task": ptp_spec.to_dict(),
                    "thresholds": thresholds, "training": _summary(result, ptp_spec)})
            write_json(tmp / "meta.json", meta)
    return meta


def _train_ptp_student(params, name, student, ptp_spec, ptp_sets, collator, teacher_dir, data_dir, thresholds,
                       checkpoint_dir: Path, logger) -> TrainResult:
    """Train one PTP student (or reuse its finished training when nothing it depends on changed:
    the stage re-runs whenever any run changes, since it reads ``distill.runs``)."""
    fingerprint = _fingerprint("ptp", name, params.ptp.model_dump(), thresholds, params.seed, params.max_length,
                               data_dir, teacher_dir)
    with _phase_run(logger, f"ptp/{name}", {"kdpipe.ptp_student": name}) as tracker:
        result = _finished_phase(checkpoint_dir, fingerprint, student)
        if result is None:
            result = train(student, FineTune(MethodParams(), regression=False), ptp_spec, ptp_sets["train"],
                           ptp_sets["dev"], collator, params.ptp.train, seed=params.seed,
                           checkpoint_dir=checkpoint_dir, fingerprint=fingerprint, logger=tracker,
                           desc=f"ptp/{name}")
            _mark_phase_done(checkpoint_dir, fingerprint, result)
    return result


# ------------------------------------------------------------------------------------ evaluate
def latency_inputs(dataset: TextDataset, encoder: Encoder, batch_size: int) -> dict[str, torch.Tensor]:
    """A real batch of ``batch_size`` dev examples (repeated if dev is smaller), padded to its longest."""
    idx = [i % len(dataset) for i in range(batch_size)]
    rows = [dataset[i] for i in idx]
    return encoder([r["text_a"] for r in rows], None if rows[0]["text_b"] is None else [r["text_b"] for r in rows])


def evaluate_model(params: Params, model_dir: Path, spec: TaskSpec, sets: dict[str, TextDataset],
                   compare_heads: int | None = None) -> dict:
    """Dev/test metrics, size and PyTorch latency of one saved model.  ``compare_heads``: when the
    model runs another head count, also time the same weights reshaped to that many heads
    (MLKD-BERT: a fewer-head student vs the teacher's head count), as ``latency_ms_at_heads``."""
    model = load_classifier(model_dir).eval()
    tokenizer = load_tokenizer(model_dir)
    encoder = Encoder(tokenizer, model_input_names(model, tokenizer), params.max_length)
    collator = DistillCollator(encoder, None, spec.problem == "regression")
    report: dict = {}
    for split in ("dev", "test"):
        if split in sets:
            loader = DataLoader(sets[split], batch_size=64, collate_fn=collator)
            report[split] = evaluate_split(model, loader, spec)
    report["parameters"] = count_parameters(model)
    report["layers"] = num_layers(model)  # effective: an SPS model runs its physical layers twice
    report["physical_layers"] = physical_layers(model)
    if sps_settings(model):
        report["sps"] = sps_settings(model)["shuffle"]
    report["size_mb"] = round(model_file_bytes(model_dir) / 2**20, 2)
    ev = params.evaluate
    report["latency_ms"] = {
        f"batch_{b}": round(torch_latency(model, latency_inputs(sets["dev"], encoder, b),
                                          ev.latency_warmup, ev.latency_repeats)["median_ms"], 3)
        for b in ev.latency_batch_sizes}
    report["attention_heads"] = num_heads(model)
    width = ModelShape.of(model.config).hidden
    if compare_heads and compare_heads != report["attention_heads"] and width % compare_heads == 0:
        reshaped = set_attention_heads(copy.deepcopy(model), compare_heads)
        at_heads = {f"batch_{b}": round(torch_latency(reshaped, latency_inputs(sets["dev"], encoder, b),
                                                      ev.latency_warmup, ev.latency_repeats)["median_ms"], 3)
                    for b in ev.latency_batch_sizes}
        report["latency_ms_at_heads"] = {"heads": compare_heads, **at_heads,
                                         **{f"speedup_{k}": round(at_heads[k] / report["latency_ms"][k], 3)
                                            for k in at_heads}}
    return report


def evaluate_models(params: Params, data_dir: Path, teacher_dir: Path, students_dir: Path) -> dict:
    if params.evaluate.threads:
        torch.set_num_threads(params.evaluate.threads)
    spec, sets = _datasets(data_dir)
    main = spec.main_metric
    teacher = evaluate_model(params, teacher_dir, spec, sets)
    students = {}
    for folder in sorted(p for p in Path(students_dir).iterdir() if (p / "kdpipe.json").exists()):
        if folder.name not in params.distill.runs:
            continue  # a run removed from params.yaml: its folder is stale
        report = evaluate_model(params, folder, spec, sets, compare_heads=teacher["attention_heads"])
        report["method"] = _read_meta(folder)["method"]["method"]
        report["retention_pct"] = {split: round(100 * report[split][main] / teacher[split][main], 2)
                                   for split in ("dev", "test") if split in report and teacher[split][main]}
        report["speedup"] = {k: round(teacher["latency_ms"][k] / v, 2) for k, v in report["latency_ms"].items()}
        report["compression"] = round(teacher["parameters"] / report["parameters"], 2)
        students[folder.name] = report
    return {"task": spec.name, "main_metric": main, "teacher": teacher, "students": students}


def tradeoff_rows(report: dict) -> list[dict]:
    """One row per (model, batch size): main dev metric vs latency, for the DVC scatter plot."""
    main = report["main_metric"]
    rows = []
    for name, r in [("teacher", report["teacher"]), *report["students"].items()]:
        for batch, ms in r["latency_ms"].items():
            rows.append({"model": name, "batch": batch, "latency_ms": ms, "dev_main_metric": r["dev"][main],
                         "metric": main})
    return rows


# -------------------------------------------------------------------------------------- export
class ExportCheckError(RuntimeError):
    """The exported model fails a parity or int8-accuracy gate set in params.yaml."""


def export_student(params: Params, student_dir: Path, data_dir: Path, out_dir: Path) -> dict:
    from kdpipe import export as onnx_export
    from kdpipe.metrics import compute_metrics
    from kdpipe.runtime import META_FILE, ExportMeta, OnnxTextClassifier

    cfg = params.export
    spec, sets = _datasets(data_dir)
    dev = sets["dev"]
    model = load_classifier(student_dir).eval()
    tokenizer = load_tokenizer(student_dir)
    encoder = Encoder(tokenizer, model_input_names(model, tokenizer), params.max_length)
    loader = DataLoader(dev, batch_size=16, collate_fn=DistillCollator(encoder, None, spec.problem == "regression"))
    batches = [b["student"] for _, b in zip(range(cfg.parity_batches), loader)]
    report: dict = {}
    with atomic_dir(out_dir) as tmp:
        fp32 = tmp / "model.onnx"
        input_names = onnx_export.export_onnx(model, batches[0], fp32)
        tokenizer.save_pretrained(tmp)
        write_json(tmp / META_FILE, ExportMeta(labels=list(spec.labels) if spec.labels else None,
                                               problem=spec.problem, max_length=params.max_length,
                                               input_names=input_names, task=spec.to_dict()).to_json())
        report["parity"] = onnx_export.parity(model, fp32, batches)
        variants = {"fp32": fp32}
        if cfg.int8:
            variants["int8"] = tmp / "model.int8.onnx"
            onnx_export.quantize_int8(fp32, variants["int8"])
        labels = dev.labels
        texts_b = dev.text_b
        for name, path in variants.items():
            clf = OnnxTextClassifier.from_dir(tmp, variant=name)
            logits = clf.logits(dev.text_a, texts_b, batch_size=64)
            metrics = compute_metrics(spec, logits, np.asarray(labels))
            latency = {f"batch_{b}": round(onnx_export.onnx_latency(
                path, {k: v.numpy() for k, v in latency_inputs(dev, encoder, b).items()},
                params.evaluate.latency_warmup, params.evaluate.latency_repeats)["median_ms"], 3)
                for b in params.evaluate.latency_batch_sizes}
            report[name] = {"dev": metrics, "latency_ms": latency,
                            "size_mb": round(path.stat().st_size / 2**20, 2)}
        _gate(report, spec, cfg)
        write_json(tmp / "report.json", report)
    return report


def _gate(report: dict, spec: TaskSpec, cfg) -> None:
    diff = report["parity"]["max_abs_diff"]
    if diff > cfg.parity_atol:
        raise ExportCheckError(f"ONNX fp32 logits differ from PyTorch by {diff:.3g} > export.parity_atol "
                               f"({cfg.parity_atol:g})")
    if "int8" in report:
        main = spec.main_metric
        drop = report["fp32"]["dev"][main] - report["int8"]["dev"][main]
        report["int8_drop"] = drop
        if drop > cfg.int8_max_drop:
            raise ExportCheckError(f"int8 ONNX loses {drop:.4f} dev {main} vs fp32 > export.int8_max_drop "
                                   f"({cfg.int8_max_drop:g}); set export.int8: false or raise the threshold")
