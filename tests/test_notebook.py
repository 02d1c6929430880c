"""notebooks/quickstart.ipynb: committed without outputs, holds no logic, and runs end to end;
plus the helpers it calls (recspark.explore)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from chispa import assert_df_equality
from pyspark.sql import SparkSession
from pyspark.sql.types import (
    DoubleType,
    IntegerType,
    LongType,
    StringType,
    StructField,
    StructType,
    TimestampType,
)

from recspark import explore, tables
from recspark.errors import SchemaError

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "quickstart.ipynb"
# Logic belongs in recspark, not in notebooks: no definitions, loops or branches in a cell.
LOGIC = re.compile(r"^\s*(def|class|for|while|if|with|try|lambda)\b|\blambda\b", re.M)


def _notebook() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(NOTEBOOK.read_text(encoding="utf-8"))
    return data


def _code_cells(nb: dict[str, Any]) -> list[dict[str, Any]]:
    return [c for c in nb["cells"] if c["cell_type"] == "code"]


def _source(cell: dict[str, Any]) -> str:
    src = cell["source"]
    return "".join(src) if isinstance(src, list) else str(src)


# --- the committed notebook ----------------------------------------------------------------


def test_committed_notebook_has_no_outputs() -> None:
    import nbformat

    nb = _notebook()
    nbformat.validate(nbformat.reads(json.dumps(nb), as_version=4))
    cells = _code_cells(nb)
    assert cells
    dirty = [
        i for i, c in enumerate(cells) if c.get("outputs") or c.get("execution_count") is not None
    ]
    assert dirty == [], f"code cells with outputs or execution counts: {dirty}"
    assert nb["metadata"]["kernelspec"]["name"] == "python3"


def test_notebook_holds_no_logic_and_imports_recspark() -> None:
    sources = [_source(c) for c in _code_cells(_notebook())]
    with_logic = [s for s in sources if LOGIC.search(s)]
    assert with_logic == []
    imports = [line for s in sources for line in s.splitlines() if "import" in line]
    assert imports and all(
        re.match(r"from (recspark[\w.]*|pathlib) import ", line) for line in imports
    ), imports
    text = "\n".join(sources)
    for call in ("load_config(", "run_stages(", "build_session(", "user_history_and_recs("):
        assert call in text


def test_notebook_checker_catches_logic() -> None:
    assert LOGIC.search("x = 1\nfor r in rows:\n    pass")
    assert LOGIC.search("f = lambda x: x")
    assert not LOGIC.search("explore.table_counts(spark, cfg.warehouse)")


def _kernel_env(tmp_path: Path) -> dict[str, str]:
    """The environment in which this interpreter's ``python3`` kernel is found (installed
    into a temporary prefix when Jupyter does not know it)."""
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    env = dict(os.environ)
    try:
        spec = KernelSpecManager().get_kernel_spec("python3")
        if spec.argv[0] in ("python", "python3", sys.executable):
            return env
    except NoSuchKernel:
        pass
    prefix = tmp_path / "kernel-prefix"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "ipykernel",
            "install",
            "--prefix",
            str(prefix),
            "--name",
            "python3",
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    env["JUPYTER_PATH"] = os.pathsep.join(
        p for p in (str(prefix / "share" / "jupyter"), env.get("JUPYTER_PATH")) if p
    )
    return env


@pytest.mark.slow
def test_notebook_runs_end_to_end(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import nbformat
    from nbclient import NotebookClient

    for key, value in _kernel_env(tmp_path).items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("PYARROW_IGNORE_TIMEZONE", "1")
    # PySpark's Python workers run $PYSPARK_PYTHON (default: python3 on PATH): it ignores
    # spark.pyspark.python when the driver is a Python process. As in test_embed/test_train.
    monkeypatch.setenv("PYSPARK_PYTHON", sys.executable)
    work = tmp_path / "work"
    work.mkdir()
    nb = nbformat.read(str(NOTEBOOK), as_version=4)
    client = NotebookClient(
        nb,
        timeout=1800,  # per cell: the pipeline cell takes minutes on two shared cores
        kernel_name="python3",
        resources={"metadata": {"path": str(work)}},
    )
    client.execute()  # raises CellExecutionError naming the failing cell

    demo = work / "quickstart_demo"
    reports = list((demo / "warehouse" / "reports").glob("*/run.html"))
    assert len(reports) == 1
    page = reports[0].read_text(encoding="utf-8")
    for section in ("quality", "embed", "train", "recommend", "metrics"):
        assert f'<section id="{section}">' in page
    outputs = {_source(c): c["outputs"] for c in nb.cells if c.cell_type == "code"}
    figure = outputs["metrics_figure(metrics)"]
    assert any("image/png" in o.get("data", {}) for o in figure)
    recs = outputs["recommendations"]
    html = "".join(o.get("data", {}).get("text/html", "") for o in recs)
    assert "reason" in html and "<td>" in html


# --- recspark.explore ----------------------------------------------------------------------

INTER_SCHEMA = StructType(
    [
        StructField("user_id", StringType()),
        StructField("item_id", StringType()),
        StructField("weight", DoubleType()),
        StructField("count", LongType()),
        StructField("first_ts", TimestampType()),
        StructField("last_ts", TimestampType()),
    ]
)
ITEMS_SCHEMA = StructType(
    [
        StructField("item_id", StringType()),
        StructField("title", StringType()),
        StructField("category", StringType()),
    ]
)
RECS_SCHEMA = StructType(
    [
        StructField("user_id", StringType()),
        StructField("rank", IntegerType()),
        StructField("item_id", StringType()),
        StructField("score", DoubleType()),
        StructField("reason", StringType()),
    ]
)
T1, T2, T3 = datetime(2026, 1, 1), datetime(2026, 1, 2), datetime(2026, 1, 3)
INTER = [
    ("u1", "i1", 2.0, 1, T1, T1),
    ("u1", "i2", 8.0, 2, T1, T3),
    ("u1", "i9", 1.0, 1, T2, T2),  # not in the catalog
    ("u2", "i1", 1.0, 1, T1, T1),
    ("u2", "i3", 1.0, 1, T1, T1),
    ("u3", "i1", 1.0, 1, T1, T1),
    ("u3", "i2", 1.0, 1, T1, T1),
]
ITEMS = [("i1", "One", "a"), ("i2", "Two", "b"), ("i3", "Three", None), ("i4", "Four", "a")]
RECS = [
    ("u1", 2, "i4", 0.5, "because you liked Two"),
    ("u1", 1, "i3", 0.9, "popular"),
    ("u2", 1, "i2", 0.7, "x"),
]


def test_history_joins_titles_for_one_user(spark: SparkSession) -> None:
    out = explore.history(
        spark.createDataFrame(INTER, INTER_SCHEMA), spark.createDataFrame(ITEMS, ITEMS_SCHEMA), "u1"
    )
    expected = spark.createDataFrame(
        [
            ("i1", "One", "a", 2.0, 1, T1),
            ("i2", "Two", "b", 8.0, 2, T3),
            ("i9", None, None, 1.0, 1, T2),
        ],
        StructType(
            [
                StructField("item_id", StringType()),
                StructField("title", StringType()),
                StructField("category", StringType()),
                StructField("weight", DoubleType()),
                StructField("count", LongType()),
                StructField("last_ts", TimestampType()),
            ]
        ),
    )
    assert_df_equality(out, expected, ignore_row_order=True, ignore_nullable=True)


def test_recommendations_join_titles_for_one_user(spark: SparkSession) -> None:
    out = explore.recommendations(
        spark.createDataFrame(RECS, RECS_SCHEMA), spark.createDataFrame(ITEMS, ITEMS_SCHEMA), "u1"
    )
    expected = spark.createDataFrame(
        [
            (1, "i3", "Three", None, 0.9, "popular"),
            (2, "i4", "Four", "a", 0.5, "because you liked Two"),
        ],
        StructType(
            [
                StructField("rank", IntegerType()),
                StructField("item_id", StringType()),
                StructField("title", StringType()),
                StructField("category", StringType()),
                StructField("score", DoubleType()),
                StructField("reason", StringType()),
            ]
        ),
    )
    assert_df_equality(out, expected, ignore_row_order=True, ignore_nullable=True)


def test_missing_columns_are_named(spark: SparkSession) -> None:
    items = spark.createDataFrame(ITEMS, ITEMS_SCHEMA).drop("title")
    with pytest.raises(SchemaError, match=r"items: .*missing \['title'\]"):
        explore.recommendations(spark.createDataFrame(RECS, RECS_SCHEMA), items, "u1")


def test_warehouse_helpers(spark: SparkSession, warehouse: str) -> None:
    tables.overwrite(
        spark.createDataFrame(INTER, INTER_SCHEMA), warehouse, tables.SILVER_INTERACTIONS
    )
    tables.overwrite(spark.createDataFrame(ITEMS, ITEMS_SCHEMA), warehouse, tables.SILVER_ITEMS)
    tables.overwrite(
        spark.createDataFrame(RECS, RECS_SCHEMA), warehouse, tables.GOLD_RECOMMENDATIONS
    )

    # u1 has 3 items; u2 and u3 have 2 (tie broken by id, not reached).
    assert explore.example_user(spark, warehouse) == "u1"
    hist, recs = explore.user_history_and_recs(spark, warehouse, "u1")
    assert list(hist["item_id"]) == ["i2", "i9", "i1"]  # newest first
    assert list(recs["rank"]) == [1, 2]
    assert list(recs["title"]) == ["Three", "Four"]
    assert list(recs["reason"]) == ["popular", "because you liked Two"]

    counts = explore.table_counts(spark, warehouse)
    assert counts.to_dict("records") == [
        {"table": tables.SILVER_ITEMS, "rows": 4},
        {"table": tables.SILVER_INTERACTIONS, "rows": 7},
        {"table": tables.GOLD_RECOMMENDATIONS, "rows": 3},
    ]
    assert len(explore.table_preview(spark, warehouse, tables.SILVER_ITEMS, n=2)) == 2


def test_example_user_breaks_ties_by_id(spark: SparkSession, warehouse: str) -> None:
    rows = [r for r in INTER if r[0] != "u1"]
    tables.overwrite(
        spark.createDataFrame(rows, INTER_SCHEMA), warehouse, tables.SILVER_INTERACTIONS
    )
    assert explore.example_user(spark, warehouse) == "u2"
