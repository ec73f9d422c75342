"""Content model: TF-IDF over product text, item neighbours (exact or LSH), user-profile scoring."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.sparse as sp
from pyspark.ml import Pipeline, PipelineModel
from pyspark.ml.feature import (
    IDF,
    CountVectorizer,
    HashingTF,
    Normalizer,
    RegexTokenizer,
    StopWordsRemover,
)
from pyspark.ml.functions import vector_to_array
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from amazon_recs.models import lsh as m_lsh
from amazon_recs.models.topk import BLOCK_FLOATS, best_per_row, filter_seen, top_k, top_n_per_row
from amazon_recs.schemas import ITEM_IDX, SCORE, USER_IDX, WEIGHT
from amazon_recs.spark import share, unshare

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

    # "vocabulary": a column per word (CountVectorizer), at most vocabulary_size of
    # the most frequent, none in more than max_doc_share of the items; "hashing":
    # HashingTF into num_features buckets, where unrelated words collide.
    terms: str = "vocabulary"
    vocabulary_size: int = 262_144
    max_doc_share: float = 0.5
    num_features: int = 8192
    min_doc_freq: int = 2
    min_similarity: float = 0.1
    neighbours: int = 30
    # LSH (models/lsh.py): pairs at lsh_similarity meet in some band with
    # probability lsh_recall; an item takes at most lsh_window candidates per band;
    # at most lsh_rounds refinement rounds through the neighbour graph.
    lsh_similarity: float = 0.8
    lsh_recall: float = 0.9
    lsh_window: int = 32
    lsh_rounds: int = 8
    # Query items whose exact neighbours measure LSH's recall (0: not measured).
    recall_sample: int = 1000
    seed: int = 42
    # "exact" (blocked sparse products), "lsh", or "auto": exact up to exact_max_items.
    method: str = "auto"
    exact_max_items: int = 20_000
    # How many times the title's and the category's words count in an item's text
    # (1: once, as every other word of it).
    title_weight: int = 1

    def use_exact(self, items_with_text: int) -> bool:
        if self.method not in METHODS:
            raise ValueError(f"content.method must be one of {', '.join(METHODS)}, not {self.method!r}")
        return self.method == "exact" or (self.method == "auto" and items_with_text <= self.exact_max_items)

    def lsh_plan(self, items: int) -> m_lsh.LshPlan:
        return m_lsh.plan(items, self.lsh_similarity, self.lsh_recall, self.lsh_window, self.lsh_rounds)


def with_tokens(items: DataFrame, title_weight: int = 1) -> DataFrame:
    """Items whose text yields at least one token; the rest have no content vector.

    Empty vectors carry no similarity and would only slow LSH down, so items
    without metadata (or with only stop words) are skipped here, cleanly. With
    ``title_weight`` w > 1, the title and category are repeated w - 1 more times,
    so their words count w times in the term frequencies.
    """
    tokenizer = RegexTokenizer(
        inputCol="text", outputCol="_raw_tokens", pattern=r"[^\p{L}\p{N}]+", minTokenLength=2
    )
    remover = StopWordsRemover(inputCol="_raw_tokens", outputCol="tokens")
    text = F.col("text")
    if title_weight > 1:
        extra = [F.col(c) for c in ("title", "category") if c in items.columns] * (title_weight - 1)
        text = F.concat_ws(" ", text, *extra)
    with_text = items.filter(F.col("text").isNotNull()).select(ITEM_IDX, text.alias("text"))
    tokens = remover.transform(tokenizer.transform(with_text))
    return tokens.filter(F.size("tokens") > 0).select(ITEM_IDX, "tokens")


TERMS = ("vocabulary", "hashing")


def fit_tfidf(tokens: DataFrame, params: ContentParams) -> PipelineModel:
    """Term counts (``params.terms``) -> IDF -> L2 normalisation, so that a dot product
    is a cosine.

    The vocabulary keeps a word in at least ``min_doc_freq`` items and at most
    ``max_doc_share`` of them: a word nearly every product has ("new", a shop's
    own name) says nothing about similarity and would make every pair a
    candidate of the exact search. Hashing keeps every word and relies on IDF.
    """
    if params.terms not in TERMS:
        raise ValueError(f"content.terms must be one of {', '.join(TERMS)}, not {params.terms!r}")
    if params.terms == "vocabulary":
        counts = CountVectorizer(
            inputCol="tokens",
            outputCol="_tf",
            vocabSize=params.vocabulary_size,
            minDF=float(params.min_doc_freq),
            # Spark reads a maxDF of 1 or more as a count of items, below 1 as a share.
            maxDF=params.max_doc_share if params.max_doc_share < 1 else float(2**62),
        )
    else:
        counts = HashingTF(inputCol="tokens", outputCol="_tf", numFeatures=params.num_features)
    return Pipeline(
        stages=[
            counts,
            IDF(inputCol="_tf", outputCol="_idf", minDocFreq=params.min_doc_freq),
            Normalizer(inputCol="_idf", outputCol=VECTOR, p=2.0),
        ]
    ).fit(tokens)


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
    queries: np.ndarray | None = None,
    collected: tuple | None = None,
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

    ``queries`` (positions in the item ids, ascending) limits the search to those
    items' neighbours, as the recall check does; ``collected`` is
    ``collect_vectors(vectors)`` when the caller has it already.

    Returns:
        Columns item_idx, neighbour_idx, similarity, rank.
    """
    spark = vectors.sparkSession
    ids, matrix = collected if collected is not None else collect_vectors(vectors)
    queries = np.arange(len(ids)) if queries is None else np.asarray(queries, np.int64)
    if not len(ids) or not len(queries) or n <= 0:
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
        shared = share(spark, (ids, queries, columns, rest, None if rest is None else rest.T.tocsr()))
    else:
        rows_per_block = block_rows
        shared = share(spark, (ids, queries, matrix, matrix.T.tocsr()))

    def search(batches):
        ids, queries, *parts = shared.value
        for batch in batches:
            for start in batch["id"].to_numpy():
                block = queries[int(start) : int(start) + rows_per_block]
                if len(heavy):
                    yield _top_dense(ids, *parts, block, min_similarity, n)
                else:
                    yield _top_sparse(ids, *parts, block, min_similarity, n)

    blocks = _blocks(spark, len(queries), rows_per_block)
    return blocks.mapInPandas(search, NEIGHBOURS_SCHEMA)


# Items per LSH task block (each emits at most this many times ``neighbours`` rows).
LSH_BLOCK_ROWS = 4096
# Refinement stops (after one more round, whose rows are the result) once a round
# brings fewer than this share of new neighbour entries.
LSH_SETTLED = 0.01


def lsh_neighbours(vectors: DataFrame, params: ContentParams, collected: tuple | None = None) -> DataFrame:
    """Each item's ``params.neighbours`` most similar items, found by SimHash LSH with
    capped bands and graph refinement (``models/lsh.py`` explains the method).

    The item x term matrix is collected and broadcast as for the exact search;
    the signatures, each band's candidates and each refinement round are Spark
    jobs over blocks of items. Between rounds only the neighbour lists (items x
    ``neighbours`` ints) come back to the driver and go out again.

    Returns:
        Columns item_idx, neighbour_idx, similarity, rank.
    """
    spark = vectors.sparkSession
    ids, matrix = collected if collected is not None else collect_vectors(vectors)
    n = params.neighbours
    if not len(ids) or n <= 0:
        return spark.createDataFrame([], NEIGHBOURS_SCHEMA)
    matrix.sort_indices()
    csr = (matrix.indptr.astype(np.int64), matrix.indices.astype(np.int32), matrix.data.astype(np.float64))
    width = matrix.shape[1]
    plan = params.lsh_plan(len(ids))
    log.info(
        "LSH over %d items: %d bands of %d bits, at most %d candidates per band, %d refinement rounds;"
        " P(meet) at cosine 0.3/0.5/0.8: %.2f/%.2f/%.2f",
        len(ids),
        plan.bands,
        plan.bits,
        plan.window,
        plan.rounds,
        *(plan.s_curve(c) for c in (0.3, 0.5, 0.8)),
    )
    shared = share(spark, (ids, csr))
    blocks = _blocks(spark, len(ids), LSH_BLOCK_ROWS)

    def sign(batches):
        _, (indptr, indices, data) = shared.value
        for batch in batches:
            for start in batch["id"].to_numpy():
                stop = min(int(start) + LSH_BLOCK_ROWS, len(indptr) - 1)
                sig = m_lsh.signatures(indptr, indices, data, int(start), stop, plan.words, params.seed)
                yield pd.DataFrame({"start": [int(start)], "sig": [sig.tobytes()]})

    parts = sorted(blocks.mapInPandas(sign, "start long, sig binary").collect())
    sig = np.frombuffer(b"".join(bytes(p.sig) for p in parts), np.uint64).reshape(len(ids), plan.words)
    tables = share(spark, m_lsh.band_tables(sig, plan))

    def by_bands(queries):
        _, (indptr, indices, data) = shared.value
        return m_lsh.band_neighbours(
            queries, *tables.value, plan.window, indptr, indices, data, width, n, params.min_similarity
        )

    if plan.rounds == 0:
        return _run_blocks(blocks, shared, by_bands, True, n)
    lists, counts = _run_blocks(blocks, shared, by_bands, False, n)
    unshare(tables)
    fresh = lists >= 0
    for round_ in range(1, plan.rounds + 1):
        final = round_ == plan.rounds or fresh.sum() < LSH_SETTLED * max(1, counts.sum())
        graph = (lists, counts, fresh, *m_lsh.reverse_lists(lists, counts, n))
        state = share(spark, graph)

        def by_graph(queries, state=state):
            _, (indptr, indices, data) = shared.value
            return m_lsh.graph_neighbours(
                queries, state.value, indptr, indices, data, width, n, params.min_similarity
            )

        if final:  # the rows come from this last round, when the caller reads them
            log.info("LSH: refinement round %d is the last", round_)
            return _run_blocks(blocks, shared, by_graph, True, n)
        after, counts = _run_blocks(blocks, shared, by_graph, False, n)
        unshare(state)
        fresh = m_lsh.fresh_entries(lists, after, counts)
        lists = after
        log.info(
            "LSH: refinement round %d: %.1f%% of the neighbour entries are new", round_, 100 * fresh.mean()
        )
    raise AssertionError("unreachable: the last round returns")


def _blocks(spark, rows: int, rows_per_block: int) -> DataFrame:
    """The first row of each block of ``rows_per_block``, as column ``id``: four tasks
    per core, or one per block when there are fewer blocks."""
    count = -(-rows // rows_per_block)
    tasks = max(1, min(count, spark.sparkContext.defaultParallelism * 4))
    return spark.range(0, rows, rows_per_block, numPartitions=tasks)


def _run_blocks(blocks: DataFrame, shared, kernel, final: bool, n: int):
    """Run ``kernel`` over the item blocks: the neighbour rows as a DataFrame when
    ``final``, else collected as (items x n positions, -1 padded; counts per item)."""

    def run(batches):
        ids, _ = shared.value
        for batch in batches:
            for start in batch["id"].to_numpy():
                queries = np.arange(int(start), min(int(start) + LSH_BLOCK_ROWS, len(ids)))
                rows, cols, sims, ranks = kernel(queries)
                if final:
                    yield _neighbour_rows(ids, rows, cols, sims, ranks)
                else:
                    packed = {"rows": rows, "cols": cols, "ranks": ranks}
                    yield pd.DataFrame({k: [v.astype(np.int32).tobytes()] for k, v in packed.items()})

    if final:
        return blocks.mapInPandas(run, NEIGHBOURS_SCHEMA)
    parts = blocks.mapInPandas(run, "rows binary, cols binary, ranks binary").collect()
    rows, cols, ranks = (
        np.concatenate([np.frombuffer(bytes(part[k]), np.int32) for part in parts] or [np.empty(0, np.int32)])
        for k in ("rows", "cols", "ranks")
    )
    items = len(shared.value[0])
    lists = np.full((items, n), -1, np.int32)
    lists[rows, ranks - 1] = cols
    return lists, np.bincount(rows, minlength=items).astype(np.int32)


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


def _top_sparse(ids, x, xt, queries: np.ndarray, min_similarity: float, n: int) -> pd.DataFrame:
    block = (x[queries] @ xt).tocoo()
    rows, cols, sims = queries[block.row], block.col.astype(np.int64), block.data
    keep = (rows != cols) & (sims >= min_similarity)
    rows, cols, sims = rows[keep], cols[keep], sims[keep]
    index, rank = best_per_row(rows, sims, n, cols)
    return _neighbour_rows(ids, rows[index], cols[index], sims[index], rank)


def _top_dense(ids, dense, rest, rest_t, queries: np.ndarray, min_similarity: float, n: int):
    """A block's cosines as the dense product of the common terms plus the sparse one of the rest."""
    scores = dense[queries] @ dense.T
    if rest is not None:
        scores += (rest[queries] @ rest_t).toarray()
    scores[np.arange(len(queries)), queries] = -np.inf
    scores[scores < min_similarity] = -np.inf
    cols, valid = top_n_per_row(scores, n)
    rows, place = np.nonzero(valid)
    chosen = cols[rows, place]
    return _neighbour_rows(ids, queries[rows], chosen, scores[rows, chosen], place + 1)


def collect_vectors(vectors: DataFrame):
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


def sampled_recall(
    vectors: DataFrame, approximate: DataFrame, params: ContentParams, collected: tuple
) -> float | None:
    """LSH's recall@neighbours: the share of the exact top-``neighbours`` of
    ``params.recall_sample`` items (a seeded sample) that ``approximate`` found.
    None when the sample is empty or no sampled item has an exact neighbour."""
    ids, _ = collected
    size = min(params.recall_sample, len(ids))
    if size <= 0:
        return None
    sample = np.sort(np.random.default_rng(params.seed).choice(len(ids), size, replace=False))
    exact = sparse_neighbours(
        vectors, params.min_similarity, params.neighbours, queries=sample, collected=collected
    ).cache()
    if exact.isEmpty():
        return None
    found = approximate.filter(F.col(ITEM_IDX).isin(ids[sample].tolist()))
    return neighbour_recall(found, exact)


def neighbour_recall(approximate: DataFrame, exact: DataFrame, tolerance: float = 1e-9) -> float:
    """Share of the exact top-n neighbours that the approximate search matched.

    Per item, an approximate neighbour matches when its (exact) cosine reaches
    the item's n-th exact one: among equally similar items the exact search
    keeps the lowest ids and LSH whichever it met, and both lists are as good.
    An item's matches count up to its number of exact neighbours.
    """
    per_item = exact.groupBy(ITEM_IDX).agg(F.count(F.lit(1)).alias("_n"), F.min(SIMILARITY).alias("_floor"))
    total = per_item.agg(F.sum("_n")).first()[0]
    if not total:
        return 1.0
    matched = (
        approximate.select(ITEM_IDX, SIMILARITY)
        .join(per_item, ITEM_IDX, how="inner")
        .filter(F.col(SIMILARITY) >= F.col("_floor") - tolerance)
        .groupBy(ITEM_IDX, "_n")
        .agg(F.count(F.lit(1)).alias("_m"))
        .agg(F.sum(F.least("_m", "_n")))
        .first()[0]
    )
    return (matched or 0) / total
