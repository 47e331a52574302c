"""Stage `export@<run>`: ONNX fp32 + int8 of one student, parity-checked and scored on dev."""

import sys

from kdpipe.stage import stage

run_name = sys.argv[1]
with stage("export", ["export"], run_name=f"export/{run_name}", tags={"kdpipe.run": run_name},
           reads=[f"models/students/{run_name}"]) as s:
    from kdpipe.files import write_json
    from kdpipe.pipeline.export import export_student
    from kdpipe.tracking import log_onnx_model

    out = s.path(f"exports/{run_name}")
    report = export_student(s.params, s.path(f"models/students/{run_name}"), s.path("data/prepared"), out)
    write_json(s.path(f"metrics/export/{run_name}.json"), report)
    s.tracker.log_metrics(report)
    s.tracker.log_artifact(s.path(f"metrics/export/{run_name}.json"))
    log_onnx_model(s.tracker, out / "model.onnx", name="student_onnx")
    print(f"exported {out}: parity max|diff| {report['parity']['max_abs_diff']:.2e}")
