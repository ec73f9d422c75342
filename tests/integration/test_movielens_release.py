"""A MovieLens 100k folder in its original layout, from one setting
(input.movielens), through every stage to recommendations and metrics."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from pyspark.sql import functions as F

from amazon_recs import io
from amazon_recs.config import load_config
from amazon_recs.ingest.movielens import GENRES_100K
from amazon_recs.pipeline.registry import STAGE_ORDER, stage_function
from tests.conftest import ROOT

pytestmark = pytest.mark.integration

USERS, MOVIES = 120, 50


def write_100k(folder: Path, seed: int = 3) -> None:
    """u.data and u.item as GroupLens ships them: tabs without a header; Latin-1
    titles with '|' fields and 19 genre flags. Users like one of three genres."""
    rng = random.Random(seed)
    folder.mkdir(parents=True)
    genre_of = {m: m % 3 for m in range(1, MOVIES + 1)}
    lines = []
    for user in range(1, USERS + 1):
        taste = user % 3
        liked = [m for m in genre_of if genre_of[m] == taste]
        for movie in rng.sample(liked, 8) + rng.sample(sorted(genre_of), 4):
            rating = rng.choice([4, 5]) if genre_of[movie] == taste else rng.choice([1, 2, 3])
            lines.append(f"{user}\t{movie}\t{rating}\t{880000000 + rng.randrange(10**7)}")
    (folder / "u.data").write_text("\n".join(lines) + "\n")
    items = []
    for movie in range(1, MOVIES + 1):
        flags = ["0"] * len(GENRES_100K)
        flags[1 + genre_of[movie]] = "1"
        items.append(f"{movie}|Película número {movie} (1995)|01-Jan-1995||http://x|" + "|".join(flags))
    (folder / "u.item").write_bytes(("\n".join(items) + "\n").encode("latin-1"))
    (folder / "u.user").write_text("1|24|M|technician|85711\n")


def test_a_100k_folder_runs_end_to_end_from_one_setting(spark, tmp_path):
    folder = tmp_path / "ml-100k"
    write_100k(folder)
    config = load_config(
        ROOT / "conf" / "test.yaml",
        [
            f"paths.raw={tmp_path / 'raw'}",
            f"paths.warehouse={tmp_path / 'warehouse'}",
            f"paths.models={tmp_path / 'models'}",
            f"paths.reports={tmp_path / 'reports'}",
            f"input.movielens={folder}",
            "tune.enabled=false",
            "evaluate.bootstrap_replicates=200",
        ],
    )
    summaries = {stage: stage_function(stage)(spark, config) for stage in STAGE_ORDER}
    (reviews,) = [f for f in summaries["ingest"]["files"] if f["kind"] == "reviews"]
    assert (reviews["lines_read"], reviews["accepted"]) == (USERS * 12, USERS * 12)

    recs = io.read_table(spark, config, "gold/recommendations").filter(F.col("model") == "hybrid")
    per_user = recs.groupBy("user_id").count().collect()
    assert len(per_user) == USERS and {r["count"] for r in per_user} == {10}
    served = io.read_table(spark, config, "gold/user_recommendations").select(F.explode("items").alias("i"))
    titles = {r[0] for r in served.select("i.title").distinct().collect()}
    assert titles and all(t.startswith("Película número ") for t in titles)  # Latin-1 decoded

    metrics = {(r["model"], r["metric"]): r for r in io.read_table(spark, config, "gold/metrics").collect()}
    ndcg = metrics[("hybrid", "ndcg")]
    assert ndcg["ci_low"] <= ndcg["value"] <= ndcg["ci_high"]
    # Users who like one genre: collaborative filtering finds it, popularity cannot.
    assert metrics[("als", "ndcg")]["value"] > metrics[("popular", "ndcg")]["value"]
