"""Train stage: planning, data building, the model, Petastorm sharding, launchers, resume."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import pickle
import signal
import subprocess
import sys
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from chispa import assert_df_equality
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import (
    ArrayType,
    FloatType,
    IntegerType,
    StringType,
    StructField,
    StructType,
    TimestampType,
)

from recspark import schema as S
from recspark.config import Config
from recspark.errors import ConfigError, InputError, LaunchError, ModelError
from recspark.ingest.transforms import build_interactions
from recspark.train import dataset as ds
from recspark.train.artifacts import CHECKPOINT, MODEL_FILE, load_checkpoint, read_meta
from recspark.train.config import TrainConfig
from recspark.train.inference import item_vectors, user_vectors
from recspark.train.launch import run_training
from recspark.train.loop import (
    TrainSpec,
    cold_choice,
    context_for_epoch,
    decide_context,
    pin_mmap_threshold,
    train_worker,
    trained_user_vectors,
    user_vectors_for,
)
from recspark.train.model import (
    ItemFeatures,
    ModelShape,
    TwoTower,
    batch_loss,
    evaluate,
    rank_metrics,
    recency_weights,
)
from recspark.train.plan import (
    DataPlan,
    LaunchPlan,
    fused_adam,
    is_local_master,
    model_version,
    plan_backend,
    plan_data,
    plan_device,
    plan_files,
    plan_launch,
    plan_num_proc,
    plan_threads,
    scaled_learning_rate,
)
from recspark.train.reader import _load_examples, dataset_url, shard_batches, shard_rows
from recspark.train.trainer import fit, training_metrics

# petastorm 0.12 reads through pyarrow's legacy dataset API, which warns on every row group.
pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning:petastorm")

EVENTS_SCHEMA = StructType(
    [
        StructField("user_id", StringType(), False),
        StructField("item_id", StringType(), False),
        StructField("event_type", StringType(), False),
        StructField("event_ts", TimestampType(), False),
    ]
)
ITEMS_SCHEMA = StructType(
    [StructField("item_id", StringType(), False), StructField("category", StringType())]
)
EMB_SCHEMA = StructType(
    [
        StructField("item_id", StringType(), False),
        StructField("embedding", ArrayType(FloatType(), False), False),
    ]
)
N_CATS, PER_CAT, TEXT_DIM = 4, 8, 8
T0 = datetime(2024, 1, 1)


def _item(c: int, j: int) -> str:
    return f"c{c}i{j}"


def synthetic(spark: SparkSession, users_per_cat: int = 10, seed: int = 0) -> tuple[DataFrame, ...]:
    """A separable world: users stay in one category; text embeddings point to the category.

    Item ``c{c}i7`` of every category is a cold item: in the catalog, never in events; item
    ``c{c}i6`` is new in the validation period (only the final model learns its id).
    """
    rng = np.random.default_rng(seed)
    events: list[tuple[str, str, str, datetime]] = []
    for c in range(N_CATS):
        for u in range(users_per_cat):
            user = f"u{c}_{u}"
            seq = rng.permutation(PER_CAT - 2)[:5]
            for t, j in enumerate(seq):
                ts = T0 + timedelta(days=2 * t + float(rng.random()), hours=u)
                etype = "purchase" if t % 3 == 0 else "view"
                events.append((user, _item(c, int(j)), etype, ts))
            if u < 3:
                events.append((user, _item(c, 6), "click", T0 + timedelta(days=11, hours=u)))
    items = [(_item(c, j), f"cat{c}") for c in range(N_CATS) for j in range(PER_CAT)]
    embs = []
    for c in range(N_CATS):
        for j in range(PER_CAT):
            v = 0.3 * rng.standard_normal(TEXT_DIM)
            v[c] += 1.0
            embs.append((_item(c, j), [float(x) for x in v]))
    return (
        spark.createDataFrame(events, EVENTS_SCHEMA),
        spark.createDataFrame(items, ITEMS_SCHEMA),
        spark.createDataFrame(embs, EMB_SCHEMA),
    )


def small_cfg(warehouse: str, **train: Any) -> Config:
    base: dict[str, Any] = {
        "launcher": "local",
        "num_proc": 1,
        "epochs": 3,
        "batch_size": 16,
        "learning_rate": 0.01,
        "dim": 8,
        "history_len": 4,
        "recency_half_life": 2.0,
        "patience": 2,
        "validation_days": 2.0,
        "negatives": 8,
        "reader_pool": "dummy",
        "data_files": 4,
        "torch_threads": 1,
    }
    base.update(train)
    return Config(warehouse=warehouse, seed=7, train=TrainConfig(**base))


# --------------------------------------------------------------------------- planning


def test_adam_is_fused_where_torch_has_the_kernel_and_steps_as_the_plain_one() -> None:
    assert fused_adam("cpu") is True
    assert fused_adam("cuda") is True
    assert fused_adam("mps") is None
    torch.manual_seed(0)
    start, grads = torch.randn(50, 8), [torch.randn(50, 8) for _ in range(3)]
    params = [torch.nn.Parameter(start.clone()) for _ in range(2)]
    plain = torch.optim.Adam([params[0]], lr=0.01, weight_decay=1e-4)
    fused = torch.optim.Adam([params[1]], lr=0.01, weight_decay=1e-4, fused=fused_adam("cpu"))
    for g in grads:
        for p, opt in zip(params, (plain, fused), strict=True):
            p.grad = g.clone()
            opt.step()
    assert not torch.equal(params[1].detach(), start)
    torch.testing.assert_close(params[1].detach(), params[0].detach(), rtol=1e-5, atol=1e-6)


def test_plan_backend_device_and_lr() -> None:
    assert plan_backend(False) == "gloo"
    assert plan_backend(True) == "nccl"
    assert plan_device(False, True, 3) == "cpu"
    assert plan_device(True, True, 1) == "cuda:1"
    with pytest.raises(LaunchError, match="no CUDA"):
        plan_device(True, False, 0)
    assert scaled_learning_rate(0.002, 4) == pytest.approx(0.008)
    assert plan_threads(0, 8, 2) == 4
    assert plan_threads(0, 2, 4) == 1
    assert plan_threads(3, 2, 4) == 3


def test_plan_num_proc_and_launch() -> None:
    assert plan_num_proc("local", 8, 2) == 1
    assert plan_num_proc("horovod", 2, 2) == 2
    assert plan_num_proc("torch_distributor", 4, 2) == 4  # torchrun does not need task slots
    with pytest.raises(LaunchError, match="2 task slots"):
        plan_num_proc("horovod", 3, 2)
    assert is_local_master("local[2]") and is_local_master("local") and is_local_master("local[*]")
    assert not is_local_master("spark://host:7077") and not is_local_master(None)
    plan = plan_launch(TrainConfig(launcher="horovod", num_proc=2), slots=4, cores=2, master="yarn")
    assert plan == LaunchPlan("horovod", 2, "gloo", False, 0.004, 1, False)


def test_plan_files_cuts_rows_into_near_equal_files() -> None:
    assert plan_files(1000, 8, 500) == (8, 125)
    assert plan_files(1001, 8, 500) == (8, 126)  # 7 x 126 + 119: every file within one row
    assert plan_files(3, 8, 500) == (3, 1)  # fewer rows than files: one row per file
    assert plan_files(0, 8, 500) == (1, 1)  # an empty data set is still written (one empty file)
    # more files than asked when one would hold over max_rows: a worker decodes a file whole
    assert plan_files(1000, 8, 100) == (10, 100)
    assert plan_files(1001, 8, 100) == (11, 91)
    for rows, files, most in ((1000, 8, 500), (17, 4, 3), (5, 2, 5), (2, 8, 1), (10**7, 8, 5**7)):
        parts, per_file = plan_files(rows, files, most)
        # Spark's writer cuts each partition at per_file rows: even one coalesced partition
        # gives `parts` files.
        assert math.ceil(rows / per_file) == parts
        assert per_file <= most and parts >= min(files, rows)
    with pytest.raises(ValueError, match="files"):
        plan_files(10, 0, 100)
    with pytest.raises(ValueError, match="max_rows"):
        plan_files(10, 8, 0)


def test_the_workers_allocator_threshold_is_pinned_where_glibc_is(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import ctypes
    import platform

    if platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
        assert pin_mmap_threshold() is True
    calls: list[tuple[int, int]] = []

    class Libc:
        def mallopt(self, param: int, value: int) -> int:
            calls.append((param, value))
            return 1

    monkeypatch.setattr(ctypes, "CDLL", lambda name: Libc())
    assert pin_mmap_threshold(4096) is True and calls == [(-3, 4096)]

    def missing(name: str) -> Any:
        raise OSError(name)

    monkeypatch.setattr(ctypes, "CDLL", missing)
    assert pin_mmap_threshold() is False


def test_a_worker_loads_only_its_share_of_the_validation_examples(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    ids = [4, 0, 3, 1, 2]  # written out of order: shares follow example_id
    pq.write_table(
        pa.table(
            {
                "example_id": pa.array(ids, pa.int64()),
                "user_idx": pa.array([10 + i for i in ids], pa.int32()),
                "target": pa.array([20 + i for i in ids], pa.int32()),
                "history": pa.array([[-1, i] for i in ids], pa.list_(pa.int32())),
            }
        ),
        tmp_path / "part-0.parquet",
    )
    hist, target, users = _load_examples(str(tmp_path), rank=1, size=2)
    assert hist.tolist() == [[-1, 1], [-1, 3]]
    assert target.tolist() == [21, 23] and users.tolist() == [11, 13]
    assert _load_examples(str(tmp_path), rank=0, size=2)[1].tolist() == [20, 22, 24]
    assert _load_examples(str(tmp_path))[1].tolist() == [20, 21, 22, 23, 24]


def test_the_reader_holds_at_most_its_workers_decoded_row_groups_ahead(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import petastorm

    seen: dict[str, Any] = {}

    class Reader:
        def __iter__(self) -> Any:
            return iter(())

        def stop(self) -> None: ...

        def join(self) -> None: ...

    def fake(url: str, **kw: Any) -> Reader:
        seen.update(kw)
        return Reader()

    monkeypatch.setattr(petastorm, "make_batch_reader", fake)
    assert list(shard_batches("file:///x", 0, 2, ["target"], 4, 1, 1, "thread", 3)) == []
    assert seen["workers_count"] == 3 and seen["results_queue_size"] == 3


def test_plan_data_uses_fewer_workers_or_no_validation_and_says_so() -> None:
    plenty = plan_data(2, train_groups=8, all_groups=8, train_rows=900, valid_rows=100)
    assert plenty == DataPlan(workers=2, validate=True, notes=())
    # Every example after the cut (a short history): the final phase only, on all examples;
    # the empty train set (one file, no row group) does not limit the workers.
    late = plan_data(2, train_groups=0, all_groups=8, train_rows=0, valid_rows=300)
    assert late.workers == 2 and not late.validate
    assert len(late.notes) == 1 and "no examples before the validation cut" in late.notes[0]
    none_after = plan_data(1, train_groups=8, all_groups=8, train_rows=300, valid_rows=0)
    assert not none_after.validate and "after the validation cut" in none_after.notes[0]
    # Fewer row groups than train.num_proc: fewer workers, with a note that says why.
    few = plan_data(4, train_groups=1, all_groups=3, train_rows=1, valid_rows=2)
    assert few.workers == 1 and few.validate
    assert "1 worker(s) instead of train.num_proc=4" in few.notes[-1]
    assert plan_data(4, 0, 3, 0, 3).workers == 3
    with pytest.raises(InputError, match="no training examples"):
        plan_data(2, train_groups=0, all_groups=0, train_rows=0, valid_rows=0)
    # The launch follows: fewer processes, learning rate and threads scaled to them.
    cfg = TrainConfig(launcher="horovod", num_proc=2)
    capped = plan_launch(cfg, slots=4, cores=2, master="yarn", max_proc=few.workers)
    assert capped == LaunchPlan("horovod", 1, "gloo", False, 0.002, 2, False)


def test_model_version_is_stable_and_checked() -> None:
    a = model_version({"dim": 8}, 1, {"silver/events": 3})
    assert a == model_version({"dim": 8}, 1, {"silver/events": 3})
    assert a != model_version({"dim": 8}, 1, {"silver/events": 4})
    assert a != model_version({"dim": 16}, 1, {"silver/events": 3})
    assert model_version({}, 1, {}, "v1") == "v1"
    with pytest.raises(ConfigError, match="model_version"):
        model_version({}, 1, {}, "../x")


def test_train_config_rejects_bad_values() -> None:
    with pytest.raises(ValueError, match="data_files"):
        TrainConfig(num_proc=4, data_files=2)
    with pytest.raises(ValueError, match="batch_size"):
        TrainConfig(batch_size=1)


# --------------------------------------------------------------------------- model


def test_recency_weights_match_the_formula() -> None:
    mask = torch.tensor([[False, True, True, True]])
    w = recency_weights(mask, 2.0)
    expected = [0.0, 0.5**1.0, 0.5**0.5, 1.0]
    assert torch.allclose(w, torch.tensor([expected]))


def _separable_tensors(n: int, seed: int) -> tuple[ItemFeatures, torch.Tensor, torch.Tensor]:
    """Items 0..31 in 4 categories; a history of items 1..7 of a category predicts its item 0."""
    g = torch.Generator().manual_seed(seed)
    n_items = N_CATS * PER_CAT
    cat = torch.arange(n_items) // PER_CAT
    text = 0.3 * torch.randn(n_items, TEXT_DIM, generator=g)
    text[torch.arange(n_items), cat] += 1.0
    feats = ItemFeatures(text, torch.arange(1, n_items + 1), cat + 1)
    c = torch.randint(0, N_CATS, (n,), generator=g)
    hist = torch.randint(1, PER_CAT, (n, 3), generator=g) + (c * PER_CAT).unsqueeze(1)
    hist[:, 0] = -1  # padding
    return feats, hist, c * PER_CAT


def test_loss_falls_and_ranking_beats_chance_on_separable_data() -> None:
    torch.manual_seed(0)
    feats, hist, target = _separable_tensors(512, 1)
    model = TwoTower(ModelShape(TEXT_DIM, N_CATS * PER_CAT, N_CATS, dim=8, temperature=0.1))
    opt = torch.optim.Adam(model.parameters(), lr=0.02)
    weight = torch.ones(64)
    losses = []
    for step in range(60):
        i = slice((step * 64) % 512, (step * 64) % 512 + 64)
        opt.zero_grad()
        negs = torch.randint(0, N_CATS * PER_CAT, (16,))
        loss = batch_loss(model, feats, hist[i], target[i], weight, negs)
        loss.backward()
        opt.step()
        losses.append(float(loss))
    assert np.mean(losses[-10:]) < 0.5 * losses[0]
    # The right item ranks first for nearly everyone (chance: NDCG@5 about 0.1).
    ndcg, recall, n = rank_metrics(model, feats, hist[:128], target[:128], k=5)
    assert n == 128 and ndcg / n > 0.9 and recall / n > 0.95


def test_ranking_metrics_match_a_numpy_reference() -> None:
    feats, hist, _ = _separable_tensors(7, 4)
    target = torch.tensor([0, 9, 17, 25, 3, 30, 12])
    torch.manual_seed(0)
    model = TwoTower(ModelShape(TEXT_DIM, N_CATS * PER_CAT, N_CATS, dim=8)).eval()
    with torch.no_grad():
        items = model.items(feats, torch.arange(N_CATS * PER_CAT)).numpy()
        users = model.users(feats, hist).numpy()

    def reference(left_out: set[int]) -> tuple[float, float]:
        ndcg_ref, hits_ref = 0.0, 0.0
        for u, h, t in zip(users, hist.numpy(), target.numpy(), strict=True):
            scores = items @ u
            excluded = {int(i) for i in h if i >= 0} | left_out
            better = sum(1 for j, sc in enumerate(scores) if j not in excluded and sc > scores[t])
            rank = better + 1
            if rank <= 5 and int(t) not in left_out:
                ndcg_ref += 1.0 / np.log2(rank + 1)
                hits_ref += 1.0
        return ndcg_ref, hits_ref

    ndcg_ref, hits_ref = reference(set())
    ndcg, hits, n = evaluate(model, feats, hist, target, k=5, chunk=2)
    assert n == 7 and hits_ref > 0
    assert ndcg == pytest.approx(ndcg_ref, rel=1e-5) and hits == hits_ref
    # Items left out of the lists (the cold ones, in validation): a target among them misses.
    left_out = {9, 30, 1, 2, 5, 11}
    exclude = torch.zeros(N_CATS * PER_CAT, dtype=torch.bool)
    exclude[sorted(left_out)] = True
    ndcg_ref, hits_ref = reference(left_out)
    ndcg, hits, n = evaluate(model, feats, hist, target, k=5, chunk=2, exclude=exclude)
    assert ndcg == pytest.approx(ndcg_ref, rel=1e-5) and hits == hits_ref


def test_cold_choice_is_read_from_the_best_validation_epoch() -> None:
    def epoch(e: int, scored: float, excluded: float, cold: float) -> dict[str, Any]:
        return {
            "phase": "validate",
            "epoch": e,
            "val_ndcg_at_10": scored,
            "val_ndcg_at_10_cold_excluded": excluded,
            "val_cold_targets": cold,
        }

    history = [epoch(1, 0.20, 0.10, 3.0), epoch(2, 0.30, 0.35, 0.0), {"phase": "final", "epoch": 1}]
    assert cold_choice(history, 1, 10) == {
        "validation_targets": 3,
        "ndcg_scored": 0.20,
        "ndcg_excluded": 0.10,
        "score": True,
        "slots": 1,
    }
    second = cold_choice(history, 2, 10)
    assert second is not None and (second["score"], second["slots"]) == (False, 0)
    assert cold_choice(history[2:], 1, 10) is None  # no validation phase


def test_the_training_context_is_the_history_until_the_half_life_says_order_is_weak() -> None:
    # auto: the bag once the half-life after the first epoch reaches the history length
    assert decide_context("auto", 100.0, 100) == "bag"
    assert decide_context("auto", 99.9, 100) == "preceding"
    assert decide_context("preceding", 1e6, 100) == "preceding"
    assert decide_context("bag", 1.0, 100) == "bag"
    # a phase's first epoch (and any epoch before a decision) trains on the history
    assert [context_for_epoch("auto", e, "bag") for e in (1, 2, 3)] == [
        "preceding",
        "bag",
        "bag",
    ]
    assert context_for_epoch("auto", 2, None) == "preceding"
    assert [context_for_epoch("bag", e, "preceding") for e in (1, 2)] == ["bag", "bag"]
    assert [context_for_epoch("preceding", e, "bag") for e in (1, 2)] == ["preceding"] * 2


def test_user_vectors_are_trained_on_the_bag_under_auto() -> None:
    assert [user_vectors_for("auto", c) for c in ("preceding", "bag")] == [False, True]
    assert [user_vectors_for("on", c) for c in ("preceding", "bag")] == [True, True]
    assert [user_vectors_for("off", c) for c in ("preceding", "bag")] == [False, False]
    history = [
        {"phase": "validate", "epoch": 2, "context": "bag"},
        {"phase": "final", "epoch": 1, "context": "preceding"},
    ]
    # only the final phase's epochs count: its model is the one written
    assert not trained_user_vectors("auto", history)
    assert trained_user_vectors("auto", [*history, {"phase": "final", "context": "bag"}])
    assert trained_user_vectors("on", history)


def test_a_users_own_vector_is_added_to_the_history_mean() -> None:
    feats, hist, target = _separable_tensors(6, 2)
    shape = ModelShape(TEXT_DIM, N_CATS * PER_CAT, N_CATS, dim=8)
    plain = TwoTower(shape)
    torch.manual_seed(0)
    with_users = TwoTower(dataclasses.replace(shape, n_users=3))
    with_users.load_state_dict({**plain.state_dict(), "user_emb.weight": torch.zeros(4, 8)})
    plain.eval()
    with_users.eval()  # no id dropout: the two towers see the same items
    users = torch.tensor([0, 2, -1, 1, 0, 2])
    # zero at the start: the same scores and loss as a model without user vectors
    np.testing.assert_allclose(
        with_users.users(feats, hist, user_idx=users).detach().numpy(),
        plain.users(feats, hist).detach().numpy(),
    )
    own = torch.randn(3, 8)
    with torch.no_grad():
        with_users.user_emb.weight[1:] = own
    got = with_users.users(feats, hist, user_idx=users).detach().numpy()
    ref = plain.users(feats, hist).detach().numpy()
    ref = ref + np.stack([own[u].numpy() if u >= 0 else np.zeros(8) for u in users.tolist()])
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)  # user -1: the history only
    np.testing.assert_allclose(with_users.user_offsets().numpy(), own.numpy())
    assert plain.user_offsets() is None
    # the loss trains the rows of the batch's users only
    loss = batch_loss(with_users, feats, hist, target, torch.ones(6), user_idx=users)
    loss.backward()
    grad = with_users.user_emb.weight.grad.abs().sum(dim=1)
    assert grad[0] == 0 and bool((grad[1:] > 0).all())


def test_the_pooled_user_tower_is_the_gathered_one_with_its_gradients() -> None:
    torch.manual_seed(0)
    model = TwoTower(ModelShape(TEXT_DIM, 10, 2, dim=4, learn_recency=True))
    vecs = torch.randn(10, 4, requires_grad=True)
    # item 3 twice in a row; a row of padding only
    pos = torch.tensor([[-1, 3, 3, 7], [2, 0, 9, 1], [-1, -1, -1, 5], [-1, -1, -1, -1]])
    pooled = model.pooled_users(vecs, pos)
    (g_vecs, g_hl) = torch.autograd.grad(pooled.square().sum(), [vecs, model.log_half_life])
    gathered = model.user_tower(vecs[pos.clamp_min(0)], pos >= 0)
    (r_vecs, r_hl) = torch.autograd.grad(gathered.square().sum(), [vecs, model.log_half_life])
    torch.testing.assert_close(pooled, gathered)
    torch.testing.assert_close(g_vecs, r_vecs)
    torch.testing.assert_close(g_hl, r_hl)


def test_zero_weight_rows_give_zero_gradient() -> None:
    feats, hist, target = _separable_tensors(8, 2)
    model = TwoTower(ModelShape(TEXT_DIM, N_CATS * PER_CAT, N_CATS, dim=8))
    loss = batch_loss(model, feats, hist, target, torch.zeros(8))
    loss.backward()
    assert float(loss) == 0.0
    assert all(float(p.grad.abs().sum()) == 0.0 for p in model.parameters() if p.grad is not None)


# --------------------------------------------------------------------------- data


def test_sequence_examples_history_and_padding(spark: SparkSession) -> None:
    ts = [T0 + timedelta(hours=h) for h in range(4)]
    inter = spark.createDataFrame(
        [
            ("u", "a", 1.0, ts[0]),
            ("u", "c", 2.0, ts[1]),
            ("u", "b", 1.0, ts[1]),
            ("u", "a2", 4.0, ts[3]),
            ("v", "a", 1.0, ts[0]),
        ],
        "user_id string, item_id string, weight double, first_ts timestamp",
    )
    index = spark.createDataFrame(
        [("a", 0), ("a2", 1), ("b", 2), ("c", 3)], "item_id string, item_idx int"
    )
    got = ds.sequence_examples(inter, index, history_len=2).drop(ds.EXAMPLE_ID, ds.TS)
    schema = StructType(
        [
            StructField("user_id", StringType()),
            StructField("target", IntegerType()),
            StructField("history", ArrayType(IntegerType())),
            StructField("weight", FloatType()),
        ]
    )
    # Order a, b, c (tie on time broken by item id), a2; v has a single interaction: no example.
    expected = spark.createDataFrame(
        [("u", 2, [-1, 0], 1.0), ("u", 3, [0, 2], 2.0), ("u", 1, [2, 3], 4.0)], schema
    )
    assert_df_equality(got, expected, ignore_nullable=True, ignore_row_order=True)


def _bag_examples(spark: SparkSession) -> DataFrame:
    """User u's items in order 10, 11, ..., 15 (targets 11..15), v's 20, 21; history_len 2."""
    rows = []
    for user, items in (("u", list(range(10, 16))), ("v", [20, 21])):
        for pos in range(1, len(items)):
            hist = items[max(0, pos - 2) : pos]
            rows.append((user, items[pos], [-1] * (2 - len(hist)) + hist))
    return spark.createDataFrame(rows, "user_id string, target int, history array<int>")


def test_bag_contexts_are_the_users_other_items(spark: SparkSession) -> None:
    examples = _bag_examples(spark)
    got = {
        (r["user_id"], r["target"]): r["context"]
        for r in ds.bag_contexts(examples, 10, seed=7).collect()
    }
    items = {"u": set(range(10, 16)), "v": {20, 21}}
    assert len(got) == 6
    for (user, target), context in got.items():
        assert len(context) == 10  # padded on the left, as the history
        real = [c for c in context if c >= 0]
        assert context[: 10 - len(real)] == [-1] * (10 - len(real))
        # every other item of the user, the first one (only ever in a history) included
        assert sorted(real) == sorted(items[user] - {target})


def test_bag_contexts_draw_one_bounded_pool_per_user(spark: SparkSession) -> None:
    examples = _bag_examples(spark)
    rows = ds.bag_contexts(examples, 2, seed=7).where(F.col("user_id") == "u").collect()
    contexts = {r["target"]: r["context"] for r in rows}
    # history_len 2: a pool of 3 of u's 6 items; each context is 2 pool items, never its target
    pool = {c for ctx in contexts.values() for c in ctx}
    assert len(pool) == 3 and pool <= set(range(10, 16))
    for target, ctx in contexts.items():
        assert len(ctx) == 2 and target not in ctx and len(set(ctx)) == 2
    # the seed decides the draw: the same seed, the same contexts
    again = ds.bag_contexts(examples, 2, seed=7).where(F.col("user_id") == "u").collect()
    assert {r["target"]: r["context"] for r in again} == contexts
    pools = {
        frozenset(c for r in ds.bag_contexts(examples, 2, seed=s).collect() for c in r["context"])
        for s in range(6)
    }
    assert len(pools) > 1


def test_interactions_from_events_weights_and_cutoff(spark: SparkSession) -> None:
    events = spark.createDataFrame(
        [
            ("u", "a", "view", T0),
            ("u", "a", "purchase", T0 + timedelta(hours=1)),
            ("u", "b", "view", T0 + timedelta(days=2)),
            ("u", "c", "unknown", T0),
        ],
        EVENTS_SCHEMA,
    )
    got = ds.interactions_from_events(events, {"view": 1.0, "purchase": 8.0}, as_of="2024-01-02")
    expected = spark.createDataFrame(
        [("u", "a", 9.0, T0)], "user_id string, item_id string, weight double, first_ts timestamp"
    )
    assert_df_equality(got, expected, ignore_nullable=True)


def test_training_weights_are_the_interactions_table_weights_with_decay(
    spark: SparkSession,
) -> None:
    """Train learns from the weights that recommend and evaluate read in silver/interactions:
    with ``ingest.decay_half_life_days`` set, both decay by age from the newest event."""
    events = spark.createDataFrame(
        [
            ("u", "a", "purchase", T0),
            ("u", "b", "view", T0 + timedelta(days=1)),
            ("v", "b", "view", T0 + timedelta(days=3)),
        ],
        EVENTS_SCHEMA,
    )
    weights, half_life = {"view": 1.0, "purchase": 8.0}, 2.0
    got = ds.interactions_from_events(events, weights, decay_half_life_days=half_life)
    table = build_interactions(events, event_weights=weights, decay_half_life_days=half_life)
    assert_df_equality(
        got,
        table.select(S.USER_ID, S.ITEM_ID, S.WEIGHT, S.FIRST_TS),
        ignore_nullable=True,
        ignore_row_order=True,
    )
    # numpy reference: weight * 0.5 ** (age_days / half_life), age from the newest event (day 3)
    expected = {("u", "a"): 8.0 * 0.5 ** (3 / 2), ("u", "b"): 0.5 ** (2 / 2), ("v", "b"): 1.0}
    rows = {(r[S.USER_ID], r[S.ITEM_ID]): r[S.WEIGHT] for r in got.collect()}
    assert rows.keys() == expected.keys()
    np.testing.assert_allclose([rows[k] for k in expected], list(expected.values()), rtol=1e-9)


def test_spark_user_vectors_match_the_torch_user_tower(spark: SparkSession) -> None:
    rng = np.random.default_rng(3)
    vecs = rng.standard_normal((5, 3)).astype(np.float32)
    iv = spark.createDataFrame(
        [(f"i{j}", [float(x) for x in vecs[j]]) for j in range(5)],
        "item_id string, vector array<float>",
    )
    inter = spark.createDataFrame(
        [("u", f"i{j}", 1.0, T0 + timedelta(hours=j)) for j in (4, 0, 2, 3)],
        "user_id string, item_id string, weight double, first_ts timestamp",
    )
    last = ds.last_interactions(inter, history_len=3)
    got = np.array(ds.weighted_user_vectors(last, iv, 1.5).collect()[0]["vector"])
    # torch reference: history oldest -> newest = i2, i3, i4 (i0 falls out of the last 3).
    model = TwoTower(ModelShape(3, 5, 1, dim=3, recency_half_life=1.5))
    hist = torch.tensor([[2, 3, 4]])
    ref = model.user_tower(torch.from_numpy(vecs)[hist], hist >= 0)[0].numpy()
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)


def test_own_vectors_are_added_to_known_users_only(spark: SparkSession) -> None:
    schema = "user_id string, vector array<float>"
    history = spark.createDataFrame([("a", [1.0, 2.0]), ("b", [0.5, -1.0])], schema)
    own = spark.createDataFrame([("a", [0.25, -0.5]), ("z", [9.0, 9.0])], schema)
    got = ds.add_own_vectors(history, own)
    ref = np.array([1.0, 2.0], dtype=np.float32) + np.array([0.25, -0.5], dtype=np.float32)
    expected = spark.createDataFrame([("a", [float(x) for x in ref]), ("b", [0.5, -1.0])], schema)
    assert_df_equality(got, expected, ignore_row_order=True, ignore_nullable=True)


def _write_examples(spark: SparkSession, path: str, n: int, files: int) -> None:
    df = spark.range(n).select(
        F.col("id").alias("example_id"),
        (F.col("id") % 7).cast("int").alias("target"),
        F.array(F.lit(-1), (F.col("id") % 5).cast("int")).alias("history"),
        F.lit(1.0).cast("float").alias("weight"),
    )
    df.repartition(files).write.mode("overwrite").parquet(path)


def test_petastorm_shards_deliver_every_row_exactly_once(
    spark: SparkSession, tmp_path: Path
) -> None:
    path = str(tmp_path / "ex")
    _write_examples(spark, path, n=103, files=5)  # 5 row groups over 2 ranks: uneven shards
    url = dataset_url(path)
    fields = ["example_id", "target", "history", "weight"]
    seen: list[int] = []
    counts = []
    for rank in range(2):
        rows = shard_rows(url, rank, 2, "example_id")
        batches = list(
            shard_batches(
                url, rank, 2, fields, 10, seed=1, epoch=1, pool="dummy", shuffle_buffer=16
            )
        )
        assert len(batches) == math.ceil(rows / 10)
        assert all(len(b["example_id"]) == 10 for b in batches[:-1])
        assert batches[0]["history"].shape[1] == 2
        seen += [int(i) for b in batches for i in b["example_id"]]
        counts.append(rows)
    assert sorted(seen) == list(range(103))
    assert counts[0] != counts[1] and sum(counts) == 103


# --------------------------------------------------------------------------- fit and launchers


@pytest.fixture(scope="module")
def fitted(spark: SparkSession, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One model for the module, trained by the job on Delta inputs (local launcher)."""
    from recspark import tables
    from recspark.train import job

    wh = str(tmp_path_factory.mktemp("train_fit") / "warehouse")
    events, items, embs = synthetic(spark)
    tables.overwrite(events, wh, tables.SILVER_EVENTS)
    tables.overwrite(items, wh, tables.SILVER_ITEMS)
    tables.overwrite(embs, wh, tables.GOLD_ITEM_EMBEDDINGS)
    cfg = small_cfg(wh, model_version="v1")
    summary = job.run(spark, cfg)
    return {
        "wh": wh,
        "cfg": cfg,
        "summary": summary,
        "result": fit(spark, cfg, events, items, embs, summary["model_dir"]),
        "events": events,
        "items": items,
        "embs": embs,
        "model_dir": summary["model_dir"],
    }


def test_fit_writes_a_tracked_model_that_learned_from_all_data(fitted: dict[str, Any]) -> None:
    import json

    result = fitted["result"]
    assert result.model_version == "v1"
    meta = json.loads((Path(fitted["model_dir"]) / "meta.json").read_text())
    phases = [(h["phase"], h["epoch"]) for h in meta["history"]]
    best = meta["best_epoch"]
    assert 1 <= best <= 3
    assert phases[-best:] == [("final", e) for e in range(1, best + 1)]
    assert result.metrics["valid_examples"] > 0 and result.metrics["train_examples"] > 0
    assert 0.0 <= result.metrics["val_ndcg_at_10"] <= 1.0
    # The half-life was learned (from 2.0), and the shape the scorers read carries it.
    state = torch.load(Path(fitted["model_dir"]) / "model.pt", weights_only=True)
    learned = float(state["log_half_life"].exp())
    assert meta["shape"]["learn_recency"] and abs(learned - 2.0) > 1e-3
    assert meta["shape"]["recency_half_life"] == pytest.approx(learned)
    assert result.metrics["recency_half_life"] == pytest.approx(learned)
    # The cold-item choice of the best validation epoch is recorded and returned.
    cold = meta["cold_items"]
    assert cold is not None and result.cold_items == cold
    assert cold["score"] == (cold["ndcg_scored"] > cold["ndcg_excluded"])
    assert cold["slots"] == (1 if cold["validation_targets"] > 0 else 0)
    # The final model's item ids cover the validation period too (it learned from everything).
    feats = Path(fitted["model_dir"]) / "data" / "items"
    import pyarrow.parquet as pq

    t = pq.read_table(str(feats)).to_pandas()
    assert (t.known_all.sum() > t.known_train.sum()) and not (t.known_train & ~t.known_all).any()
    from recspark.registry.store import store

    cfg = fitted["cfg"]
    client = store(cfg.mlflow, cfg.locations()).client()
    run = client.get_run(meta["mlflow_run_id"])
    assert result.mlflow_run_id == meta["mlflow_run_id"]
    assert run.data.tags["model_version"] == "v1"
    assert fitted["summary"]["registered_version"] == "1"
    assert run.data.tags["registered_model_version"] == "recspark/1"
    assert "validate/val_ndcg_at_10" in run.data.metrics
    assert run.data.params["train.dim"] == "8"
    hist = client.get_metric_history(run.info.run_id, "validate/train_loss")
    assert len(hist) == sum(1 for p, _ in phases if p == "validate")
    # Fitting again with the same model folder reuses the finished model.
    again = fit(
        SparkSession.getActiveSession(),
        fitted["cfg"],
        fitted["events"],
        fitted["items"],
        fitted["embs"],
        fitted["model_dir"],
    )
    assert again == result


def test_vectors_cover_cold_items_and_score_like_the_model(
    spark: SparkSession, fitted: dict[str, Any]
) -> None:
    iv = item_vectors(spark, fitted["model_dir"], fitted["items"], fitted["embs"])
    assert iv.schema["vector"].dataType == ArrayType(FloatType())
    got = {r["item_id"]: np.array(r["vector"]) for r in iv.collect()}
    assert set(got) == {_item(c, j) for c in range(N_CATS) for j in range(PER_CAT)}
    assert all(abs(np.linalg.norm(v) - 1) < 1e-4 for v in got.values())
    # Cold items (c*i7, never in events) score from their text: nearest to their category.
    for c in range(N_CATS):
        cold = got[_item(c, 7)]
        same = np.mean([cold @ got[_item(c, j)] for j in range(7)])
        other = np.mean([cold @ got[_item((c + 1) % N_CATS, j)] for j in range(7)])
        assert same > other
    uv = user_vectors(spark, fitted["model_dir"], fitted["events"], iv)
    users = {r["user_id"]: np.array(r["vector"]) for r in uv.collect()}
    assert len(users) == N_CATS * 10
    # Spark's user vectors use the learned half-life: the torch user tower of the saved model
    # gives the same vector from the same history.
    meta = read_meta(fitted["model_dir"])
    model = TwoTower(ModelShape(**meta["shape"]))
    model.load_weights(torch.load(Path(fitted["model_dir"]) / "model.pt", weights_only=True))
    some = sorted(users)[0]
    last = ds.last_interactions(
        ds.interactions_from_events(
            fitted["events"].where(F.col("user_id") == some), meta["event_weights"]
        ),
        int(meta["history_len"]),
    )
    hist = [r["item_id"] for r in last.orderBy(F.col("age").desc()).collect()]
    ref = (
        model.user_tower(
            torch.from_numpy(np.stack([got[i] for i in hist]))[None],
            torch.ones(1, len(hist), dtype=torch.bool),
        )[0]
        .detach()
        .numpy()
    )
    np.testing.assert_allclose(users[some], ref, rtol=1e-4, atol=1e-5)
    # A new user (not in training) with a history of category-2 items gets category-2 scores.
    new = spark.createDataFrame(
        [("new", _item(2, 0), "view", T0), ("new", _item(2, 1), "view", T0 + timedelta(hours=1))],
        EVENTS_SCHEMA,
    )
    nv = np.array(user_vectors(spark, fitted["model_dir"], new, iv).collect()[0]["vector"])
    scores = {i: float(nv @ v) for i, v in got.items()}
    top = sorted(scores, key=lambda i: -scores[i])[:4]
    assert all(i.startswith("c2") for i in top)


def _spec_for(tmp: Path, data_dir: str, **kw: Any) -> TrainSpec:
    base = dict(
        data_dir=data_dir,
        model_dir=str(tmp),
        shape=ModelShape(TEXT_DIM, N_CATS * PER_CAT, N_CATS, dim=8, temperature=0.1),
        epochs=2,
        patience=2,
        batch_size=16,
        learning_rate=0.01,
        history_len=4,
        negatives=8,
        seed=3,
        reader_pool="dummy",
        torch_threads=1,
    )
    base.update(kw)
    return TrainSpec(**base)  # type: ignore[arg-type]


def test_killed_run_resumes_from_its_checkpoint(fitted: dict[str, Any], tmp_path: Path) -> None:
    data_dir = str(Path(fitted["model_dir"]) / "data")
    whole = train_worker(_spec_for(tmp_path / "whole", data_dir))
    killed = _spec_for(tmp_path / "killed", data_dir)
    # A separate process is SIGKILLed right after its first checkpoint: no cleanup runs.
    (tmp_path / "spec.pkl").write_bytes(pickle.dumps(killed))
    code = (
        "import os, pickle, signal, sys\n"
        "from recspark.train import loop\n"
        "save = loop.save_checkpoint\n"
        "def save_and_die(run):\n"
        "    save(run)\n"
        "    if (run.state['phase'], run.state['epoch']) == ('validate', 1):\n"
        "        os.kill(os.getpid(), signal.SIGKILL)\n"
        "loop.save_checkpoint = save_and_die\n"
        "loop.train_worker(pickle.loads(open(sys.argv[1], 'rb').read()))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "spec.pkl")], capture_output=True, timeout=300
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
    assert (tmp_path / "killed" / "checkpoints" / "last.pt").exists()
    assert not (tmp_path / "killed" / MODEL_FILE).exists()
    resumed = train_worker(killed)
    assert resumed["resumed_from"] == "validate:1"
    assert whole["resumed_from"] is None
    # Resuming replays exactly what the uninterrupted run did.
    assert resumed["history"] == whole["history"]
    assert resumed["digest"] == whole["digest"]


def test_auto_context_switches_to_the_bag_and_trains_on_it(
    fitted: dict[str, Any], tmp_path: Path
) -> None:
    data_dir = str(Path(fitted["model_dir"]) / "data")
    flat = ModelShape(
        TEXT_DIM, N_CATS * PER_CAT, N_CATS, dim=8, temperature=0.1, recency_half_life=50.0
    )
    auto = train_worker(_spec_for(tmp_path / "auto", data_dir, shape=flat, context="auto"))
    # a fixed half-life of 50 >= history_len 4: order says little, the bag after epoch 1
    assert [(h["phase"], h["epoch"], h["context"]) for h in auto["history"]][:2] == [
        ("validate", 1, "preceding"),
        ("validate", 2, "bag"),
    ]
    assert [h["context"] for h in auto["history"] if h["phase"] == "final"][:2] == [
        "preceding",
        "bag",
    ][: auto["best_epoch"]]
    meta = read_meta(str(tmp_path / "auto"))
    assert meta["context"] == {"mode": "auto", "after_first_epoch": "bag"}
    assert not meta["user_vectors"]  # the shape has none
    steep_shape = dataclasses.replace(flat, recency_half_life=1.0)
    steep = train_worker(_spec_for(tmp_path / "steep", data_dir, shape=steep_shape, context="auto"))
    assert {h["context"] for h in steep["history"]} == {"preceding"}
    # the bag column is what a bag epoch reads: the same run on the history differs
    bag = train_worker(_spec_for(tmp_path / "bag", data_dir, context="bag"))
    preceding = train_worker(_spec_for(tmp_path / "prec", data_dir, context="preceding"))
    assert {h["context"] for h in bag["history"]} == {"bag"}
    assert bag["digest"] != preceding["digest"]


def test_user_vectors_are_learned_on_the_bag_and_written_per_user(
    fitted: dict[str, Any], tmp_path: Path
) -> None:
    import pyarrow.parquet as pq

    data_dir = str(Path(fitted["model_dir"]) / "data")
    vocab = pq.read_table(os.path.join(data_dir, "users_vocab")).to_pandas()
    assert sorted(vocab.user_idx) == list(range(len(vocab)))
    examples = pq.read_table(os.path.join(data_dir, "train")).to_pandas()
    assert set(examples.user_idx) <= set(vocab.user_idx)
    shape = ModelShape(
        TEXT_DIM,
        N_CATS * PER_CAT,
        N_CATS,
        dim=8,
        temperature=0.1,
        recency_half_life=50.0,
        n_users=len(vocab),
    )
    spec = _spec_for(tmp_path / "users", data_dir, shape=shape, context="bag")
    on_bag = train_worker(dataclasses.replace(spec, user_embedding="auto"))
    meta = read_meta(str(tmp_path / "users"))
    assert meta["user_vectors"] == trained_user_vectors("auto", on_bag["history"])
    assert meta["user_vectors"]  # every epoch on the bag
    state = torch.load(tmp_path / "users" / MODEL_FILE, weights_only=True)
    written = pq.read_table(tmp_path / "users" / "user_vectors.parquet").to_pandas()
    rows = dict(zip(vocab.user_id, vocab.user_idx, strict=True))
    assert sorted(written.user_id) == sorted(rows)
    for user, vec in zip(written.user_id, written.vector, strict=True):
        np.testing.assert_array_equal(vec, state["user_emb.weight"][rows[user] + 1].numpy())
    assert float(state["user_emb.weight"][1:].abs().sum()) > 0
    # the same run with user vectors off: none written, and the history alone scores
    off = dataclasses.replace(spec, model_dir=str(tmp_path / "off"), user_embedding="off")
    train_worker(off)
    assert not read_meta(str(tmp_path / "off"))["user_vectors"]
    assert not (tmp_path / "off" / "user_vectors.parquet").exists()


class _Payload:
    """What a tampered checkpoint holds: an object whose unpickling runs code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (exec, (f"open({str(self.marker)!r}, 'w').close()",))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol 4:UserWarning")
def test_a_checkpoint_or_model_with_a_pickled_object_is_refused(
    spark: SparkSession, tmp_path: Path
) -> None:
    path = tmp_path / CHECKPOINT
    path.parent.mkdir(parents=True)
    good = {
        "model": {"w": torch.ones(2, 3)},
        "optimizer": {
            "state": {0: {"step": torch.tensor(1.0)}},
            "param_groups": [{"lr": 0.01, "betas": (0.9, 0.999), "foreach": None, "params": [0]}],
        },
        "state": {"phase": "final", "epoch": 2, "history": [{"phase": "final", "loss": 0.5}]},
    }
    torch.save(good, path)
    ckpt = load_checkpoint(str(tmp_path))
    assert ckpt is not None and ckpt["state"]["epoch"] == 2
    torch.testing.assert_close(ckpt["model"]["w"], torch.ones(2, 3))
    marker = tmp_path / "code_ran"
    for tampered in (
        lambda: torch.save({**good, "state": _Payload(marker)}, path),
        lambda: path.write_bytes(pickle.dumps(_Payload(marker), protocol=2)),  # a bare pickle
    ):
        tampered()
        with pytest.raises(ModelError, match=f"checkpoint {path} holds objects other") as e:
            load_checkpoint(str(tmp_path))
        assert "\n" not in str(e.value) and "(Unsupported global: GLOBAL builtins.exec)" in str(
            e.value
        )
        assert not marker.exists()
    path.write_bytes(pickle.dumps(_Payload(marker), protocol=4))  # opcodes torch does not read
    with pytest.raises(ModelError, match=f"checkpoint {path} is corrupt or not a weights-only"):
        load_checkpoint(str(tmp_path))
    assert not marker.exists()
    # The final model file, read by item_vectors on the driver before any Spark work.
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "meta.json").write_text(json.dumps({"shape": ModelShape(4, 3, 2).to_dict()}))
    torch.save({"w": _Payload(marker)}, model_dir / MODEL_FILE)
    with pytest.raises(ModelError, match=f"model file {model_dir / MODEL_FILE} holds") as e:
        item_vectors(spark, str(model_dir), spark.range(1), spark.range(1))
    assert "\n" not in str(e.value) and not marker.exists()


def _state(path: Path) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = torch.load(
        path / MODEL_FILE, map_location="cpu", weights_only=True
    )
    return out


@pytest.mark.slow
def test_horovod_two_ranks_and_torch_distributor_train_the_same_model(
    spark: SparkSession, fitted: dict[str, Any], tmp_path: Path
) -> None:
    data_dir = str(Path(fitted["model_dir"]) / "data")
    plan = LaunchPlan("horovod", 2, "gloo", False, 0.02, 1, True)
    spec = _spec_for(tmp_path / "hvd", data_dir, learning_rate=0.02)
    ranks = run_training(spark, spec, plan, timeout=120)
    assert [r["rank"] for r in ranks] == [0, 1] and all(r["size"] == 2 for r in ranks)
    assert ranks[0]["digest"] == ranks[1]["digest"]
    # Every training row exactly once per epoch across the two ranks.
    import pyarrow.parquet as pq

    assert ranks[0]["epoch_rows"].keys() == ranks[1]["epoch_rows"].keys()
    for key in ranks[0]["epoch_rows"]:
        part = "train" if key.startswith("validate") else "all"
        ids = pq.read_table(os.path.join(data_dir, part), columns=["example_id"])
        expected = ids.column("example_id").to_pylist()
        (rows0, sum0), (rows1, sum1) = ranks[0]["epoch_rows"][key], ranks[1]["epoch_rows"][key]
        # Row counts and id sums (mod 2**64) of both ranks add up to the data set's: the shards
        # cover it.
        got = (rows0 + rows1, (sum0 + sum1) % 2**64)
        assert got == (len(expected), sum(expected) % 2**64), key
        assert rows0 > 0 and rows1 > 0, key
    # The same training under TorchDistributor (torch.distributed, Gloo) gives the same model.
    td_plan = dataclasses.replace(plan, launcher="torch_distributor")
    td_spec = dataclasses.replace(spec, model_dir=str(tmp_path / "td"))
    (td,) = run_training(spark, td_spec, td_plan)
    assert td["rank"] == 0 and td["size"] == 2
    assert td["history"][-1]["phase"] == "final"
    hv, tv = _state(tmp_path / "hvd"), _state(tmp_path / "td")
    for name in hv:
        torch.testing.assert_close(hv[name], tv[name], rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_fit_without_examples_before_the_cut_trains_on_all_and_says_so(
    spark: SparkSession, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every example in the validation period (a short history): the train set is empty,
    which failed in Petastorm (no row group for the shard); now the final phase trains on all
    examples for train.epochs epochs, and the log says why."""
    events, items, embs = synthetic(spark, users_per_cat=3)
    cfg = small_cfg(str(tmp_path / "wh"), validation_days=1000.0, epochs=2, model_version="late")
    result = fit(spark, cfg, events, items, embs, str(tmp_path / "wh" / "models" / "late"))
    assert result.metrics["train_examples"] == 0 and result.metrics["valid_examples"] > 0
    meta = json.loads((tmp_path / "wh" / "models" / "late" / "meta.json").read_text())
    assert [(h["phase"], h["epoch"]) for h in meta["history"]] == [("final", 1), ("final", 2)]
    assert "[recspark] train: no examples before the validation cut" in capsys.readouterr().err


def test_job_writes_vectors_and_reuses_the_finished_model(
    spark: SparkSession, fitted: dict[str, Any]
) -> None:
    from recspark import tables
    from recspark.train import job
    from recspark.train.plan import model_version as derive

    summary, wh = fitted["summary"], fitted["wh"]
    assert summary["model_version"] == "v1" and summary["model_dir"].endswith("models/v1")
    assert summary["metrics"] == fitted["result"].metrics
    iv = tables.read(spark, wh, tables.GOLD_ITEM_VECTORS)
    uv = tables.read(spark, wh, tables.GOLD_USER_VECTORS)
    assert iv.columns == ["item_id", "vector", "model_version"]
    assert uv.columns == ["user_id", "vector", "model_version"]
    assert iv.count() == N_CATS * PER_CAT and uv.count() == N_CATS * 10
    assert {r[0] for r in uv.select("model_version").distinct().collect()} == {"v1"}
    # Started again, the job finds the finished model instead of training another.
    again = job.run(spark, fitted["cfg"])
    assert again["model_version"] == "v1" and again["metrics"] == summary["metrics"]
    # Without an explicit version, the version is derived from settings and input versions.
    assert derive({"a": 1}, 7, {"silver/events": 0}).startswith("m-")


def test_the_model_version_names_the_input_tables_not_only_their_versions(
    spark: SparkSession, tmp_path: Path
) -> None:
    import shutil

    from recspark import tables
    from recspark.train import job

    events, items, embs = synthetic(spark)

    def warehouse(name: str) -> str:
        wh = str(tmp_path / name)
        for df, table in (
            (events, tables.SILVER_EVENTS),
            (items, tables.SILVER_ITEMS),
            (embs, tables.GOLD_ITEM_EMBEDDINGS),
        ):
            tables.overwrite(df, wh, table)
        return wh

    def version_of(wh: str) -> str:
        model_dir, read_versions = job.model_dir_of(spark, small_cfg(wh))
        assert set(read_versions.values()) == {0}  # every input at v0 in each warehouse
        return Path(model_dir).name

    a, b = warehouse("a"), warehouse("b")
    shutil.copytree(a, tmp_path / "copy")
    # The same tables give the same version (a killed run resumes, a finished one is reused),
    # and so does a copy of their folders; other tables at the same versions give another.
    assert version_of(a) == version_of(a) == version_of(str(tmp_path / "copy"))
    assert version_of(a) != version_of(b)


@pytest.mark.parametrize(
    ("final_contexts", "expected"),
    [
        (["preceding"], 0.0),  # one epoch: the bag was decided after it, never trained on
        (["preceding", "bag", "bag"], 1.0),
        (["preceding", "preceding"], 0.0),
    ],
)
def test_bag_context_metric_counts_what_was_trained(
    final_contexts: list[str], expected: float
) -> None:
    history = [
        {
            "phase": "validate",
            "epoch": 1,
            "context": "preceding",
            "val_ndcg_at_10": 0.1,
            "val_recall_at_10": 0.2,
        },
        *[
            {"phase": "final", "epoch": n, "context": c, "train_loss": 1.0}
            for n, c in enumerate(final_contexts, start=1)
        ],
    ]
    meta = {
        "history": history,
        "best_epoch": 1,
        "shape": {"recency_half_life": 500.0},
        "context": {"mode": "auto", "after_first_epoch": "bag"},  # the decision: the bag
    }
    info = {"train_examples": 10, "valid_examples": 2}
    metrics = training_metrics(meta, info, [{"samples_per_sec": 5.0}], 1, 10)
    assert metrics["bag_context"] == expected
