"""kdpipe.export: dynamo ONNX export, parity, int8 quantisation, latency, atomic writes.

Tiny random-config models keep each export to a few seconds; the real MiniLM only matters
for tokenisation, which tests/test_runtime.py covers.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import onnx
import pytest
import torch
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    DistilBertConfig,
    DistilBertForSequenceClassification,
)

from kdpipe.export import convert as export
from kdpipe.export.convert import export_onnx, onnx_latency, onnx_logits, parity, quantize_int8

VOCAB = 30522  # MiniLM's, so real token ids would also fit


def tiny_bert(attn: str = "eager", num_labels: int = 3, **config) -> BertForSequenceClassification:
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=64, num_labels=num_labels, **config)
    cfg._attn_implementation = attn
    model = BertForSequenceClassification(cfg).eval()
    # The default std-0.02 head gives logits ~0.04, too small for the tolerance to mean much.
    torch.nn.init.normal_(model.classifier.weight, std=0.5)
    return model


def batch(b: int, seq: int, token_types: bool = True, pad_last: bool = True) -> dict[str, torch.Tensor]:
    """Random int64 [b, seq] inputs; the last row is right-padded to half length."""
    g = torch.Generator().manual_seed(b * 1000 + seq)
    ids = torch.randint(1000, 5000, (b, seq), generator=g)
    mask = torch.ones(b, seq, dtype=torch.long)
    if pad_last and seq > 2:
        mask[-1, seq // 2:] = 0
        ids[-1, seq // 2:] = 0
    out = {"input_ids": ids, "attention_mask": mask}
    if token_types:
        out["token_type_ids"] = torch.randint(0, 2, (b, seq), generator=g)
    return out


# Shapes other than the traced 2 x 8: batch 1, padded batch 3, longer sequences.
EVAL_SHAPES = [(1, 5), (1, 8), (3, 17), (2, 40), (4, 64)]


@pytest.fixture(scope="module")
def bert_export(tmp_path_factory):
    model = tiny_bert("eager")
    path = tmp_path_factory.mktemp("bert") / "model.onnx"
    # Keys out of graph order plus a label column, as a collator would hand them over.
    sample = {"token_type_ids": torch.zeros(2, 8, dtype=torch.long), **batch(2, 8, pad_last=False),
              "labels": torch.tensor([0, 1])}
    names = export_onnx(model, sample, path)
    return model, path, names


def test_export_writes_one_file_with_dynamic_axes(bert_export):
    model, path, names = bert_export
    assert names == ["input_ids", "attention_mask", "token_type_ids"]
    assert sorted(os.listdir(path.parent)) == ["model.onnx"]  # no .data side file, no temp left
    graph = onnx.load(str(path)).graph
    assert [i.name for i in graph.input] == names
    assert [o.name for o in graph.output] == ["logits"]
    for inp in graph.input:
        dims = inp.type.tensor_type.shape.dim
        assert inp.type.tensor_type.elem_type == onnx.TensorProto.INT64
        assert all(d.dim_param and not d.dim_value for d in dims), f"{inp.name} has a fixed axis"
    out_dims = graph.output[0].type.tensor_type.shape.dim
    assert out_dims[0].dim_param and out_dims[1].dim_value == 3


def test_parity_on_padded_batches_of_other_shapes(bert_export):
    model, path, _ = bert_export
    report = parity(model, path, [batch(b, s) for b, s in EVAL_SHAPES])
    assert report["batches"] == len(EVAL_SHAPES)
    assert report["examples"] == sum(b for b, _ in EVAL_SHAPES)
    assert report["max_abs_diff"] <= 1e-4


def test_onnx_logits_matches_torch_and_ignores_extra_keys(bert_export):
    model, path, _ = bert_export
    inputs = batch(3, 17)
    with torch.no_grad():
        expected = model(**inputs).logits.numpy()
    feeds = {k: v.numpy().astype(np.int32) for k, v in inputs.items()}  # any int dtype is cast
    feeds["labels"] = np.zeros(3, dtype=np.int64)
    got = onnx_logits(path, feeds)
    assert got.shape == (3, 3) and got.dtype == np.float32
    np.testing.assert_allclose(got, expected, atol=1e-4)
    with pytest.raises(KeyError, match="token_type_ids"):
        onnx_logits(path, {"input_ids": feeds["input_ids"], "attention_mask": feeds["attention_mask"]})


def test_sdpa_with_hidden_states_config_still_exports_logits_only(tmp_path):
    # Distillation students often have output_hidden_states/attentions on in their config.
    model = tiny_bert("sdpa", output_hidden_states=True)
    path = tmp_path / "model.onnx"
    export_onnx(model, batch(2, 8), path)
    assert [o.name for o in onnx.load(str(path)).graph.output] == ["logits"]
    assert parity(model, path, [batch(b, s) for b, s in EVAL_SHAPES[:3]])["max_abs_diff"] <= 1e-4


def test_model_without_token_type_ids(tmp_path):
    torch.manual_seed(0)
    cfg = DistilBertConfig(vocab_size=VOCAB, dim=32, n_layers=2, n_heads=4, hidden_dim=64, num_labels=2)
    model = DistilBertForSequenceClassification(cfg).eval()
    path = tmp_path / "model.onnx"
    names = export_onnx(model, batch(2, 8, token_types=False), path)
    assert names == ["input_ids", "attention_mask"]
    session = export.make_session(path)
    assert [i.name for i in session.get_inputs()] == names
    # Batches that carry token_type_ids (a BERT tokenizer's) still work: the graph takes what it needs.
    report = parity(model, path, [batch(b, s) for b, s in EVAL_SHAPES[:3]])
    assert report["max_abs_diff"] <= 1e-4


def test_failed_export_leaves_no_file_and_restores_mode(tmp_path, monkeypatch):
    target = tmp_path / "model.onnx"
    model = tiny_bert().train()
    seen_training = []

    def half_written_then_crash(module, args, f, **kwargs):
        seen_training.append(module.training)
        with open(f, "wb") as fh:
            fh.write(b"partial")
        raise RuntimeError("exporter blew up")

    monkeypatch.setattr(torch.onnx, "export", half_written_then_crash)
    with pytest.raises(RuntimeError, match="blew up"):
        export_onnx(model, batch(2, 8), target)
    assert list(tmp_path.iterdir()) == []
    assert seen_training == [False]  # exported in eval mode (dropout off) ...
    assert model.training  # ... and the caller's mode is back

    target.write_bytes(b"previous good export")
    with pytest.raises(RuntimeError):
        export_onnx(model, batch(2, 8), target)
    assert list(tmp_path.iterdir()) == [target]
    assert target.read_bytes() == b"previous good export"


def test_export_needs_input_ids(tmp_path):
    with pytest.raises(ValueError, match="input_ids"):
        export_onnx(tiny_bert(), {"attention_mask": torch.ones(2, 8, dtype=torch.long)}, tmp_path / "m.onnx")


def test_quantize_int8_is_smaller_and_runs(bert_export, tmp_path):
    model, path, names = bert_export
    dst = tmp_path / "model.int8.onnx"
    quantize_int8(path, dst)
    assert sorted(os.listdir(tmp_path)) == ["model.int8.onnx"]
    assert dst.stat().st_size < path.stat().st_size / 2
    session = export.make_session(dst)
    assert [i.name for i in session.get_inputs()] == names
    inputs = batch(3, 17)
    fp32 = onnx_logits(path, {k: v.numpy() for k, v in inputs.items()})
    int8 = onnx_logits(dst, {k: v.numpy() for k, v in inputs.items()}, session=session)
    assert int8.shape == fp32.shape and np.isfinite(int8).all()
    # Quantised, so not equal, but it must still be the same function, roughly.
    assert np.abs(int8 - fp32).max() < 0.25 * np.abs(fp32).max()


def test_strip_initializer_value_info(bert_export):
    _, path, _ = bert_export
    model = onnx.load(str(path))
    initializers = {i.name for i in model.graph.initializer}
    before = len(model.graph.value_info)
    removed = export.strip_initializer_value_info(model)
    assert removed > 0 and len(model.graph.value_info) == before - removed
    assert not initializers & {v.name for v in model.graph.value_info}


def test_failed_quantize_leaves_no_file(bert_export, tmp_path, monkeypatch):
    import onnxruntime.quantization as q

    def crash(model_input, model_output, **kwargs):
        open(model_output, "wb").write(b"partial")
        raise RuntimeError("quantizer blew up")

    monkeypatch.setattr(q, "quantize_dynamic", crash)
    with pytest.raises(RuntimeError, match="blew up"):
        quantize_int8(bert_export[1], tmp_path / "model.int8.onnx")
    assert list(tmp_path.iterdir()) == []


def test_onnx_latency(bert_export):
    _, path, _ = bert_export
    feeds = {k: v.numpy() for k, v in batch(2, 16).items()}
    result = onnx_latency(path, feeds, warmup=1, repeats=5, threads=1)
    assert set(result) == {"median_ms", "p90_ms"}
    assert 0 < result["median_ms"] <= result["p90_ms"]
    with pytest.raises(ValueError):
        onnx_latency(path, feeds, warmup=0, repeats=0)
