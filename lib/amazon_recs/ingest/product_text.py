"""Product texts with the structure of a real catalogue, for the content model's
tests and benchmarks (``make bench-content``): generated in numpy, any size.

- The vocabulary grows with the catalogue (Heaps' law, ~40 n^0.6 words) and word
  use is Zipf-like, so a few words are everywhere and most are rare.
- Products come in families of variants (sizes, colours; 1-40, geometric, mean
  ~3): a family's members share its text except for ~15% of dropped words and
  their variant words. These are the planted near-duplicates (cosine 0.6-0.95).
- Each family belongs to one of ~n/300 topics, whose 200 words (with a Zipf
  weight of their own) fill most of its text: the weaker neighbours (0.2-0.4).

Words are made-up syllable strings ("kobe", "tazuri"), distinct per index.
Deterministic: the same (n, seed) give the same texts.
"""

from __future__ import annotations

import numpy as np

_SYLLABLES = [c + v for c in "bdfgklmnprstvz" for v in "aeiou"]
TOPIC_WORDS = 200


def word(index: int) -> str:
    """The made-up word of a vocabulary index: two or more syllables."""
    out = []
    while True:
        index, digit = divmod(index, len(_SYLLABLES))
        out.append(_SYLLABLES[digit])
        if index == 0 and len(out) >= 2:
            return "".join(out)


def product_words(n: int, seed: int = 7) -> tuple[np.ndarray, np.ndarray]:
    """(item of each word occurrence, vocabulary index), items 0..n-1 in order."""
    rng = np.random.default_rng([seed, 13])
    vocab = int(40 * n**0.6) + 2000
    global_cdf = np.cumsum(1.0 / np.arange(1, vocab + 1) ** 1.05)
    global_cdf /= global_cdf[-1]
    topics = max(10, n // 300)
    topic_words = np.minimum(np.searchsorted(global_cdf, rng.random((topics, TOPIC_WORDS))), vocab - 1)
    topic_cdf = np.cumsum(1.0 / np.arange(1, TOPIC_WORDS + 1) ** 0.8)
    topic_cdf /= topic_cdf[-1]

    def from_topic(topic: np.ndarray) -> np.ndarray:
        return topic_words[topic, np.searchsorted(topic_cdf, rng.random(len(topic)))]

    sizes = np.minimum(rng.geometric(0.3, size=n), 40)
    sizes = sizes[: np.searchsorted(np.cumsum(sizes), n) + 1]
    family = np.repeat(np.arange(len(sizes)), sizes)[:n]
    family_topic = rng.integers(0, topics, size=len(sizes))
    # A family's text: 2 line words (any), 10-29 topic words, 2-5 common words.
    n_topic = rng.integers(10, 30, size=len(sizes))
    n_common = rng.integers(2, 6, size=len(sizes))
    length = 2 + n_topic + n_common
    offset = np.concatenate([[0], np.cumsum(length)])
    owner = np.repeat(np.arange(len(sizes)), length)
    place = np.arange(offset[-1]) - offset[owner]
    words = np.minimum(np.searchsorted(global_cdf, rng.random(offset[-1])), vocab - 1)
    line = place < 2
    words[line] = rng.integers(0, vocab, size=int(line.sum()))
    topical = ~line & (place < 2 + n_topic[owner])
    words[topical] = from_topic(family_topic[owner[topical]])
    # A product: its family's words, each kept with probability 0.85, 1-2 variant
    # words (from 60) and 0-8 topic words of its own.
    item_length = length[family]
    item = np.repeat(np.arange(n), item_length)
    source = (
        offset[family][item]
        + np.arange(item_length.sum())
        - np.repeat(np.cumsum(item_length) - item_length, item_length)
    )
    keep = rng.random(len(source)) < 0.85
    n_variant = rng.integers(1, 3, size=n)
    n_own = rng.integers(0, 9, size=n)
    own_item = np.repeat(np.arange(n), n_own)
    items = np.concatenate([item[keep], np.repeat(np.arange(n), n_variant), own_item])
    indices = np.concatenate(
        [
            words[source[keep]],
            rng.integers(0, 60, size=int(n_variant.sum())),
            from_topic(family_topic[family[own_item]]),
        ]
    )
    order = np.argsort(items, kind="stable")
    return items[order], indices[order]


def product_texts(n: int, seed: int = 7) -> list[str]:
    """``n`` product texts (see the module text), item i's at index i."""
    items, indices = product_words(n, seed)
    names = {int(i): word(int(i)) for i in np.unique(indices)}
    bounds = np.searchsorted(items, np.arange(n + 1))
    flat = [names[int(i)] for i in indices]
    return [" ".join(flat[bounds[i] : bounds[i + 1]]) for i in range(n)]
