"""Why ALP-KD trailed vanilla KD on the default task: one change at a time, same data and seeds.

    python benchmarks/alp_probe.py OUT [--repo .]

Trains the teacher of ``suites/all_methods.yaml`` once (in OUT), then ``alp_kd`` under each
configuration below and vanilla KD, seeds 42, 43 and 44 (about 9 min on 2 CPU cores), and prints
each configuration's dev accuracy (mean ± std over seeds) and its first logged loss terms (the
ALP term against the others, and the attention entropy per student layer).  Results: README
"Measured results" and ``benchmarks/results/alp_probe/results.json``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import yaml

from kdpipe.env import apply_defaults

apply_defaults()

from kdpipe.config import load_params  # noqa: E402
from kdpipe.pipeline.data import prepare_data  # noqa: E402
from kdpipe.pipeline.distill import distill  # noqa: E402
from kdpipe.pipeline.teacher import train_teacher  # noqa: E402

SEEDS = (42, 43, 44)
RUNS = {
    "vanilla_kd": {"method": "vanilla_kd", "temperature": 4.0, "alpha": 0.5},
    "alp_w10": {"method": "alp_kd", "alp_weight": 10.0},  # the default until this probe
    "alp_w0": {"method": "alp_kd", "alp_weight": 0.0},    # the ALP term off: CE + KD at T 1
    "alp_w1": {"method": "alp_kd", "alp_weight": 1.0},
    "alp_t4_w10": {"method": "alp_kd", "temperature": 4.0, "alp_weight": 10.0},  # vanilla KD's temperature
    "alp_t4_w1": {"method": "alp_kd", "temperature": 4.0, "alp_weight": 1.0},
    "alp_detach_w10": {"method": "alp_kd", "detach_attention": True, "alp_weight": 10.0},
}


class Recorder:
    """The logger ``distill`` writes its curves to: keeps the training rows."""

    def __init__(self):
        self.rows = []

    def log_metrics(self, metrics, step=None):
        if any(k.startswith("train/") for k in metrics):
            self.rows.append(dict(metrics))

    def child(self, name, tags=None):
        return self


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--repo", type=Path, default=Path(__file__).resolve().parents[1])
    args = parser.parse_args()
    raw = yaml.safe_load((args.repo / "suites/all_methods.yaml").read_text())
    raw["tracking"]["enabled"] = False
    raw["distill"]["teacher_cache"]["enabled"] = False  # the live teacher: no cache stage here
    raw["distill"]["runs"] = RUNS
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "params.yaml").write_text(yaml.safe_dump(raw))
    params = load_params(args.out / "params.yaml")
    if not (args.out / "teacher").exists():
        prepare_data(params, args.repo, args.out / "data")
        train_teacher(params, args.out / "data", args.out / "teacher", args.out / "ckpt/teacher", args.out / "plots")
    results = {}
    for run in RUNS:
        for seed in SEEDS:
            log = Recorder()
            r = distill(params, run, args.out / "data", args.out / "teacher", args.out / f"students/{run}/{seed}",
                        args.out / f"ckpt/{run}/{seed}", args.out / "plots", logger=log, seed=seed, echo=lambda *a: None)
            results.setdefault(run, []).append({"seed": seed, "dev": r["best_dev"]["accuracy"],
                                                "first": log.rows[0] if log.rows else {}})
    (args.out / "results.json").write_text(json.dumps(results, indent=1))
    for run, rows in results.items():
        scores = [x["dev"] for x in rows]
        terms = {k.split("/")[1]: round(v, 3) for k, v in rows[0]["first"].items()
                 if k.split("/")[1] in ("hard", "kd", "alp") or "entropy" in k}
        print(f"{run:15s} {np.mean(scores):.4f} ± {np.std(scores, ddof=1):.4f}  {scores}  first logged: {terms}")


if __name__ == "__main__":
    main()
