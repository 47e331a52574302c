"""Stage ``evaluate``: teacher and every run (each over its seeds) on dev/test: metrics as mean ±
std over seeds with their bootstrap intervals, comparisons against the baselines (paired
bootstrap, seeds pooled; Almost Stochastic Order over seeds), retention, size, latency, and every
model's per-example predictions (``predictions/<run>/seed-<seed>.parquet``) so any comparison can
be recomputed."""

from __future__ import annotations

import copy
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from kdpipe.config import Params, student_name
from kdpipe.data.batches import DistillCollator, Encoder, split_labels
from kdpipe.data.splits import TextDataset, load_datasets
from kdpipe.data.tasks import TaskSpec
from kdpipe.evaluation.latency import latency_inputs, torch_latency
from kdpipe.evaluation.metrics import compute_metrics, predicted_values
from kdpipe.evaluation.predict import load_split_outputs, split_outputs
from kdpipe.evaluation.significance import (ASO_THRESHOLD, CONFIDENCE, almost_stochastic_orders, metric_interval,
                                            paired_difference)
from kdpipe.files import atomic_dir
from kdpipe.pipeline.common import split_outputs_key
from kdpipe.models.adapters import ModelShape, num_heads, num_layers
from kdpipe.models.loading import (count_parameters, encoder_for, is_model_dir, load_classifier, load_tokenizer,
                                   model_file_bytes, read_model_meta)
from kdpipe.models.sps import physical_layers, sps_settings
from kdpipe.models.students import set_attention_heads


PREDICTIONS_DIR = "predictions"
# The baselines every student is compared with, by method: the same student without KD, and logit KD.
BASELINE_METHODS = ("finetune", "vanilla_kd")
# Almost Stochastic Order needs a few seeds to say anything (and costs deepsig about 7 s a pair on
# 2 cores): computed where both runs have at least this many; the bootstrap verdict always is.
ASO_MIN_SEEDS = 3


def evaluate_model(params: Params, model_dir: Path, spec: TaskSpec, sets: dict[str, TextDataset],
                   compare_heads: int | None = None, outputs: dict | None = None, timing: bool = True,
                   outputs_key: str | None = None) -> dict:
    """Dev/test metrics, size and PyTorch latency of one saved model.  ``compare_heads``: when the
    model runs another head count, also time the same weights reshaped to that many heads
    (MLKD-BERT: a fewer-head student vs the teacher's head count), as ``latency_ms_at_heads``.
    ``outputs``: filled with each split's raw outputs [N, C] (for predictions and comparisons).
    ``timing=False``: metrics only (a run's further seeds: same architecture, same cost).
    ``outputs_key``: score the dev/test outputs the model's training stage saved under this key
    (``pipeline.common.split_outputs_key``) instead of predicting again, where there are any."""
    saved = load_split_outputs(model_dir, outputs_key) if outputs_key else None
    if saved is not None and not timing:  # scored from the outputs its training stage saved
        model = encoder = None
    else:
        model = load_classifier(model_dir).eval()
        encoder = encoder_for(model, load_tokenizer(model_dir), params.max_length)
    if saved is None:
        saved = split_outputs(model, sets, DistillCollator(encoder, None, spec.problem == "regression"))
    report: dict = {}
    for split in ("dev", "test"):
        if split in saved:
            logits, labels, loss = saved[split]
            if spec.problem == "qa":  # window logits -> each question's answer (SQuAD's post-processing)
                logits, labels = sets[split].answers(logits), sets[split].references()
            report[split] = {**compute_metrics(spec, logits, labels), "loss": loss}
            if outputs is not None:
                outputs[split] = logits
    if not timing:
        return report
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


def trained_seeds(params: Params, students_dir: Path) -> dict[str, list[int]]:
    """Run -> the seeds of ``distill.seeds`` it has a trained student for, in that order (a run
    or seed removed from params.yaml leaves a stale folder: not listed)."""
    found = {run: [seed for seed in params.distill.seeds
                   if is_model_dir(Path(students_dir) / student_name(run, seed))] for run in params.distill.runs}
    return {run: seeds for run, seeds in found.items() if seeds}


def combine_seeds(per_seed: dict[int, dict]) -> dict:
    """One run's report from its seeds' reports (the first seed's carries size and latency):
    each dev/test metric's mean over seeds, its sample standard deviation (``<split>_std``; 0 for
    one seed), the seeds and each seed's own metrics (``per_seed``)."""
    seeds = list(per_seed)
    out = {k: v for k, v in per_seed[seeds[0]].items() if k not in ("dev", "test")}
    for split in ("dev", "test"):
        if split in per_seed[seeds[0]]:
            values = {m: [per_seed[s][split][m] for s in seeds] for m in per_seed[seeds[0]][split]}
            out[split] = {m: float(np.mean(v)) for m, v in values.items()}
            out[f"{split}_std"] = {m: float(np.std(v, ddof=1)) if len(v) > 1 else 0.0 for m, v in values.items()}
    out["seeds"] = seeds
    out["per_seed"] = {str(s): {split: r[split] for split in ("dev", "test") if split in r}
                       for s, r in per_seed.items()}
    return out


def evaluate_models(params: Params, data_dir: Path, teacher_dir: Path, students_dir: Path,
                    predictions_dir: Path | None = None, echo=print) -> dict:
    """The evaluate report of the teacher and every run of ``params.distill.runs``, each run over
    its seeds (mean and std over seeds; size and latency of its first seed, the one exported);
    ``predictions_dir``: also write every model's per-example predictions there."""
    if params.evaluate.threads:
        torch.set_num_threads(params.evaluate.threads)
    # every model reads the teacher's tokenizer at max_length (QA: the same windows for all)
    spec, sets = load_datasets(data_dir, load_tokenizer(teacher_dir), params.max_length)
    main = spec.main_metric
    runs = trained_seeds(params, students_dir)
    outputs_key = split_outputs_key(data_dir, params.max_length)
    total = 1 + sum(len(seeds) for seeds in runs.values())
    started = time.perf_counter()
    echo(f"evaluate: teacher (1/{total}): dev/test metrics and latency")
    teacher_outputs: dict[str, np.ndarray] = {}
    teacher = evaluate_model(params, teacher_dir, spec, sets, outputs=teacher_outputs)
    outputs: dict[str, dict[str, list[np.ndarray]]] = {"teacher": {k: [v] for k, v in teacher_outputs.items()}}
    seed_outputs: dict[str, dict[int, dict[str, np.ndarray]]] = {}
    students, done = {}, 1
    for run, seeds in runs.items():
        per_seed, seed_outputs[run] = {}, {}
        for seed in seeds:
            done += 1
            folder = Path(students_dir) / student_name(run, seed)
            echo(f"evaluate: {student_name(run, seed)} ({done}/{total}, {time.perf_counter() - started:.0f} s so far)")
            seed_outputs[run][seed] = {}
            per_seed[seed] = evaluate_model(params, folder, spec, sets, compare_heads=teacher["attention_heads"],
                                            outputs=seed_outputs[run][seed], timing=seed == seeds[0],
                                            outputs_key=outputs_key)
        report = combine_seeds(per_seed)
        report["method"] = read_model_meta(Path(students_dir) / student_name(run, seeds[0]))["method"]["method"]
        report["retention_pct"] = {split: round(100 * report[split][main] / teacher[split][main], 2)
                                   for split in ("dev", "test") if split in report and teacher[split][main]}
        report["speedup"] = {k: round(teacher["latency_ms"][k] / v, 2) for k, v in report["latency_ms"].items()}
        report["compression"] = round(teacher["parameters"] / report["parameters"], 2)
        students[run] = report
        outputs[run] = {split: [seed_outputs[run][seed][split] for seed in seeds] for split in teacher_outputs}
    echo(f"evaluate: bootstrap intervals and comparisons ({time.perf_counter() - started:.0f} s so far)")
    result = {"task": spec.name, "main_metric": main, "spec": spec.to_dict(), "teacher": teacher, "students": students}
    # every model reads the teacher's tokenizer at max_length, so one encoder gives every split's labels
    encoder = Encoder(load_tokenizer(teacher_dir), [], params.max_length) if spec.problem == "tagging" else None
    labels = {split: split_labels(data, encoder) for split, data in sets.items()}
    add_intervals(result, spec, outputs, labels)
    add_comparisons(result, spec, {name: o["dev"] for name, o in outputs.items()}, labels["dev"])
    if predictions_dir is not None:
        write_predictions(Path(predictions_dir), spec, {"teacher": teacher_outputs, **{
            student_name(run, seed): o for run, by_seed in seed_outputs.items() for seed, o in by_seed.items()}},
            labels, {split: [e.id for e in data.examples] for split, data in sets.items()} if spec.problem == "qa" else None)
    return result


def add_intervals(report: dict, spec: TaskSpec, outputs: dict[str, dict[str, list[np.ndarray]]],
                  labels: dict[str, np.ndarray]) -> None:
    """Each model's main metric per split gets its bootstrap interval, ``<split>_interval``
    (a run's seeds pooled: the interval of its seed-averaged score over the dev set's noise);
    ``labels``: each split's, as ``data.batches.split_labels`` gives them."""
    for name, r in [("teacher", report["teacher"]), *report["students"].items()]:
        for split, logits in outputs[name].items():
            _, low, high = metric_interval(spec, logits, labels[split])
            r[f"{split}_interval"] = {"low": low, "high": high, "confidence": CONFIDENCE}


def comparison_targets(report: dict) -> dict[str, str]:
    """Who every student is compared with: ``{"finetune": run, "vanilla_kd": run, "best": run}``,
    each the first run (in params order) with that method, and the run with the best dev score
    (its mean over seeds)."""
    main, students = report["main_metric"], report["students"]
    targets = {}
    for method in BASELINE_METHODS:
        run = next((name for name, r in students.items() if r.get("method") == method), None)
        if run is not None:
            targets[method] = run
    if students:
        targets["best"] = max(students, key=lambda name: students[name]["dev"][main])
    return targets


def add_comparisons(report: dict, spec: TaskSpec, dev_outputs: dict[str, list[np.ndarray]],
                    labels: np.ndarray) -> None:
    """``versus``: each student's dev main-metric difference from each comparison target, with its
    paired-bootstrap interval and verdict (seeds pooled, ``evaluation.significance``), and where
    both have ``ASO_MIN_SEEDS`` seeds or more, Almost Stochastic Order over their per-seed dev scores (``aso``:
    ε_min of "this run is better"; below ``ASO_THRESHOLD`` it is); also the teacher's."""
    targets = comparison_targets(report)
    main = report["main_metric"]
    report["comparisons"], report["dev_examples"] = targets, int(len(labels))
    seed_scores = {name: [s["dev"][main] for s in r["per_seed"].values()] for name, r in report["students"].items()}
    aso_pending = []  # (comparison, scores, target's scores): computed together, in parallel
    for name, r in [("teacher", report["teacher"]), *report["students"].items()]:
        versus = {}
        for role, target in targets.items():
            if target != name:
                d = paired_difference(spec, dev_outputs[name], dev_outputs[target], labels)
                versus[role] = {"run": target, "difference": d.observed, "low": d.low, "high": d.high,
                                "confidence": d.confidence, "verdict": d.verdict}
                mine, theirs = seed_scores.get(name, []), seed_scores[target]
                if min(len(mine), len(theirs)) >= ASO_MIN_SEEDS:
                    aso_pending.append((versus[role], mine, theirs))
        r["versus"] = versus
    aso = almost_stochastic_orders([(mine, theirs) for _, mine, theirs in aso_pending], jobs=torch.get_num_threads())
    for comparison, value in zip([c for c, _, _ in aso_pending], aso):
        comparison["aso"], comparison["aso_threshold"] = round(value, 4), ASO_THRESHOLD


def write_predictions(out_dir: Path, spec: TaskSpec, outputs: dict[str, dict[str, np.ndarray]],
                      labels: dict[str, np.ndarray], question_ids: dict[str, list[str]] | None = None) -> None:
    """``<model>.parquet`` per model (``teacher``, ``<run>/seed-<seed>``): split, index (row in
    the prepared split), label, prediction and the raw outputs (``logit_<i>``; regression:
    ``score``), written atomically as one folder.  Tagging: label, prediction and ``logits`` are
    per-word lists (the words metrics score: ``IGNORE`` labels past them).  Extractive QA: one row
    per question, its ``id``, reference answers (``label``, a list) and answer text (``prediction``)."""
    with atomic_dir(out_dir) as tmp:
        for name, splits in outputs.items():
            frames = []
            for split, logits in splits.items():
                predicted = predicted_values(spec, logits)
                if spec.problem == "qa":
                    frames.append(pd.DataFrame({"split": split, "index": np.arange(len(logits)),
                                                "id": question_ids[split], "label": list(labels[split]),
                                                "prediction": list(predicted)}))
                    continue
                if spec.problem == "tagging":
                    frames.append(pd.DataFrame({"split": split, "index": np.arange(len(logits)),
                                                "label": list(labels[split]), "prediction": list(predicted),
                                                "logits": [z.tolist() for z in logits]}))
                    continue
                frame = pd.DataFrame({"split": split, "index": np.arange(len(logits)),
                                      "label": labels[split], "prediction": predicted})
                columns = ["score"] if spec.problem == "regression" else [f"logit_{i}" for i in range(logits.shape[1])]
                frames.append(pd.concat([frame, pd.DataFrame(logits.reshape(len(logits), -1), columns=columns)],
                                        axis=1))
            path = tmp / f"{name}.parquet"
            path.parent.mkdir(parents=True, exist_ok=True)
            pd.concat(frames, ignore_index=True).to_parquet(path, index=False)


def tradeoff_rows(report: dict) -> list[dict]:
    """One row per (model, batch size): main dev metric vs latency, for the DVC scatter plot."""
    main = report["main_metric"]
    rows = []
    for name, r in [("teacher", report["teacher"]), *report["students"].items()]:
        for batch, ms in r["latency_ms"].items():
            rows.append({"model": name, "batch": batch, "latency_ms": ms, "dev_main_metric": r["dev"][main],
                         "metric": main})
    return rows
