"""Tuning on validation: the weight grid, the weight search, the validation carve."""

from __future__ import annotations

import math
from datetime import datetime, timedelta

import pytest
from pyspark.sql import functions as F

from amazon_recs.models import tuning
from amazon_recs.models.lists import as_candidates
from amazon_recs.pipeline.params import split_params


def test_weight_grid_covers_the_simplex():
    grid = tuning.weight_grid(0.25)
    assert len(grid) == math.comb(4 + 2, 2)  # compositions of 4 quarters into 3 weights
    assert all(sum(w.values()) == pytest.approx(1.0) for w in grid)
    assert {"als": 1.0, "content": 0.0, "popular": 0.0} in grid
    assert {"als": 0.25, "content": 0.25, "popular": 0.5} in grid
    assert len({tuple(sorted(w.items())) for w in grid}) == len(grid)


def test_tune_weights_finds_the_model_that_predicts_validation(spark):
    # Two users, two candidates per model; validation holds exactly content's
    # top item, so any weight on content that outranks the others wins.
    rows = {
        "als": [(1, 10, 0.9), (1, 11, 0.1), (2, 20, 0.9), (2, 21, 0.1)],
        "content": [(1, 12, 0.8), (1, 10, 0.2), (2, 22, 0.8), (2, 20, 0.2)],
        "popular": [(1, 11, 5.0), (1, 13, 4.0), (2, 21, 5.0), (2, 23, 4.0)],
    }
    lists = {
        name: as_candidates(spark.createDataFrame(r, "user_idx int, item_idx int, score double"), name)
        for name, r in rows.items()
    }
    validation = spark.createDataFrame([(1, 12), (2, 22)], "user_idx int, item_idx int")
    weights, results = tuning.tune_weights(spark, lists, validation, k=1, step=0.5)
    assert len(results) == 6
    scores = {tuple(r[n] for n in ("als", "content", "popular")): r["ndcg"] for r in results}
    assert scores[(0.0, 1.0, 0.0)] == pytest.approx(1.0)
    assert scores[(1.0, 0.0, 0.0)] == pytest.approx(0.0)
    assert scores[(0.0, 0.0, 1.0)] == pytest.approx(0.0)
    assert weights == {"als": 0.0, "content": 1.0, "popular": 0.0}


def test_validation_is_carved_from_training_only(spark, config):
    base = datetime(2024, 1, 1)
    train = (
        spark.createDataFrame(
            [(u, u * 100 + i, 1.0, base + timedelta(days=i), "train") for u in range(3) for i in range(10)],
            "user_idx int, item_idx int, weight double, ts timestamp, split string",
        )
        .withColumn("user_id", F.col("user_idx").cast("string"))
        .withColumn("item_id", F.col("item_idx").cast("string"))
    )
    fit, validation = tuning.carve_validation(train, split_params(config))
    assert fit.count() + validation.count() == 30
    # temporal protocol, test_fraction 0.2: each user's 2 latest go to validation
    got = {(r.user_idx, r.item_idx) for r in validation.collect()}
    assert got == {(u, u * 100 + i) for u in range(3) for i in (8, 9)}
    assert fit.join(validation, ["user_idx", "item_idx"], how="inner").count() == 0
