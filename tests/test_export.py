"""kdpipe.export: dynamo ONNX export, parity, int8 quantisation, latency, atomic writes; and the
export stage's int8 gate and config.json (kdpipe.pipeline.export).

Tiny random-config models keep each export to a few seconds; the real MiniLM only matters
for tokenisation, which tests/test_runtime.py covers.
"""

from __future__ import annotations

import json
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

from kdpipe.config import ConfigError, ExportConfig, parse_params
from kdpipe.data.tasks import TaskSpec
from kdpipe.export import convert as export
from kdpipe.export.convert import export_onnx, onnx_latency, onnx_logits, parity, quantize_int8
from kdpipe.pipeline.export import (
    ExportCheckError,
    check_gates,
    concordance,
    export_model_config,
    int8_gate,
    metric_drop_interval,
)

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


# --- the int8 gate (kdpipe.pipeline.export; docs/onnx.md §3) ---------------------------------

SST2 = TaskSpec("sst2", "classification", ("negative", "positive"), 1, ("accuracy",), "accuracy")
COLA = TaskSpec("cola", "classification", ("unacceptable", "acceptable"), 1, ("matthews",), "matthews")
STSB = TaskSpec("stsb", "regression", None, 2, ("pearson", "spearman"), "pearson")


def as_logits(pred: np.ndarray) -> np.ndarray:
    """Class ids [N] -> two-class logits [N, 2] whose argmax is ``pred``."""
    return np.eye(2, dtype=np.float32)[pred] * 4 - 2


def flipped(pred: np.ndarray, gold: np.ndarray, right_to_wrong: int, wrong_to_right: int = 0) -> np.ndarray:
    """``pred`` with its first ``right_to_wrong`` correct and first ``wrong_to_right`` wrong
    predictions inverted (binary), as a quantised copy of the model might."""
    out = pred.copy()
    right, wrong = np.flatnonzero(pred == gold), np.flatnonzero(pred != gold)
    out[right[:right_to_wrong]] ^= 1
    out[wrong[:wrong_to_right]] ^= 1
    return out


def dev_set(n: int, accuracy: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(gold, fp32 predictions) of a binary task, with exactly ``accuracy`` of them right."""
    rng = np.random.default_rng(seed)
    gold = rng.integers(0, 2, n)
    pred = gold.copy()
    pred[rng.permutation(n)[:round(n * (1 - accuracy))]] ^= 1
    return gold, pred


def report_with(gate: dict) -> dict:
    return {"parity": {"max_abs_diff": 0.0}, "int8_gate": gate}


@pytest.mark.parametrize("spec", [SST2, COLA], ids=["accuracy", "matthews"])
def test_two_flips_of_sixty_are_noise_and_pass(spec):
    gold, fp32 = dev_set(60, accuracy=0.8)
    int8 = flipped(fp32, gold, right_to_wrong=2)
    cfg = ExportConfig()
    gate = int8_gate(spec, as_logits(fp32), as_logits(int8), gold, cfg)
    # The point drop is over the limit (the old gate failed here) but well inside the noise.
    assert gate["drop"] > cfg.int8_max_drop
    assert gate["drop_interval"]["low"] <= cfg.int8_max_drop < gate["drop_interval"]["high"]
    assert gate["agreement"] == pytest.approx(58 / 60)
    assert gate["verdict"] == "pass_within_noise"
    check_gates(report_with(gate), spec, cfg)


@pytest.mark.parametrize("spec", [SST2, COLA], ids=["accuracy", "matthews"])
def test_int8_clearly_worse_on_500_fails_naming_the_key(spec):
    gold, fp32 = dev_set(500, accuracy=0.85)
    int8 = flipped(fp32, gold, right_to_wrong=40)  # 8 accuracy points, 92% agreement
    cfg = ExportConfig(int8_min_agreement=0.9)
    gate = int8_gate(spec, as_logits(fp32), as_logits(int8), gold, cfg)
    assert gate["drop_interval"]["low"] > cfg.int8_max_drop
    assert gate["verdict"] == "fail_drop"
    with pytest.raises(ExportCheckError, match=r"export\.int8_max_drop \(0\.02\)"):
        check_gates(report_with(gate), spec, cfg)


def test_low_agreement_fails_even_without_a_metric_drop():
    gold, fp32 = dev_set(200, accuracy=0.7)
    int8 = flipped(fp32, gold, right_to_wrong=15, wrong_to_right=15)  # 85% agreement, same accuracy
    cfg = ExportConfig(int8_min_agreement=0.9)
    gate = int8_gate(SST2, as_logits(fp32), as_logits(int8), gold, cfg)
    assert gate["drop"] == pytest.approx(0.0) and gate["agreement"] == pytest.approx(0.85)
    assert gate["verdict"] == "fail_agreement"
    with pytest.raises(ExportCheckError, match=r"0\.850 of 200 dev examples.*export\.int8_min_agreement \(0\.9\)"):
        check_gates(report_with(gate), SST2, cfg)
    assert int8_gate(SST2, as_logits(fp32), as_logits(int8), gold,
                     ExportConfig(int8_min_agreement=0.0))["verdict"] == "pass"  # 0 turns it off


def test_regression_agreement_catches_a_shift_pearson_ignores():
    rng = np.random.default_rng(0)
    gold = rng.uniform(0, 5, 300)
    fp32 = (gold + rng.normal(0, 0.5, 300)).astype(np.float32)[:, None]
    cfg = ExportConfig()
    close = int8_gate(STSB, fp32, fp32 + rng.normal(0, 0.01, fp32.shape).astype(np.float32), gold, cfg)
    assert close["agreement"] > 0.999 and close["verdict"] == "pass"
    assert close["agreement_kind"] == "concordance"
    shifted = int8_gate(STSB, fp32, fp32 + 1.0, gold, cfg)  # every score one point too high
    assert shifted["drop"] == pytest.approx(0.0, abs=1e-9)  # Pearson with gold is blind to it
    assert shifted["verdict"] == "fail_agreement"
    with pytest.raises(ExportCheckError, match=r"concordance.*export\.int8_min_agreement"):
        check_gates(report_with(shifted), STSB, cfg)


def test_concordance():
    x = np.array([-1.5, -0.5, 0.5, 1.5])  # mean 0, variance 1.25
    assert concordance(x, x) == pytest.approx(1.0)
    assert concordance(x, x + 1) == pytest.approx(2.5 / 3.5)  # 2 var / (2 var + shift^2): Pearson says 1
    assert concordance(x, 2 * x) == pytest.approx(5 / 6.25)   # 2 * 2 var / (var + 4 var)
    assert concordance(x, -x) == pytest.approx(-1.0)
    assert concordance(np.ones(3), np.ones(3)) == 1.0


def test_drop_interval_is_reproducible_and_exact_for_identical_models():
    gold, fp32 = dev_set(100, accuracy=0.8)
    int8 = flipped(fp32, gold, right_to_wrong=3, wrong_to_right=1)
    first = metric_drop_interval(COLA, as_logits(fp32), as_logits(int8), gold)
    assert first == metric_drop_interval(COLA, as_logits(fp32), as_logits(int8), gold)  # seeded
    assert first[1] < first[0] < first[2]
    assert metric_drop_interval(COLA, as_logits(fp32), as_logits(fp32), gold) == (0.0, 0.0, 0.0)


def test_parity_gate_names_its_key():
    with pytest.raises(ExportCheckError, match=r"export\.parity_atol"):
        check_gates({"parity": {"max_abs_diff": 1e-2}}, SST2, ExportConfig())
    check_gates({"parity": {"max_abs_diff": 1e-6}}, SST2, ExportConfig())  # no int8: nothing else to check


def test_gate_params_are_validated_and_old_files_still_parse():
    with pytest.raises(ConfigError, match=r"export\.int8_min_agreement"):
        parse_params({"export": {"int8_min_agreement": 1.5}})
    with pytest.raises(ConfigError, match=r"export\.int8_max_drop"):
        parse_params({"export": {"int8_max_drop": -0.1}})
    old = parse_params({"export": {"int8_max_drop": 0.05}})  # a params file from before the agreement gate
    assert old.export.int8_max_drop == 0.05 and old.export.int8_min_agreement == ExportConfig().int8_min_agreement


# --- config.json: an export folder optimum and AutoConfig can load (docs/onnx.md §4) ---------

TWEETS = TaskSpec("tweets", "classification", ("negative", "neutral", "positive"), 1,
                  ("accuracy", "macro_f1"), "accuracy")


def test_export_model_config_describes_the_graph():
    model = tiny_bert(output_hidden_states=True)
    model.config.kdpipe_sps = {"shuffle": "upper_swap", "physical_layers": 2}
    config = export_model_config(model.config, TWEETS)
    assert config.id2label == {0: "negative", 1: "neutral", 2: "positive"}
    assert config.label2id == {"negative": 0, "neutral": 1, "positive": 2} and config.num_labels == 3
    assert config.problem_type == "single_label_classification"
    assert not config.output_hidden_states
    assert config.num_hidden_layers == 4 and not hasattr(config, "kdpipe_sps")  # the graph runs all 2L
    assert model.config.output_hidden_states and model.config.kdpipe_sps  # the student's own is untouched
    regression = export_model_config(tiny_bert(num_labels=1).config, STSB)
    assert regression.problem_type == "regression" and regression.num_labels == 1


DEV_TEXTS = ["I loved this movie!", "Terrible service, never again.", "It was fine, I guess.",
             "What a day", "meh", "Best purchase of the year", "The update broke everything",
             "Nothing special either way"] * 5


@pytest.fixture(scope="module")
def stage_export(tmp_path_factory, minilm_path):
    """``export_student`` end to end on a tiny random student and a 40-example dev set."""
    import pandas as pd
    from transformers import AutoTokenizer

    from kdpipe.data.splits import save_splits
    from kdpipe.models.loading import save_model
    from kdpipe.pipeline.export import export_student

    root = tmp_path_factory.mktemp("stage")
    labels = [i % 3 for i in range(len(DEV_TEXTS))]
    frame = pd.DataFrame({"text_a": DEV_TEXTS, "label": labels})
    save_splits(root / "data", TWEETS, {"train": frame, "dev": frame})
    save_model(tiny_bert(), AutoTokenizer.from_pretrained(minilm_path), root / "student")
    # A random student's int8 copy is no test of quantisation: the gate's numbers are checked, not its verdict.
    params = parse_params({"max_length": 32, "evaluate": {"latency_batch_sizes": [1], "latency_warmup": 0,
                                                          "latency_repeats": 1},
                           "export": {"parity_batches": 1, "int8_min_agreement": 0.0, "int8_max_drop": 1.0}})
    report = export_student(params, root / "student", root / "data", root / "export", echo=lambda _: None)
    return root / "export", report


def test_stage_report_records_the_int8_gate(stage_export):
    folder, report = stage_export
    gate = report["int8_gate"]
    assert set(gate) == {"agreement", "agreement_kind", "metric", "drop", "drop_interval", "examples", "verdict"}
    assert 0 <= gate["agreement"] <= 1 and gate["examples"] == len(DEV_TEXTS) and gate["metric"] == "accuracy"
    assert gate["drop"] == pytest.approx(report["fp32"]["dev"]["accuracy"] - report["int8"]["dev"]["accuracy"])
    assert gate["drop_interval"]["low"] <= gate["drop"] <= gate["drop_interval"]["high"]
    assert gate["verdict"] in ("pass", "pass_within_noise")
    assert json.loads((folder / "report.json").read_text())["int8_gate"] == gate


def test_export_folder_config_json_is_read_by_autoconfig(stage_export):
    from transformers import AutoConfig

    from kdpipe.export.runtime import OnnxTextClassifier

    folder, _ = stage_export
    config = AutoConfig.from_pretrained(str(folder))
    assert config.model_type == "bert" and config.num_labels == 3
    assert config.id2label == {0: "negative", 1: "neutral", 2: "positive"}
    assert config.label2id == {"negative": 0, "neutral": 1, "positive": 2}
    assert config.problem_type == "single_label_classification"
    assert OnnxTextClassifier.from_dir(folder).labels == ["negative", "neutral", "positive"]  # runtime unaffected


def test_optimum_loads_the_export_folder(stage_export):
    # optimum-onnx 0.1.0 (the newest) needs transformers < 4.58, so this skips on the pinned stack
    # (docs/onnx.md §4).  Not importorskip: optimum.onnxruntime imports lazily, and the
    # ImportError only comes with the class.
    try:
        from optimum.onnxruntime import ORTModelForSequenceClassification
    except ImportError as e:
        pytest.skip(f"optimum with onnxruntime support is not importable: {e}")
    from kdpipe.export.runtime import OnnxTextClassifier

    folder, _ = stage_export
    ours = OnnxTextClassifier.from_dir(folder)
    model = ORTModelForSequenceClassification.from_pretrained(str(folder), file_name="model.onnx")
    feeds = ours.encode(DEV_TEXTS[:4])
    np.testing.assert_allclose(np.asarray(model(**feeds).logits), ours.logits(DEV_TEXTS[:4]), atol=1e-5)
    assert model.config.id2label[2] == "positive"
