"""Stage ``evaluate``: teacher and every student on dev/test: metrics, retention, size, latency."""

from __future__ import annotations

import copy
import time
from pathlib import Path

import torch

from kdpipe.config import Params
from kdpipe.data.batches import DistillCollator, inference_loader
from kdpipe.data.splits import TextDataset, load_datasets
from kdpipe.data.tasks import TaskSpec
from kdpipe.evaluation.latency import latency_inputs, torch_latency
from kdpipe.evaluation.predict import evaluate_split
from kdpipe.models.adapters import ModelShape, num_heads, num_layers
from kdpipe.models.loading import (count_parameters, encoder_for, is_model_dir, load_classifier, load_tokenizer,
                                   model_file_bytes, read_model_meta)
from kdpipe.models.sps import physical_layers, sps_settings
from kdpipe.models.students import set_attention_heads


def evaluate_model(params: Params, model_dir: Path, spec: TaskSpec, sets: dict[str, TextDataset],
                   compare_heads: int | None = None) -> dict:
    """Dev/test metrics, size and PyTorch latency of one saved model.  ``compare_heads``: when the
    model runs another head count, also time the same weights reshaped to that many heads
    (MLKD-BERT: a fewer-head student vs the teacher's head count), as ``latency_ms_at_heads``."""
    model = load_classifier(model_dir).eval()
    encoder = encoder_for(model, load_tokenizer(model_dir), params.max_length)
    collator = DistillCollator(encoder, None, spec.problem == "regression")
    report: dict = {}
    for split in ("dev", "test"):
        if split in sets:
            report[split] = evaluate_split(model, inference_loader(sets[split], collator, 64), spec)
    report["parameters"] = count_parameters(model)
    report["layers"] = num_layers(model)  # effective: an SPS model runs its physical layers twice
    report["physical_layers"] = physical_layers(model)
    if sps_settings(model):
        report["sps"] = sps_settings(model)["shuffle"]
    report["size_mb"] = round(model_file_bytes(model_dir) / 2**20, 2)
    ev = params.evaluate

    def latency(m) -> dict[str, float]:
        return {f"batch_{b}": round(torch_latency(m, latency_inputs(sets["dev"], encoder, b),
                                                  ev.latency_warmup, ev.latency_repeats)["median_ms"], 3)
                for b in ev.latency_batch_sizes}

    report["latency_ms"] = latency(model)
    report["attention_heads"] = num_heads(model)
    width = ModelShape.of(model.config).hidden
    if compare_heads and compare_heads != report["attention_heads"] and width % compare_heads == 0:
        at_heads = latency(set_attention_heads(copy.deepcopy(model), compare_heads))
        report["latency_ms_at_heads"] = {"heads": compare_heads, **at_heads,
                                         **{f"speedup_{k}": round(at_heads[k] / report["latency_ms"][k], 3)
                                            for k in at_heads}}
    return report


def evaluate_models(params: Params, data_dir: Path, teacher_dir: Path, students_dir: Path, echo=print) -> dict:
    if params.evaluate.threads:
        torch.set_num_threads(params.evaluate.threads)
    spec, sets = load_datasets(data_dir)
    main = spec.main_metric
    folders = [p for p in sorted(Path(students_dir).iterdir()) if is_model_dir(p) and p.name in params.distill.runs]
    started = time.perf_counter()
    echo(f"evaluate: teacher (1/{len(folders) + 1}): dev/test metrics and latency")
    teacher = evaluate_model(params, teacher_dir, spec, sets)
    students = {}
    for i, folder in enumerate(folders, 2):  # a run removed from params.yaml leaves a stale folder: skipped
        echo(f"evaluate: {folder.name} ({i}/{len(folders) + 1}, {time.perf_counter() - started:.0f} s so far)")
        report = evaluate_model(params, folder, spec, sets, compare_heads=teacher["attention_heads"])
        report["method"] = read_model_meta(folder)["method"]["method"]
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
