"""Stage ``summary``: the few numbers a user compares across experiments, in small files.

``metrics/summary/`` holds the pipeline's only DVC metrics: one file per number, keyed by model
(``dev.json``: ``{"teacher": 0.668, "vanilla_kd": 0.69, ...}``), so ``dvc metrics show`` prints one
row per number and one column per model, and ``dvc exp show`` can keep just one of them.  The
per-stage reports it is built from (``metrics/evaluate.json``, ``metrics/export/<run>.json``, ...)
stay beside it with every detail.  The numbers:

- ``dev``: the main metric on dev (PyTorch; a run's mean over its seeds);  ``dev_std``: its
  standard deviation over seeds;  ``retention``: % of the teacher's dev score;
- ``int8``: the int8 ONNX model's dev main metric (what ships);  ``int8_ms``: its latency at
  batch 1;  ``int8_mb``: its file size (``fp32*`` instead with ``export.int8: false``).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from kdpipe.evaluation.table import shipped_variant
from kdpipe.files import atomic_dir

SUMMARY_DIR = "metrics/summary"


def summarize(evaluation: dict, exports: dict[str, dict]) -> dict[str, dict[str, float]]:
    """``evaluation``: evaluate's report; ``exports``: run name -> that run's export report."""
    main = evaluation["main_metric"]
    # the teacher's 100 % keeps "teacher" in two files, so DVC always names its columns by file
    # ("metrics/summary/dev.json:teacher") and one --keep pattern selects a whole number
    out = {"teacher": {"dev": round(evaluation["teacher"]["dev"][main], 4), "retention": 100.0}}
    for run, result in evaluation["students"].items():
        row = {"dev": result["dev"][main], "dev_std": result.get("dev_std", {}).get(main),
               "retention": result["retention_pct"].get("dev")}
        export = exports.get(run, {})
        variant = shipped_variant(export)
        if variant:
            shipped, latency = export[variant], export[variant]["latency_ms"]
            row.update({variant: shipped["dev"][main], f"{variant}_mb": shipped["size_mb"],
                        f"{variant}_ms": latency.get("batch_1", next(iter(latency.values())))})
        out[run] = {k: round(v, 4) for k, v in row.items() if v is not None}
    return out


def by_number(summary: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    """``{model: {number: v}}`` -> ``{number: {model: v}}``, the layout of ``SUMMARY_DIR``'s files."""
    out: dict[str, dict[str, float]] = {}
    for model, row in summary.items():
        for number, value in row.items():
            out.setdefault(number, {})[model] = value
    return out


def write_report(root: Path, out_dir: Path, context: dict | None = None, params=None) -> list:
    """The distillation report (``evaluation.report``) of the run under ``root``, written
    atomically to ``out_dir``: report.md, report.html (self-contained) and the PNGs they show,
    and with ``params`` every run's complete model card (``cards/<run>/README.md``).
    Returns the report's rows."""
    from kdpipe.evaluation import report as rep
    from kdpipe.evaluation.cards import CARD_FILE, model_card, report_card_facts
    from kdpipe.evaluation.charts import plot_shipped_tradeoff

    context = context or {}
    evaluation, exports, trainings = rep.read_reports(root)
    rows = rep.report_rows(evaluation, exports, trainings)
    main = evaluation["main_metric"]
    with atomic_dir(out_dir) as tmp:
        charts = {}
        points = [{"name": r.name, "dev": r.dev, "low": r.dev_low, "high": r.dev_high, "ms": r.int8_ms["batch_1"]}
                  for r in rows if r.name != "teacher" and r.int8_ms.get("batch_1") is not None]
        if points:
            plot_shipped_tradeoff(points, main, rows[0].dev, rep.pareto_front(rows), tmp / "tradeoff.png")
            charts["Dev score vs the shipped model's latency"] = "tradeoff.png"
        curves = Path(root) / "plots" / "charts" / "curves.png"
        if curves.is_file():
            shutil.copy(curves, tmp / "curves.png")
            charts["Training curves"] = "curves.png"
        for run in evaluation["students"] if params is not None else ():
            card = tmp / "cards" / run / CARD_FILE
            card.parent.mkdir(parents=True, exist_ok=True)
            card.write_text(model_card(report_card_facts(params, evaluation, run, exports.get(run),
                                                         trainings.get(run))))
        (tmp / "report.md").write_text(rep.markdown_report(rows, evaluation, charts, context))
        (tmp / "report.html").write_text(rep.html_report(rows, evaluation, {t: tmp / f for t, f in charts.items()},
                                                         context))
    return rows
