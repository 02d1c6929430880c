"""The registered model: an ``mlflow.pyfunc`` model that recommends for user histories.

``predict`` takes a pandas DataFrame with a ``history`` column (lists of item ids, oldest first,
newest last), and, for a model with users' own vectors, an optional ``user_id`` column. It
returns, row for row, ``item_ids`` and ``scores`` (lists, best first), scored with the recommend
stage's kernel (:class:`recspark.registry.scorer.Scorer`). Params: ``k`` (default: the model's
``recommend.k``) and ``exclude_history`` (default true).

Load it anywhere with ``mlflow.pyfunc.load_model("models:/<name>@<alias>")``: the item vectors,
the item catalog and the towers are artifacts, and recspark's code travels with the model
(``code_paths``), so nothing is read from the warehouse.
"""

from __future__ import annotations

import importlib.metadata
import os
import tempfile
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import pandas as pd
from mlflow.pyfunc.model import PythonModel

import recspark
from recspark.errors import ModelError
from recspark.registry.scorer import (
    HISTORY,
    ITEM_IDS,
    ITEMS_FILE,
    SCORES,
    SETTINGS_FILE,
    USERS_FILE,
    Scorer,
    read_files,
)
from recspark.schema import USER_ID

ITEMS_ARTIFACT = "items"
SETTINGS_ARTIFACT = "settings"
USERS_ARTIFACT = "users"
# Packages the model needs where it is loaded, pinned to the versions it was logged with.
REQUIREMENTS = ("mlflow-skinny", "numpy", "pandas", "pyarrow", "torch", "pyspark")


class RecsparkRecommender(PythonModel):
    """Top-K item ids and scores for user histories (see the module docstring)."""

    def load_context(self, context: Any) -> None:
        self.scorer = read_files(
            context.artifacts[ITEMS_ARTIFACT],
            context.artifacts[SETTINGS_ARTIFACT],
            context.artifacts.get(USERS_ARTIFACT),
        )

    def predict(
        self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None
    ) -> pd.DataFrame:
        params = params or {}
        k = params.get("k")
        exclude = params.get("exclude_history", True)
        histories = [list(h) if h is not None else [] for h in model_input[HISTORY]]
        users = None
        if USER_ID in model_input.columns:
            users = [None if pd.isna(u) else str(u) for u in model_input[USER_ID]]
        return self.scorer.top_k(
            histories,
            k=int(k) if k is not None else None,
            exclude_history=bool(exclude),
            users=users,
        )


def _requirements() -> list[str]:
    out = []
    for name in REQUIREMENTS:
        try:
            out.append(f"{name}=={importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            continue
    return out


def save(
    path: str | Path,
    files: str | Path,
    towers: Sequence[str],
    example: Sequence[Sequence[str]],
) -> None:
    """Save the pyfunc model into the new folder ``path``.

    Args:
        path: where the MLflow model folder is written (must not exist).
        files: the folder with ``items.parquet`` and ``settings.json`` (and ``users.parquet``
            for a model with users' own vectors) (:func:`recspark.registry.scorer.write_files`).
        towers: the trained network's files (``model.pt``, ``meta.json``), kept as artifacts.
        example: a few histories, the input example.
    """
    from mlflow.models import infer_signature

    scorer = Scorer.from_files(files)
    model = RecsparkRecommender()
    model.scorer = scorer
    frame = pd.DataFrame({HISTORY: [list(h) for h in example]})
    own = scorer.own_vectors_frame()
    if own is not None:  # the example names known users: user_id is an (optional) input
        frame[USER_ID] = [str(u) for u in own[USER_ID][: len(frame)]] + [None] * max(
            0, len(frame) - len(own)
        )
    k = int(scorer.settings["recommend"]["k"])
    output = model.predict(None, frame, {"k": k, "exclude_history": True})
    signature = _optional_input(
        infer_signature(frame, output, params={"k": k, "exclude_history": True}), USER_ID
    )
    artifacts = {
        ITEMS_ARTIFACT: str(Path(files) / ITEMS_FILE),
        SETTINGS_ARTIFACT: str(Path(files) / SETTINGS_FILE),
    }
    if own is not None:
        artifacts[USERS_ARTIFACT] = str(Path(files) / USERS_FILE)
    for tower in towers:
        artifacts[f"towers_{Path(tower).stem}"] = tower
    with tempfile.TemporaryDirectory(prefix="recspark-code-") as scratch:
        mlflow.pyfunc.save_model(
            path=str(path),
            python_model=RecsparkRecommender(),
            artifacts=artifacts,
            signature=signature,
            input_example=frame,
            code_paths=[package_folder(os.path.dirname(recspark.__file__), scratch)],
            pip_requirements=_requirements(),
        )


def _optional_input(signature: Any, name: str) -> Any:
    """``signature`` with its input column ``name`` (when it has one) not required."""
    from mlflow.types.schema import ColSpec, Schema

    cols = [
        ColSpec(c.type, c.name, required=False) if c.name == name else c
        for c in signature.inputs.inputs
    ]
    signature.inputs = Schema(cols)
    return signature


def package_folder(package_dir: str, scratch: str) -> str:
    """A folder holding the recspark package, to copy into the model (``code_paths``).

    Installed or in a source tree, that is the package folder itself. Shipped with
    ``spark-submit --py-files recspark.zip``, the package lives inside the archive
    (``.../recspark.zip/recspark``), which MLflow cannot copy: its files are extracted under
    ``scratch`` first.
    """
    if os.path.isdir(package_dir):
        return package_dir
    archive, _, inner = package_dir.replace(os.sep, "/").partition(".zip/")
    if not inner:
        raise ModelError(f"cannot find recspark's code to log with the model: {package_dir}")
    prefix = inner.rstrip("/") + "/"
    with zipfile.ZipFile(archive + ".zip") as z:
        z.extractall(scratch, [n for n in z.namelist() if n.startswith(prefix)])
    return os.path.join(scratch, *prefix.rstrip("/").split("/"))


__all__ = ["ITEM_IDS", "SCORES", "RecsparkRecommender", "save"]
