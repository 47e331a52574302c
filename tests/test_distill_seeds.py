"""One distill stage per run trains all of its seeds: which seeds it keeps, retrains and removes."""

import json
import shutil

from kdpipe.config import parse_params
from kdpipe.pipeline.distill import is_current, remove_other_seeds, seed_fingerprint


def _params(seeds=(42, 43), temperature=4.0):
    return parse_params({"distill": {"seeds": list(seeds),
                                     "runs": {"kd": {"method": "vanilla_kd", "temperature": temperature}}}})


def _inputs(root):
    (root / "data/prepared").mkdir(parents=True)
    (root / "data/prepared/train.parquet").write_bytes(b"rows")
    (root / "data/inputs/distill").mkdir(parents=True)
    (root / "data/inputs/distill/kd.json").write_text('{"files": {}}')
    return [root / "data/prepared", root / "data/inputs/distill/kd.json", root / "models/ptp"]  # no ptp stage output


def test_a_seeds_fingerprint_follows_its_inputs_but_not_the_other_seeds_or_the_folder(tmp_path):
    inputs = _inputs(tmp_path / "a")
    of = seed_fingerprint(_params(), "kd", inputs)
    assert of(42) != of(43)
    assert seed_fingerprint(_params(seeds=(42, 43, 44)), "kd", inputs)(42) == of(42)  # another seed added
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    moved = [tmp_path / "b" / p.relative_to(tmp_path / "a") for p in inputs]
    assert seed_fingerprint(_params(), "kd", moved)(42) == of(42)  # the same project in another folder
    assert seed_fingerprint(_params(temperature=2.0), "kd", inputs)(42) != of(42)  # the run's params
    (tmp_path / "a/data/prepared/train.parquet").write_bytes(b"other rows")
    assert seed_fingerprint(_params(), "kd", inputs)(42) != of(42)  # a file inside an input folder
    (tmp_path / "a/data/inputs/distill/kd.json").write_text('{"files": {"x": "1"}}')
    later = seed_fingerprint(_params(), "kd", inputs)(42)
    (tmp_path / "a/models/ptp").mkdir(parents=True)
    (tmp_path / "a/models/ptp/meta.json").write_text("{}")
    assert seed_fingerprint(_params(), "kd", inputs)(42) != later  # the manifest file, then a folder appearing


def test_a_student_is_current_only_with_its_metrics_and_the_same_fingerprint(tmp_path):
    student, metrics = tmp_path / "students/kd/seed-42", tmp_path / "metrics/kd/seed-42.json"
    assert not is_current(student, metrics, "f1")  # nothing trained yet
    student.mkdir(parents=True)
    (student / "kdpipe.json").write_text(json.dumps({"inputs_fingerprint": "f1"}))
    assert not is_current(student, metrics, "f1")  # killed between the student and its metrics
    metrics.parent.mkdir(parents=True)
    metrics.write_text("{}")
    assert is_current(student, metrics, "f1")
    assert not is_current(student, metrics, "f2")
    (student / "kdpipe.json").write_text('{"inputs_fingerprint": ')  # torn
    assert not is_current(student, metrics, "f1")


def test_seeds_taken_out_of_the_list_leave_with_all_their_files(tmp_path):
    made = {"models/students/kd/seed-{}/model.safetensors", "metrics/distill/kd/seed-{}.json",
            "plots/train/kd/seed-{}.csv", "plots/dev/kd/seed-{}.csv", "plots/phases/kd/seed-{}/ild_train.csv"}
    for seed in (42, 43, 44):
        for pattern in made:
            path = tmp_path / pattern.format(seed)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("x")
    (tmp_path / "metrics/distill/kd/notes.txt").write_text("mine")
    (tmp_path / "metrics/distill/other/seed-44.json").parent.mkdir(parents=True)
    (tmp_path / "metrics/distill/other/seed-44.json").write_text("{}")
    assert remove_other_seeds(_params(seeds=(42, 43)), "kd", tmp_path) == [44]
    for pattern in made:
        assert (tmp_path / pattern.format(42)).exists() and (tmp_path / pattern.format(43)).exists()
        assert not (tmp_path / pattern.format(44)).exists()
    assert not (tmp_path / "models/students/kd/seed-44").exists() and not (tmp_path / "plots/phases/kd/seed-44").exists()
    assert (tmp_path / "metrics/distill/kd/notes.txt").exists() and (tmp_path / "metrics/distill/other/seed-44.json").exists()
    assert remove_other_seeds(_params(seeds=(42, 43)), "kd", tmp_path) == []
