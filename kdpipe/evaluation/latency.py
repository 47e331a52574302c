"""The one latency protocol for every model kdpipe times (PyTorch in evaluate, ONNX in export):
``warmup`` untimed calls, then ``repeats`` timed ones on the same real batch."""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import torch

from kdpipe.data.batches import Encoder
from kdpipe.data.splits import TextDataset


def time_calls(call: Callable[[], object], warmup: int, repeats: int) -> dict[str, float]:
    """Wall time of ``call()`` in ms: ``{"median_ms", "p90_ms"}`` (p90 by linear interpolation)."""
    if repeats < 1:
        raise ValueError(f"repeats must be positive, got {repeats}")
    for _ in range(warmup):
        call()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append((time.perf_counter() - start) * 1000.0)
    return {"median_ms": float(np.median(times)), "p90_ms": float(np.percentile(times, 90))}


@torch.inference_mode()
def torch_latency(model: torch.nn.Module, inputs: dict[str, torch.Tensor], warmup: int = 3,
                  repeats: int = 10) -> dict[str, float]:
    """``time_calls`` of one eval-mode forward of ``model`` on ``inputs``."""
    model.eval()
    return time_calls(lambda: model(**inputs), warmup, repeats)


def latency_inputs(dataset: TextDataset, encoder: Encoder, batch_size: int) -> dict[str, torch.Tensor]:
    """A real batch of ``batch_size`` dev examples (repeated if dev is smaller), padded to its longest."""
    rows = [dataset[i % len(dataset)] for i in range(batch_size)]
    if "input_ids" in rows[0]:  # QA: real windows of question + context
        return encoder.windows(rows)
    return encoder([r["text_a"] for r in rows], None if rows[0]["text_b"] is None else [r["text_b"] for r in rows])
