"""The distillation report from constructed stage reports: rows, Pareto front, headline verdicts,
Markdown and offline HTML (evaluation.report, pipeline.summary.write_report)."""

from __future__ import annotations

import json
import re

from kdpipe.evaluation import report as rep
from kdpipe.files import write_json


def _model(dev, method=None, low=None, high=None, layers=3, versus=None, seeds=(1,), std=0.0):
    r = {"dev": {"accuracy": dev}, "dev_std": {"accuracy": std}, "seeds": list(seeds), "parameters": 17_000_000 if method else 22_000_000, "layers": layers,
         "physical_layers": layers, "latency_ms": {"batch_1": 4.0, "batch_32": 40.0},
         "retention_pct": {"dev": round(100 * dev / 0.70, 2)}, "versus": versus or {}}
    if low is not None:
        r["dev_interval"] = {"low": low, "high": high, "confidence": 0.95}
    if method:
        r["method"] = method
    return r


def _vs(run, d, low, high, verdict):
    return {"run": run, "difference": d, "low": low, "high": high, "confidence": 0.95, "verdict": verdict}


EVALUATION = {
    "task": "tweets", "main_metric": "accuracy", "dev_examples": 1000,
    "comparisons": {"finetune": "finetune", "vanilla_kd": "vanilla_kd", "best": "pkd"},
    "teacher": _model(0.70, low=0.67, high=0.73, layers=6),
    "students": {
        "finetune": _model(0.66, "finetune", 0.63, 0.69, versus={
            "vanilla_kd": _vs("vanilla_kd", -0.02, -0.04, 0.0, "no detectable difference"),
            "best": _vs("pkd", -0.05, -0.07, -0.03, "worse")}),
        "vanilla_kd": _model(0.68, "vanilla_kd", 0.65, 0.71, versus={
            "finetune": _vs("finetune", 0.02, 0.0, 0.04, "no detectable difference"),
            "best": _vs("pkd", -0.03, -0.05, 0.001, "no detectable difference")}),
        "pkd": _model(0.71, "pkd", 0.68, 0.74, seeds=(1, 2, 3), std=0.012, versus={
            "finetune": {**_vs("finetune", 0.05, 0.03, 0.07, "better"), "aso": 0.0},
            "vanilla_kd": _vs("vanilla_kd", 0.03, -0.001, 0.05, "no detectable difference")}),
    },
}


def _export(dev, ms, mb=17.0):
    return {"int8": {"dev": {"accuracy": dev}, "latency_ms": {"batch_1": ms, "batch_32": 30 * ms}, "size_mb": mb},
            "int8_gate": {"verdict": "pass"}}


EXPORTS = {"finetune": _export(0.66, 0.8), "vanilla_kd": _export(0.675, 0.7), "pkd": _export(0.70, 0.9)}
TRAININGS = {"finetune": {"train_seconds": 100.0, "total_steps": 100, "student": {"init_source": "teacher"}},
             "vanilla_kd": {"train_seconds": 110.0, "total_steps": 100, "student": {"init_source": "teacher"}},
             "pkd": {"train_seconds": 300.0, "total_steps": 200, "student": {"init_source": "teacher"}}}
# pkd's three seeds: what metrics/distill/pkd/seed-<s>.json hold (training time averaged: 300 s)
SEED_SECONDS = {"finetune": [100.0], "vanilla_kd": [110.0], "pkd": [290.0, 300.0, 310.0]}


def test_rows_carry_the_shipped_model_and_the_cost():
    rows = rep.report_rows(EVALUATION, EXPORTS, TRAININGS)
    assert [r.name for r in rows] == ["teacher", "finetune", "vanilla_kd", "pkd"]
    pkd = rows[3]
    assert (pkd.int8_dev, pkd.int8_ms["batch_1"], pkd.int8_mb, pkd.total_steps) == (0.70, 0.9, 17.0, 200)
    cells = rep.results_table(rows, "accuracy")
    assert cells[0][4] == "dev accuracy mean ± std (seeds) [95% CI]"
    assert cells[4][4] == "0.710 ± 0.012 (n=3) [0.680, 0.740]" and cells[3][4] == "0.680 [0.650, 0.710]"
    # 300 s / 200 steps against finetune's 100 s / 100 steps: 1.5x per step
    assert cells[4][-1] == "300 s / 200 steps (1.5x/step)"
    assert cells[4][6] == "+0.050 [+0.030, +0.070] better; ASO ε 0.00"
    assert cells[4][7] == "+0.030 [-0.001, +0.050] no detectable difference"  # ASO only where both have seeds
    assert cells[1][6] == "-" and cells[1][9] == "-"  # the teacher has no baseline and no export here


def test_pareto_front_keeps_only_undominated_models():
    rows = rep.report_rows(EVALUATION, EXPORTS, TRAININGS)
    # vanilla_kd: fastest (0.7 ms); pkd: best (0.71); finetune is slower than vanilla_kd and worse
    assert rep.pareto_front(rows) == ["vanilla_kd", "pkd"]


def test_headline_says_better_worse_and_ties_never_a_bare_ranking():
    lines = rep.headline(rep.report_rows(EVALUATION, EXPORTS, TRAININGS), EVALUATION)
    assert lines[0].startswith("Best dev accuracy: **pkd** (pkd) at 0.710 ± 0.012 (n=3) [0.680, 0.740]")
    assert "Against the no-KD student (finetune): better: pkd; none is worse; no detectable difference for 1 of 2" \
        in lines[1]
    assert "Against vanilla KD: none is better; none is worse; no detectable difference for 2 of 2" in lines[2]
    assert lines[3].startswith("No detectable difference from the best: vanilla_kd")


def test_report_files_render_offline(tmp_path):
    (tmp_path / "metrics/export").mkdir(parents=True)
    write_json(tmp_path / "metrics/evaluate.json", EVALUATION)
    for run in EXPORTS:
        write_json(tmp_path / f"metrics/export/{run}.json", EXPORTS[run])
        for seed, seconds in zip(EVALUATION["students"][run]["seeds"], SEED_SECONDS[run]):
            write_json(tmp_path / f"metrics/distill/{run}/seed-{seed}.json", {**TRAININGS[run], "train_seconds": seconds})
    _, _, trainings = rep.read_reports(tmp_path)
    assert trainings == TRAININGS  # the first seed's report, its time the mean over seeds
    from kdpipe.pipeline.summary import write_report
    rows = write_report(tmp_path, tmp_path / "reports", {"seeds": 1, "machine": "2 cores"})
    assert len(rows) == 4
    md = (tmp_path / "reports/report.md").read_text()
    assert "| pkd | pkd | 3 | 17.0 | 0.710 ± 0.012 (n=3) [0.680, 0.740] |" in md and "![" in md and rep.LIMITS in md
    page = (tmp_path / "reports/report.html").read_text()
    assert page.count("data:image/png;base64,") == 1
    assert not re.search(r"(src|href)=['\"]?https?:|<script|<link", page)  # renders offline
    assert "<b>pkd</b>" in page
    assert sorted(p.name for p in (tmp_path / "reports").iterdir()) == ["report.html", "report.md", "tradeoff.png"]
    assert json.loads((tmp_path / "metrics/evaluate.json").read_text()) == EVALUATION  # read-only


def test_teacher_exported_like_the_students_gets_the_same_columns_and_the_headline_ratio():
    exports = {**EXPORTS, "teacher": _export(0.69, 2.7, mb=22.0)}
    rows = rep.report_rows(EVALUATION, exports, TRAININGS)
    assert rows[0].int8_ms["batch_1"] == 2.7 and rep.results_table(rows, "accuracy")[1][9] == "2.70"
    # pkd ships: 0.9 ms against the teacher's 2.7 ms, 17 MB against 22 MB
    assert "(3.0x faster and 1.3x smaller than the teacher's int8 ONNX)." in rep.headline(rows, EVALUATION)[0]
    # the teacher sits on the front only where no student is as good and faster: here pkd beats it on both
    assert "teacher" not in rep.pareto_front(rows)
    assert "faster" not in rep.headline(rep.report_rows(EVALUATION, EXPORTS, TRAININGS), EVALUATION)[0]
