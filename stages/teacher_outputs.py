"""Stage `teacher_outputs`: the frozen teacher's per-example vectors on the train split, once,
for every method whose teacher signal they are (see kdpipe/training/teacher_cache.py)."""

from kdpipe.stage import stage

with stage("teacher_outputs", ["max_length"], reads=["models/teacher"]) as s:
    from kdpipe.pipeline.teacher_outputs import teacher_outputs

    s.tracker.log_params({"teacher_cache": s.params.distill.teacher_cache.model_dump()})
    meta = teacher_outputs(s.params, s.path("data/prepared"), s.path("models/teacher"),
                           s.path("data/teacher_outputs"))
    s.tracker.log_metrics({k: v for k, v in meta.items() if k in ("examples", "layers", "hidden")})
