"""Writes the bad-input corpus beside this script (rerun after changing it; commit the files).

    .venv/bin/python tests/data/bad_inputs/make_corpus.py

- ``events/``: one folder of events files, every kind of bad record; a run over it must account
  for every record (``EXPECTED.json`` holds each file's expected outcome).
- ``items/``: the catalog of that run, with duplicate item ids across two files.
- ``stop/``: inputs that must stop a run with one clear error naming the file.
- ``parquet_drift/``: Parquet events whose column types differ between files.

The 10 MB line is not committed: tests/test_ingest_bad_files.py writes it at run time.
"""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

HERE = Path(__file__).resolve().parent


def ev(user: object, ts: object = 1709290000, **extra: object) -> str:
    """One event line with the given fields (``user``/``ts`` may be any JSON value)."""
    rec = {"user_id": user, "item_id": "i1", "event_type": "view", "event_ts": ts, **extra}
    return json.dumps(rec, separators=(",", ":"), ensure_ascii=False)


GOOD = ev("u1")
# file name -> (bytes, expected outcome of its records)
EVENTS: dict[str, tuple[bytes, dict[str, object]]] = {
    # Binary garbage: 4 newlines inside, then one good event (the original of a duplicate).
    "a_binary.jsonl": (
        bytes(range(256)) * 4 + b"\n" + GOOD.encode() + b"\n",
        {"accepted": 1, "duplicates": 0, "quarantined": {"bad_encoding": 5}},
    ),
    # Deep nesting: a whole record, and a valid event with a deep extra field (Jackson's
    # nesting limit makes both unreadable).
    "b_nested.jsonl": (
        ('{"a":' * 5000 + "1" + "}" * 5000 + "\n").encode()
        + (GOOD[:-1] + ',"extra":' + "[" * 3000 + "]" * 3000 + "}\n").encode(),
        {"accepted": 0, "duplicates": 0, "quarantined": {"malformed_json": 2}},
    ),
    # Mixed encodings in one file: UTF-8 (accepted), Latin-1 and Windows-1252 (not UTF-8).
    "c_mixed_encodings.jsonl": (
        (ev("Zoë-utf8") + "\n").encode("utf-8")
        + (ev("Zoë-latin1") + "\n").encode("latin-1")
        + (ev("€-cp1252") + "\n").encode("cp1252"),
        {"accepted": 1, "duplicates": 0, "quarantined": {"bad_encoding": 2}},
    ),
    "d_empty.jsonl": (b"", {"accepted": 0, "duplicates": 0, "quarantined": {}}),
    # CSV where JSON Lines is expected.
    "e_csv.jsonl": (
        b"user_id,item_id,event_type,event_ts\nu1,i1,view,1709290000\n",
        {"accepted": 0, "duplicates": 0, "quarantined": {"malformed_json": 2}},
    ),
    # Wrong types (gzip): a number where text belongs is fine; objects, arrays and booleans
    # where a scalar belongs are not; a value that is no number is a bad value.
    "f_types.jsonl.gz": (
        gzip.compress(
            "\n".join(
                [
                    ev(17),  # accepted: user "17"
                    ev(True),
                    ev({"id": "u3"}),
                    ev("u3", ts=True),
                    ev("u3", ts=[1709290000]),
                    ev("u3", value={"amount": 1}),
                    ev("u3", value=False),
                    ev("u3", event_id=True),
                    ev("u3", session_id=["s"]),
                    ev("u3", value="twelve"),
                    ev("u3", ts="yesterday"),
                ]
            ).encode()
            + b"\n",
            mtime=0,
        ),
        {
            "accepted": 1,
            "duplicates": 0,
            "quarantined": {"bad_type": 8, "bad_value": 1, "bad_timestamp": 1},
        },
    ),
    # NaN and Infinity (Spark reads these non-standard literals; none is accepted).
    "g_nan_infinity.jsonl": (
        (
            b'{"user_id":"u4","item_id":"i1","event_type":"rating","event_ts":1709290000,"value":NaN}\n'
            b'{"user_id":"u4","item_id":"i1","event_type":"rating","event_ts":1709290001,"value":Infinity}\n'
            b'{"user_id":"u4","item_id":"i1","event_type":"rating","event_ts":1709290002,"value":-Infinity}\n'
            b'{"user_id":"u4","item_id":"i1","event_type":"rating","event_ts":1709290003,"value":1e400}\n'
            b'{"user_id":"u4","item_id":"i1","event_type":"rating","event_ts":1709290004,"value":"NaN"}\n'
            b'{"user_id":"u4","item_id":"i1","event_type":"view","event_ts":NaN}\n'
            b'{"user_id":"u4","item_id":"i1","event_type":"view","event_ts":Infinity}\n'
            b'{"user_id":NaN,"item_id":"i1","event_type":"view","event_ts":1709290000}\n'
            b'{"user_id":"u4","item_id":"i1","event_type":"view","event_ts":INF}\n'
        ),
        {
            "accepted": 0,
            "duplicates": 0,
            "quarantined": {
                "bad_value": 5,
                "bad_timestamp": 2,
                "bad_type": 1,
                "malformed_json": 1,
            },
        },
    ),
    # A UTF-8 byte-order mark and Windows line ends: both belong to the file, not the record.
    "h_bom_crlf.jsonl": (
        ("\ufeff" + ev("u5") + "\r\n" + ev("u5", ts=1709290001) + "\r\n").encode(),
        {"accepted": 2, "duplicates": 0, "quarantined": {}},
    ),
    # UTF-16: every line holds NUL bytes (two lines of text are three records when split on
    # the byte 0x0A: the last is the high byte of the final newline).
    "i_utf16.jsonl": (
        (ev("u6") + "\n" + ev("u6", ts=1709290001) + "\n").encode("utf-16"),
        {"accepted": 0, "duplicates": 0, "quarantined": {"bad_encoding": 3}},
    ),
    # Schema drift: new fields are kept in the raw record and ignored; the same event as
    # a_binary's good line, resent with new fields, is a duplicate.
    "j_new_fields.jsonl": (
        (
            GOOD[:-1]
            + ',"browser":{"name":"x","version":[1,2]},"ab_test":null,"score":0.5}\n'
            + ev("u7", new_field="kept in raw", event_type_v2=3)
            + "\n"
        ).encode(),
        {"accepted": 1, "duplicates": 1, "quarantined": {}},
    ),
}

# The catalog of the events run: i1 twice alike (a duplicate), i2 in two versions (the later
# file wins; the other is quarantined as duplicate_item_id).
ITEMS = {
    "a.jsonl": '{"item_id":"i1","title":"One"}\n{"item_id":"i2","title":"Two"}\n',
    "b.jsonl": '{"item_id":"i1","title":" One "}\n{"item_id":"i2","title":"Two (new)"}\n',
}
ITEMS_EXPECTED = {
    "read": 4,
    "accepted": 2,
    "duplicates": 1,
    "quarantined": 1,
    "quarantined_by_reason": {"duplicate_item_id": 1},
    "titles": {"i1": "One", "i2": "Two (new)"},
}

_TRUNCATED = gzip.compress((GOOD + "\n").encode() * 5000, mtime=0)
STOP: dict[str, bytes] = {
    "truncated.jsonl.gz": _TRUNCATED[: len(_TRUNCATED) // 2],
    "not_gzip.jsonl.gz": b"this was never gzip\n" * 10,
    "corrupt.parquet": b"PAR1" + bytes(range(200)) + b"PAR1",
    "empty_catalog.jsonl": b"",
    "csv_catalog.jsonl": b"item_id,title\ni1,One\n",
}


def parquet_drift(out: Path) -> None:
    """Events whose ``user_id`` is a string, a number or a struct depending on the file, and a
    file with a column the others lack."""
    base = {"item_id": ["i1"], "event_type": ["view"], "event_ts": [1709290000]}
    tables = {
        "a_string.parquet": {"user_id": ["p1"], **base},
        "b_number.parquet": {"user_id": pa.array([7], pa.int64()), **base},
        "c_struct.parquet": {"user_id": [{"id": "p3"}], **base},
        "d_new_column.parquet": {
            "user_id": ["p4"],
            **base,
            "event_type": ["hover"],  # quarantined: its raw record keeps the new column
            "browser": ["firefox"],
        },
    }
    for name, cols in tables.items():
        pq.write_table(pa.table(cols), out / name)


def main() -> None:
    for sub in ("events", "items", "stop", "parquet_drift"):
        shutil.rmtree(HERE / sub, ignore_errors=True)
        (HERE / sub).mkdir()
    expected: dict[str, object] = {}
    for name, (data, outcome) in EVENTS.items():
        (HERE / "events" / name).write_bytes(data)
        expected[name] = outcome
    for name, text in ITEMS.items():
        (HERE / "items" / name).write_text(text, encoding="utf-8")
    for name, data in STOP.items():
        (HERE / "stop" / name).write_bytes(data)
    parquet_drift(HERE / "parquet_drift")
    doc = {"events": expected, "items": ITEMS_EXPECTED}
    (HERE / "EXPECTED.json").write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
