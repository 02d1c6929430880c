"""The run report of ``recspark run``: one self-contained HTML page (inline PNG plots) with the
data-quality counts of ingest, the embedding and training figures, the training curves and the
metrics of recspark against the baselines.

:func:`build_run_report` is pure (summaries, metrics and history in, HTML text out);
:func:`write_run_report` gathers what the stages wrote and saves the page as
``<files>/reports/<run_id>/run.html`` (the file location), beside evaluate's ``report.md`` and
``metrics.png``.
A stage that did not run leaves its section out.
"""

from __future__ import annotations

import base64
import html
import io
import json
import typing
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import pandas as pd

from recspark.evaluate.report import MetricRow
from recspark.storage import Locations

if TYPE_CHECKING:
    from matplotlib.figure import Figure
    from pyspark.sql import SparkSession

    from recspark.config import Config

REPORT_FILE = "run.html"
METRIC_COLUMNS: tuple[str, ...] = ("model", "metric", "k", "value")
# Baselines first, then the model under test: the bar order of every metric plot.
MODEL_ORDER: tuple[str, ...] = ("popularity", "als", "recspark")
_COLORS = {"popularity": "#7f7f7f", "als": "#ff7f0e", "recspark": "#1f77b4"}
_OTHER_COLORS = ("#2ca02c", "#d62728", "#9467bd", "#8c564b")
_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: 0.6em 0 1em; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
img { max-width: 100%; } .note { color: #666; font-size: 0.85em; }
"""


# --- small pure helpers --------------------------------------------------------------------


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


def png_bytes(fig: Figure) -> bytes:
    """The figure rendered as PNG."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return buf.getvalue()


def png_data_uri(fig: Figure) -> str:
    """The figure as a ``data:image/png;base64,...`` URI."""
    return "data:image/png;base64," + base64.b64encode(png_bytes(fig)).decode("ascii")


def _img(fig: Figure, alt: str) -> str:
    return f'<img src="{png_data_uri(fig)}" alt="{esc(alt)}">'


def _figure(width: float, height: float) -> Figure:
    """A figure outside pyplot (no global state, no backend switch: safe in notebooks)."""
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height))


def by_stage(summaries: Sequence[Mapping[str, Any]]) -> dict[str, Mapping[str, Any]]:
    """The last summary of each stage, by the summary's ``stage`` (ingest's has ``events``)."""
    out: dict[str, Mapping[str, Any]] = {}
    for s in summaries:
        stage = s.get("stage") or ("ingest" if "events" in s and "items" in s else None)
        if stage:
            out[str(stage)] = s
    return out


def ordered_models(models: Sequence[str]) -> list[str]:
    """Baselines first (popularity, als), then recspark, then any other model by name."""
    known = [m for m in MODEL_ORDER if m in models]
    return known + sorted(m for m in set(models) if m not in MODEL_ORDER)


def metric_rows(metrics: pd.DataFrame) -> list[MetricRow]:
    """``gold/metrics`` rows (``model``, ``metric``, ``k``, ``value``) as evaluate's MetricRow,
    in a stable order (metric, k, model)."""
    missing = [c for c in METRIC_COLUMNS if c not in metrics.columns]
    if missing:
        from recspark.errors import SchemaError

        raise SchemaError(
            f"metrics: expected columns {list(METRIC_COLUMNS)}, missing {missing}; "
            f"found {sorted(map(str, metrics.columns))}"
        )
    rows = [
        MetricRow(str(r.model), str(r.metric), int(r.k), float(r.value))
        for r in metrics[list(METRIC_COLUMNS)].itertuples(index=False)
    ]
    return sorted(rows, key=lambda r: (r.metric, r.k, r.model))


def history_frame(history: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """Training history rows (``phase``, ``epoch``, metrics) as a DataFrame sorted by phase
    (validate before final) and epoch."""
    df = pd.DataFrame([dict(h) for h in history])
    if df.empty or "epoch" not in df.columns:
        return pd.DataFrame(columns=["phase", "epoch"])
    if "phase" not in df.columns:
        df["phase"] = "train"
    order = {"validate": 0, "final": 1}
    df["_o"] = df["phase"].map(lambda p: order.get(str(p), 2))
    df = df.sort_values(["_o", "phase", "epoch"], kind="stable").drop(columns="_o")
    return df.reset_index(drop=True)


# --- figures -------------------------------------------------------------------------------


def metrics_figure(metrics: pd.DataFrame) -> Figure:
    """One bar panel per metric@k, one bar per model (baselines first, then recspark)."""
    rows = metric_rows(metrics)
    keys = list(dict.fromkeys((r.metric, r.k) for r in rows))
    models = ordered_models([r.model for r in rows])
    value = {(r.model, r.metric, r.k): r.value for r in rows}
    cols = min(4, max(1, len(keys)))
    nrows = max(1, (len(keys) + cols - 1) // cols)
    fig = _figure(3.2 * cols, 2.7 * nrows)
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
    fig = _figure(5.0 * panels, 3.2)
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
    fig = _figure(10.0, 3.0)
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


# --- sections ------------------------------------------------------------------------------


def _section(title: str, anchor: str, body: str) -> str:
    return f'<section id="{esc(anchor)}"><h2>{esc(title)}</h2>{body}</section>'


def _overview(summaries: Sequence[Mapping[str, Any]]) -> str:
    rows = [(str(s.get("stage", "")), s.get("seconds")) for s in summaries]
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
    "users", "users_without_embedding", "embed_seconds", "texts_per_second",
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
    body += _img(metrics_figure(metrics), "metrics against baselines")
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
    keys = [k for k in rec if k not in ("stage", "seconds") and not isinstance(rec[k], Mapping)]
    return _section("Recommendations", "recommend", _key_values(rec, keys))


def _configuration(settings: Mapping[str, Any]) -> str:
    from recspark.config import flatten, redact_tree

    flat = flatten(redact_tree(dict(settings)))
    rows = [(k, v) for k, v in sorted(flat.items())]
    note = '<p class="note">Secret-looking values are shown as ***.</p>'
    return _section("Configuration", "config", html_table(["key", "value"], rows) + note)


def build_run_report(
    summaries: list[dict[str, Any]],
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
        run_id: shown in the title; default: the first ``run_id`` in ``summaries``.
        title: the page title.
        settings: the run's configuration as plain data (``config.to_dict``), shown last.

    Returns:
        HTML text; every value from the inputs is escaped, plots are inline base64 PNGs.
        Sections of stages that did not run are left out. Secrets never appear: values under
        secret-looking keys and URL passwords, in the settings and the summaries alike, are
        shown as ``***`` (``config.redact_tree``).
    """
    from recspark.config import redact_tree

    summaries = [typing.cast(dict[str, Any], redact_tree(s)) for s in summaries]
    stages = by_stage(summaries)
    rid = run_id or next((str(s["run_id"]) for s in summaries if s.get("run_id")), None)
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


# --- gathering and writing (I/O) -------------------------------------------------------------


def report_path(where: Locations, run_id: str) -> str:
    """``<files>/reports/<run_id>/run.html`` (beside evaluate's report)."""
    from recspark.errors import ConfigError

    if not run_id or "/" in run_id or run_id in (".", ".."):
        raise ConfigError(f"run_id {run_id!r} cannot name a report folder")
    return f"{where.reports(run_id)}/{REPORT_FILE}"


def read_metrics(spark: SparkSession, warehouse: str, run_id: str) -> pd.DataFrame | None:
    """The ``gold/metrics`` rows of ``run_id`` as pandas, or None when there are none."""
    from pyspark.sql import functions as F

    from recspark import tables
    from recspark.schema import RUN_ID

    if not tables.exists(spark, tables.ref(warehouse, tables.GOLD_METRICS)):
        return None
    rows = tables.read(spark, warehouse, tables.GOLD_METRICS).where(F.col(RUN_ID) == run_id)
    out = pd.DataFrame(rows.toPandas())
    return None if out.empty else out


def read_training_history(spark: SparkSession, model_dir: str) -> list[dict[str, Any]] | None:
    """The per-epoch ``history`` that training saved in ``<model_dir>/meta.json``, or None."""
    from pyspark.errors import PySparkException

    from recspark.train.loop import META_FILE

    try:
        row = spark.read.text(f"{model_dir.rstrip('/')}/{META_FILE}", wholetext=True).first()
    except PySparkException:
        return None
    if row is None:
        return None
    try:
        meta = json.loads(row[0])
    except ValueError:
        return None
    history = meta.get("history") if isinstance(meta, dict) else None
    return [dict(h) for h in history] if isinstance(history, list) else None


def write_run_report(spark: SparkSession, cfg: Config, summaries: list[dict[str, Any]]) -> str:
    """Gather the run's metrics and training history, write the HTML report, return its path.

    Metrics are the ``gold/metrics`` rows of ``cfg.run_id`` (when evaluate ran); the history is
    the train summary's model's ``meta.json`` (when train ran); the configuration is shown
    with its secrets redacted.
    """
    from recspark.config import to_dict
    from recspark.io import write_text

    stages = by_stage(summaries)
    run_id = cfg.run_id or next((str(s["run_id"]) for s in summaries if s.get("run_id")), None)
    run_id = run_id or str(cfg.with_run_id().run_id)
    metrics = read_metrics(spark, cfg.warehouse, run_id) if "evaluate" in stages else None
    history = None
    train = stages.get("train")
    if train is not None and train.get("model_dir"):
        history = read_training_history(spark, str(train["model_dir"]))
    text = build_run_report(summaries, metrics, history, run_id=run_id, settings=to_dict(cfg))
    path = report_path(cfg.locations(), run_id)
    write_text(spark, path, text)
    return path
