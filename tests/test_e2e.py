"""End to end with the real MiniLM and real GLUE files.

1. ``dvc repro`` in a temporary copy of the repo on the default task and run names at a tiny size:
   artifacts, metrics, MLflow runs, ONNX parity, a no-op re-run, ``kdpipe predict`` on the exported
   student, and every command of the README's bash blocks as written (``dvc exp run -S`` among
   them, which leaves the teacher alone).
2. STS-B regression through the Python API alone (no DVC).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import REPO

pytestmark = pytest.mark.e2e


def tiny_params(glue_dir: Path, task: str, runs: dict) -> dict:
    return {
        "seed": 1,
        "max_length": 64,
        "task": {"name": task, "glue_dir": str(glue_dir), "max_train_examples": 64, "max_eval_examples": 48},
        "teacher": {"model": "minilm", "train": {"epochs": 1, "batch_size": 16, "eval_batch_size": 48}},
        "student": {"num_layers": 2, "layers": "uniform"},
        # DVC needs every params section a stage lists, even where no run uses PTP
        "ptp": {"train": {"epochs": 1, "batch_size": 16, "eval_batch_size": 48, "select_by": "loss"}},
        "distill": {"train": {"epochs": 1, "batch_size": 16, "eval_batch_size": 48, "lr": 1e-4}, "runs": runs,
                    "seeds": [1], "teacher_cache": {"enabled": True}},
        "evaluate": {"latency_batch_sizes": [1, 4], "latency_warmup": 1, "latency_repeats": 2},
        # 48 dev examples: one flipped prediction moves accuracy by 2 points; the gate itself is unit-tested
        "export": {"parity_batches": 2, "int8_max_drop": 1.0, "int8_min_agreement": 0.0, "int8_min_answer_f1": 0.0},
        "tracking": {"experiment": "e2e"},
    }


def _env(root: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_TRACKING", "DVC_", "KDPIPE_"))}
    # the stage commands say `python`: make it this interpreter, as an activated venv would
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.update(GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t", GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@t",
               DVC_NO_ANALYTICS="1", MLFLOW_DISABLE_TELEMETRY="true")
    return env


def sh(args: list[str], root: Path, timeout: int = 900) -> str:
    proc = subprocess.run(args, cwd=root, env=_env(root), capture_output=True, text=True, timeout=timeout)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{' '.join(args)} failed:\n{out[-6000:]}"
    return out


def dvc(*args: str, root: Path) -> str:
    return sh([sys.executable, "-m", "dvc", *args], root)


def child_run_names(root: Path, experiment: str = "e2e") -> set[str]:
    """The run names under the project's pipeline (parent) MLflow run."""
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    exp = client.get_experiment_by_name(experiment)
    parent = client.search_runs([exp.experiment_id], filter_string="tags.`kdpipe.kind` = 'pipeline'")[0]
    return {c.info.run_name for c in client.search_runs(
        [exp.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'")}


def make_project(root: Path, params: dict) -> Path:
    """A git + DVC project in ``root``: this repo's pipeline and package, and ``params``."""
    for item in ("dvc.yaml", "stages", ".dvc/config", ".gitignore"):
        src = REPO / item
        dst = root / item
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__")) if src.is_dir() \
            else shutil.copy(src, dst)
    # The stages' code deps (kdpipe/*.py) are part of the pipeline: copy the package too.
    shutil.copytree(REPO / "kdpipe", root / "kdpipe", ignore=shutil.ignore_patterns("__pycache__"))
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    sh(["git", "init", "-q"], root)
    sh(["git", "add", "-A"], root)
    sh(["git", "commit", "-qm", "init"], root)
    return root


@pytest.fixture(scope="module")
def project(tmp_path_factory, glue_dir, minilm_path) -> Path:
    # the default's task and run names at a tiny size, so the README's commands run as written
    # (DVC's -S can only change a key params.yaml has: temperature is written out, as in the default)
    runs = {"finetune": {"method": "finetune"}, "vanilla_kd": {"method": "vanilla_kd", "temperature": 4.0, "alpha": 0.5}}
    params = tiny_params(glue_dir, "rte", runs)
    params["task"] = {"name": "tweets", "max_train_examples": 64, "max_eval_examples": 48}
    params["distill"]["seeds"] = [42, 43]  # the default's: means, spreads, pooled comparisons, ASO
    root = make_project(tmp_path_factory.mktemp("project"), params)
    out = dvc("repro", root=root)
    return root, out


def test_repro_builds_every_artifact(project):
    root, out = project
    for stage in ("data", "teacher", "teacher_outputs", "distill@finetune",
                  "distill@vanilla_kd", "evaluate", "export@finetune", "export@vanilla_kd", "export_teacher", "summary"):
        assert f"'{stage}'" in out, stage
    assert (root / "models/teacher/model.safetensors").exists()
    for run in ("finetune", "vanilla_kd"):
        weights = [(root / f"models/students/{run}/seed-{seed}/model.safetensors").read_bytes() for seed in (42, 43)]
        assert weights[0] != weights[1], f"{run}: its two seeds trained the same student"
        assert {"model.onnx", "model.int8.onnx", "tokenizer.json", "kdpipe.json"} <= \
            {p.name for p in (root / f"exports/{run}").iterdir()}
    assert not list(root.glob("**/.*.tmp-*")), "half-written artifacts left behind"


def test_metrics_compare_teacher_and_students(project):
    root, _ = project
    report = json.loads((root / "metrics/evaluate.json").read_text())
    assert report["main_metric"] == "accuracy"
    assert set(report["students"]) == {"finetune", "vanilla_kd"}
    teacher, kd = report["teacher"], report["students"]["vanilla_kd"]
    assert 0 <= kd["dev"]["accuracy"] <= 1 and teacher["layers"] == 6 and kd["layers"] == 2
    assert kd["parameters"] < teacher["parameters"]
    assert set(kd["latency_ms"]) == {"batch_1", "batch_4"}
    assert kd["retention_pct"]["dev"] == pytest.approx(100 * kd["dev"]["accuracy"] / teacher["dev"]["accuracy"],
                                                       abs=0.01)
    # the compact summary is the only DVC metrics file: one row per number, one column per model
    shown, _ = json.JSONDecoder().raw_decode(dvc("metrics", "show", "--json", root=root))  # stderr may follow
    files = next(iter(shown.values()))["data"]
    assert set(files) == {f"metrics/summary/{n}.json" for n in ("dev", "dev_std", "retention", "int8", "int8_ms",
                                                                "int8_mb")}
    assert files["metrics/summary/dev.json"]["data"] == {"teacher": round(teacher["dev"]["accuracy"], 4),
                                                         **{r: round(report["students"][r]["dev"]["accuracy"], 4)
                                                            for r in ("finetune", "vanilla_kd")}}
    table = dvc("exp", "show", "--md", "--drop", ".*", "--keep", "Experiment|metrics/summary/dev.json", root=root)
    header = [cell.strip() for cell in table.splitlines()[0].strip().strip("|").split("|")]
    assert header[0] == "Experiment"  # the README's "which method won" filter: nothing else
    assert set(header[1:]) == {f"metrics/summary/dev.json:{m}" for m in ("teacher", "finetune", "vanilla_kd")}
    # the run's score is the mean over its seeds, with their spread; the first seed is the one exported
    per_seed = [kd["per_seed"][s]["dev"]["accuracy"] for s in ("42", "43")]
    assert kd["seeds"] == [42, 43] and kd["dev"]["accuracy"] == pytest.approx(sum(per_seed) / 2)
    assert kd["dev_std"]["accuracy"] == pytest.approx(abs(per_seed[0] - per_seed[1]) / 2 ** 0.5)
    export = json.loads((root / "metrics/export/vanilla_kd.json").read_text())
    assert export["parity"]["max_abs_diff"] <= 1e-4
    assert export["fp32"]["dev"]["accuracy"] == pytest.approx(per_seed[0], abs=1 / 48 + 1e-9)
    assert (root / "plots/train/vanilla_kd/seed-43.csv").exists() and (root / "plots/dev/teacher.csv").exists()


def test_the_report_answers_with_intervals_verdicts_and_per_example_predictions(project):
    import pandas as pd

    root, _ = project
    report = json.loads((root / "metrics/evaluate.json").read_text())
    targets = report["comparisons"]
    assert targets["finetune"] == "finetune" and targets["vanilla_kd"] == "vanilla_kd"
    assert targets["best"] == max(report["students"], key=lambda r: report["students"][r]["dev"]["accuracy"])
    kd = report["students"]["vanilla_kd"]
    assert kd["dev_interval"]["low"] <= kd["dev"]["accuracy"] <= kd["dev_interval"]["high"]
    assert kd["versus"]["finetune"]["verdict"] in {"better", "worse", "no detectable difference"}
    assert "vanilla_kd" not in kd["versus"]  # never compared with itself
    # two seeds each: the pooled bootstrap decides; Almost Stochastic Order waits for three (unit-tested)
    assert "aso" not in kd["versus"]["finetune"]
    # per-example predictions recompute the reported numbers without the models
    frame = pd.read_parquet(root / "predictions/vanilla_kd/seed-43.parquet")
    dev = frame[frame.split == "dev"]
    assert len(dev) == 48 and set(frame.split) == {"dev", "test"}
    assert (dev.prediction == dev.label).mean() == pytest.approx(kd["per_seed"]["43"]["dev"]["accuracy"])
    assert {str(p.relative_to(root / "predictions")) for p in (root / "predictions").rglob("*.parquet")} == \
        {"teacher.parquet", *(f"{r}/seed-{s}.parquet" for r in ("finetune", "vanilla_kd") for s in (42, 43))}
    training = json.loads((root / "metrics/distill/vanilla_kd/seed-42.json").read_text())
    assert training["train_seconds"] > 0 and training["total_steps"] == training["steps"]
    md = (root / "reports/report.md").read_text()
    assert md.startswith("# Distillation report: tweets") and "vs finetune" in md and "## Limits" in md
    assert "(n=2)" in md and "2 seed(s) per run" in md
    assert "![Dev score vs the shipped model's latency](tradeoff.png)" in md and (root / "reports/tradeoff.png").is_file()
    page = (root / "reports/report.html").read_text()
    assert "data:image/png;base64," in page  # renders offline: no external resource, no script
    # model cards: each folder's from its own stage's numbers, the complete one after evaluate
    card = (root / "exports/vanilla_kd/README.md").read_text()
    front = yaml.safe_load(card.split("---\n")[1])
    assert front["model-index"][0]["results"][0]["metrics"][0]["value"] == pytest.approx(kd["dev"]["accuracy"], abs=1e-4)
    assert "(n=2) over seeds 42, 43" in card and "Ships `model.int8.onnx`" in card
    assert "evidence only" in (root / "models/students/vanilla_kd/seed-43/README.md").read_text()
    full = (root / "reports/cards/vanilla_kd/README.md").read_text()
    assert f"**{kd['versus']['finetune']['verdict']}**" in full
    # the teacher is measured as ONNX int8 too, by the students' protocol: its row has the same columns
    teacher_export = json.loads((root / "metrics/export/teacher.json").read_text())
    teacher_row = next(line for line in md.splitlines() if line.startswith("| teacher"))
    assert f"{teacher_export['int8']['latency_ms']['batch_1']:.2f}" in teacher_row
    assert "exported like every student" in (root / "exports/teacher/README.md").read_text()
    assert not re.search(r"(src|href)=['\"]?https?:|<script|<link", page)


def test_mlflow_has_one_parent_with_a_child_per_stage_and_method(project):
    import mlflow

    root, _ = project
    client = mlflow.MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    exp = client.get_experiment_by_name("e2e")
    runs = client.search_runs([exp.experiment_id], filter_string="tags.`kdpipe.kind` = 'pipeline'")
    assert len(runs) >= 1
    first = min(runs, key=lambda r: r.info.start_time)
    children = client.search_runs([exp.experiment_id],
                                  filter_string=f"tags.mlflow.parentRunId = '{first.info.run_id}'")
    names = {c.info.run_name for c in children}
    assert {"data", "teacher", "distill/finetune/seed-42", "distill/vanilla_kd/seed-42", "distill/vanilla_kd/seed-43",
            "evaluate", "export/finetune", "export/vanilla_kd"} <= names
    kd = next(c for c in children if c.info.run_name == "distill/vanilla_kd/seed-43")
    assert kd.data.tags["kdpipe.seed"] == "43" and kd.data.params["student_seed"] == "43"
    assert kd.data.tags["kdpipe.method"] == "vanilla_kd"
    assert kd.data.tags.get("mlflow.source.git.commit")
    assert "run.temperature" in kd.data.params
    assert client.get_metric_history(kd.info.run_id, "train.loss") or client.get_metric_history(
        kd.info.run_id, "train/loss")
    export = next(c for c in children if c.info.run_name == "export/vanilla_kd")
    artifacts = {a.path for a in client.list_artifacts(export.info.run_id)}
    assert any("export" in a or a.endswith(".json") for a in artifacts)


def test_noop_repro_runs_only_the_input_hashing(project):
    root, _ = project
    # only `inputs` runs (it hashes the files params.yaml names, on every repro)
    assert re.findall(r"Running stage '([^']+)'", dvc("repro", root=root)) == ["inputs"]


def test_a_distill_stage_run_again_keeps_its_unchanged_seeds_and_drops_unlisted_ones(project):
    root, _ = project
    weights = sorted((root / "models/students/finetune").glob("seed-*/model.safetensors"))
    before = [w.stat().st_mtime_ns for w in weights]
    stale = root / "models/students/finetune/seed-7"  # a seed no longer in distill.seeds
    shutil.copytree(weights[0].parent, stale)
    out = sh([sys.executable, "stages/distill.py", "finetune"], root)
    assert out.count("kept (nothing it depends on changed since it was trained)") == len(weights) == 2
    assert [w.stat().st_mtime_ns for w in weights] == before and not stale.exists()
    assert "removed the students of seeds [7]" in out
    assert re.findall(r"Running stage '([^']+)'", dvc("repro", root=root)) == ["inputs"]  # nothing DVC sees changed


# ------------------------------------------------------------------------------ README commands
# Every command line of the README's bash blocks runs here, as written, in order, against the tiny
# project (the default's task and run names), except those below, each with why and where else it
# is exercised.  A new README command fails test_every_readme_command_is_run_or_excused until it
# is one or the other.
NOT_RUN_HERE = {
    "bash .ci/install": "the install: CI runs exactly this line (.ci/run) on a clean clone",
    ".venv/bin/python -m pytest": "the test suite itself: CI runs exactly this line",
    "kdpipe ui": "a server that runs until stopped: tests/test_cli.py starts it and stops it with SIGTERM",
    "cp suites/": "a suite: hours of training; tests/test_config.py validates every suite's params",
    "for t in cola mrpc rte stsb": "the GLUE suite's queue (as above)",
    "git checkout params.yaml && OMP_NUM_THREADS=1 dvc queue start": "the GLUE suite's queue (as above)",
    "printf 'A man plays.": "needs a sentence-pair export; test_runtime.py and test_cli.py predict pairs",
    "kdpipe predict exports/tinybert": "a tagging or QA export: tests/test_e2e_tagging.py and test_e2e_qa.py "
                                       "run these lines as written in their CoNLL-2003 and SQuAD projects",
    "kdpipe compare --metrics-dir benchmarks/results/": "a measured suite's committed metrics: "
                                                        "tests/test_readme_results.py checks the output is the README's",
    "torchrun": "multi-process training: test_two_processes_train_one_teacher runs it on 2 CPU processes",
}


def readme_commands() -> list[tuple[int, str]]:
    """(line number, command) for each line of the README's ```bash blocks, comments stripped."""
    out, in_bash = [], False
    for number, line in enumerate((REPO / "README.md").read_text().splitlines(), 1):
        if line.strip().startswith("```"):
            in_bash = not in_bash and line.strip() == "```bash"
            continue
        command = re.sub(r"\s+#\s.*$", "", line).strip()
        if in_bash and command:
            out.append((number, command))
    return out


def _excused(command: str) -> str | None:
    return next((why for start, why in NOT_RUN_HERE.items() if command.startswith(start)), None)


def test_every_readme_command_is_run_or_excused():
    commands = readme_commands()
    assert len(commands) >= 10
    assert [c for _, c in commands if _excused(c)], "the excuses match nothing: stale NOT_RUN_HERE"
    unused = [start for start in NOT_RUN_HERE if not any(c.startswith(start) for _, c in commands)]
    assert not unused, f"NOT_RUN_HERE entries no README command starts with: {unused}"


def test_readme_commands_run_as_written(project):
    root, _ = project
    sh(["git", "add", "-A"], root)
    sh(["git", "commit", "-qm", "after repro"], root)
    outputs = {}
    for number, command in readme_commands():
        if _excused(command):
            continue
        out = sh(["bash", "-c", command], root)
        outputs[command] = out
        print(f"README.md:{number}: {command}\n{out[-400:]}")
    by_start = lambda start: next(o for c, o in outputs.items() if c.startswith(start))  # noqa: E731
    assert "| vanilla_kd" in by_start("kdpipe compare")
    assert "metrics/summary/dev.json" in by_start("dvc metrics show")
    assert json.loads(by_start("kdpipe predict exports/vanilla_kd --int8 --json").strip().splitlines()[-1])[
        "label"] in {"negative", "neutral", "positive"}
    # the experiment re-runs only that student (and what reads it), never the teacher
    ran = set(re.findall(r"Running stage '([^']+)'", by_start("dvc exp run -S distill.runs.vanilla_kd")))
    assert {"distill@vanilla_kd", "export@vanilla_kd", "evaluate", "summary"} <= ran
    assert not ran & {"teacher", "distill@finetune", "data"}
    # `dvc exp show` draws for a terminal (a pipe gets 80 columns of "…"): it ran without error
    # above, and the columns its filter keeps are checked through --md in test_metrics_compare_...


def test_predict_cli_uses_the_exported_student(project):
    root, _ = project
    out = sh([sys.executable, "-m", "kdpipe.cli", "predict", str(root / "exports/vanilla_kd"),
              "what a great phone", "--json"], root)
    result = json.loads(out.strip().splitlines()[-1])
    assert result["label"] in {"negative", "neutral", "positive"}
    table = sh([sys.executable, "-m", "kdpipe.cli", "compare", "--metrics-dir", str(root / "metrics")], root)
    lines = [line for line in table.splitlines() if line.startswith("| ")]
    assert [line.split(" | ")[0] for line in lines] == ["| model", "| teacher", "| finetune", "| vanilla_kd"]


def test_stsb_regression_through_the_python_api(tmp_path, glue_dir, minilm_path):
    from kdpipe.config import parse_params
    from kdpipe.pipeline.data import prepare_data
    from kdpipe.pipeline.distill import distill
    from kdpipe.pipeline.evaluate import evaluate_models
    from kdpipe.pipeline.export import export_student
    from kdpipe.pipeline.teacher import train_teacher

    raw = tiny_params(glue_dir, "stsb", {"kd": {"method": "vanilla_kd"}})
    raw["export"]["int8_max_drop"] = 1.0
    params = parse_params(raw)
    prepare_data(params, tmp_path, tmp_path / "data")
    teacher = train_teacher(params, tmp_path / "data", tmp_path / "teacher", tmp_path / "ck/t", tmp_path / "plots")
    assert set(teacher["best_dev"]) >= {"pearson", "spearman", "loss"}
    distill(params, "kd", tmp_path / "data", tmp_path / "teacher", tmp_path / "students/kd/seed-1",
            tmp_path / "ck/kd", tmp_path / "plots", seed=1)
    report = evaluate_models(params, tmp_path / "data", tmp_path / "teacher", tmp_path / "students")
    assert report["main_metric"] == "pearson" and "spearman" in report["students"]["kd"]["dev"]
    export = export_student(params, tmp_path / "students/kd/seed-1", tmp_path / "data", tmp_path / "export")
    assert export["parity"]["max_abs_diff"] <= 1e-4
    from kdpipe.evaluation.table import comparison_table
    table = comparison_table(report, {"kd": export}).splitlines()
    assert [row.split(" | ")[0] for row in table[2:]] == ["| teacher", "| kd"] and "int8 dev pearson" in table[0]
    assert export["fp32"]["dev"]["pearson"] == pytest.approx(report["students"]["kd"]["dev"]["pearson"], abs=1e-3)


@pytest.mark.heavy  # pytest -m heavy
def test_two_processes_train_one_teacher(project, tmp_path):
    """`torchrun --nproc_per_node 2` (gloo on CPU): batches are sharded, dev metrics gathered over
    the whole split, and rank 0 alone writes the model, the metrics and the MLflow run."""
    root, _ = project
    for item in ("stages", "dvc.yaml", "params.yaml", "data"):
        src = root / item
        shutil.copytree(src, tmp_path / item) if src.is_dir() else shutil.copy(src, tmp_path / item)
    sh([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "stages/teacher.py"], tmp_path)
    summary = json.loads((tmp_path / "metrics/teacher.json").read_text())
    assert summary["steps"] == 2  # 64 examples / (16 per process x 2 processes)
    # the gathered dev score equals a single-process evaluation of the saved model on all 48 rows
    from kdpipe.config import load_params
    from kdpipe.data.splits import load_datasets
    from kdpipe.pipeline.evaluate import evaluate_model
    spec, sets = load_datasets(tmp_path / "data/prepared")
    alone = evaluate_model(load_params(tmp_path / "params.yaml"), tmp_path / "models/teacher", spec, sets)
    assert summary["best_dev"]["accuracy"] == pytest.approx(alone["dev"]["accuracy"], abs=1e-9)
    assert summary["best_dev"]["loss"] == pytest.approx(alone["dev"]["loss"], abs=1e-4)
    import mlflow
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("e2e").experiment_id],
                              filter_string="tags.`kdpipe.stage` = 'teacher'")
    assert len(runs) == 1


@pytest.mark.heavy  # pytest -m heavy
@pytest.mark.parametrize("signal_name", ["SIGINT", "SIGTERM"])  # Ctrl-C on dvc repro; kill / a scheduler
def test_a_killed_teacher_stage_resumes_from_its_checkpoint(project, tmp_path, signal_name):
    import signal
    import time

    root, _ = project
    for item in ("stages", "dvc.yaml", "data"):
        src = root / item
        shutil.copytree(src, tmp_path / item) if src.is_dir() else shutil.copy(src, tmp_path / item)
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["teacher"]["train"].update(epochs=3, checkpoint_every=1)  # 12 steps
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    state = tmp_path / "checkpoints/teacher/trainer_state.json"
    # A shell that runs the suite in the background (`pytest &`) makes its children ignore SIGINT,
    # as POSIX requires: give the stage the default disposition a terminal's Ctrl-C would meet.
    proc = subprocess.Popen([sys.executable, "stages/teacher.py"], cwd=tmp_path, env=_env(tmp_path),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 240
    while not (state.exists() and json.loads(state.read_text())["step"] >= 2) and time.time() < deadline:
        time.sleep(0.2)
    proc.send_signal(getattr(signal, signal_name))
    proc.communicate(timeout=120)
    assert proc.returncode != 0
    assert not (tmp_path / "models/teacher").exists() and not list((tmp_path / "models").glob(".teacher.tmp-*"))
    done = json.loads(state.read_text())["step"]
    assert 2 <= done < 12
    out = sh([sys.executable, "stages/teacher.py"], tmp_path)
    assert f"resuming from checkpoint at step {done}/12" in out
    assert json.loads((tmp_path / "metrics/teacher.json").read_text())["steps"] == 12
    assert (tmp_path / "models/teacher/model.safetensors").exists()


def test_teacher_training_is_reproducible_whatever_the_rng_state(project, tmp_path):
    """Same params and data give bit-identical weights, even if the process RNG was used before
    (the new classification head must be drawn after seeding)."""
    import torch
    from kdpipe.config import load_params
    from kdpipe.pipeline.teacher import train_teacher

    root, _ = project
    params = load_params(root / "params.yaml")
    for name, noise in (("a", 0), ("b", 7)):
        torch.rand(noise)
        train_teacher(params, root / "data/prepared", tmp_path / name, tmp_path / f"ck-{name}", tmp_path / "plots")
    a, b = ((tmp_path / n / "model.safetensors").read_bytes() for n in "ab")
    assert a == b
