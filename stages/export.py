"""Stage `export@<run>`: ONNX fp32 + int8 of one student, parity-checked and scored on dev: the
run's first seed (distill.seeds[0]), the student that ships; the other seeds are evidence."""

import sys

from kdpipe.config import student_name
from kdpipe.stage import stage

if len(sys.argv) != 3 or not sys.argv[2].isdigit():
    raise SystemExit("usage: python stages/export.py RUN SEED (a run of distill.runs; its student of that seed ships)")
run_name, seed = sys.argv[1], int(sys.argv[2])
student = f"models/students/{student_name(run_name, seed)}"
with stage("export", ["export"], run_name=f"export/{run_name}", tags={"kdpipe.run": run_name,
           "kdpipe.seed": str(seed)}, reads=[student]) as s:
    from kdpipe.files import write_json
    from kdpipe.pipeline.export import export_student
    from kdpipe.tracking import registered_model_name

    import json

    out = s.path(f"exports/{run_name}")
    # every seed's distill report, the shipped seed first: the model card's mean ± std over seeds
    seeds = [seed] + [x for x in s.params.distill.seeds if x != seed]
    seed_reports = {x: json.loads(f.read_text()) for x in seeds
                    if (f := s.path(f"metrics/distill/{student_name(run_name, x)}.json")).is_file()}
    report = export_student(s.params, s.path(student), s.path("data/prepared"), out, seed_reports=seed_reports)
    write_json(s.path(f"metrics/export/{run_name}.json"), report)
    s.tracker.log_metrics(report)
    s.tracker.log_artifact(s.path(f"metrics/export/{run_name}.json"))
    print(f"exported {out}: parity max|diff| {report['parity']['max_abs_diff']:.2e}")
    # The export as an MLflow pyfunc model (raw text in) and a version of registered model <experiment>-<run>
    name = registered_model_name(s.params.tracking.experiment, run_name) if s.params.tracking.register_model else None
    logged = s.tracker.log_export_model(out, name)
    if logged:
        print(f"MLflow model {logged['model_uri']}" + (f", registered as {name!r} version {logged['version']}"
                                                       if name else "") + f" ({logged['seconds']:.1f} s)")
