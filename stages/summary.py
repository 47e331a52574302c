"""Stage `summary`: metrics/summary/*.json, the compact numbers `dvc exp show` compares (main metric,
retention, the shipped ONNX model's metric, latency and size per model), and the distillation
report (reports/report.md, reports/report.html), logged to the pipeline's MLflow run."""

from kdpipe.stage import stage

with stage("summary", [], models=False) as s:
    import os
    import platform

    from kdpipe.evaluation.report import REPORT_DIR
    from kdpipe.evaluation.table import read_comparison
    from kdpipe.files import atomic_dir, write_json
    from kdpipe.pipeline.summary import SUMMARY_DIR, by_number, summarize, write_report

    summary = summarize(*read_comparison(s.path("metrics")))  # the reports `kdpipe compare` reads
    with atomic_dir(s.path(SUMMARY_DIR)) as tmp:
        for number, values in by_number(summary).items():
            write_json(tmp / f"{number}.json", values)
    machine = f"machine: {platform.machine()}, {os.cpu_count()} CPU core(s)"
    write_report(s.path("."), s.path(REPORT_DIR), {"seeds": len(s.params.distill.seeds), "machine": machine},
                 s.params)
    s.tracker.log_pipeline_metrics({f"{model}.{k}": v for model, row in summary.items() for k, v in row.items()})
    s.tracker.log_pipeline_artifact(s.path(REPORT_DIR), "report")
    for model, row in summary.items():
        print(f"{model}: " + ", ".join(f"{k} {v:g}" for k, v in row.items()))
    print(f"report: {REPORT_DIR}/report.md and {REPORT_DIR}/report.html; model cards: {REPORT_DIR}/cards/<run>/README.md")
