"""Stage `export_teacher`: the fine-tuned teacher as ONNX fp32 + int8, measured like every student
(dev metric, size, latency), so the report compares what ships against the teacher's ONNX; the
gates are reported, never enforced: nothing ships the teacher."""

from kdpipe.stage import stage

with stage("export", ["export"], run_name="export/teacher", tags={"kdpipe.run": "teacher"},
           reads=["models/teacher"]) as s:
    from kdpipe.files import write_json
    from kdpipe.pipeline.export import export_teacher

    report = export_teacher(s.params, s.path("models/teacher"), s.path("data/prepared"), s.path("exports/teacher"))
    write_json(s.path("metrics/export/teacher.json"), report)
    s.tracker.log_metrics(report)
    s.tracker.log_artifact(s.path("metrics/export/teacher.json"))
    print(f"exported exports/teacher: parity max|diff| {report['parity']['max_abs_diff']:.2e}")
