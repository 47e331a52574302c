"""ONNX export, int8 quantisation, parity and latency for sequence-classification models.

Pure functions; the export stage owns file layout and reporting.  Choices follow the
notes in docs/onnx.md §2 (measured with torch 2.13 and onnxruntime 1.31):

- the dynamo exporter (the legacy TorchScript one is deprecated) with ``dynamic_shapes`` and
  ``external_data=False``, so each model is one self-contained file;
- ``quantize_dynamic`` needs the initializers' ``value_info`` stripped first, or it fails on
  dynamo exports with a ShapeInferenceError; ``per_channel`` + ``reduce_range`` because the
  defaults drift badly on CPUs without VNNI.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from kdpipe.evaluation.latency import time_calls
from kdpipe.export.runtime import OUTPUT_NAME, QA_OUTPUT_NAMES, disable_telemetry, make_session, ort, session_logits
from kdpipe.files import atomic_file
from kdpipe.models.loading import model_problem

__all__ = ["INPUT_ORDER", "export_onnx", "quantize_int8", "make_session", "onnx_logits", "parity",
           "onnx_latency", "strip_initializer_value_info"]

# The graph's input order; only the names present in the sample inputs are exported.
INPUT_ORDER = ("input_ids", "attention_mask", "token_type_ids")

# Loggers/warnings the dynamo exporter emits on every healthy export (docs/onnx.md §2).
_NOISY_LOGGERS = ("torch.onnx._internal.exporter._registration",)
_HARMLESS_WARNINGS = (
    (FutureWarning, r".*LeafSpec"),
    (UserWarning, r".*axis name.*will not be used"),
    (DeprecationWarning, r".*"),  # torch/onnxscript internals; nothing a caller can act on
)


class _LogitsOnly(nn.Module):
    """Calls the classifier by keyword and returns only ``logits`` [batch, num_labels].

    Keeps the graph to a single output even when the model's config turns on
    hidden states or attentions (students built for distillation often do).
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        kwargs = {"attention_mask": attention_mask}
        if token_type_ids is not None:  # DistilBERT's forward has no such argument
            kwargs["token_type_ids"] = token_type_ids
        out = self.model(input_ids=input_ids, **kwargs, output_hidden_states=False,
                         output_attentions=False, return_dict=True)
        if model_problem(self.model) == "qa":  # two outputs [batch, seq], the names Optimum's QA models read
            return out.start_logits, out.end_logits
        return out.logits


def _torch_logits(model: nn.Module, inputs: Mapping[str, torch.Tensor]) -> np.ndarray:
    """What ``session_logits`` returns for the same inputs, from PyTorch: [batch, n] or QA's [batch, 2, seq]."""
    out = _LogitsOnly(model).eval()(**inputs)
    return (torch.stack(out, 1) if isinstance(out, tuple) else out).float().cpu().numpy()


@contextlib.contextmanager
def _quiet_export() -> Iterator[None]:
    """Hide the exporter's known-harmless noise (torchvision lines, pytree and axis-name warnings)."""
    loggers = [logging.getLogger(name) for name in _NOISY_LOGGERS]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            for category, message in _HARMLESS_WARNINGS:
                warnings.filterwarnings("ignore", message=message, category=category)
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode for the duration (dropout off), restoring the caller's mode afterwards."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def export_onnx(model: nn.Module, sample_inputs: Mapping[str, torch.Tensor], path: str | Path) -> list[str]:
    """Export a Hugging Face ``*ForSequenceClassification`` model to a single ONNX file.

    ``sample_inputs``: int64 [batch, seq] tensors keyed by ``input_ids``, ``attention_mask`` and
    optionally ``token_type_ids`` (pass it only if the model takes it); other keys such as
    ``labels`` are ignored.  Batch and sequence axes are dynamic, so any real batch size and
    length runs.  The graph has one output ``logits``, float32 [batch, num_labels].  Works for
    eager and sdpa attention.  Written atomically: a failed export leaves no file behind.

    Returns the graph's input names, in graph order.
    """
    names = [n for n in INPUT_ORDER if n in sample_inputs]
    if "input_ids" not in names:
        raise ValueError(f"sample_inputs needs at least input_ids; got {sorted(sample_inputs)}")
    device = next(model.parameters()).device
    kwargs = {n: sample_inputs[n].to(device=device, dtype=torch.long) for n in names}
    batch, seq = torch.export.Dim("batch"), torch.export.Dim("seq")
    dynamic_shapes = {n: {0: batch, 1: seq} for n in names}
    with _eval_mode(model), _quiet_export(), atomic_file(path) as tmp:
        torch.onnx.export(_LogitsOnly(model).eval(), (), str(tmp), kwargs=kwargs, dynamo=True,
                          input_names=names, output_names=list(QA_OUTPUT_NAMES) if model_problem(model) == "qa" else [OUTPUT_NAME],
                          dynamic_shapes=dynamic_shapes,
                          external_data=False, verbose=False)
    return names


def strip_initializer_value_info(model: onnx.ModelProto) -> int:
    """Remove ``value_info`` entries that describe initializers, in place; returns how many.

    The dynamo exporter writes one per weight; ``quantize_dynamic`` transposes the Gemm weight
    but not its value_info, and shape inference then fails (docs/onnx.md §2, pitfall 1).
    """
    initializers = {i.name for i in model.graph.initializer}
    keep = [v for v in model.graph.value_info if v.name not in initializers]
    removed = len(model.graph.value_info) - len(keep)
    del model.graph.value_info[:]
    model.graph.value_info.extend(keep)
    return removed


def quantize_int8(src: str | Path, dst: str | Path, per_channel: bool = True, reduce_range: bool = True) -> None:
    """Dynamic int8 quantisation (weights int8, activations quantised at run time) of ``src``
    into ``dst``, written atomically.  Inputs/outputs keep their names, dtypes and shapes."""
    from onnxruntime.quantization import QuantType, quantize_dynamic  # heavy; only needed here

    disable_telemetry()
    model = onnx.load(str(src))
    strip_initializer_value_info(model)
    with atomic_file(dst) as tmp, _quiet_quantizer():
        quantize_dynamic(model, str(tmp), weight_type=QuantType.QInt8,
                         per_channel=per_channel, reduce_range=reduce_range)


def _not_preprocess_hint(record: logging.LogRecord) -> bool:
    return not record.getMessage().startswith("Please consider")


@contextlib.contextmanager
def _quiet_quantizer() -> Iterator[None]:
    # quantize_dynamic logs "Please consider (to run) pre-processing before quantization" on the
    # root logger every call; it is harmless here and pre-processing even fails on dynamo
    # exports (docs/onnx.md §2).  A filter drops just that line; other warnings still show.
    root = logging.getLogger()
    root.addFilter(_not_preprocess_hint)
    try:
        yield
    finally:
        root.removeFilter(_not_preprocess_hint)


def onnx_logits(path: str | Path, feeds: Mapping[str, np.ndarray],
                session: ort.InferenceSession | None = None) -> np.ndarray:
    """Logits float32 [batch, num_labels] for int [batch, seq] ``feeds``; keys the graph
    does not take are ignored.  Pass ``session`` to reuse one across calls."""
    return session_logits(session or make_session(path), feeds)


def parity(model: nn.Module, onnx_path: str | Path, batches: Sequence[Mapping[str, torch.Tensor]]) -> dict:
    """Compare PyTorch and ONNX Runtime logits on real (padded) batches.

    Each batch maps names to [batch, seq] tensors (a collator's output; ``labels`` and other
    extra keys are ignored).  Returns ``{"max_abs_diff": float, "batches": int, "examples": int}``.
    """
    session = make_session(onnx_path)
    names = [i.name for i in session.get_inputs()]
    device = next(model.parameters()).device
    worst, examples = 0.0, 0
    with _eval_mode(model), torch.no_grad():
        for batch in batches:
            inputs = {n: batch[n].to(device=device, dtype=torch.long) for n in names}
            expected = _torch_logits(model, inputs)
            got = session_logits(session, {n: t.cpu().numpy() for n, t in inputs.items()})
            worst = max(worst, float(np.abs(expected - got).max()))
            examples += expected.shape[0]
    return {"max_abs_diff": worst, "batches": len(batches), "examples": examples}


def onnx_latency(path: str | Path, feeds: Mapping[str, np.ndarray], warmup: int, repeats: int,
                 threads: int | None = None) -> dict[str, float]:
    """``time_calls`` of one ``session.run`` on ``feeds`` (int [batch, seq]):
    ``{"median_ms": float, "p90_ms": float}``."""
    session = make_session(path, threads)
    return time_calls(lambda: session_logits(session, feeds), warmup, repeats)
