"""SQuAD v1.1 extractive QA through the whole ``dvc repro`` chain on a tiny slice of the real
files with the real MiniLM: teacher -> vanilla KD and three intermediate-layer methods (TinyBERT,
RAIL-KD, CR-ILD) -> evaluate -> export -> ``kdpipe predict --question/--context``, each stage a
child MLflow run."""

from __future__ import annotations

import json

import pytest

from conftest import REPO
from test_e2e import child_run_names, dvc, make_project, readme_commands, sh, tiny_params

pytestmark = pytest.mark.e2e

SQUAD = REPO.parent / "shared" / "data" / "squad"
RUNS = {"vanilla_kd": {"method": "vanilla_kd"},
        "tinybert": {"method": "tinybert", "phases": {"ild": {"epochs": 1}, "pred": {"epochs": 1}}},
        "rail_kd_l": {"method": "rail_kd_l"},
        "cr_ild": {"method": "cr_ild", "phases": {"ild": {"epochs": 1}, "pred": {"epochs": 1}}}}
CONTEXT = ("Super Bowl 50 was an American football game. The Denver Broncos defeated the Carolina "
           "Panthers 24-10 at Levi's Stadium in Santa Clara, California.")


@pytest.fixture(scope="module")
def qa_project(tmp_path_factory, minilm_path):
    if not (SQUAD / "dev-v1.1.json").exists():
        pytest.skip(f"SQuAD files not found in {SQUAD}")
    params = tiny_params(SQUAD, "mrpc", RUNS)
    # 128-token windows with a 32-token stride: most contexts need two or more windows
    params["max_length"] = 128
    params["task"] = {"name": "squad", "squad_dir": str(SQUAD), "max_train_examples": 48, "max_eval_examples": 32,
                      "doc_stride": 32}
    params["student"]["num_layers"] = 3
    root = make_project(tmp_path_factory.mktemp("qa"), params)
    return root, dvc("repro", root=root)


def test_every_stage_runs_for_extractive_qa(qa_project):
    root, out = qa_project
    for run in RUNS:
        assert f"'distill@{run}'" in out and f"'export@{run}'" in out, run
    report = json.loads((root / "metrics/evaluate.json").read_text())
    assert report["main_metric"] == "f1" and set(report["students"]) == set(RUNS)
    assert report["dev_examples"] == 32  # scored per question, not per window
    for name, r in [("teacher", report["teacher"]), *report["students"].items()]:
        assert 0 <= r["dev"]["exact_match"] <= r["dev"]["f1"] <= 1, name
        assert r["dev_interval"]["low"] <= r["dev"]["f1"] <= r["dev_interval"]["high"], name
    for run in [*RUNS, "teacher"]:  # each export: parity on start/end logits, the int8 gate per question
        exported = json.loads((root / f"metrics/export/{run}.json").read_text())
        assert exported["parity"]["max_abs_diff"] < 1e-4, run
        assert exported["int8_gate"]["agreement_kind"] == "answer_f1" and exported["int8_gate"]["examples"] == 32
    # the ONNX answers (torch-free windows, spans, merging) score what PyTorch scored
    teacher_export = json.loads((root / "metrics/export/teacher.json").read_text())
    assert teacher_export["fp32"]["dev"]["f1"] == pytest.approx(report["teacher"]["dev"]["f1"], abs=1e-6)
    assert "f1" in (root / "reports/report.md").read_text()
    cache = json.loads((root / "data/teacher_outputs/meta.json").read_text())
    assert cache["per_position"] and cache["examples"] > 48  # one row per window
    signals = {run: json.loads((root / f"metrics/distill/{run}/seed-1.json").read_text())["teacher_signal"]
               for run in RUNS}
    assert signals["vanilla_kd"] == signals["rail_kd_l"] == {"main": "cache"}
    assert signals["tinybert"] == {"ild": "live", "pred": "cache"}
    predictions = __import__("pandas").read_parquet(root / "predictions/teacher.parquet")
    assert len(predictions) == 32 and {"id", "label", "prediction"} <= set(predictions.columns)


def test_the_export_answers_torch_free(qa_project):
    root, _ = qa_project
    shown = sh(["kdpipe", "predict", "exports/vanilla_kd", "--question", "Who won Super Bowl 50?",
                "--context", CONTEXT, "--json", "--int8"], root)
    record = json.loads(next(line for line in shown.splitlines() if line.startswith("{")))
    assert CONTEXT[record["start"]:record["end"]] == record["answer"] and record["answer"]
    (root / "questions.jsonl").write_text("".join(json.dumps({"question": q, "context": CONTEXT}) + "\n"
                                                  for q in ("Who lost?", "Where was it played?")))
    shown = sh(["bash", "-c", "kdpipe predict exports/tinybert < questions.jsonl"], root)
    assert [line.split("\t")[-1] for line in shown.strip().splitlines()[-2:]] == ["Who lost?", "Where was it played?"]
    readme = [c for _, c in readme_commands() if c.startswith("kdpipe predict exports/tinybert --question")]
    assert readme, "the README's QA predict line"
    for command in readme:  # as written
        shown = sh(["bash", "-c", command], root)
        assert json.loads(next(line for line in shown.splitlines() if line.startswith("{")))["answer"]


def test_each_stage_and_method_is_a_child_mlflow_run(qa_project):
    root, _ = qa_project
    names = child_run_names(root)
    assert {"teacher", "evaluate", *(f"distill/{r}/seed-1" for r in RUNS), *(f"export/{r}" for r in RUNS)} <= names
