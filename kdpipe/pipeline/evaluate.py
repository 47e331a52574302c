"""Stage ``evaluate``: teacher and every student on dev/test: metrics with their bootstrap
intervals, comparisons against the baselines, retention, size, latency, and every model's
per-example predictions (``predictions/<model>.parquet``) so any comparison can be recomputed."""

from __future__ import annotations

import copy
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from kdpipe.config import Params
from kdpipe.data.batches import DistillCollator, inference_loader
from kdpipe.data.splits import TextDataset, load_datasets
from kdpipe.data.tasks import TaskSpec
from kdpipe.evaluation.latency import latency_inputs, torch_latency
from kdpipe.evaluation.metrics import compute_metrics, predicted_values
from kdpipe.evaluation.predict import predict
from kdpipe.evaluation.significance import CONFIDENCE, metric_interval, paired_difference
from kdpipe.files import atomic_dir
from kdpipe.models.adapters import ModelShape, num_heads, num_layers
from kdpipe.models.loading import (count_parameters, encoder_for, is_model_dir, load_classifier, load_tokenizer,
                                   model_file_bytes, read_model_meta)
from kdpipe.models.sps import physical_layers, sps_settings
from kdpipe.models.students import set_attention_heads


PREDICTIONS_DIR = "predictions"
# The baselines every student is compared with, by method: the same student without KD, and logit KD.
BASELINE_METHODS = ("finetune", "vanilla_kd")


def evaluate_model(params: Params, model_dir: Path, spec: TaskSpec, sets: dict[str, TextDataset],
                   compare_heads: int | None = None, outputs: dict | None = None) -> dict:
    """Dev/test metrics, size and PyTorch latency of one saved model.  ``compare_heads``: when the
    model runs another head count, also time the same weights reshaped to that many heads
    (MLKD-BERT: a fewer-head student vs the teacher's head count), as ``latency_ms_at_heads``.
    ``outputs``: filled with each split's raw outputs [N, C] (for predictions and comparisons)."""
    model = load_classifier(model_dir).eval()
    encoder = encoder_for(model, load_tokenizer(model_dir), params.max_length)
    collator = DistillCollator(encoder, None, spec.problem == "regression")
    report: dict = {}
    for split in ("dev", "test"):
        if split in sets:
            logits, labels, loss = predict(model, inference_loader(sets[split], collator, 64))
            report[split] = {**compute_metrics(spec, logits, labels), "loss": loss}
            if outputs is not None:
                outputs[split] = logits
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


def evaluate_models(params: Params, data_dir: Path, teacher_dir: Path, students_dir: Path,
                    predictions_dir: Path | None = None, echo=print) -> dict:
    """The evaluate report of the teacher and every student of ``params.distill.runs``;
    ``predictions_dir``: also write each model's per-example predictions there."""
    if params.evaluate.threads:
        torch.set_num_threads(params.evaluate.threads)
    spec, sets = load_datasets(data_dir)
    main = spec.main_metric
    folders = [p for p in sorted(Path(students_dir).iterdir()) if is_model_dir(p) and p.name in params.distill.runs]
    started = time.perf_counter()
    echo(f"evaluate: teacher (1/{len(folders) + 1}): dev/test metrics and latency")
    outputs: dict[str, dict[str, np.ndarray]] = {"teacher": {}}
    teacher = evaluate_model(params, teacher_dir, spec, sets, outputs=outputs["teacher"])
    students = {}
    for i, folder in enumerate(folders, 2):  # a run removed from params.yaml leaves a stale folder: skipped
        echo(f"evaluate: {folder.name} ({i}/{len(folders) + 1}, {time.perf_counter() - started:.0f} s so far)")
        outputs[folder.name] = {}
        report = evaluate_model(params, folder, spec, sets, compare_heads=teacher["attention_heads"],
                                outputs=outputs[folder.name])
        report["method"] = read_model_meta(folder)["method"]["method"]
        report["retention_pct"] = {split: round(100 * report[split][main] / teacher[split][main], 2)
                                   for split in ("dev", "test") if split in report and teacher[split][main]}
        report["speedup"] = {k: round(teacher["latency_ms"][k] / v, 2) for k, v in report["latency_ms"].items()}
        report["compression"] = round(teacher["parameters"] / report["parameters"], 2)
        students[folder.name] = report
    echo(f"evaluate: bootstrap intervals and comparisons ({time.perf_counter() - started:.0f} s so far)")
    result = {"task": spec.name, "main_metric": main, "teacher": teacher, "students": students}
    add_intervals(result, spec, outputs, sets)
    add_comparisons(result, spec, {name: o["dev"] for name, o in outputs.items()}, np.asarray(sets["dev"].labels))
    if predictions_dir is not None:
        write_predictions(Path(predictions_dir), spec, outputs, sets)
    return result


def add_intervals(report: dict, spec: TaskSpec, outputs: dict[str, dict[str, np.ndarray]],
                  sets: dict[str, TextDataset]) -> None:
    """Each model's main metric per split gets its bootstrap interval, ``<split>_interval``."""
    for name, r in [("teacher", report["teacher"]), *report["students"].items()]:
        for split, logits in outputs[name].items():
            _, low, high = metric_interval(spec, logits, np.asarray(sets[split].labels))
            r[f"{split}_interval"] = {"low": low, "high": high, "confidence": CONFIDENCE}


def comparison_targets(report: dict) -> dict[str, str]:
    """Who every student is compared with: ``{"finetune": run, "vanilla_kd": run, "best": run}``,
    each the first run (in params order) with that method, and the run with the best dev score."""
    main, students = report["main_metric"], report["students"]
    targets = {}
    for method in BASELINE_METHODS:
        run = next((name for name, r in students.items() if r.get("method") == method), None)
        if run is not None:
            targets[method] = run
    if students:
        targets["best"] = max(students, key=lambda name: students[name]["dev"][main])
    return targets


def add_comparisons(report: dict, spec: TaskSpec, dev_outputs: dict[str, np.ndarray], labels: np.ndarray) -> None:
    """``versus``: each student's dev main-metric difference from each comparison target, with its
    paired-bootstrap interval and verdict (``evaluation.significance``); also the teacher's."""
    targets = comparison_targets(report)
    report["comparisons"], report["dev_examples"] = targets, int(len(labels))
    for name, r in [("teacher", report["teacher"]), *report["students"].items()]:
        versus = {}
        for role, target in targets.items():
            if target != name:
                d = paired_difference(spec, dev_outputs[name], dev_outputs[target], labels)
                versus[role] = {"run": target, "difference": d.observed, "low": d.low, "high": d.high,
                                "confidence": d.confidence, "verdict": d.verdict}
        r["versus"] = versus


def write_predictions(out_dir: Path, spec: TaskSpec, outputs: dict[str, dict[str, np.ndarray]],
                      sets: dict[str, TextDataset]) -> None:
    """``<model>.parquet`` per model: split, index (row in the prepared split), label, prediction
    and the raw outputs (``logit_<i>``; regression: ``score``), written atomically as one folder."""
    with atomic_dir(out_dir) as tmp:
        for name, splits in outputs.items():
            frames = []
            for split, logits in splits.items():
                frame = pd.DataFrame({"split": split, "index": np.arange(len(logits)),
                                      "label": sets[split].labels, "prediction": predicted_values(spec, logits)})
                columns = ["score"] if spec.problem == "regression" else [f"logit_{i}" for i in range(logits.shape[1])]
                frames.append(pd.concat([frame, pd.DataFrame(logits.reshape(len(logits), -1), columns=columns)],
                                        axis=1))
            pd.concat(frames, ignore_index=True).to_parquet(tmp / f"{name}.parquet", index=False)


def tradeoff_rows(report: dict) -> list[dict]:
    """One row per (model, batch size): main dev metric vs latency, for the DVC scatter plot."""
    main = report["main_metric"]
    rows = []
    for name, r in [("teacher", report["teacher"]), *report["students"].items()]:
        for batch, ms in r["latency_ms"].items():
            rows.append({"model": name, "batch": batch, "latency_ms": ms, "dev_main_metric": r["dev"][main],
                         "metric": main})
    return rows
