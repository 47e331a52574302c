"""PNG charts of a pipeline run: training curves and metric vs latency.

``dvc plots show`` writes HTML that loads Vega from a CDN, so it renders blank offline; these PNGs
are viewable anywhere and are logged to MLflow next to the numbers.
"""

from __future__ import annotations

import csv
from pathlib import Path

from kdpipe.files import atomic_file


def _read_csv(path: Path) -> list[dict[str, float]]:
    """Numeric cells only (a multi-phase curve also has a text ``phase`` column)."""
    def number(v):
        try:
            return float(v)
        except (TypeError, ValueError):
            return None
    with path.open() as f:
        return [{k: x for k, v in row.items() if (x := number(v)) is not None} for row in csv.DictReader(f)]


def plot_curves(plots_dir: Path, names: list[str], main_metric: str, out: Path) -> None:
    """Training loss and dev ``main_metric`` against step, one line per model.  Methods' losses
    are different quantities (CE, KL at T=10, MSE of hidden states ...), so each is drawn relative
    to its own first logged value: the panel compares how fast each falls, not their sizes.
    ``names``: curve files under plots/train and plots/dev (a student's: ``<run>/seed-<seed>``,
    drawn as ``<run>``)."""
    plt = _pyplot()
    fig, (ax_loss, ax_dev) = plt.subplots(1, 2, figsize=(13, 4.5))
    for curve in names:
        train, dev = plots_dir / "train" / f"{curve}.csv", plots_dir / "dev" / f"{curve}.csv"
        name = curve.split("/seed-")[0]
        if train.exists():
            rows = [r for r in _read_csv(train) if "loss" in r]
            if rows and rows[0]["loss"]:
                ax_loss.plot([r["step"] for r in rows], [r["loss"] / rows[0]["loss"] for r in rows], label=name,
                             linewidth=1)
        if dev.exists():
            rows = _read_csv(dev)
            ax_dev.plot([r["step"] for r in rows], [r["main_metric"] for r in rows], marker="o", markersize=4,
                        label=name, linewidth=1)
    ax_loss.set(title="training loss / its first value (losses differ by method)", xlabel="step",
                ylabel="relative loss")
    ax_dev.set(title=f"dev {main_metric} (points: evaluations)", xlabel="step", ylabel=main_metric)
    for ax in (ax_loss, ax_dev):
        ax.grid(alpha=0.3)
    ax_dev.legend(fontsize=7, ncol=2, loc="best")
    _save(fig, out)


def plot_shipped_tradeoff(points: list[dict], main_metric: str, teacher_dev: float, front: list[str],
                          out: Path) -> None:
    """Dev ``main_metric`` (95 % interval as error bars) against the shipped ONNX model's batch-1
    latency.  ``points``: {name, dev, low, high, ms}.  Points are numbered and named in a side
    legend so 17 labels stay legible; the Pareto front is joined by a line; the teacher's score
    is a dashed line."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(10, 5.5))
    for i, p in enumerate(points, 1):
        err = [[p["dev"] - p["low"]], [p["high"] - p["dev"]]] if p.get("low") is not None else None
        on_front = p["name"] in front
        ax.errorbar([p["ms"]], [p["dev"]], yerr=err, fmt="o" if on_front else "s", markersize=7 if on_front else 5,
                    capsize=3, label=f"{i}  {p['name']}" + (" *" if on_front else ""))
        ax.annotate(str(i), (p["ms"], p["dev"]), textcoords="offset points", xytext=(4, 4), fontsize=8)
    front_points = sorted((p["ms"], p["dev"]) for p in points if p["name"] in front)
    if len(front_points) > 1:
        ax.plot(*zip(*front_points), linestyle="-", color="black", alpha=0.4, linewidth=1)
    ax.axhline(teacher_dev, linestyle="--", color="gray", linewidth=1, label=f"teacher {teacher_dev:.3f}")
    ax.set(title=f"dev {main_metric} vs shipped ONNX latency (batch 1); * = Pareto front",
           xlabel="ms per example, batch 1 (onnxruntime, CPU)", ylabel=f"dev {main_metric} (95% CI)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    _save(fig, out)


def plot_tradeoff(report: dict, out: Path) -> None:
    """Dev main metric against PyTorch CPU latency, one panel per batch size."""
    main = report["main_metric"]
    models = {"teacher": report["teacher"], **report["students"]}
    batches = list(report["teacher"]["latency_ms"])
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(batches), figsize=(5.5 * len(batches), 4), squeeze=False)
    for ax, batch in zip(axes[0], batches):
        for name, r in models.items():
            x, y = r["latency_ms"][batch], r["dev"][main]
            ax.scatter([x], [y], s=40)
            ax.annotate(name, (x, y), textcoords="offset points", xytext=(5, 5))
        ax.set(title=f"dev {main} vs latency ({batch.replace('_', ' ')})", xlabel="ms (PyTorch, CPU)",
               ylabel=main)
        ax.grid(alpha=0.3)
    _save(fig, out)


def _pyplot():
    """matplotlib's pyplot on the headless Agg backend (stages run without a display), chosen
    here rather than at import so that importing this module changes no process-wide setting."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _save(fig, out: Path) -> None:
    fig.tight_layout()
    with atomic_file(out) as tmp:
        fig.savefig(tmp, dpi=110)
    _pyplot().close(fig)
