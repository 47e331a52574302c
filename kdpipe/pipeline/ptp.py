"""Stage ``ptp`` (Pea-KD's Pretraining with Teacher's Predictions; docs/methods.md §7.3): label
train and dev with the teacher's PTP classes, then train one student per architecture the runs
need on those labels (CE, best dev loss) and save it; ``make_student`` later keeps its encoder
and drops the 4-way head."""

from __future__ import annotations

import json
from pathlib import Path


from kdpipe.config import Params, StudentConfig
from kdpipe.data.batches import DistillCollator, inference_loader
from kdpipe.data.splits import TextDataset, load_splits
from kdpipe.data.tasks import TaskSpec
from kdpipe.evaluation.predict import predict
from kdpipe.files import atomic_dir, write_json
from kdpipe.methods import pea_kd
from kdpipe.methods.base import FineTune, MethodParams
from kdpipe.methods.mapping import format_rows
from kdpipe.methods.registry import run_student
from kdpipe.models.adapters import num_layers
from kdpipe.models.loading import count_parameters, encoder_for, load_classifier, load_tokenizer, save_model
from kdpipe.models.students import architecture_name, make_student
from kdpipe.pipeline.common import summary
from kdpipe.training.checkpoints import finished_phase, fingerprint, keep_selected_only, mark_phase_done
from kdpipe.training.engine import TrainResult, is_main_process, train
from kdpipe.training.phases import phase_run

PTP_META_FILE = "meta.json"  # in the stage's folder: thresholds, histograms, the students trained


def ptp_students(params: Params) -> dict[str, StudentConfig]:
    """The PTP students the runs ask for (``student.init: ptp``), one per architecture."""
    students = {}
    for run_name in params.distill.runs:
        cfg = run_student(params, run_name)
        if cfg.init == "ptp":
            students.setdefault(architecture_name(cfg), cfg)
    return students


def pretrain_ptp(params: Params, data_dir: Path, teacher_dir: Path, out_dir: Path, checkpoint_dir: Path,
                 logger=None, echo=print) -> dict:
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
                write_json(tmp / PTP_META_FILE, meta)
        return meta
    teacher = load_classifier(teacher_dir)
    tokenizer = load_tokenizer(teacher_dir)
    collator = DistillCollator(encoder_for(teacher, tokenizer, params.max_length), None, False)
    predictions = {split: predict(teacher, inference_loader(TextDataset(frames[split]), collator, 64))[:2]
                   for split in ("train", "dev")}
    logits, labels = predictions["train"]
    thresholds = pea_kd.resolve_thresholds(params.ptp.t1, params.ptp.t2, spec.name, logits, labels)
    ptp_sets, histograms = {}, {}
    for split, (z, y) in predictions.items():
        classes = pea_kd.ptp_labels(z, y, thresholds["t1"], thresholds["t2"])
        histograms[split] = pea_kd.class_histogram(classes)
        ptp_sets[split] = TextDataset(frames[split].assign(label=classes))
    empty = sorted({name for h in histograms.values() for name, n in h.items() if n == 0})
    meta.update(thresholds=thresholds, histogram=histograms, empty_classes=empty)
    echo(format_rows([{"split": split, **h} for split, h in histograms.items()],
                     f"ptp: classes at t1={thresholds['t1']} ({thresholds['t1_source']}), "
                     f"t2={thresholds['t2']} ({thresholds['t2_source']})"))
    if empty:
        echo(f"ptp: warning: empty PTP class(es) {', '.join(empty)}: the student never sees them "
             f"(set ptp.t1 / ptp.t2 to rebalance)")
    ptp_spec = TaskSpec(name=f"{spec.name}-ptp", problem="classification", labels=pea_kd.PTP_CLASSES,
                        num_text_fields=spec.num_text_fields, metrics=("accuracy",), main_metric="accuracy")
    trained = {}
    for name, student_cfg in students.items():
        # PTP starts from ``ptp.init`` layers (pre-trained, as Pea-KD, or the teacher's) with a 4-way head
        student, _ = make_student(student_cfg.model_copy(update={"init": params.ptp.init}), teacher, teacher_dir,
                                  params.seed, head=pea_kd.PTP_CLASSES)
        result = _train_ptp_student(params, name, student, ptp_spec, ptp_sets, collator, teacher_dir, data_dir,
                                    thresholds, checkpoint_dir / name, logger)
        trained[name] = (student, student_cfg, result)
        meta["students"][name] = {**summary(result, ptp_spec), "parameters": count_parameters(student),
                                  "effective_layers": num_layers(student)}
    if is_main_process():
        with atomic_dir(out_dir) as tmp:
            for name, (student, student_cfg, result) in trained.items():
                save_model(student, tokenizer, tmp / name, extra={
                    "role": "ptp", "student": student_cfg.model_dump(), "task": ptp_spec.to_dict(),
                    "thresholds": thresholds, "training": summary(result, ptp_spec)})
            write_json(tmp / PTP_META_FILE, meta)
    return meta


def _train_ptp_student(params, name, student, ptp_spec, ptp_sets, collator, teacher_dir, data_dir, thresholds,
                       checkpoint_dir: Path, logger) -> TrainResult:
    """Train one PTP student (or reuse its finished training when nothing it depends on changed:
    the stage re-runs whenever any run changes, since it reads ``distill.runs``)."""
    inputs = fingerprint("ptp", name, params.ptp.model_dump(), thresholds, params.seed, params.max_length,
                         data_dir, teacher_dir, code=__name__)
    with phase_run(logger, f"ptp/{name}", {"kdpipe.ptp_student": name}) as tracker:
        result = finished_phase(checkpoint_dir, inputs, student)
        if result is None:
            result = train(student, FineTune(MethodParams(), regression=False), ptp_spec, ptp_sets["train"],
                           ptp_sets["dev"], collator, params.ptp.train, seed=params.seed,
                           checkpoint_dir=checkpoint_dir, fingerprint=inputs, logger=tracker,
                           desc=f"ptp/{name}")
            mark_phase_done(checkpoint_dir, inputs, result)
    keep_selected_only(checkpoint_dir)
    return result


def ptp_encoder_dir(ptp_dir: Path, student_cfg: StudentConfig, echo=print) -> Path | None:
    """The ptp stage's encoder for this student; None (start from teacher layers) where the
    stage skipped PTP (regression).  A missing encoder otherwise is an error."""
    meta_file = Path(ptp_dir) / PTP_META_FILE
    if not meta_file.exists():
        raise FileNotFoundError(f"{meta_file}: student.init is ptp but the ptp stage has not run (dvc repro ptp)")
    meta = json.loads(meta_file.read_text())
    if meta.get("skipped"):
        echo(f"student.init: ptp ignored ({meta['skipped']}); the student starts from the teacher's layers")
        return None
    name = architecture_name(student_cfg)
    if name not in meta.get("students", {}):
        raise FileNotFoundError(f"{meta_file}: no PTP student {name!r} (trained: {sorted(meta.get('students', {}))}); "
                                f"re-run the ptp stage (dvc repro ptp)")
    return meta_file.parent / name
