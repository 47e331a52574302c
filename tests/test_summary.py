"""metrics/summary/: the compact numbers `dvc exp show` compares, built from the stage reports."""

from __future__ import annotations

from kdpipe.pipeline.summary import by_number, summarize

EVALUATION = {
    "main_metric": "accuracy",
    "teacher": {"dev": {"accuracy": 0.8, "loss": 0.5}},
    "students": {"kd": {"dev": {"accuracy": 0.76}, "retention_pct": {"dev": 95.0}},
                 "no_export": {"dev": {"accuracy": 0.7}, "retention_pct": {"dev": 87.5}},
                 "fp32_only": {"dev": {"accuracy": 0.72}, "retention_pct": {"dev": 90.0}}},
}
EXPORTS = {
    "kd": {"fp32": {"dev": {"accuracy": 0.76}, "latency_ms": {"batch_1": 3.0}, "size_mb": 60.0},
           "int8": {"dev": {"accuracy": 0.75}, "latency_ms": {"batch_1": 1.23456, "batch_32": 9.0}, "size_mb": 15.0}},
    "fp32_only": {"fp32": {"dev": {"accuracy": 0.72}, "latency_ms": {"batch_4": 2.5}, "size_mb": 60.0}},
}


def test_one_row_per_model_with_the_shipped_models_numbers():
    summary = summarize(EVALUATION, EXPORTS)
    assert summary["teacher"] == {"dev": 0.8, "retention": 100.0}
    assert summary["kd"] == {"dev": 0.76, "retention": 95.0, "int8": 0.75, "int8_ms": 1.2346, "int8_mb": 15.0}
    assert summary["no_export"] == {"dev": 0.7, "retention": 87.5}
    # export.int8 off: the fp32 file ships, and is named so; the first timed batch size stands in
    assert summary["fp32_only"] == {"dev": 0.72, "retention": 90.0, "fp32": 0.72, "fp32_ms": 2.5, "fp32_mb": 60.0}


def test_files_by_number_keep_the_teacher_in_two_so_dvc_names_columns_by_file():
    files = by_number(summarize(EVALUATION, EXPORTS))
    assert set(files) == {"dev", "retention", "int8", "int8_ms", "int8_mb", "fp32", "fp32_ms", "fp32_mb"}
    assert files["dev"] == {"teacher": 0.8, "kd": 0.76, "no_export": 0.7, "fp32_only": 0.72}
    assert sum("teacher" in values for values in files.values()) == 2
