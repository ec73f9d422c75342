"""Time ``tune_weights`` on synthetic candidate lists (issue 12).

Each user gets every blended model's ``--candidates`` distinct items with hashed scores,
and two validation items (one from the ALS list, one anywhere), so the search
does the work of a real shop of that many users. The inputs are cached and
counted before the clock starts: only the weight search is timed.

    PYSPARK_SUBMIT_ARGS="--driver-memory 4g pyspark-shell" \
        python bench/tune_weights.py --users 20000 100000
"""

from __future__ import annotations

import argparse
import json
import time

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from amazon_recs.models.lists import as_candidates
from amazon_recs.models.training import COMPONENTS
from amazon_recs.models.tuning import tune_weights
from amazon_recs.schemas import ITEM_IDX, SCORE, USER_IDX

ITEMS = 5003  # prime: j * stride mod ITEMS is distinct for j < ITEMS


def synthetic_lists(spark: SparkSession, users: int, n: int) -> dict[str, DataFrame]:
    base = spark.range(users).select(F.col("id").cast("int").alias(USER_IDX))
    slots = spark.range(n).select(F.col("id").cast("int").alias("_j"))
    lists = {}
    for m, name in enumerate(COMPONENTS):
        start = F.pmod(F.xxhash64(F.lit(m), USER_IDX), F.lit(ITEMS))
        rows = base.crossJoin(slots).select(
            USER_IDX,
            F.pmod(start + F.col("_j") * (m + 7), F.lit(ITEMS)).cast("int").alias(ITEM_IDX),
            # a thousand score levels: ties within a list, as real scores have
            (F.pmod(F.xxhash64(F.lit(m), USER_IDX, "_j"), F.lit(1000)) / 1000.0).alias(SCORE),
        )
        lists[name] = as_candidates(rows, name).cache()
    return lists


def synthetic_validation(spark: SparkSession, lists: dict[str, DataFrame]) -> DataFrame:
    als = lists["als"]
    from_als = als.filter(F.pmod(F.xxhash64(F.lit(9), USER_IDX, ITEM_IDX), F.lit(100)) == 0)
    anywhere = (
        als.select(USER_IDX)
        .distinct()
        .select(USER_IDX, F.pmod(F.xxhash64(F.lit(8), USER_IDX), F.lit(ITEMS)).cast("int").alias(ITEM_IDX))
    )
    return from_als.select(USER_IDX, ITEM_IDX).unionByName(anywhere).distinct().cache()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, nargs="+", default=[20000, 100000])
    parser.add_argument("--candidates", type=int, default=100)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--step", type=float, default=0.1)
    parser.add_argument("--shuffle-partitions", type=int, default=8)
    args = parser.parse_args(argv)
    spark = (
        SparkSession.builder.master("local[2]")
        .config("spark.sql.shuffle.partitions", args.shuffle_partitions)
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .getOrCreate()
    )
    spark.sparkContext.setLogLevel("ERROR")
    for users in args.users:
        lists = synthetic_lists(spark, users, args.candidates)
        validation = synthetic_validation(spark, lists)
        rows = sum(df.count() for df in lists.values())
        truth = validation.count()
        start = time.perf_counter()
        weights, results = tune_weights(spark, lists, validation, args.k, args.step)
        seconds = time.perf_counter() - start
        best = max(r["ndcg"] for r in results)
        print(
            json.dumps(
                {
                    "users": users,
                    "candidate_rows": rows,
                    "validation_rows": truth,
                    "weight_points": len(results),
                    "seconds": round(seconds, 1),
                    "weights": weights,
                    "best_ndcg": round(best, 6),
                }
            ),
            flush=True,
        )
        for df in [*lists.values(), validation]:
            df.unpersist()
    spark.stop()


if __name__ == "__main__":
    main()
