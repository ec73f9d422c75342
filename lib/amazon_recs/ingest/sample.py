"""A deterministic sample shop in the Amazon Reviews 2023 JSON-lines format.

The sample plants structure a recommender should find: every user prefers one
or two categories, product popularity is long-tailed inside each category, and
product text uses its category's vocabulary. A few malformed lines of the kinds
real exports contain are mixed in, so the reject path runs on every ``make run``.
"""

from __future__ import annotations

import gzip
import json
import random
from dataclasses import dataclass
from pathlib import Path

REVIEWS_FILE = "Sample_Shop.jsonl.gz"
META_FILE = "meta_Sample_Shop.jsonl.gz"

# category -> (brands, descriptive words, product nouns)
CATALOGUE = {
    "Skin Care": (
        ["Dermaluxe", "PureGlow", "Velour"],
        ["hydrating", "vitamin", "spf", "retinol", "gentle", "brightening"],
        ["moisturizer", "serum", "cleanser", "toner", "face cream"],
    ),
    "Hair Care": (
        ["Lockwell", "Silkroot", "Maneline"],
        ["argan", "volumizing", "sulfate-free", "keratin", "curl", "repair"],
        ["shampoo", "conditioner", "hair mask", "hair oil", "styling gel"],
    ),
    "Fragrance": (
        ["Aurelle", "Noctis", "Bloomhaus"],
        ["floral", "woody", "citrus", "musk", "amber", "vanilla"],
        ["eau de parfum", "cologne", "body mist", "perfume oil"],
    ),
    "Makeup": (
        ["Chromatic", "Velvetine", "Lumi"],
        ["matte", "long-wear", "shimmer", "pigmented", "waterproof", "nude"],
        ["lipstick", "mascara", "foundation", "eyeshadow palette", "blush"],
    ),
    "Nail Care": (
        ["Polishe", "Cuticura", "Lacquera"],
        ["gel", "quick-dry", "glossy", "chip-resistant", "pastel", "top-coat"],
        ["nail polish", "cuticle oil", "nail file", "base coat"],
    ),
    "Bath & Body": (
        ["Soakery", "Lathera", "Bodhi"],
        ["lavender", "exfoliating", "shea", "coconut", "soothing", "foaming"],
        ["body wash", "bath bomb", "body lotion", "sugar scrub"],
    ),
    "Men's Grooming": (
        ["Barbour & Co", "Ridge", "Steelman"],
        ["beard", "cedar", "close-shave", "menthol", "charcoal", "sandalwood"],
        ["beard oil", "shaving cream", "aftershave", "razor"],
    ),
    "Oral Care": (
        ["Brightbite", "Dentafresh", "Smileo"],
        ["whitening", "fluoride", "mint", "sensitive", "enamel", "charcoal"],
        ["toothpaste", "mouthwash", "electric toothbrush", "floss"],
    ),
    "Tools & Accessories": (
        ["Brushcraft", "Tressy", "Glamkit"],
        ["ceramic", "ionic", "travel", "bamboo", "rose-gold", "compact"],
        ["hair dryer", "makeup brush set", "flat iron", "mirror"],
    ),
    "Sun Care": (
        ["Solara", "Shorebreak", "Helio"],
        ["spf50", "reef-safe", "mineral", "sport", "tinted", "after-sun"],
        ["sunscreen", "sun stick", "aloe gel", "tanning oil"],
    ),
}

START_MS = 1_640_995_200_000  # 2022-01-01T00:00:00Z
DAY_MS = 86_400_000


@dataclass(frozen=True)
class SampleSummary:
    """What was written: files and line counts, including the planted bad lines."""

    reviews_path: Path
    products_path: Path
    review_lines: int
    bad_review_lines: int
    product_lines: int
    users: int
    items: int


@dataclass(frozen=True)
class _Product:
    parent_asin: str
    category: str
    brand: str
    words: tuple[str, ...]
    noun: str
    price: float | None


def generate_sample(
    out_dir: str | Path,
    *,
    users: int = 2000,
    items: int = 500,
    categories: int = 10,
    mean_reviews_per_user: int = 11,
    bad_line_rate: float = 0.002,
    seed: int = 7,
) -> SampleSummary:
    """Write ``Sample_Shop.jsonl.gz`` and ``meta_Sample_Shop.jsonl.gz`` into ``out_dir``.

    Args:
        out_dir: local folder; created if missing.
        users, items: how many reviewers and products.
        categories: how many of the built-in categories to use (at most 10).
        mean_reviews_per_user: average reviews per user (each has at least 4).
        bad_line_rate: share of extra malformed review lines.
        seed: the same seed writes byte-identical files.

    Returns:
        A summary of what was written.
    """
    rng = random.Random(seed)
    names = list(CATALOGUE)[: max(1, min(categories, len(CATALOGUE)))]
    products = _make_products(rng, names, items)
    by_category = {name: [p for p in products if p.category == name] for name in names}
    # Long tail: the i-th product of a category is drawn with weight 1/(i+1)^0.9.
    weights = {name: [1 / (i + 1) ** 0.9 for i in range(len(ps))] for name, ps in by_category.items()}

    review_lines: list[str] = []
    for u in range(users):
        user_id = f"U{u:06d}{rng.choice('ABCDEFGHJKLMNPQRSTUVWXYZ')}"
        review_lines.extend(_user_reviews(rng, user_id, names, by_category, weights, mean_reviews_per_user))
    bad = _bad_lines(rng, review_lines, int(len(review_lines) * bad_line_rate))
    for line in bad:
        review_lines.insert(rng.randrange(len(review_lines) + 1), line)

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    reviews_path, products_path = out / REVIEWS_FILE, out / META_FILE
    # Products without metadata exist in real exports: leave out one in a hundred.
    meta_lines = [_meta_line(rng, p) for i, p in enumerate(products) if i % 100 != 99]
    _write_gz(reviews_path, review_lines)
    _write_gz(products_path, meta_lines)
    return SampleSummary(
        reviews_path, products_path, len(review_lines), len(bad), len(meta_lines), users, items
    )


def _make_products(rng: random.Random, names: list[str], items: int) -> list[_Product]:
    products = []
    for i in range(items):
        category = names[i % len(names)]
        brands, words, nouns = CATALOGUE[category]
        products.append(
            _Product(
                parent_asin=f"B0{i:08d}",
                category=category,
                brand=rng.choice(brands),
                words=tuple(rng.sample(words, 2)),
                noun=rng.choice(nouns),
                price=None if rng.random() < 0.1 else round(rng.uniform(3, 80), 2),
            )
        )
    return products


def _user_reviews(rng, user_id, names, by_category, weights, mean_reviews) -> list[str]:
    favourites = rng.sample(names, 2 if rng.random() < 0.4 else 1)
    n = 4 + min(int(rng.expovariate(1 / max(mean_reviews - 4, 1))), 60)
    first_day = rng.randrange(0, 600)
    span_days = rng.randrange(30, 300)
    chosen: dict[str, _Product] = {}
    for _ in range(n * 3):
        if len(chosen) == n:
            break
        liked = rng.random() < 0.85
        category = rng.choice(favourites) if liked else rng.choice(names)
        product = rng.choices(by_category[category], weights[category])[0]
        chosen.setdefault(product.parent_asin, product)
    days = sorted(rng.randrange(first_day, first_day + span_days) for _ in chosen)
    lines = []
    for day, product in zip(days, chosen.values(), strict=True):
        in_taste = product.category in favourites
        rating = rng.choice([4, 5, 5, 5]) if in_taste else rng.choice([1, 2, 3, 3, 4])
        variant = rng.choice(["", "-1", "-2"])
        record = {
            "rating": float(rating),
            "title": f"{'Love' if rating >= 4 else 'Not for me'}: {product.noun}",
            "text": f"The {product.words[0]} {product.noun} from {product.brand} "
            f"{'works great' if rating >= 4 else 'was disappointing'}.",
            "images": [],
            "asin": f"{product.parent_asin}{variant}",
            "parent_asin": product.parent_asin,
            "user_id": user_id,
            "timestamp": START_MS + day * DAY_MS + rng.randrange(DAY_MS),
            "helpful_vote": rng.choice([0, 0, 0, 1, 2, 5]),
            "verified_purchase": rng.random() < 0.9,
        }
        lines.append(json.dumps(record))
    return lines


def _bad_lines(rng: random.Random, good: list[str], count: int) -> list[str]:
    """Malformed lines of the kinds real exports contain, in rotation."""
    makers = [
        lambda r: json.dumps(r)[: len(json.dumps(r)) // 2],  # truncated JSON
        lambda r: json.dumps({k: v for k, v in r.items() if k != "user_id"}),
        lambda r: json.dumps({**r, "rating": "five stars"}),
        lambda r: json.dumps({**r, "rating": 9.0}),
        lambda r: json.dumps({k: v for k, v in r.items() if k != "timestamp"}),
        lambda r: json.dumps([r]),  # JSON, but not an object
    ]
    return [makers[i % len(makers)](json.loads(rng.choice(good))) for i in range(count)]


def _meta_line(rng: random.Random, p: _Product) -> str:
    title = f"{p.brand} {p.words[0].title()} {p.words[1].title()} {p.noun.title()}"
    record = {
        "main_category": "All Beauty",
        "title": title,
        "average_rating": round(rng.uniform(3.0, 5.0), 1),
        "rating_number": rng.randrange(1, 5000),
        "features": [f"{w.capitalize()} formula" for w in p.words],
        "description": [f"A {p.words[0]}, {p.words[1]} {p.noun} for everyday use by {p.brand}."],
        "price": p.price,
        "images": [],
        "videos": [],
        "store": p.brand,
        "categories": ["Beauty & Personal Care", p.category],
        "details": {"Brand": p.brand},
        "parent_asin": p.parent_asin,
        "bought_together": None,
    }
    return json.dumps(record)


def _write_gz(path: Path, lines: list[str]) -> None:
    # mtime=0 keeps the gzip header, and so the file, byte-identical across runs.
    with open(path, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as gz:
        gz.write(("\n".join(lines) + "\n").encode("utf-8"))
