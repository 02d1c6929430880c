"""The torch top-K kernel against a brute-force numpy reference (no Spark)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from recspark.recommend import kernel
from recspark.recommend.kernel import (
    brute_force_topk,
    exclusion_pairs,
    pick_device,
    plan_blocks,
    rounding_margin,
    select_topk,
    topk_scores,
)
from recspark.recommend.rerank import reserve_slots


def _as_lists(vals: torch.Tensor, idx: torch.Tensor) -> list[list[tuple[int, float]]]:
    out = []
    for v, i in zip(vals.tolist(), idx.tolist(), strict=True):
        out.append([(int(b), float(a)) for a, b in zip(v, i, strict=True) if np.isfinite(a)])
    return out


def _int_vectors(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    # Small integers: exact float arithmetic and many tied scores, so the tie-break is tested.
    return rng.integers(-2, 3, size=(n, d)).astype(np.float32)


def test_plan_blocks() -> None:
    assert plan_blocks(0, 3) == []
    assert plan_blocks(7, 3) == [(0, 3), (3, 6), (6, 7)]
    assert plan_blocks(6, 3) == [(0, 3), (3, 6)]
    assert plan_blocks(2, 10) == [(0, 2)]
    with pytest.raises(ValueError, match="block_size"):
        plan_blocks(5, 0)
    with pytest.raises(ValueError, match="n must be"):
        plan_blocks(-1, 2)


def test_pick_device() -> None:
    assert pick_device("auto", cuda_available=False).type == "cpu"
    assert pick_device("auto", cuda_available=True).type == "cuda"
    assert pick_device("cpu", cuda_available=True).type == "cpu"
    with pytest.raises(ValueError, match="no CUDA"):
        pick_device("cuda", cuda_available=False)
    with pytest.raises(ValueError, match="one of"):
        pick_device("tpu")


def test_select_topk_ties_break_by_index() -> None:
    scores = torch.tensor([[1.0, 3.0, 3.0, 2.0, 3.0], [0.0, 0.0, 0.0, 0.0, 0.0]])
    vals, idx = select_topk(scores, 2)
    assert idx.tolist() == [[1, 2], [0, 1]]
    assert vals.tolist() == [[3.0, 3.0], [0.0, 0.0]]
    vals, idx = select_topk(scores, 3, index_offset=10)
    assert idx.tolist() == [[11, 12, 14], [10, 11, 12]]


def test_select_topk_k_larger_than_items_and_nan() -> None:
    scores = torch.tensor([[float("nan"), 1.0, float("-inf")]])
    vals, idx = select_topk(scores, 5)
    assert idx.tolist()[0][:1] == [1]
    assert vals.shape == (1, 3)
    assert int(torch.isfinite(vals).sum()) == 1


@pytest.mark.parametrize("k", [1, 5, 40])
def test_exact_topk_equals_brute_force_with_exclusions(k: int) -> None:
    rng = np.random.default_rng(7)
    users, items = _int_vectors(rng, 23, 4), _int_vectors(rng, 37, 4)
    seen = [
        set(rng.choice(37, size=rng.integers(0, 36), replace=False).tolist()) for _ in range(23)
    ]
    seen[0] = set(range(37))  # a user who saw everything gets nothing
    rows, cols = exclusion_pairs([np.array(sorted(s)) for s in seen])
    vals, idx = topk_scores(
        torch.from_numpy(users), torch.from_numpy(items), k, exclude_rows=rows, exclude_items=cols
    )
    got = _as_lists(vals, idx)
    assert got == brute_force_topk(users, items, k, seen)
    assert got[0] == []
    for row, s in zip(got, seen, strict=True):
        assert len(row) == min(k, 37 - len(s))


class FullRowCounter:
    """Counts the rows that ``topk_scores`` scores against every item (undecided group cut)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.rows = 0
        real = kernel._topk_in_full

        def counting(users, item_vecs, k, rows, ex_rows, ex_items):  # type: ignore[no-untyped-def]
            self.rows += int(rows.numel())
            return real(users, item_vecs, k, rows, ex_rows, ex_items)

        monkeypatch.setattr(kernel, "_topk_in_full", counting)


def _dyadic_vectors(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    # Multiples of 1/64: exact in float32 (any summation order), with few tied scores.
    return (rng.integers(-64, 65, size=(n, d)) / 64).astype(np.float32)


@pytest.mark.parametrize(
    ("ub", "ib", "g"),
    [(1000, 1000, 1), (1, 1, 1), (4, 5, 2), (7, 36, 3), (3, 16, 8), (100, 100, 41), (5, 7, 64)],
)
def test_block_and_group_sizes_give_identical_output(ub: int, ib: int, g: int) -> None:
    rng = np.random.default_rng(11)
    for users_np, items_np in (
        (_int_vectors(rng, 19, 3), _int_vectors(rng, 41, 3)),  # many ties
        (_dyadic_vectors(rng, 19, 5), _dyadic_vectors(rng, 41, 5)),  # few ties
    ):
        users, items = torch.from_numpy(users_np), torch.from_numpy(items_np)
        users[3] = 0.0  # a zero vector: every score ties
        seen = [rng.choice(41, size=5, replace=False) for _ in range(19)]
        rows, cols = exclusion_pairs(seen)
        one = topk_scores(
            users,
            items,
            6,
            exclude_rows=rows,
            exclude_items=cols,
            user_block_size=1000,
            item_block_size=1000,
            group_size=1000,
        )
        for workers in (1, 3):
            blocked = topk_scores(
                users,
                items,
                6,
                exclude_rows=rows,
                exclude_items=cols,
                user_block_size=ub,
                item_block_size=ib,
                group_size=g,
                workers=workers,
            )
            assert torch.equal(one[1], blocked[1]), workers
            assert torch.equal(one[0], blocked[0]), workers
        ref = brute_force_topk(users_np, items_np, 6, [set(s.tolist()) for s in seen])
        ref[3] = [(i, 0.0) for i in range(41) if i not in set(seen[3].tolist())][:6]
        assert _as_lists(*blocked) == ref


@pytest.mark.parametrize("g", [1, 4, 16])
def test_group_cut_is_exact_on_float_vectors(g: int, monkeypatch: pytest.MonkeyPatch) -> None:
    counter = FullRowCounter(monkeypatch)
    rng = np.random.default_rng(5)
    users, items = _dyadic_vectors(rng, 40, 6), _dyadic_vectors(rng, 300, 6)
    seen = [set(rng.choice(300, size=rng.integers(0, 60), replace=False).tolist()) for _ in users]
    rows, cols = exclusion_pairs([np.array(sorted(s), dtype=np.int64) for s in seen])
    vals, idx = topk_scores(
        torch.from_numpy(users),
        torch.from_numpy(items),
        7,
        exclude_rows=rows,
        exclude_items=cols,
        user_block_size=16,
        item_block_size=64,
        group_size=g,
    )
    assert _as_lists(vals, idx) == brute_force_topk(users, items, 7, seen)
    # Most rows are decided by the group cut (the path under test), not scored in full.
    assert counter.rows < 10


def test_ties_inside_the_chosen_groups_break_by_item_index(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    counter = FullRowCounter(monkeypatch)
    # Groups of 4; user [1]: group maxima 5, 4, 3, 2 (distinct: the cut is decided), and
    # three items tie at 5 in the first group.
    scores = [5, 5, 1, 5, 4, 0, 4, 0, 3, 3, 3, 3, 2, 2, 2, 2]
    items = torch.tensor([[float(x)] for x in scores])
    users = torch.tensor([[1.0], [0.0]])  # the second user ties everywhere (zero vector)
    vals, idx = topk_scores(users, items, 2, group_size=4, item_block_size=8)
    assert idx[0].tolist() == [0, 1] and vals[0].tolist() == [5.0, 5.0]
    assert idx[1].tolist() == [0, 1] and vals[1].tolist() == [0.0, 0.0]
    # Without item 1: 0 and 3 tie at 5, then 4 and 6 tie at 4 (the cut 3 > 2 is decided).
    vals, idx = topk_scores(users, items, 3, group_size=4, exclude_rows=[0], exclude_items=[1])
    assert idx[0].tolist() == [0, 3, 4] and vals[0].tolist() == [5.0, 5.0, 4.0]
    assert idx[1].tolist() == [0, 1, 2]
    assert counter.rows == 2  # only the zero user, twice


def test_a_cut_within_rounding_is_scored_in_full(monkeypatch: pytest.MonkeyPatch) -> None:
    counter = FullRowCounter(monkeypatch)
    eps = float(np.finfo(np.float32).eps)
    # The best items of groups 0 and 1 differ by one ulp (less than the rounding margin).
    items = torch.tensor([[1.0], [0.5], [1.0 + eps], [0.25]])
    assert eps < rounding_margin(1) * (1.0 + eps)
    vals, idx = topk_scores(torch.tensor([[1.0]]), items, 1, group_size=2)
    assert idx.tolist() == [[2]] and vals.tolist() == [[1.0 + eps]]
    assert counter.rows == 1


def test_candidates_with_exclusions_equal_brute_force() -> None:
    rng = np.random.default_rng(9)
    users, items = _int_vectors(rng, 12, 3), _int_vectors(rng, 50, 3)
    mask = rng.random(50) < 0.3
    seen = [set(rng.choice(50, size=8, replace=False).tolist()) for _ in range(12)]
    rows, cols = exclusion_pairs([np.array(sorted(s), dtype=np.int64) for s in seen])
    for k in (1, 4, 60):
        vals, idx = topk_scores(
            torch.from_numpy(users),
            torch.from_numpy(items),
            k,
            exclude_rows=rows,
            exclude_items=cols,
            candidates=torch.from_numpy(mask),
            group_size=4,
        )
        assert vals.shape == (12, min(k, 50))
        not_cand = {i for i in range(50) if not mask[i]}
        assert _as_lists(vals, idx) == brute_force_topk(
            users, items, k, [s | not_cand for s in seen]
        )
    none = topk_scores(
        torch.from_numpy(users),
        torch.from_numpy(items),
        3,
        candidates=torch.zeros(50, dtype=torch.bool),
    )
    assert none[0].shape == (12, 3) and not bool(torch.isfinite(none[0]).any())


def test_candidates_mask() -> None:
    users = torch.tensor([[1.0, 0.0]])
    items = torch.tensor([[5.0, 0.0], [4.0, 0.0], [3.0, 0.0], [2.0, 0.0]])
    mask = torch.tensor([False, True, False, True])
    _, idx = topk_scores(users, items, 3, candidates=mask)
    vals, _ = topk_scores(users, items, 3, candidates=mask)
    assert idx[0, :2].tolist() == [1, 3]
    assert not bool(torch.isfinite(vals[0, 2]))


def test_dimension_mismatch_and_nan_are_clear_errors() -> None:
    with pytest.raises(ValueError, match="3 dims but item vectors have 2"):
        topk_scores(torch.zeros(2, 3), torch.zeros(4, 2), 1)
    with pytest.raises(ValueError, match="finite"):
        topk_scores(torch.full((2, 2), float("nan")), torch.zeros(4, 2), 1)
    with pytest.raises(ValueError, match="group_size must be >= 1, found 0"):
        topk_scores(torch.zeros(2, 2), torch.zeros(4, 2), 1, group_size=0)
    with pytest.raises(
        ValueError, match=r"candidates must be a mask of shape \(4,\), found \(3,\)"
    ):
        topk_scores(
            torch.zeros(2, 2), torch.zeros(4, 2), 1, candidates=torch.ones(3, dtype=torch.bool)
        )


def test_reserve_slots_brings_in_best_cold_items() -> None:
    # Items 0..5 warm with high scores, 6..7 cold with low scores.
    users = torch.tensor([[1.0], [-1.0]])
    items = torch.tensor([[9.0], [8.0], [7.0], [6.0], [5.0], [4.0], [1.0], [2.0]])
    is_cold = torch.tensor([False] * 6 + [True, True])
    vals, idx = topk_scores(users, items, 4)
    cvals, cidx = topk_scores(users, items, 1, candidates=is_cold)
    v, i = reserve_slots(vals, idx, cvals, cidx, is_cold, 1)
    # user 0: best cold is item 7 (score 2) replacing the lowest warm (item 3).
    assert i[0].tolist() == [0, 1, 2, 7]
    assert v[0].tolist() == [9.0, 8.0, 7.0, 2.0]
    # user 1: cold items already lead (scores -1, -2): list unchanged.
    assert i[1].tolist() == idx[1].tolist() == [6, 7, 5, 4]
    cvals2, cidx2 = topk_scores(users, items, 2, candidates=is_cold)
    _, i2 = reserve_slots(vals, idx, cvals2, cidx2, is_cold, 2)
    assert i2[0].tolist() == [0, 1, 7, 6]


def test_config_defaults_are_the_kernel_defaults() -> None:
    from recspark.recommend.config import RecommendConfig
    from recspark.recommend.scoring import ScoreParams

    for params in (RecommendConfig(), ScoreParams()):
        assert params.user_block_size == kernel.USER_BLOCK_SIZE
        assert params.item_block_size == kernel.ITEM_BLOCK_SIZE
        assert params.group_size == kernel.GROUP_SIZE


def test_score_params_carry_every_kernel_setting() -> None:
    from recspark.evaluate.job import eval_score_params
    from recspark.recommend.config import RecommendConfig
    from recspark.recommend.scoring import score_params

    rc = RecommendConfig(
        user_block_size=3, item_block_size=5, group_size=7, torch_threads=2, device="cpu"
    )
    params = score_params(rc)
    assert (params.user_block_size, params.item_block_size, params.group_size) == (3, 5, 7)
    assert params.torch_threads == 2
    # evaluate scores every model with recommend's kernel settings, its own k and no reasons
    for cold in (True, False):
        ev = eval_score_params(rc, k=20, exclude_seen=False, cold_items=cold)
        assert (ev.user_block_size, ev.item_block_size, ev.group_size) == (3, 5, 7)
        assert (ev.torch_threads, ev.device, ev.k, ev.exclude_seen) == (2, "cpu", 20, False)
        assert not ev.reasons
        assert ev.cold_item_slots == (1 if cold else 0)  # null: 1 for a model without a record


def test_cold_settings_come_from_the_config_else_the_models_choice_else_the_defaults() -> None:
    from recspark.evaluate.job import eval_score_params
    from recspark.recommend.config import RecommendConfig, cold_settings, with_cold_choice
    from recspark.recommend.scoring import score_params

    choice = {"score": False, "slots": 0, "validation_targets": 0}
    auto = RecommendConfig()
    assert cold_settings(auto, None) == (True, 1)
    assert cold_settings(auto, choice) == (False, 0)
    assert cold_settings(RecommendConfig(score_cold_items=True), choice) == (True, 0)
    assert cold_settings(RecommendConfig(cold_item_slots=2), choice) == (False, 2)
    resolved = with_cold_choice(auto, choice)
    assert (resolved.score_cold_items, resolved.cold_item_slots) == (False, 0)
    p = score_params(auto, choice)
    assert (p.score_cold_items, p.cold_item_slots) == (False, 0)
    ev = eval_score_params(auto, k=5, exclude_seen=True, cold_items=True, cold_choice=choice)
    assert (ev.score_cold_items, ev.cold_item_slots) == (False, 0)


def test_cold_items_compete_everywhere_or_only_for_their_reserved_places() -> None:
    """Items c1, c2 (no interactions) score highest; w1..w3 follow. With
    ``score_cold_items`` they take any place; without it, only the reserved ones."""
    import pandas as pd

    from recspark.recommend.scoring import ItemIndex, ScoreParams, score_batches

    scores = {"c1": 0.9, "c2": 0.8, "w1": 0.7, "w2": 0.6, "w3": 0.5}
    index = ItemIndex.from_pandas(
        pd.DataFrame(
            {
                "item_id": list(scores),
                "vector": [np.array([s, 0.0], np.float32) for s in scores.values()],
                "title": list(scores),
                "is_cold": [i.startswith("c") for i in scores],
            }
        )
    )
    users = pd.DataFrame({"user_id": ["u"], "vector": [np.array([1.0, 0.0], np.float32)]})
    users["seen"] = [None]

    def top(**kw: object) -> list[str]:
        params = ScoreParams(**{"k": 3, "reasons": False, **kw})  # type: ignore[arg-type]
        out = pd.concat(list(score_batches(iter([users]), index, params)))
        return list(out.sort_values("rank")["item_id"])

    assert top() == ["c1", "c2", "w1"]
    assert top(cold_item_slots=1) == ["c1", "c2", "w1"]
    assert top(score_cold_items=False) == ["w1", "w2", "w3"]
    assert top(score_cold_items=False, cold_item_slots=1) == ["c1", "w1", "w2"]
    assert top(score_cold_items=False, cold_item_slots=2) == ["c1", "c2", "w1"]
    # Fewer warm items than places: cold items fill the rest, after every warm one, so the
    # list still has min(k, eligible) items (the contract).
    assert top(score_cold_items=False, k=5) == ["w1", "w2", "w3", "c1", "c2"]
    seen = users.assign(seen=[["w2"]])
    params = ScoreParams(k=4, reasons=False, score_cold_items=False)
    out = pd.concat(list(score_batches(iter([seen]), index, params)))
    assert list(out.sort_values("rank")["item_id"]) == ["w1", "w3", "c1", "c2"]
