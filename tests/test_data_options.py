"""Data options every method can use (CR-ILD's synthetic settings) and supplementary unlabeled
text for label-free phases: few-sample draws, seeded label noise, other tasks' inputs, text files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from kdpipe.config import ConfigError, SupplementaryConfig, TaskConfig, parse_params
from kdpipe.methods.registry import check_runs
from kdpipe.data.tasks import TaskDataError, add_label_noise, get_task, load_task, supplementary_frame

REPO = Path(__file__).resolve().parents[1]
GLUE = REPO.parent / "shared" / "data" / "glue"
needs_glue = pytest.mark.skipif(not GLUE.exists(), reason="../shared/data/glue not present")


def _frame(n: int, classes: int) -> pd.DataFrame:
    return pd.DataFrame({"text_a": [f"t{i}" for i in range(n)], "label": np.arange(n) % classes})


def test_label_noise_flips_about_r_to_another_class_with_a_fixed_seed():
    spec = get_task("tweets")  # 3 classes
    frame = _frame(3000, 3)
    noisy = add_label_noise(frame, spec, 0.2, seed=0)
    flipped = noisy["label"] != noisy["clean_label"]
    assert 0.17 < flipped.mean() < 0.23                       # about r of the labels
    assert (noisy["clean_label"] == frame["label"]).all()     # the truth is kept beside the noise
    assert noisy["label"].between(0, 2).all() and noisy["label"].dtype == frame["label"].dtype
    again = add_label_noise(frame, spec, 0.2, seed=0)
    assert (again["label"] == noisy["label"]).all()           # fixed seed: the same flips every time
    other = add_label_noise(frame, spec, 0.2, seed=1)
    assert (other["label"] != noisy["label"]).any()
    # a flipped label lands on each other class about equally often
    moved = (noisy["label"] - noisy["clean_label"]) % 3
    assert set(moved[flipped]) == {1, 2} and 0.4 < (moved[flipped] == 1).mean() < 0.6


def test_label_noise_refuses_regression():
    with pytest.raises(TaskDataError, match=r"task\.label_noise.*regression"):
        add_label_noise(pd.DataFrame({"text_a": ["a"], "label": [0.5]}), get_task("stsb"), 0.1, 0)


def test_data_options_are_validated_in_params():
    with pytest.raises(ConfigError, match=r"task\.label_noise"):
        parse_params({"task": {"label_noise": 1.0}})
    with pytest.raises(ConfigError, match=r"task\.downsample"):
        parse_params({"task": {"downsample": 0}})


@needs_glue
def test_downsample_and_noise_apply_to_train_only_after_the_cap():
    base = TaskConfig(name="rte", glue_dir=str(GLUE), max_eval_examples=50)
    _, clean = load_task(base, 3, REPO)
    _, few = load_task(base.model_copy(update={"downsample": 100, "label_noise": 0.3}), 3, REPO)
    assert len(few["train"]) == 100 and len(few["dev"]) == len(clean["dev"]) == 50
    assert set(few["train"]["text_a"]) <= set(clean["train"]["text_a"])
    assert (few["dev"]["label"] == clean["dev"]["label"]).all()  # dev and test keep their gold labels
    assert 10 < (few["train"]["label"] != few["train"]["clean_label"]).sum() < 50


@needs_glue
def test_supplementary_task_inputs_take_the_target_format():
    rte, mrpc, cola = get_task("rte"), get_task("mrpc"), get_task("cola")
    task = TaskConfig(name="mrpc", glue_dir=str(GLUE))
    pairs = supplementary_frame(SupplementaryConfig(task="rte", max_examples=20), task, mrpc, 0, REPO)
    assert list(pairs.columns) == ["text_a", "text_b", "label"] and len(pairs) == 20
    assert (pairs["label"] == 0).all()  # a placeholder: label-free phases never read it
    # a pair source feeding a single-sentence task: the two sentences are joined
    joined = supplementary_frame(SupplementaryConfig(task="rte", max_examples=5), task, cola, 0, REPO)
    assert list(joined.columns) == ["text_a", "label"] and all(" " in t for t in joined["text_a"])
    # a single-sentence source cannot feed a pair task
    with pytest.raises(TaskDataError, match=r"supplementary\.task \(cola\).*pairs"):
        supplementary_frame(SupplementaryConfig(task="cola"), task, rte, 0, REPO)


def test_supplementary_text_file_lines_and_pairs(tmp_path):
    single = tmp_path / "extra.txt"
    single.write_text("first line\n\nsecond line\n")
    frame = supplementary_frame(SupplementaryConfig(file=str(single)), TaskConfig(), get_task("tweets"), 0, tmp_path)
    assert frame["text_a"].tolist() == ["first line", "second line"]  # blank lines skipped
    pairs = tmp_path / "pairs.txt"
    pairs.write_text("a one\ta two\nb one\tb two\n")
    frame = supplementary_frame(SupplementaryConfig(file="pairs.txt"), TaskConfig(), get_task("rte"), 0, tmp_path)
    assert frame[["text_a", "text_b"]].values.tolist() == [["a one", "a two"], ["b one", "b two"]]
    stsb = supplementary_frame(SupplementaryConfig(file="pairs.txt"), TaskConfig(), get_task("stsb"), 0, tmp_path)
    assert stsb["label"].dtype == float  # regression placeholder
    table = tmp_path / "extra.csv"
    table.write_text("id,body\n1,hello there\n2,general kenobi\n")
    frame = supplementary_frame(SupplementaryConfig(file=str(table), text_columns=["body"]), TaskConfig(),
                                get_task("tweets"), 0, tmp_path)
    assert frame["text_a"].tolist() == ["hello there", "general kenobi"]


def test_supplementary_errors_name_the_key(tmp_path):
    with pytest.raises(TaskDataError, match=r"supplementary\.file: .*missing\.txt not found"):
        supplementary_frame(SupplementaryConfig(file="missing.txt"), TaskConfig(), get_task("tweets"), 0, tmp_path)
    (tmp_path / "t.csv").write_text("body\nx\n")
    with pytest.raises(TaskDataError, match=r"supplementary\.file: .*text_columns"):
        supplementary_frame(SupplementaryConfig(file="t.csv"), TaskConfig(), get_task("tweets"), 0, tmp_path)
    with pytest.raises(ConfigError, match=r"distill\.runs\.c\.supplementary.*exactly one"):
        parse_params({"distill": {"runs": {"c": {"method": "cr_ild", "supplementary": {}}}}})
    with pytest.raises(ConfigError, match=r"distill\.runs\.k\.supplementary: vanilla_kd has no label-free phase"):
        check_runs(parse_params({"distill": {"runs": {"k": {"method": "vanilla_kd", "supplementary": {"task": "cola"}}}}}))
    run = parse_params({"distill": {"runs": {"c": {"method": "cr_ild", "supplementary": {"task": "cola"}}}}})
    assert run.distill.runs["c"].method_params == {}  # supplementary is not a method param


def test_supplementary_cannot_be_the_task_itself(tmp_path):
    """Re-reading the task's own train set would undo its caps (downsample) and, with other
    split fractions, leak dev/test texts into distillation."""
    with pytest.raises(TaskDataError, match=r"supplementary\.task: 'tweets' is the task itself"):
        supplementary_frame(SupplementaryConfig(task="tweets"), TaskConfig(), get_task("tweets"), 0, tmp_path)


# ------------------------------------------------------------------ duplicates, overlap, rare classes
def _custom(tmp_path, train: str, dev: str | None = None, **task):
    (tmp_path / "train.csv").write_text(train)
    files = {"train": "train.csv"}
    if dev is not None:
        (tmp_path / "dev.csv").write_text(dev)
        files["dev"] = "dev.csv"
    cfg = TaskConfig(name="custom", files=files, text_columns=["text"], label_column="label", **task)
    return load_task(cfg, 0, tmp_path)


ROWS = "".join(f"text {i},{'pos' if i % 2 else 'neg'}\n" for i in range(20))


def test_duplicated_rows_are_dropped_before_the_split(tmp_path, caplog):
    dup = "text,label\n" + ROWS + "text 3,pos\ntext 4,neg\ntext 4,neg\n"
    _, frames = _custom(tmp_path, dup, dev_fraction=0.2, test_fraction=0.2)
    texts = [t for f in frames.values() for t in f["text_a"]]
    assert len(texts) == 20 and len(set(texts)) == 20  # 3 repeats dropped: no text in two splits
    assert "dropped 3 row(s) whose inputs repeat an earlier row (data rows, 1-based: 21, 22, 23" in caplog.text


def test_duplicates_kept_on_request_with_a_warning(tmp_path, caplog):
    _, frames = _custom(tmp_path, "text,label\n" + ROWS + "text 3,pos\n", dev_fraction=0.2, test_fraction=0.2,
                        duplicates="keep")
    assert sum(len(f) for f in frames.values()) == 21 and "kept (task.duplicates: keep)" in caplog.text


def test_train_inputs_also_in_the_users_dev_file_are_reported_or_dropped(tmp_path, caplog):
    train = "text,label\n" + ROWS
    dev = "text,label\ntext 1,pos\ntext 2,neg\nnew one,pos\n"
    _, frames = _custom(tmp_path, train, dev)
    assert len(frames["train"]) == 20 and "2 train input(s) also appear in dev" in caplog.text
    assert "'text 1', 'text 2'" in caplog.text and "set task.overlap: drop" in caplog.text
    _, frames = _custom(tmp_path, train, dev, overlap="drop")
    assert len(frames["train"]) == 18 and not set(frames["train"]["text_a"]) & set(frames["dev"]["text_a"])


def test_a_rare_derived_class_is_shown_with_the_counts(tmp_path, caplog):
    rows = "".join(f"t{i},{'pos' if i % 2 else 'neg'}\n" for i in range(200))
    spec, _ = _custom(tmp_path, "text,label\n" + rows + "odd one,meh\nodd two,meh\nodd three,meh\n", dev_fraction=0.2, test_fraction=0.2)
    assert spec.labels == ("meh", "neg", "pos")
    assert "3 classes (meh 3, neg" in caplog.text and "rare class(es) 'meh' may be typos" in caplog.text
