"""Top-K for user histories from a model's artifacts, with the recommend stage's kernel.

A registered model carries two files (no warehouse needed to use it):

* ``items.parquet``: the item catalog at training time: ``item_id``, ``vector`` (the item
  tower's output; null for an item without one), ``title``, ``category``, ``is_cold`` (no
  interactions) and ``popularity`` (summed interaction weight);
* ``settings.json``: the model version, the user tower's settings (``history_len``,
  ``recency_half_life``, ``event_weights``) and the ``recommend`` section it was trained with;
* ``users.parquet``, for a model with user vectors only: ``user_id``, ``vector`` (each known
  user's own learned vector, added to the user tower's when a history comes with its user).

The user tower is the recency-weighted mean of the vectors of the user's newest
``history_len`` distinct items (``train.dataset.weighted_user_vectors`` in Spark); scoring is
``recommend.scoring.score_batches``, the recommend stage's own task body, with its
``score_params``. A history with no item the model knows gets the most popular items.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from recspark.errors import ModelError
from recspark.recommend.config import RecommendConfig
from recspark.recommend.scoring import ItemIndex, ScoreParams, score_batches, score_params
from recspark.schema import (
    CATEGORY,
    IS_COLD,
    ITEM_ID,
    POPULARITY,
    RANK,
    SCORE,
    SEEN,
    TITLE,
    USER_ID,
    VECTOR,
)

ITEMS_FILE = "items.parquet"
SETTINGS_FILE = "settings.json"
USERS_FILE = "users.parquet"
# The pyfunc's input and output columns.
HISTORY = "history"
ITEM_IDS = "item_ids"
SCORES = "scores"
ITEM_COLUMNS = (ITEM_ID, VECTOR, TITLE, CATEGORY, IS_COLD, POPULARITY)


def model_settings(
    model_version: str,
    history_len: int,
    recency_half_life: float,
    event_weights: Mapping[str, float],
    rc: RecommendConfig,
) -> dict[str, Any]:
    """The contents of ``settings.json`` (pure)."""
    recommend = {k: v for k, v in dataclasses.asdict(rc).items() if k != "model"}
    return {
        "model_version": model_version,
        "history_len": int(history_len),
        "recency_half_life": float(recency_half_life),
        "event_weights": {str(k): float(v) for k, v in event_weights.items()},
        "recommend": recommend,
    }


def write_files(
    folder: str | Path,
    items: pd.DataFrame,
    settings: Mapping[str, Any],
    users: pd.DataFrame | None = None,
) -> None:
    """Write ``items.parquet`` and ``settings.json`` into ``folder``, and ``users.parquet``
    when ``users`` (``user_id``, ``vector``) is given."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    schema = pa.schema(
        [
            (ITEM_ID, pa.string()),
            (VECTOR, pa.list_(pa.float32())),
            (TITLE, pa.string()),
            (CATEGORY, pa.string()),
            (IS_COLD, pa.bool_()),
            (POPULARITY, pa.float64()),
        ]
    )
    frame = items[list(ITEM_COLUMNS)].sort_values(ITEM_ID, kind="stable")
    table = pa.Table.from_pandas(frame, schema=schema, preserve_index=False)
    pq.write_table(table, out / ITEMS_FILE)
    (out / SETTINGS_FILE).write_text(json.dumps(settings, indent=2, sort_keys=True))
    if users is not None:
        users_schema = pa.schema([(USER_ID, pa.string()), (VECTOR, pa.list_(pa.float32()))])
        frame = users[[USER_ID, VECTOR]].sort_values(USER_ID, kind="stable")
        pq.write_table(
            pa.Table.from_pandas(frame, schema=users_schema, preserve_index=False),
            out / USERS_FILE,
        )


def read_files(
    items_path: str | Path, settings_path: str | Path, users_path: str | Path | None = None
) -> Scorer:
    """The scorer of a model's ``items.parquet`` and ``settings.json`` (and ``users.parquet``).

    Raises:
        ModelError: a file is missing or unreadable.
    """
    import pyarrow.parquet as pq

    try:
        items = pq.read_table(str(items_path)).to_pandas()
        settings: dict[str, Any] = json.loads(Path(settings_path).read_text())
        users = pq.read_table(str(users_path)).to_pandas() if users_path is not None else None
    except (OSError, ValueError) as e:
        raise ModelError(f"not a recspark model ({items_path}, {settings_path}): {e}") from e
    return Scorer.from_frames(items, settings, users)


@dataclass(frozen=True)
class Scorer:
    """A model's items and settings, ready to score histories (picklable, no Spark)."""

    index: ItemIndex
    catalog_ids: tuple[str, ...]
    popularity: np.ndarray
    settings: dict[str, Any]
    # The users' own vectors (a model with user vectors): row of each user id, and the rows.
    user_rows: Mapping[str, int] = dataclasses.field(default_factory=dict)
    own_vectors: np.ndarray = dataclasses.field(
        default_factory=lambda: np.zeros((0, 0), dtype=np.float32)
    )

    @property
    def model_version(self) -> str:
        return str(self.settings["model_version"])

    @staticmethod
    def from_files(folder: str | Path) -> Scorer:
        """The scorer of a model folder (:func:`write_files`)."""
        users = Path(folder) / USERS_FILE
        return read_files(
            Path(folder) / ITEMS_FILE,
            Path(folder) / SETTINGS_FILE,
            users if users.exists() else None,
        )

    @staticmethod
    def from_frames(
        items: pd.DataFrame, settings: dict[str, Any], users: pd.DataFrame | None = None
    ) -> Scorer:
        items = items.sort_values(ITEM_ID, kind="stable").reset_index(drop=True)
        index = ItemIndex.from_pandas(items[[ITEM_ID, VECTOR, TITLE, IS_COLD]])
        rows: dict[str, int] = {}
        own = np.zeros((0, 0), dtype=np.float32)
        if users is not None and len(users):
            rows = {str(u): i for i, u in enumerate(users[USER_ID])}
            own = np.stack(users[VECTOR].to_numpy()).astype(np.float32)
        return Scorer(
            index=index,
            catalog_ids=tuple(str(i) for i in items[ITEM_ID]),
            popularity=items[POPULARITY].fillna(0.0).to_numpy(dtype=np.float64),
            settings=settings,
            user_rows=rows,
            own_vectors=own,
        )

    def own_vectors_frame(self) -> pd.DataFrame | None:
        """``user_id``, ``vector`` of the users' own vectors (None for a model without)."""
        if not self.user_rows:
            return None
        ids = sorted(self.user_rows, key=self.user_rows.__getitem__)
        return pd.DataFrame({USER_ID: ids, VECTOR: list(self.own_vectors)})

    def params(self, **overrides: Any) -> ScoreParams:
        """The recommend stage's kernel settings of this model, with ``overrides``."""
        rc = RecommendConfig(**{**self.settings["recommend"], "model": None})
        return score_params(rc, reasons=False, **overrides)

    def user_vectors(
        self, histories: Sequence[Iterable[str]], users: Sequence[str | None] | None = None
    ) -> list[np.ndarray | None]:
        """The user tower for each history (oldest first, newest last): the recency-weighted
        mean of the vectors of its newest ``history_len`` distinct items (an item counts at its
        first place), plus the user's own vector when ``users`` names a user the model knows
        (as in Spark); None when none of the items has a vector."""
        pos = {item: i for i, item in enumerate(self.index.ids)}
        n = int(self.settings["history_len"])
        half_life = float(self.settings["recency_half_life"])
        out: list[np.ndarray | None] = []
        for hist in histories:
            distinct = list(dict.fromkeys(str(h) for h in hist))[-n:]
            ages = np.arange(len(distinct) - 1, -1, -1, dtype=np.float64)
            known = [(pos[i], a) for i, a in zip(distinct, ages, strict=True) if i in pos]
            if not known:
                out.append(None)
                continue
            idx = np.array([k for k, _ in known], dtype=np.int64)
            w = np.power(0.5, np.array([a for _, a in known]) / half_life)
            vec = (w[:, None] * self.index.vectors[idx].astype(np.float64)).sum(axis=0)
            out.append((vec / w.sum()).astype(np.float32))
        for i, user in enumerate(users or ()):
            row = self.user_rows.get(str(user)) if user is not None else None
            vec = out[i]
            if row is not None and vec is not None:
                out[i] = vec + self.own_vectors[row]
        return out

    def popular(
        self, history: Iterable[str], k: int, exclude: bool
    ) -> tuple[list[str], list[float]]:
        """The ``k`` most popular items (ties: item id), leaving out ``history`` if ``exclude``."""
        seen = set(history) if exclude else set()
        order = sorted(
            range(len(self.catalog_ids)), key=lambda i: (-self.popularity[i], self.catalog_ids[i])
        )
        picked = [i for i in order if self.catalog_ids[i] not in seen][:k]
        return [self.catalog_ids[i] for i in picked], [float(self.popularity[i]) for i in picked]

    def top_k(
        self,
        histories: Sequence[Iterable[str]],
        k: int | None = None,
        exclude_history: bool = True,
        users: Sequence[str | None] | None = None,
    ) -> pd.DataFrame:
        """Top-K item ids and scores for each history, row for row.

        Args:
            histories: lists of item ids, oldest first, newest last.
            k: list length (default: the model's ``recommend.k``).
            exclude_history: leave out the items of the history.
            users: the user of each history (None where unknown), for a model with users'
                own vectors.

        Returns:
            ``item_ids`` (list of str) and ``scores`` (list of float), one row per history.
        """
        lists = [[str(h) for h in hist] if hist is not None else [] for hist in histories]
        params = self.params(exclude_seen=exclude_history, **({} if k is None else {"k": k}))
        vectors = self.user_vectors(lists, users)
        warm = [i for i, v in enumerate(vectors) if v is not None]
        ids: list[list[str]] = [[] for _ in lists]
        scores: list[list[float]] = [[] for _ in lists]
        if warm and self.index.ids:
            frame = pd.DataFrame(
                {
                    USER_ID: [str(i) for i in warm],
                    VECTOR: [vectors[i] for i in warm],
                    SEEN: [lists[i] for i in warm],
                }
            )
            for part in score_batches(iter([frame]), self.index, params):
                rows = part.sort_values([USER_ID, RANK])[[USER_ID, ITEM_ID, SCORE]]
                for user, item, score in rows.itertuples(index=False):
                    ids[int(user)].append(str(item))
                    scores[int(user)].append(float(score))
        for i, v in enumerate(vectors):
            if v is None:
                ids[i], scores[i] = self.popular(lists[i], params.k, exclude_history)
        return pd.DataFrame({ITEM_IDS: ids, SCORES: scores})
