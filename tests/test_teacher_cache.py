"""The teacher-output cache: it holds what a live teacher gives, it is refused when stale, and
training from it ends where training with the live teacher ends."""

import numpy as np
import pytest
import torch

from kdpipe.config import TrainConfig
from kdpipe.data.batches import DistillCollator, Encoder
from kdpipe.data.splits import TextDataset
from kdpipe.training.engine import teacher_signal, train
from kdpipe.methods.registry import build_method
from kdpipe.models.adapters import ModelShape, Shapes
from kdpipe.models.taps import Needs, cls_vector, mean_pooled, run_model
from kdpipe.training.teacher_cache import StaleCacheError, TeacherCache, cache_key, compute_teacher_cache

from conftest import tiny_bert
from test_engine import SPEC, toy_frame

SHAPES = Shapes(student=ModelShape(2, 32, 4), teacher=ModelShape(4, 32, 4))
# Methods whose teacher signal is per-example vectors (TinyBERT: its prediction phase).
CACHEABLE = ["vanilla_kd", "pkd", "rail_kd_l", "rail_kd_c", "alp_kd", "alp_kd_no", "alp_kd_po", "tinybert"]


@pytest.fixture
def parts(tokenizer, tmp_path):
    teacher = tiny_bert(num_labels=2, layers=4, seed=2)
    dataset = TextDataset(toy_frame(40, 0))
    enc = Encoder(tokenizer, ["input_ids", "attention_mask", "token_type_ids"], 16)
    compute_teacher_cache(teacher, tokenizer, dataset, tmp_path / "cache", key="k1", max_length=16, batch_size=16)
    cache = TeacherCache.open(tmp_path / "cache", "k1", 40)
    return teacher, dataset, DistillCollator(enc, enc, regression=False), cache


def test_lookup_returns_the_live_teachers_vectors_in_batch_order(parts):
    teacher, dataset, collate, cache = parts
    rows = [dataset[i] for i in (7, 3, 31, 0)]  # unsorted on purpose: lookups sort reads internally
    batch = collate(rows)
    live = run_model(teacher, batch["teacher"], Needs(hidden_states=True))
    cached = cache.lookup(batch["index"])
    assert torch.allclose(cached.logits, live.logits, atol=1e-5)
    for layer in range(5):  # embeddings + 4 layers
        assert torch.allclose(cls_vector(cached, layer), cls_vector(live, layer), atol=1e-5)
        assert torch.allclose(mean_pooled(cached, layer), mean_pooled(live, layer), atol=1e-5)


@pytest.mark.parametrize("name", CACHEABLE)
def test_cached_and_live_teacher_give_the_same_losses(parts, name):
    teacher, dataset, collate, cache = parts
    method = build_method(name, {}, regression=False, shapes=SHAPES)
    if name == "tinybert":
        method.set_phase("pred")
    assert method.teacher_cacheable
    student = tiny_bert(num_labels=2, layers=2, seed=1)
    batch = collate([dataset[i] for i in range(12)])
    method.begin_step(0, 0)
    s_out = run_model(student, batch["student"], method.student_needs)
    live = method(s_out, teacher_signal(method, batch, teacher, None, "cpu"), batch["labels"])
    cached = method(s_out, teacher_signal(method, batch, None, cache, "cpu"), batch["labels"])
    assert live.keys() == cached.keys()
    for key in live:
        assert torch.allclose(live[key], cached[key], atol=1e-5, rtol=1e-5), key


def test_training_from_the_cache_matches_training_with_the_live_teacher(parts, tmp_path):
    teacher, dataset, collate, cache = parts
    cfg = TrainConfig(epochs=1, batch_size=8, lr=1e-3, eval_every=0, log_every=1)
    students = []
    for use_cache in (False, True):
        student = tiny_bert(num_labels=2, layers=2, seed=1)
        method = build_method("pkd", {}, regression=False, shapes=SHAPES)
        result = train(student, method, SPEC, dataset, TextDataset(toy_frame(8, 1)), collate, cfg, seed=3,
                       checkpoint_dir=tmp_path / f"ckpt{use_cache}", fingerprint="f",
                       teacher=None if use_cache else teacher, teacher_cache=cache if use_cache else None)
        students.append((student, result))
    (live, r_live), (cached, r_cached) = students
    assert [r["loss"] for r in r_live.train_curve] == pytest.approx([r["loss"] for r in r_cached.train_curve],
                                                                    rel=1e-4)
    for (name, a), b in zip(live.state_dict().items(), cached.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-5), name


def test_stale_or_missing_cache_is_refused(parts, tmp_path):
    with pytest.raises(StaleCacheError, match="another teacher, data or max_length"):
        TeacherCache.open(tmp_path / "cache", "other-key", 40)
    with pytest.raises(StaleCacheError):
        TeacherCache.open(tmp_path / "cache", "k1", 41)  # a different train split size
    with pytest.raises(FileNotFoundError, match="teacher_outputs"):
        TeacherCache.open(tmp_path / "nowhere", "k1", 40)


def test_cache_key_follows_teacher_weights_data_and_max_length(tmp_path):
    teacher_dir, data_dir = tmp_path / "teacher", tmp_path / "data"
    teacher_dir.mkdir()
    data_dir.mkdir()
    (teacher_dir / "model.safetensors").write_bytes(b"weights")
    (teacher_dir / "tokenizer.json").write_text("{}")
    (teacher_dir / "kdpipe.json").write_text("{}")
    (data_dir / "train.parquet").write_bytes(b"rows")
    key = cache_key(teacher_dir, data_dir, 64)
    assert cache_key(teacher_dir, data_dir, 128) != key
    (teacher_dir / "kdpipe.json").write_text('{"note": "metadata only"}')
    assert cache_key(teacher_dir, data_dir, 64) == key  # metadata does not change the outputs
    (data_dir / "train.parquet").write_bytes(b"other rows")
    key2 = cache_key(teacher_dir, data_dir, 64)
    assert key2 != key
    (teacher_dir / "tokenizer.json").write_text('{"changed": 1}')
    assert cache_key(teacher_dir, data_dir, 64) != key2


def test_cache_files_have_one_row_per_example_and_every_layer(parts, tmp_path):
    meta = parts[3].meta
    assert meta["examples"] == 40 and meta["layers"] == 4 and meta["hidden"] == 32
    assert np.load(tmp_path / "cache" / "cls.npy").shape == (40, 5, 32)
    assert np.load(tmp_path / "cache" / "logits.npy").shape == (40, 2)
    assert not list(tmp_path.glob(".cache.tmp-*"))  # written atomically


def test_tagging_cache_holds_per_word_float16_logits_cut_to_each_batch(tokenizer, tmp_path):
    """Token tagging: the cache stores the teacher's logits at each word's first sub-token
    ([N, W, C], float16), and a batch's lookup gives the live per-word logits for its own words,
    so vanilla KD per word reads the same targets from it."""
    import pandas as pd
    from test_tagging import _tiny_tagger

    teacher = _tiny_tagger(4).eval()
    sentences = [["EU", "rejects", "German", "call", "to", "boycott", "British", "lamb", "."], ["Peter", "Blackburn"],
                 ["BRUSSELS", "1996-08-22"], ["Huggingface", "is", "in", "Brooklyn"]] * 3
    dataset = TextDataset(pd.DataFrame({"text_a": sentences, "label": [[1] * len(s) for s in sentences]}))
    meta = compute_teacher_cache(teacher, tokenizer, dataset, tmp_path / "cache", key="k", max_length=32, batch_size=5)
    assert meta["per_word"] and np.load(tmp_path / "cache/logits.npy").shape == (12, 9, teacher.num_labels)
    assert np.load(tmp_path / "cache/logits.npy").dtype == np.float16
    cache = TeacherCache.open(tmp_path / "cache", "k", 12)
    enc = Encoder(tokenizer, ["input_ids", "attention_mask", "token_type_ids"], 32)
    batch = DistillCollator(enc, enc, regression=False)([dataset[i] for i in (5, 2, 7)])  # at most 4 words
    method = build_method("vanilla_kd", {}, regression=False, shapes=SHAPES)
    cached = teacher_signal(method, batch, None, cache, "cpu")
    live = teacher_signal(method, batch, teacher, None, "cpu")
    assert cached.logits.shape == live.logits.shape == (3, 4, teacher.num_labels)
    assert torch.allclose(cached.logits, live.logits, atol=2e-3)  # float16
    student = run_model(_tiny_tagger(2), batch["student"], method.student_needs, words=batch["student_words"])
    assert method(student, cached, batch["labels"])["loss"].item() == pytest.approx(
        method(student, live, batch["labels"])["loss"].item(), rel=1e-3)
