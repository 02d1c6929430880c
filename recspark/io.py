"""Reading raw inputs: JSON Lines (plain or gzip) or Parquet, one row per input record with
its unchanged text (``raw``) and ``source_file``. Used by stage ``run`` functions only."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from functools import reduce
from typing import Any, Literal

from py4j.protocol import Py4JJavaError
from pyspark.errors import PySparkException
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import StructType

from recspark import schema as S
from recspark.errors import InputError

Format = Literal["auto", "jsonl", "parquet"]


def hadoop_path(spark: SparkSession, path: str) -> tuple[Any, Any]:
    """The Hadoop ``(FileSystem, Path)`` for ``path`` (any scheme the cluster supports)."""
    jvm: Any = spark.sparkContext._jvm
    hpath = jvm.org.apache.hadoop.fs.Path(path)
    return hpath.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration()), hpath


def write_bytes(spark: SparkSession, path: str, data: bytes) -> None:
    """Write a small file (a manifest, a report, a plot) through Hadoop, overwriting it."""
    fs, hpath = hadoop_path(spark, path)
    stream = fs.create(hpath, True)
    try:
        stream.write(bytearray(data))
    finally:
        stream.close()


def write_text(spark: SparkSession, path: str, text: str) -> None:
    """Write a small text file through Hadoop (UTF-8), overwriting it."""
    write_bytes(spark, path, text.encode("utf-8"))


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

    JSON Lines are read as text, so a malformed line is kept verbatim for the quarantine (only
    a line's trailing ``\\r`` and a file's leading byte-order mark are dropped: they belong to
    the file, not the record). Bytes that are not UTF-8 are read as U+FFFD, which ingest
    quarantines as ``bad_encoding``.
    Parquet rows become their JSON text (``to_json``), parsed by the same code afterwards; see
    :func:`read_parquet_raw` for files whose schemas differ.
    """
    files = list_files(spark, path)
    kind = detect_format(files, fmt)
    if kind == "jsonl":
        return jsonl_records(spark.read.option("lineSep", "\n").text(files))
    return read_parquet_raw(spark, files)


def jsonl_records(lines: DataFrame) -> DataFrame:
    """Lines of a text source (``value``, batch or streaming) as ``raw`` and ``source_file``:
    :func:`read_raw`'s records of JSON Lines."""
    # Bytes that are not UTF-8 become U+FFFD; the regex runs only on the rare lines that
    # need it (on every line it cost as much as reading the line).
    line = F.make_valid_utf8(F.col("value"))
    strip = line.startswith("\ufeff") | line.endswith("\r")
    return lines.select(
        F.when(strip, F.regexp_replace(line, "^\ufeff|\r$", "")).otherwise(line).alias(S.RAW),
        F.col("_metadata.file_path").alias(S.SOURCE_FILE),
    )


def read_stream_raw(
    spark: SparkSession, path: str, source: Literal["files", "autoloader"] = "files"
) -> DataFrame:
    """JSON Lines under ``path`` as a stream of :func:`read_raw`'s records: each file once,
    the first time a query with a given checkpoint sees it.

    Args:
        source: ``files``, Spark's file source (a folder, read recursively, or a glob); or
            ``autoloader``, Databricks Auto Loader (``cloudFiles``; only on Databricks).
    """
    if source == "autoloader":
        reader = spark.readStream.format("cloudFiles").option("cloudFiles.format", "text")
    else:
        reader = spark.readStream.format("text")
    return jsonl_records(
        reader.option("lineSep", "\n").option("recursiveFileLookup", "true").load(path)
    )


def modification_times(spark: SparkSession, files: list[str]) -> dict[str, int]:
    """Each file's modification time (ms since the epoch), by its path as listed."""
    out: dict[str, int] = {}
    for f in files:
        fs, hpath = hadoop_path(spark, f)
        out[f] = int(fs.getFileStatus(hpath).getModificationTime())
    return out


def existing(spark: SparkSession, paths: list[str]) -> list[str]:
    """The paths of ``paths`` that exist now (in their order)."""
    out: list[str] = []
    for p in paths:
        fs, hpath = hadoop_path(spark, p)
        if fs.exists(hpath):
            out.append(p)
    return out


def read_text_lines(spark: SparkSession, path: str) -> list[str]:
    """The lines of the small text files at ``path`` (a file or a folder's files, not
    recursively; none when it does not exist), in name order."""
    fs, hpath = hadoop_path(spark, path)
    if not fs.exists(hpath):
        return []
    statuses = (
        fs.listStatus(hpath) if fs.getFileStatus(hpath).isDirectory() else [fs.getFileStatus(hpath)]
    )
    jvm: Any = spark.sparkContext._jvm
    lines: list[str] = []
    for st in sorted(statuses, key=lambda s: s.getPath().getName()):
        name = st.getPath().getName()
        if st.isDirectory() or name.startswith((".", "_")):
            continue
        stream = fs.open(st.getPath())
        try:
            data = bytes(jvm.org.apache.commons.io.IOUtils.toByteArray(stream))
        finally:
            stream.close()
        lines += data.decode("utf-8").splitlines()
    return lines


_MERGE_FAILURES = ("CANNOT_MERGE_SCHEMAS", "CANNOT_MERGE_INCOMPATIBLE_DATA_TYPE")


def _as_json_records(df: DataFrame) -> DataFrame:
    return df.select(
        F.to_json(F.struct(*[F.col(c) for c in df.columns])).alias(S.RAW),
        F.col("_metadata.file_path").alias(S.SOURCE_FILE),
    )


def read_parquet_raw(spark: SparkSession, files: list[str]) -> DataFrame:
    """Parquet files as ``raw`` JSON text and ``source_file``, tolerating schema drift.

    The files' schemas are merged (``mergeSchema``), so a column that only some files have is
    kept in the raw record of those files instead of being dropped for all. When a column's
    type differs between files (``user_id`` a string in one file, a number or a struct in
    another), no merged schema exists: each group of files sharing one schema is then read
    with that schema and the groups are unioned, so every record keeps its own file's types
    and ingest's checks classify it (a struct where a string belongs is ``bad_type``).
    """
    try:
        return _as_json_records(spark.read.option("mergeSchema", "true").parquet(*files))
    except (Py4JJavaError, PySparkException) as e:
        if not any(marker in str(e) for marker in _MERGE_FAILURES):
            raise
    groups: dict[str, tuple[StructType, list[str]]] = {}
    for f in files:
        schema = spark.read.parquet(f).schema
        groups.setdefault(schema.json(), (schema, []))[1].append(f)
    parts = [
        _as_json_records(spark.read.schema(schema).parquet(*group))
        for _key, (schema, group) in sorted(groups.items())
    ]
    return reduce(DataFrame.unionByName, parts)


# Spark's failures to read an input file, most specific first, and what each one means.
_READ_FAILURES: tuple[tuple[str, str], ...] = (
    ("Unexpected end of input stream", "truncated: the compressed stream ends early"),
    ("EOFException", "truncated: the file ends early"),
    ("not a gzip file", "not gzip data"),
    ("incorrect header check", "not gzip data"),
    ("Not in GZIP format", "not gzip data"),
    ("ZipException", "corrupt compressed data"),
    ("CANNOT_READ_FILE_FOOTER", "not a Parquet file: unreadable footer"),
    ("not a Parquet file", "not a Parquet file"),
    ("PARQUET_COLUMN_DATA_TYPE_MISMATCH", "a column's type differs from the other files'"),
    ("FAILED_READ_FILE", "unreadable"),
)


@contextmanager
def input_errors(path: str) -> Iterator[None]:
    """Turn Spark's failures to read an input file (a truncated gzip, a corrupt Parquet footer)
    into one-line ``InputError`` naming the file and the cause; any other failure passes
    through."""
    try:
        yield
    except (Py4JJavaError, PySparkException) as e:
        text = str(e)
        cause = next((why for marker, why in _READ_FAILURES if marker in text), None)
        if cause is None:
            raise
        m = re.search(r"(file:|s3a?:|abfss?:|dbfs:|hdfs:)[^\s'\"]+", text)
        where = m.group(0).rstrip(".,") if m else path
        raise InputError(
            f"cannot read input file {where} ({cause}); fix or remove it and rerun"
        ) from e
