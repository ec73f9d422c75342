"""The lists and their context read from the gold Delta tables, without Spark.

``GoldTableStore`` answers like ``dynamodb.ServingStore`` (``get_recommendations``,
``current_version``) from ``gold/user_recommendations`` (and the lists ``refresh``
recomputed since, in ``gold/refreshed_recommendations``), local or s3:// through
``deltalake``, and adds what an app shows beside a list: the user's history, the
evaluation metrics and sample users.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from amazon_recs.config import Config
from amazon_recs.serving.interface import BackendUnavailable, Recommendations, ServingError

SERVED_TABLE = "gold/user_recommendations"
FALLBACK_TABLE = "gold/popular_fallback"
# The lists ``refresh`` recomputed since the export, in SERVED_TABLE's layout: read first.
# A small table of its own, so a refresh of a thousand users does not rewrite every
# user's lists. Kept per version like the others: an export empties its own version's.
REFRESHED_TABLE = "gold/refreshed_recommendations"
# One row per publish (model_version, published_at), appended by the export once
# the version's tables are whole: the last row names the version readers serve.
VERSIONS_TABLE = "gold/versions"
# The gold tables that hold one partition per model version (export.keep_versions kept).
VERSIONED_TABLES = (
    "gold/recommendations",
    SERVED_TABLE,
    REFRESHED_TABLE,
    FALLBACK_TABLE,
    "gold/metrics",
)
UNNAMED = {"title": None, "category": None}  # an interaction with a product silver/items lacks


def delta_storage_options(config: Config, path: str) -> dict[str, str] | None:
    """deltalake's options for ``path``: region and endpoint for s3://, nothing for local disk.

    Credentials are not here: deltalake takes them from the AWS environment variables.
    """
    if not path.startswith(("s3://", "s3a://")):
        return None
    options = {"AWS_REGION": config.require("aws.region")}
    endpoint = config.require("aws.s3_endpoint")
    if endpoint:
        options["AWS_ENDPOINT_URL"] = endpoint
        if endpoint.startswith("http://"):
            options["AWS_ALLOW_HTTP"] = "true"
    return options


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class GoldTableStore:
    """The lists and their context from the warehouse's Delta tables, without Spark.

    The same ``get_recommendations``/``current_version`` as ``ServingStore``, read
    from ``gold/user_recommendations`` (unknown users get ``gold/popular_fallback``,
    the list the export also publishes to DynamoDB), plus what an app shows beside a
    list: the user's history, ``gold/metrics`` and sample users. Tables are loaded
    once, on first use, and kept: a store is one snapshot; make a new one to see a
    newer run.
    """

    def __init__(self, warehouse: str, storage_options: dict[str, str] | None = None):
        self.warehouse = warehouse.rstrip("/")
        self.storage_options = storage_options
        self._cache: dict[tuple, Any] = {}
        self._lock = threading.RLock()  # the app's sessions share a store

    @classmethod
    def from_config(cls, config: Config) -> GoldTableStore:
        warehouse = config.require("paths.warehouse")
        return cls(warehouse, delta_storage_options(config, warehouse))

    @property
    def source(self) -> str:
        return f"gold tables under {self.warehouse}"

    # The store interface.

    def current_version(self) -> dict | None:
        """The version the export published last (``gold/versions``' newest row), with
        when; a warehouse exported before that table existed holds one version, stamped
        with its serving table's last commit."""
        key = ("current",)
        with self._lock:
            if key not in self._cache:
                self._cache[key] = self._current_version()
            return self._cache[key]

    def _current_version(self) -> dict | None:
        if self._exists(VERSIONS_TABLE):
            rows = self._table(VERSIONS_TABLE, ["model_version", "published_at"]).to_pylist()
            if not rows:
                return None
            latest = max(rows, key=lambda r: (r["published_at"], r["model_version"]))
            published = latest["published_at"]
            if published.tzinfo is None:
                published = published.replace(tzinfo=UTC)
            return {
                "model_version": latest["model_version"],
                "generated_at": published.astimezone(UTC).isoformat(timespec="seconds"),
            }
        versions = self._table(SERVED_TABLE, ["model_version"]).column("model_version").unique().to_pylist()
        if not versions:
            return None
        committed = self._commit_time(SERVED_TABLE)
        return {"model_version": sorted(versions)[-1], "generated_at": committed}

    def get_recommendations(self, user_id: str, model: str) -> Recommendations:
        """The user's list as the export wrote it (ordered by rank), or the popular fallback.

        Raises:
            ServingError: a table is missing (the pipeline has not run) or empty.
            BackendUnavailable: a table could not be read.
        """
        import pyarrow.compute as pc

        pointer = self.current_version()
        if pointer is None:
            raise ServingError(f"{self._path(SERVED_TABLE)} is empty: run the export stage")
        rows = []
        refreshed = [REFRESHED_TABLE] if self._exists(REFRESHED_TABLE) else []
        for name in (*refreshed, SERVED_TABLE):
            table = self._table(name, ["user_id", "model_version", "items"], model, pointer["model_version"])
            rows = table.filter(pc.equal(table["user_id"], user_id)).to_pylist()
            if rows:
                break
        if rows:
            items = sorted(rows[0]["items"], key=lambda i: i["rank"])
            return Recommendations(
                user_id, model, rows[0]["model_version"], pointer["generated_at"], items, False
            )
        version = pointer["model_version"]
        return Recommendations(user_id, model, version, pointer["generated_at"], self.popular(version), True)

    # What the app shows beside a list.

    def popular(self, version: str) -> list[dict]:
        """``version``'s popular list, as the export wrote it to ``gold/popular_fallback``."""
        rows = self._table(FALLBACK_TABLE, None, version=version).to_pylist()
        if not rows:
            raise ServingError(f"{self._path(FALLBACK_TABLE)} has no list for version {version}")
        ranked = sorted(rows, key=lambda r: r["rank"])
        return [{k: v for k, v in r.items() if k != "model_version"} for r in ranked]

    def history(self, user_id: str) -> list[dict]:
        """The user's interactions, newest first: ts, item_id, title, category, rating, split."""
        import pyarrow.compute as pc

        interactions = self._table("silver/interactions", ["user_id", "item_id", "rating", "ts", "split"])
        mine = interactions.filter(pc.equal(interactions["user_id"], user_id))
        rows = mine.sort_by([("ts", "descending"), ("item_id", "ascending")]).to_pylist()
        names = self._items()
        return [
            {**{k: r[k] for k in ("ts", "item_id", "rating", "split")}, **names.get(r["item_id"], UNNAMED)}
            for r in rows
        ]

    def metrics(self) -> list[dict]:
        """The served version's ``gold/metrics`` rows (model, metric, k, value, users,
        model_version)."""
        pointer = self.current_version()
        if pointer is None:
            return []
        rows = self._table("gold/metrics", None, version=pointer["model_version"]).to_pylist()
        return sorted(rows, key=lambda r: (r["model"], r["metric"]))

    def sample_users(self, n: int) -> list[str]:
        """Up to ``n`` user ids with lists of the served version, spread evenly over the sorted ids."""
        pointer = self.current_version()
        version = pointer["model_version"] if pointer else None
        users = sorted(
            self._table(SERVED_TABLE, ["user_id"], version=version).column("user_id").unique().to_pylist()
        )
        step = max(1, len(users) // max(n, 1))
        return users[::step][:n]

    # Loading.

    def _path(self, name: str) -> str:
        return f"{self.warehouse}/{name}"

    def _table(
        self, name: str, columns: list[str] | None, model: str | None = None, version: str | None = None
    ):
        """Table ``name`` (its ``columns``), only ``model``'s and ``version``'s rows when
        given: partitions, so only their files are read."""
        path = self._path(name)
        key = ("table", path, tuple(columns or ()), model, version)
        with self._lock:
            if key not in self._cache:
                filters = [("model", "=", model)] if model else []
                if version is not None:
                    filters.append(("model_version", "=", version))
                filters = filters or None
                self._cache[key] = self._reading(
                    path, lambda t: t.to_pyarrow_table(columns=columns, filters=filters)
                )
            return self._cache[key]

    def _exists(self, name: str) -> bool:
        key = ("exists", self._path(name))
        with self._lock:
            if key not in self._cache:
                try:
                    self._reading(self._path(name), lambda t: t.version())
                    self._cache[key] = True
                except ServingError:
                    self._cache[key] = False
            return self._cache[key]

    def _commit_time(self, name: str) -> str:
        path = self._path(name)
        key = ("commit", path)
        with self._lock:
            if key not in self._cache:
                ms = self._reading(path, lambda t: t.history(1)[0]["timestamp"])
                self._cache[key] = datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat(timespec="seconds")
            return self._cache[key]

    def _items(self) -> dict:
        """silver/items as {item_id: {title, category}}."""
        key = ("items",)
        with self._lock:
            if key not in self._cache:
                rows = self._table("silver/items", ["item_id", "title", "category"]).to_pylist()
                self._cache[key] = {
                    r["item_id"]: {"title": r["title"], "category": r["category"]} for r in rows
                }
            return self._cache[key]

    def _reading(self, path: str, read: Callable[[Any], Any]) -> Any:
        """``read(DeltaTable(path))`` with deltalake's and the storage's failures as typed errors."""
        from deltalake import DeltaTable
        from deltalake.exceptions import DeltaError, TableNotFoundError

        try:
            return read(DeltaTable(path, storage_options=self.storage_options))
        except TableNotFoundError:
            raise ServingError(f"no Delta table at {path}: run the pipeline first (make run)") from None
        except (DeltaError, OSError, ValueError) as exc:  # object store, protocol and arrow failures
            endpoint = (self.storage_options or {}).get("AWS_ENDPOINT_URL")
            where = f" (S3 endpoint {endpoint})" if endpoint else ""
            raise BackendUnavailable(f"cannot read {path}{where}: {_first_line(exc)}") from None
