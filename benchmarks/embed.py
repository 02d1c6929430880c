"""Embed stage throughput: Spark vs a plain single-process transformers loop, side by side.

    .venv/bin/python benchmarks/embed.py --n 2000

Both sides use the same model, batch size, max length and total CPU threads: Spark runs
``local[T]`` with one torch thread per task, the plain loop one process with ``T`` torch
threads. A third side, the stage's own encoder in-process (length-sorted batches), separates
Spark's overhead from the gain of sorting. Models are loaded (and Spark's Python workers
started) before timing; repetitions alternate the sides so that a noisy neighbour hurts all
alike, and the best of each is reported. Target on CPU: Spark >= 0.85x the plain loop. Also
prints the expected H100 figure from the model's FLOPs per text (no GPU is available here).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from typing import Any

# Spark's Python workers must be this interpreter (it has torch); set before the session.
os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
os.environ.setdefault("PYARROW_IGNORE_TIMEZONE", "1")

import numpy as np
import torch
from pyspark.sql import SparkSession
from pyspark.sql.types import StringType, StructField, StructType

from recspark.config import SparkConfig
from recspark.embed.config import EmbedConfig
from recspark.embed.model import DeviceChoice, encode_settings, load_encoder
from recspark.embed.transforms import embed_items
from recspark.session import configure

_WORDS_TEXT = (
    "soft cotton shirt with long sleeves classic fit everyday wear durable stitching "
    "lightweight running shoes breathable mesh cushioned sole for road and trail "
    "stainless steel kettle fast boil automatic shut off cordless base kitchen essential "
    "wireless headphones active noise cancelling long battery life comfortable ear cups "
    "organic dark roast coffee beans rich aroma notes of chocolate and caramel "
    "hardcover novel gripping mystery set in a small coastal town award winning author "
    "ceramic mug dishwasher safe microwave safe holds hot drinks gift idea "
    "adjustable desk lamp warm and cool light usb charging port flexible arm "
    "waterproof hiking backpack multiple pockets padded straps rain cover included "
    "kids building blocks colorful pieces creative play develops motor skills ages three up"
)
WORDS = tuple(_WORDS_TEXT.split())
CATEGORIES = ("Clothing", "Sports", "Kitchen", "Electronics", "Grocery", "Books", "Home", "Toys")
ITEMS_SCHEMA = StructType(
    [StructField(n, StringType(), False) for n in ("item_id", "text", "text_hash")]
)
H100_PEAK_FP16 = 989.5e12  # dense FP16/BF16 tensor-core FLOP/s, H100 SXM


def make_texts(n: int, seed: int) -> list[str]:
    """``n`` catalog texts ("title. category. description") of 20-120 words."""
    rng = random.Random(seed)
    texts = []
    for _ in range(n):
        words = rng.randint(20, 120)
        title = " ".join(rng.choices(WORDS, k=3)).capitalize()
        body = " ".join(rng.choices(WORDS, k=words - 4))
        texts.append(f"{title}. {rng.choice(CATEGORIES)}. {body}.")
    return texts


def plain_loop(tok: Any, model: Any, texts: list[str], batch_size: int, max_length: int) -> Any:
    """What one would write without Spark: batches in input order, padded, mean-pooled."""
    out = []
    with torch.inference_mode():
        for i in range(0, len(texts), batch_size):
            batch = tok(
                texts[i : i + batch_size],
                padding=True,
                truncation=True,
                max_length=max_length,
                return_tensors="pt",
            )
            hidden = model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).float()
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            out.append(torch.nn.functional.normalize(pooled, dim=1).numpy())
    return np.concatenate(out)


def flops_per_text(config: Any, tokens: float) -> float:
    """Forward FLOPs of a BERT encoder on one text of ``tokens`` tokens (2 FLOPs per MAC)."""
    h, inter, layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    dense = 2 * (4 * h * h + 2 * h * inter)  # QKV + output projection, FFN up + down
    attention = 2 * 2 * h * tokens  # QK^T and AV, per token
    return layers * tokens * (dense + attention) + 2 * h * h  # + pooler on [CLS]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=2000, help="item texts")
    p.add_argument("--threads", type=int, default=2, help="total CPU threads on each side")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--reps", type=int, default=2, help="alternating repetitions per side")
    p.add_argument("--seed", type=int, default=42)
    args = p.parse_args()

    texts = make_texts(args.n, args.seed)
    cfg = EmbedConfig(batch_size=args.batch_size, max_length=args.max_length)
    settings = encode_settings(cfg)

    # --- plain side: one process, `threads` torch threads --------------------------------
    torch.set_num_threads(args.threads)
    encoder = load_encoder(settings.model_path, DeviceChoice("cpu", torch.float32))
    tok, model = encoder.tokenizer, encoder.model
    plain_loop(tok, model, texts[:8], args.batch_size, args.max_length)  # warm up

    # --- Spark side: local[threads], one torch thread per task ---------------------------
    spark_cfg = SparkConfig(
        master=f"local[{args.threads}]", shuffle_partitions=args.threads, driver_memory="2g"
    )
    spark = (
        configure(SparkSession.builder, spark_cfg)
        .config("spark.sql.execution.arrow.maxRecordsPerBatch", str(cfg.arrow_batch_size))
        .getOrCreate()
    )
    try:
        rows = [(f"i{i}", t, f"h{i}") for i, t in enumerate(texts)]
        df = spark.createDataFrame(rows, ITEMS_SCHEMA).cache()
        df.count()
        # Start the Python workers and load the model in each (one tiny task per core).
        warm = spark.createDataFrame(rows[: 4 * args.threads], ITEMS_SCHEMA)
        embed_items(warm, settings, num_partitions=args.threads).collect()

        plain_s: list[float] = []
        sorted_s: list[float] = []
        spark_s: list[float] = []
        spark_out: dict[str, Any] = {}
        plain_out = None
        for _ in range(args.reps):
            t = time.perf_counter()
            plain_out = plain_loop(tok, model, texts, args.batch_size, args.max_length)
            plain_s.append(time.perf_counter() - t)
            t = time.perf_counter()
            got = embed_items(df, settings, num_partitions=args.threads).collect()
            spark_s.append(time.perf_counter() - t)
            spark_out = {r["item_id"]: r["embedding"] for r in got}
            # In-process encoder (the UDF's own code, length-sorted batches), same threads.
            t = time.perf_counter()
            encoder.encode(texts, batch_size=args.batch_size, max_length=args.max_length)
            sorted_s.append(time.perf_counter() - t)
    finally:
        spark.stop()

    if plain_out is None or len(spark_out) != len(texts):
        raise SystemExit(f"Spark returned {len(spark_out)} embeddings for {len(texts)} texts")
    cos = min(
        float(np.dot(plain_out[i], np.asarray(spark_out[f"i{i}"]))) for i in range(len(texts))
    )
    lengths = [len(x) for x in tok(texts, truncation=True, max_length=args.max_length)["input_ids"]]
    tokens = float(np.mean(lengths))
    t = time.perf_counter()
    tok(texts, truncation=True, max_length=args.max_length)
    tokenize_rate = len(texts) / (time.perf_counter() - t)

    plain_rate = len(texts) / min(plain_s)
    spark_rate = len(texts) / min(spark_s)
    sorted_rate = len(texts) / min(sorted_s)
    fpt = flops_per_text(model.config, tokens)
    h100_peak = H100_PEAK_FP16 / fpt
    result = {
        "n": len(texts),
        "threads": args.threads,
        "batch_size": args.batch_size,
        "max_length": args.max_length,
        "mean_tokens": round(tokens, 1),
        "plain_loop_texts_per_s": round(plain_rate, 1),
        "spark_texts_per_s": round(spark_rate, 1),
        "ratio_spark_vs_plain": round(spark_rate / plain_rate, 3),
        "in_process_sorted_texts_per_s": round(sorted_rate, 1),
        "ratio_spark_vs_in_process_sorted": round(spark_rate / sorted_rate, 3),
        "plain_seconds": [round(s, 2) for s in plain_s],
        "spark_seconds": [round(s, 2) for s in spark_s],
        "in_process_sorted_seconds": [round(s, 2) for s in sorted_s],
        "min_cosine_spark_vs_plain": round(cos, 6),
        "gflops_per_text": round(fpt / 1e9, 3),
        "cpu_plain_gflops_per_s": round(plain_rate * fpt / 1e9, 1),
        "tokenizer_texts_per_s_one_core": round(tokenize_rate, 0),
        "h100_peak_bound_texts_per_s": round(h100_peak, 0),
        "h100_expected_texts_per_s_at_15_to_30pct_mfu": [
            round(0.15 * h100_peak, 0),
            round(0.30 * h100_peak, 0),
        ],
    }
    print(json.dumps(result, indent=2))
    print(
        f"\nplain loop: {plain_rate:.1f} texts/s | Spark stage: {spark_rate:.1f} texts/s | "
        f"ratio {spark_rate / plain_rate:.2f}x (target >= 0.85x)\n"
        f"in-process encoder, same length-sorted batches: {sorted_rate:.1f} texts/s | "
        f"Spark vs it: {spark_rate / sorted_rate:.2f}x (Spark's own overhead)"
    )
    print(
        f"H100 (fp16, {fpt / 1e9:.2f} GFLOP/text at {tokens:.0f} tokens): peak bound "
        f"{h100_peak:,.0f} texts/s; expected ~{0.15 * h100_peak:,.0f}-{0.30 * h100_peak:,.0f} "
        f"texts/s per GPU at 15-30% MFU, if tokenization keeps up "
        f"(~{tokenize_rate:,.0f} texts/s per CPU core here)"
    )


if __name__ == "__main__":
    main()
