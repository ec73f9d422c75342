"""A streaming generator of large, realistic shops in the Amazon Reviews 2023 format.

``sample`` writes a small shop in memory; this module writes shops of 100k to
10M reviews for scale benchmarks, in bounded memory (users are generated in numpy
chunks and their lines written as they are made) and, optionally, in worker
processes. The lines have exactly the shape of ``sample``'s, so the pipeline's
``amazon2023`` reader reads them unchanged.

Layout written under ``out_dir`` (uncompressed JSON lines, which Spark splits)::

    reviews/part-00000.jsonl ... reviews/part-<parts-1>.jsonl
    meta/part-00000.jsonl    ... meta/part-<parts-1>.jsonl

Point ``input.reviews`` at ``<out>/reviews/*.jsonl`` and ``input.products`` at
``<out>/meta/*.jsonl`` (``ShopSummary.reviews_glob`` / ``products_glob``). Part
files of an earlier run in those folders are removed first. Each review part
holds a contiguous range of users, all of a user's reviews in time order; the
meta parts hold contiguous ranges of products, and every product has metadata.

The structure a recommender should find:

- reviews per user follow a truncated power law (P(k) ~ k^-a, ``a`` fitted to
  the requested reviews/users; most users write 1 or 2 reviews), plus a handful
  of heavy users with 1,000-5,000 reviews each (fewer in small catalogues);
- every user prefers one or two categories (85% of their reviews) and rates
  those higher; item popularity is Zipf-like (exponent ``ITEM_ZIPF``) inside
  each category, and categories differ in size and popularity;
- a user reviews a product at most once (by ``parent_asin``); only the planted
  bad lines (``bad_line_rate``) break that, with exact duplicate lines;
- timestamps (ms) lie in 2018-01-01 .. 2023-12-31 UTC; each user is active over
  a window that grows with their number of reviews;
- product texts come from the category's vocabulary and every title carries a
  distinct model token, so no two products share a title.

Deterministic: the same arguments write byte-identical files. Every part is
generated from its own random stream, seeded by (seed, part), so the output does
not depend on the number of worker processes or their scheduling.
"""

from __future__ import annotations

import itertools
import json
import math
import multiprocessing
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from amazon_recs.ingest.sample import CATALOGUE, DAY_MS, START_MS

REVIEWS_DIR = "reviews"
META_DIR = "meta"
PART_GLOB = "*.jsonl"

# The preset shops, modelled on real Amazon categories: most users have 1-3 reviews.
SIZES: dict[str, dict[str, int]] = {
    "100k": {"reviews": 100_000, "users": 30_000, "items": 5_000, "heavy_users": 2},
    "1m": {"reviews": 1_000_000, "users": 250_000, "items": 50_000, "heavy_users": 5},
    "10m": {"reviews": 10_000_000, "users": 2_000_000, "items": 500_000, "heavy_users": 10},
}

# START_MS is 2022-01-01; the shop spans the six years 2018-01-01 .. 2024-01-01 (exclusive).
FIRST_MS = START_MS - (365 + 365 + 366 + 365) * DAY_MS  # 2018-01-01T00:00:00Z
END_MS = START_MS + (365 + 365) * DAY_MS  # 2024-01-01T00:00:00Z
_SPAN_DAYS = (END_MS - FIRST_MS) // DAY_MS

ITEM_ZIPF = 0.9  # popularity of the r-th product of a category ~ 1 / r**ITEM_ZIPF
TASTE_SHARE = 0.85  # share of a user's reviews in their favourite categories
TWO_FAVOURITES = 0.4  # share of users with two favourite categories
REGULAR_CAP = 1_000  # most reviews of a user who is not a heavy user (at least)
HEAVY_RANGE = (1_000, 5_000)  # a heavy user's reviews, catalogue permitting
HEAVY_SHARE = 0.1  # heavy users write at most this share of all reviews
CHUNK_REVIEWS = 1 << 16  # reviews generated per numpy chunk
_MAX_REDRAWS = 40  # rounds of redrawing repeated (user, item) pairs before the exact fallback

_ROOT_CATEGORY = "Beauty & Personal Care"
_MAIN_CATEGORY = "All Beauty"
_SIZE_WORDS = [
    "30 ml",
    "50 ml",
    "100 ml",
    "200 ml",
    "250 ml",
    "travel size",
    "value size",
    "2-pack",
    "3-pack",
]
_BASE36 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"
_CODE_MOD = 36**6  # model codes are 6 base-36 digits, a bijection of the product number
_CODE_MUL = 1_345_325_471  # coprime with 36**6 (near its golden ratio, so codes look scattered)


@dataclass(frozen=True)
class ShopSummary:
    """What was written: where, and how many of each."""

    out_dir: Path
    reviews_glob: str
    products_glob: str
    review_lines: int  # lines in the review parts, bad lines included
    bad_review_lines: int
    product_lines: int
    users: int
    items: int
    heaviest_user_reviews: int
    parts: int


def generate_size(
    out_dir: str | Path, size: str, seed: int = 7, *, workers: int | None = None
) -> ShopSummary:
    """Write the preset shop ``size`` (a key of ``SIZES``) into ``out_dir``."""
    if size not in SIZES:
        raise ValueError(f"unknown shop size {size!r}; choose one of {', '.join(SIZES)}")
    return generate_shop(out_dir, seed=seed, workers=workers, **SIZES[size])


def generate_shop(
    out_dir: str | Path,
    *,
    reviews: int,
    users: int | None = None,
    items: int | None = None,
    parts: int | None = None,
    seed: int = 7,
    heavy_users: int | None = None,
    bad_line_rate: float = 0.0,
    workers: int | None = None,
) -> ShopSummary:
    """Write a shop of ``reviews`` reviews as JSON-lines part files under ``out_dir``.

    Args:
        out_dir: local folder; created if missing. Part files already there are replaced.
        reviews: how many (good) review lines; exactly this many are written.
        users: how many reviewers, each with at least one review (default reviews // 4).
        items: how many products (default reviews // 20, at most 500,000; at least 10).
        parts: how many review and meta part files (default max(2, reviews // 250,000)).
        seed: the same seed and arguments write byte-identical files.
        heavy_users: users with 1,000-5,000 reviews each, fewer where the catalogue
            or HEAVY_SHARE of the reviews does not allow it (default 2 to 10, by size).
        bad_line_rate: share of extra malformed or duplicated review lines.
        workers: processes generating parts (default: one per core, at most ``parts``);
            does not change the output. More than one are started with ``spawn``, so a
            script calling this needs the ``if __name__ == "__main__":`` guard.

    Returns:
        A summary of what was written.

    Raises:
        ValueError: arguments no shop can satisfy, e.g. fewer reviews than users, or
            more reviews than users x items distinct pairs.
    """
    users = max(1, reviews // 4) if users is None else users
    items = max(10, min(500_000, reviews // 20)) if items is None else items
    if reviews < 1 or users < 1 or items < 1:
        raise ValueError("reviews, users and items must be positive")
    if users > reviews:
        raise ValueError(f"{users} users need at least as many reviews, not {reviews}")
    if reviews > users * items:
        raise ValueError(f"{reviews} reviews exceed the {users} x {items} distinct (user, item) pairs")
    if not 0.0 <= bad_line_rate < 1.0:
        raise ValueError(f"bad_line_rate must be in [0, 1), not {bad_line_rate}")
    if heavy_users is None:
        heavy_users = max(2, min(10, reviews // 200_000))
    heavy_users = max(0, min(heavy_users, users - 1))
    parts = max(2, reviews // 250_000) if parts is None else parts
    parts = max(1, min(parts, users, items))

    counts = user_review_counts(np.random.default_rng([seed, 0]), reviews, users, items, heavy_users)
    # Contiguous user ranges of about equal numbers of reviews, at least one user each.
    cum = np.cumsum(counts)
    user_bounds = [0]
    for p in range(1, parts):
        cut = int(np.searchsorted(cum, reviews * p // parts)) + 1
        user_bounds.append(min(max(cut, user_bounds[-1] + 1), users - parts + p))
    user_bounds.append(users)
    item_bounds = [items * p // parts for p in range(parts + 1)]

    out = Path(out_dir)
    for sub in (REVIEWS_DIR, META_DIR):
        (out / sub).mkdir(parents=True, exist_ok=True)
        for old in (out / sub).glob("part-*.jsonl"):
            old.unlink()

    tasks: list[tuple] = [
        ("reviews", p, user_bounds[p], counts[user_bounds[p] : user_bounds[p + 1]], bad_line_rate)
        for p in range(parts)
    ] + [("meta", p, item_bounds[p], item_bounds[p + 1], reviews) for p in range(parts)]
    workers = min(len(tasks), os.cpu_count() or 1) if workers is None else max(1, min(workers, len(tasks)))
    job = (str(out), seed, items)
    if workers == 1:
        _init_worker(*job)
        results = [_run_task(t) for t in tasks]
        _init_worker(None, 0, 0)
    else:
        # spawn: safe beside the JVM threads of a Spark driver; parts are seeded by index.
        context = multiprocessing.get_context("spawn")
        with context.Pool(workers, initializer=_init_worker, initargs=job) as pool:
            results = list(pool.imap_unordered(_run_task, tasks))

    good = sum(r[2] for r in results if r[0] == "reviews")
    bad = sum(r[3] for r in results if r[0] == "reviews")
    product_lines = sum(r[2] for r in results if r[0] == "meta")
    if good != reviews:
        raise RuntimeError(f"wrote {good} reviews, not {reviews}")
    return ShopSummary(
        out_dir=out,
        reviews_glob=str(out / REVIEWS_DIR / PART_GLOB),
        products_glob=str(out / META_DIR / PART_GLOB),
        review_lines=good + bad,
        bad_review_lines=bad,
        product_lines=product_lines,
        users=users,
        items=items,
        heaviest_user_reviews=int(counts.max()),
        parts=parts,
    )


# --- how many reviews each user writes ----------------------------------------


def user_review_counts(
    rng: np.random.Generator, reviews: int, users: int, items: int, heavy_users: int
) -> np.ndarray:
    """Reviews per user (int64, length ``users``, each >= 1 and <= ``items``), summing to ``reviews``.

    ``heavy_users`` users at random positions get 1,000-5,000 reviews (capped by
    the catalogue and by HEAVY_SHARE of ``reviews``); the others follow a truncated
    power law whose exponent is fitted to their mean, then nudged to the exact total.
    """
    counts = np.zeros(users, dtype=np.int64)
    heavy = rng.choice(users, size=heavy_users, replace=False) if heavy_users else np.zeros(0, np.int64)
    regular = np.ones(users, dtype=bool)
    regular[heavy] = False
    n_regular = users - heavy_users
    if heavy_users:
        hi = max(1, min(HEAVY_RANGE[1], int(items * 0.8)))
        lo = min(HEAVY_RANGE[0], hi)
        drawn = rng.integers(lo, hi + 1, size=heavy_users)
        budget = min(int(reviews * HEAVY_SHARE), reviews - n_regular)
        if drawn.sum() > budget:
            drawn = np.maximum(1, drawn * budget // drawn.sum())
        counts[heavy] = np.minimum(drawn, items)
        # What the others cannot take (each reviews every product at most): the heavy users take it.
        for h in heavy.tolist():
            excess = reviews - int(counts.sum()) - n_regular * items
            if excess <= 0:
                break
            counts[h] += min(excess, items - counts[h])
    rest = reviews - int(counts[heavy].sum())
    cap = min(items, max(REGULAR_CAP, math.ceil(2 * rest / n_regular)))
    counts[regular] = _power_law_counts(rng, n_regular, rest, cap)
    return counts


def _power_law_counts(rng: np.random.Generator, n: int, total: int, cap: int) -> np.ndarray:
    """``n`` counts in 1..cap summing to ``total``: P(k) ~ k^-a with the mean fitted."""
    k = np.arange(1, cap + 1, dtype=np.float64)
    target = total / n

    def mean(a: float) -> float:
        w = k**-a
        return float((k * w).sum() / w.sum())

    lo, hi = 0.0, 8.0  # the mean falls as the exponent grows
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if mean(mid) > target else (lo, mid)
    pmf = k**-hi
    cdf = np.cumsum(pmf / pmf.sum())
    counts = np.minimum(np.searchsorted(cdf, rng.random(n), side="right") + 1, cap).astype(np.int64)
    # Nudge single users by one review until the total is exact.
    while (diff := total - int(counts.sum())) != 0:
        candidates = np.flatnonzero(counts < cap) if diff > 0 else np.flatnonzero(counts > 1)
        pick = rng.choice(candidates, size=min(abs(diff), candidates.size), replace=False)
        counts[pick] += 1 if diff > 0 else -1
    return counts


# --- the catalogue, shared by all parts -----------------------------------------


def _esc(s: str) -> str:
    """``s`` as the inside of a JSON string literal."""
    return json.dumps(s)[1:-1]


class _Catalogue:
    """Products, their categories and popularity; built the same from (seed, items) anywhere."""

    def __init__(self, seed: int, items: int):
        rng = np.random.default_rng([seed, 3])
        self.items = items
        self.names = list(CATALOGUE)[: min(len(CATALOGUE), items)]
        n_cat = len(self.names)
        # Categories differ in size and in how many users favour them.
        self.cat_weight = rng.dirichlet(np.full(n_cat, 4.0))
        self.cat_cdf = np.cumsum(self.cat_weight)
        self.cat_cdf[-1] = 1.0
        cat = rng.choice(n_cat, size=items, p=self.cat_weight)
        cat[:n_cat] = np.arange(n_cat)
        self.cat = cat.astype(np.int16)
        # Popularity order inside each category: a random order of its products.
        perm = rng.permutation(items)
        self.by_rank = perm[np.argsort(self.cat[perm], kind="stable")]
        sizes = np.bincount(self.cat, minlength=n_cat)
        starts = np.concatenate([[0], np.cumsum(sizes)])
        rank_in_cat = np.arange(items) - np.repeat(starts[:-1], sizes)
        w = (rank_in_cat + 1.0) ** -ITEM_ZIPF
        cum = np.cumsum(w)
        cat_of_rank = np.repeat(np.arange(n_cat), sizes)
        before = np.concatenate([[0.0], cum[starts[1:-1] - 1]])
        totals = cum[starts[1:] - 1] - before
        within = (cum - before[cat_of_rank]) / totals[cat_of_rank]
        within[starts[1:] - 1] = 1.0
        # Category k's products in rank order occupy (k, k+1] of one cumulative axis.
        self.global_cdf = cat_of_rank + within
        self.p_in_cat = np.empty(items)  # an item's probability inside its category
        self.p_in_cat[self.by_rank] = w / totals[cat_of_rank]
        # Each product's words: brand, two descriptive words, noun (indices into CATALOGUE).
        self.brand = rng.integers(0, 3, size=items).astype(np.int8)
        first = rng.integers(0, 6, size=items)
        self.word1 = first.astype(np.int8)
        self.word2 = ((first + rng.integers(1, 6, size=items)) % 6).astype(np.int8)
        self.noun = rng.integers(0, 4, size=items).astype(np.int8)  # every category has >= 4 nouns
        self.code_offset = int(rng.integers(0, _CODE_MOD))
        # Per product, the JSON-escaped words a review quotes (shared string objects).
        vocab = [
            ([_esc(b) for b in brands], [_esc(w) for w in words], [_esc(x) for x in nouns])
            for brands, words, nouns in (CATALOGUE[name] for name in self.names)
        ]
        cats = self.cat.tolist()
        self.brand_esc = [vocab[c][0][b] for c, b in zip(cats, self.brand.tolist(), strict=True)]
        self.word_esc = [vocab[c][1][x] for c, x in zip(cats, self.word1.tolist(), strict=True)]
        self.noun_esc = [vocab[c][2][x] for c, x in zip(cats, self.noun.tolist(), strict=True)]

    def model_code(self, item: int) -> str:
        """A 6-character base-36 code, distinct for every product."""
        v = (item * _CODE_MUL + self.code_offset) % _CODE_MOD
        digits = []
        for _ in range(6):
            v, d = divmod(v, 36)
            digits.append(_BASE36[d])
        return "".join(reversed(digits))


_STATE: dict[str, object] = {}


def _init_worker(out_dir: str | None, seed: int, items: int) -> None:
    _STATE.clear()
    if out_dir is not None:
        _STATE.update(out=Path(out_dir), seed=seed, catalogue=_Catalogue(seed, items))


def _run_task(task: tuple) -> tuple:
    kind, part = task[0], task[1]
    out, seed, catalogue = _STATE["out"], _STATE["seed"], _STATE["catalogue"]
    name = f"part-{part:05d}.jsonl"
    if kind == "reviews":
        _, _, first_user, counts, bad_line_rate = task
        rng = np.random.default_rng([seed, 1, part])
        good, bad = _write_atomically(
            out / REVIEWS_DIR / name,
            lambda f: _write_reviews(f, rng, catalogue, first_user, counts, bad_line_rate),
        )
        return kind, part, good, bad
    _, _, lo, hi, reviews = task
    rng = np.random.default_rng([seed, 2, part])
    lines = _write_atomically(
        out / META_DIR / name, lambda f: _write_meta(f, rng, catalogue, lo, hi, reviews)
    )
    return kind, part, lines, 0


def _write_atomically(path: Path, write):
    tmp = path.with_name(f".{path.name}.tmp")  # a dot name: Spark and list_files skip it
    with open(tmp, "w", encoding="utf-8", newline="\n") as f:
        result = write(f)
    os.replace(tmp, path)
    return result


# --- reviews ---------------------------------------------------------------------

# Review title starts and text endings by rating (1..5); a review picks one of three.
_TITLES = {
    1: ["Waste of money: ", "Not for me: ", "Returned the "],
    2: ["Disappointed with the ", "Not for me: ", "Meh: "],
    3: ["Okay ", "It's fine: ", "Average "],
    4: ["Good ", "Nice: ", "Would buy again: "],
    5: ["Love: ", "Five stars: ", "Best "],
}
_ENDINGS = {
    1: ["did not work for me", "was disappointing", "broke within a week"],
    2: ["was disappointing", "is not worth the price", "did not live up to the hype"],
    3: ["is okay", "does the job, nothing special", "is fine for the price"],
    4: ["works well", "does the job", "is a solid buy"],
    5: ["works great", "is my new favourite", "is worth every penny"],
}
_TITLE_ESC = [[_esc(t) for t in _TITLES.get(r, ["", "", ""])] for r in range(6)]
_ENDING_ESC = [[_esc(t) for t in _ENDINGS.get(r, ["", "", ""])] for r in range(6)]
_VARIANTS = ["", "-1", "-2"]
_LIKED = np.array([4, 5, 5, 5])
_OTHER = np.array([1, 2, 3, 3, 4])


def _write_reviews(f, rng, cat: _Catalogue, first_user: int, counts: np.ndarray, bad_line_rate: float):
    """Write the reviews of users ``first_user ..`` (``counts`` each); return (good, bad) lines."""
    cum = np.cumsum(counts)
    good = bad = 0
    a = 0
    while a < counts.size:
        done = int(cum[a - 1]) if a else 0
        b = max(a + 1, int(np.searchsorted(cum, done + CHUNK_REVIEWS, side="right")))
        lines = _chunk_lines(rng, cat, first_user + a, counts[a:b])
        n_bad = round(bad_line_rate * (good + len(lines))) - round(bad_line_rate * good)
        if n_bad:
            lines = _with_bad_lines(rng, lines, n_bad, bad)
        f.write("\n".join(lines))
        f.write("\n")
        good += len(lines) - n_bad
        bad += n_bad
        a = b
    return good, bad


def _draw(rng, cat: _Catalogue, fav1: np.ndarray, fav2: np.ndarray) -> np.ndarray:
    """One product per draw for users with favourite categories ``fav1``/``fav2``."""
    m = fav1.size
    liked = rng.random(m) < TASTE_SHARE
    favourite = np.where(rng.random(m) < 0.5, fav1, fav2)
    other = np.searchsorted(cat.cat_cdf, rng.random(m), side="right")
    c = np.where(liked, favourite, np.minimum(other, len(cat.names) - 1))
    pos = np.searchsorted(cat.global_cdf, c + rng.random(m), side="right")
    return cat.by_rank[np.minimum(pos, cat.items - 1)]


def _chunk_items(rng, cat: _Catalogue, owner, fav1, fav2, offsets) -> np.ndarray:
    """A product per review slot, no product twice for one user."""
    n_items = cat.items
    items = _draw(rng, cat, fav1[owner], fav2[owner])
    key = owner * n_items + items
    order = np.argsort(key, kind="stable")
    sk = key[order]
    repeat = np.concatenate([[False], sk[1:] == sk[:-1]])
    pending = np.zeros(owner.size, dtype=bool)
    pending[order[repeat]] = True
    taken = sk[~repeat]  # sorted keys of accepted slots
    for _ in range(_MAX_REDRAWS):
        idx = np.flatnonzero(pending)
        if idx.size == 0:
            break
        o = owner[idx]
        new = _draw(rng, cat, fav1[o], fav2[o])
        nk = o * n_items + new
        at = np.searchsorted(taken, nk)
        seen = taken[np.minimum(at, taken.size - 1)] == nk
        _, first = np.unique(nk, return_index=True)
        fresh = np.zeros(idx.size, dtype=bool)
        fresh[first] = True
        ok = fresh & ~seen
        items[idx[ok]] = new[ok]
        pending[idx[ok]] = False
        add = np.sort(nk[ok])
        taken = np.insert(taken, np.searchsorted(taken, add), add)
    # Users whose taste is (nearly) exhausted: exact weighted sampling without
    # replacement (Gumbel top-k) over the whole catalogue.
    for u in np.unique(owner[pending]).tolist():
        lo, hi = offsets[u], offsets[u + 1]
        slots = lo + np.flatnonzero(pending[lo:hi])
        have = items[lo:hi][~pending[lo:hi]]
        mass = (1 - TASTE_SHARE) * cat.cat_weight
        favs = {int(fav1[u]), int(fav2[u])}
        for c in favs:
            mass[c] += TASTE_SHARE / len(favs)
        keys = np.log(mass[cat.cat] * cat.p_in_cat) + rng.gumbel(size=n_items)
        keys[have] = -np.inf
        best = np.argpartition(-keys, slots.size - 1)[: slots.size]
        items[slots] = np.sort(best)
    return items


def _chunk_lines(rng, cat: _Catalogue, first_user: int, n: np.ndarray) -> list[str]:
    """The review lines of ``n.size`` users from ``first_user`` on, user by user, in time order."""
    users = n.size
    owner = np.repeat(np.arange(users), n)
    offsets = np.concatenate([[0], np.cumsum(n)])
    n_cat = len(cat.names)
    fav1 = np.minimum(np.searchsorted(cat.cat_cdf, rng.random(users), side="right"), n_cat - 1)
    second = (fav1 + rng.integers(1, max(n_cat, 2), size=users)) % n_cat
    fav2 = np.where(rng.random(users) < TWO_FAVOURITES, second, fav1)
    items = _chunk_items(rng, cat, owner, fav1, fav2, offsets)

    # Activity windows grow with a user's reviews; each review gets a moment in it.
    span = np.minimum(_SPAN_DAYS, (20 + 40 * np.sqrt(n) * rng.uniform(0.5, 1.5, size=users)))
    start = rng.random(users) * (_SPAN_DAYS - span)
    days = start[owner] + rng.random(owner.size) * span[owner]
    ts = FIRST_MS + (days * DAY_MS).astype(np.int64)
    order = np.lexsort((ts, owner))

    item_cat = cat.cat[items]
    in_taste = (item_cat == fav1[owner]) | (item_cat == fav2[owner])
    t = owner.size
    rating = np.where(in_taste, _LIKED[rng.integers(0, 4, t)], _OTHER[rng.integers(0, 5, t)])
    helpful = np.minimum(rng.zipf(2.5, size=t) - 1, 999)
    verified = rng.random(t) < 0.9
    variant = rng.integers(0, 3, size=t)
    phrase = rng.integers(0, 3, size=(2, t))

    brand, word, noun = cat.brand_esc, cat.word_esc, cat.noun_esc
    uids = [f"U{u:08d}" for u in range(first_user, first_user + users)]
    lines = []
    for o, i, r, tm, h, vp, v, p1, p2 in zip(
        owner[order].tolist(),
        items[order].tolist(),
        rating[order].tolist(),
        ts[order].tolist(),
        helpful[order].tolist(),
        verified[order].tolist(),
        variant[order].tolist(),
        phrase[0][order].tolist(),
        phrase[1][order].tolist(),
        strict=True,
    ):
        lines.append(
            f'{{"rating": {r}.0, "title": "{_TITLE_ESC[r][p1]}{noun[i]}", '
            f'"text": "The {word[i]} {noun[i]} from {brand[i]} {_ENDING_ESC[r][p2]}.", '
            f'"images": [], "asin": "B0{i:08d}{_VARIANTS[v]}", "parent_asin": "B0{i:08d}", '
            f'"user_id": "{uids[o]}", "timestamp": {tm}, "helpful_vote": {h}, '
            f'"verified_purchase": {"true" if vp else "false"}}}'
        )
    return lines


def _bad_line(kind: int, line: str) -> str:
    """A malformed or duplicated line of the kinds real exports contain, from a good one."""
    if kind == 0:
        return line[: len(line) // 2]  # truncated JSON
    if kind == 6:
        return line  # an exact duplicate
    r = json.loads(line)
    if kind == 1:
        del r["user_id"]
    elif kind == 2:
        r["rating"] = "five stars"
    elif kind == 3:
        r["rating"] = 9.0
    elif kind == 4:
        del r["timestamp"]
    else:
        return json.dumps([r])  # JSON, but not an object
    return json.dumps(r)


def _with_bad_lines(rng, lines: list[str], n_bad: int, before: int) -> list[str]:
    """``lines`` with ``n_bad`` bad lines, each right after the good line it was made from."""
    at = np.sort(rng.integers(0, len(lines), size=n_bad)).tolist()
    out, prev = [], 0
    for j, pos in enumerate(at):
        out.extend(lines[prev : pos + 1])
        out.append(_bad_line((before + j) % 7, lines[pos]))
        prev = pos + 1
    out.extend(lines[prev:])
    return out


# --- product metadata --------------------------------------------------------------

_SENTENCES = [
    "A {w1}, {w2} {noun} for everyday use by {brand}.",
    "This {noun} is {w3} and {w4}, made for daily routines.",
    "Pair it with a {w3} {noun2} from {brand} for best results.",
    "Customers choose this {noun} for its {w4} finish.",
    "Dermatologist tested; {w1} and {w3}.",
]
# A description is two or three different sentences, in some order.
_SENTENCE_PICKS = [p for r in (2, 3) for p in itertools.permutations(range(len(_SENTENCES)), r)]


def _write_meta(f, rng, cat: _Catalogue, lo: int, hi: int, reviews: int) -> int:
    """Write the metadata of products ``lo .. hi-1``; return the lines written."""
    n = hi - lo
    if n == 0:
        return 0
    c = cat.cat[lo:hi].tolist()
    price = np.round(np.clip(rng.lognormal(np.log(18.0), 0.6, size=n), 1.5, 300.0), 2).tolist()
    no_price = (rng.random(n) < 0.1).tolist()
    avg = np.round(rng.uniform(3.0, 5.0, size=n), 1).tolist()
    # About how many reviews a product gets in a shop of this size.
    expected = reviews * cat.cat_weight[cat.cat[lo:hi]] * cat.p_in_cat[lo:hi]
    rating_number = np.maximum(1, (expected * rng.uniform(0.5, 1.5, size=n)).astype(np.int64)).tolist()
    size = rng.integers(0, len(_SIZE_WORDS), size=n).tolist()
    extra_words = rng.integers(0, 6, size=(n, 2)).tolist()
    other_noun = rng.integers(0, 4, size=n).tolist()
    sentences = rng.integers(0, len(_SENTENCE_PICKS), size=n).tolist()
    brand_i, word1, word2 = cat.brand[lo:hi].tolist(), cat.word1[lo:hi].tolist(), cat.word2[lo:hi].tolist()
    noun_i = cat.noun[lo:hi].tolist()
    for k in range(n):
        i = lo + k
        name = cat.names[c[k]]
        brands, words, nouns = CATALOGUE[name]
        brand = brands[brand_i[k]]
        w1, w2 = words[word1[k]], words[word2[k]]
        noun = nouns[noun_i[k]]
        model = f"{brand[:2].upper()}-{cat.model_code(i)}"
        fill = {
            "w1": w1,
            "w2": w2,
            "w3": words[extra_words[k][0]],
            "w4": words[extra_words[k][1]],
            "noun": noun,
            "noun2": nouns[other_noun[k]],
            "brand": brand,
        }
        record = {
            "main_category": _MAIN_CATEGORY,
            "title": f"{brand} {w1.title()} {w2.title()} {noun.title()} {model}, {_SIZE_WORDS[size[k]]}",
            "average_rating": avg[k],
            "rating_number": rating_number[k],
            "features": [f"{w1.capitalize()} formula", f"{w2.capitalize()} {noun}", _SIZE_WORDS[size[k]]],
            "description": [_SENTENCES[s].format(**fill) for s in _SENTENCE_PICKS[sentences[k]]],
            "price": None if no_price[k] else price[k],
            "images": [],
            "videos": [],
            "store": brand,
            "categories": [_ROOT_CATEGORY, name],
            "details": {"Brand": brand, "Model": model},
            "parent_asin": f"B0{i:08d}",
            "bought_together": None,
        }
        f.write(json.dumps(record))
        f.write("\n")
    return n
