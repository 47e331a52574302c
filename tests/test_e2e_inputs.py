"""Files named in params.yaml are DVC dependencies: the user's own CSVs (``task.files``) and a run's
supplementary text file.  Editing one shows up in ``dvc status`` once ``inputs`` has hashed it, and
re-runs exactly the stages that read it; an unchanged file re-runs nothing but ``inputs``."""

from __future__ import annotations

import csv
import re

import pytest

from test_e2e import dvc, make_project, tiny_params

pytestmark = [pytest.mark.e2e, pytest.mark.heavy]  # pytest -m heavy

RUNS = {"kd": {"method": "vanilla_kd"},
        "tb": {"method": "tinybert", "supplementary": {"file": "data/own/extra.txt"},
               "phases": {"ild": {"epochs": 1}, "pred": {"epochs": 1}}}}


def ran(out: str) -> set[str]:
    return set(re.findall(r"Running stage '([^']+)'", out))


def status_changes(root) -> set[str]:
    """Stages up to ``evaluate`` that ``dvc status`` lists as changed, the always-changed ``inputs``
    aside (the export stages never ran here)."""
    out = dvc("status", "--with-deps", "evaluate", root=root)
    return {line.rstrip(":") for line in out.splitlines() if re.match(r"^\S+:$", line)} - {"inputs"}


def _write_cola_csv(src, dst, rows):
    with open(src, newline="") as f, open(dst, "w", newline="") as g:
        out = csv.writer(g)
        out.writerow(["text", "label"])
        for i, row in enumerate(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)):
            if i == rows:
                break
            out.writerow([row[3], "ok" if row[1] == "1" else "bad"])


@pytest.fixture(scope="module")
def own_files_project(tmp_path_factory, glue_dir, minilm_path):
    params = tiny_params(glue_dir, "rte", RUNS)
    params["task"] = {"name": "custom", "files": {"train": "data/own/train.csv", "dev": "data/own/dev.csv"},
                      "text_columns": ["text"], "label_column": "label", "max_eval_examples": 48}
    root = make_project(tmp_path_factory.mktemp("own_files"), params)
    (root / "data/own").mkdir(parents=True)
    _write_cola_csv(glue_dir / "CoLA/train.tsv", root / "data/own/train.csv", 64)
    _write_cola_csv(glue_dir / "CoLA/dev.tsv", root / "data/own/dev.csv", 48)
    (root / "data/own/extra.txt").write_text("".join(f"an unlabeled sentence number {i}\n" for i in range(20)))
    out = dvc("repro", "evaluate", root=root)
    return root, out


def test_an_unchanged_file_reruns_nothing_but_the_hashing(own_files_project):
    root, out = own_files_project
    assert {"inputs", "data", "teacher", "distill@kd", "distill@tb", "evaluate"} <= ran(out)
    assert ran(dvc("repro", "evaluate", root=root)) == {"inputs"}
    assert status_changes(root) == set()


def test_a_supplementary_file_edit_reruns_only_its_run(own_files_project):
    root, _ = own_files_project
    with open(root / "data/own/extra.txt", "a") as f:
        f.write("one more unlabeled sentence\n")
    dvc("repro", "-s", "inputs", root=root)
    assert status_changes(root) == {"distill@tb"}
    assert "data/inputs/distill/tb.json" in dvc("status", "distill@tb", root=root)
    assert ran(dvc("repro", "evaluate", root=root)) == {"inputs", "distill@tb", "evaluate"}


def test_a_task_file_edit_reruns_data_and_what_reads_it(own_files_project):
    root, _ = own_files_project
    rows = (root / "data/own/train.csv").read_text().splitlines()
    rows[1] = rows[1].rsplit(",", 1)[0] + ("," + ("bad" if rows[1].endswith("ok") else "ok"))  # flip a label
    (root / "data/own/train.csv").write_text("\n".join(rows) + "\n")
    dvc("repro", "-s", "inputs", root=root)
    assert status_changes(root) == {"data"}
    assert "data/inputs/data.json" in dvc("status", "data", root=root)
    dvc("repro", "-s", "data", root=root)  # the new split, then everything that reads it is stale
    assert {"teacher", "teacher_outputs", "distill@kd", "distill@tb"} <= status_changes(root)
