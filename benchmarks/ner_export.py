"""CoNLL-2003 NER: the teacher cache and the ONNX exports, measured on the whole dev set.

    python benchmarks/ner_export.py OUT [CONLL_DIR]

The same budget as benchmarks/ner_conll.py (3,000 training sentences, max_length 128, teacher 3
epochs), then: the teacher cache (per-word float16 logits) on those 3,000 sentences and on all
14,041, with its size; vanilla_kd and tinybert students (seed 42) reading it; the teacher and both
students exported (fp32 + int8) and scored torch-free on all 3,250 dev sentences: parity, entity
F1, int8 drop and agreement, latency.  Writes OUT/ner_export.json; prints a table.  What OUT already
holds is kept.
"""
import json
import sys
import time
from pathlib import Path

from kdpipe.env import apply_defaults

apply_defaults()

from kdpipe.config import parse_params  # noqa: E402
from kdpipe.export.runtime import open_export  # noqa: E402
from kdpipe.pipeline.data import prepare_data  # noqa: E402
from kdpipe.pipeline.distill import distill  # noqa: E402
from kdpipe.pipeline.export import export_student, export_teacher  # noqa: E402
from kdpipe.pipeline.teacher import train_teacher  # noqa: E402
from kdpipe.pipeline.teacher_outputs import teacher_outputs  # noqa: E402

out = Path(sys.argv[1])
conll_dir = sys.argv[2] if len(sys.argv) > 2 else str(Path(__file__).resolve().parents[2] / "shared/data/conll2003")


def params_for(max_train):
    return parse_params({
        "seed": 42, "max_length": 128,
        "task": {"name": "conll2003", "conll_dir": conll_dir, "max_train_examples": max_train},
        "teacher": {"model": "minilm", "train": {"epochs": 3, "batch_size": 32, "lr": 1e-4}},
        "student": {"num_layers": 3},
        "distill": {"train": {"epochs": 2, "batch_size": 32, "lr": 1e-4}, "seeds": [42],
                    "teacher_cache": {"enabled": True, "dtype": "float16"},
                    "runs": {"vanilla_kd": {"method": "vanilla_kd"},
                             "tinybert": {"method": "tinybert", "phases": {"ild": {"epochs": 2}, "pred": {"epochs": 1}}}}},
        "evaluate": {"latency_batch_sizes": [1, 32]},
        "tracking": {"enabled": False}})


def folder_mb(folder: Path) -> float:
    return round(sum(f.stat().st_size for f in folder.iterdir()) / 2**20, 1)


params = params_for(3000)
result = json.loads((out / "ner_export.json").read_text()) if (out / "ner_export.json").exists() else {}
times = result.setdefault("seconds", {})


def step(name, call):
    t = time.time()
    value = call()
    times[name] = round(time.time() - t, 1)
    print(name, times[name], "s", flush=True)
    return value


if not (out / "teacher").exists():
    step("data", lambda: prepare_data(params, Path("."), out / "data"))
    step("teacher", lambda: train_teacher(params, out / "data", out / "teacher", out / "ck/t", out / "plots"))
if not (out / "cache").exists():
    meta = step("cache_3000", lambda: teacher_outputs(params, out / "data", out / "teacher", out / "cache"))
    result["cache_3000"] = {"mb": folder_mb(out / "cache"), **meta}
if "cache_all" not in result:  # the whole train file, for the size a full run's cache reaches
    full = params_for(None)
    step("data_all", lambda: prepare_data(full, Path("."), out / "data_all"))
    meta = step("cache_all", lambda: teacher_outputs(full, out / "data_all", out / "teacher", out / "cache_all"))
    result["cache_all"] = {"mb": folder_mb(out / "cache_all"),
                           "logits_mb": round((out / "cache_all/logits.npy").stat().st_size / 2**20, 1), **meta}
for run in params.distill.runs:
    if not (out / f"students/{run}").exists():
        r = step(run, lambda: distill(params, run, out / "data", out / "teacher", out / f"students/{run}",
                                      out / f"ck/{run}", out / "plots", teacher_cache_dir=out / "cache", seed=42))
        result.setdefault("students", {})[run] = {"teacher_signal": r.get("teacher_signal"), "best_dev": r["best_dev"]}
exports = result.setdefault("exports", {})
for name in ["teacher", *params.distill.runs]:
    if name not in exports:
        folder = out / f"exports/{name}"
        exports[name] = step(f"export_{name}", lambda: (
            export_teacher(params, out / "teacher", out / "data", folder) if name == "teacher" else
            export_student(params, out / f"students/{name}", out / "data", folder)))
example = "Peter Blackburn , the EU spokesman , flew from Brussels to Germany on Friday ."
result["predict_example"] = open_export(out / "exports/tinybert", "int8").predict(example)[0]
(out / "ner_export.json").write_text(json.dumps(result, indent=1))

print("\n| model | dev entity F1 fp32 (ONNX) | int8 | int8 drop [95 %] | same tag | parity | int8 MB | int8 ms b1 / b32 |")
print("|---|---|---|---|---|---|---|---|")
for name, r in exports.items():
    g = r["int8_gate"]
    print(f"| {name} | {r['fp32']['dev']['entity_f1']:.3f} | {r['int8']['dev']['entity_f1']:.3f} | "
          f"{g['drop']:+.4f} [{g['drop_interval']['low']:+.4f}, {g['drop_interval']['high']:+.4f}] | "
          f"{g['agreement']:.4f} | {r['parity']['max_abs_diff']:.1e} | {r['int8']['size_mb']} | "
          f"{r['int8']['latency_ms']['batch_1']:.2f} / {r['int8']['latency_ms']['batch_32']:.1f} |")
print("cache:", {k: result[k]["mb"] for k in ("cache_3000", "cache_all")}, "MB;", result["cache_all"])
print("predict:", [(e["type"], e["text"]) for e in result["predict_example"]["entities"]])
print(times)
