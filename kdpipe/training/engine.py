"""The one training loop.  Every method plugs in through ``Method.losses``.

Accelerate owns devices and processes (CPU here, one GPU, or ``accelerate launch`` over many
GPUs with no code change) and mixed precision.  The loop: AdamW with linear warmup/decay,
gradient clipping, dev evaluation every N steps, best and last weights (safetensors), and a
resumable checkpoint every ``checkpoint_every`` steps: a run killed mid-training and started
again continues from its last checkpoint with the same data order and RNG state.
"""

from __future__ import annotations

import json
import math
import shutil
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import torch
from accelerate import Accelerator, PartialState
from accelerate.state import AcceleratorState
from accelerate.utils import DistributedDataParallelKwargs, set_seed
from safetensors.torch import load_model, save_model
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import get_constant_schedule_with_warmup, get_linear_schedule_with_warmup

from kdpipe.config import TrainConfig
from kdpipe.data.batches import DistillCollator, EpochShuffleSampler, inference_loader
from kdpipe.data.splits import TextDataset
from kdpipe.data.tasks import TaskSpec
from kdpipe.evaluation.metrics import is_better
from kdpipe.evaluation.predict import evaluate_split
from kdpipe.files import atomic_file, write_json
from kdpipe.methods.base import Method
from kdpipe.models.taps import Mixup, ModelOutputs, run_model


FUSED_ADAMW_DEVICES = ("cpu", "cuda")


class MetricLogger(Protocol):
    def log_metrics(self, metrics: dict[str, float], step: int) -> None: ...


class NullLogger:
    def log_metrics(self, metrics, step):
        pass


@dataclass
class TrainResult:
    selected: str                    # "best" or "last": whose weights the student now holds
    best_step: int
    best_dev: dict[str, float]
    last_dev: dict[str, float]
    train_curve: list[dict] = field(default_factory=list)   # step, epoch, lr, loss, <parts>
    dev_curve: list[dict] = field(default_factory=list)     # step, <metrics>, loss
    resumed_from_step: int = 0
    epoch_records: list[dict] = field(default_factory=list)  # what the method logged per epoch


def process_state() -> PartialState:
    """The process group: GPUs when there are any, else CPU processes (gloo) under a launcher."""
    return PartialState(cpu=not torch.cuda.is_available())


def is_main_process() -> bool:
    """Rank 0 (or the only process): the one that writes outputs and logs."""
    return process_state().is_main_process


def make_accelerator(mixed_precision: str) -> Accelerator:
    if mixed_precision == "auto":
        cuda_bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
        mixed_precision = "bf16" if cuda_bf16 else "no"
    # Each training run may ask for its own precision (teacher and student in one Python process):
    # drop the previous run's AcceleratorState singleton; the process group (PartialState) stays.
    AcceleratorState._reset_state()
    # Under DDP some trained parameters can sit out a step (the classifier during TinyBERT's
    # ILD phase, RAIL-KD's maps of undrawn teacher layers): let DDP tolerate that.
    ddp = DistributedDataParallelKwargs(find_unused_parameters=True)
    return Accelerator(mixed_precision=mixed_precision, cpu=not torch.cuda.is_available(), kwargs_handlers=[ddp])


def _param_groups(student: torch.nn.Module, method: Method, cfg: TrainConfig) -> list[dict]:
    decay, no_decay = [], []
    for name, p in student.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim < 2 or "LayerNorm" in name or "layer_norm" in name else decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    extra = [p for p in method.parameters() if p.requires_grad]
    if extra:  # projections: their own group (checkpointed with the run, never exported)
        groups.append({"params": extra, "weight_decay": cfg.weight_decay})
    return groups


def train(student: torch.nn.Module, method: Method, spec: TaskSpec, train_set: TextDataset,
          dev_set: TextDataset, collator: DistillCollator, cfg: TrainConfig, *, seed: int,
          checkpoint_dir: str | Path, fingerprint: str, teacher: torch.nn.Module | None = None,
          logger: MetricLogger | None = None, desc: str = "train", teacher_cache=None,
          stop_after_steps: int | None = None) -> TrainResult:
    """Train ``student`` with ``method``; returns curves and leaves the selected weights in it.

    ``fingerprint`` identifies the run's inputs: a checkpoint written under another fingerprint
    is discarded rather than resumed.  ``teacher_cache`` (a ``TeacherCache``) replaces the live
    teacher for methods whose teacher signal it holds.  ``stop_after_steps`` simulates an
    interruption (tests).
    """
    logger = logger or NullLogger()
    ckpt = Path(checkpoint_dir)
    state = _load_trainer_state(ckpt, fingerprint)
    set_seed(seed)
    accelerator = make_accelerator(cfg.mixed_precision)

    # Length grouping: random padding costs 1.76 tokens per real one on tweets (benchmarks/padding.py).
    lengths = collator.student.lengths(train_set) if cfg.group_by_length else None
    sampler = EpochShuffleSampler(len(train_set), seed, lengths, cfg.batch_size)
    # Own generators: creating a loader iterator draws a seed, and drawing it from the global
    # RNG would shift dropout masks after a resume.
    train_loader = DataLoader(train_set, batch_size=cfg.batch_size, sampler=sampler, collate_fn=collator,
                              generator=torch.Generator().manual_seed(seed))
    dev_loader = inference_loader(dev_set, collator, cfg.eval_batch_size, generator=torch.Generator().manual_seed(seed))
    train_loader, dev_loader = accelerator.prepare(train_loader, dev_loader)
    steps_per_epoch = len(train_loader)  # per process, once sharded
    total_steps = cfg.max_steps or math.ceil(cfg.epochs * steps_per_epoch)
    # fused: one kernel over all parameters instead of a Python loop per tensor (57 -> 10 ms a
    # step for a 3-layer MiniLM student on 2 CPU cores, benchmarks/step_cost.py)
    optimizer = torch.optim.AdamW(_param_groups(student, method, cfg), lr=cfg.lr,
                                  fused=accelerator.device.type in FUSED_ADAMW_DEVICES)
    # Accelerate steps a prepared scheduler once per process at every optimizer step.
    n = accelerator.num_processes
    warmup = int(cfg.warmup_ratio * total_steps) * n
    scheduler = (get_constant_schedule_with_warmup(optimizer, warmup) if cfg.schedule == "constant"
                 else get_linear_schedule_with_warmup(optimizer, warmup, total_steps * n))

    # ``method`` stays the plain module (its attributes are read every step); ``method_fn`` is
    # what computes the losses: the DDP-wrapped module when the method has trained parameters.
    method_fn = method
    if any(p.requires_grad for p in method.parameters()):
        student, method_fn, optimizer, scheduler = accelerator.prepare(student, method, optimizer, scheduler)
    else:
        student, optimizer, scheduler = accelerator.prepare(student, optimizer, scheduler)
    method.to(accelerator.device)
    method.begin_training(math.ceil(total_steps / steps_per_epoch))
    use_cache = teacher_cache is not None and method.teacher_cacheable
    if teacher is not None and not use_cache:
        teacher = teacher.to(accelerator.device).eval().requires_grad_(False)
    trainable = [p for group in optimizer.param_groups for p in group["params"]]  # student + projections

    step = 0
    if state is not None:
        accelerator.load_state(str(ckpt / "state"))
        step = state["step"]
        accelerator.print(f"[{desc}] resuming from checkpoint at step {step}/{total_steps}")
    best = state["best"] if state else {"step": -1, "dev": {}}
    train_curve = state["train_curve"] if state else []
    dev_curve = state["dev_curve"] if state else []
    epoch_records = state.get("epoch_records", []) if state else []
    # Loss parts summed since the last logged row; checkpointed, so the first row after a resume
    # averages the same steps as an uninterrupted run's.
    partial = {"sum": defaultdict(float, (state or {}).get("partial_sum", {})),
               "n": (state or {}).get("partial_n", 0)}
    resumed_from = step

    def evaluate(at_step: int) -> dict:
        dev = evaluate_split(accelerator.unwrap_model(student), dev_loader, spec, "student", accelerator.autocast,
                             accelerator.gather_for_metrics)
        dev_curve.append({"step": at_step, **dev})
        logger.log_metrics({f"dev/{k}": v for k, v in dev.items()}, at_step)
        if best["step"] < 0 or _improves(spec, cfg, dev, best["dev"]):
            best.update(step=at_step, dev=dev)
            _save_weights(accelerator, student, ckpt / "best")
            accelerator.wait_for_everyone()
        return dev

    def checkpoint(at_step: int) -> None:
        tmp = ckpt / "state.tmp"
        if accelerator.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
        accelerator.wait_for_everyone()
        accelerator.save_state(str(tmp))  # every process writes its own RNG state into it
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            shutil.rmtree(ckpt / "state", ignore_errors=True)
            tmp.rename(ckpt / "state")  # atomic swap: a kill mid-save keeps the previous checkpoint
            write_json(ckpt / "trainer_state.json", {
                "fingerprint": fingerprint, "step": at_step, "best": best,
                "train_curve": train_curve, "dev_curve": dev_curve, "epoch_records": epoch_records,
                "partial_sum": {k: float(v) for k, v in partial["sum"].items()}, "partial_n": partial["n"]},
                indent=None)
        accelerator.wait_for_everyone()

    student.train()
    bar = tqdm(total=total_steps, initial=step, desc=desc, disable=not accelerator.is_local_main_process,
               dynamic_ncols=True)
    while step < total_steps:
        epoch, done_in_epoch = divmod(step, steps_per_epoch)
        train_loader.set_epoch(epoch)
        record = method.epoch_record(epoch)
        if record is not None and not any(r["epoch"] == epoch for r in epoch_records):
            epoch_records.append({"epoch": epoch, **record})
            accelerator.print(f"[{desc}] epoch {epoch}: {record}")
        loader = accelerator.skip_first_batches(train_loader, done_in_epoch) if done_in_epoch else train_loader
        for batch in loader:
            method.begin_step(epoch, step)
            mix = method.mixup(len(batch["labels"]), accelerator.device)
            with accelerator.autocast():
                teacher_out = teacher_signal(method, batch, teacher, teacher_cache if use_cache else None,
                                             accelerator.device, mix)
                words = batch.get("student_words")  # tagging: logits per word
                student_out = run_model(student, batch["student"], method.student_needs, mix, words)
                if mix is not None and method.needs_clean_pass:
                    with torch.no_grad():  # the consistency target: the student's own clean pass
                        student_out.clean = run_model(student, batch["student"], method.student_needs, words=words)
                losses = method_fn(student_out, teacher_out, batch["labels"])
            loss = losses["loss"]
            if not torch.isfinite(loss):
                raise FloatingPointError(f"[{desc}] loss is {loss.item()} at step {step}: lower the "
                                         f"learning rate or check the data")
            accelerator.backward(loss)
            if cfg.max_grad_norm:
                accelerator.clip_grad_norm_(trainable, cfg.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            bar.update(1)
            for name, value in losses.items():
                partial["sum"][name] += torch.as_tensor(value).detach().float()  # no GPU sync until logged
            partial["n"] += 1
            if step % cfg.log_every == 0 or step == total_steps:
                row = {"step": step, "epoch": step / steps_per_epoch, "lr": scheduler.get_last_lr()[0],
                       **{k: float(v) / partial["n"] for k, v in partial["sum"].items()}}
                train_curve.append(row)
                logger.log_metrics({f"train/{k}": v for k, v in row.items() if k != "step"}, step)
                bar.set_postfix(loss=f"{row['loss']:.4f}")
                partial.update(sum=defaultdict(float), n=0)
            end_of_epoch = step % steps_per_epoch == 0
            if (cfg.eval_every and step % cfg.eval_every == 0) or (not cfg.eval_every and end_of_epoch) \
                    or step == total_steps:
                if not dev_curve or dev_curve[-1]["step"] != step:
                    evaluate(step)
            # none at the last step: the run finishes (best/ and last/ saved) right after it
            if (step % cfg.checkpoint_every == 0 or end_of_epoch) and step < total_steps:
                checkpoint(step)
            if step == total_steps or step == stop_after_steps:
                break
        if step == stop_after_steps and step < total_steps:
            bar.close()
            raise KeyboardInterrupt(f"[{desc}] stopped after {step} steps (stop_after_steps)")
    bar.close()

    last_dev = {k: v for k, v in dev_curve[-1].items() if k != "step"}
    _save_weights(accelerator, student, ckpt / "last")
    accelerator.wait_for_everyone()
    selected = cfg.select
    if selected == "best" and best["step"] != step:
        load_model(accelerator.unwrap_model(student), str(ckpt / "best" / "model.safetensors"))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        # Finished: only an interrupted run may resume.  best/ and last/ weights stay.
        (ckpt / "trainer_state.json").unlink(missing_ok=True)
        shutil.rmtree(ckpt / "state", ignore_errors=True)
    return TrainResult(selected=selected, best_step=best["step"], best_dev=best["dev"], last_dev=last_dev,
                       train_curve=train_curve, dev_curve=dev_curve, resumed_from_step=resumed_from,
                       epoch_records=epoch_records)


def _improves(spec: TaskSpec, cfg: TrainConfig, dev: dict, best: dict) -> bool:
    """Whether ``dev`` beats the best so far by ``cfg.select_by`` (ties keep the earlier)."""
    if cfg.select_by == "loss":
        return dev["loss"] < best["loss"] or (math.isnan(best["loss"]) and not math.isnan(dev["loss"]))
    return is_better(spec, dev[spec.main_metric], best[spec.main_metric])


def teacher_signal(method: Method, batch: dict, teacher: torch.nn.Module | None, teacher_cache,
                   device: torch.device, mix: Mixup | None = None) -> ModelOutputs | None:
    """What the method reads from the teacher for ``batch``: the cached vectors when a cache is
    given, else a live no-grad forward capturing ``method.teacher_needs`` (on the same mixed
    input as the student under ``mix``); None without a teacher."""
    if teacher_cache is not None:
        if mix is not None:
            raise ValueError(f"{method.name}: a mixed batch cannot be looked up in the teacher cache")
        words = batch["labels"].shape[1] if batch.get("student_words") is not None else None  # tagging
        positions = batch["student"]["input_ids"].shape[1] if batch.get("example") is not None else None  # QA
        return teacher_cache.lookup(batch["index"], device, words, positions)
    if not method.needs_teacher:
        return None
    with torch.no_grad():
        return run_model(teacher, batch["teacher"], method.teacher_needs, mix, batch.get("teacher_words"))


def _save_weights(accelerator: Accelerator, model: torch.nn.Module, folder: Path) -> None:
    if accelerator.is_main_process:
        with atomic_file(folder / "model.safetensors") as tmp:
            save_model(accelerator.unwrap_model(model), str(tmp))


def _load_trainer_state(ckpt: Path, fingerprint: str) -> dict | None:
    state_file = ckpt / "trainer_state.json"
    if state_file.exists() and (ckpt / "state").exists():
        state = json.loads(state_file.read_text())
        if state.get("fingerprint") == fingerprint:
            return state
    if is_main_process():
        shutil.rmtree(ckpt, ignore_errors=True)  # stale: another config or data wrote it
        ckpt.mkdir(parents=True, exist_ok=True)
    return None
