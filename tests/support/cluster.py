"""spark-submit on a Spark standalone cluster: command builders, a throw-away cluster, a runner.

The commands are built by pure functions (unit-tested without starting anything):

* :func:`master_command` / :func:`worker_command`: a standalone master and worker from the Spark
  that pyspark ships (``$SPARK_HOME`` is the pyspark package folder; its ``sbin/`` lacks the
  ``start-master.sh`` scripts, so the daemons run in the foreground through ``bin/spark-class``).
* :func:`submit_command` / :func:`plan_submissions`: ``spark-submit --master spark://... --py-files
  dist/recspark-<version>-py3-none-any.zip jobs/<stage>.py --config ... --set ...`` for a list of
  stages, in order. The code goes as a ``.zip`` (the wheel, renamed: :func:`py_files_zip`): PySpark
  puts ``--py-files`` ending in ``.zip``, ``.egg`` or ``.jar`` on the executors' ``sys.path``, but
  never a ``.whl`` (the driver imports it, the executors do not).
* :func:`isolated_python`: an interpreter for the executors that cannot import recspark from the
  environment (as on a real cluster, where only the shipped code has it) and records its
  command lines, so that a test fails when code does not reach the executors.

Running them is separate: :func:`standalone_cluster` starts a master and one worker bound to
127.0.0.1, waits until the worker has registered (the master's ``/json`` page) and always stops
both; :func:`submit_stages` submits the planned stages one after the other. Every failure raises
:class:`~recspark.errors.LaunchError` with the command, its exit code and the tail of its log.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from recspark.config import redact_command
from recspark.errors import ConfigError, LaunchError

LOCALHOST = "127.0.0.1"
MASTER_CLASS = "org.apache.spark.deploy.master.Master"
WORKER_CLASS = "org.apache.spark.deploy.worker.Worker"
TAIL_LINES = 40
_ERROR_LINE = re.compile(r"\b(ERROR|[A-Za-z.]*(Exception|Error))\b[: ]")
# For tiny data on a small machine (tests): short-lived driver and executor JVMs spend much of
# their CPU in the C2 JIT compiler and in whole-stage code generation, neither of which pays
# off on a few thousand rows. On the whole-pipeline test (2 cores) they halved the CPU time of
# the run (773 s -> 393 s of user + system time). Not for real data.
SMALL_DATA_CONF: dict[str, str] = {
    "spark.driver.extraJavaOptions": "-XX:TieredStopAtLevel=1",
    "spark.executor.extraJavaOptions": "-XX:TieredStopAtLevel=1",
    "spark.sql.codegen.wholeStage": "false",
}


@dataclass(frozen=True)
class ClusterSpec:
    """Where a standalone master and its one worker listen, and how big the worker is.

    ``worker_port`` 0 lets the worker pick a free port; the others are fixed so that the master
    URL and its JSON page are known in advance (use :func:`free_port` to choose them).
    """

    master_port: int = 7077
    master_webui_port: int = 8080
    worker_webui_port: int = 8081
    worker_port: int = 0
    host: str = LOCALHOST
    worker_cores: int = 2
    worker_memory: str = "2g"
    # Heap of the master and worker daemons themselves (SPARK_DAEMON_MEMORY).
    daemon_memory: str = "512m"
    # What each application gets (at most the worker's cores and memory).
    executor_memory: str = "1g"
    driver_memory: str = "1g"

    def __post_init__(self) -> None:
        if self.worker_cores < 1:
            raise ValueError(f"worker_cores must be >= 1, found {self.worker_cores}")
        fixed = (self.master_port, self.master_webui_port, self.worker_webui_port)
        if any(not 0 < p < 65536 for p in fixed) or not 0 <= self.worker_port < 65536:
            raise ValueError(
                f"ports must be in 1..65535 (worker_port 0: any), found "
                f"{(*fixed, self.worker_port)}"
            )


def spark_home() -> Path:
    """The Spark that pyspark ships: the pyspark package folder (``bin/``, ``jars/``)."""
    import pyspark

    return Path(pyspark.__file__).resolve().parent


def master_url(spec: ClusterSpec) -> str:
    """``spark://host:port`` of the standalone master."""
    return f"spark://{spec.host}:{spec.master_port}"


def master_json_url(spec: ClusterSpec) -> str:
    """The master web UI's JSON status page (workers, applications)."""
    return f"http://{spec.host}:{spec.master_webui_port}/json"


def master_command(home: Path, spec: ClusterSpec) -> list[str]:
    """The standalone master, in the foreground (``spark-class ... Master``)."""
    return [
        str(home / "bin" / "spark-class"),
        MASTER_CLASS,
        "--host",
        spec.host,
        "--port",
        str(spec.master_port),
        "--webui-port",
        str(spec.master_webui_port),
    ]


def worker_command(home: Path, spec: ClusterSpec, work_dir: Path) -> list[str]:
    """One standalone worker registering with the master, in the foreground."""
    return [
        str(home / "bin" / "spark-class"),
        WORKER_CLASS,
        "--host",
        spec.host,
        "--port",
        str(spec.worker_port),
        "--webui-port",
        str(spec.worker_webui_port),
        "--cores",
        str(spec.worker_cores),
        "--memory",
        spec.worker_memory,
        "--work-dir",
        str(work_dir),
        master_url(spec),
    ]


def daemon_env(
    home: Path, spec: ClusterSpec, log_dir: Path, base: Mapping[str, str] | None = None
) -> dict[str, str]:
    """Environment of the master and worker daemons: bound to ``spec.host``, small heaps."""
    env = dict(os.environ if base is None else base)
    env.update(
        {
            "SPARK_HOME": str(home),
            "SPARK_LOCAL_IP": spec.host,
            "SPARK_LOCAL_HOSTNAME": spec.host,
            "SPARK_DAEMON_MEMORY": spec.daemon_memory,
            "SPARK_LOG_DIR": str(log_dir),
        }
    )
    return env


def submit_env(
    home: Path, python: str, host: str = LOCALHOST, base: Mapping[str, str] | None = None
) -> dict[str, str]:
    """Environment of ``spark-submit``: the driver and the executors run ``python``."""
    env = dict(os.environ if base is None else base)
    env.update(
        {
            "SPARK_HOME": str(home),
            "SPARK_LOCAL_IP": host,
            "SPARK_LOCAL_HOSTNAME": host,
            "PYSPARK_PYTHON": python,
            "PYSPARK_DRIVER_PYTHON": python,
        }
    )
    return env


def submit_conf(
    spec: ClusterSpec, python: str, executor_python: str | None = None
) -> dict[str, str]:
    """Spark settings for an application on the cluster of ``spec``.

    ``python`` runs the driver; ``executor_python`` (default: the same) the executors' Python
    workers and the training processes they start.
    """
    return {
        "spark.driver.host": spec.host,
        "spark.driver.bindAddress": spec.host,
        "spark.executor.memory": spec.executor_memory,
        "spark.executor.cores": str(spec.worker_cores),
        "spark.cores.max": str(spec.worker_cores),
        "spark.pyspark.python": executor_python or python,
        "spark.pyspark.driver.python": python,
    }


def submit_command(
    home: Path,
    master: str,
    script: str | Path,
    *,
    py_files: Sequence[str | Path] = (),
    jars: Sequence[str | Path] = (),
    conf: Mapping[str, str] | None = None,
    driver_memory: str | None = None,
    config: str | Path | None = None,
    overrides: Sequence[str] = (),
) -> list[str]:
    """``spark-submit --master MASTER [--py-files ...] SCRIPT --config ... --set ...``.

    Args:
        home: ``$SPARK_HOME`` (``bin/spark-submit`` is taken from it).
        master: e.g. ``spark://127.0.0.1:7077``, ``yarn``, ``k8s://https://...``.
        script: the entry point, e.g. ``jobs/ingest.py``.
        py_files: wheels or zips shipped to the driver and the executors.
        jars: extra jars (e.g. Delta's) for the driver and executors.
        conf: ``--conf key=value`` settings, in sorted order.
        driver_memory: ``--driver-memory`` (the driver JVM starts before any config is read).
        config: ``--config`` of the recspark stage.
        overrides: ``dotted.key=value`` strings, each passed as ``--set``.
    """
    cmd = [str(home / "bin" / "spark-submit"), "--master", master]
    if driver_memory:
        cmd += ["--driver-memory", driver_memory]
    for key, value in sorted((conf or {}).items()):
        cmd += ["--conf", f"{key}={value}"]
    if jars:
        cmd += ["--jars", ",".join(str(j) for j in jars)]
    if py_files:
        cmd += ["--py-files", ",".join(str(p) for p in py_files)]
    cmd.append(str(script))
    if config is not None:
        cmd += ["--config", str(config)]
    for text in overrides:
        if "=" not in text:
            raise ConfigError(f"--set: expected dotted.key=value, found {text!r}")
        cmd += ["--set", text]
    return cmd


@dataclass(frozen=True)
class Submission:
    """One planned ``spark-submit`` of one stage."""

    stage: str
    command: list[str]


def plan_submissions(
    stages: Sequence[str],
    *,
    home: Path,
    master: str,
    jobs_dir: str | Path,
    wheel: str | Path,
    python: str,
    spec: ClusterSpec | None = None,
    jars: Sequence[str | Path] = (),
    config: str | Path | None = None,
    overrides: Sequence[str] = (),
    extra_conf: Mapping[str, str] | None = None,
    executor_python: str | None = None,
) -> list[Submission]:
    """The ``spark-submit`` commands that run ``stages`` in order, one application each.

    Every stage gets the same code (``wheel``: the ``.zip`` of :func:`py_files_zip`), config and
    overrides (give ``run_id=...`` among them so that all stages of one run share it). Stage
    names are those of ``recspark.cli.STAGES``.

    Raises:
        ConfigError: an unknown stage name, or no stages at all.
    """
    from recspark.cli import STAGES

    if not stages:
        raise ConfigError(f"no stages to submit (expected some of: {', '.join(STAGES)})")
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        raise ConfigError(f"unknown stage '{unknown[0]}' (expected one of: {', '.join(STAGES)})")
    spec = spec or ClusterSpec()
    conf = {**submit_conf(spec, python, executor_python), **(extra_conf or {})}
    return [
        Submission(
            stage,
            submit_command(
                home,
                master,
                Path(jobs_dir) / f"{stage}.py",
                py_files=[wheel],
                jars=jars,
                conf=conf,
                driver_memory=spec.driver_memory,
                config=config,
                overrides=overrides,
            ),
        )
        for stage in stages
    ]


def wheel_command(python: str, source: str | Path, dest: str | Path) -> list[str]:
    """``python -m pip wheel --no-deps --no-build-isolation -w DEST SOURCE`` (as ``make dist``,
    without build isolation so that it works offline with the venv's setuptools)."""
    return [
        python,
        "-m",
        "pip",
        "wheel",
        "--no-deps",
        "--no-build-isolation",
        "--quiet",
        "-w",
        str(dest),
        str(source),
    ]


def py_files_zip(wheel: str | Path) -> Path:
    """A copy of the (pure-Python) ``wheel`` named ``.zip``, next to it, for ``--py-files``.

    A wheel is a zip archive with the packages at its root, so ``zipimport`` reads it as it is;
    but PySpark adds ``--py-files`` to the executors' ``sys.path`` only when they end in
    ``.zip``, ``.egg`` or ``.jar`` (``SparkContext.PACKAGE_EXTENSIONS``). ``make dist`` makes
    the same file.
    """
    wheel = Path(wheel)
    if wheel.suffix != ".whl":
        raise LaunchError(f"expected a .whl file, found {wheel}")
    out = wheel.with_suffix(".zip")
    shutil.copyfile(wheel, out)
    return out


_HIDE_SITECUSTOMIZE = """\
# Written by recspark.cluster.isolated_python: hides {hidden} from this environment's
# site-packages (an editable or a regular install), so that only code on sys.path outside
# site-packages (the files Spark ships) can provide it.
import importlib.machinery
import site
import sys

_HIDDEN = {hidden!r}
_SITE = tuple(site.getsitepackages())


class _HideInstalled:
    @classmethod
    def find_spec(cls, name, path=None, target=None):
        if name not in _HIDDEN:
            return None
        paths = [p for p in sys.path if p and not p.startswith(_SITE)]
        spec = importlib.machinery.PathFinder.find_spec(name, paths)
        if spec is None:
            raise ModuleNotFoundError(
                f"No module named {{name!r}} (the installed one is hidden: ship it)", name=name
            )
        return spec


sys.meta_path.insert(0, _HideInstalled)
"""


def isolated_python_script(python: str, site_dir: str | Path, calls_log: str | Path) -> str:
    """The shell wrapper of :func:`isolated_python` (pure)."""
    return (
        "#!/bin/sh\n"
        f"printf '%s\\n' \"$*\" >> {shlex.quote(str(calls_log))}\n"
        f"PYTHONPATH={shlex.quote(str(site_dir))}${{PYTHONPATH:+:$PYTHONPATH}}\n"
        "export PYTHONPATH\n"
        f'exec {shlex.quote(python)} "$@"\n'
    )


def isolated_python(
    dest: str | Path, python: str, hidden: Sequence[str] = ("recspark",)
) -> tuple[Path, Path]:
    """An interpreter (``dest/bin/python``) that runs ``python`` but cannot import ``hidden``
    from its installed packages, and appends every command line it runs to ``dest/calls.log``.

    Given to the executors (``spark.pyspark.python``), it makes them as bare as a real
    cluster's: recspark comes only from the files shipped with ``--py-files``. Processes they
    start inherit the hiding (through ``PYTHONPATH``). Returns (interpreter, calls log).
    """
    root = Path(dest).resolve()
    site_dir, bin_dir = root / "site", root / "bin"
    site_dir.mkdir(parents=True, exist_ok=True)
    bin_dir.mkdir(parents=True, exist_ok=True)
    (site_dir / "sitecustomize.py").write_text(
        _HIDE_SITECUSTOMIZE.format(hidden=tuple(hidden)), encoding="utf-8"
    )
    calls = root / "calls.log"
    calls.touch()
    exe = bin_dir / "python"
    exe.write_text(isolated_python_script(python, site_dir, calls), encoding="utf-8")
    exe.chmod(0o755)
    return exe, calls


def count_alive_workers(status: Mapping[str, Any]) -> int:
    """How many workers the master's ``/json`` status lists as ``ALIVE``."""
    workers = status.get("workers") or []
    return sum(1 for w in workers if isinstance(w, Mapping) and w.get("state") == "ALIVE")


def parse_summaries(stdout: str) -> list[dict[str, Any]]:
    """The stage summaries a recspark driver printed (one JSON object with ``stage`` a line)."""
    out: list[dict[str, Any]] = []
    for line in stdout.splitlines():
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(obj, dict) and "stage" in obj:
            out.append(obj)
    return out


def tail(path: Path, lines: int = TAIL_LINES) -> str:
    """The last ``lines`` lines of a log file ("" when it does not exist)."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    return "\n".join(text.rstrip().splitlines()[-lines:])


def first_error(path: Path) -> str:
    """The first line of a log that names an exception or an ERROR ("" when none)."""
    try:
        with path.open(encoding="utf-8", errors="replace") as f:
            for line in f:
                if _ERROR_LINE.search(line):
                    return line.rstrip()
    except OSError:
        return ""
    return ""


def launch_failure(
    what: str, cmd: Sequence[str], code: int | None, logs: Sequence[Path], lines: int = TAIL_LINES
) -> LaunchError:
    """A LaunchError naming the command (secrets redacted), its exit code and the tail of each
    of its logs."""
    status = "timed out" if code is None else f"exit code {code}"
    parts = [f"{what} failed ({status}): {shlex.join(redact_command(cmd))}"]
    for log in logs:
        first = first_error(log)
        if first:
            parts.append(f"--- first error in {log} ---\n{first}")
        parts.append(f"--- last lines of {log} ---\n{tail(log, lines) or '(empty)'}")
    return LaunchError("\n".join(parts))


def free_port(host: str = LOCALHOST) -> int:
    """A TCP port that is free now on ``host`` (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def free_spec(**kwargs: Any) -> ClusterSpec:
    """A :class:`ClusterSpec` on free ports (so that parallel clusters do not collide)."""
    return ClusterSpec(
        master_port=free_port(),
        master_webui_port=free_port(),
        worker_webui_port=free_port(),
        **kwargs,
    )


def _stop(proc: subprocess.Popen[bytes], grace: float = 10.0) -> None:
    """Stop a process started in its own session, with its whole process group."""
    if proc.poll() is not None:
        return
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def _popen(
    cmd: list[str],
    env: Mapping[str, str],
    stdout: IO[bytes],
    stderr: IO[bytes] | int,
    cwd: str | Path | None = None,
) -> subprocess.Popen[bytes]:
    """Start ``cmd`` in a new session (its own process group, so that it can be stopped whole)."""
    try:
        return subprocess.Popen(
            cmd,
            env=dict(env),
            cwd=None if cwd is None else str(cwd),
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=stderr,
            start_new_session=True,
        )
    except OSError as e:
        raise LaunchError(f"cannot start {shlex.join(redact_command(cmd))}: {e}") from e


def _start(cmd: list[str], env: Mapping[str, str], log: IO[bytes]) -> subprocess.Popen[bytes]:
    return _popen(cmd, env, log, subprocess.STDOUT)


def master_status(url: str) -> dict[str, Any] | None:
    """The master's JSON status page, or None while (or when) it does not answer."""
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            data = json.loads(resp.read().decode("utf-8"))
    except (urllib.error.URLError, OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


@dataclass(frozen=True)
class RunningCluster:
    """A started standalone cluster: its settings, URL and log files."""

    spec: ClusterSpec
    home: Path
    master: str
    status_url: str
    work_dir: Path
    master_log: Path
    worker_log: Path


@contextmanager
def standalone_cluster(
    work_dir: str | Path,
    spec: ClusterSpec | None = None,
    *,
    home: Path | None = None,
    start_timeout: float = 120.0,
    poll: float = 1.0,
) -> Iterator[RunningCluster]:
    """Start a master and one worker on ``spec.host``; stop both on exit, whatever happens.

    Waits (at most ``start_timeout`` seconds) until the master's ``/json`` page lists the
    worker as ALIVE. Logs go to ``work_dir/logs``; executors work in ``work_dir/worker``.

    Raises:
        LaunchError: a daemon exited or the worker did not register in time (with the
            command, exit code and log tail).
    """
    spec = spec or free_spec()
    home = home or spark_home()
    root = Path(work_dir).resolve()
    logs, wdir = root / "logs", root / "worker"
    logs.mkdir(parents=True, exist_ok=True)
    wdir.mkdir(parents=True, exist_ok=True)
    env = daemon_env(home, spec, logs)
    m_cmd, w_cmd = master_command(home, spec), worker_command(home, spec, wdir)
    m_log, w_log = logs / "master.log", logs / "worker.log"
    cluster = RunningCluster(
        spec, home, master_url(spec), master_json_url(spec), wdir, m_log, w_log
    )
    procs: list[tuple[str, list[str], Path, subprocess.Popen[bytes]]] = []
    try:
        with m_log.open("ab") as mf:
            procs.append(("spark master", m_cmd, m_log, _start(m_cmd, env, mf)))
        with w_log.open("ab") as wf:
            procs.append(("spark worker", w_cmd, w_log, _start(w_cmd, env, wf)))
        deadline = time.monotonic() + start_timeout
        while True:
            for what, cmd, log, proc in procs:
                code = proc.poll()
                if code is not None:
                    raise launch_failure(what, cmd, code, [log])
            status = master_status(cluster.status_url)
            if status is not None and count_alive_workers(status) >= 1:
                break
            if time.monotonic() > deadline:
                raise launch_failure(
                    f"spark worker (not ALIVE at {cluster.status_url} after {start_timeout:.0f}s)",
                    w_cmd,
                    None,
                    [w_log, m_log],
                )
            time.sleep(poll)
        yield cluster
    finally:
        for _what, _cmd, _log, proc in reversed(procs):
            _stop(proc)


def run_logged(
    what: str,
    cmd: list[str],
    *,
    env: Mapping[str, str],
    log: Path,
    out: Path,
    cwd: str | Path | None = None,
    timeout: float = 900.0,
) -> str:
    """Run ``cmd`` (own process group), stdout to ``out``, stderr to ``log``; return stdout.

    (Under spark-submit the Python driver's stdout and stderr both land in ``out``, and the
    JVM's log in ``log``.)

    Raises:
        LaunchError: non-zero exit or timeout (the process group is killed), with the command,
            exit code and the tails of ``out`` and ``log``.
    """
    log.parent.mkdir(parents=True, exist_ok=True)
    with out.open("wb") as fo, log.open("wb") as fe:
        proc = _popen(cmd, env, fo, fe, cwd)
        try:
            code: int | None = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            code = None
        finally:
            _stop(proc)
    if code != 0:
        raise launch_failure(what, cmd, code, [out, log])
    return out.read_text(encoding="utf-8", errors="replace")


def build_wheel(
    project: str | Path, dest: str | Path, *, python: str | None = None, timeout: float = 600.0
) -> Path:
    """Build recspark's wheel into ``dest`` (as ``make dist``) and return its path.

    The sources are copied to a staging folder first, so that the build leaves no ``build/``
    or ``*.egg-info`` behind in the project.
    """
    project, dest = Path(project).resolve(), Path(dest).resolve()
    stage = dest / "_src"
    if stage.exists():
        shutil.rmtree(stage)
    stage.mkdir(parents=True)
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        if (project / name).is_file():
            shutil.copy2(project / name, stage / name)
    shutil.copytree(
        project / "recspark",
        stage / "recspark",
        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"),
    )
    cmd = wheel_command(python or sys.executable, stage, dest)
    run_logged(
        "building the wheel",
        cmd,
        env=os.environ,
        log=dest / "wheel.log",
        out=dest / "wheel.out",
        cwd=stage,
        timeout=timeout,
    )
    shutil.rmtree(stage, ignore_errors=True)
    wheels = sorted(dest.glob("recspark-*.whl"))
    if not wheels:
        raise LaunchError(f"building the wheel: no recspark-*.whl in {dest} after {cmd}")
    return wheels[-1]


def submit_stages(
    cluster: RunningCluster,
    stages: Sequence[str],
    *,
    wheel: str | Path,
    jobs_dir: str | Path,
    log_dir: str | Path,
    python: str | None = None,
    jars: Sequence[str | Path] = (),
    config: str | Path | None = None,
    overrides: Sequence[str] = (),
    extra_conf: Mapping[str, str] | None = None,
    cwd: str | Path | None = None,
    timeout: float = 900.0,
    executor_python: str | None = None,
) -> list[dict[str, Any]]:
    """Submit ``stages`` in order to ``cluster``; return the summaries the drivers printed.

    Each stage's driver output goes to ``log_dir/<stage>.out`` (stdout) and ``<stage>.log``.
    ``python`` runs the drivers, ``executor_python`` (default: ``python``) the executors.

    Raises:
        LaunchError: a submission failed (the later stages are not submitted).
    """
    py = python or sys.executable
    plan = plan_submissions(
        stages,
        home=cluster.home,
        master=cluster.master,
        jobs_dir=jobs_dir,
        wheel=wheel,
        python=py,
        spec=cluster.spec,
        jars=jars,
        config=config,
        overrides=overrides,
        extra_conf=extra_conf,
        executor_python=executor_python,
    )
    env = submit_env(cluster.home, py, cluster.spec.host)
    logs = Path(log_dir)
    summaries: list[dict[str, Any]] = []
    for sub in plan:
        stdout = run_logged(
            f"spark-submit of stage {sub.stage}",
            sub.command,
            env=env,
            log=logs / f"{sub.stage}.log",
            out=logs / f"{sub.stage}.out",
            cwd=cwd,
            timeout=timeout,
        )
        found = parse_summaries(stdout)
        if not found:
            raise launch_failure(
                f"spark-submit of stage {sub.stage} printed no summary; it",
                sub.command,
                0,
                [logs / f"{sub.stage}.out", logs / f"{sub.stage}.log"],
            )
        summaries.extend(found)
    return summaries
