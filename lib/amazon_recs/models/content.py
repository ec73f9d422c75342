"""Content model: TF-IDF over product text, item neighbours by LSH, user-profile scoring."""

from __future__ import annotations

import math
from dataclasses import dataclass

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

from amazon_recs.models.topk import filter_seen, top_k
from amazon_recs.schemas import ITEM_IDX, SCORE, USER_IDX, WEIGHT

VECTOR = "tfidf"
NEIGHBOUR = "neighbour_idx"
SIMILARITY = "similarity"
NEIGHBOURS_SCHEMA = "item_idx int, neighbour_idx int, similarity double, rank int"


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


def exact_neighbours(vectors: DataFrame, min_similarity: float, n: int) -> DataFrame:
    """Each item's ``n`` most similar items by exact cosine, for checking LSH.

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
