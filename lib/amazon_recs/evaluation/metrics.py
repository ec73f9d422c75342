"""Ranking metrics at k, computed in Spark over every evaluated user.

Definitions (``rel`` = the user's held-out items, ``hit_r`` = 1 when the item at
rank r is in ``rel``), averaged over users with at least one held-out item; a
user with no recommendation from a model scores 0 for it:

- precision@k = sum(hit_r) / k
- recall@k    = sum(hit_r) / |rel|
- ndcg@k      = sum(hit_r / log2(r + 1)) / sum_{i <= min(|rel|, k)} 1 / log2(i + 1)
- map@k       = sum(hit_r * precision@r) / min(|rel|, k)
- hit_rate@k  = 1 if any hit_r else 0
- mrr@k       = 1 / (first hit rank), 0 without a hit
- coverage@k  = distinct recommended items / catalogue size (not per user)
- novelty@k   = mean over all recommended (user, item) of -log2((n_i + 1) / (U + 1)),
  n_i the training users of item i, U the training users: how unexpected the
  items are (add-one smoothing keeps never-seen items finite)

Means are summed exactly (``exact_mean``): a double sum's last bits depend on the
order Spark adds the partial sums, which varies after a shuffle, and the same run
must write the same metrics (and pick the same tuned setting in a near tie).
"""

from __future__ import annotations

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

from amazon_recs.schemas import ITEM, MODEL, RANK, USER

PER_USER_METRICS = ("precision", "recall", "ndcg", "map", "hit_rate", "mrr")
_EXACT = "decimal(38,18)"  # 20 integer digits: sums of up to 1e18 values below 100
# Novelty averages every list row (12.5M at 1M reviews), where decimal sums cost 7x a
# double's: it is summed in units of 2^-24 as longs instead. A row's information is
# below log2(users + 1) < 2^6, so 2^33 rows fit in a long; the mean is off by < 6e-8.
_NOVELTY_UNITS = float(1 << 24)


def exact_mean(column: str | Column) -> Column:
    """The mean of a double column, the same whatever the order of its rows: each
    value rounded to 18 decimals and summed as a decimal (exact), then a double."""
    value = F.col(column) if isinstance(column, str) else column
    return F.avg(value.cast(_EXACT)).cast("double")


def per_user_metrics(
    recs: DataFrame,
    truth: DataFrame,
    k: int,
    col_user: str = USER,
    col_item: str = ITEM,
    col_model: str = MODEL,
) -> DataFrame:
    """One row per (model, evaluated user) with each metric of PER_USER_METRICS.

    Args:
        recs: (model, user, item, rank); ranks beyond ``k`` are ignored.
        truth: (user, item) held-out interactions; duplicates count once.
    """
    return per_user_metrics_at(recs, truth, [k], col_user, col_item, col_model).drop("k")


def per_user_metrics_at(
    recs: DataFrame,
    truth: DataFrame,
    ks: list[int],
    col_user: str = USER,
    col_item: str = ITEM,
    col_model: str = MODEL,
) -> DataFrame:
    """``per_user_metrics`` at every cut-off of ``ks`` in one pass over ``recs``: one row
    per (model, evaluated user, k).

    Only the hits matter: a user's precision, recall, NDCG, MAP and MRR at k are sums
    over the ranks of their relevant items within the top k. So only the list rows
    that are hits go further (``hit_rows``), the few hit rows get their running hit
    count, and each k is a few sums over them; users without a hit score 0."""
    ks = sorted(set(ks))
    rel = truth.select(col_user, col_item).distinct()
    hits = hit_rows(recs, rel, ks[-1], col_user, col_item, col_model)
    scored = recs.select(col_model).distinct().crossJoin(relevant_counts(rel, col_user))
    return metrics_at(hits, scored, ks, col_user, col_model)


# Up to this many held-out (user, item) pairs, ``hit_rows`` broadcasts their 64-bit
# hashes (a hash table of tens of bytes a pair; 1.48M pairs at 10M reviews).
BROADCAST_PAIRS = 10_000_000


def hit_rows(
    recs: DataFrame,
    rel: DataFrame,
    max_k: int,
    col_user: str = USER,
    col_item: str = ITEM,
    col_model: str = MODEL,
) -> DataFrame:
    """The list rows at ranks up to ``max_k`` whose item their user holds out: (model,
    user, item, rank), from ``recs`` (model, user, item, rank) and the distinct held-out
    pairs ``rel`` (user, item).

    The lists are never exchanged: each list row's (user, item) is hashed to a long and
    looked up in a broadcast of the held-out pairs' hashes (a semi-join: every row is
    read once, and the ~99% that are misses stop there), and only the rows that pass
    are joined with ``rel`` itself, which drops any hash collision. Beyond
    ``BROADCAST_PAIRS`` held-out pairs the lists are joined with ``rel`` as Spark plans it.
    """
    lists = recs.filter(F.col(RANK) <= max_k).select(col_model, col_user, col_item, RANK)
    if rel.count() <= BROADCAST_PAIRS:
        pair = F.xxhash64(col_user, col_item)
        keys = F.broadcast(rel.select(pair.alias("_pair")).distinct())
        lists = lists.join(keys, pair == F.col("_pair"), how="left_semi")
    return lists.join(rel, [col_user, col_item])


def relevant_counts(rel: DataFrame, col_user: str = USER) -> DataFrame:
    """(user, _n_rel): each evaluated user's number of distinct held-out items."""
    return rel.groupBy(col_user).agg(F.count(F.lit(1)).alias("_n_rel"))


def metrics_at(
    hits: DataFrame, scored: DataFrame, ks: list[int], col_user: str = USER, col_model: str = MODEL
) -> DataFrame:
    """PER_USER_METRICS at each of ``ks`` (each at most the deepest rank of ``hits``) for
    every row of ``scored`` (model, user, _n_rel): one row per (model, user, k), zeros
    for a (model, user) without a hit.

    Args:
        hits: ``hit_rows``' (model, user, item, rank).
        scored: the (model, user) pairs to score, with the user's held-out count.
    """
    ks = sorted(set(ks))
    ranked = hits.withColumn(
        "_hits_so_far",
        F.count(F.lit(1)).over(
            Window.partitionBy(col_model, col_user).orderBy(RANK).rowsBetween(Window.unboundedPreceding, 0)
        ),
    )

    def within(k: int, value):
        return F.when(F.col(RANK) <= k, value).otherwise(F.lit(0))

    sums = []
    for k in ks:
        sums += [
            F.sum(within(k, F.lit(1))).alias(f"_hits_{k}"),
            F.sum(within(k, 1.0 / F.log2(F.col(RANK) + 1))).alias(f"_dcg_{k}"),
            F.sum(within(k, F.col("_hits_so_far") / F.col(RANK))).alias(f"_ap_sum_{k}"),
            F.min(F.when(F.col(RANK) <= k, F.col(RANK))).alias(f"_first_hit_{k}"),
        ]
    per_user = ranked.groupBy(col_model, col_user).agg(*sums)
    everyone = scored.join(per_user, [col_model, col_user], how="left")

    def at(k: int):
        hit_count = F.coalesce(F.col(f"_hits_{k}"), F.lit(0))
        cutoff = F.least(F.col("_n_rel"), F.lit(k))
        idcg = F.aggregate(F.sequence(F.lit(1), cutoff), F.lit(0.0), lambda acc, i: acc + 1.0 / F.log2(i + 1))
        return F.struct(
            F.lit(k).alias("k"),
            (hit_count / k).alias("precision"),
            (hit_count / F.col("_n_rel")).alias("recall"),
            (F.coalesce(F.col(f"_dcg_{k}"), F.lit(0.0)) / idcg).alias("ndcg"),
            (F.coalesce(F.col(f"_ap_sum_{k}"), F.lit(0.0)) / cutoff).alias("map"),
            (hit_count > 0).cast("double").alias("hit_rate"),
            F.coalesce(1.0 / F.col(f"_first_hit_{k}"), F.lit(0.0)).alias("mrr"),
        )

    return everyone.select(col_model, col_user, F.explode(F.array(*[at(k) for k in ks])).alias("_m")).select(
        col_model, col_user, "_m.k", *[f"_m.{m}" for m in PER_USER_METRICS]
    )


def hit_user_metrics(
    hits: DataFrame, n_rel: DataFrame, ks: list[int], col_user: str = USER, col_model: str = MODEL
) -> DataFrame:
    """``metrics_at`` for the (model, user) pairs with at least one hit only: every
    other evaluated user scores 0 on every metric, so sums over these rows are sums
    over all users (``summarise_hits``, and ``intervals.bootstrap`` given the users)."""
    scored = hits.select(col_model, col_user).distinct().join(n_rel, col_user)
    return metrics_at(hits, scored, ks, col_user, col_model)


def summarise_hits(
    hit_metrics: DataFrame, models: list[str], ks: list[int], users: int, col_model: str = MODEL
) -> list[dict]:
    """``summarise``'s rows (model, metric, k, value, users) from ``hit_user_metrics``
    and the number of evaluated ``users``: each mean is the exact sum over the users
    with a hit divided by ``users``; a model without any hit scores 0 at every k."""
    sums = hit_metrics.groupBy(col_model, "k").agg(
        *[F.sum(F.col(m).cast(_EXACT)).cast("double").alias(m) for m in PER_USER_METRICS]
    )
    got = {(r[col_model], r["k"]): r for r in sums.collect()}
    rows = []
    for model in models:
        for k in sorted(set(ks)):
            row = got.get((model, k))
            for metric in PER_USER_METRICS:
                total = row[metric] if row is not None else 0.0
                value = total / users if users else 0.0
                rows.append({col_model: model, "metric": metric, "k": k, "value": value, "users": users})
    return rows


COLD = "cold_"  # prefix of the cold-item slice's metric names in gold/metrics


TRAIN_N = "train_interactions"  # a cold-slice row's item's training interactions


def cold_truth(
    truth: DataFrame,
    train: DataFrame,
    max_train: int,
    col_user: str = USER,
    col_item: str = ITEM,
    with_counts: bool = False,
):
    """The held-out interactions whose item had at most ``max_train`` training
    interactions (0: items nobody interacted with in training); ``with_counts``
    keeps that number of each row's item as TRAIN_N (for ``slice_composition``)."""
    counts = train.groupBy(col_item).agg(F.count(F.lit(1)).alias("_train_n"))
    sliced = (
        truth.select(col_user, col_item)
        .join(counts, col_item, how="left")
        .withColumn(TRAIN_N, F.coalesce(F.col("_train_n"), F.lit(0)))
        .filter(F.col(TRAIN_N) <= max_train)
    )
    return sliced.select(col_user, col_item, *([TRAIN_N] if with_counts else []))


def slice_composition(slice_: DataFrame, col_user: str = USER, col_item: str = ITEM) -> dict:
    """What a cold slice (``cold_truth`` with counts) holds, in one aggregation: its
    interactions, users and items, and how many of its interactions are with items
    nobody interacted with in training (``new_item_interactions``), which no
    collaborative model can rank and only product text can."""
    row = slice_.agg(
        F.count(F.lit(1)).alias("interactions"),
        F.countDistinct(col_user).alias("users"),
        F.countDistinct(col_item).alias("items"),
        F.count(F.when(F.col(TRAIN_N) == 0, 1)).alias("new_item_interactions"),
    ).first()
    return row.asDict()


def cold_metrics(recs: DataFrame, truth: DataFrame, train: DataFrame, k: int, max_train: int) -> DataFrame:
    """PER_USER_METRICS at ``k`` against the cold-item slice of ``truth`` alone, named
    ``cold_<metric>``: how well each model finds new products, over the users who
    had one in the test split. Long form, as ``summarise``."""
    return cold_summary(cold_per_user(recs, cold_truth(truth, train, max_train), k), k)


def cold_summary(per_user: DataFrame, k: int) -> DataFrame:
    """``summarise`` of the cold slice's per-user metrics, named ``cold_<metric>``."""
    return summarise(per_user, k).withColumn("metric", F.concat(F.lit(COLD), F.col("metric")))


def cold_per_user(recs: DataFrame, slice_: DataFrame, k: int) -> DataFrame:
    """``per_user_metrics`` at ``k`` against the cold-item slice (``cold_truth``)."""
    hits = hit_rows(recs, slice_.select(USER, ITEM).distinct(), k)
    return cold_per_user_from_hits(hits, slice_, recs.select(MODEL).distinct(), k)


def cold_per_user_from_hits(hits: DataFrame, slice_: DataFrame, models: DataFrame, k: int) -> DataFrame:
    """``cold_per_user`` from the lists' hits against every held-out item (``hit_rows``:
    the slice's hits are among them) and the ``models`` (one column, model), without
    reading the lists again."""
    rel = slice_.select(USER, ITEM).distinct()
    cold_hits = hits.filter(F.col(RANK) <= k).join(rel, [USER, ITEM], how="left_semi")
    return metrics_at(cold_hits, models.crossJoin(relevant_counts(rel)), [k]).drop("k")


def summarise(per_user: DataFrame, k: int | None = None, col_model: str = MODEL) -> DataFrame:
    """Average per-user metrics into long form: (model, metric, k, value, users).

    ``per_user`` either has a column ``k`` (``per_user_metrics_at``: one summary per
    k) or is at the single cut-off ``k``.
    """
    at_each_k = "k" in per_user.columns
    averaged = per_user.groupBy(col_model, *(["k"] if at_each_k else [])).agg(
        F.count(F.lit(1)).alias("users"), *[exact_mean(m).alias(m) for m in PER_USER_METRICS]
    )
    k_column = F.col("k") if at_each_k else F.lit(k)
    stacked = F.stack(
        F.lit(len(PER_USER_METRICS)),
        *[part for m in PER_USER_METRICS for part in (F.lit(m), F.col(m))],
    ).alias("metric", "value")
    return averaged.select(col_model, stacked, k_column.alias("k"), "users")


def listed_items(recs: DataFrame, k: int, col_item: str = ITEM, col_model: str = MODEL) -> DataFrame:
    """(model, item, _rows, _firsts): how many top-k lists of each model hold each item,
    and at rank 1. A list starts at rank 1, so a model's ``_firsts`` sum to its users
    with a list. One aggregation over the lists, partial before the exchange: the
    output grows with models x items, not with the list rows."""
    return (
        recs.filter(F.col(RANK) <= k)
        .groupBy(col_model, col_item)
        .agg(
            F.count(F.lit(1)).alias("_rows"),
            F.sum(F.when(F.col(RANK) == 1, 1).otherwise(0)).alias("_firsts"),
        )
    )


def coverage(
    recs: DataFrame, catalogue_size: int, k: int, col_item: str = ITEM, col_model: str = MODEL
) -> DataFrame:
    """Share of the catalogue that appears in anyone's top-k, per model."""
    return coverage_of(listed_items(recs, k, col_item, col_model), catalogue_size, k, col_model)


def coverage_of(listed: DataFrame, catalogue_size: int, k: int, col_model: str = MODEL) -> DataFrame:
    """``coverage`` from ``listed_items``."""
    return (
        listed.groupBy(col_model)
        .agg(
            (F.count(F.lit(1)) / F.lit(float(catalogue_size))).alias("value"),
            F.sum("_firsts").alias("users"),
        )
        .select(col_model, F.lit("coverage").alias("metric"), "value", F.lit(k).alias("k"), "users")
    )


def novelty(
    recs: DataFrame,
    train: DataFrame,
    k: int,
    col_user: str = USER,
    col_item: str = ITEM,
    col_model: str = MODEL,
) -> DataFrame:
    """Mean self-information of the recommended items, per model (see module docstring)."""
    return novelty_of(listed_items(recs, k, col_item, col_model), train, k, col_user, col_item, col_model)


def novelty_of(
    listed: DataFrame,
    train: DataFrame,
    k: int,
    col_user: str = USER,
    col_item: str = ITEM,
    col_model: str = MODEL,
) -> DataFrame:
    """``novelty`` from ``listed_items``: an item's information counted once per list
    that holds it (the same long units as row by row, so the same mean)."""
    n_users = train.select(col_user).distinct().count()
    item_users = train.groupBy(col_item).agg(F.countDistinct(col_user).alias("_n"))
    information = -F.log2((F.coalesce("_n", F.lit(0)) + 1.0) / F.lit(n_users + 1.0))
    return (
        listed.join(item_users, col_item, how="left")
        .groupBy(col_model)
        .agg(
            F.sum(F.col("_rows") * (information * _NOVELTY_UNITS).cast("long")).alias("_units"),
            F.sum("_rows").alias("_rows"),
            F.sum("_firsts").alias("users"),
        )
        .select(
            col_model,
            F.lit("novelty").alias("metric"),
            (F.col("_units") / F.lit(_NOVELTY_UNITS) / F.col("_rows")).alias("value"),
            F.lit(k).alias("k"),
            "users",
        )
    )
