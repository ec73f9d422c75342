"""Reading one user's list from whichever store the configuration names.

``store_from_config`` picks DynamoDB when ``export.dynamodb.enabled``, else the gold
tables; ``get_recommendations`` reads through it.
"""

from __future__ import annotations

import os
from functools import lru_cache

from amazon_recs.config import Config, load_config
from amazon_recs.models import MODELS
from amazon_recs.serving.dynamodb import ServingStore
from amazon_recs.serving.interface import Recommendations, RecommendationStore


@lru_cache(maxsize=1)
def _default_store() -> ServingStore:
    return ServingStore.from_config(load_config(os.environ.get("AMAZON_RECS_CONFIG", "conf/local-aws.yaml")))


def get_recommendations(
    user_id: str, model: str, store: RecommendationStore | None = None
) -> Recommendations:
    """One user's current top-k from ``model``; unknown users get popular products.

    Without ``store``, the one described by the config file named in
    ``AMAZON_RECS_CONFIG`` (default ``conf/local-aws.yaml``) is used.
    """
    if model not in MODELS:
        raise ValueError(f"unknown model {model!r}; one of {', '.join(MODELS)}")
    return (store or _default_store()).get_recommendations(user_id, model)


def store_from_config(config: Config) -> RecommendationStore:
    """DynamoDB when ``export.dynamodb.enabled``, else the gold tables under ``paths.warehouse``."""
    if config.require("export.dynamodb.enabled"):
        return ServingStore.from_config(config)
    from amazon_recs.serving.gold_tables import GoldTableStore  # deltalake is only needed here

    return GoldTableStore.from_config(config)
