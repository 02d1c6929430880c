"""The diversity re-rank (MMR over text embeddings) of recommend (no Spark)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from recspark.recommend.config import RecommendConfig
from recspark.recommend.rerank import mmr_order
from recspark.recommend.scoring import ItemIndex, ScoreParams, score_batches

N_ITEMS = 16


def _fixture() -> tuple[ItemIndex, pd.DataFrame]:
    """Items 0..7 share one topic (near-identical text), items 8..15 are spread over others;
    the model scores the first topic highest."""
    rng = np.random.default_rng(2)
    text = np.zeros((N_ITEMS, 8), dtype=np.float32)
    text[:8, 0] = 1.0
    text[:8] += 0.05 * rng.normal(size=(8, 8)).astype(np.float32)
    for i in range(8, N_ITEMS):
        text[i, 1 + (i % 7)] = 1.0
    vectors = np.zeros((N_ITEMS, 2), dtype=np.float32)
    vectors[:, 0] = np.linspace(1.0, 0.5, N_ITEMS)  # item 0 best, then 1, 2, ...
    pdf = pd.DataFrame(
        {
            "item_id": [f"i{i:02d}" for i in range(N_ITEMS)],
            "vector": list(vectors),
            "title": [f"T{i}" for i in range(N_ITEMS)],
            "is_cold": [False] * N_ITEMS,
            "embedding": [list(t * 3.0) for t in text],  # not unit length: normalised
        }
    )
    users = pd.DataFrame(
        {
            "user_id": ["a", "b"],
            "vector": [np.array([1.0, 0.0], np.float32), np.array([1.0, 0.1], np.float32)],
            "seen": [["i01"], None],
        }
    )
    return ItemIndex.from_pandas(pdf), users


def _lists(index: ItemIndex, users: pd.DataFrame, params: ScoreParams) -> dict[str, list[str]]:
    out = pd.concat(list(score_batches(iter([users]), index, params)))
    return {u: list(g.sort_values("rank")["item_id"]) for u, g in out.groupby("user_id")}


def _diversity(index: ItemIndex, items: list[str]) -> float:
    assert index.text is not None
    pos = [index.ids.index(i) for i in items]
    sims = index.text[pos] @ index.text[pos].T
    n = len(pos)
    return float(1.0 - (sims.sum() - np.trace(sims)) / (n * (n - 1)))


def test_mmr_order_by_hand() -> None:
    unit = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    rel = np.array([1.0, 0.9, 0.5])
    assert list(mmr_order(rel, unit, 3, 0.0)) == [0, 1, 2]
    # lam 0.5: after 0, item 1 gains 0.5*0.8 - 0.5*1 = -0.1, item 2 gains 0.5*0 - 0 = 0.
    assert list(mmr_order(rel, unit, 3, 0.5)) == [0, 2, 1]
    assert list(mmr_order(rel, unit, 2, 0.5)) == [0, 2]


def test_lambda_zero_leaves_lists_unchanged() -> None:
    index, users = _fixture()
    plain = _lists(index, users, ScoreParams(k=5, reasons=False))
    off = _lists(
        index, users, ScoreParams(k=5, reasons=False, diversity=0.0, diversity_candidates=3)
    )
    assert off == plain
    assert plain["a"] == ["i00", "i02", "i03", "i04", "i05"]  # seen i01 left out


def test_positive_lambda_raises_diversity() -> None:
    index, users = _fixture()
    plain = _lists(index, users, ScoreParams(k=5, reasons=False))
    divs = {}
    for lam in (0.0, 0.3, 0.7):
        lists = _lists(
            index, users, ScoreParams(k=5, reasons=False, diversity=lam, diversity_candidates=3)
        )
        assert all(len(v) == 5 for v in lists.values())
        assert lists["a"][0] == plain["a"][0]  # the best item stays first
        assert "i01" not in lists["a"]  # exclusions still hold
        divs[lam] = np.mean([_diversity(index, v) for v in lists.values()])
    assert divs[0.3] > divs[0.0] + 0.1
    assert divs[0.7] >= divs[0.3]


def test_diversity_setting_is_validated() -> None:
    with pytest.raises(ValueError, match="diversity"):
        RecommendConfig(diversity=1.5)
    with pytest.raises(ValueError, match="diversity_candidates"):
        RecommendConfig(diversity_candidates=0)
