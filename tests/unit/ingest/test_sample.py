"""generate_sample: deterministic files, the promised counts, planted category taste."""

from __future__ import annotations

import gzip
import json
from collections import Counter, defaultdict
from pathlib import Path

import pytest

from amazon_recs.ingest.sample import CATALOGUE, META_FILE, REVIEWS_FILE, generate_sample

SIZES = dict(users=120, items=60, categories=6, mean_reviews_per_user=10, bad_line_rate=0.05)
REVIEW_FIELDS = {"user_id", "asin", "parent_asin", "rating", "timestamp", "title", "text"}


def read_lines(path: Path) -> list[str]:
    text = gzip.decompress(path.read_bytes()).decode("utf-8")
    assert text.endswith("\n")
    return text[:-1].split("\n")


def is_good_review(line: str) -> bool:
    """What ingest accepts, restated independently of it."""
    try:
        r = json.loads(line)
    except json.JSONDecodeError:
        return False
    return (
        isinstance(r, dict)
        and REVIEW_FIELDS <= r.keys()
        and isinstance(r["rating"], float)
        and 1.0 <= r["rating"] <= 5.0
        and isinstance(r["timestamp"], int)
        and r["timestamp"] > 0
    )


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    out = tmp_path_factory.mktemp("sample")
    summary = generate_sample(out, seed=7, **SIZES)
    reviews = read_lines(out / REVIEWS_FILE)
    products = [json.loads(line) for line in read_lines(out / META_FILE)]
    return summary, reviews, products


def test_writes_the_two_files_named_in_the_summary(tmp_path, generated):
    summary, _, _ = generated
    assert summary.reviews_path.name == REVIEWS_FILE
    assert summary.products_path.name == META_FILE
    assert summary.reviews_path.is_file() and summary.products_path.is_file()


def test_same_seed_gives_byte_identical_files(tmp_path):
    a = generate_sample(tmp_path / "a", seed=11, **SIZES)
    b = generate_sample(tmp_path / "b", seed=11, **SIZES)
    assert a.reviews_path.read_bytes() == b.reviews_path.read_bytes()
    assert a.products_path.read_bytes() == b.products_path.read_bytes()
    assert (a.review_lines, a.bad_review_lines, a.product_lines) == (
        b.review_lines,
        b.bad_review_lines,
        b.product_lines,
    )


def test_other_seed_gives_other_files(tmp_path):
    a = generate_sample(tmp_path / "a", seed=11, **SIZES)
    b = generate_sample(tmp_path / "b", seed=12, **SIZES)
    assert a.reviews_path.read_bytes() != b.reviews_path.read_bytes()
    assert a.products_path.read_bytes() != b.products_path.read_bytes()


def test_rewriting_into_the_same_folder_is_byte_identical(tmp_path):
    first = generate_sample(tmp_path, seed=3, **SIZES).reviews_path.read_bytes()
    assert generate_sample(tmp_path, seed=3, **SIZES).reviews_path.read_bytes() == first


def test_review_line_counts_are_as_promised(generated):
    summary, reviews, _ = generated
    good = [line for line in reviews if is_good_review(line)]
    bad = [line for line in reviews if not is_good_review(line)]
    assert summary.review_lines == len(reviews)
    assert summary.bad_review_lines == len(bad)
    # bad_line_rate is the share of extra lines, relative to the good ones.
    assert summary.bad_review_lines == int(len(good) * SIZES["bad_line_rate"])
    assert summary.bad_review_lines > 0
    assert "" not in reviews


def test_every_user_is_present_with_at_least_four_reviews(generated):
    summary, reviews, _ = generated
    per_user = Counter(json.loads(line)["user_id"] for line in reviews if is_good_review(line))
    assert summary.users == SIZES["users"] == len(per_user)
    assert min(per_user.values()) >= 4
    # Mean near the requested one (4 + exponential, capped).
    assert 6 <= sum(per_user.values()) / len(per_user) <= 14


def test_bad_lines_are_of_the_planted_kinds(generated):
    _, reviews, _ = generated
    kinds = Counter()
    for line in reviews:
        if is_good_review(line):
            continue
        try:
            r = json.loads(line)
        except json.JSONDecodeError:
            kinds["truncated"] += 1
            continue
        if isinstance(r, list):
            kinds["array"] += 1
        elif "user_id" not in r:
            kinds["no user"] += 1
        elif "timestamp" not in r:
            kinds["no timestamp"] += 1
        elif r["rating"] == "five stars":
            kinds["text rating"] += 1
        elif r["rating"] == 9.0:
            kinds["rating 9"] += 1
        else:
            kinds[f"unexpected: {line[:80]}"] += 1
    assert set(kinds) == {"truncated", "array", "no user", "no timestamp", "text rating", "rating 9"}
    assert max(kinds.values()) - min(kinds.values()) <= 1  # made in rotation


def test_product_lines_are_as_promised(tmp_path, generated):
    summary, _, products = generated
    assert summary.items == SIZES["items"]
    assert summary.product_lines == len(products) == SIZES["items"]
    # One product in a hundred has no metadata, as in real exports.
    big = generate_sample(tmp_path, users=5, items=250, categories=3, seed=1)
    assert big.product_lines == len(read_lines(big.products_path)) == 248


def test_every_product_line_has_parent_asin_title_and_categories(generated):
    _, _, products = generated
    used = list(CATALOGUE)[: SIZES["categories"]]
    for p in products:
        assert isinstance(p["parent_asin"], str) and p["parent_asin"]
        assert isinstance(p["title"], str) and p["title"].strip()
        assert isinstance(p["categories"], list) and p["categories"]
        assert p["categories"][-1] in used
    assert len({p["parent_asin"] for p in products}) == len(products)
    assert {p["categories"][-1] for p in products} == set(used)


def test_reviews_point_at_known_products(generated):
    _, reviews, products = generated
    known = {p["parent_asin"] for p in products}
    for line in filter(is_good_review, reviews):
        r = json.loads(line)
        assert r["parent_asin"] in known
        assert r["asin"].startswith(r["parent_asin"])


def test_users_prefer_their_categories(generated):
    _, reviews, products = generated
    category = {p["parent_asin"]: p["categories"][-1] for p in products}
    per_user: dict[str, list[str]] = defaultdict(list)
    for line in filter(is_good_review, reviews):
        r = json.loads(line)
        per_user[r["user_id"]].append(category[r["parent_asin"]])

    def share(cats: list[str], top: int) -> float:
        return sum(n for _, n in Counter(cats).most_common(top)) / len(cats)

    users = len(per_user)
    # With 6 categories drawn uniformly, about 1 user in 15 would pass the first test.
    assert sum(share(c, 1) > 0.5 for c in per_user.values()) >= 0.6 * users
    # Two users in five have two favourites: the top two cover most reviews.
    assert sum(share(c, 2) >= 0.75 for c in per_user.values()) >= 0.8 * users


def test_ratings_are_higher_in_the_users_main_category(generated):
    _, reviews, products = generated
    category = {p["parent_asin"]: p["categories"][-1] for p in products}
    per_user: dict[str, list[tuple[str, float]]] = defaultdict(list)
    for line in filter(is_good_review, reviews):
        r = json.loads(line)
        per_user[r["user_id"]].append((category[r["parent_asin"]], r["rating"]))
    inside, outside = [], []
    for rows in per_user.values():
        main = Counter(c for c, _ in rows).most_common(1)[0][0]
        for c, rating in rows:
            (inside if c == main else outside).append(rating)
    assert sum(inside) / len(inside) > sum(outside) / len(outside) + 0.5
