"""spark-submit on a standalone cluster: the command builders, the runner's failure reports and
cleanup, and one end-to-end run of the shipped wheel on a real master + worker on 127.0.0.1."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
import zipfile
from pathlib import Path
from typing import Any

import cloudpickle
import pandas as pd
import pyarrow.parquet as pq
import pytest

from recspark import tables as T
from recspark.cli import PIPELINE
from recspark.config import load_config
from recspark.errors import ConfigError, LaunchError
from recspark.train import bootstrap
from recspark.train.launch import executor_python
from tests.support import cluster as C

ROOT = Path(__file__).resolve().parents[1]
HOME = Path("/opt/spark")
SPEC = C.ClusterSpec(master_port=7101, master_webui_port=8101, worker_webui_port=8102)


# ---------------------------------------------------------------- command builders (pure)


def test_master_command_runs_the_master_class_in_the_foreground_on_the_given_ports() -> None:
    assert C.master_command(HOME, SPEC) == [
        "/opt/spark/bin/spark-class",
        "org.apache.spark.deploy.master.Master",
        "--host",
        "127.0.0.1",
        "--port",
        "7101",
        "--webui-port",
        "8101",
    ]
    assert C.master_url(SPEC) == "spark://127.0.0.1:7101"
    assert C.master_json_url(SPEC) == "http://127.0.0.1:8101/json"


def test_worker_command_is_small_bound_to_localhost_and_points_at_the_master() -> None:
    spec = C.ClusterSpec(
        master_port=7101,
        master_webui_port=8101,
        worker_webui_port=8102,
        worker_cores=1,
        worker_memory="768m",
    )
    assert C.worker_command(HOME, spec, Path("/w")) == [
        "/opt/spark/bin/spark-class",
        "org.apache.spark.deploy.worker.Worker",
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--webui-port",
        "8102",
        "--cores",
        "1",
        "--memory",
        "768m",
        "--work-dir",
        "/w",
        "spark://127.0.0.1:7101",
    ]


def test_cluster_spec_rejects_bad_ports_and_cores() -> None:
    with pytest.raises(ValueError, match="ports"):
        C.ClusterSpec(master_port=0)
    with pytest.raises(ValueError, match="ports"):
        C.ClusterSpec(worker_webui_port=70000)
    with pytest.raises(ValueError, match="worker_cores"):
        C.ClusterSpec(worker_cores=0)


def test_submit_command_puts_options_before_the_script_and_stage_arguments_after() -> None:
    cmd = C.submit_command(
        HOME,
        "spark://127.0.0.1:7101",
        "jobs/ingest.py",
        py_files=["dist/recspark-0.1.0-py3-none-any.whl"],
        jars=["/j/delta-spark.jar", "/j/delta-storage.jar"],
        conf={"spark.b": "2", "spark.a": "1"},
        driver_memory="1g",
        config="conf/local.yaml",
        overrides=["warehouse=/tmp/wh", "spark.master=null"],
    )
    assert cmd == [
        "/opt/spark/bin/spark-submit",
        "--master",
        "spark://127.0.0.1:7101",
        "--driver-memory",
        "1g",
        "--conf",
        "spark.a=1",
        "--conf",
        "spark.b=2",
        "--jars",
        "/j/delta-spark.jar,/j/delta-storage.jar",
        "--py-files",
        "dist/recspark-0.1.0-py3-none-any.whl",
        "jobs/ingest.py",
        "--config",
        "conf/local.yaml",
        "--set",
        "warehouse=/tmp/wh",
        "--set",
        "spark.master=null",
    ]


def test_submit_command_without_extras_is_minimal_and_rejects_a_bad_override() -> None:
    assert C.submit_command(HOME, "yarn", "jobs/embed.py") == [
        "/opt/spark/bin/spark-submit",
        "--master",
        "yarn",
        "jobs/embed.py",
    ]
    with pytest.raises(ConfigError, match=r"dotted\.key=value.*'warehouse'"):
        C.submit_command(HOME, "yarn", "jobs/embed.py", overrides=["warehouse"])


def test_plan_submissions_runs_the_stages_in_order_with_the_code_and_the_venv_python() -> None:
    python = "/repo/.venv/bin/python"
    plan = C.plan_submissions(
        ["generate", "ingest", "embed"],
        home=HOME,
        master="spark://127.0.0.1:7101",
        jobs_dir="/repo/jobs",
        wheel="/repo/dist/recspark-0.1.0-py3-none-any.zip",
        python=python,
        spec=SPEC,
        config="conf/local.yaml",
        overrides=["run_id=r1"],
        extra_conf={"spark.executor.memory": "2g"},
    )
    assert [p.stage for p in plan] == ["generate", "ingest", "embed"]
    for p in plan:
        cmd = p.command
        script = cmd.index(f"/repo/jobs/{p.stage}.py")
        assert cmd[:3] == ["/opt/spark/bin/spark-submit", "--master", "spark://127.0.0.1:7101"]
        assert cmd[cmd.index("--py-files") + 1] == "/repo/dist/recspark-0.1.0-py3-none-any.zip"
        assert cmd.index("--py-files") < script
        assert cmd[script + 1 :] == ["--config", "conf/local.yaml", "--set", "run_id=r1"]
        confs = [cmd[i + 1] for i, a in enumerate(cmd[:script]) if a == "--conf"]
        assert f"spark.pyspark.python={python}" in confs
        assert f"spark.pyspark.driver.python={python}" in confs
        assert "spark.driver.host=127.0.0.1" in confs
        # extra_conf wins over the defaults, once.
        assert [c for c in confs if c.startswith("spark.executor.memory=")] == [
            "spark.executor.memory=2g"
        ]


def test_executors_may_run_another_python_than_the_driver() -> None:
    plan = C.plan_submissions(
        ["train"],
        home=HOME,
        master="spark://127.0.0.1:7101",
        jobs_dir="jobs",
        wheel="dist/r.zip",
        python="/driver/python",
        spec=SPEC,
        executor_python="/executors/python",
    )
    confs = [plan[0].command[i + 1] for i, a in enumerate(plan[0].command) if a == "--conf"]
    assert "spark.pyspark.python=/executors/python" in confs
    assert "spark.pyspark.driver.python=/driver/python" in confs
    assert C.submit_conf(SPEC, "/p")["spark.pyspark.python"] == "/p"


def test_horovod_starts_training_processes_with_the_executors_python() -> None:
    # SparkContext.pythonExec is what executors run (spark.pyspark.python / PYSPARK_PYTHON).
    assert executor_python("/executors/python", "/driver/python") == "/executors/python"
    assert executor_python("./env/bin/python", "/driver/python") == "./env/bin/python"
    assert executor_python(None, "/driver/python") == "/driver/python"
    assert executor_python("  ", "/driver/python") == "/driver/python"


def test_plan_submissions_rejects_unknown_or_no_stages() -> None:
    kwargs = dict(home=HOME, master="yarn", jobs_dir="jobs", wheel="w.whl", python="python")
    with pytest.raises(ConfigError, match="unknown stage 'bogus'"):
        C.plan_submissions(["ingest", "bogus"], **kwargs)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="no stages"):
        C.plan_submissions([], **kwargs)  # type: ignore[arg-type]


def test_environments_bind_to_localhost_and_point_pyspark_at_the_venv() -> None:
    base = {"PATH": "/usr/bin", "PYSPARK_PYTHON": "/usr/bin/python3"}
    env = C.submit_env(HOME, "/repo/.venv/bin/python", base=base)
    assert env["PYSPARK_PYTHON"] == env["PYSPARK_DRIVER_PYTHON"] == "/repo/.venv/bin/python"
    assert (env["SPARK_HOME"], env["SPARK_LOCAL_IP"], env["PATH"]) == (
        "/opt/spark",
        "127.0.0.1",
        "/usr/bin",
    )
    assert base["PYSPARK_PYTHON"] == "/usr/bin/python3"  # the caller's mapping is not changed
    denv = C.daemon_env(HOME, SPEC, Path("/logs"), base=base)
    assert (denv["SPARK_LOCAL_IP"], denv["SPARK_DAEMON_MEMORY"], denv["SPARK_LOG_DIR"]) == (
        "127.0.0.1",
        "512m",
        "/logs",
    )


def test_spark_home_is_the_pyspark_package_with_its_launchers() -> None:
    home = C.spark_home()
    assert (home / "bin" / "spark-submit").is_file()
    assert (home / "bin" / "spark-class").is_file()
    assert (home / "jars").is_dir()


def test_wheel_command_builds_without_dependencies_or_network() -> None:
    assert C.wheel_command("/v/bin/python", "/src", "/out") == [
        "/v/bin/python",
        "-m",
        "pip",
        "wheel",
        "--no-deps",
        "--no-build-isolation",
        "--quiet",
        "-w",
        "/out",
        "/src",
    ]


def test_count_alive_workers_reads_the_master_json() -> None:
    status = {
        "url": "spark://127.0.0.1:7101",
        "workers": [
            {"id": "w1", "state": "ALIVE", "cores": 2},
            {"id": "w2", "state": "DEAD", "cores": 2},
            {"id": "w3", "state": "ALIVE", "cores": 1},
        ],
    }
    assert C.count_alive_workers(status) == 2
    assert C.count_alive_workers({"workers": []}) == 0
    assert C.count_alive_workers({}) == 0


def test_parse_summaries_keeps_only_stage_json_lines() -> None:
    out = "\n".join(
        [
            "[recspark] ingest: started (run r1)",
            '{"stage": "ingest", "run_id": "r1", "seconds": 1.5}',
            '{"not": "a summary"}',
            "{broken json",
            '  {"stage": "embed", "items": 3}  ',
        ]
    )
    assert C.parse_summaries(out) == [
        {"stage": "ingest", "run_id": "r1", "seconds": 1.5},
        {"stage": "embed", "items": 3},
    ]


def test_launch_failure_names_command_exit_code_first_error_and_tail(tmp_path: Path) -> None:
    log = tmp_path / "x.log"
    log.write_text(
        "".join(f"line {i}\n" for i in range(100))
        + "java.lang.ClassNotFoundException: io.delta.X\n"
        + "last\n"
    )
    err = C.launch_failure("spark-submit of stage ingest", ["spark-submit", "a b"], 3, [log])
    text = str(err)
    assert text.startswith("spark-submit of stage ingest failed (exit code 3): spark-submit 'a b'")
    assert "first error in" in text and "ClassNotFoundException: io.delta.X" in text
    assert text.rstrip().endswith("last") and "line 99" in text and "line 10\n" not in text
    missing = C.launch_failure("x", ["y"], None, [tmp_path / "missing.log"])
    assert "(timed out)" in str(missing) and "(empty)" in str(missing)


def test_launch_failure_redacts_secrets_in_the_command(tmp_path: Path) -> None:
    cmd = [
        "spark-submit",
        "--conf",
        "spark.hadoop.fs.s3a.secret.key=hunter2",
        "--set",
        "input.events=s3a://me:pa55@bucket/events?sig=abc",
        "--conf",
        "spark.executor.memory=1g",
    ]
    text = str(C.launch_failure("spark-submit of stage ingest", cmd, 1, [tmp_path / "none.log"]))
    assert "hunter2" not in text and "pa55" not in text and "sig=abc" not in text
    assert "spark.hadoop.fs.s3a.secret.key=***" in text and "spark.executor.memory=1g" in text


# ---------------------------------------------------------------- shipping code to executors


def test_py_files_zip_is_the_wheel_named_zip(tmp_path: Path) -> None:
    wheel = tmp_path / "recspark-0.1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr("recspark/__init__.py", "")
    out = C.py_files_zip(wheel)
    assert out == tmp_path / "recspark-0.1.0-py3-none-any.zip"
    assert out.read_bytes() == wheel.read_bytes() and wheel.exists()
    with pytest.raises(LaunchError, match=r"expected a \.whl file"):
        C.py_files_zip(tmp_path / "recspark.tar.gz")


def test_shipped_file_names_are_base_names_in_order_once() -> None:
    assert bootstrap.shipped_file_names(
        "/a/dist/recspark-0.1.0-py3-none-any.zip,hdfs://nn/x/dep.zip, ,file:/b/dep.zip",
        ["extra.egg", "dep.zip"],
    ) == ("recspark-0.1.0-py3-none-any.zip", "dep.zip", "extra.egg")
    assert bootstrap.shipped_file_names(None) == ()
    assert bootstrap.shipped_paths("/w", ["a.zip", "b.zip"], lambda p: p == "/w/b.zip") == [
        "/w/b.zip"
    ]


def test_isolated_python_hides_the_installed_recspark_and_logs_its_calls(tmp_path: Path) -> None:
    assert C.isolated_python_script("/v/python", "/s", "/c.log") == (
        "#!/bin/sh\n"
        "printf '%s\\n' \"$*\" >> /c.log\n"
        "PYTHONPATH=/s${PYTHONPATH:+:$PYTHONPATH}\n"
        "export PYTHONPATH\n"
        'exec /v/python "$@"\n'
    )
    exe, calls = C.isolated_python(tmp_path / "iso", _venv_python())
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    hidden = subprocess.run(
        [str(exe), "-c", "import recspark"], env=env, capture_output=True, timeout=120
    )
    assert hidden.returncode != 0
    assert b"No module named 'recspark' (the installed one is hidden" in hidden.stderr
    shipped_zip = tmp_path / "recspark.zip"
    with zipfile.ZipFile(shipped_zip, "w") as z:
        z.writestr("recspark/__init__.py", "WHERE = 'shipped'\n")
    shipped = subprocess.run(
        [str(exe), "-c", "import recspark, yaml; print(recspark.WHERE)"],
        env={**env, "PYTHONPATH": str(shipped_zip)},
        capture_output=True,
        timeout=120,
    )
    assert shipped.returncode == 0, shipped.stderr.decode()
    # The shipped recspark, and the environment's other packages (yaml).
    assert shipped.stdout.decode().strip() == "shipped"
    assert calls.read_text().splitlines() == [
        "-c import recspark",
        "-c import recspark, yaml; print(recspark.WHERE)",
    ]


def test_run_shipped_runs_by_value_where_only_the_shipped_zip_has_the_code(tmp_path: Path) -> None:
    """What horovod's training processes get: recspark is only in a zip in the task's folder."""
    work = tmp_path / "task-folder"
    work.mkdir()
    shipped_zip = work / "shipped.zip"
    with zipfile.ZipFile(shipped_zip, "w") as z:
        z.writestr("recspark_shipped_probe/__init__.py", "def double(x):\n    return 2 * x\n")
    sys.path.insert(0, str(shipped_zip))
    try:
        import recspark_shipped_probe  # type: ignore[import-not-found]

        payload = cloudpickle.dumps((recspark_shipped_probe.double, (21,)))
        cloudpickle.register_pickle_by_value(bootstrap)
        try:
            by_value = cloudpickle.dumps((bootstrap.run_shipped, (payload, ("shipped.zip",))))
        finally:
            cloudpickle.unregister_pickle_by_value(bootstrap)
        by_name = cloudpickle.dumps((bootstrap.run_shipped, (payload, ("shipped.zip",))))
    finally:
        sys.path.remove(str(shipped_zip))
        sys.modules.pop("recspark_shipped_probe", None)
    exe, _calls = C.isolated_python(tmp_path / "iso", _venv_python())
    run = [
        str(exe),
        "-c",
        "import sys, cloudpickle\n"
        "fn, args = cloudpickle.loads(sys.stdin.buffer.read())\n"
        "print(fn(*args))\n",
    ]
    env = {"PATH": os.environ.get("PATH", ""), "HOROVOD_SPARK_WORK_DIR": str(work)}
    ok = subprocess.run(run, input=by_value, env=env, capture_output=True, timeout=120)
    assert ok.returncode == 0, ok.stderr.decode()
    assert ok.stdout.decode().strip() == "42"
    # By name (what horovod sends without the bootstrap) it cannot even be unpickled there.
    bad = subprocess.run(run, input=by_name, env=env, capture_output=True, timeout=120)
    assert bad.returncode != 0 and b"No module named 'recspark'" in bad.stderr


# ---------------------------------------------------------------- running: failures, cleanup


def _script(path: Path, body: str) -> Path:
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def test_run_logged_reports_exit_code_and_both_logs(tmp_path: Path) -> None:
    cmd = [
        sys.executable,
        "-c",
        "import sys; print('python says: bad key'); print('jvm: boom', file=sys.stderr); "
        "sys.exit(3)",
    ]
    with pytest.raises(LaunchError) as info:
        C.run_logged("stage x", cmd, env=os.environ, log=tmp_path / "x.log", out=tmp_path / "x.out")
    text = str(info.value)
    assert "(exit code 3)" in text and "python says: bad key" in text and "jvm: boom" in text
    ok = C.run_logged(
        "ok",
        [sys.executable, "-c", "print('hello')"],
        env=os.environ,
        log=tmp_path / "ok.log",
        out=tmp_path / "ok.out",
    )
    assert ok == "hello\n"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0); read its state.
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _wait_gone(pids: list[int], seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not any(_alive(p) for p in pids):
            return True
        time.sleep(0.1)
    return False


def test_run_logged_timeout_kills_the_whole_process_group(tmp_path: Path) -> None:
    pidfile = tmp_path / "child.pid"
    script = _script(tmp_path / "slow.sh", f"sleep 300 & echo $! > {pidfile}\nwait\n")
    with pytest.raises(LaunchError, match=r"\(timed out\)"):
        C.run_logged(
            "slow",
            [str(script)],
            env=os.environ,
            log=tmp_path / "s.log",
            out=tmp_path / "s.out",
            timeout=1.0,
        )
    assert _wait_gone([int(pidfile.read_text())])


def _fake_home(tmp_path: Path, body: str) -> Path:
    home = tmp_path / "spark"
    (home / "bin").mkdir(parents=True)
    _script(home / "bin" / "spark-class", body)
    return home


def test_cluster_start_failure_reports_the_daemon_log(tmp_path: Path) -> None:
    # Only the master fails (the worker waits): which daemon is seen failing first is then
    # not a race between two failing processes.
    home = _fake_home(
        tmp_path,
        'case "$1" in *Master) echo "Address already in use: $1"; exit 1;; esac\nsleep 30\n',
    )
    with (
        pytest.raises(LaunchError, match=r"spark master failed \(exit code 1\)") as info,
        C.standalone_cluster(tmp_path / "c", SPEC, home=home, start_timeout=30, poll=0.1),
    ):
        pytest.fail("the cluster must not start")
    assert "Address already in use: org.apache.spark.deploy.master.Master" in str(info.value)


def test_cluster_without_a_spark_install_says_it_cannot_start(tmp_path: Path) -> None:
    with (
        pytest.raises(LaunchError, match=r"cannot start .*/bin/spark-class .*Master"),
        C.standalone_cluster(tmp_path / "c", SPEC, home=tmp_path / "nowhere", start_timeout=5),
    ):
        pytest.fail("the cluster must not start")


def test_cluster_that_never_registers_times_out_and_both_daemons_are_stopped(
    tmp_path: Path,
) -> None:
    pids = tmp_path / "pids"
    home = _fake_home(tmp_path, f"echo $$ >> {pids}\nexec sleep 300\n")
    spec = C.free_spec()
    with (
        pytest.raises(LaunchError, match=r"not ALIVE .* after 1s\) failed \(timed out\)"),
        C.standalone_cluster(tmp_path / "c", spec, home=home, start_timeout=1, poll=0.1),
    ):
        pytest.fail("the cluster must not start")
    started = [int(p) for p in pids.read_text().split()]
    assert len(started) == 2
    assert _wait_gone(started)


# ---------------------------------------------------------------- end to end (slow)

# The stages submitted, in order, each as its own application: the whole pipeline.
SUBMITTED = ("generate", *PIPELINE)
K = 5


def _venv_python() -> str:
    venv = ROOT / ".venv" / "bin" / "python"
    return str(venv) if venv.exists() else sys.executable


def _overrides(tmp: Path) -> list[str]:
    gen, wh = tmp / "gen", tmp / "warehouse"
    return [
        # Absolute paths: executors work in the worker's folder, not here.
        f"generate.output={gen}",
        "generate.events=2000",
        "generate.users=50",
        "generate.items=40",
        "generate.bot_users=0",
        "generate.files=2",
        f"input.events={gen}/events",
        f"input.items={gen}/items",
        f"warehouse={wh}",
        "run_id=cluster-test",
        # The master comes from spark-submit; the driver JVM is already up when the config is
        # read, so the Delta jars come with --jars and the driver memory with --driver-memory
        # (conf/cluster.yaml says so already; repeated here so that the test does not depend on it).
        "spark.master=null",
        "spark.driver_memory=null",
        "spark.configure_delta_jars=false",
        "spark.shuffle_partitions=2",
        "spark.ui=false",
        # conf/cluster.yaml names a tracking server; here the local SQLite store under the
        # warehouse's file location stands in for it (the driver logs and registers the model).
        "mlflow.tracking_uri=null",
        # One task loads the model (each Python worker that embeds loads its own copy).
        "embed.num_partitions=1",
        # Horovod (Gloo, CPU) on the standalone master: 2 processes = the worker's 2 cores, all
        # running at once as horovod.spark.run needs; 1 epoch of a small model.
        "train.launcher=horovod",
        "train.num_proc=2",
        "train.use_gpu=false",
        "train.epochs=1",
        "train.data_files=2",
        "train.dim=16",
        "train.batch_size=64",
        "train.negatives=8",
        f"recommend.k={K}",
        # The baselines only: the recspark model is the train stage's (evaluate would train a
        # second one, on the same launcher); one ALS grid point skips ALS model selection.
        "evaluate.models=[popularity,als]",
        "evaluate.als_ranks=[4]",
        "evaluate.als_reg=[0.1]",
        "evaluate.als_max_iter=2",
    ]


def test_overrides_make_a_valid_cluster_config(tmp_path: Path) -> None:
    cfg = load_config(ROOT / "conf" / "cluster.yaml", _overrides(tmp_path))
    assert cfg.spark.master is None and cfg.spark.configure_delta_jars is False
    assert cfg.warehouse == str(tmp_path / "warehouse") and cfg.recommend.k == K
    assert (cfg.train.launcher, cfg.train.num_proc, cfg.train.use_gpu) == ("horovod", 2, False)
    assert cfg.evaluate.models == ("popularity", "als")


def _live_files(table: Path) -> list[dict[str, Any]]:
    """The ``add`` actions of a small Delta table's live files, replayed from its JSON log.

    (No second local Spark next to the cluster: the log of a fresh table is a few JSON commits.)
    """
    log = table / "_delta_log"
    commits = sorted(log.glob("*.json"))
    assert commits and commits[0].name == f"{0:020d}.json", f"{table} is not a Delta table"
    assert not list(log.glob("*.checkpoint*.parquet")), f"{table}: read it with Spark instead"
    live: dict[str, dict[str, Any]] = {}
    for commit in commits:
        for line in commit.read_text().splitlines():
            action = json.loads(line)
            if "add" in action:
                live[action["add"]["path"]] = action["add"]
            elif "remove" in action:
                live.pop(action["remove"]["path"], None)
    return list(live.values())


def _delta_rows(table: Path) -> int:
    """Rows of a small Delta table: its live files' ``numRecords`` statistics."""
    return sum(int(json.loads(a["stats"])["numRecords"]) for a in _live_files(table))


def _delta_frame(table: Path) -> pd.DataFrame:
    """The rows of a small, unpartitioned Delta table, from its live Parquet files."""
    frames = []
    for add in _live_files(table):
        assert not add.get("partitionValues"), f"{table}: partitioned; read it with Spark"
        assert "deletionVector" not in add, f"{table}: deletion vectors; read it with Spark"
        frames.append(pq.read_table(table / add["path"]).to_pandas())
    assert frames, f"{table} has no live files"
    return pd.concat(frames, ignore_index=True)


def test_delta_log_replays_adds_and_removes(tmp_path: Path) -> None:
    table = tmp_path / "t"
    log = table / "_delta_log"
    log.mkdir(parents=True)
    pd.DataFrame({"x": [1, 2]}).to_parquet(table / "a.parquet")
    pd.DataFrame({"x": [3]}).to_parquet(table / "b.parquet")
    pd.DataFrame({"x": [4, 5, 6]}).to_parquet(table / "c.parquet")

    def add(path: str, n: int) -> str:
        return json.dumps({"add": {"path": path, "stats": json.dumps({"numRecords": n})}})

    (log / f"{0:020d}.json").write_text(
        json.dumps({"metaData": {}}) + "\n" + add("a.parquet", 2) + "\n" + add("b.parquet", 1)
    )
    (log / f"{1:020d}.json").write_text(
        json.dumps({"remove": {"path": "a.parquet"}}) + "\n" + add("c.parquet", 3) + "\n"
    )
    assert _delta_rows(table) == 4
    assert sorted(_delta_frame(table)["x"]) == [3, 4, 5, 6]


def check_recommendations(
    recs: pd.DataFrame, interactions: pd.DataFrame, catalog: set[str], k: int
) -> None:
    """The contract's invariants of gold/recommendations, against silver/interactions."""
    seen = interactions.groupby("user_id")["item_id"].agg(set)
    assert set(recs["user_id"]) == set(seen.index), "every user in silver/interactions, only they"
    assert not recs.duplicated(["user_id", "item_id"]).any(), "an item listed twice for a user"
    for user, rows in recs.groupby("user_id"):
        ranks = sorted(int(r) for r in rows["rank"])
        eligible = len(catalog - seen[user])
        assert ranks == list(range(1, min(k, eligible) + 1)), (user, ranks, eligible)
        assert not set(rows["item_id"]) & seen[user], f"{user}: an item already interacted with"
        assert set(rows["item_id"]) <= catalog, user


def test_check_recommendations_catches_each_broken_invariant() -> None:
    inter = pd.DataFrame({"user_id": ["u1", "u2"], "item_id": ["a", "b"]})
    catalog = {"a", "b", "c"}
    good = pd.DataFrame(
        {"user_id": ["u1", "u1", "u2", "u2"], "rank": [1, 2, 1, 2], "item_id": ["b", "c", "a", "c"]}
    )
    check_recommendations(good, inter, catalog, k=5)  # min(k, 2 eligible) = 2 rows each
    check_recommendations(good[good["rank"] == 1], inter, catalog, k=1)
    broken = {
        "missing user": good[good["user_id"] == "u1"],
        "duplicate item": good.assign(item_id=["b", "b", "a", "c"]),
        "gap in ranks": good.assign(rank=[1, 3, 1, 2]),
        "too few rows": good.drop(index=3),
        "seen item": good.assign(item_id=["a", "c", "a", "c"]),
    }
    for what, recs in broken.items():
        with pytest.raises(AssertionError):
            check_recommendations(recs, inter, catalog, k=5)
            pytest.fail(what)


@pytest.mark.slow
def test_whole_pipeline_submitted_to_a_standalone_cluster_keeps_the_contract(
    tmp_path: Path,
) -> None:
    from recspark.jars import ensure_delta_jars

    python = _venv_python()
    wheel = C.build_wheel(ROOT, tmp_path / "dist", python=python)
    assert wheel.name.startswith("recspark-") and wheel.suffix == ".whl"
    assert not (tmp_path / "dist" / "_src").exists()
    code = C.py_files_zip(wheel)
    # The executors cannot import the recspark installed in .venv (editable: it would mask
    # code that does not reach them): only the shipped zip has it, as on a real cluster.
    executors, calls = C.isolated_python(tmp_path / "executor-python", python)

    spec = C.free_spec(worker_cores=2, worker_memory="1g", executor_memory="1g")
    with C.standalone_cluster(tmp_path / "cluster", spec, start_timeout=180) as cluster:
        assert cluster.master == f"spark://127.0.0.1:{spec.master_port}"
        summaries = C.submit_stages(
            cluster,
            SUBMITTED,
            wheel=code,
            jobs_dir=ROOT / "jobs",
            log_dir=tmp_path / "logs",
            python=python,
            executor_python=str(executors),
            jars=ensure_delta_jars(),
            config=ROOT / "conf" / "cluster.yaml",
            overrides=_overrides(tmp_path),
            extra_conf=C.SMALL_DATA_CONF,
            cwd=tmp_path,
            timeout=900,
        )
        status_url = cluster.status_url
        work_dir = cluster.work_dir
    # The cluster is gone once the block ends.
    assert C.master_status(status_url) is None

    by_stage = {s["stage"]: s for s in summaries}
    assert list(by_stage) == list(SUBMITTED)
    # Each stage ran as its own application on the worker, which fetched the shipped code.
    apps = sorted(work_dir.glob("app-*"))
    assert len(apps) == len(SUBMITTED)
    assert all(list(app.glob(f"*/{code.name}")) for app in apps)
    # Python workers and Horovod's training processes (one per rank) ran the executors' Python.
    ran = calls.read_text().splitlines()
    assert any("pyspark.daemon" in line for line in ran), ran
    assert sum("-m horovod.spark.task.gloo_exec_fn" in line for line in ran) >= 2, ran

    manifest = json.loads((tmp_path / "gen" / "manifest.json").read_text())
    expected = manifest["expected_ingest"]
    assert expected["quarantined"] > 0 and expected["duplicates"] > 0
    events = by_stage["ingest"]["events"]
    for key in ("read", "accepted", "quarantined", "duplicates", "quarantined_by_reason"):
        assert events[key] == expected[key], key

    wh = str(tmp_path / "warehouse")

    def table(name: str) -> Path:
        return Path(T.table_path(wh, name))

    assert _delta_rows(table(T.SILVER_EVENTS)) == expected["accepted"]
    assert _delta_rows(table(T.SILVER_QUARANTINE)) == expected["quarantined"]
    assert _delta_rows(table(T.SILVER_ITEMS)) == manifest["items"]

    embeddings = _delta_frame(table(T.GOLD_ITEM_EMBEDDINGS))
    assert len(embeddings) == manifest["items"] == by_stage["embed"]["items_embedded"]
    assert {len(e) for e in embeddings["embedding"]} == {384}

    assert by_stage["train"]["launcher"] == "horovod"
    assert by_stage["train"]["metrics"]["train_examples"] > 0
    version = by_stage["train"]["model_version"]

    recs = _delta_frame(table(T.GOLD_RECOMMENDATIONS))
    interactions = _delta_frame(table(T.SILVER_INTERACTIONS))
    catalog = set(_delta_frame(table(T.GOLD_ITEM_VECTORS))["item_id"])
    assert len(catalog) == manifest["items"]
    check_recommendations(recs, interactions, catalog, K)
    assert set(recs["run_id"]) == {"cluster-test"} and set(recs["model_version"]) == {version}
    assert str(recs["rank"].dtype) == "int32" and recs["score"].dtype == "float64"
    assert len(recs) == by_stage["recommend"]["rows"]

    metrics = _delta_frame(table(T.GOLD_METRICS))
    assert len(metrics) > 0 and set(metrics["run_id"]) == {"cluster-test"}
    assert {"popularity", "als"} <= set(metrics["model"])
