"""Load and save models, tokenizers and their ``kdpipe.json`` metadata.

A saved model folder is ``save_pretrained``'s (safetensors + config), the tokenizer, and
``kdpipe.json`` (``MODEL_META_FILE``: role, task, training summary).  SPS models are saved as
their physical layers and shared again on load.
"""

from __future__ import annotations

import json
from pathlib import Path

from torch import nn
from transformers import (AutoModelForQuestionAnswering, AutoModelForSequenceClassification,
                          AutoModelForTokenClassification, AutoTokenizer, PreTrainedModel)

from kdpipe.data.batches import Encoder
from kdpipe.files import write_json
from kdpipe.models.family import EncoderFamily
from kdpipe.models.sources import ModelError, resolve_model_path
from kdpipe.models.sps import apply_sps, physical_state_dict

MODEL_META_FILE = "kdpipe.json"  # in every model folder kdpipe writes (teacher, students, PTP students)

def check_model_folder(folder: str | Path, key: str) -> None:
    """Cheap checks of a model folder before any stage loads it: ``config.json`` parses and every
    ``*.safetensors`` file is as long as its header says (a truncated copy fails here, naming
    the file, instead of deep inside ``from_pretrained``).  ``key`` names where the folder came from."""
    folder = Path(folder)
    config = folder / "config.json"
    try:
        parsed = json.loads(config.read_text())
    except FileNotFoundError:
        raise ModelError(f"{key}: {folder} is not a model folder (no config.json in it)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ModelError(f"{key}: {config} is not valid JSON ({e})") from None
    if not isinstance(parsed, dict) or "model_type" not in parsed:
        raise ModelError(f"{key}: {config} has no model_type: not a Hugging Face model config")
    weights = sorted(folder.glob("*.safetensors"))
    if not weights and not any(folder.glob("*.bin")):
        raise ModelError(f"{key}: {folder} has no weights (*.safetensors)")
    for file in weights:
        _check_safetensors(file, key)


def _check_safetensors(file: Path, key: str) -> None:
    """The safetensors layout: an 8-byte little-endian header length, a JSON header whose
    ``data_offsets`` address the bytes after it; the file must hold all of them."""
    size = file.stat().st_size
    try:
        with file.open("rb") as f:
            n = int.from_bytes(f.read(8), "little")
            if size < 8 + n:
                raise ValueError(f"header of {n} bytes but the file has {size}")
            header = json.loads(f.read(n))
        end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    except (ValueError, KeyError, TypeError) as e:
        raise ModelError(f"{key}: {file} is not a readable safetensors file ({e})") from None
    if size != 8 + n + end:
        raise ModelError(f"{key}: {file} is truncated or corrupted: {size} bytes, its header needs {8 + n + end}")


def load_classifier(path: str | Path, num_labels: int | None = None, problem: str | None = None,
                    attn_implementation: str = "eager") -> PreTrainedModel:
    """Load a sequence classifier, a token classifier for ``problem`` tagging, or a span
    extractor for ``qa`` (or a saved one of either).  ``num_labels``/``problem`` only when a new
    head is created (QA's head is always 2 wide: start and end).

    Eager attention: on CPU it costs the same as sdpa and it is the only implementation that
    returns attention maps, which intermediate-layer methods read.
    """
    kwargs = {"attn_implementation": attn_implementation}
    saved = _saved_head(path) if problem is None else None
    tagger, qa = problem == "tagging" or saved == "tagging", problem == "qa" or saved == "qa"
    if num_labels is not None and not qa:
        kwargs["num_labels"] = num_labels
        if not tagger:
            kwargs["problem_type"] = ("regression" if problem == "regression"
                                      else "single_label_classification")
    auto = (AutoModelForQuestionAnswering if qa else AutoModelForTokenClassification if tagger
            else AutoModelForSequenceClassification)
    model = auto.from_pretrained(str(path), **kwargs)
    settings = getattr(model.config, "kdpipe_sps", None)
    if settings:  # saved as its L physical layers: share them again as 2L
        apply_sps(model, settings["shuffle"])
    return model


def _saved_head(path: str | Path) -> str | None:
    """``tagging`` or ``qa`` for a saved token classifier or span extractor, else None."""
    config = Path(path) / "config.json"
    architectures = json.loads(config.read_text()).get("architectures") or [] if config.is_file() else []
    if any(a.endswith("ForQuestionAnswering") for a in architectures):
        return "qa"
    return "tagging" if any(a.endswith("ForTokenClassification") for a in architectures) else None


def model_problem(model: PreTrainedModel) -> str:
    """The task kind a loaded model was built for: qa, tagging, regression or classification."""
    names = [*(model.config.architectures or []), type(model).__name__]
    if any(a.endswith("ForQuestionAnswering") for a in names):
        return "qa"
    if any(a.endswith("ForTokenClassification") for a in names):
        return "tagging"
    return "regression" if model.config.problem_type == "regression" else "classification"


def load_tokenizer(path: str | Path):
    return AutoTokenizer.from_pretrained(str(path))


def encoder_for(model: nn.Module, tokenizer, max_length: int) -> Encoder:
    """The one way to tokenise raw text for ``model``: its own tokenizer, only the inputs its
    forward takes, dynamic padding, truncation at ``max_length``."""
    return Encoder(tokenizer, EncoderFamily.input_names(model, tokenizer), max_length)


def read_model_meta(folder: str | Path) -> dict:
    """The ``kdpipe.json`` of a model folder kdpipe wrote."""
    return json.loads((Path(folder) / MODEL_META_FILE).read_text())


def is_model_dir(folder: str | Path) -> bool:
    return (Path(folder) / MODEL_META_FILE).exists()


def count_parameters(model: nn.Module) -> int:
    """Distinct parameters: an SPS model's shared layers count once."""
    return sum(p.numel() for p in model.parameters())


def save_model(model: PreTrainedModel, tokenizer, folder: str | Path, extra: dict | None = None) -> None:
    """save_pretrained (safetensors) + tokenizer + an optional ``kdpipe.json`` of metadata.
    An SPS model is saved as its physical layers (see ``kdpipe.models.sps``)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder, state_dict=physical_state_dict(model))
    tokenizer.save_pretrained(folder)
    if extra is not None:
        write_json(folder / MODEL_META_FILE, extra)


def model_file_bytes(folder: str | Path) -> int:
    return sum(f.stat().st_size for f in Path(folder).glob("*.safetensors"))
