"""Stage `summary`: metrics/summary/*.json, the compact numbers `dvc exp show` compares (main metric,
retention, the shipped ONNX model's metric, latency and size per model), from the stage reports."""

from kdpipe.stage import stage

with stage("summary", []) as s:
    from kdpipe.evaluation.table import read_comparison
    from kdpipe.files import atomic_dir, write_json
    from kdpipe.pipeline.summary import SUMMARY_DIR, by_number, summarize

    summary = summarize(*read_comparison(s.path("metrics")))  # the reports `kdpipe compare` reads
    with atomic_dir(s.path(SUMMARY_DIR)) as tmp:
        for number, values in by_number(summary).items():
            write_json(tmp / f"{number}.json", values)
    s.tracker.log_pipeline_metrics({f"{model}.{k}": v for model, row in summary.items() for k, v in row.items()})
    for model, row in summary.items():
        print(f"{model}: " + ", ".join(f"{k} {v:g}" for k, v in row.items()))
