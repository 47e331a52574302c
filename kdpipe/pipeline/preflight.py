"""Cheap checks every stage runs before any work (no weights are loaded)."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from transformers import AutoConfig

from kdpipe.config import ConfigError, Params
from kdpipe.methods.base import Method
from kdpipe.data.tasks import TaskDataError, check_supplementary, get_task
from kdpipe.env import repo_root
from kdpipe.methods.registry import build_run_method, check_runs, run_student
from kdpipe.models.adapters import family_of
from kdpipe.models.loading import check_model_folder
from kdpipe.models.sources import ModelError, resolve_model_path
from kdpipe.models.students import select_layers


def preflight(params: Params, reads: Sequence[Path] = ()) -> None:
    """Every run against its method (name, params, phases), then against the real shapes: an
    unknown task, a missing teacher package/path, a student deeper than the teacher (read from
    the teacher's config), or a run whose layer mapping, widths or head counts cannot work fail
    here, naming the key at fault.  ``reads``: model folders the stage loads (the fine-tuned teacher,
    a student), checked too when present (a missing one is the stage's own error)."""
    check_runs(params)
    for note in precision_notes(params):
        print(f"kdpipe: warning: {note}", file=sys.stderr, flush=True)
    problem = params.task.problem or "classification"
    if params.task.name != "custom":
        problem = get_task(params.task.name).problem  # an unknown name fails here, listing the known ones
    teacher = resolve_model_path(params.teacher.model)
    if Path(teacher).is_dir():
        check_model_folder(teacher, "teacher.model")
    for folder in reads:
        if Path(folder).is_dir():
            check_model_folder(folder, str(folder))
    config = AutoConfig.from_pretrained(teacher)
    depth = family_of(config).depth(config)
    select_layers(depth, params.student.num_layers, params.student.layers)
    for run_name in params.distill.runs:
        student = run_student(params, run_name)
        try:
            select_layers(depth, student.num_layers, student.layers)
        except ModelError as e:
            raise ConfigError(f"params.yaml: distill.runs.{run_name}: {e}") from None
        method = build_run_method(params, run_name, config, regression=problem == "regression")
        kind = {"tagging": "token tagging", "qa": "extractive QA"}.get(problem)
        if kind and method.not_per_token:
            raise ConfigError(f"params.yaml: distill.runs.{run_name}: {method.name} does not apply to {kind} "
                              f"(task {params.task.name}): {method.not_per_token}")
        if kind and student.init == "ptp":
            raise ConfigError(f"params.yaml: distill.runs.{run_name}: student.init: ptp does not apply to {kind} "
                              f"(task {params.task.name}): PTP's confidence classes are per sentence; "
                              f"use init: teacher or pretrained")
        if problem == "qa" and params.distill.runs[run_name].supplementary is not None:
            raise ConfigError(f"params.yaml: distill.runs.{run_name}.supplementary: extractive QA trains on "
                              f"question + context windows; supplementary sentences have no context to read")
        for note in training_notes(params, run_name, method):
            print(f"kdpipe: warning: {note}", file=sys.stderr, flush=True)
        extra = params.distill.runs[run_name].supplementary
        if extra is not None:
            try:
                check_supplementary(extra, params.task, repo_root(), f"distill.runs.{run_name}.supplementary")
            except TaskDataError as e:
                raise ConfigError(f"params.yaml: {e}") from None


def training_notes(params: Params, run_name: str, method: Method) -> list[str]:
    """Settings that are valid but silently switch part of a method off, said before training."""
    notes = []
    ramp = getattr(method, "ramp", None)
    if getattr(method, "cr_weight", 0) > 0 and ramp is not None and "ild" in method.phases:
        epochs = params.run_train_config(run_name, "ild", method.phase_train("ild")).epochs
        if epochs < 2:  # the weight is w * e/E with e the 0-based epoch: 0 for all of a 1-epoch phase
            notes.append(f"distill.runs.{run_name}: CR-ILD's consistency weight ramps as e/E over the ild "
                         f"phase's epochs, so with {epochs:g} epoch it is 0 throughout: this run trains without "
                         f"consistency regularisation (set phases.ild.epochs >= 2, or consistency_weight: 0 "
                         f"to say so)")
    return notes


def precision_notes(params: Params, cpu_bf16: bool | None = None) -> list[str]:
    """bf16 asked for on a CPU whose oneDNN has no bf16 kernels (``cpu_bf16``; None = this
    machine's): it runs emulated, slower than fp32.  Nothing to say on a CUDA machine."""
    import torch

    if torch.cuda.is_available():
        return []
    if cpu_bf16 is None:
        cpu_bf16 = torch.ops.mkldnn._is_mkldnn_bf16_supported()
    keys = {"teacher.train": params.teacher.train, "ptp.train": params.ptp.train,
            "distill.train": params.distill.train}
    keys |= {f"distill.runs.{name}.train": params.run_train_config(name) for name, run in params.distill.runs.items()
             if run.train}
    return [f"{key}.mixed_precision: bf16 on this CPU ({torch.backends.cpu.get_cpu_capability()}, no oneDNN bf16 "
            f"kernels) runs emulated, slower than fp32: set it to no" for key, cfg in keys.items()
            if cfg.mixed_precision == "bf16" and not cpu_bf16]
