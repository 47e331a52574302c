"""The comparison table of teacher and students (``kdpipe compare`` and the Python API print it).

Torch-free: it formats the evaluate report and the export reports, so ``kdpipe compare`` runs in
the runtime install.
"""

from __future__ import annotations

import json
from pathlib import Path


def read_comparison(metrics_dir: Path) -> tuple[dict, dict[str, dict]]:
    """The evaluate report and each model's export report found beside it (``export/<name>.json``)."""
    source = Path(metrics_dir) / "evaluate.json"
    if not source.is_file():
        raise FileNotFoundError(f"{source} not found: run the pipeline first (dvc repro)")
    report = json.loads(source.read_text())
    exports = {}
    for name in ("teacher", *report["students"]):
        path = Path(metrics_dir) / "export" / f"{name}.json"
        if path.exists():
            exports[name] = json.loads(path.read_text())
    return report, exports


def depth_label(model_report: dict) -> str:
    """Effective layers, with the physical ones when they differ: an SPS student runs its
    physical layers twice, "6 (3 shared)"."""
    layers, physical = model_report["layers"], model_report.get("physical_layers", model_report["layers"])
    return str(layers) if physical == layers else f"{layers} ({physical} shared)"


def shipped_variant(export_report: dict) -> str | None:
    """The exported file that ships: int8, or fp32 with ``export.int8: false``; None if neither."""
    return next((v for v in ("int8", "fp32") if v in export_report), None)


def comparison_table(report: dict, exports: dict[str, dict] | None = None) -> str:
    """A Markdown table, one row per model: method, depth, size, dev/test main metric (a run's mean
    ± std over its seeds, n beside it), retention,
    PyTorch latency per timed batch size, and the int8 ONNX model's batch-1 latency and dev metric."""
    exports = exports or {}
    main = report["main_metric"]
    batches = list(report["teacher"]["latency_ms"])
    head = ["model", "method", "layers", "params (M)", f"dev {main}", f"test {main}", "retention dev %",
            *[f"torch ms {b.replace('batch_', 'b')}" for b in batches], "onnx int8 ms b1", f"int8 dev {main}"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, r in [("teacher", report["teacher"]), *report["students"].items()]:
        int8 = exports.get(name, {}).get("int8", {})
        row = [name, r.get("method", "-"), depth_label(r), f"{r['parameters'] / 1e6:.1f}",
               _fmt(r["dev"][main]) + _spread(r, "dev", main), _fmt(r.get("test", {}).get(main)) + _spread(r, "test", main),
               _fmt(r.get("retention_pct", {}).get("dev"), 1),
               *[_fmt(r["latency_ms"][b], 1) for b in batches],
               _fmt(int8.get("latency_ms", {}).get("batch_1"), 2), _fmt(int8.get("dev", {}).get(main))]
        lines.append("| " + " | ".join(str(c) for c in row) + " |")
    return "\n".join(lines)


def seed_spread(std: float | None, seeds: int, digits: int = 4) -> str:
    """" ± std (n=K)" for a run trained under K > 1 seeds, else nothing."""
    return f" ± {std:.{digits}f} (n={seeds})" if seeds > 1 and std is not None else ""


def _spread(model_report: dict, split: str, main: str) -> str:
    return seed_spread(model_report.get(f"{split}_std", {}).get(main), len(model_report.get("seeds", [])))


def _fmt(value, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}f}"
