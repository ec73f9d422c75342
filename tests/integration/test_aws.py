"""The pipeline on s3:// against the local S3 and DynamoDB servers, as on AWS.

The servers are started by ``bootstrap/local/services.sh`` (the ``local_aws``
fixture) on ports and a folder of the test session's own. amazon-2018/gift_cards is
uploaded to the bucket and the whole pipeline runs with conf/local-aws.yaml:

1. an independent Delta reader (deltalake, no Spark) reads from the bucket
   exactly the gold rows Spark wrote;
2. DynamoDB holds, for every user and model, the gold table's ten products in order;
3. a second run publishing a new model version switches over atomically, while a
   reader polls;
4. with throttling injected into every executor's client, no list is lost.
"""

from __future__ import annotations

import random
import sys
import threading
import time
import uuid
from collections import defaultdict

import boto3
import pytest
from botocore.exceptions import ClientError
from deltalake import DeltaTable
from pyspark import cloudpickle
from pyspark.sql import functions as F

from amazon_recs import io
from amazon_recs.aws import athena
from amazon_recs.config import load_config
from amazon_recs.pipeline import versions
from amazon_recs.pipeline.export import publish
from amazon_recs.pipeline.registry import STAGE_ORDER, stage_function
from amazon_recs.serving import dynamodb, stores
from amazon_recs.serving.validation import SERVED_MODELS
from amazon_recs.spark import get_spark
from tests.conftest import LOCAL_AWS_ENV, ROOT, shared_data

pytestmark = pytest.mark.integration

GIFT_CARDS = ("Gift_Cards_5.json.gz", "meta_Gift_Cards.json.gz")
K = 10
# The plumbing is under test here, not model quality: small, untuned models.
FAST = [
    "spark.shuffle_partitions=2",
    "als.rank=8",
    "als.max_iter=5",
    "content.num_features=1024",
    "recommend.candidates=30",
    "tune.enabled=false",
]

# The throttling client below is shipped to the executors by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])


@pytest.fixture(scope="module")
def aws_config(local_aws, tmp_path_factory):
    folder = shared_data("amazon-2018", "gift_cards")
    run = uuid.uuid4().hex[:8]
    bucket, table = f"recs-test-{run}", f"recs-test-{run}"
    config = load_config(
        ROOT / "conf" / "local-aws.yaml",
        [
            f"aws.bucket={bucket}",
            f"aws.s3_endpoint={local_aws['s3']}",
            f"aws.dynamodb_endpoint={local_aws['dynamodb']}",
            f"export.dynamodb.table={table}",
            f"spark.checkpoint_dir={tmp_path_factory.mktemp('checkpoints')}",
            *FAST,
        ],
    )
    s3 = boto3.client("s3", endpoint_url=local_aws["s3"], region_name=LOCAL_AWS_ENV["AWS_DEFAULT_REGION"])
    s3.create_bucket(Bucket=bucket)
    for name in GIFT_CARDS:
        s3.upload_file(str(folder / name), bucket, f"raw/amazon-2018/gift_cards/{name}")
    return config


@pytest.fixture(scope="module")
def first_run(spark, aws_config):
    session = get_spark(aws_config)  # the test session, now with S3A pointed at the local server
    return {stage: stage_function(stage)(session, aws_config) for stage in STAGE_ORDER}


def storage_options(config) -> dict[str, str]:
    return {
        "AWS_ENDPOINT_URL": config.require("aws.s3_endpoint"),
        "AWS_REGION": config.require("aws.region"),
        "AWS_ACCESS_KEY_ID": LOCAL_AWS_ENV["AWS_ACCESS_KEY_ID"],
        "AWS_SECRET_ACCESS_KEY": LOCAL_AWS_ENV["AWS_SECRET_ACCESS_KEY"],
        "AWS_ALLOW_HTTP": "true",
    }


def ordered(rows: list[dict], key: tuple[str, ...]) -> list[dict]:
    return sorted(rows, key=lambda row: tuple(row[c] for c in key))


def store(config) -> dynamodb.ServingStore:
    return dynamodb.ServingStore.from_config(config)


def gold_lists(spark, config, version: str) -> dict[tuple[str, str], list[str]]:
    """(user, served model) -> the item ids of ``version``'s lists in the gold table, in
    rank order (the table keeps a partition per version)."""
    recs = io.read_version(spark, config, "gold/recommendations", version)
    recs = recs.filter(F.col("model").isin(*SERVED_MODELS))
    recs = recs.collect()
    lists: dict[tuple[str, str], list[tuple[int, str]]] = defaultdict(list)
    for r in recs:
        lists[(r["user_id"], r["model"])].append((r["rank"], r["item_id"]))
    return {key: [item for _, item in sorted(ranked)] for key, ranked in lists.items()}


def dynamodb_lists(config, version: str) -> dict[tuple[str, str], list[str]]:
    """(user, model) -> the item ids DynamoDB holds for ``version``, in stored order."""
    client = dynamodb.make_client(dynamodb.StoreSettings.from_config(config))
    out = {}
    for page in client.get_paginator("scan").paginate(TableName=config.require("export.dynamodb.table")):
        for raw in page["Items"]:
            item = {k: dynamodb.untyped(v) for k, v in raw.items()}
            if item["pk"].startswith("rec#") and item["sk"] == version:
                out[(item["user_id"], item["model"])] = [i["item_id"] for i in item["items"]]
    return out


def expiries(config) -> dict[tuple[str, str], int | None]:
    """(pk, sk) -> the item's expires_at (None without one), for every list and fallback item."""
    client = dynamodb.make_client(dynamodb.StoreSettings.from_config(config))
    out = {}
    for page in client.get_paginator("scan").paginate(TableName=config.require("export.dynamodb.table")):
        for raw in page["Items"]:
            item = {k: dynamodb.untyped(v) for k, v in raw.items()}
            if item["pk"] != "pointer":
                expires = item.get(dynamodb.TTL_ATTRIBUTE)
                out[(item["pk"], item["sk"])] = None if expires is None else int(expires)
    return out


def test_gold_tables_in_the_bucket_read_the_same_without_spark(spark, aws_config, first_run):
    warehouse = aws_config.require("paths.warehouse")
    assert warehouse.startswith("s3://")
    session = get_spark(aws_config)
    for name, key in (
        ("gold/recommendations", ("model", "user_id", "rank")),
        ("gold/metrics", ("model", "metric", "k")),
        ("gold/user_recommendations", ("model", "user_id")),
        ("gold/popular_fallback", ("rank",)),
    ):
        by_spark = [r.asDict(recursive=True) for r in io.read_table(session, aws_config, name).collect()]
        by_deltalake = DeltaTable(f"{warehouse}/{name}", storage_options=storage_options(aws_config))
        independent = by_deltalake.to_pyarrow_table().to_pylist()
        assert len(by_spark) == len(independent) > 0, name
        assert ordered(independent, key) == ordered(by_spark, key), name

    ddl = io.read_text(session, f"{warehouse}/gold/athena_ddl.sql")
    assert f"LOCATION '{warehouse}/gold/recommendations'" in ddl
    assert ddl.count("TBLPROPERTIES ('table_type'='DELTA')") == len(athena.GOLD_TABLES) == 6
    assert f"LOCATION '{warehouse}/gold/versions'" in ddl
    metrics_md = io.read_text(session, f"{aws_config.require('paths.reports')}/metrics.md")
    assert "| hybrid |" in metrics_md


def test_dynamodb_holds_every_users_ten_products_in_order(spark, aws_config, first_run):
    published = first_run["export"]["dynamodb"]
    version = first_run["train"]["model_version"]
    assert published["model_version"] == version and published["previous_version"] is None

    expected = gold_lists(get_spark(aws_config), aws_config, version)
    stored = dynamodb_lists(aws_config, version)
    assert {model for _, model in stored} == set(SERVED_MODELS)  # random is not published
    assert all(len(items) == K for items in stored.values())
    assert stored == expected
    assert published["lists"] == len(expected)

    reader = store(aws_config)
    user, model = sorted(expected)[0]
    got = reader.get_recommendations(user, model)
    assert (got.model_version, got.fallback) == (version, False)
    assert [i["item_id"] for i in got.items] == expected[(user, model)]
    assert all(i["title"] is not None or i["reason"] for i in got.items)

    stranger = reader.get_recommendations("never-seen-user", "hybrid")
    assert stranger.fallback and len(stranger.items) == K
    assert [i["rank"] for i in stranger.items] == list(range(1, K + 1))
    # DynamoDB's fallback is gold/popular_fallback, the list the gold-table reader serves.
    gold_fallback = io.read_table(get_spark(aws_config), aws_config, "gold/popular_fallback").orderBy("rank")
    assert [i["item_id"] for i in stranger.items] == [r["item_id"] for r in gold_fallback.collect()]


class Poller(threading.Thread):
    """Reads a few users' lists in a loop, as a serving process would, and records
    each answer's version and item ids."""

    def __init__(self, config, keys):
        super().__init__(daemon=True)
        self.reader = store(config)
        self.keys = keys
        self.seen: list[tuple[str, tuple[str, str], list[str], bool]] = []
        self.errors: list[str] = []
        self.stop = threading.Event()

    def run(self):
        while not self.stop.is_set():
            for user, model in self.keys:
                try:
                    got = stores.get_recommendations(user, model, store=self.reader)
                except Exception as exc:  # recorded, then asserted on: a reader must never fail
                    self.errors.append(repr(exc))
                    continue
                ids = [i["item_id"] for i in got.items]
                self.seen.append((got.model_version, (user, model), ids, got.fallback))
            time.sleep(0.05)


def test_a_new_version_switches_over_atomically_while_a_reader_polls(spark, aws_config, first_run):
    session = get_spark(aws_config)
    old_version = first_run["train"]["model_version"]
    old_lists = gold_lists(session, aws_config, old_version)
    keys = random.Random(1).sample(sorted(k for k in old_lists if k[1] in ("als", "hybrid")), 12)

    poller = Poller(aws_config, keys)
    poller.start()
    config_v2 = aws_config.with_overrides(["als.rank=12"])  # another model, so another version
    summaries = {
        stage: stage_function(stage)(session, config_v2) for stage in ("train", "recommend", "export")
    }
    time.sleep(0.5)
    poller.stop.set()
    poller.join(timeout=30)

    new_version = summaries["train"]["model_version"]
    assert new_version != old_version
    assert summaries["export"]["dynamodb"]["previous_version"] == old_version
    new_lists = gold_lists(session, config_v2, new_version)
    expected = {old_version: old_lists, new_version: new_lists}

    assert poller.errors == []
    versions = [v for v, *_ in poller.seen]
    assert set(versions) == {old_version, new_version}, "the reader should see both versions"
    # Once the new version is served, the old one never comes back.
    first_new = versions.index(new_version)
    assert set(versions[first_new:]) == {new_version}
    for version, key, ids, fallback in poller.seen:
        assert not fallback, (version, key)
        assert ids == expected[version][key], (version, key)
    assert dynamodb_lists(config_v2, new_version) == new_lists

    # The live version never expires; the replaced one got its TTL after the switch,
    # with its lists unchanged, and so did its popular fallback.
    assert summaries["export"]["dynamodb"]["previous_lists_expiring"] == len(old_lists)
    assert dynamodb_lists(config_v2, old_version) == old_lists
    ttl = expiries(config_v2)
    hours = config_v2.require("export.dynamodb.replaced_ttl_hours")
    assert {ttl[k] for k in ttl if k[1] == new_version} == {None}
    old_ttls = {ttl[k] for k in ttl if k[1] == old_version}
    assert None not in old_ttls and len(old_ttls) <= 2  # set in one pass, within a second
    assert abs(min(old_ttls) - (time.time() + hours * 3600)) < 300
    assert (dynamodb.FALLBACK_PK, old_version) in ttl and ttl[(dynamodb.FALLBACK_PK, new_version)] is None
    assert not any(pk.startswith("rec#random#") for pk, _ in ttl)  # the random floor is not published


class ThrottlingClient:
    """A DynamoDB client that, like a busy table, refuses some BatchWriteItem calls
    with ProvisionedThroughputExceededException and returns part of others as
    UnprocessedItems; every other call goes straight through."""

    def __init__(self, inner, seed: int):
        self.inner = inner
        self.rng = random.Random(seed)

    def batch_write_item(self, RequestItems):  # noqa: N803 (boto3's argument name)
        roll = self.rng.random()
        if roll < 0.3:
            raise ClientError(
                {"Error": {"Code": "ProvisionedThroughputExceededException", "Message": "injected"}},
                "BatchWriteItem",
            )
        if roll < 0.6:
            ((table, requests),) = RequestItems.items()
            cut = len(requests) // 2
            self.inner.batch_write_item(RequestItems={table: requests[:cut]})
            return {"UnprocessedItems": {table: requests[cut:]}}
        return self.inner.batch_write_item(RequestItems=RequestItems)

    def __getattr__(self, name):
        return getattr(self.inner, name)


def throttling_client(settings):
    return ThrottlingClient(dynamodb.make_client(settings), seed=random.SystemRandom().randrange(1 << 30))


def test_throttling_and_unprocessed_items_lose_nothing(spark, aws_config, first_run):
    session = get_spark(aws_config)
    config = aws_config.with_overrides(
        [
            f"export.dynamodb.table={aws_config.require('export.dynamodb.table')}-throttled",
            "export.dynamodb.base_delay_s=0.001",
            "export.dynamodb.max_delay_s=0.01",
            "export.dynamodb.max_attempts=40",
        ]
    )
    version = versions.current_version(session, config)
    served = io.read_version(session, config, "gold/user_recommendations", version)
    summary = publish(session, config, served, version, client_factory=throttling_client)

    assert summary["throttled"] > 0 and summary["unprocessed_retried"] > 0
    expected = gold_lists(session, config, version)
    assert summary["lists"] == len(expected)
    assert dynamodb_lists(config, version) == expected
    assert store(config).current_version()["model_version"] == version


def test_publishing_the_live_version_again_rewrites_nothing(spark, aws_config, first_run):
    """A re-run with the same settings and data gives the same (immutable) version: its
    export leaves DynamoDB as it is, lists refreshed since included."""
    session = get_spark(aws_config)
    version = store(aws_config).current_version()["model_version"]
    client = dynamodb.make_client(dynamodb.StoreSettings.from_config(aws_config))
    table = aws_config.require("export.dynamodb.table")

    def everything():
        pages = client.get_paginator("scan").paginate(TableName=table)
        return sorted(repr(sorted(item.items())) for page in pages for item in page["Items"])

    before = everything()
    served = io.read_version(session, aws_config, "gold/user_recommendations", version)
    summary = publish(session, aws_config, served, version)
    assert summary["already_live"] and summary["lists"] == 0
    assert everything() == before
