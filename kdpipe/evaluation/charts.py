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
    """Training loss and dev ``main_metric`` against step, one line per model."""
    plt = _pyplot()
    fig, (ax_loss, ax_dev) = plt.subplots(1, 2, figsize=(11, 4))
    for name in names:
        train, dev = plots_dir / "train" / f"{name}.csv", plots_dir / "dev" / f"{name}.csv"
        if train.exists():
            rows = _read_csv(train)
            ax_loss.plot([r["step"] for r in rows], [r["loss"] for r in rows], label=name)
        if dev.exists():
            rows = _read_csv(dev)
            ax_dev.plot([r["step"] for r in rows], [r["main_metric"] for r in rows], marker="o", label=name)
    ax_loss.set(title="training loss", xlabel="step", ylabel="loss")
    ax_dev.set(title=f"dev {main_metric}", xlabel="step", ylabel=main_metric)
    for ax in (ax_loss, ax_dev):
        ax.grid(alpha=0.3)
        ax.legend()
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
