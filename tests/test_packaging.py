"""What the wheel ships: the product, not the test harness."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest

from tests.support import cluster as C

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_the_wheel_ships_the_product_without_the_test_harness(tmp_path: Path) -> None:
    wheel = C.build_wheel(ROOT, tmp_path)
    names = zipfile.ZipFile(wheel).namelist()
    modules = {n for n in names if n.endswith(".py")}
    assert "recspark/cli.py" in modules and "recspark/ingest/transforms.py" in modules
    harness = sorted(n for n in modules if not n.startswith("recspark/"))
    assert harness == [], f"the wheel ships modules outside recspark/: {harness}"
    assert not {"recspark/faults.py", "recspark/cluster.py"} & modules
