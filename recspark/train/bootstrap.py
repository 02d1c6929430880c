"""The first code of every ``horovod.spark.run`` training process on a cluster.

``horovod.spark.run`` starts each training process as ``<python> -m
horovod.spark.task.gloo_exec_fn`` from a Spark task. That process does not inherit the task's
``sys.path``: the wheel shipped with ``--py-files`` (which Spark's Python workers put on their
path themselves) is missing from it, so unpickling anything of recspark fails with ``No module
named 'recspark'`` wherever recspark is not installed on the executors (standalone, Kubernetes).

:func:`run_shipped` is pickled *by value* (``cloudpickle.register_pickle_by_value`` on this
module, see :func:`recspark.train.launch.run_horovod`), so the process can run it before it can
import recspark: it puts the shipped files back on ``sys.path``, then unpickles and calls the
real function. Only the standard library and cloudpickle may be imported here, inside functions.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any


def shipped_file_names(
    submit_py_files: str | None, includes: Sequence[str] = ()
) -> tuple[str, ...]:
    """Base names of the files shipped with ``--py-files`` / ``addPyFile``, in order, once each.

    Args:
        submit_py_files: the driver's ``spark.submit.pyFiles`` (comma-separated paths or URLs).
        includes: further base names (PySpark's list of files added with ``addPyFile``).
    """
    names: list[str] = []
    for entry in [*(submit_py_files or "").split(","), *includes]:
        name = entry.strip().rstrip("/").rsplit("/", 1)[-1]
        if name and name not in names:
            names.append(name)
    return tuple(names)


def shipped_paths(base: str, names: Sequence[str], exists: Callable[[str], bool]) -> list[str]:
    """The paths under ``base`` (the Spark task's working folder) of the shipped ``names``
    that ``exists``; executors download ``--py-files`` into their working folder."""
    import os

    return [p for p in (os.path.join(base, n) for n in names) if exists(p)]


def run_shipped(payload: bytes, names: Sequence[str]) -> Any:
    """Put the shipped files on ``sys.path``, then run ``fn(*args)`` pickled in ``payload``.

    The working folder of the Spark task that started this process is
    ``$HOROVOD_SPARK_WORK_DIR`` (set by Horovod), else the current one.
    """
    import os
    import sys

    import cloudpickle

    base = os.environ.get("HOROVOD_SPARK_WORK_DIR") or os.getcwd()
    for path in reversed(shipped_paths(base, names, os.path.exists)):
        if path not in sys.path:
            # After the script's folder, before site-packages: the shipped code wins.
            sys.path.insert(1, path)
    fn, args = cloudpickle.loads(payload)
    return fn(*args)
