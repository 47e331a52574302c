"""The distillation report: which student to ship, at what cost, and with what certainty.

Torch-free: it reads the stage reports (evaluate, export, distill) and writes Markdown and a
self-contained HTML page (charts embedded as data URIs, so it renders offline).  Every score is
shown with its 95 % bootstrap interval over dev examples, and every comparison with a verdict
from ``evaluation.significance`` ("better", "worse", "no detectable difference"), never a bare
ranking.  A run trained under several seeds shows its mean ± standard deviation over seeds (n
beside it); its interval and comparisons pool the seeds' predictions, and Almost Stochastic Order
over the per-seed scores (ε_min) is shown beside each verdict.
"""

from __future__ import annotations

import base64
import html
import json
from dataclasses import dataclass, field
from pathlib import Path

from kdpipe.evaluation.table import depth_label, read_comparison, seed_spread, shipped_variant
from kdpipe.evaluation.verdicts import BETTER, TIE, WORSE

REPORT_DIR = "reports"

LIMITS = ("What these numbers do not show: one task, and few seeds per run (the intervals are the dev "
          "set's sampling noise with the seeds pooled; the ± is the spread over those few seeds, itself "
          "uncertain); CPU-sized data (a few thousand "
          "training examples, two epochs), where students initialised from the fine-tuned teacher can "
          "match or pass it; a small teacher (all-MiniLM-L6-v2, 6 layers, 384 wide), so a 3-layer student "
          "compresses it only about 1.3x in parameters; and latency of one CPU, at batch 1 and 32, "
          "with onnxruntime's default threads.")


@dataclass
class Row:
    """One model's line of the report."""

    name: str
    method: str
    dev: float                                       # mean over seeds
    dev_low: float | None
    dev_high: float | None
    retention: float | None
    parameters: int
    layers: str
    versus: dict = field(default_factory=dict)       # role -> {run, difference, low, high, verdict}
    int8_dev: float | None = None
    int8_mb: float | None = None
    int8_ms: dict = field(default_factory=dict)      # batch_1, batch_32 -> ms (the shipped ONNX model)
    int8_verdict: str | None = None
    train_seconds: float | None = None
    total_steps: int | None = None
    init: str | None = None
    dev_std: float = 0.0                             # sample standard deviation over seeds
    seeds: int = 1


def read_reports(root: Path) -> tuple[dict, dict[str, dict], dict[str, dict]]:
    """evaluate.json, each run's export report and each run's distill report under ``root/metrics``."""

    evaluation, exports = read_comparison(Path(root) / "metrics")
    trainings = {}
    for name, r in evaluation["students"].items():
        found = [json.loads(p.read_text()) for seed in r.get("seeds", [])
                 if (p := Path(root) / "metrics" / "distill" / name / f"seed-{seed}.json").is_file()]
        if found:  # the first seed's report, with the training time averaged over the seeds
            seconds = [t["train_seconds"] for t in found if t.get("train_seconds") is not None]
            trainings[name] = {**found[0], "train_seconds": sum(seconds) / len(seconds) if seconds else None}
    return evaluation, exports, trainings


def report_rows(evaluation: dict, exports: dict[str, dict], trainings: dict[str, dict]) -> list[Row]:
    main = evaluation["main_metric"]
    rows = []
    for name, r in [("teacher", evaluation["teacher"]), *evaluation["students"].items()]:
        interval = r.get("dev_interval", {})
        row = Row(name=name, method=r.get("method", "teacher"), dev=r["dev"][main], dev_low=interval.get("low"),
                  dev_high=interval.get("high"), retention=r.get("retention_pct", {}).get("dev", 100.0 if name == "teacher" else None),
                  parameters=r["parameters"], layers=depth_label(r), versus=r.get("versus", {}),
                  dev_std=r.get("dev_std", {}).get(main, 0.0), seeds=len(r.get("seeds", [None])))
        shipped = exports.get(name, {})
        variant = shipped_variant(shipped)
        if variant:
            row.int8_dev = shipped[variant]["dev"][main]
            row.int8_mb = shipped[variant]["size_mb"]
            row.int8_ms = shipped[variant]["latency_ms"]
            row.int8_verdict = shipped.get("int8_gate", {}).get("verdict")
        training = trainings.get(name, {})
        row.train_seconds = training.get("train_seconds")
        row.total_steps = training.get("total_steps", training.get("steps"))
        row.init = training.get("student", {}).get("init_source")
        rows.append(row)
    return rows


def _num(value, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _versus(v: dict | None, digits: int = 3) -> str:
    if not v:
        return "-"
    sign = "+" if v["difference"] >= 0 else ""
    aso = f"; ASO ε {v['aso']:.2f}" if v.get("aso") is not None else ""
    return f"{sign}{v['difference']:.{digits}f} [{v['low']:+.{digits}f}, {v['high']:+.{digits}f}] {v['verdict']}{aso}"


def _score(row: Row) -> str:
    """mean ± std (n seeds) [95 % interval]; a single model: value [interval]."""
    ci = f" [{_num(row.dev_low)}, {_num(row.dev_high)}]" if row.dev_low is not None else ""
    return f"{row.dev:.3f}{seed_spread(row.dev_std, row.seeds, 3)}{ci}"


def _cost(row: Row, base: Row | None) -> str:
    if row.train_seconds is None:
        return "-"
    text = f"{row.train_seconds:.0f} s / {row.total_steps} steps"
    if base and base.train_seconds and row.total_steps and base.total_steps:
        per_step = (row.train_seconds / row.total_steps) / (base.train_seconds / base.total_steps)
        text += f" ({per_step:.1f}x/step)"
    return text


def results_table(rows: list[Row], main: str) -> list[list[str]]:
    """The report's main table as cells, header first (Markdown and HTML render the same cells)."""
    base = next((r for r in rows if r.method == "finetune"), None)
    head = ["model", "method", "layers", "params (M)", f"dev {main} mean ± std (seeds) [95% CI]", "retention %",
            "vs finetune", "vs vanilla_kd", "int8 MB", "int8 ms b1", "int8 ms b32", f"int8 dev {main}",
            "training (per step vs finetune)"]
    body = []
    for r in rows:
        body.append([r.name, r.method, r.layers, f"{r.parameters / 1e6:.1f}", _score(r), _num(r.retention, 1),
                     _versus(r.versus.get("finetune")), _versus(r.versus.get("vanilla_kd")), _num(r.int8_mb, 1),
                     _num(r.int8_ms.get("batch_1"), 2), _num(r.int8_ms.get("batch_32"), 1), _num(r.int8_dev),
                     _cost(r, base)])
    return [head, *body]


def markdown_table(cells: list[list[str]]) -> str:
    lines = ["| " + " | ".join(cells[0]) + " |", "|" + "---|" * len(cells[0])]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in cells[1:]]
    return "\n".join(lines)


def pareto_front(rows: list[Row]) -> list[str]:
    """Models no other model beats on both dev score (higher) and int8 batch-1 latency (lower)."""
    timed = [r for r in rows if r.int8_ms.get("batch_1") is not None]
    front = []
    for r in timed:
        dominated = any(o.dev >= r.dev and o.int8_ms["batch_1"] <= r.int8_ms["batch_1"]
                        and (o.dev > r.dev or o.int8_ms["batch_1"] < r.int8_ms["batch_1"]) for o in timed)
        if not dominated:
            front.append(r.name)
    return front


def _unit(evaluation: dict) -> str:
    """What the bootstrap resamples: sentences (tagging), questions (QA) or examples."""
    return {"tagging": "sentences", "qa": "questions"}.get(evaluation.get("spec", {}).get("problem"), "examples")


def _against_teacher(row: Row, teacher: Row) -> str:
    """The shipped student's size and batch-1 speed against the teacher's own int8 ONNX model."""
    t, r = teacher.int8_ms.get("batch_1"), row.int8_ms.get("batch_1")
    if not (t and r and teacher.int8_mb):
        return ""
    return f" ({t / r:.1f}x faster and {teacher.int8_mb / row.int8_mb:.1f}x smaller than the teacher's int8 ONNX)"


def headline(rows: list[Row], evaluation: dict) -> list[str]:
    """The answer in a few sentences: the best student, and what the comparisons can and cannot say."""
    main = evaluation["main_metric"]
    students = [r for r in rows if r.name != "teacher"]
    if not students:
        return ["No students were trained."]
    best = max(students, key=lambda r: r.dev)
    teacher = rows[0]
    lines = [f"Best dev {main}: **{best.name}** ({best.method}) at {_score(best)}"
             + f", {_num(best.retention, 1)} % of the teacher's {teacher.dev:.3f}"
             + (f"; its int8 ONNX model is {best.int8_mb:.1f} MB and answers in {best.int8_ms['batch_1']:.2f} ms at batch 1"
                + _against_teacher(best, teacher) + "."
                if best.int8_ms.get("batch_1") is not None else ".")]
    for role, label in (("finetune", "the no-KD student (finetune)"), ("vanilla_kd", "vanilla KD")):
        compared = [r for r in students if role in r.versus]
        if not compared:
            continue
        better = [r.name for r in compared if r.versus[role]["verdict"] == BETTER]
        worse = [r.name for r in compared if r.versus[role]["verdict"] == WORSE]
        ties = [r.name for r in compared if r.versus[role]["verdict"] == TIE]
        parts = [f"better: {', '.join(better)}" if better else "none is better",
                 f"worse: {', '.join(worse)}" if worse else "none is worse"]
        lines.append(f"Against {label}: {'; '.join(parts)}; no detectable difference for {len(ties)} of "
                     f"{len(compared)} (95 % paired bootstrap over {evaluation.get('dev_examples', 'the dev')} "
                     f"{_unit(evaluation)}).")
    tied_with_best = [r.name for r in students if r.versus.get("best", {}).get("verdict") == TIE]
    if tied_with_best:
        lines.append(f"No detectable difference from the best: {', '.join(tied_with_best)}; "
                     f"among these, ship the cheapest to run.")
    front = pareto_front(rows)
    if front:
        lines.append(f"Pareto front (dev {main} vs int8 latency at batch 1): {', '.join(front)}.")
    return lines


def markdown_report(rows: list[Row], evaluation: dict, charts: dict[str, str], context: dict) -> str:
    main = evaluation["main_metric"]
    inits = sorted({r.init for r in rows if r.init})
    lines = [f"# Distillation report: {evaluation['task']}", "",
             *[f"- {line}" for line in headline(rows, evaluation)], "",
             f"Task {evaluation['task']}, main metric {main}; {context.get('seeds', 1)} seed(s) per run; students "
             f"initialised from: {', '.join(inits) or '-'}; {context.get('machine', '')}".rstrip("; "), "",
             markdown_table(results_table(rows, main)), "",
             "Intervals: 95 % percentile bootstrap over dev examples (1,000 resamples, paired for differences). "
             "Verdicts: better/worse when the whole interval of the difference lies above/below 0, otherwise "
             "no detectable difference.  Latency: the exported ONNX model that ships (int8 unless "
             "`export.int8: false`), median of timed runs on one CPU.", ""]
    for title, file in charts.items():
        lines += [f"## {title}", "", f"![{title}]({file})", ""]
    lines += ["## Limits", "", LIMITS, ""]
    return "\n".join(lines)


def html_report(rows: list[Row], evaluation: dict, charts: dict[str, Path], context: dict) -> str:
    """The same report as one HTML file: no scripts, no external resources."""
    main = evaluation["main_metric"]
    cells = results_table(rows, main)
    esc = html.escape

    def bold(text: str) -> str:  # the headline's **x** markers
        parts = esc(text).split("**")
        return "".join(f"<b>{p}</b>" if i % 2 else p for i, p in enumerate(parts))

    table = ("<table><thead><tr>" + "".join(f"<th>{esc(c)}</th>" for c in cells[0]) + "</tr></thead><tbody>"
             + "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>" for row in cells[1:])
             + "</tbody></table>")
    images = "".join(
        f"<h2>{esc(title)}</h2><img alt='{esc(title)}' src='data:image/png;base64,"
        f"{base64.b64encode(Path(path).read_bytes()).decode()}'>" for title, path in charts.items() if Path(path).is_file())
    return ("<!DOCTYPE html><html><head><meta charset='utf-8'><title>kdpipe report: " + esc(evaluation["task"])
            + "</title><style>body{font-family:sans-serif;max-width:1400px;margin:2em auto;padding:0 1em}"
            "table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ccc;padding:3px 6px;text-align:left}"
            "th{background:#f3f3f3}img{max-width:100%}</style></head><body>"
            f"<h1>Distillation report: {esc(evaluation['task'])}</h1><ul>"
            + "".join(f"<li>{bold(line)}</li>" for line in headline(rows, evaluation)) + "</ul>"
            + f"<p>{esc(str(context.get('seeds', 1)))} seed(s) per run. {esc(context.get('machine', ''))}</p>"
            + table + images + f"<h2>Limits</h2><p>{esc(LIMITS)}</p></body></html>")
