"""CoNLL-2003 NER through the whole ``dvc repro`` chain on a tiny slice of the real files with
the real MiniLM: teacher -> vanilla KD and three intermediate-layer methods (TinyBERT,
RAIL-KD, CR-ILD) -> evaluate -> export -> ``kdpipe predict``, each stage a child MLflow run."""

from __future__ import annotations

import json

import pytest

from conftest import REPO
from test_e2e import child_run_names, dvc, make_project, readme_commands, sh, tiny_params

pytestmark = pytest.mark.e2e

CONLL = REPO.parent / "shared" / "data" / "conll2003"
RUNS = {"vanilla_kd": {"method": "vanilla_kd"},
        "tinybert": {"method": "tinybert", "phases": {"ild": {"epochs": 1}, "pred": {"epochs": 1}}},
        "rail_kd_l": {"method": "rail_kd_l"},
        "cr_ild": {"method": "cr_ild", "phases": {"ild": {"epochs": 1}, "pred": {"epochs": 1}}}}


@pytest.fixture(scope="module")
def ner_project(tmp_path_factory, minilm_path):
    if not (CONLL / "eng.train").exists():
        pytest.skip(f"CoNLL-2003 files not found in {CONLL}")
    params = tiny_params(CONLL, "mrpc", RUNS)
    params["task"] = {"name": "conll2003", "conll_dir": str(CONLL), "max_train_examples": 64, "max_eval_examples": 32}
    params["student"]["num_layers"] = 3
    root = make_project(tmp_path_factory.mktemp("ner"), params)
    return root, dvc("repro", root=root)


def test_every_stage_runs_for_a_tagging_task(ner_project):
    root, out = ner_project
    for run in RUNS:
        assert f"'distill@{run}'" in out and f"'export@{run}'" in out, run
    report = json.loads((root / "metrics/evaluate.json").read_text())
    assert report["main_metric"] == "entity_f1" and set(report["students"]) == set(RUNS)
    for run, r in report["students"].items():
        assert 0 <= r["dev"]["entity_f1"] <= 1, run
    for run in [*RUNS, "teacher"]:  # each export: parity on token logits, the int8 gate counted per word
        exported = json.loads((root / f"metrics/export/{run}.json").read_text())
        assert exported["parity"]["max_abs_diff"] < 1e-4, run
    assert (root / "reports/report.md").read_text().count("entity_f1") >= 1
    # the teacher cache holds per-word logits; the methods that can read it do
    assert json.loads((root / "data/teacher_outputs/meta.json").read_text())["per_word"]
    signals = {run: json.loads((root / f"metrics/distill/{run}/seed-1.json").read_text())["teacher_signal"]
               for run in RUNS}
    assert signals["vanilla_kd"] == signals["rail_kd_l"] == {"main": "cache"}
    assert signals["tinybert"] == {"ild": "live", "pred": "cache"}


def test_the_export_tags_raw_text_torch_free(ner_project):
    root, _ = ner_project
    text = "Peter Blackburn flew to Germany ."
    shown = sh(["kdpipe", "predict", "exports/vanilla_kd", text, "--json", "--int8"], root)
    record = json.loads(next(line for line in shown.splitlines() if line.startswith("{")))
    assert record["tokens"] == text.split() and len(record["tags"]) == 6
    assert all(text[e["start"]:e["end"]] == e["text"] for e in record["entities"])
    readme = [c for _, c in readme_commands() if c.startswith("kdpipe predict exports/tinybert") and "--question" not in c]
    assert readme, "the README's NER predict line"
    for command in readme:  # as written
        shown = sh(["bash", "-c", command], root)
        record = json.loads(next(line for line in shown.splitlines() if line.startswith("{")))
        assert record["tokens"][:2] == ["Peter", "Blackburn"] and record["tokens"][-1] == "."


def test_each_stage_and_method_is_a_child_mlflow_run(ner_project):
    root, _ = ner_project
    names = child_run_names(root)
    assert {"teacher", "evaluate", *(f"distill/{r}/seed-1" for r in RUNS), *(f"export/{r}" for r in RUNS)} <= names
