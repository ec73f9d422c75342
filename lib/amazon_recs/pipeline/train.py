"""The train stage: fit every model on the training split (tuned on validation when
``tune.enabled``) and save them as one version; ``models/CURRENT`` moves last."""

from __future__ import annotations

import dataclasses
import json
import time

from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from amazon_recs import failpoints, io
from amazon_recs.config import Config
from amazon_recs.errors import ConfigError
from amazon_recs.features.split import TRAIN
from amazon_recs.models import als as m_als
from amazon_recs.models import item_knn as m_item_knn
from amazon_recs.models import training
from amazon_recs.models import tuning as tuning_mod
from amazon_recs.pipeline import params as p
from amazon_recs.pipeline import versions
from amazon_recs.pipeline.base import progress, stage
from amazon_recs.schemas import SPLIT


@stage
def run_train(spark: SparkSession, config: Config) -> dict:
    inputs = versions.input_versions(spark, config)  # read at these commits here and in every later stage
    interactions = io.read_table(spark, config, "silver/interactions", inputs["silver/interactions"])
    items = io.read_table(spark, config, "silver/items", inputs["silver/items"])
    train = interactions.filter(F.col(SPLIT) == TRAIN).cache()
    version = versions.model_version(config, train, items)
    if versions.is_complete(spark, config, version):
        if config.require("run.model_version") != "auto":  # a name, not a fingerprint: say so
            raise ConfigError(
                f"model version {version} (run.model_version) is saved already and versions are "
                f"immutable: choose another name, or 'auto' to name versions by their inputs"
            )
        return _reuse(spark, config, version)
    versions.clear_staging(config)
    out = versions.staging_dir(config, version)  # invisible until complete()
    params = p.model_params(config)

    progress("fitting the content model (TF-IDF, item neighbours)")
    started = time.perf_counter()
    content = training.fit_content(spark, items, params.content)  # the items alone: fitted once
    neighbours = content.neighbours.count()
    progress(
        f"content model: {neighbours:,} neighbour pairs ({content.method or 'no text'}) "
        f"in {time.perf_counter() - started:.1f}s"
    )
    tuning = None
    if config.require("tune.enabled"):
        progress("tuning ALS, item-kNN, popularity's half-life and the hybrid's weights on validation")
        tuning = tuning_mod.tune(spark, train, items, params, p.tune_params(config), content)
        params = dataclasses.replace(
            params,
            als=dataclasses.replace(params.als, **tuning["als"]),
            item_knn=dataclasses.replace(params.item_knn, **tuning["item_knn"]),
            popular=dataclasses.replace(params.popular, **tuning["popular"]),
        )
        io.write_text(spark, f"{out}/tuning.json", json.dumps(tuning, indent=2, sort_keys=True))
    knn = params.item_knn
    progress(f"fitting item-kNN ({knn.neighbours} neighbours, shrinkage {knn.shrinkage:g})")
    started = time.perf_counter()
    item_knn = m_item_knn.fit_item_knn(train, knn).cache()
    knn_pairs = item_knn.count()
    knn_seconds = round(time.perf_counter() - started, 2)
    progress(f"item-kNN: {knn_pairs:,} neighbour pairs in {knn_seconds:.1f}s")
    # Resolved once here: fit_als would otherwise count the ratings again for "auto".
    solver = m_als.choose_solver(train, params.als)
    params = dataclasses.replace(params, als=dataclasses.replace(params.als, solver=solver))
    progress(
        f"fitting ALS ({solver} solver, rank {params.als.rank}, {params.als.max_iter} iterations) "
        "on the training split"
    )
    started = time.perf_counter()
    models = training.fit_models(spark, train, items, params, content=content, item_knn=item_knn)
    fit_seconds = round(time.perf_counter() - started, 2)
    progress(f"fitted ALS in {fit_seconds:.1f}s; saving version {version}")
    models.als.write().overwrite().save(f"{out}/als")
    if models.tfidf is not None:
        models.tfidf.write().overwrite().save(f"{out}/tfidf")
    failpoints.reached("train.model_half_saved")
    models.neighbours.write.format("delta").mode("overwrite").save(f"{out}/item_neighbours")
    models.item_knn.write.format("delta").mode("overwrite").save(f"{out}/{versions.ITEM_KNN_NEIGHBOURS}")
    models.popularity.write.format("delta").mode("overwrite").save(f"{out}/popularity")
    info = {
        "lsh_recall": models.lsh_recall,
        "neighbour_method": models.neighbour_method,
        "als_fit_seconds": fit_seconds,
        "als_solver": solver,
        "item_knn_params": dataclasses.asdict(knn),
        "popular_params": dataclasses.asdict(params.popular),
        "item_knn_pairs": knn_pairs,
        "item_knn_fit_seconds": knn_seconds,
        # What refresh folds new users in with: the same confidence and regularisation.
        "als_params": {"rank": params.als.rank, "reg_param": params.als.reg_param, "alpha": params.als.alpha},
        "inputs": inputs,
    }
    io.write_text(spark, f"{out}/model_info.json", json.dumps(info))
    versions.complete(spark, config, version, out)
    return _make_current(spark, config, version, info, tuning, reused=False)


def _reuse(spark: SparkSession, config: Config, version: str) -> dict:
    """The version these settings, inputs and code give is saved whole already: it is
    made current as it is (versions are immutable), without fitting anything."""
    progress(
        f"version {version} is saved already (same settings, training data and code): reused, not refitted"
    )
    info, tuning = versions.model_info(spark, config, version), versions.tuning(spark, config, version)
    return _make_current(spark, config, version, info, tuning, reused=True)


def _make_current(
    spark: SparkSession, config: Config, version: str, info: dict, tuning: dict | None, reused: bool
) -> dict:
    """Move ``models/CURRENT`` to the complete ``version`` (last: readers see the old
    version or the whole new one) and summarise it from its ``model_info``."""
    io.write_text(spark, versions.pointer_path(config), version)
    return {
        "model_version": version,
        "model_dir": versions.model_dir(config, version),
        "reused": reused,
        "tuning": tuning,
        **{
            key: info.get(key)
            for key in (
                "lsh_recall",
                "neighbour_method",
                "als_fit_seconds",
                "item_knn_pairs",
                "item_knn_fit_seconds",
            )
        },
    }
