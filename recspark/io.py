"""Reading raw inputs: JSON Lines (plain or gzip) or Parquet, one row per input record with
its unchanged text (``raw``) and ``source_file``. Used by stage ``run`` functions only."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Literal

from py4j.protocol import Py4JJavaError
from pyspark.errors import PySparkException
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from recspark import schema as S
from recspark.errors import InputError

Format = Literal["auto", "jsonl", "parquet"]
_JSON_SUFFIXES = (".jsonl", ".json", ".jsonl.gz", ".json.gz", ".ndjson", ".ndjson.gz")


def hadoop_path(spark: SparkSession, path: str) -> tuple[Any, Any]:
    """The Hadoop ``(FileSystem, Path)`` for ``path`` (any scheme the cluster supports)."""
    jvm: Any = spark.sparkContext._jvm
    hpath = jvm.org.apache.hadoop.fs.Path(path)
    return hpath.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration()), hpath


def write_text(spark: SparkSession, path: str, text: str) -> None:
    """Write a small text file (a manifest, a report) through Hadoop, overwriting it."""
    fs, hpath = hadoop_path(spark, path)
    stream = fs.create(hpath, True)
    try:
        stream.write(bytearray(text.encode("utf-8")))
    finally:
        stream.close()


def list_files(spark: SparkSession, path: str) -> list[str]:
    """Files matched by ``path`` (a file, a folder read recursively, or a glob).

    Hidden and underscore-prefixed names (``_SUCCESS``, ``.crc``) are left out, as Spark does.

    Raises:
        InputError: when nothing matches.
    """
    fs, hpath = hadoop_path(spark, path)
    statuses = fs.globStatus(hpath)
    files: list[str] = []
    for st in statuses or []:
        if st.isDirectory():
            it = fs.listFiles(st.getPath(), True)
            while it.hasNext():
                files.append(it.next().getPath().toString())
        else:
            files.append(st.getPath().toString())
    files = [f for f in files if not f.rsplit("/", 1)[-1].startswith(("_", "."))]
    if not files:
        raise InputError(f"input path {path} matches no files")
    return sorted(files)


def detect_format(files: list[str], fmt: Format) -> Literal["jsonl", "parquet"]:
    """The input format: as configured, else from the file names (all must agree)."""
    if fmt != "auto":
        return fmt
    kinds = {"parquet" if f.endswith(".parquet") else "jsonl" for f in files}
    if len(kinds) > 1:
        raise InputError(
            f"input mixes Parquet and JSON Lines files ({files[0]}, ...): set input.format"
        )
    return "parquet" if "parquet" in kinds else "jsonl"


def read_raw(spark: SparkSession, path: str, fmt: Format = "auto") -> DataFrame:
    """One row per input record: ``raw`` (the unchanged record) and ``source_file``.

    JSON Lines are read as text, so a malformed line is kept verbatim for the quarantine.
    Parquet rows become their JSON text (``to_json``), parsed by the same code afterwards.
    """
    files = list_files(spark, path)
    kind = detect_format(files, fmt)
    if kind == "jsonl":
        df = spark.read.option("lineSep", "\n").text(files)
        return df.select(
            F.regexp_replace(F.col("value"), "\r$", "").alias(S.RAW),
            F.col("_metadata.file_path").alias(S.SOURCE_FILE),
        )
    df = spark.read.parquet(*files)
    return df.select(
        F.to_json(F.struct(*[F.col(c) for c in df.columns])).alias(S.RAW),
        F.col("_metadata.file_path").alias(S.SOURCE_FILE),
    )


_READ_FAILURES = (
    "FAILED_READ_FILE",
    "EOFException",
    "ZipException",
    "Unexpected end of input stream",
    "not a Parquet file",
    "CANNOT_READ_FILE_FOOTER",
    "incorrect header check",
)


@contextmanager
def input_errors(path: str) -> Iterator[None]:
    """Turn Spark's failures to read an input file (a truncated gzip, a corrupt Parquet footer)
    into one-line ``InputError`` naming the path; any other failure passes through."""
    try:
        yield
    except (Py4JJavaError, PySparkException) as e:
        text = str(e)
        if not any(marker in text for marker in _READ_FAILURES):
            raise
        m = re.search(r"(file:|s3a?:|abfss?:|dbfs:|hdfs:)[^\s'\"]+", text)
        where = m.group(0).rstrip(".,") if m else path
        cause = next((mk for mk in _READ_FAILURES if mk in text), "unreadable")
        raise InputError(
            f"cannot read input file {where} ({cause}); fix or remove it and rerun"
        ) from e
