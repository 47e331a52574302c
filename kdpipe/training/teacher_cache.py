"""The frozen teacher's per-example outputs on the train split, computed once and reused.

Logit KD, PKD, RAIL-KD and ALP-KD only read, per example, the teacher's logits and the [CLS]
or mask-aware mean-pooled state of each layer.  The teacher does not change during
distillation, so these vectors are computed once (the ``teacher_outputs`` DVC stage) and every
epoch of every such method reads them instead of running the teacher.  All layers are stored,
because RAIL-KD draws a different subset each epoch.

Files: ``logits.npy`` [N, C], ``cls.npy`` and ``mean.npy`` [N, L+1, d] (row i = train example
i, layer 0 = embeddings), and ``meta.json`` with the key the cache was built for: a hash of the
teacher's weights and tokenizer, the prepared data and max_length.  A cache whose key does not
match the run's inputs is refused, so stale teacher outputs can never be used silently.

Token tagging: ``logits.npy`` is [N, W, C] per word (W = the train split's most words, read at
each word's first sub-token as ``taps.word_logits`` does, zeros past a sentence's words), always
float16: it grows with the words, and a softmax at T >= 1 does not see float16's 1e-3 relative
error.  The states stay per sentence (RAIL-KD's mean-pooled layers).

Extractive QA: one row per window; ``logits.npy`` is [N, 2, L] float16, the start and end
logits over the positions (L = the longest window, ``taps.PADDING_LOGIT`` past each window),
and the states are per window.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from kdpipe.data.batches import DistillCollator
from kdpipe.data.splits import TextDataset
from kdpipe.files import atomic_dir, write_json
from kdpipe.models.loading import MODEL_META_FILE, encoder_for
from kdpipe.models.taps import PADDING_LOGIT, ModelOutputs, Needs, masked_mean, run_model, word_logits

META = "meta.json"


class StaleCacheError(ValueError):
    """The teacher cache was built for another teacher, data or max_length."""


def cache_key(teacher_dir: Path, data_dir: Path, max_length: int) -> str:
    """Hash of what the cached vectors depend on: teacher weights + config + tokenizer files,
    the prepared train split, and the tokenisation length."""
    h = hashlib.sha256()
    files = sorted(p for p in Path(teacher_dir).iterdir() if p.is_file() and p.name != MODEL_META_FILE)
    files.append(Path(data_dir) / "train.parquet")
    files += [f for f in [Path(data_dir) / "task.json"] if f.is_file()]  # QA: the windows' doc_stride
    for f in files:
        h.update(f.name.encode())
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    h.update(str(max_length).encode())
    return h.hexdigest()[:16]


@torch.no_grad()
def compute_teacher_cache(teacher: torch.nn.Module, tokenizer, dataset: TextDataset, out_dir: Path, *,
                          key: str, max_length: int, batch_size: int = 64, dtype: str = "float32",
                          device: str | torch.device = "cpu") -> dict:
    """Run ``teacher`` once over ``dataset`` and write the cache folder atomically."""
    teacher = teacher.to(device).eval()
    encoder = encoder_for(teacher, tokenizer, max_length)
    loader = DataLoader(dataset, batch_size=batch_size, collate_fn=DistillCollator(encoder, None, False))
    np_dtype = np.dtype(dtype)
    logits, cls, mean = [], [], []
    qa = getattr(dataset, "windows", None) is not None
    # what every row pads to: tagging, the split's most words; QA, its longest window
    most = max(map(len, dataset.windows.input_ids if qa else dataset.text_a), default=0)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if torch.device(device).type == "cuda" \
        else torch.autocast("cpu", enabled=False)
    for batch in tqdm(loader, desc="teacher outputs", dynamic_ncols=True):
        inputs = {k: v.to(device) for k, v in batch["student"].items()}
        with autocast:
            out = run_model(teacher, inputs, Needs(hidden_states=True))
        layers = [out.hidden_states[i].float() for i in sorted(out.hidden_states)]
        if qa:  # [B, 2, n] over positions, padded to the longest window
            logits.append(torch.nn.functional.pad(out.logits.float(), (0, most - out.logits.shape[2]),
                                                  value=PADDING_LOGIT).cpu().numpy().astype(np.float16))
        elif batch.get("student_words") is not None:  # tagging: per word, padded to the split's most words
            words = word_logits(out.logits.float(), batch["student_words"].to(device))
            logits.append(torch.nn.functional.pad(words, (0, 0, 0, most - words.shape[1])).cpu().numpy()
                          .astype(np.float16))
        else:
            logits.append(out.logits.float().cpu().numpy())
        cls.append(torch.stack([h[:, 0] for h in layers], 1).cpu().numpy().astype(np_dtype))
        mean.append(torch.stack([masked_mean(h, inputs["attention_mask"]) for h in layers], 1)
                    .cpu().numpy().astype(np_dtype))
    meta = {"key": key, "examples": len(dataset), "layers": len(cls[0][0]) - 1, "hidden": int(cls[0].shape[-1]),
            "dtype": dtype, "max_length": max_length, "per_word": logits[0].ndim == 3 and not qa, "per_position": qa}
    with atomic_dir(out_dir) as tmp:
        np.save(tmp / "logits.npy", np.concatenate(logits))  # sentence logits stay fp32: they are tiny
        np.save(tmp / "cls.npy", np.concatenate(cls))
        np.save(tmp / "mean.npy", np.concatenate(mean))
        write_json(tmp / META, meta)
    return meta


class TeacherCache:
    """Memory-mapped cached teacher outputs; ``lookup`` turns a batch's row indices into the
    ``ModelOutputs`` a live teacher would give (logits, ``cls`` and ``mean`` per layer)."""

    def __init__(self, folder: Path, meta: dict):
        self.folder, self.meta = Path(folder), meta
        self.logits = np.load(self.folder / "logits.npy", mmap_mode="r")
        self.cls = np.load(self.folder / "cls.npy", mmap_mode="r")
        self.mean = np.load(self.folder / "mean.npy", mmap_mode="r")

    @classmethod
    def open(cls, folder: Path, expected_key: str, examples: int) -> "TeacherCache":
        meta_file = Path(folder) / META
        if not meta_file.exists():
            raise FileNotFoundError(f"{folder}: no teacher cache here; run the teacher_outputs stage "
                                    f"(dvc repro teacher_outputs) or set distill.teacher_cache.enabled: false")
        meta = json.loads(meta_file.read_text())
        if meta["key"] != expected_key or meta["examples"] != examples:
            raise StaleCacheError(f"{folder}: the teacher cache was built for another teacher, data or max_length "
                                  f"(key {meta['key']} != {expected_key}); re-run the teacher_outputs stage")
        return cls(folder, meta)

    def lookup(self, index: torch.Tensor, device: torch.device | str = "cpu",
               words: int | None = None, positions: int | None = None) -> ModelOutputs:
        """The cached outputs of train rows ``index`` [B]; per-word logits (tagging) cut to the
        batch's ``words`` (its most words), QA's per-position logits to its ``positions`` (its
        longest window)."""
        rows = np.sort(index.cpu().numpy())  # sorted reads from the memory map, then back to batch order
        order = np.searchsorted(rows, index.cpu().numpy())

        def take(array: np.ndarray) -> torch.Tensor:
            block = torch.from_numpy(np.ascontiguousarray(array[rows]))[torch.from_numpy(order)]
            return block.to(device, torch.float32, non_blocking=True)

        cls, mean = take(self.cls), take(self.mean)
        layers = range(cls.shape[1])
        logits = take(self.logits[:, :words] if words is not None else
                      self.logits[:, :, :positions] if positions is not None else self.logits)
        return ModelOutputs(logits=logits, attention_mask=None,
                            cls={layer: cls[:, layer] for layer in layers},
                            mean={layer: mean[:, layer] for layer in layers})
