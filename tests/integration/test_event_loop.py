"""The event loop against the local S3 and DynamoDB servers: publish a version, post
activity through the Lambda handler, ``refresh``, then the next full run.

1. A known user buys the first product of their hybrid list and rates another
   product 5; a brand-new user buys two products and views a third; one purchase
   is delivered twice.
2. ``refresh`` re-scores only those two users under the published version: the
   known user's lists lose both products and their ALS list moves toward the rated
   one; the new user gets personal lists, not the popular fallback.
3. The next full run ingests the events exactly once (a second ingest adds
   nothing), the new user and their products are in the interactions, and a
   refresh after it has nothing left to do.
"""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
from pyspark.ml.recommendation import ALSModel
from pyspark.sql import functions as F

from amazon_recs import cli, io
from amazon_recs.errors import StageOrderError
from amazon_recs.pipeline import versions
from amazon_recs.pipeline.registry import STAGE_ORDER, stage_function
from amazon_recs.serving import api, dynamodb
from amazon_recs.serving.gold_tables import GoldTableStore
from amazon_recs.serving.validation import SERVED_MODELS
from tests.conftest import ROOT
from tests.integration.test_aws import FAST, aws_config, first_run  # noqa: F401 (fixtures)

pytestmark = pytest.mark.integration

NEW_USER = "NEWUSER0001"
T0 = int(time.time() * 1000) - 3_600_000  # an hour ago: after every review of the training data


def post(payload: dict) -> dict:
    response = api.activity_handler({"path": "/events", "httpMethod": "POST", "body": json.dumps(payload)})
    assert response["statusCode"] == 200, response["body"]
    return json.loads(response["body"])


def lists(config, user: str) -> dict[str, tuple[bool, list[str]]]:
    """model -> (served as fallback, item ids) as the API's store answers."""
    store = dynamodb.ServingStore.from_config(config)
    out = {}
    for model in SERVED_MODELS:
        recs = store.get_recommendations(user, model)
        out[model] = (recs.fallback, [i["item_id"] for i in recs.items])
    return out


def item_factors(spark, config) -> dict[str, np.ndarray]:
    version = versions.current_version(spark, config)
    als = ALSModel.load(f"{versions.model_dir(config, version)}/als")
    ids = {r["item_idx"]: r["item_id"] for r in io.read_table(spark, config, "silver/item_ids").collect()}
    return {ids[r.id]: np.asarray(r.features, np.float64) for r in als.itemFactors.collect()}


def closeness(factors: dict[str, np.ndarray], items: list[str], target: str) -> float:
    """Mean cosine of ``items``' ALS factors with ``target``'s."""
    t = factors[target] / np.linalg.norm(factors[target])
    return float(np.mean([factors[i] @ t / np.linalg.norm(factors[i]) for i in items]))


@pytest.fixture(scope="module")
def loop(spark, aws_config, first_run, local_aws, monkeypatch_module):  # noqa: F811
    config = aws_config
    session = spark.builder.getOrCreate()
    for name, value in {
        "AMAZON_RECS_TABLE": config.require("export.dynamodb.table"),
        "AMAZON_RECS_BUCKET": config.require("aws.bucket"),
        "AMAZON_RECS_DYNAMODB_ENDPOINT": local_aws["dynamodb"],
        "AMAZON_RECS_S3_ENDPOINT": local_aws["s3"],
        "AWS_REGION": config.require("aws.region"),
    }.items():
        monkeypatch_module.setenv(name, value)
    monkeypatch_module.delenv("AMAZON_RECS_CONFIG", raising=False)

    train = io.read_table(session, config, "silver/interactions").filter("split = 'train'")
    seen = {}
    for r in train.select("user_id", "item_id").collect():
        seen.setdefault(r["user_id"], set()).add(r["item_id"])
    user = sorted(u for u, items in seen.items() if len(items) >= 3)[0]
    before = lists(config, user)
    factors = item_factors(session, config)
    bought = before["hybrid"][1][0]
    rated = sorted(i for i in factors if i not in seen[user] and i not in before["als"][1])[0]
    products = sorted(factors)[:3]

    post({"event_id": "buy-1", "event_type": "purchase", "user_id": user, "item_id": bought, "timestamp": T0})
    # Delivered again without its timestamp: another object in the bucket, the same event.
    post({"event_id": "buy-1", "event_type": "purchase", "user_id": user, "item_id": bought})
    post(
        {
            "event_id": "rate-1",
            "event_type": "rating",
            "user_id": user,
            "item_id": rated,
            "rating": 5,
            "timestamp": T0 + 1,
        }
    )
    for n, (kind, item) in enumerate(zip(("purchase", "purchase", "view"), products, strict=True)):
        post(
            {
                "event_id": f"new-{n}",
                "event_type": kind,
                "user_id": NEW_USER,
                "item_id": item,
                "timestamp": T0 + 10 + n,
            }
        )
    assert lists(config, NEW_USER)["hybrid"][0]  # before refresh: the popular fallback

    summary = stage_function("refresh")(session, config)
    return {
        "config": config,
        "spark": session,
        "user": user,
        "bought": bought,
        "rated": rated,
        "products": products,
        "before": before,
        "factors": factors,
        "summary": summary,
        "after": {u: lists(config, u) for u in (user, NEW_USER)},
    }


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as patch:
        yield patch


def test_refresh_takes_the_new_events_of_the_users_who_acted(loop):
    s = loop["summary"]
    assert (s["event_files"], s["event_files_read"]) == (6, 6)  # the version was trained before any
    assert (s["events_read"], s["events_new"], s["events_duplicate"], s["events_rejected"]) == (6, 5, 1, 0)
    assert (s["users"], s["new_users"]) == (2, 1)
    assert s["dynamodb_lists"] == 2 * len(SERVED_MODELS)
    log = io.read_table(loop["spark"], loop["config"], "gold/refresh_log").collect()
    assert [r["refresh_id"] for r in log] == [s["refresh_id"]]


def test_the_known_users_lists_drop_what_they_bought_and_rated_and_move_toward_it(loop):
    after = loop["after"][loop["user"]]
    for model, (fallback, items) in after.items():
        assert not fallback and len(items) == 10, model
        assert loop["bought"] not in items and loop["rated"] not in items, model
    before_als, after_als = loop["before"]["als"][1], after["als"][1]
    assert after_als != before_als
    factors, rated = loop["factors"], loop["rated"]
    assert closeness(factors, after_als, rated) > closeness(factors, before_als, rated)


def test_a_new_user_gets_personal_lists_from_their_first_events(loop):
    new = loop["after"][NEW_USER]
    for model, (fallback, items) in new.items():
        assert not fallback and len(items) == 10, model
        assert not set(items) & set(loop["products"]), model
    popular = dynamodb.ServingStore.from_config(loop["config"]).get_recommendations("nobody-at-all", "hybrid")
    assert new["als"][1] != [i["item_id"] for i in popular.items]


def test_readers_of_the_gold_tables_get_the_refreshed_lists_too(loop):
    store = GoldTableStore.from_config(loop["config"])
    for user in (NEW_USER, loop["user"]):
        for model in SERVED_MODELS:
            recs = store.get_recommendations(user, model)
            assert not recs.fallback and recs.model_version == loop["summary"]["model_version"]
            assert [i["item_id"] for i in recs.items] == loop["after"][user][model][1], (user, model)
    # Only the refreshed lists are written: the serving table is left as the export wrote it.
    served = io.read_table(loop["spark"], loop["config"], "gold/user_recommendations")
    assert served.filter(F.col("user_id") == NEW_USER).count() == 0
    refreshed = io.read_table(loop["spark"], loop["config"], "gold/refreshed_recommendations")
    assert sorted(r["user_id"] for r in refreshed.select("user_id").distinct().collect()) == sorted(
        [NEW_USER, loop["user"]]
    )


def _refreshed_lists(spark, config, version: str) -> dict:
    rows = io.read_table(spark, config, "gold/refreshed_recommendations")
    rows = rows.filter(F.col("model_version") == version).collect()
    return {(r["user_id"], r["model"]): [i.asDict() for i in r["items"]] for r in rows}


def test_without_the_saved_catalogue_refresh_collects_the_same_from_the_models(loop):
    """refresh maps the catalogue the recommend stage saved beside the version (on the
    local S3 server here); a version without one is collected from its model parts,
    and the lists are the same."""
    spark, config, first = loop["spark"], loop["config"], loop["summary"]
    version = first["model_version"]
    assert first["catalogue"] == "saved"
    before = _refreshed_lists(spark, config, version)
    assert {user for user, _ in before} == {NEW_USER, loop["user"]}
    jvm = spark.sparkContext._jvm
    saved = jvm.org.apache.hadoop.fs.Path(versions.catalogue_path(config, version))
    fs = saved.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration())
    hidden = jvm.org.apache.hadoop.fs.Path(f"{saved.toString()}.hidden")
    assert fs.rename(saved, hidden)
    try:
        again = stage_function("refresh")(spark, config)
    finally:
        assert fs.rename(hidden, saved)
    assert again["catalogue"] == "collected"
    assert (again["users"], again["new_users"], again["lists"]) == (
        first["users"],
        first["new_users"],
        first["lists"],
    )
    after = _refreshed_lists(spark, config, version)
    assert after.keys() == before.keys()
    for key, items in before.items():
        assert [i["item_id"] for i in after[key]] == [i["item_id"] for i in items], key
        assert [i["score"] for i in after[key]] == pytest.approx([i["score"] for i in items], abs=1e-9), key


def test_the_next_run_ingests_the_events_exactly_once_and_leaves_nothing_to_refresh(loop):
    spark, config = loop["spark"], loop["config"]
    stage_function("ingest")(spark, config)
    stage_function("ingest")(spark, config)  # a re-run adds nothing
    events = io.read_table(spark, config, "bronze/events")
    assert events.count() == 5 and events.select("event_id").distinct().count() == 5
    stage_function("features")(spark, config)
    interactions = io.read_table(spark, config, "silver/interactions")
    new_pairs = interactions.filter(F.col("user_id") == NEW_USER).collect()
    assert sorted(r["item_id"] for r in new_pairs) == loop["products"]
    weight = {r["item_id"]: r["weight"] for r in new_pairs}
    assert weight[loop["products"][0]] == 4.0 and weight[loop["products"][2]] == 1.0
    mine = interactions.filter(
        (F.col("user_id") == loop["user"]) & F.col("item_id").isin(loop["bought"], loop["rated"])
    ).collect()
    assert len(mine) == 2 and {r["item_id"]: r["weight"] for r in mine}[loop["rated"]] == 5.0

    stage_function("train")(spark, config)
    with pytest.raises(StageOrderError, match="run the export stage before refresh"):
        stage_function("refresh")(spark, config)
    for stage in STAGE_ORDER[3:]:
        stage_function(stage)(spark, config)
    again = stage_function("refresh")(spark, config)
    # The new version's features run saw every event file: none is opened again.
    assert (again["event_files"], again["event_files_read"], again["events_read"]) == (6, 0, 0)
    assert again["events_new"] == 0 and again["users"] == 0
    # The new version has no refreshed lists; the old one's stay in its own partition,
    # for its readers, until export.keep_versions publishes later.
    refreshed = io.read_table(spark, config, "gold/refreshed_recommendations")
    new_version = again["model_version"]
    assert new_version != loop["summary"]["model_version"]
    assert refreshed.filter(F.col("model_version") == new_version).count() == 0
    assert {r[0] for r in refreshed.select("model_version").distinct().collect()} == {
        loop["summary"]["model_version"]
    }
    store = GoldTableStore.from_config(config)
    assert store.current_version()["model_version"] == new_version
    assert not store.get_recommendations(loop["user"], "hybrid").fallback

    # One more event: refresh opens its file alone and re-scores its user alone.
    post({"event_id": "view-9", "event_type": "view", "user_id": NEW_USER, "item_id": loop["bought"]})
    third = stage_function("refresh")(spark, config)
    assert (third["event_files"], third["event_files_read"], third["events_new"]) == (7, 1, 1)
    assert (third["users"], third["new_users"]) == (1, 0)  # no longer new: the last run gave them an id
    log = io.read_table(spark, config, "gold/refresh_log").orderBy("refreshed_at").collect()
    assert [r["event_files_read"] for r in log] == [6, 6, 0, 1]  # the second: without the saved catalogue


def test_refresh_in_rounds_refreshes_once_a_round_in_this_session(loop):
    """``jobs/refresh.py --every 0 --rounds 2`` (after the test above: one event since the
    version): each round is a whole refresh that takes the warehouse's lease and gives it
    back (the second round would otherwise be refused and skipped), and logs its row."""
    spark, config = loop["spark"], loop["config"]

    def log_rows() -> list:
        return io.read_table(spark, config, "gold/refresh_log").orderBy("refreshed_at").collect()

    before = len(log_rows())
    same_config = [
        f"{key}={config.require(key)}"
        for key in (
            "aws.bucket",
            "aws.s3_endpoint",
            "aws.dynamodb_endpoint",
            "export.dynamodb.table",
            "spark.checkpoint_dir",
        )
    ]
    args = ["--config", str(ROOT / "conf" / "local-aws.yaml")]
    for setting in [*same_config, *FAST]:
        args += ["--set", setting]
    assert cli.refresh_main([*args, "--every", "0", "--rounds", "2"]) == 0
    rounds = log_rows()[before:]
    assert len(rounds) == 2
    version = versions.current_version(spark, config)
    for r in rounds:
        assert (r["model_version"], r["event_files_read"], r["events_new"], r["users"]) == (version, 1, 1, 1)
    assert rounds[0]["refresh_id"] != rounds[1]["refresh_id"]
