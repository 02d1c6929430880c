"""The model folder: its layout, atomic writes, weights-only loading, checkpoints, metadata.

Model folder layout (``model_dir``, one per model version)::

    data/{train,valid,all}/   training examples (Parquet, read by Petastorm)
    data/items/               item-tower inputs per item index (Parquet)
    data/items_vocab/         item_id -> item_idx, known_all (Parquet)
    data/categories/          category -> cat_idx (Parquet)
    data/users_vocab/         user_id -> user_idx (Parquet)
    data/_READY               the data sets' sizes, written once they are all written
    checkpoints/last.pt       the last epoch's checkpoint (resume)
    model.pt, meta.json       the final model and its description
    user_vectors.parquet      user_id -> the user's own learned vector (a model that has them)

A run works in ``<model_dir>.partial`` (:func:`work_dir`) and renames it to ``model_dir``
(:func:`publish`) once the model is trained and tracked, so that ``model_dir`` only ever holds
a finished model. A killed run leaves the ``.partial`` folder, which the next run with the same
model version resumes from its last checkpoint.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import torch

from recspark.errors import ModelError
from recspark.storage import require_local
from recspark.train.reader import local_path

CHECKPOINT = "checkpoints/last.pt"
MODEL_FILE = "model.pt"
META_FILE = "meta.json"
READY = "_READY"
USERS_VOCAB = "users_vocab"  # under data/
USER_VECTORS_FILE = "user_vectors.parquet"
PARTIAL_SUFFIX = ".partial"


def fs_path(uri: str) -> str:
    """The filesystem path of model folder ``uri`` for torch, pyarrow and Petastorm.

    Checkpoints and Petastorm shards need storage every worker sees as files: a local or
    shared (NFS) path, ``file:``, ``dbfs:/`` (the ``/dbfs`` mount) or a Volume.
    """
    return require_local(uri, "model folders", "files")


# --------------------------------------------------------------------------- atomic writes


def write_atomic(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """Call ``write`` on a temporary file beside ``path``, flush it to disk, then rename it over
    ``path``: a kill at any moment leaves the previous file or the new one, never a torn one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def save_atomic(obj: Any, path: Path) -> None:
    """``torch.save`` of ``obj`` to ``path`` through :func:`write_atomic`.

    ``obj`` holds tensors and plain data only (state dicts, lists, str, int, float): it is read
    back with :func:`load_weights` (``weights_only=True``)."""
    write_atomic(path, lambda fh: torch.save(obj, fh))


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``path`` through a temporary file and a rename: readers (and a rerun after a kill)
    see the old content or the new, never part of it."""
    write_atomic(path, lambda fh: fh.write(text.encode("utf-8")))


# --------------------------------------------------------------------------- weights


# What torch's weights-only unpickler says about an object it refuses to build (a class, a
# function to call); anything else it rejects is a corrupt file.
_UNSAFE_RE = re.compile(
    r"(?:Unsupported global: GLOBAL \S+|unsupported GLOBAL \S+|Trying to call reduce for "
    r"unrecognized function \S+|Can only (?:create new object|build)[^.\n]*)"
)
_WEIGHTS_ERROR_RE = re.compile(r"WeightsUnpickler error: ([^\n]*)")


def load_weights(source: Path | BinaryIO, what: str, fix: str) -> Any:
    """``torch.load(source, weights_only=True)``: tensors and plain data (dicts, lists, tuples,
    str, int, float, bool, None), never an arbitrary pickled object, which could run code.

    ``what`` names the file in errors (``checkpoint <path>``, ``<model_dir>: model.pt``);
    ``fix`` says what the user can do.

    Raises:
        ModelError: one line: the file holds other objects (refused), or is corrupt or
            unreadable (truncated, not a torch file, an OSError).
    """
    try:
        return torch.load(source, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        found = _UNSAFE_RE.search(str(e))
        if found is None:
            cause = _WEIGHTS_ERROR_RE.search(str(e))
            detail = cause.group(1).strip() if cause else _last_line(e)
            raise ModelError(
                f"{what} is corrupt or not a weights-only file ({detail}); refused: recspark "
                f"loads weights only; {fix}"
            ) from e
        raise ModelError(
            f"{what} holds objects other than tensors and plain data ({found.group(0)}); "
            f"refused: recspark loads weights only, a pickled object could run code; {fix}"
        ) from e
    except Exception as e:  # truncated zip, bad pickle, OSError: all an unusable file
        raise ModelError(f"{what} is corrupt or unreadable ({_first_line(e)}); {fix}") from e


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


def _last_line(e: BaseException) -> str:
    text = [t for t in str(e).strip().splitlines() if t.strip()]
    return " ".join(text[-1].split()) if text else type(e).__name__


# --------------------------------------------------------------------------- checkpoints


def checkpoint_path(model_dir: str) -> Path:
    """Where the run in ``model_dir`` keeps its last checkpoint."""
    return Path(local_path(model_dir)) / CHECKPOINT


def write_checkpoint(model_dir: str, model: Any, optimizer: Any, state: dict[str, Any]) -> None:
    """Save the state dicts of ``model`` and ``optimizer`` and the run's ``state`` (phase,
    epoch, metric history) as the last checkpoint of the run in ``model_dir``."""
    save_atomic(
        {"model": model, "optimizer": optimizer, "state": state}, checkpoint_path(model_dir)
    )


def load_checkpoint(model_dir: str) -> dict[str, Any] | None:
    """The last checkpoint of the run in ``model_dir``, or None when it has none yet.

    Raises:
        ModelError: the checkpoint file exists but cannot be read as one (one line naming it).
    """
    path = checkpoint_path(model_dir)
    if not path.exists():
        return None
    ckpt = load_weights(
        path, f"checkpoint {path}", "delete it to train this model version from the start"
    )
    keys = ckpt.keys() if isinstance(ckpt, dict) else ()
    missing = [k for k in ("model", "optimizer", "state") if k not in keys]
    if missing:
        raise ModelError(
            f"checkpoint {path} is not a training checkpoint (missing {', '.join(missing)}); "
            "delete it to train this model version from the start"
        )
    out: dict[str, Any] = ckpt
    return out


# --------------------------------------------------------------------------- the final model


def write_model(model_dir: str, weights: dict[str, Any], meta: dict[str, Any]) -> None:
    """Write the final model's weights (``model.pt``) and description (``meta.json``)."""
    out = Path(local_path(model_dir))
    save_atomic(weights, out / MODEL_FILE)
    write_meta(out, meta)


def write_user_vectors(model_dir: str, data_dir: str, vectors: torch.Tensor) -> None:
    """Write ``user_vectors.parquet``: ``user_id`` and ``vector`` (list<float>) of every user
    of ``data_dir``'s ``users_vocab``, whose ``user_idx`` is the row of ``vectors``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    vocab = pq.read_table(os.path.join(local_path(data_dir), USERS_VOCAB)).sort_by("user_idx")
    rows = vectors.detach().cpu().to(torch.float32).numpy()
    idx = vocab.column("user_idx").to_numpy()
    if len(idx) != rows.shape[0] or (len(idx) and (idx[0] != 0 or idx[-1] != len(idx) - 1)):
        raise ModelError(
            f"{data_dir}: users_vocab numbers {len(idx)} users, expected 0..{rows.shape[0] - 1}"
        )
    flat = pa.array(rows.reshape(-1), type=pa.float32())
    table = pa.table(
        {
            "user_id": vocab.column("user_id").cast(pa.string()),
            "vector": pa.FixedSizeListArray.from_arrays(flat, rows.shape[1]).cast(
                pa.list_(pa.float32())
            ),
        }
    )
    path = Path(local_path(model_dir)) / USER_VECTORS_FILE
    write_atomic(path, lambda f: pq.write_table(table, f))


def user_vectors_path(model_dir: str) -> str | None:
    """The path of model folder ``model_dir``'s ``user_vectors.parquet``; None for a model
    without users' own vectors (its ``meta.json`` says which)."""
    if not read_meta(model_dir).get("user_vectors"):
        return None
    return os.path.join(fs_path(model_dir), USER_VECTORS_FILE)


def write_meta(folder: Path, meta: dict[str, Any]) -> None:
    """Write ``meta`` as the ``meta.json`` of the model folder at path ``folder``."""
    write_text_atomic(folder / META_FILE, json.dumps(meta, indent=2, sort_keys=True, default=str))


def read_meta(model_dir: str) -> dict[str, Any]:
    """The ``meta.json`` of model folder ``model_dir`` (the user tower's settings, metrics,
    the MLflow run).

    Raises:
        ModelError: no trained model there, or an unreadable file.
    """
    path = Path(fs_path(model_dir)) / META_FILE
    try:
        meta: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise ModelError(f"{model_dir}: no trained model ({META_FILE} missing)") from e
    except (OSError, ValueError) as e:
        raise ModelError(f"{model_dir}: unreadable {META_FILE}: {e}") from e
    return meta


def towers(model_dir: str) -> list[str]:
    """The trained network's files in model folder ``model_dir`` (weights and description)."""
    root = fs_path(model_dir)
    return [os.path.join(root, MODEL_FILE), os.path.join(root, META_FILE)]


# --------------------------------------------------------------------------- work folder


def work_dir(root: str) -> str:
    """The folder a run of model folder ``root`` works in until the model is finished."""
    return root.rstrip("/") + PARTIAL_SUFFIX


def is_finished(root: Path) -> bool:
    """Whether the folder at path ``root`` holds a final model and its description."""
    return (root / MODEL_FILE).exists() and (root / META_FILE).exists()


def prepare_work_dir(root: Path, work: Path) -> None:
    """Make ``work`` the folder to train in; ``root`` must not exist afterwards.

    A ``root`` without a finished model (left by a version that trained in place) is moved to
    ``work`` so that its checkpoint is resumed.
    """
    root.parent.mkdir(parents=True, exist_ok=True)
    if root.exists():
        if work.exists():
            shutil.rmtree(root)  # the .partial folder is the newer run: keep it
        else:
            os.replace(root, work)
    work.mkdir(parents=True, exist_ok=True)


def publish(work: Path, root: Path) -> None:
    """Rename the finished ``work`` folder to ``root`` (one atomic rename)."""
    try:
        os.replace(work, root)
    except OSError as e:
        raise ModelError(f"cannot move the finished model {work} to {root}: {e.strerror}") from e
