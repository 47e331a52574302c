"""Cost of one training step: plain fine-tuning of the student vs vanilla KD with the teacher
run on the fly, measured in one process on the same real batches.  Prints the ratio.

    python benchmarks/step_cost.py [--steps 20] [--batch-size 32] [--student-layers 3]

Uses the packaged MiniLM as teacher and real tweets as inputs; on a GPU it runs with the same
bf16 autocast the engine uses (``train.mixed_precision: auto``).
"""

from __future__ import annotations

import argparse
import statistics
import time

from kdpipe.env import apply_defaults

apply_defaults()

import torch  # noqa: E402

from kdpipe.config import TaskConfig  # noqa: E402
from kdpipe.data import DistillCollator, Encoder, TextDataset, model_input_names  # noqa: E402
from kdpipe.engine import make_accelerator  # noqa: E402
from kdpipe.methods import build_method  # noqa: E402
from kdpipe.models import (build_student, load_classifier, load_tokenizer, resolve_model_path,  # noqa: E402
                           select_layers)
from kdpipe.taps import run_model  # noqa: E402
from kdpipe.tasks import load_task  # noqa: E402


def time_steps(method_name: str, teacher, student, batches, accelerator) -> list[float]:
    method = build_method(method_name, {}, regression=False).to(accelerator.device)
    optimizer = torch.optim.AdamW(student.parameters(), lr=1e-5)
    times = []
    for batch in batches:
        batch = {k: ({n: t.to(accelerator.device) for n, t in v.items()} if isinstance(v, dict)
                     else v.to(accelerator.device)) for k, v in batch.items()}
        if accelerator.device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        with accelerator.autocast():
            teacher_out = None
            if method.needs_teacher:
                with torch.no_grad():
                    teacher_out = run_model(teacher, batch["teacher"], method.teacher_needs)
            losses = method(run_model(student, batch["student"], method.student_needs), teacher_out,
                            batch["labels"])
        accelerator.backward(losses["loss"])
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if accelerator.device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return times[2:]  # the first steps pay for allocation and lazy init


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--student-layers", type=int, default=3)
    ap.add_argument("--max-length", type=int, default=64)
    args = ap.parse_args()

    accelerator = make_accelerator("auto")
    base = resolve_model_path("minilm")
    tokenizer = load_tokenizer(base)
    teacher = load_classifier(base, 3).to(accelerator.device).eval().requires_grad_(False)
    _, splits = load_task(TaskConfig(max_train_examples=args.steps * args.batch_size), 0, ".")
    data = TextDataset(splits["train"])
    enc = Encoder(tokenizer, model_input_names(teacher, tokenizer), args.max_length)
    collate = DistillCollator(enc, enc, regression=False)
    batches = [collate([data[i] for i in range(s * args.batch_size, (s + 1) * args.batch_size)])
               for s in range(args.steps)]
    layers = select_layers(6, args.student_layers, "uniform")
    results = {}
    for name in ("finetune", "vanilla_kd"):
        student = build_student(teacher, layers).to(accelerator.device).train().requires_grad_(True)
        results[name] = statistics.median(time_steps(name, teacher, student, batches, accelerator))
    print(f"device {accelerator.device}, mixed precision {accelerator.mixed_precision}, "
          f"batch {args.batch_size}, student {args.student_layers} layers, teacher 6 layers")
    for name, t in results.items():
        print(f"  {name:<12} {t * 1000:8.1f} ms/step")
    print(f"  ratio vanilla_kd / finetune: {results['vanilla_kd'] / results['finetune']:.2f}x "
          f"(the teacher forward is what a teacher-output cache removes)")


if __name__ == "__main__":
    main()
