"""``make bench-content``: the content model's neighbour search at catalogue scale,
LSH and the exact search side by side in one run.

For each size, a catalogue of that many product texts (``ingest/product_text.py``:
families of near-duplicate variants inside topics, a vocabulary growing with the
catalogue) goes through the pipeline's TF-IDF (``conf/scale.yaml``'s content
settings), then:

- **LSH** (``content.method: lsh`` at the configured settings): every item's
  neighbours, timed;
- **exact** (blocked sparse products): every item's neighbours, timed; above
  ``--exact-max`` items only ``--exact-queries`` sampled items are searched and
  the time is scaled by items / queries (the exact search costs the same per
  query item: each is a row block against the whole catalogue);
- **recall@neighbours**: the share of the exact top-``content.neighbours`` of
  ``content.lsh.recall_sample`` sampled items that LSH found (as the train stage
  reports it), and the same for the bands alone (no refinement round).

Run by ``bin/spark-submit`` (the driver memory of ``conf/scale.yaml``)::

    bin/spark-submit bench/content.py --config conf/scale.yaml --sizes 10k,100k,1m --out BENCHMARKS.md
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from report_block import write_block  # noqa: E402
from scale import git_commit, machine  # noqa: E402

from amazon_recs import config as cfg  # noqa: E402
from amazon_recs.ingest.product_text import product_texts  # noqa: E402
from amazon_recs.models import content as m_content  # noqa: E402
from amazon_recs.pipeline.params import content_params  # noqa: E402
from amazon_recs.spark import get_spark  # noqa: E402

SIZES = {"10k": 10_000, "100k": 100_000, "1m": 1_000_000}


def timed(fn):
    started = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - started


def measure(spark, params, size: int, exact_max: int, exact_queries: int, bands_alone: bool = True) -> dict:
    texts, gen_s = timed(lambda: product_texts(size))
    frame = pd.DataFrame({"item_idx": np.arange(size, dtype=np.int32), "text": texts})
    items = spark.createDataFrame(frame).repartition(spark.sparkContext.defaultParallelism * 4)
    tokens = m_content.with_tokens(items).cache()
    (with_text, tfidf), features_s = timed(lambda: (tokens.count(), m_content.fit_tfidf(tokens, params)))
    vectors = tfidf.transform(tokens).select("item_idx", m_content.VECTOR).cache()
    collected, collect_s = timed(lambda: (vectors.count(), m_content.collect_vectors(vectors))[1])
    ids, matrix = collected
    plan = params.lsh_plan(len(ids))

    # The signatures, the bands and all but the last round run inside lsh_neighbours.
    lsh, lsh_s = timed(lambda: m_content.lsh_neighbours(vectors, params, collected=collected).cache())
    pairs, last_s = timed(lsh.count)
    lsh_s += last_s
    recall, recall_s = timed(lambda: m_content.sampled_recall(vectors, lsh, params, collected))
    bands_s = bands_recall = float("nan")
    if bands_alone:  # signatures and bands, no refinement round: what the S-curve alone finds
        alone = dataclasses.replace(params, lsh_rounds=0)
        bands_only, bands_s = timed(
            lambda: m_content.lsh_neighbours(vectors, alone, collected=collected).cache()
        )
        _, last_s = timed(bands_only.count)
        bands_s += last_s
        bands_recall = m_content.sampled_recall(vectors, bands_only, params, collected)
        bands_only.unpersist()

    queries = None
    if len(ids) > exact_max:
        rng = np.random.default_rng(1)
        queries = np.sort(rng.choice(len(ids), min(exact_queries, len(ids)), replace=False))
    exact = m_content.sparse_neighbours(
        vectors, params.min_similarity, params.neighbours, queries=queries, collected=collected
    )
    _, exact_s = timed(exact.count)
    scale = 1.0 if queries is None else len(ids) / len(queries)
    lsh.unpersist()
    vectors.unpersist()
    tokens.unpersist()
    return {
        "items": size,
        "with_text": with_text,
        "terms": int(matrix.shape[1]),
        "nnz_per_item": matrix.nnz / max(1, len(ids)),
        "generate_s": gen_s,
        "features_s": features_s + collect_s,
        "plan": plan,
        "lsh_s": lsh_s,
        "pairs": pairs,
        "recall": recall,
        "recall_s": recall_s,
        "bands_s": bands_s,
        "bands_recall": bands_recall,
        "exact_s": exact_s * scale,
        "exact_queries": None if queries is None else len(queries),
    }


def report(args, spark, params, rows: list[dict]) -> str:
    alone = not args.no_bands_alone
    lines = [
        "## Content neighbours at catalogue scale (`make bench-content`)",
        "",
        f"`bin/spark-submit bench/content.py --config {args.config} --sizes {args.sizes}"
        f" --exact-queries {args.exact_queries}{'' if alone else ' --no-bands-alone'}` at "
        f"{git_commit()}, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, "
        f"on {machine()}, Spark master {spark.sparkContext.master}.",
        "",
        f"Generated catalogues (`ingest/product_text.py`), TF-IDF over `content.terms: {params.terms}` "
        f"(terms: the vector's columns); {params.neighbours} neighbours at cosine >= "
        f"{params.min_similarity}; "
        f"LSH at `content.lsh` similarity {params.lsh_similarity}, recall {params.lsh_recall}, "
        f"window {params.lsh_window}, rounds {params.lsh_rounds}. Recall: the share of the exact top-"
        f"{params.neighbours} of {params.recall_sample} sampled items that LSH found. "
        'An exact time "from N items" is that many query items\' time, scaled to the catalogue.',
        "",
        "| items | terms | terms/item | LSH plan (bits x bands) | P(meet) at 0.3 / 0.5 / 0.8 | LSH s | "
        "recall | " + ("bands alone s | bands alone recall | " if alone else "") + "exact s | LSH / exact |",
        "|---:|---:|---:|---|---|---:|---:|" + ("---:|---:|" if alone else "") + "---:|---:|",
    ]
    for r in rows:
        plan = r["plan"]
        exact = f"{r['exact_s']:.1f}" + (
            f" (from {r['exact_queries']:,} items)" if r["exact_queries"] else ""
        )
        lines.append(
            f"| {r['items']:,} | {r['terms']:,} | {r['nnz_per_item']:.1f} | {plan.bits} x {plan.bands} | "
            + " / ".join(f"{plan.s_curve(c):.2f}" for c in (0.3, 0.5, 0.8))
            + f" | {r['lsh_s']:.1f} | {r['recall']:.3f} | "
            + (f"{r['bands_s']:.1f} | {r['bands_recall']:.3f} | " if alone else "")
            + f"{exact} | {r['lsh_s'] / r['exact_s']:.2f} |"
        )
    lines += [
        "",
        "Targets (issue 13): 100k items in at most 120 s and 1M in at most 1,200 s with recall at least 0.9; "
        "LSH at most 3x the exact search at 100k and faster than it at 1M.",
    ]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="conf/scale.yaml")
    ap.add_argument("--sizes", default="10k,100k,1m")
    ap.add_argument(
        "--exact-max", type=int, default=200_000, help="largest catalogue searched exactly in full"
    )
    ap.add_argument("--exact-queries", type=int, default=10_000)
    ap.add_argument("--no-bands-alone", action="store_true", help="skip the run without refinement")
    ap.add_argument("--out", default="")
    ap.add_argument("--set", action="append", default=[], dest="overrides")
    args = ap.parse_args(argv)
    config = cfg.load_config(args.config, args.overrides)
    spark = get_spark(config)
    params = content_params(config)
    # Numba compiles the LSH kernels on first use in each Python worker (cached on
    # disk afterwards): a small catalogue first keeps that out of the timings.
    measure(spark, params, 2_000, args.exact_max, args.exact_queries)
    rows = []
    for name in args.sizes.split(","):
        row = measure(spark, params, SIZES[name], args.exact_max, args.exact_queries, not args.no_bands_alone)
        print(f"content bench {name}: {row}", flush=True)
        rows.append(row)
    body = report(args, spark, params, rows)
    print(body)
    if args.out:
        write_block(ROOT / args.out, "content", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
