"""Delta Lake jars: resolved once from Maven Central into a cache, then passed as local files.

Resolution tries Ivy first (as ``configure_spark_with_delta_pip`` does, in a child process with a
time limit so that it can never hang the caller), then ``mvn dependency:copy``. Afterwards every
session uses the cached files through ``spark.jars``: no run touches the network again.

``python -m recspark.jars [--cache DIR]`` resolves and prints the jar paths (the set-up runs it).
"""

from __future__ import annotations

import argparse
import glob
import importlib.metadata
import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from recspark.errors import DependencyError

SCALA_VERSION = "2.13"
RESOLVE_TIMEOUT_S = 600


def delta_version() -> str:
    """The delta-spark version installed beside pyspark (its jars must match it)."""
    return importlib.metadata.version("delta_spark")


def delta_coordinates(version: str | None = None) -> list[str]:
    """Maven coordinates of the jars Delta needs on top of Spark's own."""
    v = version or delta_version()
    return [f"io.delta:delta-spark_{SCALA_VERSION}:{v}", f"io.delta:delta-storage:{v}"]


# Classes a session needs from the Delta jars: the SQL extension and the Python API's entry.
DELTA_CLASSES: tuple[str, ...] = (
    "io.delta.sql.DeltaSparkSessionExtension",
    "io.delta.tables.DeltaTable",
)


def missing_delta_message(
    version: str, jar_paths: Sequence[str] | None, missing: Sequence[str] = ()
) -> str:
    """The one-line error for a Spark session whose JVM lacks the Delta classes.

    Names the fix: ``--packages`` with the coordinates of the installed delta-spark
    ``version``, or ``--jars`` with ``jar_paths`` (the cached jars, when resolved).
    """
    what = f" ({', '.join(missing)} not found)" if missing else ""
    packages = f"io.delta:delta-spark_{SCALA_VERSION}:{version}"
    if jar_paths:
        jars = f"--jars {','.join(jar_paths)}"
    else:
        jars = f"--jars with the delta-spark_{SCALA_VERSION} and delta-storage {version} jars"
    return (
        f"Delta Lake is not on the Spark classpath{what}: add --packages {packages} to "
        f"spark-submit, or {jars}; run locally, set spark.configure_delta_jars: true"
    )


def default_cache() -> Path:
    return Path(os.environ.get("RECSPARK_CACHE", Path.home() / ".cache" / "recspark"))


def _jar_dir(cache: Path, version: str) -> Path:
    return cache / "jars" / f"delta-{version}"


def cached_jars(cache: Path | None = None, version: str | None = None) -> list[str] | None:
    """The cached jar paths, or None when they have not been resolved yet."""
    v = version or delta_version()
    d = _jar_dir(cache or default_cache(), v)
    if not (d / "COMPLETE").exists():
        return None
    jars = sorted(glob.glob(str(d / "*.jar")))
    return jars or None


_IVY_CHILD = """
import sys
from pyspark.sql import SparkSession
spark = (SparkSession.builder.master("local[1]").appName("recspark-resolve-jars")
         .config("spark.jars.packages", sys.argv[1]).config("spark.jars.ivy", sys.argv[2])
         .config("spark.ui.enabled", "false").getOrCreate())
spark.stop()
"""


def _resolve_ivy(coords: list[str], ivy_dir: Path, timeout: float) -> list[str]:
    cmd = [sys.executable, "-c", _IVY_CHILD, ",".join(coords[:1]), str(ivy_dir)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    if proc.returncode != 0:
        tail = "\n".join((proc.stderr or "").strip().splitlines()[-5:])
        raise RuntimeError(f"exit {proc.returncode}: {tail}")
    jars = sorted(glob.glob(str(ivy_dir / "jars" / "*.jar")))
    if not any("delta-spark" in j for j in jars):
        raise RuntimeError(f"no delta-spark jar under {ivy_dir / 'jars'}")
    return jars


def _resolve_mvn(coords: list[str], out: Path, timeout: float) -> list[str]:
    mvn = shutil.which("mvn")
    if mvn is None:
        raise RuntimeError("mvn is not on PATH")
    for c in coords:
        cmd = [mvn, "-q", "-B", "dependency:copy", f"-Dartifact={c}", f"-DoutputDirectory={out}"]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
        if proc.returncode != 0:
            tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-5:])
            raise RuntimeError(f"{' '.join(cmd)}: exit {proc.returncode}: {tail}")
    return sorted(glob.glob(str(out / "*.jar")))


def ensure_delta_jars(cache: Path | None = None, timeout: float = RESOLVE_TIMEOUT_S) -> list[str]:
    """Return local paths of the Delta jars, resolving them into the cache the first time.

    Raises:
        DependencyError: when neither Ivy nor Maven can fetch them (with both reasons).
    """
    cache = cache or default_cache()
    version = delta_version()
    found = cached_jars(cache, version)
    if found:
        return found
    coords = delta_coordinates(version)
    out = _jar_dir(cache, version)
    out.mkdir(parents=True, exist_ok=True)
    errors: list[str] = []
    for name, fn in (
        ("ivy", lambda: _resolve_ivy(coords, cache / "ivy", timeout)),
        ("mvn", lambda: _resolve_mvn(coords, out, timeout)),
    ):
        try:
            jars = fn()
        except (RuntimeError, OSError, subprocess.TimeoutExpired) as e:
            errors.append(
                f"{name}: {str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__}"
            )
            continue
        for j in jars:
            target = out / Path(j).name
            if Path(j) != target:
                shutil.copy2(j, target)
        (out / "COMPLETE").write_text("\n".join(coords) + "\n", encoding="utf-8")
        result = cached_jars(cache, version)
        if result:
            return result
    raise DependencyError(
        f"cannot resolve Delta jars {', '.join(coords)} from Maven Central into {out} "
        f"({'; '.join(errors)}); put the jars there by hand or set spark.jars to their paths"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m recspark.jars", description=__doc__)
    parser.add_argument("--cache", type=Path, default=None)
    args = parser.parse_args(argv)
    try:
        jars = ensure_delta_jars(args.cache)
    except DependencyError as e:
        print(f"recspark: error: {e}", file=sys.stderr)
        return 2
    print("[setup] Delta jars: " + ", ".join(Path(j).name for j in jars))
    return 0


if __name__ == "__main__":
    sys.exit(main())
