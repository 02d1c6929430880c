"""The evaluation report: a markdown table of every metric per model and a plot against the
baselines, written under ``<files>/reports/<run_id>/`` (see :mod:`recspark.storage`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from recspark.storage import Locations, local_path


@dataclass(frozen=True)
class MetricRow:
    """One metric of one model at one cut-off."""

    model: str
    metric: str
    k: int
    value: float


def report_dir(where: Locations, run_id: str) -> Path | None:
    """Where the report goes; None when the file location is not a file path (s3a:, ...)."""
    local = local_path(where.reports(run_id))
    return Path(local) if local is not None else None


def _label(metric: str, k: int) -> str:
    return f"{metric}@{k}"


def markdown_table(rows: Sequence[MetricRow], models: Sequence[str]) -> str:
    """A markdown table: one line per metric@k, one column per model (pure)."""
    keys: list[tuple[str, int]] = []
    for r in rows:
        if (r.metric, r.k) not in keys:
            keys.append((r.metric, r.k))
    value = {(r.model, r.metric, r.k): r.value for r in rows}
    lines = [
        "| metric | " + " | ".join(models) + " |",
        "| --- | " + " | ".join("---:" for _ in models) + " |",
    ]
    for metric, k in keys:
        cells = []
        for m in models:
            v = value.get((m, metric, k))
            cells.append("" if v is None else f"{v:.4f}")
        lines.append(f"| {_label(metric, k)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_report(
    rows: Sequence[MetricRow],
    models: Sequence[str],
    out_dir: Path,
    *,
    title: str,
    notes: Sequence[str] = (),
) -> dict[str, str]:
    """Write ``report.md`` and ``metrics.png`` (one panel per metric, a bar per model).

    Returns:
        the written paths, by kind.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    keys: list[tuple[str, int]] = []
    for r in rows:
        if (r.metric, r.k) not in keys:
            keys.append((r.metric, r.k))
    value = {(r.model, r.metric, r.k): r.value for r in rows}
    cols = min(4, max(1, len(keys)))
    nrows = (len(keys) + cols - 1) // cols
    fig, axes = plt.subplots(nrows, cols, figsize=(3.2 * cols, 2.6 * nrows), squeeze=False)
    colors = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd"]
    for ax, (metric, k) in zip(axes.flat, keys, strict=False):
        vals = [value.get((m, metric, k), 0.0) for m in models]
        ax.bar(
            range(len(models)), vals, color=[colors[i % len(colors)] for i in range(len(models))]
        )
        ax.set_xticks(range(len(models)))
        ax.set_xticklabels(models, rotation=20, fontsize=8)
        ax.set_title(_label(metric, k), fontsize=9)
        ax.tick_params(axis="y", labelsize=7)
    for ax in list(axes.flat)[len(keys) :]:
        ax.axis("off")
    fig.tight_layout()
    png = out_dir / "metrics.png"
    fig.savefig(png, dpi=110)
    plt.close(fig)
    md = out_dir / "report.md"
    text = [f"# {title}", "", markdown_table(rows, models), "![metrics](metrics.png)", ""]
    text += [f"- {n}" for n in notes]
    md.write_text("\n".join(text) + "\n", encoding="utf-8")
    return {"markdown": str(md), "plot": str(png)}
