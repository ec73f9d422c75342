"""Compare our recommenders with the `implicit` library and an item-kNN baseline.

On the pipeline's own split (``silver/interactions``; nothing is re-split) this
fits, times and evaluates

- implicit's ALS, with MLlib's confidence ``1 + alpha * weight`` and the
  config's rank and iterations;
- implicit's BPR on the binary train matrix;
- item-kNN: cosine similarity between items on the binary train matrix, each
  item's top neighbours kept, a user's score for an item the sum of its
  similarities to the user's train items;

and sets them beside our own models' rows of ``gold/metrics``. Every list is
ranked over the full catalogue of items the models know (items with at least
one train interaction, as MLlib ALS ranks), with the user's train items removed.
The metrics are those of ``amazon_recs.evaluation.metrics`` (see its docstring),
recomputed here in numpy/python; as a check, the same code is run on our
``als`` rows of ``gold/recommendations`` and must give ``gold/metrics``' values.

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
from amazon_recs.features.split import TEST, TRAIN
from amazon_recs.models.als import fit_als
from amazon_recs.pipeline.params import als_params
from amazon_recs.pipeline.versions import model_dir, model_version
from amazon_recs.schemas import ITEM, ITEM_IDX, MODEL, MODELS, RANK, SPLIT, USER, USER_IDX, WEIGHT
from amazon_recs.spark import get_spark

METRICS = ("ndcg", "precision", "recall", "map", "hit_rate", "mrr")
NUM_THREADS = 2
BPR_ITERATIONS = 100
KNN_NEIGHBOURS = 100
SANITY_TOLERANCE = 1e-9
LIBRARIES = ("pyspark", "delta-spark", "implicit", "scipy", "numpy")

# A fitted model as the ranking code sees it: user indices -> (users x items) scores.
Scorer = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class Split:
    """The pipeline's split as matrices and sets, indexed by user_idx and item_idx."""

    train: sp.csr_matrix  # users x items, values = weight
    test: dict[int, set[int]]  # user_idx -> held-out item_idx

    @property
    def binary(self) -> sp.csr_matrix:
        """The train matrix with every interaction set to 1."""
        ones = self.train.copy()
        ones.data = np.ones_like(ones.data)
        return ones


@dataclass(frozen=True)
class Result:
    """One row of the comparison table; ``None`` prints as "-"."""

    model: str
    metrics: Mapping[str, float] | None
    fit_seconds: float | None = None


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
    per_user = [user_metrics(recs.get(user, []), relevant, k) for user, relevant in truth.items()]
    return {m: float(np.mean([u[m] for u in per_user])) for m in METRICS}


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


def fit_implicit_als(split: Split, config: Config, regularization: float) -> Scorer:
    """implicit's ALS on confidence ``1 + als.alpha * weight`` (MLlib's implicit confidence).

    implicit reads the matrix values as the confidence itself (its own alpha is
    left at 1), and uses a CPU model: no GPU.
    """
    confidence = split.train.copy()
    confidence.data = 1.0 + config.require("als.alpha") * confidence.data
    model = AlternatingLeastSquares(
        factors=config.require("als.rank"),
        iterations=config.require("als.max_iter"),
        regularization=regularization,
        alpha=1.0,
        random_state=config.require("als.seed"),
        num_threads=NUM_THREADS,
    )
    model.fit(confidence, show_progress=False)
    return factor_scorer(model.user_factors, model.item_factors)


def fit_implicit_bpr(split: Split, config: Config) -> Scorer:
    """implicit's BPR on the binary train matrix (its item bias is a factor column)."""
    model = BayesianPersonalizedRanking(
        factors=config.require("als.rank"),
        iterations=BPR_ITERATIONS,
        random_state=config.require("als.seed"),
        num_threads=NUM_THREADS,
    )
    model.fit(split.binary, show_progress=False)
    return factor_scorer(model.user_factors, model.item_factors)


def cosine_neighbours(binary: sp.csr_matrix, neighbours: int, block: int = 1024) -> sp.csr_matrix:
    """Item x item cosine similarities, each row keeping its ``neighbours`` best (self excluded).

    Computed a block of items at a time, so memory stays at block x items.
    """
    n_items = binary.shape[1]
    counts = np.asarray(binary.sum(axis=0), dtype=np.float64).ravel()
    inv_norm = np.divide(1.0, np.sqrt(counts), out=np.zeros_like(counts), where=counts > 0)
    normed = (binary @ sp.diags(inv_norm)).tocsc()
    by_item = normed.T.tocsr()
    n = min(neighbours, n_items - 1)
    parts = []
    for start in range(0, n_items, block):
        sims = (by_item[start : start + block] @ normed).toarray()
        rows = np.arange(sims.shape[0])
        sims[rows, start + rows] = 0.0
        top = np.argpartition(-sims, n - 1, axis=1)[:, :n]
        values = np.take_along_axis(sims, top, axis=1)
        keep = values > 0
        parts.append((np.repeat(start + rows, n)[keep.ravel()], top[keep], values[keep]))
    rows, cols, values = (np.concatenate(p) for p in zip(*parts, strict=True))
    return sp.csr_matrix((values, (rows, cols)), shape=(n_items, n_items))


def fit_item_knn(split: Split) -> Scorer:
    """Item-kNN: a user's score for an item is the sum of its similarities to the user's items."""
    binary = split.binary
    similarity = cosine_neighbours(binary, KNN_NEIGHBOURS)
    return lambda users: (binary[users] @ similarity).toarray()


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
        io.read_table(spark, config, "gold/metrics")
        .filter((F.col("k") == k) & F.col("metric").isin(*METRICS))
        .toPandas()
    )


def our_results(gold: pd.DataFrame | None, als_seconds: float) -> tuple[list[Result], list[str]]:
    """A table row per model of ours in gold/metrics, and notes on what is missing."""
    if gold is None:
        return [], ["gold/metrics is absent: run `make run` for our models' rows."]
    present = list(dict.fromkeys(gold[MODEL]))
    names = [m for m in MODELS if m in present] + [m for m in present if m not in MODELS]
    results = []
    for name in names:
        rows = gold[gold[MODEL] == name]
        metrics = dict(zip(rows["metric"], rows["value"], strict=True))
        results.append(Result(f"{name} (ours)", metrics, als_seconds if name == "als" else None))
    notes = [
        f"Our model '{m}' has no rows in gold/metrics (written before it existed, or not run)."
        for m in MODELS
        if m not in present
    ]
    return results, notes


def gold_ndcg(
    spark: SparkSession, config: Config, gold: pd.DataFrame, rows: pd.DataFrame, k: int
) -> tuple[float, float]:
    """NDCG@k of our als rows of gold/recommendations: recomputed here, and as gold/metrics has it."""
    recs = (
        io.read_table(spark, config, "gold/recommendations")
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
    """The comparison as a Markdown table."""
    header = ["model", *(f"{m}@{k}" for m in METRICS), "fit seconds"]
    lines = ["| " + " | ".join(header) + " |", "|---" + "|---:" * (len(header) - 1) + "|"]
    for r in results:
        cells = [f"{r.metrics[m]:.4f}" if r.metrics else "-" for m in METRICS]
        seconds = f"{r.fit_seconds:.1f}" if r.fit_seconds is not None else "-"
        lines.append("| " + " | ".join([r.model, *cells, seconds]) + " |")
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
    note = f"Both ALS use the settings tuned on validation for {version}: {als}."
    return config.with_overrides(overrides), note


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, help="environment YAML, e.g. conf/ml-latest-small.yaml")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
    parser.add_argument("--out", type=Path, help="Markdown file to write the table into")
    parser.add_argument("--name", help="data set name in the markers (default: the config file's stem)")
    parser.add_argument("--implicit-reg", type=float, default=0.01, help="implicit ALS regularization")
    return parser.parse_args(argv)


def gold_notes(
    spark: SparkSession, config: Config, gold: pd.DataFrame, rows: pd.DataFrame, train: DataFrame, k: int
) -> tuple[bool, list[str]]:
    """The gold/recommendations check (passed or not) and where our rows come from."""
    mine, theirs = gold_ndcg(spark, config, gold, rows, k)
    ok = abs(mine - theirs) <= SANITY_TOLERANCE
    notes = [
        f"Check: ndcg@{k} of our als rows of gold/recommendations recomputed here = {mine:.12f}, "
        f"gold/metrics = {theirs:.12f}, difference {abs(mine - theirs):.1e}: "
        f"{'equal' if ok else 'MISMATCH'} within {SANITY_TOLERANCE:g}."
    ]
    written, current = gold["model_version"].iloc[0], model_version(config, train)
    notes.append(
        f"Our rows: gold/metrics of model version {written}"
        + (
            ", the version these settings and train rows give."
            if written == current
            else f"; these settings and train rows give {current} (a setting of split, als, content, "
            "popular or recommend differs from that run's: `make run` refreshes our rows)."
        )
    )
    return ok, notes


def setup_line(config: Config, split: Split, n_users: int) -> str:
    """What was compared, and how each side was fitted."""
    n_test = sum(map(len, split.test.values()))
    n_items = int((split.train.getnnz(axis=0) > 0).sum())
    return (
        f"Split read from silver/interactions (not re-split): {split.train.nnz:,} train and {n_test:,} test "
        f"interactions, {n_users:,} users evaluated, {n_items:,} items ranked (those with a train "
        f"interaction), train items excluded. implicit: factors {config.require('als.rank')}, "
        f"{NUM_THREADS} threads, seed {config.require('als.seed')}; ALS {config.require('als.max_iter')} "
        f"iterations on confidence 1 + {config.require('als.alpha'):g} * weight. Our als fit seconds: "
        f"`fit_als` (solver {config.require('als.solver')}, {config.require('spark.master')}, "
        f"reg_param {config.require('als.reg_param'):g}) "
        "on the same train rows, timed here; our other models are not timed (-)."
    )


def main(argv: Sequence[str]) -> int:
    args = parse_args(argv)
    config = load_config(args.config, args.set)
    name = args.name or Path(args.config).stem
    k = config.require("evaluate.k")
    spark = get_spark(config)

    interactions = read_interactions(spark, config)
    rows = interactions.select(USER, ITEM, USER_IDX, ITEM_IDX, WEIGHT, SPLIT).toPandas()
    split = to_split(rows)
    users = np.array(sorted(split.test), dtype=np.int64)
    train_df = interactions.filter(F.col(SPLIT) == TRAIN)

    gold = read_gold_metrics(spark, config, k)
    config, tuning_note = with_tuned_als(spark, config, gold)
    results, notes = our_results(gold, time_our_als(train_df, config))
    notes.insert(0, tuning_note)
    baselines = {
        f"implicit ALS (reg {args.implicit_reg:g})": lambda: fit_implicit_als(
            split, config, args.implicit_reg
        ),
        f"implicit BPR ({BPR_ITERATIONS} it.)": lambda: fit_implicit_bpr(split, config),
        f"item-kNN (cosine, {KNN_NEIGHBOURS} nn)": lambda: fit_item_knn(split),
    }
    with threadpool_limits(1, "blas"):  # implicit runs its own threads; BLAS's would compete
        for label, fit in baselines.items():
            scorer, seconds = timed(fit)
            recs = top_k_unseen(scorer, split.train, users, k)
            results.append(Result(label, mean_metrics(recs, split.test, k), seconds))

    sanity_ok = True
    if gold is not None and (gold[MODEL] == "als").any():
        sanity_ok, more = gold_notes(spark, config, gold, rows, train_df, k)
        notes += more

    command = f"`python {shlex.join([sys.argv[0], *argv])}`"
    header = f"{command} on {date.today().isoformat()}; {machine()}; {versions()}."
    body = "\n\n".join(
        [f"### {name}", header, setup_line(config, split, len(users)), markdown_table(results, k), *notes]
    )
    print(body)
    if args.out:
        write_block(args.out, f"compare:{name}", body)
        print(f"\nwrote the {name} block of {args.out}")
    return 0 if sanity_ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
