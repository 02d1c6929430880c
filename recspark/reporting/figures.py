"""The report figures: pure functions from plain data to matplotlib figures (outside pyplot:
no global state, no backend switch, safe in notebooks and on servers)."""

from __future__ import annotations

import base64
import io
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import pandas as pd

from recspark.reporting.data import MetricRow, metric_rows, ordered_models

if TYPE_CHECKING:
    from matplotlib.figure import Figure

_COLORS = {"popularity": "#7f7f7f", "content": "#8c564b", "als": "#ff7f0e", "recspark": "#1f77b4"}
_OTHER_COLORS = ("#2ca02c", "#d62728", "#9467bd", "#e377c2")


def png_bytes(fig: Figure) -> bytes:
    """The figure rendered as PNG."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return buf.getvalue()


def png_data_uri(fig: Figure) -> str:
    """The figure as a ``data:image/png;base64,...`` URI."""
    return "data:image/png;base64," + base64.b64encode(png_bytes(fig)).decode("ascii")


def new_figure(width: float, height: float) -> Figure:
    """A figure outside pyplot (no global state, no backend switch: safe in notebooks)."""
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height))


def metrics_figure(metrics: Sequence[MetricRow] | pd.DataFrame) -> Figure:
    """One bar panel per metric@k, one bar per model (baselines first, then recspark).

    Args:
        metrics: metric rows, or ``gold/metrics`` rows as pandas (``model``, ``metric``,
            ``k``, ``value``).
    """
    rows = metric_rows(metrics) if isinstance(metrics, pd.DataFrame) else list(metrics)
    keys = list(dict.fromkeys((r.metric, r.k) for r in rows))
    models = ordered_models([r.model for r in rows])
    value = {(r.model, r.metric, r.k): r.value for r in rows}
    cols = min(4, max(1, len(keys)))
    nrows = max(1, (len(keys) + cols - 1) // cols)
    fig = new_figure(3.2 * cols, 2.7 * nrows)
    axes = fig.subplots(nrows, cols, squeeze=False)
    colors = [_COLORS.get(m, _OTHER_COLORS[i % len(_OTHER_COLORS)]) for i, m in enumerate(models)]
    for ax, (metric, k) in zip(axes.flat, keys, strict=False):
        vals = [value.get((m, metric, k), 0.0) for m in models]
        ax.bar(range(len(models)), vals, color=colors)
        ax.set_xticks(range(len(models)))
        ax.set_xticklabels(models, rotation=20, fontsize=8)
        ax.set_title(f"{metric}@{k}", fontsize=9)
        ax.tick_params(axis="y", labelsize=7)
    for ax in list(axes.flat)[len(keys) :]:
        ax.axis("off")
    fig.tight_layout()
    return fig


def training_figure(history: pd.DataFrame) -> Figure:
    """Training loss per epoch (one line per phase) and the validation metrics per epoch."""
    val_cols = [c for c in history.columns if str(c).startswith("val_")]
    panels = 2 if val_cols else 1
    fig = new_figure(5.0 * panels, 3.2)
    axes = fig.subplots(1, panels, squeeze=False)
    ax = axes[0][0]
    if "train_loss" in history.columns:
        for phase, part in history.groupby("phase", sort=False):
            part = part.dropna(subset=["train_loss"])
            ax.plot(part["epoch"], part["train_loss"], marker="o", label=str(phase))
        ax.legend(fontsize=8)
    ax.set_title("training loss", fontsize=9)
    ax.set_xlabel("epoch", fontsize=8)
    if val_cols:
        ax2 = axes[0][1]
        for col in val_cols:
            part = history.dropna(subset=[col])
            ax2.plot(part["epoch"], part[col], marker="o", label=str(col))
        ax2.legend(fontsize=8)
        ax2.set_title("validation", fontsize=9)
        ax2.set_xlabel("epoch", fontsize=8)
    from matplotlib.ticker import MaxNLocator

    for a in axes.flat:
        a.tick_params(labelsize=7)
        a.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.tight_layout()
    return fig


def quality_figure(ingest: Mapping[str, Any]) -> Figure:
    """Per input: accepted / quarantined / duplicates (left), quarantine reasons (right)."""
    inputs = [n for n in ("events", "items") if isinstance(ingest.get(n), Mapping)]
    fig = new_figure(10.0, 3.0)
    axes = fig.subplots(1, 2, squeeze=False)
    ax = axes[0][0]
    bottoms = [0.0] * len(inputs)
    for status, color in (
        ("accepted", "#2ca02c"),
        ("quarantined", "#d62728"),
        ("duplicates", "#ff7f0e"),
    ):
        vals = [float(ingest[n].get(status, 0) or 0) for n in inputs]
        ax.barh(inputs, vals, left=bottoms, color=color, label=status)
        bottoms = [b + v for b, v in zip(bottoms, vals, strict=True)]
    ax.legend(fontsize=8)
    ax.set_title("records read", fontsize=9)
    ax2 = axes[0][1]
    labels: list[str] = []
    counts: list[float] = []
    for n in inputs:
        for reason, c in sorted((ingest[n].get("quarantined_by_reason") or {}).items()):
            labels.append(f"{n}: {reason}")
            counts.append(float(c))
    if labels:
        ax2.barh(labels, counts, color="#d62728")
    else:
        ax2.text(0.5, 0.5, "nothing quarantined", ha="center", va="center")
        ax2.set_yticks([])
    ax2.set_title("quarantined by reason", fontsize=9)
    for a in axes.flat:
        a.tick_params(labelsize=7)
    fig.tight_layout()
    return fig
