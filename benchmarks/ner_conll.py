"""CoNLL-2003 NER through the package: teacher, the students of every method that tags, evaluate.

    python benchmarks/ner_conll.py OUT [CONLL_DIR]

3,000 training sentences, scored on the whole dev (3,250) and test (3,453) sets; finetune, vanilla_kd and tinybert
under seeds 42, 43 and 44, the others under 42 (about 20 min on 2 CPU cores).  Prints the comparison table and each step's seconds; writes
OUT/evaluate.json.  What OUT already holds is kept (a re-run trains only new runs).  CONLL_DIR defaults to ../shared/data/conll2003 beside the repo.  Results:
README "Data" (conll2003) and benchmarks/results/ner_conll/evaluate.json.
"""
import json
import sys
import time
from pathlib import Path

from kdpipe.env import apply_defaults

apply_defaults()

from kdpipe.config import parse_params  # noqa: E402
from kdpipe.evaluation.table import comparison_table  # noqa: E402
from kdpipe.pipeline.data import prepare_data  # noqa: E402
from kdpipe.pipeline.distill import distill  # noqa: E402
from kdpipe.pipeline.evaluate import evaluate_models  # noqa: E402
from kdpipe.pipeline.teacher import train_teacher  # noqa: E402

out = Path(sys.argv[1])
conll_dir = sys.argv[2] if len(sys.argv) > 2 else str(Path(__file__).resolve().parents[2] / "shared/data/conll2003")
params = parse_params({
    "seed": 42, "max_length": 128,
    "task": {"name": "conll2003", "conll_dir": conll_dir, "max_train_examples": 3000},
    "teacher": {"model": "minilm", "train": {"epochs": 3, "batch_size": 32, "lr": 1e-4}},
    "student": {"num_layers": 3},
    "distill": {"train": {"epochs": 2, "batch_size": 32, "lr": 1e-4}, "seeds": [42, 43, 44],
                "runs": {"finetune": {"method": "finetune"}, "vanilla_kd": {"method": "vanilla_kd"},
                         "tinybert": {"method": "tinybert", "phases": {"ild": {"epochs": 2}, "pred": {"epochs": 1}}},
                         "rail_kd_l": {"method": "rail_kd_l"},
                         "cr_ild": {"method": "cr_ild", "phases": {"ild": {"epochs": 2}, "pred": {"epochs": 1}}}}},
    "evaluate": {"latency_batch_sizes": [1, 32]},
    "tracking": {"enabled": False}})
times = {}  # what OUT already holds (data, teacher, a student) is kept: a re-run trains only new runs
if not (out / "teacher").exists():
    t = time.time(); prepare_data(params, Path("."), out / "data"); times["data"] = time.time() - t
    t = time.time(); teacher = train_teacher(params, out / "data", out / "teacher", out / "ck/t", out / "plots")
    times["teacher"] = time.time() - t
    print("teacher", teacher["best_dev"], flush=True)
SEEDS = {"finetune": (42, 43, 44), "vanilla_kd": (42, 43, 44), "tinybert": (42, 43, 44)}  # the rest: 42
for run in params.distill.runs:
    for seed in SEEDS.get(run, (42,)):
        if (out / f"students/{run}/seed-{seed}").exists():
            continue
        t = time.time()
        r = distill(params, run, out / "data", out / "teacher", out / f"students/{run}/seed-{seed}",
                    out / f"ck/{run}", out / "plots", seed=seed)
        times[f"{run}-{seed}"] = time.time() - t
        print(run, seed, r["best_dev"], flush=True)
t = time.time(); report = evaluate_models(params, out / "data", out / "teacher", out / "students"); times["evaluate"] = time.time() - t
(out / "evaluate.json").write_text(json.dumps(report, indent=1))
print(comparison_table(report, {}))
print({k: round(v, 1) for k, v in times.items()})
