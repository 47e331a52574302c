"""What the optimizer's implementation and bf16 autocast cost per training step on this CPU,
measured in one process on the same real batches (steps round-robin over the settings, so drift
in the machine's speed hits them all alike).  Prints ms/step and each ratio to the old default.

    python benchmarks/cpu_precision.py [--steps 16] [--batch-size 32]

Settings: AdamW's per-tensor loop (torch's default on CPU, which the engine used before) vs
``fused=True`` (the engine's now), each in fp32, and fused under bf16 autocast
(``train.mixed_precision: bf16``, which the all-methods suite sets).  bf16 pays off on CPUs with
native bf16 (AVX512-BF16 / AMX); the preflight warns where oneDNN has no bf16 path at all.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import torch  # noqa: E402

import step_cost  # noqa: E402  (its Runner: one method's student, optimizer and timed engine step)
from kdpipe.models.adapters import ModelShape, Shapes  # noqa: E402
from kdpipe.models.students import select_layers  # noqa: E402
from kdpipe.training.engine import make_accelerator  # noqa: E402

CASES = [c for c in step_cost.CASES if c[0] in ("finetune", "vanilla_kd (live)", "cr_ild ah_cr ild (live)")]
SETTINGS = [("fp32, AdamW loop", "no", False), ("fp32, AdamW fused", "no", True), ("bf16, AdamW fused", "bf16", True)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=16)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--max-length", type=int, default=64)
    args = ap.parse_args()

    torch.manual_seed(0)
    teacher, _, _, batches = step_cost.real_batches(args.steps, args.batch_size, args.max_length)
    layers = select_layers(6, 3, "uniform")
    shapes = Shapes(student=ModelShape(3, 384, 12), teacher=ModelShape.of(teacher.config))
    accelerators = {mp: make_accelerator(mp) for _, mp, _ in SETTINGS}
    runners = {(case[0], label): step_cost.Runner(case, teacher, layers, shapes, None, accelerators[mp], fused)
               for case in CASES for label, mp, fused in SETTINGS}
    for batch in batches:
        for runner in runners.values():
            runner.step(batch)
    print(f"CPU capability {torch.backends.cpu.get_cpu_capability()}, oneDNN bf16 "
          f"{torch.ops.mkldnn._is_mkldnn_bf16_supported()}, {torch.get_num_threads()} threads, batch "
          f"{args.batch_size}, max_length {args.max_length}, 3-layer student, {args.steps} steps each (median)")
    for case in CASES:
        ms = {label: statistics.median(runners[(case[0], label)].times[2:]) * 1000 for label, _, _ in SETTINGS}
        base_ms = ms[SETTINGS[0][0]]
        print(f"  {case[0]}")
        for label, value in ms.items():
            print(f"    {label:<20} {value:8.1f} ms/step   {base_ms / value:5.2f}x faster than the loop in fp32")


if __name__ == "__main__":
    main()
