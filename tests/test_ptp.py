"""PTP labels on hand-built teacher outputs, thresholds, the class histogram and the stage's skips."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from kdpipe.methods.pea_kd import PTP_CLASSES, auto_thresholds, class_histogram, ptp_labels, resolve_thresholds, teacher_confidence


def two_class_logits(confidences, predicted):
    """Logits whose softmax puts ``confidence`` on class ``predicted``: log(p / (1 - p)) vs 0."""
    rows = []
    for p, c in zip(confidences, predicted):
        z = [0.0, 0.0]
        z[c] = math.log(p / (1 - p))
        rows.append(z)
    return np.array(rows)


def test_all_four_classes():
    # teacher predicts class 0 with confidence .9 / .7 on examples labelled 0 (right) or 1 (wrong)
    logits = two_class_logits([0.9, 0.7, 0.9, 0.7], [0, 0, 0, 0])
    labels = np.array([0, 0, 1, 1])
    assert ptp_labels(logits, labels, t1=0.8, t2=0.8).tolist() == [0, 1, 2, 3]


def test_threshold_edges_count_as_unconfident():
    # [0, 0] gives exactly 0.5 (argmax: class 0); a hair above 0.5 is confident.
    logits = np.array([[0.0, 0.0], [1e-6, 0.0], [0.0, 0.0], [1e-6, 0.0]])
    labels = np.array([0, 0, 1, 1])
    assert teacher_confidence(logits)[1][0] == 0.5
    assert ptp_labels(logits, labels, t1=0.5, t2=0.5).tolist() == [1, 0, 3, 2]


def test_t1_and_t2_act_on_their_own_side():
    logits = two_class_logits([0.85, 0.85], [1, 1])
    labels = np.array([1, 0])  # right, wrong; both at 0.85
    assert ptp_labels(logits, labels, t1=0.9, t2=0.6).tolist() == [1, 2]
    assert ptp_labels(logits, labels, t1=0.6, t2=0.9).tolist() == [0, 3]


def test_auto_thresholds_are_the_percentile_and_median():
    right = [0.6, 0.7, 0.8, 0.9, 1 - 1e-9]  # 75th percentile (linear): 0.9
    wrong = [0.55, 0.65, 0.95]                # median: 0.65
    logits = two_class_logits(right + wrong, [0] * 8)
    labels = np.array([0] * 5 + [1] * 3)
    t1, t2 = auto_thresholds(logits, labels)
    assert t1 == pytest.approx(0.9) and t2 == pytest.approx(0.65)


def test_auto_without_wrong_predictions_reuses_t1():
    logits = two_class_logits([0.6, 0.8], [0, 0])
    t1, t2 = auto_thresholds(logits, np.array([0, 0]))
    assert t2 == t1


def test_threshold_sources():
    logits = two_class_logits([0.6, 0.9, 0.7], [0, 0, 0])
    labels = np.array([0, 0, 1])
    assert resolve_thresholds(None, None, "mrpc", logits, labels) == {
        "t1": 0.95, "t1_source": "task", "t2": 0.75, "t2_source": "task"}
    got = resolve_thresholds(0.5, None, "tweets", logits, labels)
    assert got["t1"] == 0.5 and got["t1_source"] == "params"
    assert got["t2_source"] == "auto" and got["t2"] == pytest.approx(0.7)
    assert resolve_thresholds(0.6, 0.4, "rte", logits, labels)["t2"] == 0.4


def test_histogram_lists_empty_classes():
    assert class_histogram(np.array([0, 0, 1])) == dict(zip(PTP_CLASSES, [2, 1, 0, 0]))


# ------------------------------------------------------------------------------------ stage
def _prepared(tmp_path, problem):
    from kdpipe.data.splits import save_splits
    from kdpipe.data.tasks import TaskSpec
    labels = None if problem == "regression" else ("a", "b")
    spec = TaskSpec(name="t", problem=problem, labels=labels, num_text_fields=1,
                    metrics=("pearson",) if problem == "regression" else ("accuracy",),
                    main_metric="pearson" if problem == "regression" else "accuracy")
    frame = pd.DataFrame({"text_a": ["x", "y"], "label": [0.5, 1.0] if labels is None else [0, 1]})
    save_splits(tmp_path / "prepared", spec, {"train": frame, "dev": frame})
    return tmp_path / "prepared"


def test_stage_skips_regression_and_says_why(tmp_path):
    from kdpipe.config import parse_params
    from kdpipe.pipeline.ptp import pretrain_ptp
    params = parse_params({"distill": {"runs": {"p": {"method": "pea_kd"}}}})
    said = []
    meta = pretrain_ptp(params, _prepared(tmp_path, "regression"), tmp_path / "no-teacher", tmp_path / "out",
                        tmp_path / "ck", echo=said.append)
    assert "regression" in meta["skipped"] and "regression" in said[0]
    assert json.loads((tmp_path / "out" / "meta.json").read_text())["students"] == {}


def test_stage_without_ptp_runs_is_a_no_op(tmp_path):
    from kdpipe.config import parse_params
    from kdpipe.pipeline.ptp import pretrain_ptp
    params = parse_params({"distill": {"runs": {"kd": {"method": "vanilla_kd"}}}})
    meta = pretrain_ptp(params, _prepared(tmp_path, "classification"), tmp_path / "no-teacher", tmp_path / "out",
                        tmp_path / "ck", echo=lambda _: None)
    assert meta == {"students": {}, "skipped": "no run has student.init: ptp"}


def test_one_ptp_student_per_architecture():
    from kdpipe.config import parse_params
    from kdpipe.pipeline.ptp import ptp_students
    params = parse_params({"distill": {"runs": {
        "a": {"method": "pea_kd"}, "b": {"method": "pea_kd", "beta": 10.0},
        "c": {"method": "pea_kd", "student": {"sps": None}}, "d": {"method": "pea_kd", "student": {"init": "teacher"}},
        "e": {"method": "vanilla_kd", "student": {"init": "ptp"}}}}})
    assert sorted(ptp_students(params)) == ["L3_uniform_plain", "L3_uniform_sps-upper_swap"]


def test_missing_ptp_output_names_the_stage(tmp_path):
    from kdpipe.config import StudentConfig
    from kdpipe.pipeline.ptp import ptp_encoder_dir
    with pytest.raises(FileNotFoundError, match="dvc repro ptp"):
        ptp_encoder_dir(tmp_path, StudentConfig(init="ptp"), print)
    (tmp_path / "meta.json").write_text(json.dumps({"students": {}, "skipped": "task t is regression"}))
    said = []
    assert ptp_encoder_dir(tmp_path, StudentConfig(init="ptp"), said.append) is None
    assert "teacher's layers" in said[0]
