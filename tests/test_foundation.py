"""Config loading and validation, the session settings, table paths and the CLI's errors."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from recspark.cli import parser
from recspark.config import (
    SECRET_KEY_PATTERN,
    Config,
    SparkConfig,
    flatten,
    is_secret_key,
    load_config,
    new_run_id,
    override_path,
    parse_override,
    redact_command,
    redact_text,
    redact_tree,
    to_dict,
)
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


@pytest.mark.parametrize(
    "tag",
    [
        "!!python/object:recspark.config.Config {}",
        "!!python/object/new:os.system [echo]",
        "!!python/name:os.system",
        "!!binary aGVsbG8=",
    ],
)
def test_yaml_tags_that_build_objects_are_refused(tmp_path: Path, tag: str) -> None:
    f = tmp_path / "tags.yaml"
    f.write_text(f"spark:\n  app_name: {tag}\n")
    with pytest.raises(ConfigError, match=re.escape(str(f))):
        load_config(f)
    with pytest.raises(ConfigError, match=r"spark\.app_name"):
        load_config(None, [f"spark.app_name={tag}"])


@pytest.mark.parametrize(
    ("override", "key", "found"),
    [
        ("recommend.kk=3", "recommend.kk", "expected one of"),
        ("recommend.k=[1]", "recommend.k", "[1]"),
        ("spark.conf={a: [1]}", "spark.conf.a", "[1]"),
        ("spark.conf.spark.x={a: 1}", "spark.conf.spark.x", "{'a': 1}"),
        ("ingest.bot=3", "ingest.bot", "3"),
    ],
)
def test_bad_overrides_name_the_key_and_the_source(override: str, key: str, found: str) -> None:
    with pytest.raises(ConfigError) as e:
        load_config(None, [override])
    msg = str(e.value)
    assert "(with --set)" in msg and key in msg and found in msg and "\n" not in msg


def test_overrides_below_a_mapping_key_are_one_key_and_text_stays_text() -> None:
    cfg = load_config(
        None,
        [
            "spark.conf.fs.s3a.secret.key=XYZ",
            "spark.conf.spark.hadoop.fs.azure.account.key.acct.dfs.core.windows.net=0123",
            "spark.conf.spark.sql.adaptive.enabled=true",
            "ingest.event_weights.view=3",
            "run_id=0042",
            "warehouse=no",
        ],
    )
    assert cfg.spark.conf == {
        "fs.s3a.secret.key": "XYZ",
        "spark.hadoop.fs.azure.account.key.acct.dfs.core.windows.net": "0123",
        "spark.sql.adaptive.enabled": "true",
    }
    assert cfg.ingest.event_weights["view"] == 3.0
    assert (cfg.run_id, cfg.warehouse) == ("0042", "no")  # not 42 and False
    assert override_path("spark.conf.a.b") == (["spark", "conf", "a.b"], str)
    assert override_path("recommend.k") == (["recommend", "k"], int)
    assert override_path("nope.x") == (["nope", "x"], None)


def test_a_secret_of_the_wrong_type_is_not_echoed(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as e:
        load_config(None, ["spark.conf.fs.s3a.secret.key=[XYZ]"])
    assert "spark.conf.fs.s3a.secret.key" in str(e.value) and "XYZ" not in str(e.value)
    proc = _cli("ingest", "--set", "spark.conf.my.password={p: XYZ}", cwd=tmp_path)
    assert proc.returncode == 2 and "my.password" in proc.stderr
    assert "XYZ" not in proc.stderr + proc.stdout and "Traceback" not in proc.stderr


@pytest.mark.parametrize(
    ("key", "secret"),
    [
        ("fs.s3a.secret.key", True),
        ("spark.hadoop.fs.s3a.access.key", True),
        ("spark.hadoop.fs.s3a.session.token", True),
        ("fs.azure.account.key.acct.dfs.core.windows.net", True),
        ("spark.hadoop.fs.azure.sas.container.acct.blob.core.windows.net", True),
        ("fs.azure.account.oauth2.client.secret", True),
        ("spark.ssl.keyPassword", True),
        ("spark.databricks.token", True),
        ("fs.gs.auth.service.account.private.key", True),
        ("spark.hadoop.fs.s3a.aws.credentials.provider", True),  # harmless to hide
        ("spark.sql.shuffle.partitions", False),
        ("spark.sql.catalog.spark_catalog", False),
        ("spark.executor.memory", False),
        ("ingest.event_weights.view", False),
    ],
)
def test_secret_keys(key: str, secret: bool) -> None:
    assert is_secret_key(key) is secret


def test_no_recspark_setting_looks_secret() -> None:
    keys = flatten(to_dict(Config(), redact=False))
    assert [k for k in keys if is_secret_key(k)] == []


def test_redaction_of_values_trees_and_commands() -> None:
    assert redact_text("https://me:pa55@mlflow:5000/x") == "https://me:***@mlflow:5000/x"
    assert redact_text("abfss://c@acct.dfs.core.windows.net/wh") == (
        "abfss://c@acct.dfs.core.windows.net/wh"  # a container, not a password
    )
    assert (
        redact_text("https://a.blob/x?sv=1&sig=abc%2F&se=2") == "https://a.blob/x?sv=1&sig=***&se=2"
    )
    tree = {"spark": {"conf": {"fs.s3a.secret.key": "XYZ", "a": "b"}}, "token": None, "n": [1]}
    assert redact_tree(tree) == {
        "spark": {"conf": {"fs.s3a.secret.key": "***", "a": "b"}},
        "token": None,
        "n": [1],
    }
    cmd = ["spark-submit", "--conf", "spark.hadoop.fs.s3a.secret.key=XYZ", "--conf", "a=b"]
    cmd += [
        "--set",
        "spark.conf.my.password=XYZ",
        "--set",
        "mlflow.tracking_uri=http://u:XYZ@h",
    ]
    assert "XYZ" not in " ".join(redact_command(cmd))
    assert redact_command(cmd)[4] == "a=b"
    cfg = load_config(None, ["spark.conf.fs.s3a.secret.key=XYZ"])
    assert to_dict(cfg)["spark"]["conf"] == {"fs.s3a.secret.key": "***"}
    assert to_dict(cfg, redact=False)["spark"]["conf"] == {"fs.s3a.secret.key": "XYZ"}


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


def test_jvm_may_compile_spark_s_huge_generated_methods_and_user_options_are_kept() -> None:
    conf = spark_settings(SparkConfig(), None)
    assert conf["spark.driver.extraJavaOptions"] == "-XX:-DontCompileHugeMethods"
    assert conf["spark.executor.extraJavaOptions"] == "-XX:-DontCompileHugeMethods"
    user = SparkConfig(
        conf={
            "spark.driver.extraJavaOptions": "-Dx=1  -XX:-DontCompileHugeMethods",
            "spark.executor.extraJavaOptions": "-Xss4m",
        }
    )
    conf = spark_settings(user, None)
    assert conf["spark.driver.extraJavaOptions"] == "-Dx=1  -XX:-DontCompileHugeMethods"
    assert conf["spark.executor.extraJavaOptions"] == "-Xss4m -XX:-DontCompileHugeMethods"
    # A user who wants HotSpot's default keeps it.
    keep = SparkConfig(conf={"spark.driver.extraJavaOptions": "-XX:+DontCompileHugeMethods"})
    assert spark_settings(keep, None)["spark.driver.extraJavaOptions"] == (
        "-XX:+DontCompileHugeMethods"
    )


def test_secrets_are_redacted() -> None:
    conf = {"fs.azure.account.key.acct": "s3cr3t", "spark.hadoop.fs.s3a.secret.key": "k", "a": "b"}
    assert redact(conf) == {
        "fs.azure.account.key.acct": "***",
        "spark.hadoop.fs.s3a.secret.key": "***",
        "a": "b",
    }
    # Spark redacts its own UI, event logs and spark-submit --verbose with the same pattern.
    settings = spark_settings(SparkConfig(conf={"spark.hadoop.fs.s3a.secret.key": "XYZ"}), None)
    assert settings["spark.redaction.regex"] == SECRET_KEY_PATTERN
    assert "XYZ" not in repr(redact(settings))


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
    want = "ingest: 2 Spark stage(s), 30/50 tasks (60%), 4.0 tasks/s, 45s elapsed"
    assert line == want
    assert "%" not in format_progress("embed", Snapshot(0, 0, 1), 1.0, 0.0)


def test_log_lines_go_to_the_current_stderr_and_obey_the_level(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from recspark.log import get_logger, set_level

    log = get_logger("ingest")
    try:
        log.info("ingest: started (run %s)", "r1")
        assert capsys.readouterr().err == "[recspark] ingest: started (run r1)\n"
        set_level("warning")
        log.info("hidden")
        log.warning("table t: trying again")
        assert capsys.readouterr().err == "[recspark] table t: trying again\n"
    finally:
        set_level("INFO")


def test_log_level_flag() -> None:
    from recspark.cli import parser

    assert parser().parse_args(["ingest", "--log-level", "warning"]).log_level == "WARNING"
    assert parser().parse_args(["run"]).log_level == "INFO"
    with pytest.raises(SystemExit):
        parser().parse_args(["run", "--log-level", "loud"])
