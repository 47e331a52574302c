"""Method registry: the names usable as ``distill.runs.<run>.method`` in params.yaml, and the
checks and factories that need a method class (params.yaml's schema itself is torch-free and
lives in ``kdpipe.config``)."""

from __future__ import annotations

from pydantic import ValidationError

from kdpipe.config import ConfigError, Params, StudentConfig, format_validation_error, suggest
from kdpipe.methods.alp_kd import AlpKD, AlpKDNonOverlap, AlpKDPartialOverlap
from kdpipe.methods.base import FineTune, Method, MethodConfigError
from kdpipe.methods.cr_ild import CRILD
from kdpipe.methods.mlkd import MLKD
from kdpipe.methods.pea_kd import PeaKD
from kdpipe.methods.pkd import PKD
from kdpipe.methods.rail_kd import RailKDConcat, RailKDLayerwise
from kdpipe.methods.tinybert import TinyBERT
from kdpipe.methods.vanilla_kd import VanillaKD
from kdpipe.models.adapters import ModelShape, Shapes

METHODS: dict[str, type[Method]] = {cls.name: cls for cls in (
    FineTune,   # gold labels only: the no-distillation baseline
    VanillaKD,  # logits (Hinton et al.)
    PKD,        # + normalised [CLS] of intermediate layers (BERT-PKD)
    PeaKD,      # PKD on an SPS student initialised by PTP (Pea-KD)
    TinyBERT,   # attention scores + hidden states, then logits (two phases)
    RailKDLayerwise, RailKDConcat,                  # random sorted teacher layers, mean-pooled
    AlpKD, AlpKDNonOverlap, AlpKDPartialOverlap,    # attention over teacher layers' [CLS]
    MLKD,       # token/MHA-split relations + hidden states, then sample relations + logits (two phases)
    CRILD,      # last-layer ILD on mixup inputs (+ consistency), then logits (two phases)
)}


def build_method(name: str, params: dict, regression: bool, shapes: Shapes | None = None) -> Method:
    cls = METHODS[name]
    return cls(cls.Params(**params), regression=regression, shapes=shapes)


def run_student(params: Params, run_name: str) -> StudentConfig:
    """The student of run ``run_name``: the ``student`` section, then the method's preset
    (pea_kd: PTP init and SPS), then the run's own ``student:`` overrides."""
    run = params.distill.runs[run_name]
    merged = {**params.student.model_dump(), **METHODS[run.method].student_defaults, **run.student}
    try:
        return StudentConfig(**merged)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, f"distill.runs.{run_name}.student", "params.yaml")) from None


def check_runs(params: Params, source: str = "params.yaml") -> Params:
    """Every run against its method: a known name, valid method params, known phases, a label-free
    phase for supplementary text, valid train and student overrides.  Returns ``params``."""
    for name, run in params.distill.runs.items():
        if run.method not in METHODS:
            raise ConfigError(
                f"{source}: distill.runs.{name}.method: unknown method {run.method!r}"
                f"{suggest(run.method, METHODS)}; known: {', '.join(sorted(METHODS))}")
        cls = METHODS[run.method]
        try:
            cls.Params(**run.method_params)
        except ValidationError as e:
            raise ConfigError(format_validation_error(e, f"distill.runs.{name}", source)) from None
        if run.supplementary is not None and not cls.label_free_phases:
            raise ConfigError(f"{source}: distill.runs.{name}.supplementary: {run.method} has no label-free phase "
                              f"to train on unlabeled text (mlkd, cr_ild and tinybert have one)")
        unknown = sorted(set(run.phases) - set(cls.phases))
        if unknown:
            raise ConfigError(f"{source}: distill.runs.{name}.phases: {run.method} has no phase {unknown[0]!r} "
                              f"(its phases: {', '.join(cls.phases)})")
        params.run_train_config(name)
        run_student(params, name)
        for phase in run.phases:
            params.run_train_config(name, phase)
    return params


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


def build_run_method(params: Params, run_name: str, teacher_config, regression: bool,
                     seed: int | None = None) -> Method:
    """The run's method, built (and so validated) against the real model shapes.  ``seed``: the
    student's (None = the first of ``distill.seeds``)."""
    run = params.distill.runs[run_name]
    method_params = dict(run.method_params)
    if "seed" in METHODS[run.method].Params.model_fields:
        # RAIL-KD's layer draws and CR-ILD's mixup follow the student's seed, unless the run fixes one
        method_params.setdefault("seed", params.distill.seeds[0] if seed is None else seed)
    try:
        shapes = method_shapes(run_student(params, run_name), teacher_config)
        return build_method(run.method, method_params, regression, shapes)
    except MethodConfigError as e:
        raise ConfigError(f"params.yaml: distill.runs.{run_name} ({run.method}): {e}") from None
