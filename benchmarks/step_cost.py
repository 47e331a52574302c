"""Cost of one training step per method, relative to plain fine-tuning of the same student,
measured in one process on the same real batches.  Prints each ratio.

    python benchmarks/step_cost.py [--steps 24] [--batch-size 32] [--student-layers 3]

Methods whose teacher signal is per-example vectors read them from a teacher-output cache (built
here once, as the teacher_outputs stage does); ``vanilla_kd (live)`` and TinyBERT's ILD phase
run the teacher every step.  Steps go round-robin over the methods, so drift in the machine's
speed hits them all alike.  Uses the packaged MiniLM as teacher and real tweets as inputs; on a
GPU it runs with the bf16 autocast the engine uses (``train.mixed_precision: auto``).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from kdpipe.env import apply_defaults

apply_defaults()

import torch  # noqa: E402

from kdpipe.config import TaskConfig  # noqa: E402
from kdpipe.data.batches import DistillCollator, Encoder  # noqa: E402
from kdpipe.data.splits import TextDataset  # noqa: E402
from kdpipe.models.family import EncoderFamily  # noqa: E402
from kdpipe.training.engine import make_accelerator, teacher_signal  # noqa: E402
from kdpipe.methods.registry import build_method  # noqa: E402
from kdpipe.models.adapters import ModelShape, Shapes  # noqa: E402
from kdpipe.models.loading import load_classifier, load_tokenizer  # noqa: E402
from kdpipe.models.sources import resolve_model_path  # noqa: E402
from kdpipe.models.students import build_student, select_layers  # noqa: E402
from kdpipe.models.taps import run_model  # noqa: E402
from kdpipe.data.tasks import load_task  # noqa: E402
from kdpipe.training.teacher_cache import TeacherCache, compute_teacher_cache  # noqa: E402

# (label, method, params, phase, cached teacher)
CASES = [
    ("finetune", "finetune", {}, None, False),
    ("vanilla_kd (live)", "vanilla_kd", {}, None, False),
    ("vanilla_kd (cache)", "vanilla_kd", {}, None, True),
    ("pkd (cache)", "pkd", {}, None, True),
    ("rail_kd_l (cache)", "rail_kd_l", {}, None, True),
    ("rail_kd_c (cache)", "rail_kd_c", {}, None, True),
    ("alp_kd (cache)", "alp_kd", {}, None, True),
    ("tinybert ild (live)", "tinybert", {}, "ild", False),
    ("mlkd ild (live)", "mlkd", {}, "ild", False),
    ("mlkd pred (cache)", "mlkd", {}, "pred", True),
    ("cr_ild released ild (live)", "cr_ild", {"preset": "released"}, "ild", False),
    ("cr_ild ah_cr ild (live)", "cr_ild", {"preset": "ah_cr"}, "ild", False),  # + the clean pass
]


class Runner:
    """One method's student, optimizer and step function."""

    def __init__(self, case, teacher, layers, shapes, cache, accelerator, fused: bool = True):
        label, name, params, phase, cached = case
        self.label, self.teacher, self.accelerator = label, teacher, accelerator
        self.method = build_method(name, params, regression=False, shapes=shapes).to(accelerator.device)
        self.method.begin_training(2)
        if phase:
            self.method.set_phase(phase)
        self.cache = cache if cached else None
        self.student = build_student(teacher, layers).to(accelerator.device).train().requires_grad_(True)
        params = list(self.student.parameters()) + [p for p in self.method.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=1e-5, fused=fused)  # as the engine's
        self.times: list[float] = []

    def step(self, batch) -> None:
        device = self.accelerator.device
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        # inputs move to the device inside the timed region: the engine's loader does it per step too
        batch = {k: ({n: t.to(device) for n, t in v.items()} if isinstance(v, dict) else v.to(device))
                 for k, v in batch.items()}
        self.method.begin_step(1, len(self.times))  # epoch 1: CR-ILD's consistency weight is on
        mix = self.method.mixup(len(batch["labels"]), device)
        with self.accelerator.autocast():  # as the engine's step
            teacher_out = teacher_signal(self.method, batch, self.teacher, self.cache, device, mix)
            student_out = run_model(self.student, batch["student"], self.method.student_needs, mix)
            if mix is not None and self.method.needs_clean_pass:
                with torch.no_grad():
                    student_out.clean = run_model(self.student, batch["student"], self.method.student_needs)
            losses = self.method(student_out, teacher_out, batch["labels"])
        self.accelerator.backward(losses["loss"])
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        self.times.append(time.perf_counter() - start)


def real_batches(steps: int, batch_size: int, max_length: int, device="cpu"):
    """The packaged MiniLM as a 3-class teacher, its tokenizer, ``steps * batch_size`` real tweets
    and their batches (student and teacher inputs), in order."""
    base = resolve_model_path("minilm")
    tokenizer = load_tokenizer(base)
    teacher = load_classifier(base, 3).to(device).eval().requires_grad_(False)
    _, splits = load_task(TaskConfig(max_train_examples=steps * batch_size), 0, ".")
    data = TextDataset(splits["train"])
    enc = Encoder(tokenizer, EncoderFamily.input_names(teacher, tokenizer), max_length)
    collate = DistillCollator(enc, enc, regression=False)
    batches = [collate([data[i] for i in range(s * batch_size, (s + 1) * batch_size)]) for s in range(steps)]
    return teacher, tokenizer, data, batches


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=24)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--student-layers", type=int, default=3)
    ap.add_argument("--max-length", type=int, default=64)
    args = ap.parse_args()

    torch.manual_seed(0)
    accelerator = make_accelerator("auto")
    teacher, tokenizer, data, batches = real_batches(args.steps, args.batch_size, args.max_length, accelerator.device)
    layers = select_layers(6, args.student_layers, "uniform")
    shapes = Shapes(student=ModelShape(args.student_layers, 384, 12), teacher=ModelShape.of(teacher.config))
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        meta = compute_teacher_cache(teacher, tokenizer, data, Path(tmp) / "cache", key="bench",
                                     max_length=args.max_length, device=accelerator.device)
        build_s = time.perf_counter() - start
        cache = TeacherCache.open(Path(tmp) / "cache", "bench", len(data))
        runners = [Runner(case, teacher, layers, shapes, cache, accelerator) for case in CASES]
        for batch in batches:
            for runner in runners:
                runner.step(batch)
    base_ms = statistics.median(runners[0].times[2:]) * 1000  # first steps pay for lazy init
    print(f"device {accelerator.device}, mixed precision {accelerator.mixed_precision}, batch {args.batch_size}, "
          f"max_length {args.max_length}, student {args.student_layers} layers, teacher 6 layers, "
          f"{args.steps} steps each (median)")
    print(f"teacher cache: {meta['examples']} examples built in {build_s:.1f} s (one teacher pass)")
    for runner in runners:
        ms = statistics.median(runner.times[2:]) * 1000
        print(f"  {runner.label:<28} {ms:8.1f} ms/step   {ms / base_ms:5.2f}x finetune")


if __name__ == "__main__":
    main()
