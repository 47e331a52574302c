"""Students: plain Hugging Face models cut from the teacher, never forked model code.

A student is a deep copy of the teacher (or of its pre-trained checkpoint) whose layer list keeps
only the selected layers; then optionally the encoder of a PTP student (Pea-KD), a fresh head,
another head count (MLKD-BERT) and SPS (Pea-KD).  ``make_student`` is the one constructor.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Literal, Sequence

from accelerate.utils import set_seed
from torch import nn
from transformers import PreTrainedModel

from kdpipe.config import StudentConfig
from kdpipe.models.adapters import family_of, num_layers
from kdpipe.models.loading import load_classifier, model_problem, read_model_meta
from kdpipe.models.sources import ModelError, resolve_model_path
from kdpipe.models.sps import apply_sps, physical_state_dict


def select_layers(teacher_depth: int, student_depth: int,
                  choice: Literal["uniform", "first", "last"] | Sequence[int]) -> list[int]:
    """0-based teacher layers that initialise the student's layers, in order.

    ``uniform`` spreads the student over the teacher and always keeps the top layer
    (6 -> 3 gives [1, 3, 5]), like DistilBERT's and PKD-skip's choices.
    """
    if student_depth > teacher_depth:
        raise ModelError(f"student.num_layers: {student_depth} is deeper than the teacher "
                         f"({teacher_depth} layers)")
    if choice == "first":
        return list(range(student_depth))
    if choice == "last":
        return list(range(teacher_depth - student_depth, teacher_depth))
    if choice == "uniform":
        return [round((i + 1) * teacher_depth / student_depth) - 1 for i in range(student_depth)]
    layers = list(choice)
    bad = [i for i in layers if not 0 <= i < teacher_depth]
    if bad:
        raise ModelError(f"student.layers: {bad} out of range for a {teacher_depth}-layer teacher "
                         f"(0-based, 0..{teacher_depth - 1})")
    if len(layers) != student_depth:
        raise ModelError(f"student.layers lists {len(layers)} layers but student.num_layers is {student_depth}")
    return layers


def build_student(source: PreTrainedModel, layers: Sequence[int]) -> PreTrainedModel:
    """A copy of ``source`` that keeps only ``layers`` (embeddings, pooler and head are copied)."""
    family = family_of(source)
    student = copy.deepcopy(source)
    kept = nn.ModuleList([copy.deepcopy(family.layer_list(source)[i]) for i in layers])
    family.set_layer_list(student, kept)
    setattr(student.config, family.depth_field, len(layers))
    for new_index, layer in enumerate(kept):
        # Some attention modules carry their position for caching; keep them consistent.
        for module in layer.modules():
            if hasattr(module, "layer_idx"):
                module.layer_idx = new_index
    student.config.kdpipe_init_layers = list(layers)
    return student


def set_attention_heads(model: PreTrainedModel, heads: int) -> PreTrainedModel:
    """Run ``model``'s attention with ``heads`` heads (in place; returned for chaining).

    Only a reshape: Q/K/V keep their [d, d] weights and are cut into ``heads`` heads of d / heads
    (MLKD-BERT's free student head count).  Saved models keep it through their config, so the
    exported ONNX graph uses it too.
    """
    family = family_of(model)
    width = family.width(model.config)
    if heads < 1 or width % heads:
        raise ModelError(f"{heads} attention heads do not divide the hidden width {width}; "
                         f"use a divisor of {width}")
    setattr(model.config, family.heads_field, heads)
    for layer in family.layer_list(model):
        module = family.attention_module(layer, "heads_module")
        setattr(module, family.attention.heads_attr, heads)
        module.attention_head_size = width // heads
        module.scaling = module.attention_head_size ** -0.5
    return model


def with_new_head(model: PreTrainedModel, labels: Sequence[str] | None, problem: str | None = None) -> PreTrainedModel:
    """A model of the same class whose encoder (everything under ``base_model_prefix``) is
    ``model``'s and whose task head is freshly initialised for ``labels`` (None: regression).
    Draws from torch's RNG: seed first.  Not for SPS models (apply SPS afterwards)."""
    config = copy.deepcopy(model.config)
    config.num_labels = 1 if labels is None else len(labels)
    config.problem_type = "regression" if problem == "regression" else "single_label_classification"
    config.id2label = {i: str(i) for i in range(config.num_labels)} if labels is None else dict(enumerate(labels))
    config.label2id = {name: i for i, name in config.id2label.items()}
    fresh = type(model)(config)
    load_encoder(fresh, model.state_dict())
    return fresh


def load_encoder(model: PreTrainedModel, state: dict, source: str = "model") -> None:
    """Copy the encoder part of ``state`` (keys under ``base_model_prefix``; the head is left
    as it is) into ``model``'s physical layers.  Every encoder weight must be there."""
    prefix = model.base_model_prefix + "."
    encoder_state = {k: v for k, v in state.items() if k.startswith(prefix)}
    wanted = [k for k in physical_state_dict(model) if k.startswith(prefix)]
    missing = sorted(set(wanted) - set(encoder_state))
    if missing:
        raise ModelError(f"{source}: encoder weights missing: {missing[:3]}{' ...' if len(missing) > 3 else ''} "
                         f"(a different architecture or depth?)")
    model.load_state_dict(encoder_state, strict=False)


def make_student(student_cfg: StudentConfig, teacher: nn.Module, teacher_dir: Path, seed: int,
                 ptp_source: Path | None = None,
                 head: Sequence[str] | None = None) -> tuple[nn.Module, list[int]]:
    """The student of ``student_cfg``: teacher layers chosen by ``layers``, taken from the
    fine-tuned teacher (``init: teacher``, head included) or from the teacher's pre-trained
    checkpoint (``pretrained``, fresh head); then the encoder of the PTP student in
    ``ptp_source`` (``init: ptp``, fresh task head: its 4-way head is dropped), a fresh head for
    ``head`` labels instead of the task's (the PTP stage's own students), and SPS when ``sps``."""
    layers = select_layers(num_layers(teacher), student_cfg.num_layers, student_cfg.layers)
    set_seed(seed)  # fresh heads are drawn from the RNG
    if student_cfg.init == "pretrained":
        base = resolve_model_path(read_model_meta(teacher_dir)["base_model"])
        source = load_classifier(base, teacher.config.num_labels, model_problem(teacher))
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


def architecture_name(student_cfg: StudentConfig) -> str:
    """A folder name for this student architecture (depth, layer choice, SPS mode, heads): the
    PTP stage keeps one encoder per name."""
    layers = student_cfg.layers if isinstance(student_cfg.layers, str) else "-".join(map(str, student_cfg.layers))
    sps = f"sps-{student_cfg.sps.shuffle}" if student_cfg.sps else "plain"
    heads = f"_A{student_cfg.attention_heads}" if student_cfg.attention_heads else ""
    return f"L{student_cfg.num_layers}_{layers}_{sps}{heads}"
