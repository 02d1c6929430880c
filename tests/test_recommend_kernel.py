"""The torch top-K kernel against a brute-force numpy reference (no Spark)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from recspark.recommend.kernel import (
    brute_force_topk,
    exclusion_pairs,
    merge_topk,
    pick_device,
    plan_blocks,
    reserve_slots,
    select_topk,
    topk_scores,
)


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


@pytest.mark.parametrize(("ub", "ib"), [(1, 1), (4, 5), (7, 36), (100, 100)])
def test_blockwise_merge_equals_one_block(ub: int, ib: int) -> None:
    rng = np.random.default_rng(11)
    users, items = (
        torch.from_numpy(_int_vectors(rng, 19, 3)),
        torch.from_numpy(_int_vectors(rng, 41, 3)),
    )
    rows, cols = exclusion_pairs([rng.choice(41, size=5, replace=False) for _ in range(19)])
    one = topk_scores(
        users,
        items,
        6,
        exclude_rows=rows,
        exclude_items=cols,
        user_block_size=1000,
        item_block_size=1000,
    )
    blocked = topk_scores(
        users,
        items,
        6,
        exclude_rows=rows,
        exclude_items=cols,
        user_block_size=ub,
        item_block_size=ib,
    )
    assert torch.equal(one[1], blocked[1])
    assert torch.equal(one[0], blocked[0])


def test_merge_topk_of_partials_equals_select_on_all() -> None:
    rng = np.random.default_rng(3)
    scores = torch.from_numpy(rng.integers(0, 4, size=(5, 30)).astype(np.float32))
    parts = [select_topk(scores[:, a:b], 4, index_offset=a) for a, b in plan_blocks(30, 7)]
    merged = merge_topk(parts, 4)
    full = select_topk(scores, 4)
    assert torch.equal(merged[1], full[1])
    assert torch.equal(merged[0], full[0])


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
