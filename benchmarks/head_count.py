"""Latency of one student at several attention-head counts (MLKD-BERT's free student head
count), relative to the teacher's head count, in PyTorch and in the exported ONNX graph.

    python benchmarks/head_count.py [--heads 12 6 3 1] [--batch-sizes 1 32] [--rounds 30]

The student is the packaged MiniLM (width 384, 12 heads) cut to ``--student-layers`` layers; a
head count only reshapes Q/K/V, so every variant has the same weights and parameter count.
Forwards go round-robin over the head counts on the same real tweets (PyTorch first, then
onnxruntime), so drift in the machine's speed hits them all alike; each ratio is
median(variant) / median(teacher's head count).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
import time
from pathlib import Path

from kdpipe.env import apply_defaults

apply_defaults()

import numpy as np  # noqa: E402
import torch  # noqa: E402

from kdpipe.config import TaskConfig  # noqa: E402
from kdpipe.data.batches import Encoder  # noqa: E402
from kdpipe.models.family import EncoderFamily  # noqa: E402
from kdpipe.export.convert import export_onnx  # noqa: E402
from kdpipe.models.loading import load_classifier, load_tokenizer  # noqa: E402
from kdpipe.models.sources import resolve_model_path  # noqa: E402
from kdpipe.models.students import build_student, select_layers, set_attention_heads  # noqa: E402
from kdpipe.export.runtime import make_session, session_logits  # noqa: E402
from kdpipe.data.tasks import load_task  # noqa: E402


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--heads", type=int, nargs="+", default=[12, 6, 3, 1])
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 32])
    ap.add_argument("--student-layers", type=int, default=3)
    ap.add_argument("--max-length", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=30)
    args = ap.parse_args()

    base = resolve_model_path("minilm")
    tokenizer = load_tokenizer(base)
    torch.manual_seed(0)
    teacher = load_classifier(base, 3).eval()
    reference = teacher.config.num_attention_heads
    student = build_student(teacher, select_layers(6, args.student_layers, "uniform")).eval()
    variants = {h: set_attention_heads(copy.deepcopy(student), h) for h in args.heads}
    _, splits = load_task(TaskConfig(max_train_examples=max(args.batch_sizes)), 0, ".")
    texts = splits["train"]["text_a"].tolist()
    encoder = Encoder(tokenizer, EncoderFamily.input_names(student, tokenizer), args.max_length)
    print(f"student {args.student_layers} layers x width 384, teacher {reference} heads; "
          f"{args.rounds} round-robin forwards per variant (median); torch threads {torch.get_num_threads()}")
    with tempfile.TemporaryDirectory() as tmp, torch.no_grad():
        for batch in args.batch_sizes:
            inputs = encoder(texts[:batch], None)
            feeds = {k: v.numpy() for k, v in inputs.items()}
            sessions = {}
            for h, model in variants.items():
                path = Path(tmp) / f"h{h}_b{batch}.onnx"
                export_onnx(model, inputs, path)
                sessions[h] = make_session(path)
            runners = {"torch": {h: (lambda m=m: m(**inputs)) for h, m in variants.items()},
                       "onnx": {h: (lambda s=s: session_logits(s, feeds)) for h, s in sessions.items()}}
            times = {(kind, h): [] for kind in runners for h in variants}
            # One runtime at a time (onnxruntime's spinning threads would slow torch down), the
            # head counts round-robin within it.
            for kind, fns in runners.items():
                for round_ in range(args.rounds + 3):  # 3 warm-up rounds
                    for h, fn in fns.items():
                        ms = _timed(fn)
                        if round_ >= 3:
                            times[kind, h].append(ms)
            same = np.abs(session_logits(sessions[args.heads[0]], feeds)
                          - variants[args.heads[0]](**inputs).logits.numpy()).max()
            print(f"batch {batch} (seq {inputs['input_ids'].shape[1]}), onnx-vs-torch max |diff| {same:.1e}")
            for kind in ("torch", "onnx"):
                ref = statistics.median(times[kind, reference]) if reference in variants else None
                for h in variants:
                    ms = statistics.median(times[kind, h])
                    ratio = f"{ms / ref:5.2f}x the {reference}-head latency" if ref else ""
                    print(f"  {kind:<5} {h:>2} heads  {ms:8.2f} ms   {ratio}")


if __name__ == "__main__":
    main()
