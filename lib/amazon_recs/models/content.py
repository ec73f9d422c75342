"""Content model: TF-IDF over product text, item neighbours (exact or LSH), user-profile scoring."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.sparse as sp
from pyspark.ml import Pipeline, PipelineModel
from pyspark.ml.feature import (
    IDF,
    BucketedRandomProjectionLSH,
    BucketedRandomProjectionLSHModel,
    HashingTF,
    Normalizer,
    RegexTokenizer,
    StopWordsRemover,
)
from pyspark.ml.functions import vector_to_array
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from amazon_recs.models.topk import BLOCK_FLOATS, best_per_row, filter_seen, top_k, top_n_per_row
from amazon_recs.schemas import ITEM_IDX, SCORE, USER_IDX, WEIGHT

log = logging.getLogger(__name__)

VECTOR = "tfidf"
NEIGHBOUR = "neighbour_idx"
SIMILARITY = "similarity"
NEIGHBOURS_SCHEMA = "item_idx int, neighbour_idx int, similarity double, rank int"
METHODS = ("exact", "lsh", "auto")
# Rows of the item-term matrix multiplied at once by the exact search: the
# product holds these rows' similarities with every item sharing a term.
EXACT_BLOCK_ROWS = 512


@dataclass(frozen=True)
class ContentParams:
    """The content model's settings (``content.*``; the LSH seed is ``als.seed``)."""

    num_features: int = 8192
    min_doc_freq: int = 2
    bucket_width: float = 0.5
    num_hash_tables: int = 3
    min_similarity: float = 0.1
    neighbours: int = 30
    recall_check_max_items: int = 5000
    seed: int = 42
    # "exact" (blocked sparse products), "lsh", or "auto": exact up to exact_max_items.
    method: str = "auto"
    exact_max_items: int = 200_000

    def use_exact(self, items_with_text: int) -> bool:
        if self.method not in METHODS:
            raise ValueError(f"content.method must be one of {', '.join(METHODS)}, not {self.method!r}")
        return self.method == "exact" or (self.method == "auto" and items_with_text <= self.exact_max_items)


def with_tokens(items: DataFrame) -> DataFrame:
    """Items whose text yields at least one token; the rest have no content vector.

    Empty vectors carry no similarity and would only slow LSH down, so items
    without metadata (or with only stop words) are skipped here, cleanly.
    """
    tokenizer = RegexTokenizer(
        inputCol="text", outputCol="_raw_tokens", pattern=r"[^\p{L}\p{N}]+", minTokenLength=2
    )
    remover = StopWordsRemover(inputCol="_raw_tokens", outputCol="tokens")
    with_text = items.filter(F.col("text").isNotNull()).select(ITEM_IDX, "text")
    tokens = remover.transform(tokenizer.transform(with_text))
    return tokens.filter(F.size("tokens") > 0).select(ITEM_IDX, "tokens")


def fit_tfidf(tokens: DataFrame, params: ContentParams) -> PipelineModel:
    """HashingTF -> IDF -> L2 normalisation, so that a dot product is a cosine."""
    return Pipeline(
        stages=[
            HashingTF(inputCol="tokens", outputCol="_tf", numFeatures=params.num_features),
            IDF(inputCol="_tf", outputCol="_idf", minDocFreq=params.min_doc_freq),
            Normalizer(inputCol="_idf", outputCol=VECTOR, p=2.0),
        ]
    ).fit(tokens)


def fit_lsh(vectors: DataFrame, params: ContentParams) -> BucketedRandomProjectionLSHModel:
    """Random projections whose buckets scale with the vectors' dimension.

    Projections of unit vectors on a random unit direction have standard
    deviation 1/sqrt(dimension): a fixed bucket length would put every item in
    one bucket (a full self-join) once the dimension is large.
    """
    return BucketedRandomProjectionLSH(
        inputCol=VECTOR,
        outputCol="_hashes",
        bucketLength=params.bucket_width / math.sqrt(params.num_features),
        numHashTables=params.num_hash_tables,
        seed=params.seed,
    ).fit(vectors)


def item_neighbours(
    lsh: BucketedRandomProjectionLSHModel, vectors: DataFrame, min_similarity: float, n: int
) -> DataFrame:
    """Each item's ``n`` most similar items by cosine, found through LSH.

    For unit vectors, Euclidean distance d and cosine c satisfy d^2 = 2 - 2c,
    so a cosine floor is a distance ceiling. The self-join returns (a, b) and
    (b, a); one is kept and mirrored, so every pair is scored once.

    Returns:
        Columns item_idx, neighbour_idx, similarity, rank.
    """
    max_distance = math.sqrt(max(0.0, 2.0 - 2.0 * min_similarity))
    # A text whose every term is rarer than min_doc_freq has an all-zero vector.
    # It is no unit vector (two of them are at distance 0, "similarity" 1, and any
    # unit vector at distance 1, "similarity" 0.5), and its cosine with anything is 0.
    vectors = vectors.filter(F.exists(vector_to_array(VECTOR), lambda x: x != 0.0))
    pairs = (
        lsh.approxSimilarityJoin(vectors, vectors, max_distance, distCol="_dist")
        .select(
            F.col(f"datasetA.{ITEM_IDX}").alias("a"),
            F.col(f"datasetB.{ITEM_IDX}").alias("b"),
            (1.0 - F.col("_dist") * F.col("_dist") / 2.0).alias(SIMILARITY),
        )
        .filter(F.col("a") < F.col("b"))
    )
    both = pairs.select(F.col("a").alias(ITEM_IDX), F.col("b").alias(NEIGHBOUR), SIMILARITY).unionByName(
        pairs.select(F.col("b").alias(ITEM_IDX), F.col("a").alias(NEIGHBOUR), SIMILARITY)
    )
    return top_k(both, n, col_user=ITEM_IDX, col_item=NEIGHBOUR, col_score=SIMILARITY)


def recommend_content(neighbours: DataFrame, train: DataFrame, n: int) -> DataFrame:
    """Score unseen items by similarity to what the user rated, weighted by the rating.

    score(u, j) = sum over items i the user rated of weight(u, i) * sim(i, j),
    divided by the user's total weight, so scores are comparable across users.
    The seen item contributing most becomes the reason.

    Returns:
        Columns user_idx, item_idx, score, because_idx, rank.
    """
    seen = train.select(USER_IDX, ITEM_IDX, WEIGHT)
    total = seen.groupBy(USER_IDX).agg(F.sum(WEIGHT).alias("_total"))
    contributions = seen.join(
        neighbours.select(ITEM_IDX, NEIGHBOUR, SIMILARITY), ITEM_IDX, how="inner"
    ).select(
        USER_IDX,
        F.col(ITEM_IDX).alias("because_idx"),
        F.col(NEIGHBOUR).alias(ITEM_IDX),
        (F.col(WEIGHT) * F.col(SIMILARITY)).alias("_c"),
    )
    scored = (
        contributions.groupBy(USER_IDX, ITEM_IDX)
        .agg(
            F.sum("_c").alias(SCORE),
            F.max_by("because_idx", F.struct("_c", F.negate("because_idx"))).alias("because_idx"),
        )
        .join(total, USER_IDX, how="inner")
        .withColumn(SCORE, F.col(SCORE) / F.col("_total"))
        .drop("_total")
    )
    return top_k(filter_seen(scored, seen), n)


def sparse_neighbours(
    vectors: DataFrame,
    min_similarity: float,
    n: int,
    block_rows: int = EXACT_BLOCK_ROWS,
    dense: bool | int | None = None,
) -> DataFrame:
    """Each item's ``n`` most similar items by exact cosine, in blocks of rows on the executors.

    The L2-normalised TF-IDF vectors are collected once as a sparse item x term
    matrix X (item-sized: 500k items of ~20 terms is ~120 MB) and broadcast.
    Each task takes blocks of rows, computes their cosines with every item and
    keeps each row's ``n`` best other items at or above ``min_similarity``
    (similarity descending, then item). The cosines come one of two ways,
    split by term between two products, whichever costs less for this catalogue
    (``dense``: True, False or a number of terms forces the split):

    - sparse products (scipy), whose work is the sum over terms of the squared
      document frequency: linear in the items when the vocabulary grows with
      the catalogue, as in real product text;
    - a dense product (BLAS) over the most common terms, plus the sparse one of
      the rest, and ``top_n_per_row``: items squared times those terms, for
      catalogues whose texts share a few common words (every pair is then
      similar, and sparse products crawl).

    Returns:
        Columns item_idx, neighbour_idx, similarity, rank.
    """
    spark = vectors.sparkSession
    ids, matrix = _collect_sparse(vectors)
    if not len(ids) or n <= 0:
        return spark.createDataFrame([], NEIGHBOURS_SCHEMA)
    freq = np.bincount(matrix.indices, minlength=matrix.shape[1]).astype(np.float64)
    heavy = _dense_terms(freq, len(ids), dense)
    light = np.setdiff1d(np.flatnonzero(freq), heavy)
    log.info(
        "exact neighbours of %d items: %d common terms as a dense product, %d as sparse products",
        len(ids),
        len(heavy),
        len(light),
    )
    if len(heavy):
        rows_per_block = max(1, min(block_rows, BLOCK_FLOATS // len(ids)))
        columns = np.ascontiguousarray(matrix[:, heavy].toarray())  # float64: cosines as exact as sparse
        rest = matrix[:, light] if len(light) else None
        shared = spark.sparkContext.broadcast((ids, columns, rest, None if rest is None else rest.T.tocsr()))
    else:
        rows_per_block = block_rows
        shared = spark.sparkContext.broadcast((ids, matrix, matrix.T.tocsr()))

    def search(batches):
        ids, *parts = shared.value
        for batch in batches:
            for start in batch["id"].to_numpy():
                stop = min(int(start) + rows_per_block, len(ids))
                if len(heavy):
                    yield _top_dense(ids, *parts, int(start), stop, min_similarity, n)
                else:
                    yield _top_sparse(ids, *parts, int(start), stop, min_similarity, n)

    blocks = spark.range(
        0, len(ids), rows_per_block, numPartitions=max(1, spark.sparkContext.defaultParallelism * 4)
    )
    return blocks.mapInPandas(search, NEIGHBOURS_SCHEMA)


# Per multiply-add of a sparse product (scipy), of a dense one (float64 BLAS, one
# thread), and per score for the mask and top-n of a dense block: measured on
# this project's 2-core machine, 20k items of 25 terms out of 400.
SPARSE_NS_PER_PRODUCT = 21.5
DENSE_NS_PER_PRODUCT = 0.13
DENSE_NS_PER_SCORE = 4.0
DENSE_MAX_BYTES = 1 << 30


def _dense_terms(freq: np.ndarray, items: int, dense: bool | int | None) -> np.ndarray:
    """The terms (columns) whose products are cheaper dense, by the cost model above.

    A term in ``df`` documents costs df^2 sparse multiply-adds; taken into the
    dense product it costs ``items``^2 instead, however common. So the common
    terms go dense, most common first, as long as that lowers the total;
    ``dense`` True takes every term in use, False none, a number that many.
    """
    used = np.flatnonzero(freq)
    by_freq = used[np.argsort(-freq[used], kind="stable")]
    if isinstance(dense, bool):
        return np.sort(by_freq) if dense else np.empty(0, np.int64)
    if dense is not None:
        return np.sort(by_freq[:dense])
    square = freq[by_freq] ** 2
    left_sparse = square.sum() - np.r_[0.0, np.cumsum(square)]  # products left sparse, h terms dense
    h = np.arange(len(by_freq) + 1)
    cost = left_sparse * SPARSE_NS_PER_PRODUCT + np.where(
        h > 0, float(items) ** 2 * (h * DENSE_NS_PER_PRODUCT + DENSE_NS_PER_SCORE), 0.0
    )
    cost[h * items * 8 > DENSE_MAX_BYTES] = np.inf
    return np.sort(by_freq[: int(np.argmin(cost))])


def _neighbour_rows(ids, rows, cols, sims, rank) -> pd.DataFrame:
    return pd.DataFrame(
        {
            ITEM_IDX: ids[rows],
            NEIGHBOUR: ids[cols],
            SIMILARITY: sims.astype(np.float64),
            "rank": np.asarray(rank, np.int32),
        }
    )


def _top_sparse(ids, x, xt, start: int, stop: int, min_similarity: float, n: int) -> pd.DataFrame:
    block = (x[start:stop] @ xt).tocoo()
    rows, cols, sims = block.row.astype(np.int64) + start, block.col.astype(np.int64), block.data
    keep = (rows != cols) & (sims >= min_similarity)
    rows, cols, sims = rows[keep], cols[keep], sims[keep]
    index, rank = best_per_row(rows, sims, n, cols)
    return _neighbour_rows(ids, rows[index], cols[index], sims[index], rank)


def _top_dense(ids, dense, rest, rest_t, start: int, stop: int, min_similarity: float, n: int):
    """A block's cosines as the dense product of the common terms plus the sparse one of the rest."""
    scores = dense[start:stop] @ dense.T
    if rest is not None:
        scores += (rest[start:stop] @ rest_t).toarray()
    scores[np.arange(stop - start), np.arange(start, stop)] = -np.inf
    scores[scores < min_similarity] = -np.inf
    cols, valid = top_n_per_row(scores, n)
    rows, place = np.nonzero(valid)
    chosen = cols[rows, place]
    return _neighbour_rows(ids, rows + start, chosen, scores[rows, chosen], place + 1)


def _collect_sparse(vectors: DataFrame):
    """(item ids ascending as int32, their vectors as a scipy CSR matrix, rows in that order)."""

    def to_arrays(rows):
        ids, lengths, indices, values, width = [], [], [], [], 0
        for r in rows:
            v = r[VECTOR]
            ids.append(r[ITEM_IDX])
            lengths.append(len(v.indices))
            indices.append(v.indices)
            values.append(v.values)
            width = v.size
        if ids:
            yield (
                np.asarray(ids, np.int32),
                np.asarray(lengths, np.int64),
                np.concatenate(indices).astype(np.int32),
                np.concatenate(values).astype(np.float64),
                width,
            )

    parts = vectors.select(ITEM_IDX, VECTOR).rdd.mapPartitions(to_arrays).collect()
    if not parts:
        return np.empty(0, np.int32), sp.csr_matrix((0, 0))
    ids = np.concatenate([p[0] for p in parts])
    lengths = np.concatenate([p[1] for p in parts])
    indptr = np.zeros(len(ids) + 1, np.int64)
    np.cumsum(lengths, out=indptr[1:])
    matrix = sp.csr_matrix(
        (np.concatenate([p[3] for p in parts]), np.concatenate([p[2] for p in parts]), indptr),
        shape=(len(ids), max(p[4] for p in parts)),
    )
    # IDF zeroes the terms rarer than min_doc_freq but keeps them as stored entries:
    # dropped here, or a catalogue of unique model numbers looks like one of 50k terms.
    matrix.eliminate_zeros()
    order = np.argsort(ids, kind="stable")
    return ids[order], matrix[order]


def exact_neighbours(vectors: DataFrame, min_similarity: float, n: int) -> DataFrame:
    """Each item's ``n`` most similar items by exact cosine, as a Spark term join: the
    reference the tests hold ``sparse_neighbours`` to (the pipeline uses that one).

    Vectors are unit length, so the cosine is a sum over shared terms; pairs
    sharing no term have cosine 0 and never qualify. Quadratic in the items
    that share a term: meant for small catalogues.

    Returns:
        Columns item_idx, neighbour_idx, similarity, rank.
    """
    terms = (
        vectors.select(ITEM_IDX, F.posexplode(vector_to_array(VECTOR)).alias("_term", "_w"))
        .filter(F.col("_w") != 0.0)
        .cache()
    )
    other = terms.select(F.col(ITEM_IDX).alias(NEIGHBOUR), "_term", F.col("_w").alias("_w2"))
    pairs = (
        terms.join(other, "_term", how="inner")
        .filter(F.col(ITEM_IDX) != F.col(NEIGHBOUR))
        .groupBy(ITEM_IDX, NEIGHBOUR)
        .agg(F.sum(F.col("_w") * F.col("_w2")).alias(SIMILARITY))
        .filter(F.col(SIMILARITY) >= min_similarity)
    )
    return top_k(pairs, n, col_user=ITEM_IDX, col_item=NEIGHBOUR, col_score=SIMILARITY)


def neighbour_recall(approximate: DataFrame, exact: DataFrame) -> float:
    """Share of the exact (item, neighbour) pairs that the approximate search found."""
    truth = exact.select(ITEM_IDX, NEIGHBOUR).distinct()
    total = truth.count()
    if not total:
        return 1.0
    found = truth.join(approximate.select(ITEM_IDX, NEIGHBOUR), [ITEM_IDX, NEIGHBOUR], how="inner").count()
    return found / total
