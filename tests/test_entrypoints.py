"""Entry points as platforms call them: exit codes they see, and the error line of a session
without Delta.

Databricks' ``python_wheel_task`` loads the ``recspark`` console-script entry point, sets
``sys.argv``, calls the function and ignores its return value: only ``SystemExit`` (or an
exception) marks the task failed. spark-submit exits with the Python process's exit code.
"""

from __future__ import annotations

import importlib.metadata
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from pyspark.sql import SparkSession

from recspark import cli
from recspark.errors import ConfigError
from recspark.jars import DELTA_CLASSES, SCALA_VERSION, cached_jars, missing_delta_message
from recspark.session import missing_jvm_classes

ROOT = Path(__file__).resolve().parents[1]
JOBS = sorted((ROOT / "jobs").glob("*.py"))


def _wheel_launcher(argv: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """What Databricks' wheel launcher does: load the entry point, set ``sys.argv``, call it
    and ignore what it returns."""
    (ep,) = importlib.metadata.entry_points(group="console_scripts", name="recspark")
    fn = ep.load()
    monkeypatch.setattr(sys, "argv", ["recspark", *argv])
    fn()


@pytest.mark.parametrize(
    "argv",
    [
        ["ingest", "--set", "no.such.key=1"],
        ["run", "--config", "/nonexistent/recspark.yaml"],
    ],
    ids=["unknown-key", "missing-config"],
)
def test_wheel_launcher_sees_a_non_zero_exit_on_a_bad_config(
    argv: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as e:
        _wheel_launcher(argv, monkeypatch)
    assert e.value.code == ConfigError.exit_code != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("recspark: error: "), err


def test_wheel_launcher_returns_normally_on_success(monkeypatch: pytest.MonkeyPatch) -> None:
    ran: list[tuple[str, ...]] = []
    monkeypatch.setattr(cli, "run_stages", lambda names, cfg, report=False: ran.append(names))
    _wheel_launcher(["generate", "--set", "generate.events=10"], monkeypatch)  # no SystemExit
    assert ran == [("generate",)]
    assert cli.exit_status(["generate"]) == 0


def test_exit_status_returns_the_code_and_main_raises_it(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert cli.exit_status(["ingest", "--set", "no.such.key=1"]) == ConfigError.exit_code
    with pytest.raises(SystemExit) as e:
        cli.main(["ingest", "--set", "no.such.key=1"])
    assert e.value.code == ConfigError.exit_code
    assert capsys.readouterr().err.count("recspark: error:") == 2


def test_every_spark_submit_script_exits_non_zero_on_a_bad_config() -> None:
    """``jobs/<stage>.py`` as spark-submit runs them (as a script), on an unknown key: the
    error comes before Spark starts, so this is cheap."""
    assert {p.stem for p in JOBS} == set(cli.STAGES)
    procs = {
        p.stem: subprocess.Popen(
            [sys.executable, str(p), "--set", "no.such.key=1"],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for p in JOBS
    }
    for stage, proc in procs.items():
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == ConfigError.exit_code, (stage, err[-2000:])
        lines = err.strip().splitlines()
        assert len(lines) == 1 and "unknown key 'no'" in lines[0], (stage, err[-2000:])


# --------------------------------------------------------------------------- Delta classpath


def test_missing_delta_message_names_packages_and_jars() -> None:
    msg = missing_delta_message("4.0.1", ["/c/a.jar", "/c/b.jar"], ["io.delta.tables.DeltaTable"])
    assert f"--packages io.delta:delta-spark_{SCALA_VERSION}:4.0.1" in msg
    assert "--jars /c/a.jar,/c/b.jar" in msg
    assert "io.delta.tables.DeltaTable not found" in msg
    assert "\n" not in msg
    unresolved = missing_delta_message("4.0.1", None)
    assert "--packages io.delta:delta-spark_2.13:4.0.1" in unresolved
    assert "--jars with the delta-spark_2.13 and delta-storage 4.0.1 jars" in unresolved


def test_missing_jvm_classes_finds_a_bogus_class_and_not_delta(spark: SparkSession) -> None:
    bogus = "io.recspark.NoSuchClass"
    assert missing_jvm_classes(spark, [*DELTA_CLASSES, bogus, "java.lang.String"]) == [bogus]


@pytest.mark.slow
def test_spark_submit_without_delta_stops_with_one_line_naming_the_fix(tmp_path: Path) -> None:
    """``spark-submit jobs/ingest.py`` with no Delta jars on the classpath: exit 2 and one
    ``recspark: error:`` line giving the --packages / --jars to add."""
    import pyspark

    submit = Path(pyspark.__file__).parent / "bin" / "spark-submit"
    env = {
        **os.environ,
        "PYSPARK_PYTHON": sys.executable,
        "PYSPARK_DRIVER_PYTHON": sys.executable,
    }
    args = [
        "--set",
        "spark.configure_delta_jars=false",
        "--set",
        "spark.master=local[1]",
        "--set",
        f"warehouse={tmp_path / 'wh'}",
        "--set",
        f"input.events={tmp_path / 'none'}",
    ]
    t0 = time.perf_counter()
    proc = subprocess.run(
        [str(submit), "--master", "local[1]", str(ROOT / "jobs" / "ingest.py"), *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    seconds = time.perf_counter() - t0
    # spark-submit's PythonRunner merges the Python process's stderr into its own stdout, and
    # the JVM's log lines go to stderr: look in both.
    output = proc.stdout + proc.stderr
    errors = re.findall(r"recspark: error: [^\n]*", output)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert len(errors) == 1, proc.stderr[-3000:]
    assert "Delta Lake is not on the Spark classpath" in errors[0]
    assert "--packages io.delta:delta-spark_2.13:" in errors[0]
    jars = cached_jars()
    if jars:
        assert f"--jars {','.join(jars)}" in errors[0]
    assert "JavaPackage" not in output and "Traceback" not in output
    assert seconds < 120, seconds
