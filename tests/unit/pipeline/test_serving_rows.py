"""The export's serving rows: one row per (user, model) with the ordered list and its
titles, built by a sort aggregation whose order the partitioned write keeps."""

from __future__ import annotations

import random

from amazon_recs.pipeline.export import SERVING_WRITE_CONF, serving_rows
from amazon_recs.spark import session_conf

AGGREGATE = "spark.sql.execution.useObjectHashAggregateExec"


def _lists(spark):
    rng = random.Random(8)
    rows = []
    for u in range(300):
        for model in ("als", "hybrid", "popular"):
            ranks = list(range(1, rng.randrange(1, 11) + 1))
            rng.shuffle(ranks)  # rows in no particular order, as a table read gives them
            for rank in ranks:
                item = f"i{rng.randrange(40)}"  # i30..i39 have no product row: no title
                reason = None if rank % 3 else f"because you rated i{rank}"
                rows.append((f"u{u}", model, rank, item, 1.0 / rank, reason, "v1"))
    recs = spark.createDataFrame(
        rows,
        "user_id string, model string, rank int, item_id string, score double, reason string, "
        "model_version string",
    )
    items = spark.createDataFrame(
        [(f"i{i}", f"title {i}", None if i % 5 == 0 else "Beauty") for i in range(30)]
        + [("i0", "title 0", None)],  # a product listed twice with the same fields
        "item_id string, title string, category string",
    ).distinct()
    return rows, recs, items


def test_each_list_is_ordered_by_rank_with_its_titles_and_the_plan_sorts_once(spark):
    rows, recs, items = _lists(spark)
    titles = {f"i{i}": (f"title {i}", None if i % 5 == 0 else "Beauty") for i in range(30)}
    expected = {}
    for user, model, rank, item, score, reason, _ in rows:
        title, category = titles.get(item, (None, None))
        expected.setdefault((user, model), []).append((rank, item, title, category, score, reason))
    before = spark.conf.get(AGGREGATE)
    with session_conf(spark, SERVING_WRITE_CONF):
        frame = serving_rows(recs, items)
        got = {(r.user_id, r.model): [tuple(x) for x in r["items"]] for r in frame.collect()}
        plan = frame._jdf.queryExecution().executedPlan().toString().split("== Initial Plan ==")[0]
        assert spark.conf.get(AGGREGATE) == "false"
    assert frame.columns == ["user_id", "model", "model_version", "items"]
    assert got == {key: sorted(value) for key, value in expected.items()}
    # Lists built by a sort aggregation, whose output is in the order the write needs
    # (model_version, model, user): one sort in the plan, none of it hash aggregation.
    assert "SortAggregate" in plan and "ObjectHashAggregate" not in plan
    assert plan.count("Sort [") == 1 and "Sort [model_version" in plan
    assert spark.conf.get(AGGREGATE) == before


def test_session_conf_restores_what_was_set_and_unsets_what_was_not_even_on_error(spark):
    spark.conf.set(AGGREGATE, "true")
    spark.conf.unset("spark.amazon_recs.test_only")
    try:
        with session_conf(spark, {AGGREGATE: "false", "spark.amazon_recs.test_only": "1"}):
            assert spark.conf.get("spark.amazon_recs.test_only") == "1"
            assert spark.conf.get(AGGREGATE) == "false"
            raise RuntimeError("a failed write")
    except RuntimeError:
        pass
    assert spark.conf.get(AGGREGATE) == "true"
    assert spark.conf.get("spark.amazon_recs.test_only", None) is None
