"""Starting :func:`recspark.train.loop.train_worker` on one or more processes.

* ``local``: in this process (tests, development).
* ``horovod``: ``horovod.spark.run`` on the cluster's executors, one task per process, Gloo
  controller (NCCL collectives on GPUs when Horovod was built with them).
* ``torch_distributor``: Spark's ``TorchDistributor`` with ``torch.distributed`` (for
  Databricks runtimes without Horovod); on a local master the processes run on the driver.

The plan (process count, backend, learning-rate scaling, device) is made by the pure functions
of :mod:`recspark.train.plan`; these functions only run it.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from pyspark.sql import SparkSession

from recspark.errors import DependencyError, LaunchError
from recspark.train import bootstrap
from recspark.train.distributed import HorovodComm, TorchDistComm
from recspark.train.loop import TrainSpec, train_worker
from recspark.train.plan import LaunchPlan


def _horovod_main(spec: TrainSpec) -> dict[str, Any]:
    return train_worker(spec, HorovodComm())


def _torch_main(spec: TrainSpec, backend: str) -> dict[str, Any]:
    comm = TorchDistComm(backend)
    try:
        return train_worker(spec, comm)
    finally:
        comm.dist.destroy_process_group()


def _short(e: BaseException, limit: int = 600) -> str:
    text = " ".join(str(e).split())
    return text if len(text) <= limit else "..." + text[-limit:]


def executor_python(python_exec: str | None, driver_python: str) -> str:
    """The Python the training processes start with: the executors' (``spark.pyspark.python``
    / ``PYSPARK_PYTHON`` as the driver's SparkContext sees it), else the driver's."""
    return python_exec.strip() if python_exec and python_exec.strip() else driver_python


@contextmanager
def _pickled_by_value(cloudpickle: Any, module: Any) -> Iterator[None]:
    """Within the block, cloudpickle ships ``module``'s functions by value, not by name."""
    cloudpickle.register_pickle_by_value(module)
    try:
        yield
    finally:
        cloudpickle.unregister_pickle_by_value(module)


def run_local(spec: TrainSpec) -> list[dict[str, Any]]:
    """One process, here."""
    return [train_worker(spec)]


def run_horovod(
    spark: SparkSession, spec: TrainSpec, plan: LaunchPlan, timeout: int
) -> list[dict[str, Any]]:
    """``horovod.spark.run`` with ``plan.num_proc`` tasks; one summary per rank, rank order."""
    try:
        import horovod.spark as hvd_spark
    except ImportError as e:
        raise DependencyError(
            f"train.launcher=horovod needs horovod[spark] 0.28.1 ({e}); run scripts/setup.sh, "
            "or set train.launcher=torch_distributor"
        ) from e
    import cloudpickle

    sc = spark.sparkContext
    # The training processes need the code shipped with --py-files (see recspark.train.bootstrap)
    # and the executors' Python, not the driver's (horovod's default is the driver's
    # sys.executable, a path that need not exist on the executors).
    names = bootstrap.shipped_file_names(
        sc.getConf().get("spark.submit.pyFiles"), getattr(sc, "_python_includes", None) or ()
    )
    payload = cloudpickle.dumps((_horovod_main, (spec,)))
    try:
        with _pickled_by_value(cloudpickle, bootstrap):
            results = hvd_spark.run(
                bootstrap.run_shipped,
                args=(payload, names),
                num_proc=plan.num_proc,
                start_timeout=timeout,
                use_gloo=True,
                use_mpi=False,
                verbose=0,
                env=None,
                executable=executor_python(sc.pythonExec, sys.executable),
            )
    except Exception as e:  # horovod raises bare Exception for failed Spark jobs
        hint = ""
        if "No module named" in str(e):
            hint = (
                " (the executors' Python lacks a module: point spark.pyspark.python / "
                "PYSPARK_PYTHON at the environment that has recspark and horovod)"
            )
        raise LaunchError(
            f"horovod.spark.run(num_proc={plan.num_proc}) failed: {_short(e)}{hint}"
        ) from e
    return sorted(results, key=lambda r: int(r["rank"]))


def run_torch_distributor(spec: TrainSpec, plan: LaunchPlan) -> list[dict[str, Any]]:
    """``TorchDistributor(num_processes, local_mode, use_gpu).run``: rank 0's summary only."""
    from pyspark.ml.torch.distributor import TorchDistributor

    try:
        dist = TorchDistributor(
            num_processes=plan.num_proc, local_mode=plan.local_mode, use_gpu=plan.use_gpu
        )
        out = dist.run(_torch_main, spec, plan.backend)
    except Exception as e:
        raise LaunchError(
            f"TorchDistributor(num_processes={plan.num_proc}, local_mode={plan.local_mode}) "
            f"failed: {_short(e)}"
        ) from e
    if not isinstance(out, dict):
        raise LaunchError(f"TorchDistributor returned {type(out).__name__}, expected a summary")
    return [out]


def run_training(
    spark: SparkSession, spec: TrainSpec, plan: LaunchPlan, timeout: int = 600
) -> list[dict[str, Any]]:
    """Run ``spec`` as planned; the per-rank summaries that the launcher returns."""
    if plan.launcher == "local":
        return run_local(spec)
    if plan.launcher == "horovod":
        return run_horovod(spark, spec, plan, timeout)
    return run_torch_distributor(spec, plan)
