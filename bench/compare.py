"""Compare our recommenders with tuned baselines: the `implicit` library and item-kNN.

On the pipeline's own split (``silver/interactions``; nothing is re-split) this
tunes, fits, times and evaluates

- implicit's ALS (factors, regularisation, alpha; MLlib's confidence
  ``1 + alpha * weight``, the config's iterations);
- implicit's BPR on the binary train matrix (factors, learning rate, iterations);
- item-kNN: cosine similarity between items on the binary train matrix with a
  shrinkage term, ``co(i, j) / (sqrt(n_i n_j) + shrinkage)``, each item's top
  neighbours kept, a user's score for an item the sum of its similarities to the
  user's train items (neighbours, shrinkage): the model our pipeline fits on
  Spark (``amazon_recs.models.item_knn``; its row ``item_knn`` is read from
  ``gold/metrics`` like our other models), computed in scipy on a wider grid;

each on the validation split our own tuning uses (carved from the train rows by
``tuning.carve_validation``, same protocol and seed), every point of its grid
(``GRIDS``, about our ALS grid and weight search's budget) scored by NDCG@k, the
best refitted on all train rows: the seeded ones (implicit's) under ``SEEDS``
seeds, each user's metrics averaged over those fits, with the spread of the
fits' NDCG beside them, so that no baseline's row is one lucky (or unlucky)
seed. Under the table, how many test interactions any model can hit and the
share the most frequent item holds: a set where one item holds most measures
that one item. Their rows sit beside our models' rows of ``gold/metrics``, each
mean with its 95% bootstrap interval over users, and the paired difference of
our hybrid against each baseline on the same users. Every list is ranked over
the full catalogue of items the models know (items with at least one train
interaction, as MLlib ALS ranks), with the user's train items removed. The
metrics are those of ``amazon_recs.evaluation.metrics``, recomputed here in
numpy/python; as a check, the same code is run on our ``als`` rows of
``gold/recommendations`` and must give ``gold/metrics``' values.

    python bench/compare.py --config conf/ml-latest-small.yaml --out BENCHMARKS.md
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shlex
import sys
import time
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from importlib.metadata import version
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp
from implicit.cpu.als import AlternatingLeastSquares
from implicit.cpu.bpr import BayesianPersonalizedRanking
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from report_block import write_block
from threadpoolctl import threadpool_limits

from amazon_recs import io
from amazon_recs.config import Config, load_config
from amazon_recs.evaluation.intervals import poisson_weights
from amazon_recs.features.split import TEST, TRAIN
from amazon_recs.models.als import fit_als
from amazon_recs.models.tuning import carve_validation
from amazon_recs.pipeline.params import als_params, split_params
from amazon_recs.pipeline.versions import VERSION_SECTIONS, current_version, model_dir, model_version
from amazon_recs.schemas import ITEM, ITEM_IDX, MODEL, MODELS, RANK, SPLIT, USER, USER_IDX, WEIGHT
from amazon_recs.spark import get_spark

METRICS = ("ndcg", "precision", "recall", "map", "hit_rate", "mrr")
NUM_THREADS = 2
SANITY_TOLERANCE = 1e-9
REPLICATES = 1000  # bootstrap resamples of the users, as the evaluate stage draws them
LEVEL = 0.95
# Each baseline's grid, every point fitted and scored on validation: 36, 27 and 16
# fits, against our 4 ALS fits (16 on ml-latest-small), 9 item-kNN points and 286
# hybrid weight vectors. implicit's ALS tries every alpha ours does (0.5 included).
GRIDS: dict[str, dict[str, list]] = {
    "implicit ALS": {
        "factors": [32, 64, 128],
        "regularization": [0.01, 0.1, 1.0],
        "alpha": [0.5, 1.0, 5.0, 20.0],
    },
    "implicit BPR": {
        "factors": [32, 64, 128],
        "learning_rate": [0.01, 0.05, 0.1],
        "iterations": [50, 100, 200],
    },
    "item-kNN": {"neighbours": [20, 50, 100, 200], "shrinkage": [0.0, 10.0, 50.0, 100.0]},
}
LIBRARIES = ("pyspark", "delta-spark", "implicit", "scipy", "numpy")
# A seeded baseline's chosen point is refitted under this many seeds (the config's als.seed
# and the next ones): its row is the per-user mean over the fits, and the spread of their
# NDCG is shown. One seed can decide a small set: on All Beauty's global cut, BPR at seed 42
# scored 0.19 and at seeds 0-9 between 0 and 0.07.
SEEDS = 5
SEEDED = frozenset({"implicit ALS", "implicit BPR"})

# A fitted model as the ranking code sees it: user indices -> (users x items) scores.
Scorer = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class Split:
    """The pipeline's split as matrices and sets, indexed by user_idx and item_idx."""

    train: sp.csr_matrix  # users x items, values = weight
    test: dict[int, set[int]]  # user_idx -> held-out item_idx


@dataclass(frozen=True)
class Result:
    """One row of the comparison table; ``None`` prints as "-"."""

    model: str
    metrics: Mapping[str, float] | None
    fit_seconds: float | None = None
    intervals: Mapping[str, tuple[float, float]] | None = None  # metric -> 95% interval
    settings: str = ""
    versus_hybrid: tuple[float, float, float] | None = None  # hybrid - this on NDCG: diff, low, high
    tune_seconds: float | None = None
    seed_ndcg: Sequence[float] = ()  # NDCG of each seed's fit, when refitted under several


# --- metrics ------------------------------------------------------------------


def user_metrics(ranked: Sequence[Hashable], relevant: set, k: int) -> dict[str, float]:
    """One user's metrics at ``k``, exactly as in ``amazon_recs.evaluation.metrics``."""
    hits = np.array([item in relevant for item in ranked[:k]], dtype=np.float64)
    ranks = np.arange(1, hits.size + 1)
    cutoff = min(len(relevant), k)
    idcg = np.sum(1.0 / np.log2(np.arange(1, cutoff + 1) + 1))
    hit_ranks = ranks[hits > 0]
    return {
        "precision": float(hits.sum() / k),
        "recall": float(hits.sum() / len(relevant)),
        "ndcg": float(np.sum(hits / np.log2(ranks + 1)) / idcg),
        "map": float(np.sum(hits * np.cumsum(hits) / ranks) / cutoff),
        "hit_rate": float(hit_ranks.size > 0),
        "mrr": float(1.0 / hit_ranks[0]) if hit_ranks.size else 0.0,
    }


def mean_metrics(
    recs: Mapping[Hashable, Sequence], truth: Mapping[Hashable, set], k: int
) -> dict[str, float]:
    """Metrics averaged over the users of ``truth``; a user without a list scores 0."""
    return {m: float(v.mean()) for m, v in per_user_metrics(recs, truth, k).items()}


def per_user_metrics(
    recs: Mapping[Hashable, Sequence], truth: Mapping[Hashable, set], k: int
) -> dict[str, np.ndarray]:
    """Each metric per user of ``truth``, in its order."""
    per_user = [user_metrics(recs.get(user, []), relevant, k) for user, relevant in truth.items()]
    return {m: np.array([u[m] for u in per_user]) for m in METRICS}


def bootstrap_means(values: np.ndarray, users: np.ndarray, seed: int) -> np.ndarray:
    """REPLICATES resampled means of per-user ``values`` (Poisson weights per user, as
    ``amazon_recs.evaluation.intervals`` draws them): the same users for every model."""
    weights = poisson_weights(users.astype(np.uint64), 0, REPLICATES, seed)
    return (weights @ values) / np.maximum(weights.sum(axis=1), 1e-12)


def interval(draws: np.ndarray) -> tuple[float, float]:
    tail = (1.0 - LEVEL) / 2.0 * 100.0
    low, high = np.percentile(draws, [tail, 100.0 - tail])
    return float(low), float(high)


# --- data ---------------------------------------------------------------------


def read_interactions(spark: SparkSession, config: Config) -> DataFrame:
    """silver/interactions, or a message naming the command that writes it."""
    path = io.table_path(config, "silver/interactions")
    if not io.table_exists(spark, path):
        sys.exit(f"error: no silver/interactions at {path}: run `make run DATA=<dataset>` first")
    return io.read_table(spark, config, "silver/interactions")


def to_split(rows: pd.DataFrame) -> Split:
    """Sparse train matrix and held-out sets from silver/interactions rows."""
    shape = (int(rows[USER_IDX].max()) + 1, int(rows[ITEM_IDX].max()) + 1)
    train = rows[rows[SPLIT] == TRAIN]
    matrix = sp.csr_matrix(
        (train[WEIGHT].to_numpy(np.float32), (train[USER_IDX].to_numpy(), train[ITEM_IDX].to_numpy())),
        shape=shape,
    )
    if matrix.nnz != len(train):
        raise ValueError("silver/interactions holds a (user, item) pair more than once")
    return Split(train=matrix, test=truth_by_user(rows, USER_IDX, ITEM_IDX))


def truth_by_user(rows: pd.DataFrame, col_user: str, col_item: str) -> dict[Hashable, set]:
    """Held-out items per user, keyed by the given columns."""
    return rows[rows[SPLIT] == TEST].groupby(col_user)[col_item].agg(set).to_dict()


# --- models -------------------------------------------------------------------


def factor_scorer(user_factors: np.ndarray, item_factors: np.ndarray) -> Scorer:
    """Scores as dot products of user and item factors."""
    return lambda users: user_factors[users] @ item_factors.T


def fit_implicit_als(
    train: sp.csr_matrix, config: Config, seed: int, factors: int, regularization: float, alpha: float
) -> Scorer:
    """implicit's ALS on confidence ``1 + alpha * weight`` (MLlib's implicit confidence).

    implicit reads the matrix values as the confidence itself (its own alpha is
    left at 1), and uses a CPU model: no GPU.
    """
    confidence = train.copy()
    confidence.data = 1.0 + alpha * confidence.data
    model = AlternatingLeastSquares(
        factors=factors,
        iterations=config.require("als.max_iter"),
        regularization=regularization,
        alpha=1.0,
        random_state=seed,
        num_threads=NUM_THREADS,
    )
    model.fit(confidence, show_progress=False)
    return factor_scorer(model.user_factors, model.item_factors)


def fit_implicit_bpr(
    train: sp.csr_matrix, config: Config, seed: int, factors: int, learning_rate: float, iterations: int
) -> Scorer:
    """implicit's BPR on the binary train matrix (its item bias is a factor column)."""
    model = BayesianPersonalizedRanking(
        factors=factors,
        learning_rate=learning_rate,
        iterations=iterations,
        random_state=seed,
        num_threads=NUM_THREADS,
    )
    model.fit(binary(train), show_progress=False)
    return factor_scorer(model.user_factors, model.item_factors)


def binary(matrix: sp.csr_matrix) -> sp.csr_matrix:
    ones = matrix.copy()
    ones.data = np.ones_like(ones.data)
    return ones


def cosine_neighbours(
    binary: sp.csr_matrix, neighbours: int, shrinkage: float = 0.0, block: int = 1024
) -> sp.csr_matrix:
    """Item x item similarities ``co(i, j) / (sqrt(n_i n_j) + shrinkage)`` (cosine at 0),
    each row keeping its ``neighbours`` best (self excluded).

    Computed a block of items at a time, so memory stays at block x items.
    """
    n_items = binary.shape[1]
    counts = np.asarray(binary.sum(axis=0), dtype=np.float64).ravel()
    norms = np.sqrt(counts)
    by_item = binary.T.tocsr()
    columns = binary.tocsc()
    n = min(neighbours, n_items - 1)
    parts = []
    for start in range(0, n_items, block):
        co = (by_item[start : start + block] @ columns).toarray()
        denominator = norms[start : start + co.shape[0], None] * norms[None, :] + shrinkage
        sims = np.divide(co, denominator, out=np.zeros_like(co), where=denominator > 0)
        rows = np.arange(sims.shape[0])
        sims[rows, start + rows] = 0.0
        top = np.argpartition(-sims, n - 1, axis=1)[:, :n]
        values = np.take_along_axis(sims, top, axis=1)
        keep = values > 0
        parts.append((np.repeat(start + rows, n)[keep.ravel()], top[keep], values[keep]))
    rows, cols, values = (np.concatenate(p) for p in zip(*parts, strict=True))
    return sp.csr_matrix((values, (rows, cols)), shape=(n_items, n_items))


def fit_item_knn(
    train: sp.csr_matrix, config: Config, seed: int, neighbours: int, shrinkage: float
) -> Scorer:
    """Item-kNN: a user's score for an item is the sum of its similarities to the user's items
    (deterministic: ``seed`` is not used)."""
    return neighbour_scorer(train, cosine_neighbours(binary(train), neighbours, shrinkage))


def neighbour_scorer(train: sp.csr_matrix, similarity: sp.csr_matrix) -> Scorer:
    """A user's score for an item: the sum of its similarities to the user's train items."""
    ones = binary(train)
    return lambda users: (ones[users] @ similarity).toarray()


FITS = {
    "implicit ALS": fit_implicit_als,
    "implicit BPR": fit_implicit_bpr,
    "item-kNN": fit_item_knn,
}


def grid_points(grid: Mapping[str, list]) -> list[dict]:
    points = [{}]
    for key, values in grid.items():
        points = [{**p, key: v} for p in points for v in values]
    return points


def tune(name: str, fit_rows: Split, config: Config, k: int) -> tuple[dict, float, list[tuple[dict, float]]]:
    """Every point of ``name``'s grid fitted on the fit rows and scored by NDCG@k on the
    validation users: (best settings, seconds, every point's NDCG)."""
    users = np.array(sorted(fit_rows.test), dtype=np.int64)
    started = time.perf_counter()
    scored = []
    for point in grid_points(GRIDS[name]):
        scorer = FITS[name](fit_rows.train, config, config.require("als.seed"), **point)
        recs = top_k_unseen(scorer, fit_rows.train, users, k)
        scored.append((point, mean_metrics(recs, fit_rows.test, k)["ndcg"]))
    best = max(scored, key=lambda p: p[1])[0]
    return best, time.perf_counter() - started, scored


def refit(
    name: str, point: dict, split: Split, users: np.ndarray, config: Config, k: int
) -> tuple[dict[str, np.ndarray], float, list[float]]:
    """``name`` at its tuned ``point`` fitted on all train rows, under ``SEEDS`` seeds if it
    is seeded: (each metric per user averaged over the fits, mean fit seconds, each fit's
    NDCG@k; empty for a deterministic model)."""
    first = config.require("als.seed")
    seeds = range(first, first + (SEEDS if name in SEEDED else 1))
    fits = []
    for seed in seeds:
        scorer, seconds = timed(lambda seed=seed: FITS[name](split.train, config, seed, **point))
        fits.append((per_user_metrics(top_k_unseen(scorer, split.train, users, k), split.test, k), seconds))
    per_user = {m: np.mean([f[m] for f, _ in fits], axis=0) for m in METRICS}
    seed_ndcg = [float(f["ndcg"].mean()) for f, _ in fits] if len(fits) > 1 else []
    return per_user, float(np.mean([s for _, s in fits])), seed_ndcg


def timed(fit: Callable[[], Scorer]) -> tuple[Scorer, float]:
    """Run ``fit`` and return its result with the wall-clock seconds it took."""
    start = time.perf_counter()
    result = fit()
    return result, time.perf_counter() - start


def time_our_als(train: DataFrame, config: Config) -> float:
    """Seconds of ``amazon_recs.models.als.fit_als`` on the (cached) train rows."""
    train = train.cache()
    train.count()
    _, seconds = timed(lambda: fit_als(train, als_params(config)))
    return seconds


# --- ranking ------------------------------------------------------------------


def top_k_unseen(
    score: Scorer, train: sp.csr_matrix, users: np.ndarray, k: int, batch: int = 256
) -> dict[int, list[int]]:
    """Each user's ``k`` best items over the catalogue, train items and unknown items excluded.

    The catalogue is every item with a train interaction; ties go to the lower item index.
    """
    unknown = train.getnnz(axis=0) == 0
    recs: dict[int, list[int]] = {}
    for start in range(0, len(users), batch):
        rows = users[start : start + batch]
        scores = np.array(score(rows), dtype=np.float64)
        seen = train[rows]
        scores[np.repeat(np.arange(len(rows)), np.diff(seen.indptr)), seen.indices] = -np.inf
        scores[:, unknown] = -np.inf
        for user, row in zip(rows, scores, strict=True):
            best = np.argsort(-row, kind="stable")[:k]
            recs[int(user)] = [int(i) for i in best if np.isfinite(row[i])]
    return recs


# --- our models ---------------------------------------------------------------


def read_gold_metrics(spark: SparkSession, config: Config, k: int) -> pd.DataFrame | None:
    """Our models' rows of gold/metrics at ``k``, or None when the table is absent."""
    path = io.table_path(config, "gold/metrics")
    if not io.table_exists(spark, path):
        return None
    return (
        io.read_version(spark, config, "gold/metrics", current_version(spark, config))
        .filter((F.col("k") == k) & F.col("metric").isin(*METRICS))
        .toPandas()
    )


def our_results(gold: pd.DataFrame | None, als_seconds: float) -> tuple[list[Result], list[str]]:
    """A table row per model of ours in gold/metrics (with its intervals where the
    evaluate stage wrote them), and notes on what is missing."""
    if gold is None:
        return [], ["gold/metrics is absent: run `make run` for our models' rows."]
    present = list(dict.fromkeys(gold[MODEL]))
    names = [m for m in MODELS if m in present] + [m for m in present if m not in MODELS]
    results = []
    for name in names:
        rows = gold[gold[MODEL] == name]
        metrics = dict(zip(rows["metric"], rows["value"], strict=True))
        bounds = None
        if "ci_low" in rows and rows["ci_low"].notna().all():
            bounds = {
                m: (lo, hi) for m, lo, hi in zip(rows["metric"], rows["ci_low"], rows["ci_high"], strict=True)
            }
        seconds = als_seconds if name == "als" else None
        results.append(Result(f"{name} (ours)", metrics, seconds, bounds, settings="tuned by the pipeline"))
    notes = [
        f"Our model '{m}' has no rows in gold/metrics (written before it existed, or not run)."
        for m in MODELS
        if m not in present
    ]
    return results, notes


def our_lists(
    spark: SparkSession, config: Config, rows: pd.DataFrame, model: str, k: int
) -> dict[int, list[int]]:
    """Our ``model``'s top-k of gold/recommendations, in the split's user and item indices."""
    recs = (
        io.read_version(spark, config, "gold/recommendations", current_version(spark, config))
        .filter((F.col(MODEL) == model) & (F.col(RANK) <= k))
        .select(USER, ITEM, RANK)
        .toPandas()
        .sort_values([USER, RANK])
    )
    user_idx = dict(zip(rows[USER], rows[USER_IDX], strict=False))
    item_idx = dict(zip(rows[ITEM], rows[ITEM_IDX], strict=False))
    lists: dict[int, list[int]] = {}
    for user, items in recs.groupby(USER)[ITEM]:
        if user in user_idx:
            lists[int(user_idx[user])] = [int(item_idx.get(i, -1)) for i in items]
    return lists


def gold_ndcg(
    spark: SparkSession, config: Config, gold: pd.DataFrame, rows: pd.DataFrame, k: int
) -> tuple[float, float]:
    """NDCG@k of our als rows of gold/recommendations: recomputed here, and as gold/metrics has it."""
    recs = (
        io.read_version(spark, config, "gold/recommendations", current_version(spark, config))
        .filter((F.col(MODEL) == "als") & (F.col(RANK) <= k))
        .select(USER, ITEM, RANK)
        .toPandas()
        .sort_values([USER, RANK])
    )
    lists = recs.groupby(USER)[ITEM].agg(list).to_dict()
    mine = mean_metrics(lists, truth_by_user(rows, USER, ITEM), k)["ndcg"]
    theirs = gold[(gold[MODEL] == "als") & (gold["metric"] == "ndcg")]["value"].iloc[0]
    return mine, float(theirs)


# --- report -------------------------------------------------------------------


def markdown_table(results: Sequence[Result], k: int) -> str:
    """The comparison as a Markdown table: each mean with its interval, the hybrid's
    paired NDCG difference against the row, the spread over seeds, the settings, fit
    and tuning seconds."""
    header = [
        "model",
        "settings",
        *(f"{m}@{k}" for m in METRICS),
        f"hybrid - model, ndcg@{k}",
        f"ndcg@{k} of each seed's fit: min - max",
        "fit seconds",
        "tuning seconds",
    ]
    lines = ["| " + " | ".join(header) + " |", "|---|---" + "|---:" * (len(header) - 2) + "|"]
    for r in results:
        cells = []
        for m in METRICS:
            if not r.metrics:
                cells.append("-")
            elif r.intervals and m in r.intervals:
                low, high = r.intervals[m]
                cells.append(f"{r.metrics[m]:.4f} [{low:.4f}, {high:.4f}]")
            else:
                cells.append(f"{r.metrics[m]:.4f}")
        versus = "-"
        if r.versus_hybrid is not None:
            diff, low, high = r.versus_hybrid
            versus = f"{diff:+.4f} [{low:+.4f}, {high:+.4f}]"
        spread = f"{min(r.seed_ndcg):.4f} - {max(r.seed_ndcg):.4f}" if r.seed_ndcg else "-"
        seconds = f"{r.fit_seconds:.1f}" if r.fit_seconds is not None else "-"
        tuning = f"{r.tune_seconds:.1f}" if r.tune_seconds is not None else "-"
        lines.append(
            "| " + " | ".join([r.model, r.settings or "-", *cells, versus, spread, seconds, tuning]) + " |"
        )
    return "\n".join(lines)


def machine() -> str:
    """nproc, total memory, CPU model and load average (timings are only as quiet as the machine)."""
    meminfo = Path("/proc/meminfo").read_text()
    mem_kib = int(re.search(r"^MemTotal:\s+(\d+)", meminfo, re.M).group(1))
    cpu = re.search(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.M)
    cpu_name = cpu.group(1).strip() if cpu else platform.processor() or "unknown CPU"
    load = Path("/proc/loadavg").read_text().split()[0]
    return (
        f"{len(os.sched_getaffinity(0))} CPUs (nproc), {mem_kib / 2**20:.1f} GiB RAM, {cpu_name}, "
        f"load average {load} at start"
    )


def versions() -> str:
    """Python and library versions."""
    return ", ".join([f"Python {platform.python_version()}", *(f"{lib} {version(lib)}" for lib in LIBRARIES)])


def with_tuned_als(spark: SparkSession, config: Config, gold: pd.DataFrame | None) -> tuple[Config, str]:
    """The config with the ALS settings our pipeline tuned on validation, so both ALS get them.

    Equal rank and iterations are the point of the comparison; alpha and
    regularisation as tuned for our rows (implicit keeps --implicit-reg, as its
    regularisation is not scaled by interaction counts like MLlib's).
    """
    if gold is None:
        return config, "Our ALS was not tuned here (no gold/metrics): configured ALS settings used."
    version = gold["model_version"].iloc[0]
    tuned = io.read_text(spark, f"{model_dir(config, version)}/tuning.json")
    if not tuned:
        return config, f"Model version {version} was not tuned: configured ALS settings used for both ALS."
    als = json.loads(tuned)["als"]
    overrides = [f"als.{key}={value}" for key, value in als.items()]
    note = (
        f"Our ALS, timed here, uses the settings the pipeline tuned on validation for {version}: {als}; "
        "each baseline tunes its own on the same validation split (the grids above)."
    )
    return config.with_overrides(overrides), note


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, help="environment YAML, e.g. conf/ml-latest-small.yaml")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
    parser.add_argument("--out", type=Path, help="Markdown file to write the table into")
    parser.add_argument(
        "--name",
        help="data set name in the markers (default: the config file's stem, and its split protocol)",
    )
    return parser.parse_args(argv)


def gold_notes(
    spark: SparkSession, config: Config, gold: pd.DataFrame, rows: pd.DataFrame, train: DataFrame, k: int
) -> tuple[bool, list[str]]:
    """The gold/recommendations check (passed or not) and where our rows come from.

    ``config`` is the configuration as given: the pipeline names a version by its
    configured settings (tuning's choices are an output of the version, not an input)."""
    mine, theirs = gold_ndcg(spark, config, gold, rows, k)
    ok = abs(mine - theirs) <= SANITY_TOLERANCE
    notes = [
        f"Check: ndcg@{k} of our als rows of gold/recommendations recomputed here = {mine:.12f}, "
        f"gold/metrics = {theirs:.12f}, difference {abs(mine - theirs):.1e}: "
        f"{'equal' if ok else 'MISMATCH'} within {SANITY_TOLERANCE:g}."
    ]
    written = gold["model_version"].iloc[0]
    info = json.loads(io.read_text(spark, f"{model_dir(config, written)}/model_info.json") or "{}")
    at = info.get("inputs", {})
    items = io.read_table(spark, config, "silver/items", at.get("silver/items"))
    trained = io.read_table(spark, config, "silver/interactions", at.get("silver/interactions"))
    current = model_version(config, trained.filter(F.col(SPLIT) == TRAIN), items)
    notes.append(
        f"Our rows: gold/metrics of model version {written}"
        + (
            ", the version these settings and train rows give."
            if written == current
            else f"; these settings and train rows give {current} (a setting of "
            f"{', '.join(VERSION_SECTIONS)} or the code differs from that run's: `make run` "
            "refreshes our rows)."
        )
    )
    return ok, notes


def setup_line(config: Config, split: Split, n_users: int, validation: Split) -> str:
    """What was compared, and how each side was fitted and tuned."""
    n_test = sum(map(len, split.test.values()))
    n_items = int((split.train.getnnz(axis=0) > 0).sum())
    n_validation = sum(map(len, validation.test.values()))
    grids = "; ".join(
        f"{name}: " + ", ".join(f"{key} {values}" for key, values in grid.items())
        for name, grid in GRIDS.items()
    )
    return (
        f"Split read from silver/interactions (not re-split): {split.train.nnz:,} train and {n_test:,} test "
        f"interactions, {n_users:,} users evaluated, {n_items:,} items ranked (those with a train "
        f"interaction), train items excluded. Each baseline is tuned on the validation split our tuning "
        f"uses ({validation.train.nnz:,} fit and {n_validation:,} validation interactions of "
        f"{len(validation.test):,} users, carved from train by `split.protocol` "
        f"{config.require('split.protocol')}): every point of its grid fitted and scored by NDCG@k "
        f"({grids}), the best refitted on all train rows. implicit: {NUM_THREADS} threads, tuned at seed "
        f"{config.require('als.seed')} and refitted under {SEEDS} seeds from it, the row being each "
        f"user's metrics averaged over those fits; ALS {config.require('als.max_iter')} iterations on "
        f"confidence 1 + alpha * weight. Intervals: 95%, {REPLICATES} bootstrap resamples of the users; "
        "the hybrid's difference is paired (the same users in each resample). Our als fit seconds: "
        f"`fit_als` (solver {config.require('als.solver')}, {config.require('spark.master')}) on the same "
        "train rows with the tuned settings, timed here; our other models are not timed (-)."
    )


def hittable_line(split: Split, rows: pd.DataFrame) -> str:
    """How many test rows any model can hit (their item has a train interaction), and the
    share of them the most frequent item holds: when one item holds most, the metrics
    measure how each model ranks that one item."""
    known = split.train.getnnz(axis=0) > 0
    counts = np.bincount(
        [item for items in split.test.values() for item in items if known[item]], minlength=known.size
    )
    total = sum(map(len, split.test.values()))
    hittable = int(counts.sum())
    if not hittable:
        return f"None of the {total:,} test interactions is on an item with a train interaction."
    top = int(np.argmax(counts))
    name = rows.loc[rows[ITEM_IDX] == top, ITEM].iloc[0]
    return (
        f"Test interactions any model can hit (their item has a train interaction): {hittable:,} of "
        f"{total:,}; the most frequent of those items ({name}) holds {counts[top]:,} "
        f"({counts[top] / hittable:.0%})."
    )


def block_name(path: str, config: Config) -> str:
    """The data set's name (the config file's stem), with the split protocol when a
    setting changed it: its figures are not the default split's."""
    protocol = config.require("split.protocol")
    if protocol == load_config(path, []).require("split.protocol"):
        return Path(path).stem
    return f"{Path(path).stem} ({protocol})"


def main(argv: Sequence[str]) -> int:
    # Spark's Python workers run this interpreter (its packages), however the script is started.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    args = parse_args(argv)
    given = load_config(args.config, args.set)
    name = args.name or block_name(args.config, given)
    k = given.require("evaluate.k")
    spark = get_spark(given)

    interactions = read_interactions(spark, given)
    rows = interactions.select(USER, ITEM, USER_IDX, ITEM_IDX, WEIGHT, SPLIT).toPandas()
    # A global time cut leaves users with nothing before it: no model knows them, and the
    # evaluate stage leaves them out of every model's metrics; so does this comparison.
    known = rows.loc[rows[SPLIT] == TRAIN, USER].unique()
    cold_users = int(rows.loc[~rows[USER].isin(known), USER].nunique())
    rows = rows[rows[USER].isin(known)]
    split = to_split(rows)
    users = np.array(sorted(split.test), dtype=np.int64)
    train_df = interactions.filter(F.col(SPLIT) == TRAIN)
    fit_df, validation_df = carve_validation(train_df, split_params(given))
    columns = [USER_IDX, ITEM_IDX, WEIGHT, SPLIT]
    validation = to_split(
        pd.concat([fit_df.select(*columns).toPandas(), validation_df.select(*columns).toPandas()])
    )

    gold = read_gold_metrics(spark, given, k)
    config, tuning_note = with_tuned_als(spark, given, gold)
    results, notes = our_results(gold, time_our_als(train_df, config))
    notes.insert(0, tuning_note)
    seed = given.require("split.seed")
    hybrid = None
    if gold is not None and (gold[MODEL] == "hybrid").any():
        hybrid = per_user_metrics(our_lists(spark, given, rows, "hybrid", k), split.test, k)["ndcg"]
    with threadpool_limits(1, "blas"):  # implicit runs its own threads; BLAS's would compete
        for label in GRIDS:
            best, tune_seconds, scored = tune(label, validation, given, k)
            print(f"{label}: " + "; ".join(f"{p} {v:.4f}" for p, v in scored), flush=True)
            per_user, seconds, seed_ndcg = refit(label, best, split, users, given, k)
            bounds = {m: interval(bootstrap_means(v, users, seed)) for m, v in per_user.items()}
            versus = None
            if hybrid is not None:
                diff = hybrid - per_user["ndcg"]
                versus = (float(diff.mean()), *interval(bootstrap_means(diff, users, seed)))
            settings = ", ".join(f"{key} {value:g}" for key, value in best.items())
            means = {m: float(v.mean()) for m, v in per_user.items()}
            results.append(
                Result(f"{label} (tuned)", means, seconds, bounds, settings, versus, tune_seconds, seed_ndcg)
            )

    sanity_ok = True
    if gold is not None and (gold[MODEL] == "als").any():
        sanity_ok, more = gold_notes(spark, given, gold, rows, train_df, k)
        notes += more

    command = f"`python {shlex.join([sys.argv[0], *argv])}`"
    header = f"{command} on {date.today().isoformat()}; {machine()}; {versions()}."
    body = "\n\n".join(
        [
            f"### {name}",
            header,
            setup_line(config, split, len(users), validation)
            + (
                f" {cold_users:,} test users with no train interaction (a global time cut) are left out, "
                "as the evaluate stage leaves them out."
                if cold_users
                else ""
            ),
            markdown_table(results, k),
            hittable_line(split, rows),
            *notes,
        ]
    )
    print(body)
    if args.out:
        write_block(args.out, f"compare:{name}", body)
        print(f"\nwrote the {name} block of {args.out}")
    return 0 if sanity_ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
