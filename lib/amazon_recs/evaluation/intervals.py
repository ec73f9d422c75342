"""Confidence intervals for the per-user metrics: a bootstrap over users, seeded.

A model's metric is a mean over the evaluated users, and its uncertainty is the
spread of that mean over resamples of the users. The resampling is the Poisson
bootstrap: in replicate ``b`` user ``u`` counts ``w(u, b)`` times, a Poisson(1)
draw that is a pure function of (seed, user, b), so a replicate is the same
whatever the partitioning, and every model sees the same resample (the
differences between two models are paired). Executors turn their users into
weighted sums per replicate (a matrix product per batch); the driver adds
``segments x replicates`` rows and reads the percentiles. Cost: linear in users,
``replicates`` multiply-adds per user and metric.

Segments (light and heavy users by training interactions) are resampled within
the same pass: a segment's replicate is the weighted mean over its own users.

The sums are exact, so the answer does not depend on the order in which Spark hands
over the users (which varies from run to run after a shuffle): every value (a
metric in [0, 1]) is rounded to a multiple of 2^-24 and kept as an integer count of
those, weights are integers up to 13, and float64 adds such integers exactly while
the totals stay below 2^53, i.e. up to about 40 million users. The rounding moves a
mean by at most 3e-8.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from amazon_recs.evaluation.metrics import PER_USER_METRICS
from amazon_recs.schemas import MODEL, USER

ALL = "all"  # the segment of every evaluated user
POINT = -1  # the replicate of weight 1 for everyone: the plain mean
_CHUNK = 128  # replicates drawn at once: a chunk x batch weight matrix
_SCALE = float(1 << 24)  # values in units of 2^-24: integer sums, exact in any order

# Poisson(1)'s CDF: a uniform draw u maps to the first k with cdf[k] > u (k = 12: 1e-10).
_POISSON_CDF = np.cumsum([np.exp(-1.0) / np.prod(np.arange(1, k + 1, dtype=float)) for k in range(13)])


@dataclass(frozen=True)
class Replicates:
    """Per segment: the users in it, the plain means (one per column) and the replicate
    means (replicates x columns); columns are ``model/metric``."""

    columns: tuple[str, ...]
    users: dict[str, int]
    means: dict[str, np.ndarray]
    draws: dict[str, np.ndarray]

    def interval(self, segment: str, model: str, metric: str, level: float) -> tuple[float, float]:
        column = self.draws[segment][:, self.columns.index(f"{model}/{metric}")]
        return _percentiles(column, level)

    def paired(self, segment: str, model: str, other: str, metric: str, level: float) -> dict:
        """``model`` minus ``other`` on ``metric``: the difference of the means and its
        interval from the same resamples."""
        a, b = (self.columns.index(f"{m}/{metric}") for m in (model, other))
        diff = self.draws[segment][:, a] - self.draws[segment][:, b]
        low, high = _percentiles(diff, level)
        value = float(self.means[segment][a] - self.means[segment][b])
        return {"model": model, "other": other, "metric": metric, "diff": value, "low": low, "high": high}


def _percentiles(values: np.ndarray, level: float) -> tuple[float, float]:
    tail = (1.0 - level) / 2.0 * 100.0
    low, high = np.percentile(values, [tail, 100.0 - tail])
    return float(low), float(high)


def poisson_weights(user_hashes: np.ndarray, first: int, count: int, seed: int) -> np.ndarray:
    """(count x users) Poisson(1) weights of replicates ``first`` .. ``first + count - 1``:
    splitmix64 of (user hash, seed, replicate) as a uniform, through Poisson's CDF."""
    replicate = np.arange(first, first + count, dtype=np.uint64)[:, None]
    with np.errstate(over="ignore"):
        x = user_hashes.astype(np.uint64)[None, :] + np.uint64(seed) * np.uint64(0x9E3779B97F4A7C15)
        x = x + (replicate + np.uint64(1)) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        x = x ^ (x >> np.uint64(31))
    uniform = (x >> np.uint64(11)).astype(np.float64) / float(1 << 53)
    return np.searchsorted(_POISSON_CDF, uniform, side="right").astype(np.float64)


def bootstrap(
    per_user: DataFrame,
    models: Sequence[str],
    seed: int,
    replicates: int,
    segments: DataFrame | None = None,
    metrics: Sequence[str] = PER_USER_METRICS,
    users: DataFrame | None = None,
) -> Replicates:
    """Replicate means of ``metrics`` per model over the users of ``per_user`` (model,
    user, metric columns at one cut-off; every model scored for every user, as
    ``metrics.per_user_metrics`` makes them), for every user and per segment of
    ``segments`` (user, segment; users without one are in no segment).

    With ``users`` (one column, user: every evaluated user), ``per_user`` may leave out
    the (model, user) rows whose metrics are all 0 (``metrics.hit_user_metrics``): the
    resampled users are those of ``users``, and a missing row counts as zeros."""
    models = list(models)
    columns = tuple(f"{m}/{metric}" for m in models for metric in metrics)
    wide = per_user.groupBy(USER).pivot(MODEL, models).agg(*[F.first(m).alias(m) for m in metrics])
    if users is not None:
        wide = users.select(USER).join(wide, USER, how="left")
    names = [f"{m}_{metric}" for m in models for metric in metrics]
    if segments is not None:
        wide = wide.join(segments, USER, how="left")
    else:
        wide = wide.withColumn("segment", F.lit(None).cast("string"))
    users = wide.select(
        F.xxhash64(USER).alias("_hash"),
        F.coalesce("segment", F.lit("")).alias("segment"),
        *[F.coalesce(F.col(n).cast("double"), F.lit(0.0)).alias(n) for n in names],
    )
    schema = T.StructType(
        [
            T.StructField("segment", T.StringType()),
            T.StructField("replicate", T.IntegerType()),
            T.StructField("weight", T.DoubleType()),
            T.StructField("sums", T.ArrayType(T.DoubleType())),
        ]
    )

    def partial_sums(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        for batch in batches:
            if not len(batch):
                continue
            hashes = batch["_hash"].to_numpy().view(np.uint64)
            values = np.rint(batch[names].to_numpy(np.float64) * _SCALE)
            groups = {ALL: np.ones(len(batch), bool)}
            for name in sorted(set(batch["segment"]) - {""}):
                groups[name] = (batch["segment"] == name).to_numpy()
            rows = []
            for name, mask in groups.items():
                rows.append((name, POINT, float(mask.sum()), values[mask].sum(axis=0).tolist()))
            for first in range(0, replicates, _CHUNK):
                count = min(_CHUNK, replicates - first)
                weights = poisson_weights(hashes, first, count, seed)
                for name, mask in groups.items():
                    w = weights[:, mask]
                    sums = w @ values[mask]
                    totals = w.sum(axis=1)
                    rows += [(name, first + i, float(totals[i]), sums[i].tolist()) for i in range(count)]
            yield pd.DataFrame(rows, columns=["segment", "replicate", "weight", "sums"])

    parts = users.mapInPandas(partial_sums, schema).toPandas()
    out_users, means, draws = {}, {}, {}
    for name, group in parts.groupby("segment"):
        weight = group.groupby("replicate")["weight"].sum()
        sums = group.groupby("replicate")["sums"].apply(lambda s: np.sum(np.stack(s.to_numpy()), axis=0))
        n = float(weight.loc[POINT])
        out_users[name] = int(n)
        means[name] = sums.loc[POINT] / _SCALE / max(n, 1.0)
        reps = [r for r in weight.index if r != POINT]
        draws[name] = np.stack([sums.loc[r] / _SCALE / max(weight.loc[r], 1e-12) for r in reps])
    return Replicates(columns, out_users, means, draws)
