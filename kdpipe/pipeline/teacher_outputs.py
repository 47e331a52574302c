"""Stage ``teacher_outputs``: the frozen teacher's per-example vectors on the train split (the cache)."""

from __future__ import annotations

from pathlib import Path

import torch

from kdpipe.config import Params
from kdpipe.data.splits import load_datasets
from kdpipe.files import atomic_dir, write_json
from kdpipe.models.loading import load_classifier, load_tokenizer
from kdpipe.training.teacher_cache import META, TeacherCache, cache_key, compute_teacher_cache


def teacher_outputs(params: Params, data_dir: Path, teacher_dir: Path, out_dir: Path) -> dict:
    cfg = params.distill.teacher_cache
    if not cfg.enabled:
        with atomic_dir(out_dir) as tmp:
            write_json(tmp / META, {"key": None, "enabled": False})
        return {"enabled": False}
    tokenizer = load_tokenizer(teacher_dir)
    _, sets = load_datasets(data_dir, tokenizer, params.max_length)
    teacher = load_classifier(teacher_dir, attn_implementation="sdpa")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    meta = compute_teacher_cache(teacher, tokenizer, sets["train"], out_dir,
                                 key=cache_key(teacher_dir, data_dir, params.max_length), max_length=params.max_length,
                                 batch_size=cfg.batch_size, dtype=cfg.dtype, device=device)
    return {"enabled": True, **meta}


def open_cache(params: Params, cache_dir: Path | None, teacher_dir: Path, data_dir: Path,
               examples: int) -> TeacherCache | None:
    """The stage's cache for a distillation run, checked against this teacher and data; None when off."""
    if cache_dir is None or not params.distill.teacher_cache.enabled:
        return None
    return TeacherCache.open(cache_dir, cache_key(teacher_dir, data_dir, params.max_length), examples)
