"""generate_shop: exact counts, readable lines, the planted structure, determinism, layout."""

from __future__ import annotations

import hashlib
import json
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest

from amazon_recs.ingest.shop import (
    END_MS,
    FIRST_MS,
    HEAVY_SHARE,
    SIZES,
    generate_shop,
    generate_size,
    user_review_counts,
)

SMALL = dict(reviews=5_000, users=1_500, items=800, parts=3, heavy_users=1, workers=1)
REVIEW_TYPES = {
    "user_id": str,
    "asin": str,
    "parent_asin": str,
    "rating": float,
    "timestamp": int,
    "title": str,
    "text": str,
    "verified_purchase": bool,
    "helpful_vote": int,
}
META_TYPES = {
    "parent_asin": str,
    "title": str,
    "features": list,
    "description": list,
    "categories": list,
    "main_category": str,
    "store": str,
}


def part_files(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.jsonl"))


def read_records(folder: Path) -> list[dict]:
    records = []
    for path in part_files(folder):
        text = path.read_text(encoding="utf-8")
        assert text.endswith("\n")
        records.extend(json.loads(line) for line in text[:-1].split("\n"))
    return records


def read_records_of(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def digest(out: Path) -> dict[str, str]:
    return {
        str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(out.rglob("*.jsonl"))
    }


@pytest.fixture(scope="module")
def shop(tmp_path_factory):
    out = tmp_path_factory.mktemp("shop")
    summary = generate_shop(out, seed=7, **SMALL)
    return summary, read_records(out / "reviews"), read_records(out / "meta")


def test_counts_written_match_the_summary(shop):
    summary, reviews, meta = shop
    per_user = Counter(r["user_id"] for r in reviews)
    assert len(reviews) == summary.review_lines == SMALL["reviews"]
    assert summary.bad_review_lines == 0
    assert len(meta) == summary.product_lines == summary.items == SMALL["items"]
    assert len(per_user) == summary.users == SMALL["users"]
    assert max(per_user.values()) == summary.heaviest_user_reviews


def test_part_files_and_globs(shop):
    summary, _, _ = shop
    names = [f"part-{p:05d}.jsonl" for p in range(SMALL["parts"])]
    for sub, glob in (("reviews", summary.reviews_glob), ("meta", summary.products_glob)):
        assert glob == str(summary.out_dir / sub / "*.jsonl")
        files = part_files(summary.out_dir / sub)
        assert [p.name for p in files] == names
        assert all(p.stat().st_size > 0 for p in files)
    assert summary.parts == SMALL["parts"]
    assert sorted(p.name for p in summary.out_dir.iterdir()) == ["meta", "reviews"]


def test_every_line_has_the_fields_the_amazon2023_reader_needs(shop):
    _, reviews, meta = shop
    for r in reviews:
        for field, kind in REVIEW_TYPES.items():
            assert isinstance(r[field], kind), (field, r)
        assert r["user_id"] and r["parent_asin"] and r["asin"].startswith(r["parent_asin"])
        assert 1.0 <= r["rating"] <= 5.0 and r["helpful_vote"] >= 0
    for m in meta:
        for field, kind in META_TYPES.items():
            assert isinstance(m[field], kind), (field, m)
        assert m["features"] and m["description"] and m["categories"]
        assert all(isinstance(s, str) and s for s in m["features"] + m["description"] + m["categories"])
        assert m["price"] is None or (isinstance(m["price"], float) and m["price"] > 0)


def test_every_review_names_a_product_with_metadata(shop):
    _, reviews, meta = shop
    products = [m["parent_asin"] for m in meta]
    assert len(set(products)) == len(products)
    assert {r["parent_asin"] for r in reviews} <= set(products)


def test_product_titles_are_distinct(shop):
    _, _, meta = shop
    assert len({m["title"] for m in meta}) == len(meta)


def test_a_user_reviews_a_product_at_most_once(shop):
    _, reviews, _ = shop
    pairs = Counter((r["user_id"], r["parent_asin"]) for r in reviews)
    assert pairs.most_common(1)[0][1] == 1


def test_user_activity_is_skewed_with_heavy_users(shop):
    _, reviews, _ = shop
    counts = np.array(list(Counter(r["user_id"] for r in reviews).values()))
    assert np.median(counts) <= 2
    assert np.mean(counts <= 2) >= 0.6
    # The one heavy user gets 1,000-5,000 reviews, cut to HEAVY_SHARE of all reviews here.
    assert counts.max() >= HEAVY_SHARE * SMALL["reviews"] >= 300
    assert counts.max() >= 20 * counts.mean()


def test_item_popularity_is_long_tailed(shop):
    _, reviews, meta = shop
    per_item = np.sort(np.array(list(Counter(r["parent_asin"] for r in reviews).values())))[::-1]
    top = len(meta) // 10
    assert per_item[:top].sum() / len(reviews) >= 0.3  # three times a uniform shop's share


def test_users_keep_to_one_or_two_favourite_categories(shop):
    _, reviews, meta = shop
    category = {m["parent_asin"]: m["categories"][-1] for m in meta}
    by_user = defaultdict(list)
    for r in reviews:
        by_user[r["user_id"]].append((category[r["parent_asin"]], r["rating"]))
    shares, liked, other = [], [], []
    for rows in by_user.values():
        if len(rows) < 8:
            continue
        top2 = [c for c, _ in Counter(c for c, _ in rows).most_common(2)]
        shares.append(sum(c in top2 for c, _ in rows) / len(rows))
        liked += [r for c, r in rows if c in top2]
        other += [r for c, r in rows if c not in top2]
    assert len(shares) >= 50
    assert np.mean(shares) >= 0.75  # ten categories: without taste, two hold far less
    assert np.mean(liked) > np.mean(other) + 0.5


def test_timestamps_in_range_and_each_user_in_time_order(shop):
    _, reviews, _ = shop
    stamps = [r["timestamp"] for r in reviews]
    assert FIRST_MS <= min(stamps) and max(stamps) < END_MS
    assert max(stamps) - min(stamps) > 3 * 365 * 86_400_000  # spread over years
    last: dict[str, int] = {}
    for r in reviews:
        assert r["timestamp"] >= last.get(r["user_id"], 0)
        last[r["user_id"]] = r["timestamp"]


def test_each_user_lives_in_one_part(shop):
    summary, _, _ = shop
    seen: dict[str, str] = {}
    for path in part_files(summary.out_dir / "reviews"):
        for r in read_records_of(path):
            assert seen.setdefault(r["user_id"], path.name) == path.name


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path):
    args = dict(reviews=3_000, users=900, items=400, parts=2, bad_line_rate=0.02, workers=1)
    generate_shop(tmp_path / "a", seed=11, **args)
    generate_shop(tmp_path / "b", seed=11, **args)
    generate_shop(tmp_path / "c", seed=12, **args)
    a, b, c = (digest(tmp_path / x) for x in "abc")
    assert len(a) == 4 and a == b
    assert all(a[name] != c[name] for name in a)


def test_output_does_not_depend_on_worker_processes(tmp_path):
    args = dict(reviews=3_000, users=900, items=400, parts=3, seed=5)
    generate_shop(tmp_path / "one", workers=1, **args)
    generate_shop(tmp_path / "two", workers=2, **args)
    assert digest(tmp_path / "one") == digest(tmp_path / "two")


def test_bad_lines_are_extra_and_of_the_planted_kinds(tmp_path):
    summary = generate_shop(tmp_path, reviews=4_000, users=1_000, items=500, bad_line_rate=0.05, workers=1)
    lines = [
        line for p in part_files(tmp_path / "reviews") for line in p.read_text(encoding="utf-8").splitlines()
    ]
    assert len(lines) == summary.review_lines == 4_000 + summary.bad_review_lines
    assert summary.bad_review_lines == pytest.approx(200, abs=2)
    good, seen, kinds = 0, set(), Counter()
    for line in lines:
        try:
            r = json.loads(line)
        except json.JSONDecodeError:
            kinds["truncated"] += 1
            continue
        if not isinstance(r, dict):
            kinds["not an object"] += 1
        elif "user_id" not in r or "timestamp" not in r:
            kinds["missing field"] += 1
        elif not isinstance(r["rating"], float) or not 1 <= r["rating"] <= 5:
            kinds["bad rating"] += 1
        elif (r["user_id"], r["parent_asin"]) in seen:
            kinds["duplicate"] += 1
        else:
            seen.add((r["user_id"], r["parent_asin"]))
            good += 1
    assert good == 4_000
    assert sum(kinds.values()) == summary.bad_review_lines
    assert len(kinds) == 5 and min(kinds.values()) >= 10


def test_every_pair_once_when_reviews_fill_the_catalogue(tmp_path):
    # 5 users x 30 products = 150 reviews: only exact sampling without replacement fits.
    summary = generate_shop(tmp_path, reviews=150, users=5, items=30, workers=1)
    reviews = read_records(tmp_path / "reviews")
    pairs = {(r["user_id"], r["parent_asin"]) for r in reviews}
    assert len(reviews) == len(pairs) == 150
    assert summary.heaviest_user_reviews == 30


@pytest.mark.parametrize(
    ("reviews", "users", "items"),
    [(150, 3, 100), (150, 2, 100), (10, 10, 1), (60, 7, 9), (1_000, 40, 25), (333, 300, 2)],
)
def test_awkward_shapes_still_give_exact_counts(tmp_path, reviews, users, items):
    summary = generate_shop(tmp_path, reviews=reviews, users=users, items=items, workers=1)
    rows = read_records(tmp_path / "reviews")
    per_user = Counter(r["user_id"] for r in rows)
    assert len(rows) == summary.review_lines == reviews
    assert len(per_user) == users and max(per_user.values()) <= items
    assert len({(r["user_id"], r["parent_asin"]) for r in rows}) == reviews
    assert len(read_records(tmp_path / "meta")) == items


def test_rewriting_with_fewer_parts_leaves_no_stale_parts(tmp_path):
    generate_shop(tmp_path, reviews=2_000, users=600, items=200, parts=4, workers=1)
    summary = generate_shop(tmp_path, reviews=2_000, users=600, items=200, workers=1)
    assert summary.parts == 2  # the default for small shops
    assert len(part_files(tmp_path / "reviews")) == len(part_files(tmp_path / "meta")) == 2
    assert len(read_records(tmp_path / "reviews")) == summary.review_lines == 2_000


@pytest.mark.parametrize("size", list(SIZES))
def test_preset_user_activity(size):
    preset = SIZES[size]
    rng = np.random.default_rng([7, 0])
    counts = user_review_counts(
        rng, preset["reviews"], preset["users"], preset["items"], preset["heavy_users"]
    )
    assert counts.size == preset["users"] and counts.sum() == preset["reviews"]
    assert counts.min() >= 1 and counts.max() <= min(5_000, preset["items"])
    assert np.median(counts) <= 2 and np.mean(counts <= 3) >= 0.75
    # The heavy users, and nobody else, write more than a regular user's 1,000 at most.
    assert (np.sort(counts)[-preset["heavy_users"] :] >= 1_000).all()
    assert np.count_nonzero(counts > 1_000) <= preset["heavy_users"]


def test_presets_are_sized_like_real_categories():
    assert list(SIZES) == ["100k", "1m", "10m"]
    for preset in SIZES.values():
        assert 3 <= preset["reviews"] / preset["users"] <= 6
        assert preset["items"] <= 500_000


def test_unknown_size_and_impossible_shops_are_refused(tmp_path):
    with pytest.raises(ValueError, match="100k"):
        generate_size(tmp_path, "huge")
    with pytest.raises(ValueError):
        generate_shop(tmp_path, reviews=10, users=20, items=5)
    with pytest.raises(ValueError):
        generate_shop(tmp_path, reviews=101, users=10, items=10)


def test_the_command_line_writes_a_large_shop(tmp_path, capsys):
    from amazon_recs import cli
    from amazon_recs.ingest.shop import SIZES

    assert cli.SHOP_SIZES == tuple(SIZES)  # the choices the console offers without importing numpy
    assert (
        cli.main(["sample", "--out", str(tmp_path), "--reviews", "3000", "--users", "600", "--items", "200"])
        == 0
    )
    printed = capsys.readouterr().out
    assert "wrote 3,000 reviews by 600 users of 200 products" in printed
    assert f"input.reviews={tmp_path}/reviews/*.jsonl" in printed
    lines = sum(len(p.read_text().splitlines()) for p in (tmp_path / "reviews").glob("*.jsonl"))
    assert lines == 3000
