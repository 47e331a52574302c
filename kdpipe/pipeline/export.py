"""Stage ``export@<run>``: ONNX fp32 + int8 of one student, parity-checked and scored on dev."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from torch.utils.data import DataLoader

from kdpipe.config import ExportConfig, Params
from kdpipe.data.batches import DistillCollator
from kdpipe.data.splits import load_datasets
from kdpipe.data.tasks import TaskSpec
from kdpipe.evaluation.latency import latency_inputs
from kdpipe.evaluation.metrics import compute_metrics
from kdpipe.export import convert
from kdpipe.export.runtime import EXPORT_META_FILE, ExportMeta, OnnxTextClassifier
from kdpipe.files import atomic_dir, write_json
from kdpipe.models.loading import encoder_for, load_classifier, load_tokenizer

REPORT_FILE = "report.json"


class ExportCheckError(RuntimeError):
    """The exported model fails a parity or int8-accuracy gate set in params.yaml."""


def export_student(params: Params, student_dir: Path, data_dir: Path, out_dir: Path, echo=print) -> dict:
    cfg = params.export
    spec, sets = load_datasets(data_dir)
    dev = sets["dev"]
    model = load_classifier(student_dir).eval()
    tokenizer = load_tokenizer(student_dir)
    encoder = encoder_for(model, tokenizer, params.max_length)
    loader = DataLoader(dev, batch_size=16, collate_fn=DistillCollator(encoder, None, spec.problem == "regression"))
    batches = [b["student"] for _, b in zip(range(cfg.parity_batches), loader)]
    report: dict = {}
    with atomic_dir(out_dir) as tmp:
        fp32 = tmp / "model.onnx"
        echo(f"export: {student_dir.name}: ONNX (dynamo exporter)")
        input_names = convert.export_onnx(model, batches[0], fp32)
        tokenizer.save_pretrained(tmp)
        write_json(tmp / EXPORT_META_FILE, ExportMeta(labels=list(spec.labels) if spec.labels else None,
                                                      problem=spec.problem, max_length=params.max_length,
                                                      input_names=input_names, task=spec.to_dict()).to_json())
        echo(f"export: {student_dir.name}: parity with PyTorch on {len(batches)} dev batch(es)")
        report["parity"] = convert.parity(model, fp32, batches)
        variants = {"fp32": fp32}
        if cfg.int8:
            echo(f"export: {student_dir.name}: int8 quantisation")
            variants["int8"] = tmp / "model.int8.onnx"
            convert.quantize_int8(fp32, variants["int8"])
        for name, path in variants.items():
            echo(f"export: {student_dir.name}: {name} dev metrics and latency")
            clf = OnnxTextClassifier.from_dir(tmp, variant=name)
            logits = clf.logits(dev.text_a, dev.text_b, batch_size=64)
            metrics = compute_metrics(spec, logits, np.asarray(dev.labels))
            latency = {f"batch_{b}": round(convert.onnx_latency(
                path, {k: v.numpy() for k, v in latency_inputs(dev, encoder, b).items()},
                params.evaluate.latency_warmup, params.evaluate.latency_repeats)["median_ms"], 3)
                for b in params.evaluate.latency_batch_sizes}
            report[name] = {"dev": metrics, "latency_ms": latency,
                            "size_mb": round(path.stat().st_size / 2**20, 2)}
        check_gates(report, spec, cfg)
        write_json(tmp / REPORT_FILE, report)
    return report


def check_gates(report: dict, spec: TaskSpec, cfg: ExportConfig) -> None:
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
