"""Stage `ptp`: Pea-KD's Pretraining with Teacher's Predictions, one student per architecture
that a run with `student.init: ptp` asks for (see kdpipe/pipeline/ptp.py)."""

from kdpipe.stage import stage

with stage("ptp", ["seed", "max_length", "student", "ptp"], reads=["models/teacher"]) as s:
    from kdpipe.files import write_json
    from kdpipe.pipeline.ptp import pretrain_ptp

    meta = pretrain_ptp(s.params, s.path("data/prepared"), s.path("models/teacher"), s.path("models/ptp"),
                        s.path("checkpoints/ptp"), logger=s.tracker)
    if s.is_main:
        write_json(s.path("metrics/ptp.json"), meta)
    s.tracker.set_tags({"kdpipe.ptp": meta.get("skipped", "trained")})
    if "thresholds" in meta:
        s.tracker.log_params({"ptp_thresholds": meta["thresholds"]})
        s.tracker.log_metrics({"ptp_classes": meta["histogram"],
                               "students": {name: r["best_dev"] for name, r in meta["students"].items()}})
        s.tracker.log_text(", ".join(meta["empty_classes"]) or "none", "empty_ptp_classes.txt")
    s.tracker.log_artifact(s.path("metrics/ptp.json"))
