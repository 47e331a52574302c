"""Stage `data`: load the task named in params.yaml and write tokenizer-independent splits."""

from kdpipe.stage import stage

with stage("data", ["seed", "task"]) as s:
    from kdpipe.pipeline.data import prepare_data

    rows = prepare_data(s.params, s.root, s.path("data/prepared"))
    s.tracker.log_metrics({f"rows.{split}": n for split, n in rows.items()})
    print("prepared splits:", ", ".join(f"{k}={v}" for k, v in rows.items()))
