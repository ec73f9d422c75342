"""The models' typed parameters, built once from the configuration by the stages.

Models never read the configuration themselves: a notebook or a test builds
these dataclasses directly, the way Spark ML estimators take their params.
"""

from __future__ import annotations

from amazon_recs.config import Config
from amazon_recs.features.split import SplitParams
from amazon_recs.models.als import AlsParams
from amazon_recs.models.content import ContentParams
from amazon_recs.models.item_knn import ItemKnnParams
from amazon_recs.models.popular import PopularParams
from amazon_recs.models.training import ModelParams
from amazon_recs.models.tuning import TuneParams


def split_params(config: Config) -> SplitParams:
    return SplitParams(
        test_fraction=config.require("split.test_fraction"),
        min_user_interactions=config.require("split.min_user_interactions"),
        protocol=config.require("split.protocol"),
        seed=config.require("split.seed"),
        cutoff=config.require("split.cutoff"),
    )


def als_params(config: Config) -> AlsParams:
    return AlsParams(
        rank=config.require("als.rank"),
        max_iter=config.require("als.max_iter"),
        reg_param=config.require("als.reg_param"),
        alpha=config.require("als.alpha"),
        checkpoint_interval=config.require("als.checkpoint_interval"),
        num_blocks=config.require("als.num_blocks"),
        seed=config.require("als.seed"),
        solver=config.require("als.solver"),
        local_max_ratings=config.require("als.local_max_ratings"),
        blocked_max_factors_mb=config.require("als.blocked_max_factors_mb"),
    )


def content_params(config: Config) -> ContentParams:
    return ContentParams(
        terms=config.require("content.terms"),
        vocabulary_size=config.require("content.vocabulary_size"),
        max_doc_share=config.require("content.max_doc_share"),
        num_features=config.require("content.num_features"),
        min_doc_freq=config.require("content.min_doc_freq"),
        min_similarity=config.require("content.min_similarity"),
        neighbours=config.require("content.neighbours"),
        lsh_similarity=config.require("content.lsh.similarity"),
        lsh_recall=config.require("content.lsh.recall"),
        lsh_window=config.require("content.lsh.window"),
        lsh_rounds=config.require("content.lsh.rounds"),
        recall_sample=config.require("content.lsh.recall_sample"),
        method=config.require("content.method"),
        exact_max_items=config.require("content.exact_max_items"),
        title_weight=config.require("content.title_weight"),
        seed=config.require("als.seed"),
    )


def item_knn_params(config: Config) -> ItemKnnParams:
    return ItemKnnParams(
        neighbours=config.require("item_knn.neighbours"),
        shrinkage=float(config.require("item_knn.shrinkage")),
        min_support=config.require("item_knn.min_support"),
        max_user_items=config.require("item_knn.max_user_items"),
    )


def model_params(config: Config) -> ModelParams:
    return ModelParams(
        als=als_params(config),
        content=content_params(config),
        item_knn=item_knn_params(config),
        popular=PopularParams(half_life_days=config.require("popular.half_life_days")),
    )


def tune_params(config: Config) -> TuneParams:
    return TuneParams(
        als_grid=config.require("tune.als_grid"),
        item_knn_grid=config.require("tune.item_knn_grid"),
        popular_half_life_days=tuple(float(v) for v in config.require("tune.popular_half_life_days")),
        weight_step=config.require("tune.weight_step"),
        k=config.require("evaluate.k"),
        candidates=config.require("recommend.candidates"),
        max_validation_users=config.require("tune.max_validation_users"),
        als_half_trust=tuple(float(v) for v in config.require("tune.als_half_trust")),
        cold_item_max_train=config.require("evaluate.cold_item_max_train"),
        split=split_params(config),
    )
