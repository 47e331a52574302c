"""Stage `distill@<run>`: distil run <run> of distill.runs in params.yaml once per seed of
distill.seeds, one student and one MLflow run (distill/<run>/seed-<seed>) each; a seed's student
that nothing it depends on has changed since is kept as it is."""

import sys

from kdpipe.config import student_name
from kdpipe.stage import stage

if len(sys.argv) != 2:
    raise SystemExit("usage: python stages/distill.py RUN (a run of distill.runs; it trains every seed of distill.seeds)")
run_name = sys.argv[1]
with stage("distill", ["seed", "max_length", "student"], reads=["models/teacher"], tracked=False,
           tags={"kdpipe.run": run_name}) as s:
    from kdpipe.files import write_json
    from kdpipe.methods.mapping import format_rows
    from kdpipe.methods.registry import run_student
    from kdpipe.pipeline.distill import distill, is_current, remove_other_seeds, seed_fingerprint

    if run_name not in s.params.distill.runs:
        raise SystemExit(f"kdpipe distill: error: no run {run_name!r} under distill.runs in params.yaml")
    run = s.params.distill.runs[run_name]
    inputs = ["data/prepared", "models/teacher", "data/teacher_outputs", "models/ptp", f"data/inputs/distill/{run_name}.json"]
    fingerprint_of = seed_fingerprint(s.params, run_name, [s.path(p) for p in inputs])
    for seed in s.params.distill.seeds:
        name = student_name(run_name, seed)
        out, metrics = s.path(f"models/students/{name}"), s.path(f"metrics/distill/{name}.json")
        inputs_fingerprint = fingerprint_of(seed)
        if is_current(out, metrics, inputs_fingerprint):
            print(f"kdpipe distill: {name}: kept (nothing it depends on changed since it was trained)")
            continue
        with s.track(f"distill/{name}", {"kdpipe.seed": str(seed), "kdpipe.method": run.method}) as tracker:
            tracker.log_params({"run": run.model_dump(), "student_seed": seed,
                                "train": s.params.run_train_config(run_name).model_dump(),
                                "run_student": run_student(s.params, run_name).model_dump()})
            summary = distill(s.params, run_name, s.path("data/prepared"), s.path("models/teacher"), out,
                              s.path(f"checkpoints/distill/{name}"), s.path("plots"), logger=tracker,
                              teacher_cache_dir=s.path("data/teacher_outputs"), ptp_dir=s.path("models/ptp"),
                              seed=seed, inputs_fingerprint=inputs_fingerprint)
            if s.is_main:
                write_json(metrics, summary)
            tracker.log_metrics({"best_dev": summary["best_dev"], "last_dev": summary["last_dev"]})
            tracker.log_artifact(metrics)
            if "mapping" in summary:
                tracker.log_text(format_rows(summary["mapping"], f"{run.method} layer mapping"), "layer_mapping.txt")
            for phase, records in summary.get("epoch_records", {}).items():
                tracker.log_text("\n".join(str(r) for r in records), f"epoch_records_{phase}.txt")
    if s.is_main and (removed := remove_other_seeds(s.params, run_name, s.root)):
        print(f"kdpipe distill: {run_name}: removed the students of seeds {removed}, no longer in distill.seeds")
