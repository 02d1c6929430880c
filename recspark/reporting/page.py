"""The run report page: one self-contained HTML page (inline PNG plots) with the data-quality
counts of ingest, the embedding and training figures, the training curves and the metrics of
recspark against the baselines; and evaluate's markdown page. Pure: data in, text out.

A stage that did not run leaves its section out.
"""

from __future__ import annotations

import dataclasses
import html
import json
import typing
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from recspark.reporting.data import (
    MetricRow,
    by_stage,
    history_frame,
    markdown_table,
    metric_rows,
    ordered_models,
)
from recspark.reporting.figures import (
    metrics_figure,
    png_data_uri,
    quality_figure,
    training_figure,
)
from recspark.summary import StageSummary

if typing.TYPE_CHECKING:
    from matplotlib.figure import Figure

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: 0.6em 0 1em; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
img { max-width: 100%; } .note { color: #666; font-size: 0.85em; }
"""


def esc(value: Any) -> str:
    """``value`` as HTML-escaped text (quotes too); ``None`` as an empty string."""
    return "" if value is None else html.escape(str(value), quote=True)


def fmt(value: Any) -> str:
    """A compact display form of a value: thousands separators, 4 decimals below 1000."""
    if isinstance(value, bool) or value is None:
        return "" if value is None else str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if value != value:  # NaN
            return "nan"
        if value.is_integer() and abs(value) < 1e15:
            return f"{int(value):,}"
        return f"{value:,.4f}" if abs(value) < 1000 else f"{value:,.1f}"
    if isinstance(value, Mapping | list | tuple):
        return json.dumps(value, default=str, sort_keys=True)
    return str(value)


def html_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """An HTML table; every cell escaped, numbers right-aligned."""
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = []
    for row in rows:
        cells = []
        for v in row:
            num = isinstance(v, int | float) and not isinstance(v, bool)
            cls = ' class="num"' if num else ""
            cells.append(f"<td{cls}>{esc(fmt(v))}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def _img(fig: Figure, alt: str) -> str:
    return f'<img src="{png_data_uri(fig)}" alt="{esc(alt)}">'


def _section(title: str, anchor: str, body: str) -> str:
    return f'<section id="{esc(anchor)}"><h2>{esc(title)}</h2>{body}</section>'


def _overview(summaries: Sequence[StageSummary]) -> str:
    rows = [(s.stage, s.seconds) for s in summaries]
    return _section("Stages", "stages", html_table(["stage", "seconds"], rows))


def _quality(ingest: Mapping[str, Any]) -> str:
    inputs = [n for n in ("events", "items") if isinstance(ingest.get(n), Mapping)]
    if not inputs:
        return ""
    rows = []
    for n in inputs:
        s = ingest[n]
        read, acc = s.get("read"), s.get("accepted")
        quar, dup = s.get("quarantined"), s.get("duplicates")
        parts = [acc, quar, dup]
        known = read is not None and all(p is not None for p in parts)
        balanced = "yes" if known and read == sum(int(p) for p in parts if p is not None) else "NO"
        rows.append((n, read, acc, quar, dup, s.get("inserted"), balanced))
    header = ["input", "read", "accepted", "quarantined", "duplicates", "inserted",
              "read = accepted + quarantined + duplicates"]  # fmt: skip
    reasons = [
        (n, reason, int(c))
        for n in inputs
        for reason, c in sorted((ingest[n].get("quarantined_by_reason") or {}).items())
    ]
    body = html_table(header, rows)
    if reasons:
        body += html_table(["input", "reason", "records"], reasons)
    body += _img(quality_figure(ingest), "data quality")
    return _section("Data quality (ingest)", "quality", body)


_EMBED_KEYS = (
    "model_name", "items_total", "items_embedded", "items_unchanged", "items_removed",
    "users", "users_without_embedding", "embed_seconds", "texts_per_second", "users_seconds",
    "users_refresh", "users_changed",
)  # fmt: skip


def _key_values(summary: Mapping[str, Any], keys: Sequence[str]) -> str:
    rows = [(k, summary[k]) for k in keys if k in summary]
    return html_table(["figure", "value"], rows)


def _embedding(embed: Mapping[str, Any]) -> str:
    return _section("Embeddings", "embed", _key_values(embed, _EMBED_KEYS))


def _training(train: Mapping[str, Any] | None, history: pd.DataFrame | None) -> str:
    body = ""
    if train is not None:
        top = {k: train[k] for k in ("model_version", "launcher") if k in train}
        metrics = train.get("metrics") or {}
        figures = {**top, **(metrics if isinstance(metrics, Mapping) else {})}
        body += _key_values(figures, list(figures))
    if history is not None and not history.empty:
        cols = [c for c in history.columns if c not in ("phase", "epoch")]
        rows = [
            [r["phase"], int(r["epoch"]), *[_num_or_none(r[c]) for c in cols]]
            for _, r in history.iterrows()
        ]
        body += html_table(["phase", "epoch", *cols], rows)
        body += _img(training_figure(history), "training curves")
    return _section("Training", "train", body) if body else ""


def _num_or_none(v: Any) -> Any:
    if v is None or (isinstance(v, float) and v != v):
        return None
    return float(v) if isinstance(v, int | float) else v


def _metrics(metrics: pd.DataFrame, evaluate: Mapping[str, Any] | None) -> str:
    rows = metric_rows(metrics)
    if not rows:
        return ""
    models = ordered_models([r.model for r in rows])
    keys = list(dict.fromkeys((r.metric, r.k) for r in rows))
    value = {(r.model, r.metric, r.k): r.value for r in rows}
    table_rows = [
        [f"{metric}@{k}", *[value.get((m, metric, k)) for m in models]] for metric, k in keys
    ]
    body = html_table(["metric", *models], table_rows)
    body += _img(metrics_figure(metric_rows(metrics)), "metrics against baselines")
    if evaluate is not None:
        notes = []
        if evaluate.get("split"):
            notes.append(f"holdout split: {fmt(evaluate['split'])}")
        if evaluate.get("model_versions"):
            notes.append(f"model versions: {fmt(evaluate['model_versions'])}")
        if evaluate.get("report"):
            notes.append(f"evaluate report: {evaluate['report']}")
        body += "".join(f'<p class="note">{esc(n)}</p>' for n in notes)
    return _section("Metrics against baselines", "metrics", body)


def _recommend(rec: Mapping[str, Any]) -> str:
    keys = [k for k in rec if not isinstance(rec[k], Mapping)]
    return _section("Recommendations", "recommend", _key_values(rec, keys))


def _configuration(settings: Mapping[str, Any]) -> str:
    from recspark.config import flatten, redact_tree

    flat = flatten(redact_tree(dict(settings)))
    rows = [(k, v) for k, v in sorted(flat.items())]
    note = '<p class="note">Secret-looking values are shown as ***.</p>'
    return _section("Configuration", "config", html_table(["key", "value"], rows) + note)


def build_run_report(
    summaries: Sequence[StageSummary],
    metrics: pd.DataFrame | None,
    training_history: list[dict[str, Any]] | None,
    *,
    run_id: str | None = None,
    title: str = "recspark run report",
    settings: Mapping[str, Any] | None = None,
) -> str:
    """The run report as one self-contained HTML page (pure: no I/O).

    Args:
        summaries: the stage summaries of the run, as ``cli.run_stages`` returns them.
        metrics: ``gold/metrics`` rows of the run (columns ``model``, ``metric``, ``k``,
            ``value``), or None when evaluate did not run.
        training_history: the per-epoch rows of training (``phase``, ``epoch``,
            ``train_loss``, ``val_*``), or None.
        run_id: shown in the title; default: the run id of the first summary.
        title: the page title.
        settings: the run's configuration as plain data (``config.to_dict``), shown last.

    Returns:
        HTML text; every value from the inputs is escaped, plots are inline base64 PNGs.
        Sections of stages that did not run are left out. Secrets never appear: values under
        secret-looking keys and URL passwords, in the settings and the summaries alike, are
        shown as ``***`` (``config.redact_tree``).
    """
    from recspark.config import redact_tree

    summaries = [
        dataclasses.replace(s, figures=typing.cast(dict[str, Any], redact_tree(dict(s.figures))))
        for s in summaries
    ]
    stages = by_stage(summaries)
    rid = run_id or next((s.run_id for s in summaries if s.run_id), None)
    heading = f"{title} — run {rid}" if rid else title
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{esc(heading)}</title><style>{_STYLE}</style></head><body>",
        f"<h1>{esc(heading)}</h1>",
    ]
    if summaries:
        parts.append(_overview(summaries))
    if "ingest" in stages:
        parts.append(_quality(stages["ingest"]))
    if "embed" in stages:
        parts.append(_embedding(stages["embed"]))
    history = history_frame(training_history) if training_history else None
    parts.append(_training(stages.get("train"), history))
    if "recommend" in stages:
        parts.append(_recommend(stages["recommend"]))
    if metrics is not None and not metrics.empty:
        parts.append(_metrics(metrics, stages.get("evaluate")))
    if settings is not None:
        parts.append(_configuration(settings))
    parts.append("</body></html>")
    return "\n".join(p for p in parts if p) + "\n"


def evaluation_markdown(
    rows: Sequence[MetricRow], models: Sequence[str], *, title: str, notes: Sequence[str] = ()
) -> str:
    """Evaluate's ``report.md``: the metric table and the plot beside it (``metrics.png``)."""
    text = [f"# {title}", "", markdown_table(rows, models), "![metrics](metrics.png)", ""]
    text += [f"- {n}" for n in notes]
    return "\n".join(text) + "\n"
