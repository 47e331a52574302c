"""Stage ``teacher``: fine-tune the teacher on the train split."""

from __future__ import annotations

from pathlib import Path

from accelerate.utils import set_seed

from kdpipe.config import Params
from kdpipe.data.batches import DistillCollator
from kdpipe.data.splits import load_datasets
from kdpipe.methods.base import FineTune, MethodParams
from kdpipe.models.loading import encoder_for, load_classifier, load_tokenizer
from kdpipe.models.sources import resolve_model_path
from kdpipe.pipeline.common import save_trained, summary
from kdpipe.training.checkpoints import fingerprint, remove_checkpoints
from kdpipe.training.engine import train


def train_teacher(params: Params, data_dir: Path, out_dir: Path, checkpoint_dir: Path, plots_dir: Path,
                  logger=None) -> dict:
    base = resolve_model_path(params.teacher.model)
    tokenizer = load_tokenizer(base)
    spec, sets = load_datasets(data_dir, tokenizer, params.max_length)
    set_seed(params.seed)  # the new classification head is drawn from the RNG
    model = load_classifier(base, spec.num_labels, spec.problem)
    if spec.labels:
        model.config.id2label = dict(enumerate(spec.labels))
        model.config.label2id = {name: i for i, name in enumerate(spec.labels)}
    regression = spec.problem == "regression"
    collator = DistillCollator(encoder_for(model, tokenizer, params.max_length), None, regression)
    inputs = fingerprint("teacher", params.teacher.model_dump(), params.seed, params.max_length, data_dir,
                         code=__name__)
    result = train(model, FineTune(MethodParams(), regression=regression), spec, sets["train"], sets["dev"],
                   collator, params.teacher.train, seed=params.seed, checkpoint_dir=checkpoint_dir,
                   fingerprint=inputs, logger=logger, desc="teacher")
    trained = summary(result, spec)
    save_trained(model, tokenizer, out_dir, plots_dir, "teacher", result, spec, {
        "role": "teacher", "base_model": params.teacher.model, "task": spec.to_dict(),
        "max_length": params.max_length, "training": trained})
    remove_checkpoints(checkpoint_dir)
    return trained
