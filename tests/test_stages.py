"""Stage scripts fail fast with one line naming the key/file/column at fault, writing nothing."""

import os
import subprocess
import sys

import pytest
import yaml

from conftest import REPO


def run_stage(root, stage, *args, params=None):
    if params is not None:
        (root / "params.yaml").write_text(yaml.safe_dump(params) if isinstance(params, dict) else params)
    (root / "dvc.yaml").touch()
    env = {k: v for k, v in os.environ.items() if k != "DVC_ROOT"}
    env.pop("MLFLOW_TRACKING_URI", None)
    return subprocess.run([sys.executable, str(REPO / "stages" / f"{stage}.py"), *args], cwd=root, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("params, message", [
    ("task: [oops\n", "params.yaml: not valid YAML"),
    ({"task": {"name": "sst3"}}, "task.name"),
    ({"student": {"num_layers": 7}}, "student.num_layers: 7 is deeper than the teacher (6 layers)"),
    ({"distill": {"runs": {"kd": {"method": "vanilla_kd", "temprature": 2}}}},
     "distill.runs.kd.temprature: unknown key"),
])
def test_bad_params_fail_before_any_work(tmp_path, minilm_path, params, message):
    proc = run_stage(tmp_path, "teacher", params=params)
    assert proc.returncode != 0
    assert message in proc.stderr, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "models").exists() and not (tmp_path / "mlflow.db").exists()


def test_labels_outside_the_label_set_name_file_and_values(tmp_path, minilm_path):
    (tmp_path / "train.csv").write_text("text,label\nfine,pos\nbad,neg\nodd,maybe\nok,pos\n")
    params = {"task": {"name": "custom", "files": {"train": "train.csv"}, "text_columns": ["text"],
                       "label_column": "label", "labels": ["neg", "pos"]}}
    proc = run_stage(tmp_path, "data", params=params)
    assert proc.returncode == 1
    assert "train.csv" in proc.stderr and "maybe" in proc.stderr and "label" in proc.stderr
    assert not (tmp_path / "data").exists()


def test_a_missing_column_lists_the_columns_present(tmp_path, minilm_path):
    (tmp_path / "train.csv").write_text("sentence,label\na,0\nb,1\n")
    params = {"task": {"name": "custom", "files": {"train": "train.csv"}, "text_columns": ["text"],
                       "label_column": "label"}}
    proc = run_stage(tmp_path, "data", params=params)
    assert proc.returncode == 1 and "text" in proc.stderr and "sentence" in proc.stderr
