"""Task metrics of a PyTorch model over a split, and CPU latency on real batches."""

from __future__ import annotations

import contextlib
import statistics
import time

import numpy as np
import torch
from torch.utils.data import DataLoader

from kdpipe.methods.base import label_loss
from kdpipe.metrics import compute_metrics
from kdpipe.tasks import TaskSpec


@torch.no_grad()
def predict(model: torch.nn.Module, loader: DataLoader, side: str = "student",
            autocast=None, gather=None) -> tuple[np.ndarray, np.ndarray, float]:
    """Logits [N, C], labels [N] and the mean hard-label loss over ``loader``.

    ``side`` picks which inputs of a DistillCollator batch to feed (the teacher's own
    tokenisation for the teacher).  ``gather`` (``accelerator.gather_for_metrics``) collects
    the shards of a distributed loader so every process scores the whole split.
    """
    was_training = model.training
    model.eval()
    logits, labels = [], []
    device = next(model.parameters()).device
    for batch in loader:
        inputs = {k: v.to(device) for k, v in batch[side].items()}
        y = batch["labels"].to(device)
        with autocast() if autocast else contextlib.nullcontext():
            z = model(**inputs).logits.float()
        if gather is not None:
            z, y = gather((z, y))
        logits.append(z.cpu())
        labels.append(y.cpu())
    model.train(was_training)
    all_logits, all_labels = torch.cat(logits), torch.cat(labels)
    loss = label_loss(all_logits, all_labels, regression=all_logits.shape[-1] == 1).item()
    return all_logits.numpy(), all_labels.numpy(), loss


def evaluate_split(model, loader, spec: TaskSpec, side: str = "student", autocast=None,
                   gather=None) -> dict[str, float]:
    logits, labels, loss = predict(model, loader, side, autocast, gather)
    return {**compute_metrics(spec, logits, labels), "loss": loss}


@torch.inference_mode()
def torch_latency(model: torch.nn.Module, inputs: dict[str, torch.Tensor], warmup: int = 3,
                  repeats: int = 10) -> dict[str, float]:
    """Median and p90 wall time (ms) of one forward on ``inputs``."""
    model.eval()
    for _ in range(warmup):
        model(**inputs)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        model(**inputs)
        times.append((time.perf_counter() - start) * 1000)
    times.sort()
    return {"median_ms": statistics.median(times), "p90_ms": times[min(len(times) - 1, int(0.9 * len(times)))]}

