"""Fitting every model on a training frame, and their candidate lists for users.

The train stage fits on the whole training split; tuning fits the same way on
the part of it left after carving out a validation split. Both go through here.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import NamedTuple

from pyspark.ml.recommendation import ALSModel
from pyspark.sql import DataFrame, SparkSession

from amazon_recs.models import als as m_als
from amazon_recs.models import content as m_content
from amazon_recs.models import item_knn as m_item_knn
from amazon_recs.models import lists as rc
from amazon_recs.models import popular as m_popular
from amazon_recs.models.lists import COMPONENTS  # noqa: F401 (re-exported: the blended models)
from amazon_recs.schemas import ITEM_IDX, USER_IDX, WEIGHT

log = logging.getLogger(__name__)


class Content(NamedTuple):
    """What fit_content returns."""

    tfidf: object | None  # the TF-IDF PipelineModel, None without item text
    neighbours: DataFrame
    lsh_recall: float | None
    method: str | None  # the neighbour search used: "exact" or "lsh"; None without item text


@dataclass(frozen=True)
class ModelParams:
    """Every model's settings, built once from the configuration by the train stage."""

    als: m_als.AlsParams = field(default_factory=m_als.AlsParams)
    content: m_content.ContentParams = field(default_factory=m_content.ContentParams)
    item_knn: m_item_knn.ItemKnnParams = field(default_factory=m_item_knn.ItemKnnParams)
    popular: m_popular.PopularParams = field(default_factory=m_popular.PopularParams)


@dataclass
class Models:
    """The fitted models of one version."""

    als: ALSModel
    neighbours: DataFrame
    popularity: DataFrame
    tfidf: object | None = None  # the TF-IDF PipelineModel, None without item text
    lsh_recall: float | None = None  # share of exact neighbours LSH found (small catalogues)
    neighbour_method: str | None = None  # "exact" or "lsh"
    item_knn: DataFrame | None = None  # item-kNN's neighbours (None: no item-kNN list)


def fit_content(
    spark: SparkSession, items: DataFrame, params: m_content.ContentParams, check_recall: bool = True
) -> Content:
    """TF-IDF and item neighbours, by the exact search or LSH (``params.method``), and
    LSH's recall against the exact search on ``params.recall_sample`` sampled items.

    The recall is None for the exact search, with ``check_recall`` off, and (with
    no rows) when no item has text at all.
    """
    tokens = m_content.with_tokens(items, params.title_weight).cache()
    items_with_text = tokens.count()
    if not items_with_text:
        # Reviews without metadata: the content model has nothing to say, and
        # its lists are filled from popularity.
        log.warning("no item has text: the content model is empty")
        return Content(None, spark.createDataFrame([], m_content.NEIGHBOURS_SCHEMA), None, None)
    tfidf = m_content.fit_tfidf(tokens, params)
    vectors = tfidf.transform(tokens).select(ITEM_IDX, m_content.VECTOR).cache()
    collected = m_content.collect_vectors(vectors)
    if params.use_exact(items_with_text):
        neighbours = m_content.sparse_neighbours(
            vectors, params.min_similarity, params.neighbours, collected=collected
        ).cache()
        return Content(tfidf, neighbours, None, "exact")
    neighbours = m_content.lsh_neighbours(vectors, params, collected=collected).cache()
    recall = None
    if check_recall:
        recall = m_content.sampled_recall(vectors, neighbours, params, collected)
        if recall is not None:
            log.info(
                "LSH found %.1f%% of the exact neighbours of %d sampled items",
                100 * recall,
                params.recall_sample,
            )
    return Content(tfidf, neighbours, recall, "lsh")


def fit_models(
    spark: SparkSession,
    train: DataFrame,
    items: DataFrame,
    params: ModelParams,
    check_recall: bool = True,
    content: Content | None = None,
    als: ALSModel | None = None,
    item_knn: DataFrame | None = None,
    popularity: DataFrame | None = None,
) -> Models:
    """Every model on ``train``. The content model depends on the items alone, so a
    caller fitting several times (tuning, then the final fit) passes it in once;
    ``als``, ``item_knn`` and ``popularity``, when given, are already fitted on ``train`` with
    ``params`` (tuning's best grid points) and are used as they are."""
    tfidf, neighbours, recall, method = content or fit_content(spark, items, params.content, check_recall)
    return Models(
        als=als if als is not None else m_als.fit_als(train, params.als),
        neighbours=neighbours.cache(),
        popularity=(
            popularity
            if popularity is not None
            else m_popular.fit_popularity(train, params.popular.half_life_days)
        ).cache(),
        tfidf=tfidf,
        lsh_recall=recall,
        neighbour_method=method,
        item_knn=(
            item_knn if item_knn is not None else m_item_knn.fit_item_knn(train, params.item_knn)
        ).cache(),
    )


def candidates(models: Models, train: DataFrame, n: int, k: int) -> dict[str, DataFrame]:
    """Each model's ``n`` best unseen items per training user, in the common candidate shape.

    Seen items are excluded per user, so a user's cost is bounded by their own history.
    ALS rows in the top ``k`` carry the seen item that explains them best.
    """
    seen = train.select(USER_IDX, ITEM_IDX, WEIGHT)
    users = seen.select(USER_IDX).distinct()
    als_recs = m_als.recommend_als(models.als, users, seen, n)
    als_recs = als_recs.join(
        m_als.because_item(als_recs.filter(f"rank <= {k}"), seen, models.als.itemFactors),
        [USER_IDX, ITEM_IDX],
        how="left",
    )
    lists = {
        "als": rc.as_candidates(als_recs, "als").cache(),
        "content": rc.as_candidates(
            m_content.recommend_content(models.neighbours, seen, n), "content"
        ).cache(),
        "popular": rc.as_candidates(
            m_popular.recommend_popular(models.popularity, users, seen, n), "popular"
        ).cache(),
    }
    if models.item_knn is not None:
        knn = m_item_knn.recommend_item_knn(models.item_knn, seen, n)
        lists["item_knn"] = rc.as_candidates(knn, "item_knn").cache()
    return lists
