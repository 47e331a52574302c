"""Predictions and task metrics of a PyTorch model over a split."""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from kdpipe.data.batches import DistillCollator, inference_loader
from kdpipe.data.conll import IGNORE
from kdpipe.data.tasks import TaskSpec
from kdpipe.evaluation.metrics import compute_metrics
from kdpipe.files import atomic_file
from kdpipe.methods.base import label_loss
from kdpipe.models.taps import PADDING_LOGIT, head_logits


@torch.no_grad()
def predict(model: torch.nn.Module, loader: DataLoader, side: str = "student",
            autocast=None, gather=None) -> tuple[np.ndarray, np.ndarray, float]:
    """Logits [N, C], labels [N] and the mean hard-label loss over ``loader``, in dataset order
    (by the batches' ``index``: a loader may visit examples in any order, e.g. longest first).
    Tagging: logits [N, W, C] and labels [N, W] per word, W the split's most words (``IGNORE``
    labels past each example's words).  Extractive QA: per window, logits [N, 2, L] (start and end
    over positions, L the longest window, ``PADDING_LOGIT`` past each) and labels [N, 2].

    ``side`` picks which inputs of a DistillCollator batch to feed (the teacher's own
    tokenisation for the teacher).  ``gather`` (``accelerator.gather_for_metrics``) collects
    the shards of a distributed loader so every process scores the whole split.
    """
    was_training = model.training
    model.eval()
    logits, labels, indices = [], [], []
    device = next(model.parameters()).device
    for batch in loader:
        inputs = {k: v.to(device) for k, v in batch[side].items()}
        y, index = batch["labels"].to(device), batch["index"].to(device)
        with autocast() if autocast else contextlib.nullcontext():
            words = batch.get(f"{side}_words")
            z = head_logits(model(**inputs), inputs["attention_mask"], None if words is None else words.to(device)).float()
        if gather is not None:
            z, y, index = gather((z, y, index))
        logits.append(z.cpu())
        labels.append(y.cpu())
        indices.append(index.cpu())
    model.train(was_training)
    if batch.get("example") is not None:  # QA windows: batches hold different lengths
        positions = max(z.shape[2] for z in logits)
        logits = [F.pad(z, (0, positions - z.shape[2]), value=PADDING_LOGIT) for z in logits]
    elif labels[0].ndim == 2:  # per word: batches hold different word counts
        words = max(y.shape[1] for y in labels)
        logits = [F.pad(z, (0, 0, 0, words - z.shape[1])) for z in logits]
        labels = [F.pad(y, (0, words - y.shape[1]), value=IGNORE) for y in labels]
    order = torch.cat(indices).argsort()
    all_logits, all_labels = torch.cat(logits)[order], torch.cat(labels)[order]
    loss = label_loss(all_logits, all_labels, regression=all_logits.shape[-1] == 1).item()
    return all_logits.numpy(), all_labels.numpy(), loss


def evaluate_split(model, loader, spec: TaskSpec, side: str = "student", autocast=None,
                   gather=None) -> dict[str, float]:
    logits, labels, loss = predict(model, loader, side, autocast, gather)
    if spec.problem == "qa":  # scored per question: its best span over its windows, against its references
        dataset = loader.dataset
        return {**compute_metrics(spec, dataset.answers(logits), dataset.references()), "loss": loss}
    return {**compute_metrics(spec, logits, labels), "loss": loss}


# A trained model's raw dev/test outputs, saved in its folder by the stage that trained it, so
# the evaluate stage scores them instead of predicting every seed of every run again.
SPLIT_OUTPUTS_FILE = "split_outputs.npz"
EVALUATED_SPLITS = ("dev", "test")
INFERENCE_BATCH_SIZE = 64


def split_outputs(model: torch.nn.Module, sets: dict, collator: DistillCollator) -> dict[str, tuple]:
    """``predict`` on each evaluated split of ``sets`` (fp32, no autocast: the numbers the
    evaluate stage reports and the ONNX export is compared with)."""
    return {split: predict(model, inference_loader(sets[split], collator, INFERENCE_BATCH_SIZE))
            for split in EVALUATED_SPLITS if split in sets}


def save_split_outputs(folder: Path, outputs: dict[str, tuple], key: str) -> None:
    """``outputs`` (``split_outputs``) into ``folder``; ``key`` names the data and code they
    came from (``pipeline.common.split_outputs_key``)."""
    arrays = {"key": np.array(key)}
    for split, (logits, labels, loss) in outputs.items():
        arrays |= {f"{split}.logits": logits, f"{split}.labels": labels, f"{split}.loss": np.array(loss)}
    with atomic_file(Path(folder) / SPLIT_OUTPUTS_FILE) as tmp:
        with open(tmp, "wb") as f:  # a file object: np.savez would append .npz to the temporary name
            np.savez(f, **arrays)


def load_split_outputs(folder: Path, key: str) -> dict[str, tuple] | None:
    """The outputs ``save_split_outputs`` wrote under the same ``key``; None when there are none
    or they came from other data or code (then the caller predicts)."""
    path = Path(folder) / SPLIT_OUTPUTS_FILE
    if not path.is_file():
        return None
    with np.load(path) as saved:
        if str(saved["key"]) != key:
            return None
        return {split: (saved[f"{split}.logits"], saved[f"{split}.labels"], float(saved[f"{split}.loss"]))
                for split in EVALUATED_SPLITS if f"{split}.logits" in saved}
