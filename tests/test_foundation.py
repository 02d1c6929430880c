"""Config loading and validation, the session settings, table paths and the CLI's errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from recspark.cli import new_run_id, parser
from recspark.config import Config, SparkConfig, load_config, parse_override
from recspark.errors import ConfigError
from recspark.session import redact, spark_settings
from recspark.tables import table_path

ROOT = Path(__file__).resolve().parents[1]


def test_shipped_configs_load() -> None:
    local = load_config(ROOT / "conf" / "local.yaml")
    cluster = load_config(ROOT / "conf" / "cluster.yaml")
    assert local.spark.master == "local[2]" and cluster.spark.master is None
    assert local.recommend.k == 10


def test_overrides_are_typed_and_nested() -> None:
    cfg = load_config(
        None, ["recommend.k=5", "ingest.bot.enabled=false", "input.events=/x/*.jsonl"]
    )
    assert (cfg.recommend.k, cfg.ingest.bot.enabled, cfg.input.events) == (5, False, "/x/*.jsonl")
    assert isinstance(cfg, Config)
    with pytest.raises(AttributeError):
        cfg.seed = 1  # type: ignore[misc]  # frozen


@pytest.mark.parametrize(
    ("yaml_text", "key", "found"),
    [
        ("recommend:\n  k: ten\n", "recommend.k", "'ten'"),
        ("recommend:\n  kk: 3\n", "recommend.kk", "expected one of"),
        ("spark:\n  ui: 'yes'\n", "spark.ui", "'yes'"),
        ("seed: 1.5\n", "seed", "1.5"),
        ("ingest:\n  event_weights: {hover: 1}\n", "ingest", "hover"),
        ("generate:\n  faults: {malformed_json: 0.9}\n", "generate.faults", "0.9"),
    ],
)
def test_bad_keys_name_the_key_and_the_file(
    tmp_path: Path, yaml_text: str, key: str, found: str
) -> None:
    f = tmp_path / "bad.yaml"
    f.write_text(yaml_text)
    with pytest.raises(ConfigError) as e:
        load_config(f)
    msg = str(e.value)
    assert str(f) in msg and key in msg and found in msg and "\n" not in msg


def test_missing_or_non_mapping_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    f = tmp_path / "list.yaml"
    f.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(f)


def test_config_is_data_never_code(tmp_path: Path) -> None:
    payload = "!!python/object/apply:os.system ['touch " + str(tmp_path / "pwned") + "']"
    with pytest.raises(ConfigError, match="warehouse"):
        parse_override("warehouse=" + payload)
    f = tmp_path / "evil.yaml"
    f.write_text("warehouse: " + payload + "\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(f)
    assert not (tmp_path / "pwned").exists()


def test_override_needs_key_and_equals() -> None:
    with pytest.raises(ConfigError, match=r"dotted\.key=value"):
        parse_override("recommend.k")


def test_spark_settings_are_a_pure_function_of_config() -> None:
    cfg = SparkConfig(shuffle_partitions=3, ui=False, conf={"spark.x": "1"})
    conf = spark_settings(cfg, ["/a.jar", "/b.jar"])
    assert conf["spark.sql.shuffle.partitions"] == "3"
    assert conf["spark.ui.enabled"] == "false"
    assert conf["spark.jars"] == "/a.jar,/b.jar"
    assert conf["spark.sql.session.timeZone"] == "UTC"
    assert conf["spark.x"] == "1"
    assert "spark.jars" not in spark_settings(cfg, None)
    # Local mode: workers use the driver's interpreter; on a cluster, spark-submit decides.
    local = spark_settings(cfg, None, python="/v/bin/python")
    assert local["spark.pyspark.python"] == "/v/bin/python"
    remote = SparkConfig(master=None)
    assert "spark.pyspark.python" not in spark_settings(remote, None, python="/v/bin/python")


def test_secrets_are_redacted() -> None:
    conf = {"fs.azure.account.key.acct": "s3cr3t", "spark.hadoop.fs.s3a.secret.key": "k", "a": "b"}
    assert redact(conf) == {
        "fs.azure.account.key.acct": "***",
        "spark.hadoop.fs.s3a.secret.key": "***",
        "a": "b",
    }


@pytest.mark.parametrize("name", ["../x", "/abs", "a/../../b", "s3a://elsewhere/t", "a//b"])
def test_table_paths_stay_under_the_warehouse(name: str) -> None:
    with pytest.raises(ConfigError):
        table_path("/wh", name)
    assert table_path("s3a://b/wh/", "silver/events") == "s3a://b/wh/silver/events"


def test_run_ids_are_unique_and_sortable() -> None:
    a, b = new_run_id(), new_run_id()
    assert a != b and len(a) == len(b)


def test_cli_has_the_contract_subcommands() -> None:
    p = parser()
    for cmd in ("generate", "ingest", "embed", "train", "recommend", "evaluate", "run"):
        ns = p.parse_args([cmd, "--config", "c.yaml", "--set", "a.b=1", "--set", "c=2"])
        assert ns.command == cmd and ns.overrides == ["a.b=1", "c=2"]


def _cli(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "recspark.cli", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=600,
    )


def test_cli_user_errors_are_one_line_without_traceback(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("recommend:\n  k: 0\n")
    proc = _cli("recommend", "--config", str(bad))
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "Traceback" not in proc.stderr
    assert "recommend" in proc.stderr and str(bad) in proc.stderr


@pytest.mark.slow
def test_cli_missing_input_names_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "nothing-here"
    proc = _cli(
        "ingest", "--set", f"input.items={missing}", "--set", f"warehouse={tmp_path / 'wh'}"
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("recspark: error:") and str(missing) in last
    assert "Traceback" not in proc.stderr


def test_progress_line() -> None:
    from recspark.progress import Snapshot, format_progress

    line = format_progress("ingest", Snapshot(30, 50, 2), 45.2, 4.0)
    want = "[recspark] ingest: 2 Spark stage(s), 30/50 tasks (60%), 4.0 tasks/s, 45s elapsed"
    assert line == want
    assert "%" not in format_progress("embed", Snapshot(0, 0, 1), 1.0, 0.0)
