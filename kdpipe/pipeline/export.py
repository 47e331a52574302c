"""Stage ``export@<run>``: ONNX fp32 + int8 of one student, parity-checked and scored on dev."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
from torch.utils.data import DataLoader
from transformers import PretrainedConfig

from kdpipe.config import ExportConfig, Params
from kdpipe.data.batches import DistillCollator, split_labels
from kdpipe.data.conll import IGNORE
from kdpipe.data.splits import load_datasets
from kdpipe.data.tasks import TaskSpec
from kdpipe.evaluation.cards import CARD_FILE, CardFacts, model_card, student_card_facts
from kdpipe.evaluation.latency import latency_inputs
from kdpipe.evaluation.metrics import compute_metrics, predicted_values
from kdpipe.evaluation.qa_metrics import token_f1
from kdpipe.evaluation.significance import CONFIDENCE, paired_difference
from kdpipe.export import convert
from kdpipe.export.runtime import EXPORT_META_FILE, ExportMeta, open_export
from kdpipe.files import atomic_dir, write_json
from kdpipe.models.loading import encoder_for, is_model_dir, load_classifier, load_tokenizer, read_model_meta

REPORT_FILE = "report.json"

class ExportCheckError(RuntimeError):
    """The exported model fails a parity or int8-accuracy gate set in params.yaml."""


def export_student(params: Params, student_dir: Path, data_dir: Path, out_dir: Path, echo=print,
                   seed_reports: dict[int, dict] | None = None) -> dict:
    """ONNX fp32 + int8 of one student in ``out_dir``, failing (``ExportCheckError``, nothing
    written) when a parity or int8 gate fails.  ``seed_reports``: the run's distill reports by
    seed (the shipped one first), for the model card's dev mean ± std over seeds; without them the
    card has the shipped seed's own score."""
    with atomic_dir(out_dir) as tmp:
        spec, report = _export(params, student_dir, data_dir, tmp, echo)
        check_gates(report, spec, params.export)
        write_json(tmp / REPORT_FILE, report)
        meta = read_model_meta(student_dir) if is_model_dir(student_dir) else {}
        if not seed_reports and "training" in meta:
            seed_reports = {meta.get("seed"): meta["training"]}
        (tmp / CARD_FILE).write_text(model_card(export_card_facts(
            params, meta.get("run", Path(student_dir).parent.name), meta.get("seed"), seed_reports or {}, spec, report)))
    return report


def export_teacher(params: Params, teacher_dir: Path, data_dir: Path, out_dir: Path, echo=print) -> dict:
    """The fine-tuned teacher exported and measured like every student, for the report's size
    and latency columns (one protocol for all); its gates are reported, never enforced: nothing
    ships it."""
    with atomic_dir(out_dir) as tmp:
        spec, report = _export(params, teacher_dir, data_dir, tmp, echo)
        write_json(tmp / REPORT_FILE, report)
        (tmp / CARD_FILE).write_text(model_card(CardFacts(
            run="teacher", method="teacher", task=spec.to_dict(), teacher=params.teacher.model,
            where="export folder", export=report, max_length=params.max_length)))
    return report


def _export(params: Params, model_dir: Path, data_dir: Path, tmp: Path, echo) -> tuple[TaskSpec, dict]:
    """Write the ONNX files, tokenizer, config and export meta of ``model_dir`` into ``tmp``;
    returns the task and the report: parity, dev metrics, size and latency per variant, and the
    int8 gate's measurements (not yet judged)."""
    cfg = params.export
    model = load_classifier(model_dir).eval()
    tokenizer = load_tokenizer(model_dir)
    spec, sets = load_datasets(data_dir, tokenizer, params.max_length)
    dev = sets["dev"]
    encoder = encoder_for(model, tokenizer, params.max_length)
    labels = split_labels(dev, encoder)  # tagging: [N, W] per word, IGNORE where truncation cut
    loader = DataLoader(dev, batch_size=16, collate_fn=DistillCollator(encoder, None, spec.problem == "regression"))
    batches = [b["student"] for _, b in zip(range(cfg.parity_batches), loader)]
    report: dict = {}
    label = f"{model_dir.parent.name}/{model_dir.name}"
    fp32 = tmp / "model.onnx"
    echo(f"export: {label}: ONNX (dynamo exporter)")
    input_names = convert.export_onnx(model, batches[0], fp32)
    tokenizer.save_pretrained(tmp)
    export_model_config(model.config, spec).save_pretrained(tmp)
    qa = {"doc_stride": dev.windows_stride, "max_answer_length": dev.max_answer_length} if spec.problem == "qa" else {}
    write_json(tmp / EXPORT_META_FILE, ExportMeta(labels=list(spec.labels) if spec.labels else None,
                                                  problem=spec.problem, max_length=params.max_length,
                                                  input_names=input_names, task=spec.to_dict(), qa=qa).to_json())
    echo(f"export: {label}: parity with PyTorch on {len(batches)} dev batch(es)")
    report["parity"] = convert.parity(model, fp32, batches)
    variants = {"fp32": fp32}
    if cfg.int8:
        echo(f"export: {label}: int8 quantisation")
        variants["int8"] = tmp / "model.int8.onnx"
        convert.quantize_int8(fp32, variants["int8"])
    outputs = {}
    for name, path in variants.items():
        echo(f"export: {label}: {name} dev metrics and latency")
        runtime = open_export(tmp, variant=name)  # what users load: per-word logits read torch-free for tagging
        if spec.problem == "qa":  # the answers users get: windows, spans and merging all torch-free
            answers = runtime.answer([e.question for e in dev.examples], [e.context for e in dev.examples], 64)
            outputs[name] = predicted_values(spec, [a["answer"] for a in answers])
        else:
            outputs[name] = (runtime.word_logits(dev.text_a, batch_size=64) if spec.problem == "tagging"
                             else runtime.logits(dev.text_a, dev.text_b, batch_size=64))
        latency = {f"batch_{b}": round(convert.onnx_latency(
            path, {k: v.numpy() for k, v in latency_inputs(dev, encoder, b).items()},
            params.evaluate.latency_warmup, params.evaluate.latency_repeats)["median_ms"], 3)
            for b in params.evaluate.latency_batch_sizes}
        report[name] = {"dev": compute_metrics(spec, outputs[name], labels), "latency_ms": latency,
                        "size_mb": round(path.stat().st_size / 2**20, 2)}
    if "int8" in outputs:
        echo(f"export: {label}: int8 gate (agreement, paired bootstrap of the {spec.main_metric} drop)")
        report["int8_gate"] = int8_gate(spec, outputs["fp32"], outputs["int8"], labels, cfg)
    return spec, report


def export_card_facts(params: Params, run_name: str, seed: int, seed_reports: dict[int, dict], spec: TaskSpec,
                      report: dict) -> CardFacts:
    """The export folder's card: the shipped seed's student facts, the run's dev mean ± std over
    the seeds in ``seed_reports`` and the export ``report`` (without distill reports: the export's
    own numbers only)."""
    if not seed_reports:
        return CardFacts(run=run_name, method="?", task=spec.to_dict(), teacher=params.teacher.model,
                         where="export folder", seed=seed, export=report, max_length=params.max_length)
    facts = student_card_facts(params, run_name, seed, seed_reports.get(seed, next(iter(seed_reports.values()))),
                               spec.to_dict())
    scores = [r["best_dev" if r["selected"] == "best" else "last_dev"][spec.main_metric] for r in seed_reports.values()]
    facts.where, facts.export, facts.seeds = "export folder", report, list(seed_reports)
    facts.dev = float(np.mean(scores))
    facts.dev_std = float(np.std(scores, ddof=1)) if len(scores) > 1 else 0.0
    return facts


def export_model_config(config: PretrainedConfig, spec: TaskSpec) -> PretrainedConfig:
    """A copy of the student's Hugging Face config that describes the exported graph, for
    ``config.json`` (docs/onnx.md §4): the task's label names, its problem type, and a single
    ``logits`` output."""
    out = copy.deepcopy(config)
    names = list(spec.labels) if spec.labels else [f"LABEL_{i}" for i in range(config.num_labels)]
    out.id2label = dict(enumerate(names))
    out.label2id = {name: i for i, name in enumerate(names)}
    # tagging too: one softmax per token (transformers' token classifiers read the same value)
    out.problem_type = ("regression" if spec.problem == "regression" else None if spec.problem == "qa"
                        else "single_label_classification")
    # The graph returns logits only, whatever the distillation student's config asked for.
    out.output_hidden_states = False
    out.output_attentions = False
    sps = getattr(out, "kdpipe_sps", None)
    if sps:
        # The graph runs all 2L shared layers; the setting only tells kdpipe how to rebuild them
        # from L saved ones, and there are no saved weights here.
        out.num_hidden_layers = 2 * sps["physical_layers"]
        delattr(out, "kdpipe_sps")
    return out


def prediction_agreement(spec: TaskSpec, fp32: np.ndarray, int8: np.ndarray, labels: np.ndarray | None = None) -> float:
    """How far int8 outputs agree with fp32 ones on the same examples, 1.0 = identical.

    classification: the share of examples with the same predicted class.
    tagging: the share of labelled words (``labels`` [N, W] not ``IGNORE``) with the same tag.
    extractive QA: the mean token F1 (SQuAD's) of each question's int8 answer against its fp32
    answer; an exact-text share would count a span that gains or loses one word at a near-tie as
    a wholly different answer (16-20 % of SQuAD dev answers move, at an F1 drop of at most 0.008).
    regression: Lin's concordance correlation of the two outputs; unlike Pearson it also drops
    when int8 shifts or rescales the scores, which a deployment reading them would see.
    """
    a, b = predicted_values(spec, fp32), predicted_values(spec, int8)
    if spec.problem == "qa":
        if len(a) != len(b) or len(a) == 0:
            raise ValueError(f"need the same, non-zero number of fp32 and int8 answers; got {len(a)} and {len(b)}")
        return float(np.mean([token_f1(y, x) for x, y in zip(a, b)]))
    if spec.problem == "tagging":
        if labels is None:
            raise ValueError("tagging agreement is counted over the labelled words: pass labels")
        keep = np.asarray(labels) != IGNORE
        a, b = a[keep], b[keep]
    if len(a) != len(b) or len(a) == 0:
        raise ValueError(f"need the same, non-zero number of fp32 and int8 outputs; got {len(a)} and {len(b)}")
    if spec.problem != "regression":
        return float(np.mean(a == b))
    return concordance(a, b)


def concordance(x: np.ndarray, y: np.ndarray) -> float:
    """Lin's concordance correlation coefficient 2 cov / (var x + var y + (mean x - mean y)^2)."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    denominator = x.var() + y.var() + (x.mean() - y.mean()) ** 2
    if denominator == 0:  # both constant and equal
        return 1.0
    return float(2 * np.mean((x - x.mean()) * (y - y.mean())) / denominator)


def metric_drop_interval(spec: TaskSpec, fp32: np.ndarray, int8: np.ndarray,
                         labels: np.ndarray) -> tuple[float, float, float]:
    """(drop, low, high): the main dev metric of fp32 minus int8, with its paired-bootstrap
    interval (``evaluation.significance``; docs/onnx.md §3): the drop's sampling noise on a dev
    set this size."""
    d = paired_difference(spec, fp32, int8, labels)
    return d.observed, d.low, d.high


def int8_gate(spec: TaskSpec, fp32: np.ndarray, int8: np.ndarray, labels: np.ndarray,
              cfg: ExportConfig) -> dict:
    """The int8 gate's numbers and verdict (docs/onnx.md §3), for the export report.

    verdict: ``fail_agreement`` (agreement < export.int8_min_agreement), ``fail_drop`` (the whole
    drop interval lies above export.int8_max_drop), ``pass_within_noise`` (the drop itself is
    above it, but not by more than the dev set's noise) or ``pass``.
    """
    agreement = prediction_agreement(spec, fp32, int8, labels)
    drop, low, high = metric_drop_interval(spec, fp32, int8, labels)
    if agreement < min_agreement(spec, cfg)[1]:
        verdict = "fail_agreement"
    elif low > cfg.int8_max_drop:
        verdict = "fail_drop"
    else:
        verdict = "pass_within_noise" if drop > cfg.int8_max_drop else "pass"
    return {"agreement": agreement,
            "agreement_kind": {"classification": "same_class", "tagging": "same_tag",
                               "qa": "answer_f1"}.get(spec.problem, "concordance"),
            "metric": spec.main_metric, "drop": drop,
            "drop_interval": {"low": low, "high": high, "confidence": CONFIDENCE},
            "examples": int(len(labels)), "verdict": verdict}


def min_agreement(spec: TaskSpec, cfg: ExportConfig) -> tuple[str, float]:
    """The params key and value of the int8 gate's agreement floor for ``spec``'s kind of task."""
    if spec.problem == "qa":
        return "export.int8_min_answer_f1", cfg.int8_min_answer_f1
    return "export.int8_min_agreement", cfg.int8_min_agreement


def check_gates(report: dict, spec: TaskSpec, cfg: ExportConfig) -> None:
    """Raise ExportCheckError, naming the params key, if parity or the int8 gate failed."""
    diff = report["parity"]["max_abs_diff"]
    if diff > cfg.parity_atol:
        raise ExportCheckError(f"ONNX fp32 logits differ from PyTorch by {diff:.3g} > export.parity_atol "
                               f"({cfg.parity_atol:g})")
    gate = report.get("int8_gate")
    if gate is None:
        return
    n = gate["examples"]
    if gate["verdict"] == "fail_agreement":
        what = (f"predicts the same class as fp32 on {gate['agreement']:.3f} of {n} dev examples"
                if spec.problem == "classification" else
                f"predicts the same tag as fp32 on {gate['agreement']:.3f} of the words of {n} dev sentences"
                if spec.problem == "tagging" else
                f"answers overlap fp32's with a mean token F1 of {gate['agreement']:.3f} over {n} dev questions"
                if spec.problem == "qa" else
                f"outputs have a concordance correlation of {gate['agreement']:.3f} with fp32's on {n} dev examples")
        key, floor = min_agreement(spec, cfg)
        raise ExportCheckError(f"int8 ONNX {what}, below {key} ({floor:g}); "
                               f"set export.int8: false or lower the threshold")
    if gate["verdict"] == "fail_drop":
        low, high = gate["drop_interval"]["low"], gate["drop_interval"]["high"]
        raise ExportCheckError(
            f"int8 ONNX loses {gate['drop']:.4f} dev {gate['metric']} vs fp32 over {n} examples "
            f"({gate['drop_interval']['confidence']:.0%} interval {low:.4f} to {high:.4f}), more than export.int8_max_drop ({cfg.int8_max_drop:g}) beyond "
            f"sampling noise; set export.int8: false or raise the threshold")
