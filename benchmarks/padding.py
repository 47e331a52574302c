"""What length-grouped batches save: padded tokens and training time per epoch, random order vs
``train.group_by_length`` (transformers' grouping), measured in one process on real tweets.

    python benchmarks/padding.py [--examples 1024] [--batch-size 32] [--student-layers 3]

Both orders visit the same examples with the same student; steps alternate between the two
orders so drift in the machine's speed hits them alike.  Prints padded tokens per real token for
each order, the median step time, and the ratio.
"""

from __future__ import annotations

import argparse
import statistics
import time

from kdpipe.env import apply_defaults

apply_defaults()

import torch  # noqa: E402

from kdpipe.config import TaskConfig  # noqa: E402
from kdpipe.data.batches import DistillCollator, Encoder, EpochShuffleSampler  # noqa: E402
from kdpipe.data.splits import TextDataset  # noqa: E402
from kdpipe.data.tasks import load_task  # noqa: E402
from kdpipe.models.family import EncoderFamily  # noqa: E402
from kdpipe.models.loading import load_classifier, load_tokenizer  # noqa: E402
from kdpipe.models.sources import resolve_model_path  # noqa: E402
from kdpipe.models.students import build_student, select_layers  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--examples", type=int, default=1024)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--student-layers", type=int, default=3)
    ap.add_argument("--max-length", type=int, default=64)
    args = ap.parse_args()

    torch.manual_seed(0)
    base = resolve_model_path("minilm")
    tokenizer = load_tokenizer(base)
    teacher = load_classifier(base, 3)
    _, splits = load_task(TaskConfig(max_train_examples=args.examples), 0, ".")
    data = TextDataset(splits["train"])
    enc = Encoder(tokenizer, EncoderFamily.input_names(teacher, tokenizer), args.max_length)
    collate = DistillCollator(enc, None, regression=False)
    lengths = enc.lengths(data)
    orders = {"random": list(EpochShuffleSampler(len(data), 0)),
              "grouped": list(EpochShuffleSampler(len(data), 0, lengths, args.batch_size))}
    layers = select_layers(6, args.student_layers, "uniform")
    times: dict[str, list[float]] = {name: [] for name in orders}
    padded = {name: 0 for name in orders}
    students = {name: build_student(teacher, layers).train() for name in orders}
    optimizers = {name: torch.optim.AdamW(s.parameters(), lr=1e-5) for name, s in students.items()}
    for start in range(0, len(data), args.batch_size):
        for name, order in orders.items():
            batch = collate([data[i] for i in order[start:start + args.batch_size]])
            padded[name] += batch["student"]["input_ids"].numel()
            t0 = time.perf_counter()
            loss = torch.nn.functional.cross_entropy(students[name](**batch["student"]).logits, batch["labels"])
            loss.backward()
            optimizers[name].step()
            optimizers[name].zero_grad(set_to_none=True)
            times[name].append(time.perf_counter() - t0)
    real = sum(lengths)
    print(f"{len(data)} tweets, batch {args.batch_size}, max_length {args.max_length}, "
          f"student {args.student_layers} layers, {torch.get_num_threads()} threads; one epoch each order")
    for name in orders:
        print(f"  {name:<8} {padded[name] / real:5.2f} padded tokens per real token   "
              f"{statistics.median(times[name]) * 1000:7.1f} ms/step (median)   {sum(times[name]):6.1f} s/epoch")
    print(f"grouped / random epoch time: {sum(times['grouped']) / sum(times['random']):.2f}")


if __name__ == "__main__":
    main()
