"""The train stage: fit every model on the training split (tuned on validation when
``tune.enabled``) and save them as one version; ``models/CURRENT`` moves last."""

from __future__ import annotations

import dataclasses
import json

from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from amazon_recs import io
from amazon_recs.config import Config
from amazon_recs.features.split import TRAIN
from amazon_recs.models import training
from amazon_recs.models import tuning as tuning_mod
from amazon_recs.pipeline import params as p
from amazon_recs.pipeline.base import stage
from amazon_recs.pipeline.versions import model_dir, model_version, pointer_path
from amazon_recs.schemas import SPLIT


@stage
def run_train(spark: SparkSession, config: Config) -> dict:
    interactions = io.read_table(spark, config, "silver/interactions")
    items = io.read_table(spark, config, "silver/items")
    train = interactions.filter(F.col(SPLIT) == TRAIN).cache()
    version = model_version(config, train)
    out = model_dir(config, version)
    params = p.model_params(config)

    content = training.fit_content(spark, items, params.content)  # the items alone: fitted once
    tuning = None
    if config.require("tune.enabled"):
        tuning = tuning_mod.tune(spark, train, items, params, p.tune_params(config), content)
        params = dataclasses.replace(params, als=dataclasses.replace(params.als, **tuning["als"]))
        io.write_text(spark, f"{out}/tuning.json", json.dumps(tuning, indent=2, sort_keys=True))
    models = training.fit_models(spark, train, items, params, content=content)
    models.als.write().overwrite().save(f"{out}/als")
    if models.tfidf is not None:
        models.tfidf.write().overwrite().save(f"{out}/tfidf")
    models.neighbours.write.format("delta").mode("overwrite").save(f"{out}/item_neighbours")
    models.popularity.write.format("delta").mode("overwrite").save(f"{out}/popularity")
    io.write_text(spark, f"{out}/model_info.json", json.dumps({"lsh_recall": models.lsh_recall}))

    # The pointer moves last: readers see the old version or the whole new one.
    io.write_text(spark, pointer_path(config), version)
    return {"model_version": version, "model_dir": out, "tuning": tuning, "lsh_recall": models.lsh_recall}
