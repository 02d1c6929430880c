"""The run report: pure HTML building (sections, plots, escaping) and the writer."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from pyspark.sql import SparkSession

from recspark import tables
from recspark.config import load_config
from recspark.errors import ConfigError, SchemaError
from recspark.reporting.data import MetricRow, by_stage, history_frame, metric_rows, ordered_models
from recspark.reporting.page import build_run_report, esc, fmt, html_table
from recspark.reporting.writer import report_path, write_run_report
from recspark.schema import METRICS_SCHEMA
from recspark.storage import locations
from recspark.summary import StageSummary

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

INGEST: dict[str, Any] = {
    "stage": "ingest",
    "run_id": "r1",
    "items": {
        "input": "items",
        "read": 12,
        "accepted": 10,
        "quarantined": 2,
        "duplicates": 0,
        "inserted": 10,
        "quarantined_by_reason": {"missing_field": 2},
    },
    "events": {
        "input": "events",
        "read": 100,
        "accepted": 90,
        "quarantined": 7,
        "duplicates": 3,
        "inserted": 90,
        "quarantined_by_reason": {"bad_timestamp": 4, "malformed_json": 3},
    },
    "seconds": 3.5,
}
EMBED: dict[str, Any] = {
    "stage": "embed",
    "model_name": "all-MiniLM-L6-v2",
    "items_total": 10,
    "items_embedded": 9,
    "items_unchanged": 1,
    "items_removed": 0,
    "users": 20,
    "embed_seconds": 1.5,
    "texts_per_second": 6.0,
    "seconds": 4.0,
}
TRAIN: dict[str, Any] = {
    "stage": "train",
    "model_version": "v-abc",
    "model_dir": "/nowhere/models/v-abc",
    "metrics": {"best_epoch": 2.0, "val_ndcg_at_10": 0.25, "samples_per_sec": 1234.5},
    "launcher": "local",
    "seconds": 9.0,
}
RECOMMEND: dict[str, Any] = {"stage": "recommend", "run_id": "r1", "rows": 50, "users": 10}
EVALUATE: dict[str, Any] = {
    "stage": "evaluate",
    "run_id": "r1",
    "split": {"train": 80, "test": 20},
    "model_versions": {"als": "als-rank8-reg0.1"},
    "report": "/wh/reports/r1/report.md",
}
HISTORY: list[dict[str, Any]] = [
    {"phase": "final", "epoch": 1, "train_loss": 2.0},
    {"phase": "validate", "epoch": 2, "train_loss": 2.5, "val_ndcg_at_10": 0.2},
    {"phase": "validate", "epoch": 1, "train_loss": 3.0, "val_ndcg_at_10": 0.1},
]


def _summaries(*stages: dict[str, Any]) -> list[StageSummary]:
    """Summaries as ``cli.run_stages`` returns them, from plain dicts with a ``stage`` key."""
    return [
        StageSummary.of(d["stage"], d.get("run_id", "r1"), d.get("seconds", 1.0), d) for d in stages
    ]


def metrics_pdf() -> pd.DataFrame:
    rows = [
        ("recspark", "ndcg", 10, 0.30),
        ("popularity", "ndcg", 10, 0.10),
        ("als", "ndcg", 10, 0.20),
        ("recspark", "recall", 10, 0.40),
        ("popularity", "recall", 10, 0.15),
        ("als", "recall", 10, 0.25),
    ]
    return pd.DataFrame(rows, columns=["model", "metric", "k", "value"])


def images(page: str) -> dict[str, bytes]:
    """alt text -> decoded PNG bytes of every inline image."""
    found = re.findall(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)" alt="([^"]*)">', page)
    return {alt: base64.b64decode(data) for data, alt in found}


def section_ids(page: str) -> list[str]:
    return re.findall(r'<section id="([^"]+)">', page)


def test_full_report_holds_every_section_and_plot() -> None:
    page = build_run_report(
        _summaries(INGEST, EMBED, TRAIN, RECOMMEND, EVALUATE), metrics_pdf(), HISTORY
    )
    assert page.startswith("<!DOCTYPE html>")
    assert section_ids(page) == ["stages", "quality", "embed", "train", "recommend", "metrics"]
    imgs = images(page)
    assert set(imgs) == {"data quality", "training curves", "metrics against baselines"}
    assert all(b.startswith(PNG_MAGIC) for b in imgs.values())
    assert "run r1" in page  # the run id from the summaries
    # Data quality: the counts, the reasons and the reconciliation check.
    assert '<td>events</td><td class="num">100</td><td class="num">90</td>' in page
    assert '<td>bad_timestamp</td><td class="num">4</td>' in page
    assert page.count("<td>yes</td>") == 2  # both inputs balance
    assert "<td>NO</td>" not in page
    # Embedding and training figures.
    assert '<td>texts_per_second</td><td class="num">6</td>' in page
    assert '<td>samples_per_sec</td><td class="num">1,234.5</td>' in page
    assert "<td>model_version</td><td>v-abc</td>" in page
    # Metrics table: baselines first, then recspark.
    assert "<th>metric</th><th>popularity</th><th>als</th><th>recspark</th>" in page
    assert (
        '<td>ndcg@10</td><td class="num">0.1000</td><td class="num">0.2000</td>'
        '<td class="num">0.3000</td>' in page
    )
    assert "/wh/reports/r1/report.md" in page
    # No external resource: the page stands alone.
    assert not re.search(r'(src|href)="(?!data:)', page)


def test_secrets_never_reach_the_report() -> None:
    settings = {
        "warehouse": "abfss://c@acct.dfs.core.windows.net/wh",
        "spark": {
            "conf": {
                "spark.hadoop.fs.s3a.secret.key": "S3CRET-1",
                "spark.hadoop.fs.azure.account.key.acct.dfs.core.windows.net": "S3CRET-2",
                "spark.sql.shuffle.partitions": "8",
            }
        },
        "mlflow": {"tracking_uri": "https://me:S3CRET-3@mlflow.example:5000"},
    }
    train = {**TRAIN, "model_dir": "s3a://me:S3CRET-4@bucket/models/v"}
    page = build_run_report(_summaries(INGEST, train), None, None, settings=settings)
    assert "S3CRET" not in page
    assert section_ids(page)[-1] == "config"
    assert "<td>spark.conf.spark.hadoop.fs.s3a.secret.key</td><td>***</td>" in page
    assert "<td>spark.conf.spark.sql.shuffle.partitions</td><td>8</td>" in page
    assert "https://me:***@mlflow.example:5000" in page
    assert "<td>warehouse</td><td>abfss://c@acct.dfs.core.windows.net/wh</td>" in page


def test_reconciliation_failure_is_flagged() -> None:
    bad = json.loads(json.dumps(INGEST))
    bad["events"]["duplicates"] = 2  # 90 + 7 + 2 != 100
    page = build_run_report(_summaries(bad), None, None)
    assert "<td>NO</td>" in page


def test_missing_stages_leave_their_sections_out() -> None:
    page = build_run_report(_summaries(INGEST), None, None)
    assert section_ids(page) == ["stages", "quality"]
    assert set(images(page)) == {"data quality"}

    # train without history: figures only
    page = build_run_report(_summaries(EMBED, TRAIN), None, None)
    assert section_ids(page) == ["stages", "embed", "train"]
    assert images(page) == {}

    page = build_run_report(_summaries(), metrics_pdf(), None)
    assert section_ids(page) == ["metrics"]

    page = build_run_report(
        _summaries(), pd.DataFrame(columns=["model", "metric", "k", "value"]), []
    )
    assert section_ids(page) == []


def test_every_text_is_escaped() -> None:
    evil = "<script>alert('x')</script>"
    ingest = json.loads(json.dumps(INGEST))
    ingest["events"]["quarantined_by_reason"] = {evil: 7}
    embed = {**EMBED, "model_name": evil}
    metrics = metrics_pdf()
    metrics.loc[0, "model"] = evil
    page = build_run_report(
        _summaries(ingest, embed, {**EVALUATE, "report": evil}), metrics, None, title=f"t {evil}"
    )
    assert "<script>" not in page
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in page
    assert esc('a"b<c>&') == "a&quot;b&lt;c&gt;&amp;"
    assert esc(None) == ""


def test_html_table_formats_and_aligns() -> None:
    out = html_table(["a", "b"], [["x<y", 1234], [None, 0.5], [True, float("nan")]])
    assert out == (
        "<table><tr><th>a</th><th>b</th></tr>"
        '<tr><td>x&lt;y</td><td class="num">1,234</td></tr>'
        '<tr><td></td><td class="num">0.5000</td></tr>'
        '<tr><td>True</td><td class="num">nan</td></tr></table>'
    )
    assert fmt(3.0) == "3"
    assert fmt(12345.678) == "12,345.7"
    assert fmt({"b": 1, "a": 2}) == '{"a": 2, "b": 1}'


def test_helpers_order_and_validate() -> None:
    assert ordered_models(["recspark", "zeta", "popularity", "als", "alpha"]) == [
        "popularity",
        "als",
        "recspark",
        "alpha",
        "zeta",
    ]
    assert metric_rows(metrics_pdf())[0] == MetricRow("als", "ndcg", 10, 0.2)
    with pytest.raises(SchemaError, match=r"missing \['value'\]"):
        metric_rows(pd.DataFrame({"model": [], "metric": [], "k": []}))
    hist = history_frame(HISTORY)
    assert list(zip(hist["phase"], hist["epoch"], strict=True)) == [
        ("validate", 1),
        ("validate", 2),
        ("final", 1),
    ]
    assert by_stage(_summaries({"stage": "a", "x": 1}, {"stage": "a", "x": 2}))["a"]["x"] == 2
    assert report_path(locations("s3a://b/wh/", None), "r1") == "s3a://b/wh/reports/r1/run.html"
    volume = locations("c.s", "/Volumes/c/s/v")
    assert report_path(volume, "r1") == "/Volumes/c/s/v/reports/r1/run.html"
    with pytest.raises(ConfigError):
        report_path(locations("wh", None), "../x")


def test_write_run_report_gathers_metrics_and_history(
    spark: SparkSession, warehouse: str, tmp_path: Path
) -> None:
    from datetime import UTC, datetime

    now = datetime(2026, 1, 1, tzinfo=UTC)
    rows = [
        ("r1", "recspark", "ndcg", 10, 0.3, "v", now),
        ("r1", "popularity", "ndcg", 10, 0.1, "popularity", now),
        ("r0", "recspark", "ndcg", 10, 0.9, "v", now),  # another run: left out
    ]
    tables.overwrite(spark.createDataFrame(rows, METRICS_SCHEMA), warehouse, tables.GOLD_METRICS)
    model_dir = tmp_path / "models" / "v"
    model_dir.mkdir(parents=True)
    (model_dir / "meta.json").write_text(json.dumps({"history": HISTORY}))
    secret = "spark.conf.spark.hadoop.fs.s3a.secret.key=XYZ-123"
    cfg = load_config(None, [f"warehouse={warehouse}", "run_id=r1", secret])
    summaries = _summaries(INGEST, {**TRAIN, "model_dir": str(model_dir)}, EVALUATE)

    path = write_run_report(spark, cfg, summaries)

    assert path == f"{warehouse}/reports/r1/run.html"
    page = Path(path).read_text(encoding="utf-8")
    assert section_ids(page) == ["stages", "quality", "train", "metrics", "config"]
    assert "XYZ-123" not in page and "<td>run_id</td><td>r1</td>" in page
    assert set(images(page)) == {"data quality", "training curves", "metrics against baselines"}
    metrics_section = page.split('<section id="metrics">')[1].split("</section>")[0]
    assert "0.9000" not in metrics_section  # run r0's metric
    assert '<td>ndcg@10</td><td class="num">0.1000</td><td class="num">0.3000</td>' in page
    assert '<td>validate</td><td class="num">2</td>' in page  # the history table


def test_write_run_report_without_evaluate_or_model(spark: SparkSession, warehouse: str) -> None:
    cfg = load_config(None, [f"warehouse={warehouse}", "run_id=r2"])
    path = write_run_report(spark, cfg, _summaries(EMBED, TRAIN))  # model_dir does not exist
    page = Path(path).read_text(encoding="utf-8")
    assert section_ids(page) == ["stages", "embed", "train", "config"]
    assert images(page) == {}


def test_figures_have_one_panel_per_metric_and_curve() -> None:
    from recspark.reporting.figures import metrics_figure, training_figure

    fig = metrics_figure(metrics_pdf())
    titles = [ax.get_title() for ax in fig.axes if ax.axison]
    assert titles == ["ndcg@10", "recall@10"]
    bars = [p.get_height() for p in fig.axes[0].patches]
    assert bars == pytest.approx([0.10, 0.20, 0.30])  # popularity, als, recspark

    fig = training_figure(history_frame(HISTORY))
    loss, valid = fig.axes
    lines = {ln.get_label(): list(ln.get_ydata()) for ln in loss.get_lines()}
    assert lines == {"validate": [3.0, 2.5], "final": [2.0]}
    assert [ln.get_label() for ln in valid.get_lines()] == ["val_ndcg_at_10"]
    assert len(training_figure(history_frame([{"epoch": 1, "train_loss": 1.0}])).axes) == 1


def test_a_stage_summary_owns_its_name_run_and_seconds() -> None:
    s = StageSummary.of("ingest", "r2", 3.14159, {"stage": "x", "run_id": "r0", "read": 5})
    assert (s.stage, s.run_id, s.seconds, dict(s.figures)) == ("ingest", "r2", 3.14, {"read": 5})
    assert s.to_dict() == {"read": 5, "stage": "ingest", "run_id": "r2", "seconds": 3.14}
    assert json.loads(s.to_json()) == s.to_dict()
    with pytest.raises(TypeError):
        s.figures["read"] = 6  # type: ignore[index]
    with pytest.raises(ValueError, match="seconds"):
        StageSummary("train", "r2", 1.0, {"seconds": 2.0})
