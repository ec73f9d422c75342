"""AWS Lambda handlers behind API Gateway: a user's recommendations, and user activity.

``recommendations_handler`` answers ``GET /recommendations/{user_id}?model=hybrid&k=10``
(proxy integration; REST API v1 and HTTP API v2 events) from the DynamoDB serving
store: the current version's list, or, for a user that version does not know, the
most popular products flagged ``"fallback": true`` with a message.

``activity_handler`` takes a user-activity event, ``POST /events`` with a JSON body
or the event itself when invoked directly (an EventBridge ``detail`` too)::

    {"user_id": "U1", "item_id": "B0001", "event_type": "purchase",
     "timestamp": 1700000000000, "rating": 5, "event_id": "..."}   # the last three optional

It lands the event as one JSON object under
``s3://<bucket>/<api.events_prefix>/dt=<day received>/`` for the next batch run, then
takes a purchased or rated product out of the user's stored lists
(``list_edits.remove_from_lists``). With an ``event_id`` (and ``timestamp``) a
delivery retried the same day writes the same object again instead of a second one.

Every answer is JSON with CORS headers. A bad request is a 400 with
``{"error": "..."}``; an unknown path 404; another method 405; an unreachable or
empty store 503; anything else 500 with a generic message, its traceback in the log.

Configuration comes from the function's environment:

    AMAZON_RECS_CONFIG             a config YAML shipped with the function (optional):
                                   table, bucket, region, endpoints and api.* from it
    AMAZON_RECS_TABLE              the DynamoDB table (else export.dynamodb.table)
    AMAZON_RECS_BUCKET             the bucket for activity events (else aws.bucket)
    AMAZON_RECS_DYNAMODB_ENDPOINT  endpoints of local stand-ins, for tests and benchmarks
    AMAZON_RECS_S3_ENDPOINT        (else aws.*_endpoint; unset: AWS's own)
    AMAZON_RECS_EVENTS_PREFIX      api.events_prefix
    AMAZON_RECS_CORS_ORIGIN        api.cors_origin
    AMAZON_RECS_POINTER_CACHE_SECONDS  api.pointer_cache_seconds
    AMAZON_RECS_MAX_K              recommend.k
    AWS_REGION                     set by Lambda (else aws.region)

The deployed functions (``aws.functions``: the zip and the CloudFormation template)
get every setting as a variable, so one zip serves any configuration.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import math
import os
import re
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from functools import lru_cache
from urllib.parse import unquote

import boto3
from botocore.config import Config as BotoConfig
from botocore.exceptions import BotoCoreError, ClientError

from amazon_recs.config import Config, load_config
from amazon_recs.errors import ConfigError, RecsError, RequestError
from amazon_recs.events import EVENT_FIELDS, EVENT_ID, EVENT_TYPES, REMOVING_EVENTS, day_folder
from amazon_recs.serving import dynamodb, interface, list_edits, validation

log = logging.getLogger(__name__)

DEFAULT_MODEL = "hybrid"
QUERY_PARAMETERS = ("model", "k")
MAX_BODY_BYTES = 10_000
EARLIEST_MS = 946_684_800_000  # 2000-01-01: older timestamps are mistakes (seconds for ms)
MAX_CLOCK_SKEW_MS = 86_400_000
RECOMMENDATIONS_PATH = re.compile(r"/recommendations/([^/]*)/?$")
UNAVAILABLE = "the service is unavailable right now; please try again shortly"

# Environment variable -> (ApiSettings field, its type).
ENV_FIELDS: dict[str, tuple[str, type]] = {
    "AMAZON_RECS_TABLE": ("table", str),
    "AMAZON_RECS_BUCKET": ("bucket", str),
    "AMAZON_RECS_DYNAMODB_ENDPOINT": ("dynamodb_endpoint", str),
    "AMAZON_RECS_S3_ENDPOINT": ("s3_endpoint", str),
    "AMAZON_RECS_EVENTS_PREFIX": ("events_prefix", str),
    "AMAZON_RECS_CORS_ORIGIN": ("cors_origin", str),
    "AMAZON_RECS_POINTER_CACHE_SECONDS": ("pointer_cache_s", float),
    "AMAZON_RECS_MAX_K": ("max_k", int),
    "AWS_REGION": ("region", str),
}


class HttpError(RecsError):
    """A request the API answers with ``status`` and this message."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


# --- settings ---------------------------------------------------------------


@dataclass(frozen=True)
class ApiSettings:
    """Where the handlers read and write. Defaults are conf/base.yaml's (a test checks)."""

    table: str
    region: str = "us-east-1"
    bucket: str = ""
    dynamodb_endpoint: str = ""
    s3_endpoint: str = ""
    events_prefix: str = "raw/events"
    cors_origin: str = "*"
    max_k: int = 10
    pointer_cache_s: float = 5.0

    @classmethod
    def from_config(cls, config: Config) -> ApiSettings:
        return cls(
            table=config.require("export.dynamodb.table"),
            region=config.require("aws.region"),
            bucket=config.require("aws.bucket"),
            dynamodb_endpoint=config.require("aws.dynamodb_endpoint"),
            s3_endpoint=config.require("aws.s3_endpoint"),
            events_prefix=config.require("api.events_prefix"),
            cors_origin=config.require("api.cors_origin"),
            max_k=config.require("recommend.k"),
            pointer_cache_s=float(config.require("api.pointer_cache_seconds")),
        )

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> ApiSettings:
        """From ``AMAZON_RECS_CONFIG`` when set, then the single-value variables over it.

        Raises:
            ConfigError: no table is named anywhere.
        """
        overrides = {}
        for var, (name, kind) in ENV_FIELDS.items():
            if env.get(var):
                try:
                    overrides[name] = kind(env[var])
                except ValueError:
                    raise ConfigError(f"{var}={env[var]!r} is not a {kind.__name__}") from None
        path = env.get("AMAZON_RECS_CONFIG")
        if path:
            return replace(cls.from_config(_load_config(path)), **overrides)
        if "table" not in overrides:
            raise ConfigError("set AMAZON_RECS_TABLE or AMAZON_RECS_CONFIG in the function's environment")
        return cls(**overrides)


@lru_cache(maxsize=4)
def _load_config(path: str) -> Config:
    return load_config(path)


@lru_cache(maxsize=4)
def _store(settings: ApiSettings) -> dynamodb.ServingStore:
    """One client per container and settings: Lambda reuses it across invocations."""
    store_settings = dynamodb.StoreSettings(
        table=settings.table, region=settings.region, endpoint_url=settings.dynamodb_endpoint or None
    )
    return dynamodb.ServingStore(
        dynamodb.make_client(store_settings), settings.table, pointer_ttl_s=settings.pointer_cache_s
    )


@lru_cache(maxsize=4)
def _s3(settings: ApiSettings):
    return boto3.client(
        "s3",
        region_name=settings.region,
        endpoint_url=settings.s3_endpoint or None,
        config=BotoConfig(retries={"total_max_attempts": 2}, connect_timeout=2, read_timeout=10),
    )


# --- requests and responses ---------------------------------------------------


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    path_parameters: dict
    query: dict
    body: str | None


def parse_request(event: object) -> Request | None:
    """The parts of an API Gateway proxy event (v1 or v2); None when ``event`` is not one."""
    if not isinstance(event, dict):
        return None
    http = (event.get("requestContext") or {}).get("http") or {}
    method = event.get("httpMethod") or http.get("method")
    if not method:
        return None
    body = event.get("body")
    if body is not None and event.get("isBase64Encoded"):
        try:
            body = base64.b64decode(body, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            raise RequestError("the request body is not valid base64-encoded UTF-8") from None
    return Request(
        method=str(method).upper(),
        path=event.get("path") or event.get("rawPath") or "",
        path_parameters=dict(event.get("pathParameters") or {}),
        query=dict(event.get("queryStringParameters") or {}),
        body=body,
    )


def respond(status: int, body: dict | None, origin: str = "*") -> dict:
    """An API Gateway proxy response: JSON, CORS headers, never cached."""
    headers = {
        "Content-Type": "application/json",
        "Access-Control-Allow-Origin": origin,
        "Access-Control-Allow-Methods": "GET,POST,OPTIONS",
        "Access-Control-Allow-Headers": "Content-Type,Authorization",
        "Cache-Control": "no-store",
    }
    if origin != "*":
        headers["Vary"] = "Origin"
    return {"statusCode": status, "headers": headers, "body": "" if body is None else json.dumps(body)}


def _handle(
    event: object,
    context: object,
    methods: tuple[str, ...],
    action: Callable[[object, Request | None, ApiSettings], tuple[int, dict]],
) -> dict:
    """The one place a handler's failures become status codes and messages."""
    origin = "*"
    try:
        settings = ApiSettings.from_env(os.environ)
        origin = settings.cors_origin
        request = parse_request(event)
        if request is not None and request.method == "OPTIONS":  # CORS preflight
            return respond(204, None, origin)
        if request is not None and request.method not in methods:
            raise HttpError(405, f"method {request.method} is not allowed here: use {', '.join(methods)}")
        status, body = action(event, request, settings)
        return respond(status, body, origin)
    except HttpError as exc:
        return respond(exc.status, {"error": str(exc)}, origin)
    except RequestError as exc:
        return respond(400, {"error": str(exc)}, origin)
    except interface.ServingError as exc:  # unreachable, throttled, or nothing published yet
        log.warning("serving store unavailable: %s", exc)  # names the table: for the log only
        return respond(503, {"error": UNAVAILABLE}, origin)
    except ConfigError as exc:
        log.error("misconfigured: %s", exc)
        return respond(500, {"error": "the service is misconfigured; its log says how"}, origin)
    except (ClientError, BotoCoreError) as exc:
        log.warning("AWS call failed: %s", exc)
        return respond(503, {"error": UNAVAILABLE}, origin)
    except Exception:  # the last line: a message for the caller, the traceback for the log
        request_id = getattr(context, "aws_request_id", None)
        log.exception("unexpected failure (request %s)", request_id)
        suffix = f" (request {request_id})" if request_id else ""
        return respond(500, {"error": f"internal error{suffix}"}, origin)


# --- GET /recommendations/{user_id} ---------------------------------------------


def recommendations_handler(event: dict, context: object = None) -> dict:
    """Lambda entry point for ``GET /recommendations/{user_id}?model=hybrid&k=10``."""
    return _handle(event, context, ("GET",), _recommend)


def requested_user(request: Request) -> str:
    """The user id from the path parameters or, for a greedy route, the path itself.

    Raises:
        HttpError: 404 when the path is not /recommendations/{user_id}.
    """
    if "user_id" in request.path_parameters:
        return request.path_parameters["user_id"]
    match = RECOMMENDATIONS_PATH.search(request.path)
    if match is None:
        raise HttpError(404, f"no such resource {request.path!r}: use GET /recommendations/{{user_id}}")
    return unquote(match.group(1))


def _recommend(event: object, request: Request | None, settings: ApiSettings) -> tuple[int, dict]:
    if request is None:
        raise RequestError("expected an API Gateway proxy event for GET /recommendations/{user_id}")
    user_id = validation.validate_id(requested_user(request))
    unknown = sorted(set(request.query) - set(QUERY_PARAMETERS))
    if unknown:
        raise RequestError(f"unknown parameter {', '.join(unknown)}: use {' and '.join(QUERY_PARAMETERS)}")
    model = validation.validate_model(request.query.get("model", DEFAULT_MODEL))
    k = validation.validate_k(request.query.get("k", settings.max_k), settings.max_k)
    return 200, recommendations_body(_store(settings).get_recommendations(user_id, model), k)


def recommendations_body(recs: interface.Recommendations, k: int) -> dict:
    """The JSON answer: the first ``k`` items, and for a fallback the flag and why."""
    body = {
        "user_id": recs.user_id,
        "model": recs.model,
        "model_version": recs.model_version,
        "generated_at": recs.generated_at,
        "fallback": recs.fallback,
        "items": recs.items[:k],
    }
    if recs.fallback:
        body["message"] = (
            f"user {recs.user_id} is not known to model version {recs.model_version}: "
            "these are the most popular products"
        )
    return body


# --- user activity ------------------------------------------------------------


def activity_handler(event: dict, context: object = None) -> dict:
    """Lambda entry point for ``POST /events`` and for direct invocations with the event."""
    return _handle(event, context, ("POST",), _record_activity)


@dataclass(frozen=True)
class Activity:
    event_id: str
    event_type: str
    user_id: str
    item_id: str
    timestamp_ms: int
    rating: float | None


def activity_payload(request: Request | None, event: object) -> object:
    """The event's fields: the JSON body of an API call, or the invocation event itself."""
    if request is None:
        return event.get("detail", event) if isinstance(event, dict) and "detail-type" in event else event
    if not request.body:
        raise RequestError("the request has no body: send the event as a JSON object")
    if len(request.body.encode("utf-8")) > MAX_BODY_BYTES:
        raise HttpError(413, f"the event is larger than {MAX_BODY_BYTES} bytes")
    try:
        return json.loads(request.body)
    except json.JSONDecodeError as exc:
        raise RequestError(f"the request body is not valid JSON ({exc.msg} at character {exc.pos})") from None


def parse_activity(payload: object, now_ms: int) -> Activity:
    """A checked ``Activity``; a missing ``event_id`` is generated, a missing ``timestamp`` is now.

    Raises:
        RequestError: a field is missing, unknown or malformed, naming it.
    """
    if not isinstance(payload, dict):
        raise RequestError("the event must be a JSON object with user_id, item_id and event_type")
    unknown = sorted(set(payload) - set(EVENT_FIELDS))
    if unknown:
        raise RequestError(
            f"unknown field {', '.join(map(repr, unknown))}: the fields are {', '.join(EVENT_FIELDS)}"
        )
    event_type = payload.get("event_type")
    if event_type not in EVENT_TYPES:
        raise RequestError(f"event_type must be one of {', '.join(EVENT_TYPES)}, got {event_type!r}")
    event_id = payload.get("event_id") or uuid.uuid4().hex
    if not isinstance(event_id, str) or not EVENT_ID.fullmatch(event_id):
        raise RequestError("event_id must be 1 to 64 letters, digits, _ or -")
    return Activity(
        event_id=event_id,
        event_type=event_type,
        user_id=validation.validate_id(payload.get("user_id"), "user id"),
        item_id=validation.validate_id(payload.get("item_id"), "item id"),
        timestamp_ms=_timestamp(payload.get("timestamp"), now_ms),
        rating=_rating(payload.get("rating"), required=event_type == "rating"),
    )


def _timestamp(value: object, now_ms: int) -> int:
    if value is None:
        return now_ms
    if isinstance(value, bool) or not isinstance(value, int):
        raise RequestError(f"timestamp must be whole milliseconds since 1970-01-01 UTC, got {value!r}")
    if not EARLIEST_MS <= value <= now_ms + MAX_CLOCK_SKEW_MS:
        raise RequestError(f"timestamp {value} is out of range (milliseconds from 2000 up to now)")
    return value


def _rating(value: object, required: bool) -> float | None:
    if value is None:
        if required:
            raise RequestError("a rating event needs a rating")
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise RequestError(f"rating must be a number, got {value!r}")
    return float(value)


def event_key(prefix: str, activity: Activity, received_ms: int) -> str:
    """``<prefix>/dt=<day received, UTC>/<timestamp>-<event_id>.json``.

    The folder is the day the event arrived, not the day it happened (which the
    caller may set years back): a folder older than the newest one ingest has
    read gets no new files, so ingest and refresh list only the recent folders.
    A delivery retried the same day writes the same key; one retried after
    midnight writes a second file, whose event ingest counts as a duplicate.
    """
    day = datetime.fromtimestamp(received_ms / 1000, tz=UTC).strftime("%Y-%m-%d")
    return f"{prefix.strip('/')}/{day_folder(day)}/{activity.timestamp_ms}-{activity.event_id}.json"


def event_record(activity: Activity, received_ms: int) -> dict:
    """The landed line; ``timestamp`` in milliseconds, as the Amazon 2023 reviews have it."""
    return {
        "event_id": activity.event_id,
        "event_type": activity.event_type,
        "user_id": activity.user_id,
        "item_id": activity.item_id,
        "rating": activity.rating,
        "timestamp": activity.timestamp_ms,
        "received_at": received_ms,
    }


def _record_activity(event: object, request: Request | None, settings: ApiSettings) -> tuple[int, dict]:
    now_ms = int(time.time() * 1000)
    activity = parse_activity(activity_payload(request, event), now_ms)
    if not settings.bucket:
        raise ConfigError("no bucket for activity events: set AMAZON_RECS_BUCKET or aws.bucket")
    key = event_key(settings.events_prefix, activity, now_ms)
    # The event lands first: it is the record the next batch run learns from, and
    # a failure below is retried by the caller without losing it.
    line = json.dumps(event_record(activity, now_ms), sort_keys=True) + "\n"
    _s3(settings).put_object(
        Bucket=settings.bucket, Key=key, Body=line.encode("utf-8"), ContentType="application/x-ndjson"
    )
    removed: dict[str, list[str]] = {}
    if activity.event_type in REMOVING_EVENTS:
        store = _store(settings)
        removed = list_edits.remove_from_lists(store.client, store.table, activity.user_id, activity.item_id)
    body = {
        "event_id": activity.event_id,
        "event_type": activity.event_type,
        "stored": f"s3://{settings.bucket}/{key}",
        "removed_from": removed,
    }
    return 200, body
