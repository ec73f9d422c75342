"""The Lambda handlers (amazon_recs.serving.api) against the local DynamoDB and S3 servers.

A small version (the lists of tests/gold_tables.py) is published to a table of
its own with ``writer.write_items`` + ``switch_version``; the handlers are
configured as on Lambda, through environment variables, and called with API
Gateway proxy events (REST v1 and HTTP API v2):

- ``GET /recommendations/{user_id}`` returns the current list as JSON, ``model``
  and ``k`` choosing which and how many; an unknown user gets the popular
  products flagged as the fallback; every answer carries CORS headers;
- malformed ids, models, k and unknown parameters are 400s with a message,
  other paths 404, other methods 405; an unreachable or empty store is a 503 and
  a missing configuration a 500, none with internals in the body;
- an activity event lands as one JSON object under raw/events/dt=<day received>/ in the
  bucket, a purchase or rating then leaves the user's lists; a retried event
  writes the same object; bad events are 400s; when S3 is down nothing changes.
"""

from __future__ import annotations

import base64
import json
import re
import socket
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime

import boto3
import pytest

from amazon_recs.config import load_config
from amazon_recs.serving import api, dynamodb, writer
from tests.conftest import LOCAL_AWS_ENV, ROOT
from tests.gold_tables import USERS, write_gold_tables

pytestmark = pytest.mark.integration

SERVED = ("hybrid", "als", "item_knn", "content", "popular")
VERSION = "api-v1"
GENERATED = "2026-01-02T03:04:05+00:00"
REGION = LOCAL_AWS_ENV["AWS_DEFAULT_REGION"]
READER = USERS[0]  # only read: the activity tests change other users' lists


@pytest.fixture(scope="module")
def fixture_lists(tmp_path_factory):
    return write_gold_tables(tmp_path_factory.mktemp("gold"))


def publish(endpoint: str, warehouse) -> str:
    """A fresh table holding ``warehouse``'s lists as version VERSION, current."""
    table = f"api-test-{uuid.uuid4().hex[:10]}"
    settings = dynamodb.StoreSettings(table=table, region=REGION, endpoint_url=endpoint)
    client = dynamodb.make_client(settings)
    dynamodb.ensure_table(client, table)
    items = [
        writer.list_item(
            dynamodb.rec_key(model, user), VERSION, listed, GENERATED, 2**31, user_id=user, model=model
        )
        for (user, model), listed in warehouse.lists.items()
    ]
    items.append(writer.list_item(dynamodb.FALLBACK_PK, VERSION, warehouse.popular, GENERATED, 2**31))
    writer.write_items(client, settings, items)
    dynamodb.switch_version(client, table, VERSION, GENERATED, expected=None)
    return table


@pytest.fixture(scope="module")
def published(local_aws, fixture_lists) -> str:
    return publish(local_aws["dynamodb"], fixture_lists)


@pytest.fixture
def s3(local_aws):
    return boto3.client("s3", endpoint_url=local_aws["s3"], region_name=REGION)


@pytest.fixture
def bucket(s3) -> str:
    name = f"api-events-{uuid.uuid4().hex[:10]}"
    s3.create_bucket(Bucket=name)
    return name


@pytest.fixture
def lambda_env(monkeypatch, local_aws, published, bucket):
    """The function's environment, as a deployment would set it (endpoints: the local servers)."""
    monkeypatch.delenv("AMAZON_RECS_CONFIG", raising=False)
    env = {
        "AMAZON_RECS_TABLE": published,
        "AMAZON_RECS_BUCKET": bucket,
        "AMAZON_RECS_DYNAMODB_ENDPOINT": local_aws["dynamodb"],
        "AMAZON_RECS_S3_ENDPOINT": local_aws["s3"],
        "AWS_REGION": REGION,
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env


def get(user_id: str | None, query: dict | None = None, method: str = "GET", path: str | None = None) -> dict:
    """A REST API (v1) proxy event for /recommendations/{user_id}."""
    return {
        "resource": "/recommendations/{user_id}",
        "path": path if path is not None else f"/recommendations/{user_id}",
        "httpMethod": method,
        "headers": {"Accept": "application/json"},
        "pathParameters": {"user_id": user_id} if user_id is not None else None,
        "queryStringParameters": query,
        "body": None,
        "isBase64Encoded": False,
        "requestContext": {"stage": "prod", "requestId": "test"},
    }


def post(payload: object, raw: str | None = None, encode: bool = False) -> dict:
    body = raw if raw is not None else json.dumps(payload)
    if encode:
        body = base64.b64encode(body.encode()).decode()
    return {"path": "/events", "httpMethod": "POST", "body": body, "isBase64Encoded": encode, "headers": {}}


def call(handler, event) -> tuple[int, dict, dict]:
    response = handler(event, None)
    assert set(response) == {"statusCode", "headers", "body"}
    body = json.loads(response["body"]) if response["body"] else {}
    return response["statusCode"], body, response["headers"]


def assert_cors(headers: dict) -> None:
    assert headers["Access-Control-Allow-Origin"] == "*"
    assert (
        "GET" in headers["Access-Control-Allow-Methods"] and "POST" in headers["Access-Control-Allow-Methods"]
    )
    assert headers["Content-Type"] == "application/json"


def served(warehouse, user: str, model: str) -> list[dict]:
    """The list as DynamoDB hands it back (scores rounded to 6 places)."""
    return [{**i, "score": round(i["score"], 6)} for i in warehouse.lists[(user, model)]]


# --- GET /recommendations/{user_id} ---------------------------------------------


def test_a_known_user_gets_the_current_list_as_json_with_cors(lambda_env, fixture_lists):
    status, body, headers = call(api.recommendations_handler, get(READER))

    assert status == 200
    assert_cors(headers)
    assert body == {
        "user_id": READER,
        "model": "hybrid",
        "model_version": VERSION,
        "generated_at": GENERATED,
        "fallback": False,
        "items": served(fixture_lists, READER, "hybrid"),
    }


@pytest.mark.parametrize("model", SERVED)
@pytest.mark.parametrize("k", ["1", "3", "10"])
def test_model_and_k_choose_the_list_and_its_length(lambda_env, fixture_lists, model, k):
    status, body, _ = call(api.recommendations_handler, get(READER, {"model": model, "k": k}))

    assert status == 200
    assert (body["model"], body["fallback"]) == (model, False)
    assert body["items"] == served(fixture_lists, READER, model)[: int(k)]


def test_an_unknown_user_gets_the_popular_products_flagged(lambda_env, fixture_lists):
    status, body, headers = call(api.recommendations_handler, get("U9999999", {"model": "als", "k": "5"}))

    assert status == 200
    assert_cors(headers)
    assert body["fallback"] is True
    assert (
        body["message"]
        == f"user U9999999 is not known to model version {VERSION}: these are the most popular products"
    )
    assert body["items"] == [{**p, "score": round(p["score"], 6)} for p in fixture_lists.popular[:5]]


def test_http_api_v2_events_and_greedy_routes_work_too(lambda_env, fixture_lists):
    v2 = {
        "version": "2.0",
        "routeKey": "GET /recommendations/{user_id}",
        "rawPath": f"/recommendations/{READER}",
        "rawQueryString": "model=content&k=2",
        "queryStringParameters": {"model": "content", "k": "2"},
        "pathParameters": {"user_id": READER},
        "requestContext": {"http": {"method": "GET", "path": f"/recommendations/{READER}"}},
    }
    status, body, _ = call(api.recommendations_handler, v2)
    assert status == 200 and body["items"] == served(fixture_lists, READER, "content")[:2]

    greedy = {**get(None, path="/prod/recommendations/first.last%40shop"), "pathParameters": {"proxy": "x"}}
    status, body, _ = call(api.recommendations_handler, greedy)
    assert status == 200 and (body["user_id"], body["fallback"]) == ("first.last@shop", True)


@pytest.mark.parametrize(
    ("user_id", "query", "message"),
    [
        ("bad id!", None, "'bad id!' is not a valid user id: use 1 to 128 letters, digits or . _ - : @"),
        ("a#b", None, "'a#b' is not a valid user id"),
        ("u" * 129, None, "is not a valid user id"),
        ("", None, "a user id is required"),
        (
            READER,
            {"model": "random"},
            "unknown model 'random': one of hybrid, als, item_knn, content, popular",
        ),
        (READER, {"model": "HYBRID"}, "unknown model 'HYBRID'"),
        (READER, {"k": "0"}, "k must be a whole number from 1 to 10, got '0'"),
        (READER, {"k": "11"}, "k must be a whole number from 1 to 10"),
        (READER, {"k": "ten"}, "k must be a whole number from 1 to 10"),
        (READER, {"k": "2.5"}, "k must be a whole number from 1 to 10"),
        (READER, {"modle": "als"}, "unknown parameter modle: use model and k"),
    ],
)
def test_bad_requests_are_400s_with_a_message(lambda_env, user_id, query, message):
    status, body, headers = call(api.recommendations_handler, get(user_id, query))

    assert status == 400
    assert_cors(headers)
    assert set(body) == {"error"} and message in body["error"]


def test_other_paths_are_404_other_methods_405_and_preflight_204(lambda_env):
    status, body, _ = call(api.recommendations_handler, get(None, path="/users/u1"))
    assert status == 404 and "use GET /recommendations/{user_id}" in body["error"]

    status, body, _ = call(api.recommendations_handler, get(READER, method="POST"))
    assert status == 405 and body == {"error": "method POST is not allowed here: use GET"}

    response = api.recommendations_handler(get(READER, method="OPTIONS"), None)
    assert response["statusCode"] == 204 and response["body"] == ""
    assert_cors(response["headers"])


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_an_unreachable_or_empty_store_is_a_503_without_internals(lambda_env, monkeypatch, local_aws):
    endpoint = f"http://127.0.0.1:{closed_port()}"
    monkeypatch.setenv("AMAZON_RECS_DYNAMODB_ENDPOINT", endpoint)
    status, body, headers = call(api.recommendations_handler, get(READER))
    assert status == 503
    assert_cors(headers)
    assert body == {"error": "the service is unavailable right now; please try again shortly"}

    monkeypatch.setenv("AMAZON_RECS_DYNAMODB_ENDPOINT", local_aws["dynamodb"])
    empty = f"api-empty-{uuid.uuid4().hex[:8]}"
    client = dynamodb.make_client(
        dynamodb.StoreSettings(table=empty, region=REGION, endpoint_url=local_aws["dynamodb"])
    )
    dynamodb.ensure_table(client, empty)
    monkeypatch.setenv("AMAZON_RECS_TABLE", empty)
    status, body, _ = call(api.recommendations_handler, get(READER))
    assert status == 503 and empty not in body["error"]


def test_a_function_without_a_table_is_a_500_that_says_only_that(lambda_env, monkeypatch, caplog):
    monkeypatch.delenv("AMAZON_RECS_TABLE")

    status, body, headers = call(api.recommendations_handler, get(READER))

    assert status == 500
    assert_cors(headers)
    assert body == {"error": "the service is misconfigured; its log says how"}
    assert "set AMAZON_RECS_TABLE or AMAZON_RECS_CONFIG" in caplog.text


def test_settings_come_from_a_config_file_with_the_variables_over_it(monkeypatch):
    env = {"AMAZON_RECS_CONFIG": str(ROOT / "conf" / "local-aws.yaml"), "AMAZON_RECS_TABLE": "other"}
    settings = api.ApiSettings.from_env(env)
    config = load_config(ROOT / "conf" / "local-aws.yaml")
    assert settings.table == "other"
    assert settings.bucket == config.require("aws.bucket")
    assert settings.dynamodb_endpoint == config.require("aws.dynamodb_endpoint")
    assert settings.events_prefix == "raw/events" and settings.max_k == 10


def test_the_settings_defaults_are_base_yamls():
    base = api.ApiSettings.from_config(load_config(ROOT / "conf" / "base.yaml"))
    assert api.ApiSettings(table=base.table, bucket=base.bucket) == base


# --- activity ---------------------------------------------------------------------


@pytest.fixture
def fresh_table(lambda_env, monkeypatch, local_aws, fixture_lists) -> str:
    """The activity tests change lists: each gets a table of its own."""
    table = publish(local_aws["dynamodb"], fixture_lists)
    monkeypatch.setenv("AMAZON_RECS_TABLE", table)
    return table


def objects(s3, bucket: str) -> dict[str, bytes]:
    listed = s3.list_objects_v2(Bucket=bucket).get("Contents", [])
    return {o["Key"]: s3.get_object(Bucket=bucket, Key=o["Key"])["Body"].read() for o in listed}


def item_ids(user: str, model: str) -> list[str]:
    _, body, _ = call(api.recommendations_handler, get(user, {"model": model}))
    return [i["item_id"] for i in body["items"]]


def test_a_purchase_lands_in_s3_and_leaves_the_users_lists(fresh_table, bucket, s3, fixture_lists):
    user = USERS[5]
    bought = fixture_lists.lists[(user, "hybrid")][2]["item_id"]
    holding = sorted(
        m
        for (u, m), listed in fixture_lists.lists.items()
        if u == user and bought in [i["item_id"] for i in listed]
    )
    others = {u: item_ids(u, "hybrid") for u in USERS[6:9]}
    before = {model: item_ids(user, model) for model in SERVED}
    ts = 1_767_312_000_000  # 2026-01-02T00:00:00Z: the folder is the day it arrives
    days = {f"{datetime.now(tz=UTC):%Y-%m-%d}"}

    status, body, headers = call(
        api.activity_handler,
        post(
            {
                "user_id": user,
                "item_id": bought,
                "event_type": "purchase",
                "timestamp": ts,
                "event_id": "evt-1",
            }
        ),
    )

    assert status == 200
    assert_cors(headers)
    days.add(f"{datetime.now(tz=UTC):%Y-%m-%d}")  # either, should midnight fall between
    (key,) = objects(s3, bucket)
    assert key in {f"raw/events/dt={day}/{ts}-evt-1.json" for day in days}
    assert body == {
        "event_id": "evt-1",
        "event_type": "purchase",
        "stored": f"s3://{bucket}/{key}",
        "removed_from": {model: [VERSION] for model in holding},
    }
    stored = objects(s3, bucket)
    assert list(stored) == [key]
    (line,) = stored[key].decode().splitlines()
    record = json.loads(line)
    assert {k: v for k, v in record.items() if k != "received_at"} == {
        "event_id": "evt-1",
        "event_type": "purchase",
        "user_id": user,
        "item_id": bought,
        "rating": None,
        "timestamp": ts,
    }
    assert abs(record["received_at"] - time.time() * 1000) < 60_000

    for model in SERVED:
        expected = [i for i in before[model] if i != bought]
        assert item_ids(user, model) == expected, model
    assert len(item_ids(user, "hybrid")) == 9
    assert {u: item_ids(u, "hybrid") for u in others} == others


def test_a_retried_event_writes_the_same_object_and_removes_nothing_more(
    fresh_table, bucket, s3, fixture_lists
):
    user = USERS[6]
    rated = fixture_lists.lists[(user, "als")][0]["item_id"]
    event = {
        "user_id": user,
        "item_id": rated,
        "event_type": "rating",
        "rating": 4,
        "event_id": "evt-2",
        "timestamp": 1_767_312_000_000,
    }

    first = call(api.activity_handler, post(event))
    again = call(api.activity_handler, post(event))

    assert first[0] == again[0] == 200
    assert first[1]["stored"] == again[1]["stored"]
    assert "als" in first[1]["removed_from"] and again[1]["removed_from"] == {}
    assert len(objects(s3, bucket)) == 1
    assert rated not in item_ids(user, "als")


def test_a_view_is_landed_and_removes_nothing(fresh_table, bucket, s3, fixture_lists):
    user = USERS[7]
    seen = fixture_lists.lists[(user, "hybrid")][0]["item_id"]

    status, body, _ = call(
        api.activity_handler, post({"user_id": user, "item_id": seen, "event_type": "view"})
    )

    assert status == 200 and body["removed_from"] == {}
    assert len(body["event_id"]) == 32  # generated
    (key,) = objects(s3, bucket)
    assert key.startswith(f"raw/events/dt={datetime.now(tz=UTC):%Y-%m-%d}/")
    assert item_ids(user, "hybrid")[0] == seen


def test_direct_eventbridge_and_base64_invocations(fresh_table, bucket, s3, fixture_lists):
    user = USERS[8]
    first, second, third = (fixture_lists.lists[(user, "als")][n]["item_id"] for n in range(3))
    purchase = {"user_id": user, "event_type": "purchase"}

    assert call(api.activity_handler, {**purchase, "item_id": first})[0] == 200
    bridge = {"detail-type": "purchase", "source": "shop", "detail": {**purchase, "item_id": second}}
    assert call(api.activity_handler, bridge)[0] == 200
    assert call(api.activity_handler, post({**purchase, "item_id": third}, encode=True))[0] == 200

    assert not {first, second, third} & set(item_ids(user, "als"))
    assert len(objects(s3, bucket)) == 3


@pytest.mark.parametrize(
    ("event", "message"),
    [
        (post(None, raw="{not json"), "the request body is not valid JSON"),
        (post(None, raw=""), "the request has no body"),
        (post([1, 2]), "the event must be a JSON object"),
        (post({"item_id": "B1", "event_type": "purchase"}), "a user id is required"),
        (post({"user_id": "u 1", "item_id": "B1", "event_type": "purchase"}), "'u 1' is not a valid user id"),
        (post({"user_id": "u1", "item_id": "B#1", "event_type": "purchase"}), "'B#1' is not a valid item id"),
        (
            post({"user_id": "u1", "item_id": "B1", "event_type": "refund"}),
            "event_type must be one of purchase, rating, view",
        ),
        (post({"user_id": "u1", "item_id": "B1", "event_type": "view", "price": 3}), "unknown field 'price'"),
        (
            post({"user_id": "u1", "item_id": "B1", "event_type": "view", "timestamp": 1_767_312_000}),
            "out of range",
        ),
        (
            post({"user_id": "u1", "item_id": "B1", "event_type": "view", "timestamp": "today"}),
            "timestamp must be whole",
        ),
        (post({"user_id": "u1", "item_id": "B1", "event_type": "rating"}), "a rating event needs a rating"),
        (
            post({"user_id": "u1", "item_id": "B1", "event_type": "rating", "rating": "5"}),
            "rating must be a number",
        ),
        (
            post({"user_id": "u1", "item_id": "B1", "event_type": "view", "event_id": "../x"}),
            "event_id must be",
        ),
        ({**post(None, raw="x"), "isBase64Encoded": True}, "not valid base64"),
    ],
)
def test_bad_events_are_400s_and_land_nothing(lambda_env, bucket, s3, event, message):
    status, body, headers = call(api.activity_handler, event)

    assert status == 400
    assert_cors(headers)
    assert message in body["error"]
    assert objects(s3, bucket) == {}


def test_a_large_body_is_413_and_a_get_is_405(lambda_env):
    status, body, _ = call(api.activity_handler, post(None, raw=json.dumps({"user_id": "u" * 20_000})))
    assert status == 413 and "larger than 10000 bytes" in body["error"]
    assert call(api.activity_handler, {**post({}), "httpMethod": "GET"})[0] == 405


def test_when_s3_is_down_the_event_is_refused_and_no_list_changes(fresh_table, monkeypatch, fixture_lists):
    user = USERS[9]
    bought = fixture_lists.lists[(user, "hybrid")][0]["item_id"]
    monkeypatch.setenv("AMAZON_RECS_S3_ENDPOINT", f"http://127.0.0.1:{closed_port()}")

    status, body, _ = call(
        api.activity_handler, post({"user_id": user, "item_id": bought, "event_type": "purchase"})
    )

    assert status == 503 and body == {
        "error": "the service is unavailable right now; please try again shortly"
    }
    assert item_ids(user, "hybrid")[0] == bought


def test_the_handlers_need_neither_spark_nor_deltalake_nor_pandas():
    """A Lambda package holds the library, boto3 and pyyaml: importing the handlers must not pull more."""
    heavy = ("pyspark", "deltalake", "pandas", "pyarrow", "streamlit")
    script = f"import sys, amazon_recs.serving.api; print([m for m in {heavy!r} if m in sys.modules])"
    loaded = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, cwd=ROOT
    )
    assert loaded.stdout.strip() == "[]"


def test_readers_never_see_a_mixed_or_missing_list_while_a_version_is_published(local_aws, tmp_path):
    """bench/api_latency.py's run under load, small: client processes call the handler
    back to back while a second version is published (lists, pointer, old TTL)."""
    out = tmp_path / "bench.md"
    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "api_latency.py"),
            *("--endpoint", local_aws["dynamodb"], "--requests", "50", "--warmup", "5"),
            *("--users", "100", "--clients", "4", "--duration", "20", "--out", str(out)),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    report = out.read_text()
    assert "Errors: **0**" in report and "mixing versions" in report and "): **0**." in report
    after = re.search(r"`bench-v2` after it: ([\d,]+)", report)
    assert after and int(after.group(1).replace(",", "")) > 0, report  # the switch was seen
