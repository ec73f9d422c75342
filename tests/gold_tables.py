"""A small warehouse for the serving tests, written without Spark.

The tables the app and ``GoldTableStore`` read (``gold/user_recommendations``,
``gold/popular_fallback``, ``gold/metrics``, ``silver/interactions`` and
``silver/items``), in the schemas Spark writes them in (the arrow types deltalake
reads back from a ``make run``; tests/integration/test_pipeline.py checks the
store on the real thing). Products are named like the sample shop's; every list
is deterministic, so a test knows what each user must be shown.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
from deltalake import write_deltalake

from amazon_recs.ingest.sample import CATALOGUE
from tests.conftest import ROOT

VERSION = "fixture0001"
K = 10
CATEGORIES = list(CATALOGUE)[:4]
PER_CATEGORY = 14
USERS = [f"U{n:07d}" for n in range(1, 13)]
UNKNOWN_USER = "U9999999"
NO_METADATA_ITEM = "B000000099"  # reviewed, but missing from the product file
MARKDOWN_ITEM = 16  # in the history of USERS[4] and in the popular list
START = datetime(2024, 1, 1, tzinfo=UTC)

ITEM = pa.struct(
    [
        ("rank", pa.int32()),
        ("item_id", pa.string()),
        ("title", pa.string()),
        ("category", pa.string()),
        ("score", pa.float64()),
        ("reason", pa.string()),
    ]
)
SCHEMAS = {
    "gold/user_recommendations": pa.schema(
        [
            ("user_id", pa.string()),
            ("model", pa.string()),
            ("model_version", pa.string()),
            ("items", pa.list_(ITEM)),
        ]
    ),
    "gold/metrics": pa.schema(
        [
            ("model", pa.string()),
            ("metric", pa.string()),
            ("k", pa.int32()),
            ("value", pa.float64()),
            ("users", pa.int64()),
            ("ci_low", pa.float64()),
            ("ci_high", pa.float64()),
            ("model_version", pa.string()),
        ]
    ),
    "silver/interactions": pa.schema(
        [
            ("user_id", pa.string()),
            ("item_id", pa.string()),
            ("user_idx", pa.int32()),
            ("item_idx", pa.int32()),
            ("rating", pa.float64()),
            ("weight", pa.float64()),
            ("ts", pa.timestamp("us", tz="UTC")),
            ("split", pa.string()),
        ]
    ),
    "silver/items": pa.schema(
        [
            ("item_id", pa.string()),
            ("item_idx", pa.int32()),
            ("title", pa.string()),
            ("category", pa.string()),
            ("brand", pa.string()),
            ("price", pa.float64()),
            ("text", pa.string()),
            ("popularity", pa.int64()),
            ("has_metadata", pa.bool_()),
        ]
    ),
    "gold/popular_fallback": pa.schema([*((f.name, f.type) for f in ITEM), ("model_version", pa.string())]),
}
METRIC_VALUES = {  # model -> ndcg; the other metrics are scaled from it
    "hybrid": 0.21,
    "als": 0.2,
    "item_knn": 0.17,
    "content": 0.08,
    "popular": 0.055,
    "random": 0.009,
}


@dataclass
class Warehouse:
    """What was written, for tests to check against."""

    root: Path
    items: dict[str, dict]  # item_id -> item row
    history: dict[str, list[dict]]  # user -> interactions, newest first
    lists: dict[tuple[str, str], list[dict]]  # (user, model) -> ranked items
    popular: list[dict]  # the fallback: the k most popular products
    metrics: list[dict] = field(default_factory=list)

    @property
    def warehouse(self) -> Path:
        return self.root / "warehouse"

    @property
    def models(self) -> Path:
        return self.root / "models"

    def titles(self, user: str, model: str) -> list[str]:
        return [i["title"] or i["item_id"] for i in self.lists[(user, model)]]


def catalogue() -> list[dict]:
    rng = random.Random(3)
    items = []
    for c, category in enumerate(CATEGORIES):
        brands, words, nouns = CATALOGUE[category]
        for n in range(PER_CATEGORY):
            idx = c * PER_CATEGORY + n
            first, second = rng.sample(words, 2)
            title = (
                f"{brands[n % len(brands)]} {first.title()} {second.title()} {nouns[n % len(nouns)].title()}"
            )
            items.append({"item_id": f"B{idx:09d}", "item_idx": idx, "title": title, "category": category})
    # A title as real listings write them, full of Markdown's punctuation: the app must show it as it is.
    items[MARKDOWN_ITEM]["title"] = (
        "Maneline Argan Oil Shampoo | Sulfate-Free, 16 fl. oz (2-Pack) *Salon Formula*"
    )
    items.append({"item_id": NO_METADATA_ITEM, "item_idx": 99, "title": None, "category": None})
    return items


def interactions(items: list[dict]) -> list[dict]:
    """Each user rates nine products of one category and three of another; the latest two are test."""
    rng = random.Random(5)
    rows = []
    for u, user in enumerate(USERS):
        home = [i for i in items if i["category"] == CATEGORIES[u % len(CATEGORIES)]]
        away = [i for i in items if i["category"] == CATEGORIES[(u + 1) % len(CATEGORIES)]]
        picked = rng.sample(home, 9) + rng.sample(away, 3) + [items[-1]] * (u == 0)
        for n, item in enumerate(picked):
            rating = float(rng.choice([3, 4, 5, 5]))
            rows.append(
                {
                    "user_id": user,
                    "item_id": item["item_id"],
                    "user_idx": u,
                    "item_idx": item["item_idx"],
                    "rating": rating,
                    "weight": rating,
                    "ts": START + timedelta(days=7 * n + u, hours=n),
                    "split": "test" if n >= len(picked) - 2 else "train",
                }
            )
    return rows


def reason(model: str, item: dict, rated: list[dict]) -> str:
    if model == "random":
        return "a random pick (baseline)"
    same = [r for r in rated if r["category"] == item["category"]]
    if model == "popular" or not same:
        return f"popular in {item['category']}" if item["category"] else "popular with shoppers"
    return f"because you rated {same[0]['title']}"


def ranked(model: str, user: int, items: list[dict], seen: set[str], counts: dict[str, int]) -> list[dict]:
    """Ten unseen products in this model's order."""
    candidates = [i for i in items if i["item_id"] not in seen]
    home = CATEGORIES[user % len(CATEGORIES)]
    by_popularity = sorted(candidates, key=lambda i: (-counts.get(i["item_id"], 0), i["item_idx"]))
    if model == "popular":
        return by_popularity[:K]
    if model == "random":
        return random.Random(user).sample(candidates, K)
    in_home = [i for i in by_popularity if i["category"] == home]
    rest = [i for i in by_popularity if i["category"] != home]
    if model == "content":
        return (in_home[::-1] + rest)[:K]
    if model == "als":
        return (in_home + rest[::-1])[:K]
    if model == "item_knn":
        return (in_home[1:] + in_home[:1] + rest)[:K]
    als, content = in_home + rest[::-1], in_home[::-1] + rest  # hybrid: the two interleaved
    merged = [i for pair in zip(als, content, strict=True) for i in pair]
    return list({i["item_id"]: i for i in merged}.values())[:K]


def write(path: Path, name: str, rows: list[dict], partition_by: list[str] | None = None) -> None:
    table = pa.Table.from_pylist(rows, schema=SCHEMAS[name])
    write_deltalake(str(path), table, partition_by=partition_by, mode="overwrite")


def write_gold_tables(root: Path, version: str = VERSION) -> Warehouse:
    """The warehouse under ``root/warehouse``, every list in it from ``version``."""
    items = catalogue()
    by_id = {i["item_id"]: i for i in items}
    rows = interactions(items)
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["item_id"]] = counts.get(r["item_id"], 0) + 1

    lists: dict[tuple[str, str], list[dict]] = {}
    history: dict[str, list[dict]] = {}
    for u, user in enumerate(USERS):
        mine = [r for r in rows if r["user_id"] == user]
        history[user] = sorted(mine, key=lambda r: (r["ts"], r["item_id"]), reverse=True)
        rated = [by_id[r["item_id"]] for r in sorted(mine, key=lambda r: r["ts"]) if r["split"] == "train"]
        seen = {r["item_id"] for r in mine if r["split"] == "train"}
        for model in METRIC_VALUES:
            picks = ranked(model, u, items, seen, counts)
            lists[(user, model)] = [
                {  # the serving layout's fields, in its order
                    "rank": rank,
                    "item_id": p["item_id"],
                    "title": p["title"],
                    "category": p["category"],
                    "score": round(1.0 - rank / 20, 4),
                    "reason": reason(model, p, rated),
                }
                for rank, p in enumerate(picks, start=1)
            ]

    popularity = [
        {"item_idx": i["item_idx"], "score": counts.get(i["item_id"], 0) + i["item_idx"] / 1000}
        for i in items
    ]
    top = sorted(popularity, key=lambda p: (-p["score"], p["item_idx"]))[:K]
    by_idx = {i["item_idx"]: i for i in items}
    popular = [
        {
            "rank": rank,
            "item_id": by_idx[p["item_idx"]]["item_id"],
            "title": by_idx[p["item_idx"]]["title"],
            "category": by_idx[p["item_idx"]]["category"],
            "score": p["score"],
            "reason": reason("popular", by_idx[p["item_idx"]], []),
        }
        for rank, p in enumerate(top, start=1)
    ]
    metrics = [
        {
            "model": model,
            "metric": metric,
            "k": K,
            "value": ndcg * scale,
            "users": users,
            # A bootstrap interval around each mean over users, as the evaluate stage writes it.
            "ci_low": ndcg * scale * 0.9,
            "ci_high": ndcg * scale * 1.1,
            "model_version": version,
        }
        for model, ndcg in METRIC_VALUES.items()
        for prefix, users in (("", len(USERS)), ("light_", 2), ("heavy_", 1), ("cold_", 3))
        for metric, scale in {
            f"{prefix}ndcg": 1.0 if not prefix else 0.5,
            f"{prefix}precision": 0.3,
            f"{prefix}recall": 1.5,
            f"{prefix}map": 0.7,
            f"{prefix}hit_rate": 2.2,
            f"{prefix}mrr": 1.0,
        }.items()
    ] + [
        {
            "model": model,
            "metric": "coverage",
            "k": K,
            "value": value,
            "users": len(USERS),
            "ci_low": None,
            "ci_high": None,
            "model_version": version,
        }
        for model, value in {
            "hybrid": 0.95,
            "als": 0.93,
            "content": 0.99,
            "popular": 0.04,
            "random": 1.0,
        }.items()
    ]

    warehouse = Warehouse(root, by_id, history, lists, popular, metrics)
    served = [
        {
            "user_id": user,
            "model": model,
            "model_version": version,
            "items": listed,
        }
        for (user, model), listed in sorted(lists.items())
    ]
    write(warehouse.warehouse / "gold/user_recommendations", "gold/user_recommendations", served, ["model"])
    write(warehouse.warehouse / "gold/metrics", "gold/metrics", metrics)
    write(warehouse.warehouse / "silver/interactions", "silver/interactions", rows)
    item_rows = [
        {
            **i,
            "brand": i["title"].split()[0] if i["title"] else None,
            "price": None,
            "text": i["title"],
            "popularity": counts.get(i["item_id"], 0),
            "has_metadata": i["title"] is not None,
        }
        for i in items
    ]
    write(warehouse.warehouse / "silver/items", "silver/items", item_rows)
    fallback = [{**p, "model_version": version} for p in popular]
    write(warehouse.warehouse / "gold/popular_fallback", "gold/popular_fallback", fallback)
    return warehouse


def write_config(root: Path, warehouse: Warehouse | None = None, **settings: object) -> Path:
    """A config file extending conf/test.yaml with the paths under ``root`` and ``settings``
    (dotted keys, e.g. ``**{"export.dynamodb.enabled": True}``)."""
    import yaml

    data: dict = {"extends": str(ROOT / "conf" / "test.yaml")}
    base = warehouse.root if warehouse else root
    paths = {
        "warehouse": base / "warehouse",
        "models": base / "models",
        "raw": base / "raw",
        "reports": base / "reports",
    }
    for key, value in {**{f"paths.{k}": str(v) for k, v in paths.items()}, **settings}.items():
        node = data
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    path = root / "app-test.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path
