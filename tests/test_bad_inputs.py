"""The standing corpus of bad inputs: every case gets one clear line naming the key, file, line
or column at fault (never a traceback), and leaves no artifact behind (no output folder, no
metrics file, no temporary sibling, no MLflow run left RUNNING).

Each case is data: what to break, and the exact error line a user sees.  Stage cases run the
real stage script (in this process, for speed) in a small project folder; CLI cases call
``kdpipe``'s ``main``.  ``{root}`` in an expected line is the case's project folder.
"""

from __future__ import annotations

import copy
import json
import runpy
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pytest
import yaml

from conftest import REPO, tiny_bert

# A small valid project: a custom CSV task, the packaged MiniLM as teacher, tracking off.
BASE = {
    "seed": 1, "max_length": 32,
    "task": {"name": "custom", "files": {"train": "data/train.csv"}, "text_columns": ["text"],
             "label_column": "label", "dev_fraction": 0.2, "test_fraction": 0.2},
    "teacher": {"model": "minilm"},
    "student": {"num_layers": 2},
    "distill": {"runs": {"kd": {"method": "vanilla_kd"}}, "seeds": [1]},
    "tracking": {"enabled": False},
}
GOOD_CSV = "text,label\n" + "".join(f"sample text number {i},{'pos' if i % 2 else 'neg'}\n" for i in range(20))


@dataclass
class Case:
    id: str
    expected: str                               # the exact first error line ({root} = the project)
    params: dict = field(default_factory=dict)  # deep-merged into BASE; a key set to DELETE is removed
    files: dict[str, str | bytes] = field(default_factory=dict)  # written into the project
    stage: str = "data"                         # the stage script to run, or "cli"
    argv: list[str] = field(default_factory=list)  # stage arguments, or kdpipe CLI arguments
    prepare: Callable[[Path], None] | None = None  # extra set-up (a corrupted model folder, ...)
    raw_params: str | None = None               # params.yaml written as is


DELETE = object()


def _teacher_folder(root: Path, break_it: Callable[[Path], None] | None = None) -> None:
    folder = root / "my_teacher"
    tiny_bert(num_labels=2).save_pretrained(folder)
    if break_it:
        break_it(folder)


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _prepared(root: Path) -> None:
    """What the data stage writes, for cases of later stages."""
    import pandas as pd

    from kdpipe.data.splits import save_splits
    from kdpipe.data.tasks import TaskSpec
    spec = TaskSpec("custom", "classification", ("neg", "pos"), 1, ("accuracy",), "accuracy")
    frame = pd.DataFrame({"text_a": [f"text {i}" for i in range(8)], "label": [i % 2 for i in range(8)]})
    save_splits(root / "data" / "prepared", spec, {"train": frame, "dev": frame})


def _saved_model(root: Path, where: str, break_it: Callable[[Path], None]) -> None:
    _prepared(root)
    folder = root / where
    tiny_bert(num_labels=2).save_pretrained(folder)
    (folder / "kdpipe.json").write_text("{}")
    break_it(folder)


P = "kdpipe data: error: params.yaml: "
CASES = [
    # ------------------------------------------------------------------ params.yaml
    Case("unknown-top-level-key", P + "unknown top-level key 'techer' (did you mean 'teacher'?)", {"techer": {}}),
    Case("typo-in-a-run-key", 'kdpipe data: error: params.yaml: distill.runs.kd.temprature: unknown key',
         {"distill": {"runs": {"kd": {"method": "vanilla_kd", "temprature": 2}}}}),
    Case("unknown-method", P + "distill.runs.kd.method: unknown method 'vanila_kd' (did you mean 'vanilla_kd'?); "
         "known: alp_kd, alp_kd_no, alp_kd_po, cr_ild, finetune, mlkd, pea_kd, pkd, rail_kd_c, rail_kd_l, tinybert, "
         "vanilla_kd", {"distill": {"runs": {"kd": {"method": "vanila_kd"}}}}),
    Case("repeated-seed", P + "distill.seeds: seeds must differ; got [1, 1]",
         {"distill": {"seeds": [1, 1]}}),
    Case("negative-learning-rate", 'kdpipe data: error: params.yaml: teacher.train.lr: Input should be greater than 0', {"teacher": {"train": {"lr": -1}}}),
    Case("student-deeper-than-teacher", "kdpipe data: error: student.num_layers: 7 is deeper than the teacher (6 layers)",
         {"student": {"num_layers": 7}}),
    Case("layer-list-of-wrong-length", 'kdpipe data: error: params.yaml: student: layers lists 2 teacher layers but num_layers is '
                                       '3', {"student": {"num_layers": 3, "layers": [0, 1]}}),
    Case("layer-list-not-increasing", 'kdpipe data: error: params.yaml: student: layers must be strictly increasing, got [3, 1]', {"student": {"num_layers": 2, "layers": [3, 1]}}),
    Case("unknown-sps-shuffle", "kdpipe data: error: params.yaml: student.sps.shuffle: Input should be 'upper_swap', 'none' "
                                "or 'random_per_step'", {"student": {"sps": {"shuffle": "sideways"}}}),
    Case("heads-do-not-divide-the-width",
         P + "distill.runs.kd (vanilla_kd): student.attention_heads: 5 does not divide the student's width 384; "
         "use one of [1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 384]",
         {"student": {"attention_heads": 5}}),
    Case("unknown-task", "kdpipe data: error: task.name: unknown task 'mrcp' (did you mean 'mrpc'?); known: tweets, "
         "cola, sst2, mrpc, stsb, qqp, mnli, mnli_mm, qnli, rte, wnli, conll2003, squad, custom",
         {"task": {"name": "mrcp", "files": DELETE, "text_columns": DELETE, "label_column": DELETE}}),
    Case("custom-key-on-a-registered-task", "kdpipe data: error: task.files: only used with task.name: custom "
         "(task.name is 'tweets'); remove it",
         {"task": {"name": "tweets", "text_columns": DELETE, "label_column": DELETE}}),
    Case("custom-option-on-a-registered-task", "kdpipe data: error: task.duplicates: only used with task.name: "
         "custom (task.name is 'tweets'); remove it",
         {"task": {"name": "tweets", "files": DELETE, "text_columns": DELETE, "label_column": DELETE,
                   "duplicates": "keep"}}),
    Case("custom-without-train-file", "kdpipe data: error: task.files.train: custom tasks need a train file "
         "(task.files: {train: ..., dev: ..., test: ...})", {"task": {"files": {"dev": "data/train.csv"}}},
         files={"data/train.csv": GOOD_CSV}),
    Case("custom-without-text-columns", "kdpipe data: error: task.text_columns: custom tasks need one text column "
         "(single sentence) or two (sentence pair)", {"task": {"text_columns": DELETE}}, files={"data/train.csv": GOOD_CSV}),
    Case("custom-without-label-column", "kdpipe data: error: task.label_column: custom tasks need the name of the "
         "label column", {"task": {"label_column": DELETE}}, files={"data/train.csv": GOOD_CSV}),
    Case("three-text-columns", 'kdpipe data: error: params.yaml: task.text_columns: give one text column (single sentence) '
                               'or two (sentence pair)', {"task": {"text_columns": ["a", "b", "c"]}}),
    Case("not-yaml", "kdpipe data: error: params.yaml: not valid YAML at line 2, column 1: expected ',' or ']', "
                     "but got '<stream end>'",
         raw_params="task: [unclosed\n"),
    Case("empty-params-file", 'kdpipe data: error: params.yaml: the params file is empty (the repository ships one: git '
                              'checkout params.yaml; keys: README "Parameters")', raw_params="\n"),
    Case("params-file-is-a-list", 'kdpipe data: error: params.yaml: expected a mapping of sections at the top level, got list', raw_params="- a\n- b\n"),
    Case("unknown-phase", P + "distill.runs.kd.phases: tinybert has no phase 'prd' (its phases: ild, pred)",
         {"distill": {"runs": {"kd": {"method": "tinybert", "phases": {"prd": {}}}}}}),
    Case("supplementary-for-a-method-without-label-free-phase",
         P + "distill.runs.kd.supplementary: vanilla_kd has no label-free phase to train on unlabeled text "
         "(mlkd, cr_ild and tinybert have one)",
         {"distill": {"runs": {"kd": {"method": "vanilla_kd", "supplementary": {"task": "rte"}}}}}),
    Case("supplementary-with-two-sources", 'kdpipe data: error: params.yaml: distill.runs.kd.supplementary: give exactly one of task '
                                           "(another task's inputs) or file (a text file)",
         {"distill": {"runs": {"kd": {"method": "cr_ild", "supplementary": {"task": "rte", "file": "x.txt"}}}}}),
    Case("supplementary-file-missing", P + "distill.runs.kd.supplementary.file: {root}/extra.txt not found",
         {"distill": {"runs": {"kd": {"method": "cr_ild", "supplementary": {"file": "extra.txt"}}}}}),
    Case("max-length-too-short", 'kdpipe data: error: params.yaml: max_length: Input should be greater than 8', {"max_length": 4}),
    Case("run-name-with-a-space", "kdpipe data: error: params.yaml: distill.runs: run name 'my run' must use letters, digits, "
                                  "'_' or '-' (it names folders)", {"distill": {"runs": {"my run": {"method": "vanilla_kd"}}}}),
    Case("run-named-teacher", "kdpipe data: error: params.yaml: distill.runs: run name 'teacher' is the teacher's own (its "
                              "export and report row): name the run otherwise", {"distill": {"runs": {"teacher": {"method": "vanilla_kd"}}}}),
    Case("pkd-teacher-layer-out-of-range", 'kdpipe data: error: params.yaml: distill.runs.kd (pkd): pkd.teacher_layers: teacher layer '
                                           '[9] out of range: layers are numbered 1..6 (0 = embeddings, as in hidden_states)',
         {"distill": {"runs": {"kd": {"method": "pkd", "teacher_layers": [9]}}}}),
    Case("dev-fraction-too-large", 'kdpipe data: error: params.yaml: task.dev_fraction: Input should be less than 0.5', {"task": {"dev_fraction": 0.7}}),
    # ------------------------------------------------------------------ teacher.model
    Case("teacher-folder-missing", "kdpipe data: error: teacher.model: './nope': no such folder",
         {"teacher": {"model": "./nope"}}),
    Case("teacher-hub-id-offline", "kdpipe data: error: teacher.model: 'someone/no-such-model': no such folder "
         "(and the hub is offline: HF_HUB_OFFLINE=1; set HF_HUB_OFFLINE=0 for a hub id)",
         {"teacher": {"model": "someone/no-such-model"}}),
    Case("teacher-folder-without-config", "kdpipe data: error: teacher.model: 'my_teacher' is not a model folder "
         "(no config.json in it)", {"teacher": {"model": "my_teacher"}},
         prepare=lambda root: _teacher_folder(root, lambda f: (f / "config.json").unlink())),
    Case("teacher-config-not-json", "kdpipe data: error: teacher.model: my_teacher/config.json is not valid JSON "
         "(Expecting value: line 1 column 1 (char 0))", {"teacher": {"model": "my_teacher"}},
         prepare=lambda root: _teacher_folder(root, lambda f: (f / "config.json").write_text("not json"))),
    Case("teacher-config-without-model-type", "kdpipe data: error: teacher.model: my_teacher/config.json has no "
         "model_type: not a Hugging Face model config", {"teacher": {"model": "my_teacher"}},
         prepare=lambda root: _teacher_folder(root, lambda f: (f / "config.json").write_text("{}"))),
    Case("teacher-weights-truncated", "kdpipe data: error: teacher.model: my_teacher/model.safetensors is "
         "truncated or corrupted: {size} bytes, its header needs {need}", {"teacher": {"model": "my_teacher"}},
         prepare=lambda root: _teacher_folder(root, lambda f: _truncate(f / "model.safetensors"))),
    Case("teacher-weights-garbage", "kdpipe data: error: teacher.model: my_teacher/model.safetensors is not a "
         "readable safetensors file (header of {n} bytes but the file has 12)", {"teacher": {"model": "my_teacher"}},
         prepare=lambda root: _teacher_folder(root, lambda f: (f / "model.safetensors").write_bytes(b"garbage!1234"))),
    Case("teacher-without-weights", "kdpipe data: error: teacher.model: my_teacher has no weights (*.safetensors)",
         {"teacher": {"model": "my_teacher"}},
         prepare=lambda root: _teacher_folder(root, lambda f: (f / "model.safetensors").unlink())),
    # ------------------------------------------------------------------ tracking store
    Case("tracking-store-corrupted", "kdpipe data: error: {root}/mlflow.db: the MLflow store is not readable "
         "(file is not a database); move it aside (mv {root}/mlflow.db {root}/mlflow.db.broken) to start a new one, "
         "or set tracking.enabled: false", {"tracking": {"enabled": True}},
         files={"mlflow.db": b"not a database" * 200, "data/train.csv": GOOD_CSV}),
]

T = "kdpipe data: error: {root}/data/train.csv: "
DATA_CASES = [
    Case("train-file-missing", "kdpipe data: error: task.files.train: {root}/data/train.csv not found"),
    Case("unknown-extension", "kdpipe data: error: task.files.train: cannot tell the format of {root}/data/train.xlsx "
         "from its extension; use one of .csv, .tsv, .json, .jsonl, .parquet",
         {"task": {"files": {"train": "data/train.xlsx"}}}, files={"data/train.xlsx": "x"}),
    Case("text-column-missing", T + "no column 'text' (set by task.text_columns / task.label_column); columns "
         "present: 'body', 'label'", files={"data/train.csv": "body,label\na,pos\nb,neg\n"}),
    Case("label-column-missing", T + "no column 'label' (set by task.text_columns / task.label_column); columns "
         "present: 'text', 'y'", files={"data/train.csv": "text,y\na,pos\nb,neg\n"}),
    Case("empty-label-cell", T + "column 'label' has 1 missing label(s) (data rows, 1-based: 3)",
         files={"data/train.csv": GOOD_CSV.replace("sample text number 2,neg", "sample text number 2,")}),
    Case("row-missing-its-label-field", "kdpipe data: error: {root}/data/train.jsonl: column 'label' has 1 missing "
         "label(s) (data rows, 1-based: 2)", {"task": {"files": {"train": "data/train.jsonl"}}},
         files={"data/train.jsonl": '{"text": "a", "label": "pos"}\n{"text": "b"}\n'
                + "".join(f'{{"text": "t{i}", "label": "{"pos" if i % 2 else "neg"}"}}\n' for i in range(12))}),
    Case("bare-carriage-return-in-a-text", T + "column 'label' has 1 missing label(s) (data rows, 1-based: 1)",
         files={"data/train.csv": GOOD_CSV.replace("sample text number 0", "sample\rtext number 0")}),
    Case("empty-text-cell", T + "column 'text' has 1 empty or missing text(s) (data rows, 1-based: 4)",
         files={"data/train.csv": GOOD_CSV.replace("sample text number 3,", ",")}),
    Case("label-outside-the-given-label-set", T + "column 'label' has label(s) outside ['neg', 'pos']: 'meh'",
         {"task": {"labels": ["neg", "pos"]}}, files={"data/train.csv": GOOD_CSV + "one more,meh\n"}),
    Case("rare-derived-class", T + "class 'meh' has 1 example(s); carving a stratified dev and test split needs at "
         "least 3 per class (fix the label, add examples, or give a dev file in task.files.dev)",
         files={"data/train.csv": GOOD_CSV + "one more,meh\n"}),
    Case("one-class-only", T + "column 'label' has 1 distinct label(s) ['pos']; classification needs at least two "
         "(or set task.problem: regression)", files={"data/train.csv": "text,label\na,pos\nb,pos\n"}),
    Case("regression-label-not-numeric", T + "column 'label' must be numeric for regression; 1 value(s) are not: "
         "'high'", {"task": {"problem": "regression"}},
         files={"data/train.csv": "text,label\n" + "".join(f"t{i},{i / 10}\n" for i in range(10)) + "x,high\n"}),
    Case("header-only", T + "no rows", files={"data/train.csv": "text,label\n"}),
    Case("json-not-parsable", 'kdpipe data: error: {root}/data/train.json: cannot read as json: ValueError: Unexpected '
                              "character found when decoding 'null' at position 1", {"task": {"files": {"train": "data/train.json"}}},
         files={"data/train.json": "{not json"}),
    Case("csv-not-utf8", "kdpipe data: error: {root}/data/train.csv line 2: not UTF-8 text (byte 0xe9); save the file as UTF-8",
         files={"data/train.csv": "text,label\ncaf\xe9 noir,pos\n".encode("latin-1")}),
    Case("overlap-drop-leaves-no-train", T + "every train input is also in dev/test (task.overlap: drop)",
         {"task": {"files": {"train": "data/train.csv", "dev": "data/dev.csv"}, "overlap": "drop"}},
         files={"data/dev.csv": GOOD_CSV}),
    Case("a-single-given-label", "kdpipe data: error: task.labels: list at least two distinct class names, got ['pos']", {"task": {"labels": ["pos"]}}),
    Case("too-few-rows-to-split", T + "class 'neg' has 1, 'pos' has 2 example(s); carving a stratified dev and test "
         "split needs at least 3 per class (fix the label, add examples, or give a dev file in task.files.dev)",
         files={"data/train.csv": "text,label\na,pos\nb,neg\nc,pos\n"}),
]
for case in DATA_CASES:
    case.files = {"data/train.csv": GOOD_CSV, **case.files} if case.id != "train-file-missing" else case.files
    # these fail inside the stage's MLflow run: it must end FAILED, not stay RUNNING
    case.params = {**case.params, "tracking": {"enabled": True, "experiment": "corpus"}}
CASES += DATA_CASES

CASES += [
    # ------------------------------------------------------------------ model folders later stages read
    Case("fine-tuned-teacher-config-broken", "kdpipe teacher_outputs: error: {root}/models/teacher: "
         "{root}/models/teacher/config.json is not valid JSON (Expecting value: line 1 column 1 (char 0))",
         stage="teacher_outputs", files={"data/train.csv": GOOD_CSV},
         prepare=lambda root: _saved_model(root, "models/teacher", lambda f: (f / "config.json").write_text(""))),
    Case("student-weights-truncated", "kdpipe export: error: {root}/models/students/kd/seed-1: "
         "{root}/models/students/kd/seed-1/model.safetensors is truncated or corrupted: {size} bytes, its header needs {need}",
         stage="export", argv=["kd", "1"], files={"data/train.csv": GOOD_CSV},
         prepare=lambda root: _saved_model(root, "models/students/kd/seed-1", lambda f: _truncate(f / "model.safetensors"))),
]

E = "kdpipe predict: error: "
CLI_CASES = [
    Case("export-folder-missing", E + "export folder {root}/nope not found", argv=["predict", "{root}/nope", "hi"]),
    Case("model-onnx-corrupted", E + "{export}/model.onnx: onnxruntime cannot load it (InvalidProtobuf: [ONNXRuntimeError] "
         ": 7 : INVALID_PROTOBUF : Load model from {export}/model.onnx failed:Protobuf parsing failed.); re-export the "
         "model (dvc repro export@<run>)", argv=["predict", "{export}", "hi"],
         prepare=lambda root: (root / "export" / "model.onnx").write_bytes(b"\x00garbage")),
    Case("export-meta-corrupted", E + "{export}/kdpipe.json: not valid JSON (line 1, column 2: Expecting property name "
         "enclosed in double quotes); re-export the model (dvc repro export@<run>)", argv=["predict", "{export}", "hi"],
         prepare=lambda root: (root / "export" / "kdpipe.json").write_text("{broken")),
    Case("tokenizer-corrupted", 'kdpipe predict: error: {export}/tokenizer.json: not a readable tokenizer (expected ident '
                                'at line 1 column 2); re-export the model (dvc repro export@<run>)', argv=["predict", "{export}", "hi"],
         prepare=lambda root: (root / "export" / "tokenizer.json").write_text("nope")),
    Case("int8-model-missing", 'kdpipe predict: error: model.int8.onnx not found in export folder {export} '
                               '({export}/model.int8.onnx)', argv=["predict", "{export}", "--int8", "hi"],
         prepare=lambda root: (root / "export" / "model.int8.onnx").unlink()),
    Case("threads-too-many", "kdpipe predict: error: argument --threads: --threads must be between 1 and {cores}, "
         "got 100000", argv=["predict", "{export}", "hi", "--threads", "100000"]),
    Case("threads-negative", "kdpipe predict: error: argument --threads: --threads must be between 1 and {cores}, "
         "got -3", argv=["predict", "{export}", "hi", "--threads", "-3"]),
    Case("threads-not-a-number", "kdpipe predict: error: argument --threads: --threads takes a whole number, got 'many'",
         argv=["predict", "{export}", "hi", "--threads", "many"]),
    Case("batch-size-zero", "kdpipe predict: error: argument --batch-size: --batch-size must be between 1 and 4096, "
         "got 0", argv=["predict", "{export}", "hi", "--batch-size", "0"]),
    Case("file-not-utf8", E + "{root}/texts.txt line 2: not UTF-8 text (byte 0xe9); save the file as UTF-8",
         argv=["predict", "{export}", "--file", "{root}/texts.txt"], files={"texts.txt": b"fine\ncaf\xe9\n"}),
    Case("tsv-with-three-columns", E + "{root}/texts.txt line 2: 3 TAB-separated columns; give one text per line, or "
         "text<TAB>pair", argv=["predict", "{export}", "--file", "{root}/texts.txt"], files={"texts.txt": "a\nb\tc\td\n"}),
    Case("tsv-with-mixed-widths", E + "{root}/texts.txt line 2: 2 column(s) but line 1 has 1; give one text per line, "
         "or text<TAB>pair on every line", argv=["predict", "{export}", "--file", "{root}/texts.txt"],
         files={"texts.txt": "a\nb\tc\n"}),
    Case("empty-text", E + "TEXT 2: the text is empty", argv=["predict", "{export}", "fine", "  "]),
    Case("pair-for-a-single-text-model", E + "{root}/texts.txt line 1: got a sentence pair (TAB-separated or --pair), "
         "but custom takes single texts", argv=["predict", "{export}", "--file", "{root}/texts.txt"],
         files={"texts.txt": "a\tb\n"}),
    Case("pair-count-mismatch", E + "got 2 TEXT but 1 --pair texts", argv=["predict", "{export}", "a", "b", "--pair", "c"]),
    Case("texts-and-file", E + "give texts as arguments or with --file, not both",
         argv=["predict", "{export}", "a", "--file", "{root}/texts.txt"], files={"texts.txt": "a\n"}),
    Case("file-missing", E + "--file {root}/none.txt not found", argv=["predict", "{export}", "--file", "{root}/none.txt"]),
    Case("file-without-texts", E + "no texts in {root}/texts.txt", argv=["predict", "{export}", "--file",
         "{root}/texts.txt"], files={"texts.txt": "\n  \n"}),
    Case("ui-port-out-of-range", "kdpipe ui: error: argument --port: --port must be between 1 and 65535, got 70000",
         argv=["ui", "--port", "70000"]),
    Case("compare-without-metrics", "kdpipe compare: error: {root}/metrics/evaluate.json not found: run the pipeline "
         "first (dvc repro)", argv=["compare", "--metrics-dir", "{root}/metrics"]),
]
for case in CLI_CASES:
    case.stage = "cli"
CASES += CLI_CASES


def _merge(base: dict, override: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in override.items():
        if value is DELETE:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict) and key not in ("runs", "files"):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


@pytest.fixture(scope="module")
def export_template(tmp_path_factory, tokenizer):
    """A tiny, valid export folder (a random 2-layer BERT, MiniLM's tokenizer)."""
    import torch

    from kdpipe.data.tasks import TaskSpec
    from kdpipe.export.convert import export_onnx, quantize_int8
    from kdpipe.export.runtime import EXPORT_META_FILE, ExportMeta
    from kdpipe.files import write_json

    folder = tmp_path_factory.mktemp("export")
    sample = tokenizer(["hello there"], return_tensors="pt")
    names = export_onnx(tiny_bert(num_labels=2, layers=2), {k: v for k, v in sample.items()}, folder / "model.onnx")
    quantize_int8(folder / "model.onnx", folder / "model.int8.onnx")
    tokenizer.save_pretrained(folder)
    spec = TaskSpec("custom", "classification", ("neg", "pos"), 1, ("accuracy",), "accuracy")
    write_json(folder / EXPORT_META_FILE, ExportMeta(["neg", "pos"], "classification", 32, names,
                                                     spec.to_dict()).to_json())
    del torch
    return folder


def _outputs(root: Path) -> set[str]:
    found = set()
    for folder in ("data", "models", "metrics", "exports", "plots", "checkpoints"):
        found |= {str(p.relative_to(root)) for p in (root / folder).rglob("*")} if (root / folder).exists() else set()
    return found


def _runs(root: Path) -> list[tuple[str, str]]:
    """(run id, status) of every run in the project's store."""
    db = root / "mlflow.db"
    if not db.exists() or db.read_bytes()[:15] != b"SQLite format 3":
        return []
    import sqlite3
    with sqlite3.connect(db) as conn:
        return list(conn.execute("SELECT run_uuid, status FROM runs"))


def _running_runs(root: Path) -> list[str]:
    return [run for run, status in _runs(root) if status == "RUNNING"]


def run_case(case: Case, root: Path, export_template: Path, capsys, monkeypatch) -> tuple[str, str]:
    root.mkdir(parents=True)
    for item in ("dvc.yaml", "stages"):
        src = REPO / item
        shutil.copytree(src, root / item) if src.is_dir() else shutil.copy(src, root / item)
    if case.raw_params is not None:
        (root / "params.yaml").write_text(case.raw_params)
    else:
        (root / "params.yaml").write_text(yaml.safe_dump(_merge(BASE, case.params)))
    for name, content in case.files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content) if isinstance(content, bytes) else path.write_text(content)
    if case.stage == "cli":
        shutil.copytree(export_template, root / "export")
    if case.prepare:
        case.prepare(root)
    before = _outputs(root)
    monkeypatch.chdir(root)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("DVC_ROOT", raising=False)
    capsys.readouterr()
    fill = {"root": str(root), "export": str(root / "export")}
    if case.stage == "cli":
        from kdpipe.cli import main
        code = main([a.format(**fill) for a in case.argv])
    else:
        monkeypatch.setattr(sys, "argv", [f"stages/{case.stage}.py", *case.argv])
        with pytest.raises(SystemExit) as exit_info:
            runpy.run_path(str(root / "stages" / f"{case.stage}.py"), run_name="__main__")
        code = exit_info.value.code
    err = capsys.readouterr().err
    assert code in (1, 2), f"exit code {code}; stderr:\n{err}"
    assert "Traceback" not in err, err
    left = _outputs(root) - before
    assert not left, f"left behind: {sorted(left)}"
    assert not list(root.rglob(".*.tmp-*")), "a temporary sibling was left behind"
    assert not _running_runs(root), "an MLflow run was left RUNNING"
    if case.params.get("tracking", {}).get("enabled") and case.id != "tracking-store-corrupted":
        assert _runs(root) and {status for _, status in _runs(root)} == {"FAILED"}, _runs(root)
    lines = [line for line in err.splitlines() if line.startswith("kdpipe ") and ": error: " in line]
    assert lines, f"no error line; stderr:\n{err}"
    return lines[0], err


def _expected(case: Case, root: Path) -> str:
    import os
    fill = {"root": str(root), "export": str(root / "export"), "cores": str(os.cpu_count())}
    text = case.expected
    for key, value in fill.items():
        text = text.replace("{" + key + "}", value)
    return text


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_gets_one_clear_line_and_leaves_nothing_behind(case, tmp_path, export_template, capsys, monkeypatch):
    line, err = run_case(case, tmp_path / "project", export_template, capsys, monkeypatch)
    expected = _expected(case, tmp_path / "project")
    if "{" in expected:  # sizes computed from the broken file: compare the fixed parts
        import re
        pattern = re.escape(expected).replace(r"\{size\}", r"\d+").replace(r"\{need\}", r"\d+").replace(r"\{n\}", r"\d+")
        assert re.fullmatch(pattern, line), f"\n got: {line}\nwant: {expected}"
    else:
        assert line == expected, f"\n got: {line}\nwant: {expected}"


def test_the_corpus_is_large_and_covers_every_kind():
    kinds = {c.stage for c in CASES}
    assert len(CASES) >= 60 and {"data", "teacher_outputs", "export", "cli"} <= kinds
    assert len({c.id for c in CASES}) == len(CASES)
