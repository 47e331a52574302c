"""Stage `distill@<run>-<seed>`: distil one student with the method of run <run> in params.yaml,
under one of distill.seeds."""

import sys

from kdpipe.config import student_name
from kdpipe.stage import stage

if len(sys.argv) != 3 or not sys.argv[2].isdigit():
    raise SystemExit("usage: python stages/distill.py RUN SEED (a run of distill.runs, a seed of distill.seeds)")
run_name, seed = sys.argv[1], int(sys.argv[2])
name = student_name(run_name, seed)
with stage("distill", ["seed", "max_length", "student"], run_name=f"distill/{name}",
           tags={"kdpipe.run": run_name, "kdpipe.seed": str(seed)}, reads=["models/teacher"]) as s:
    from kdpipe.files import write_json
    from kdpipe.methods.mapping import format_rows
    from kdpipe.methods.registry import run_student
    from kdpipe.pipeline.distill import distill

    if run_name not in s.params.distill.runs:
        raise SystemExit(f"kdpipe distill: error: no run {run_name!r} under distill.runs in params.yaml")
    if seed not in s.params.distill.seeds:
        raise SystemExit(f"kdpipe distill: error: seed {seed} is not in distill.seeds {s.params.distill.seeds}")
    run = s.params.distill.runs[run_name]
    s.tracker.set_tags({"kdpipe.method": run.method})
    s.tracker.log_params({"run": run.model_dump(), "student_seed": seed,
                          "train": s.params.run_train_config(run_name).model_dump(),
                          "run_student": run_student(s.params, run_name).model_dump()})
    summary = distill(s.params, run_name, s.path("data/prepared"), s.path("models/teacher"),
                      s.path(f"models/students/{name}"), s.path(f"checkpoints/distill/{name}"),
                      s.path("plots"), logger=s.tracker, teacher_cache_dir=s.path("data/teacher_outputs"),
                      ptp_dir=s.path("models/ptp"), seed=seed)
    if s.is_main:
        write_json(s.path(f"metrics/distill/{name}.json"), summary)
    s.tracker.log_metrics({"best_dev": summary["best_dev"], "last_dev": summary["last_dev"]})
    s.tracker.log_artifact(s.path(f"metrics/distill/{name}.json"))
    if "mapping" in summary:
        s.tracker.log_text(format_rows(summary["mapping"], f"{run.method} layer mapping"), "layer_mapping.txt")
    for phase, records in summary.get("epoch_records", {}).items():
        s.tracker.log_text("\n".join(str(r) for r in records), f"epoch_records_{phase}.txt")
