"""Stage `teacher`: fine-tune the teacher on the train split (best dev checkpoint by default)."""

from kdpipe.stage import stage

with stage("teacher", ["seed", "max_length", "teacher"]) as s:
    from kdpipe.files import write_json
    from kdpipe.pipeline.teacher import train_teacher

    summary = train_teacher(s.params, s.path("data/prepared"), s.path("models/teacher"),
                            s.path("checkpoints/teacher"), s.path("plots"), logger=s.tracker)
    if s.is_main:
        write_json(s.path("metrics/teacher.json"), summary)
    s.tracker.log_metrics({"best_dev": summary["best_dev"], "last_dev": summary["last_dev"]})
    s.tracker.log_artifact(s.path("metrics/teacher.json"))
