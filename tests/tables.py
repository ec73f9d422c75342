"""Comparing whole tables in tests, with a failure message a person can read.

``assert rows == expected`` on thousands of rows makes pytest diff the two lists
item by item: when the EMR-step test failed that way, the diff took 25 minutes of
a CI run and printed 72,000 lines. Here a mismatch says how many rows each side
has, how many are only on one side, and the first few of those.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from amazon_recs import io

SHOWN = 5  # rows shown from each side of a mismatch
WIDTH = 400  # characters shown of each row


def sorted_rows(spark, config, name: str) -> list[tuple]:
    """Every row of the Delta table ``name`` as a tuple, sorted: one side of ``assert_same_rows``."""
    return sorted(tuple(r) for r in io.read_table(spark, config, name).collect())


def _shown(rows: list[str]) -> str:
    return "\n".join(f"    {r if len(r) <= WIDTH else r[:WIDTH] + ' ...'}" for r in sorted(rows)[:SHOWN])


def assert_same_rows(actual: Sequence, expected: Sequence, what: str) -> None:
    """Fail unless ``actual`` equals ``expected`` (both sorted the same way), with a
    message that counts the rows only one side holds and shows the first of them.

    Rows are told apart by their ``repr``, which is defined for the nested lists
    and dicts a table's rows carry (unlike hashing them).
    """
    if list(actual) == list(expected):
        return
    have, want = Counter(map(repr, actual)), Counter(map(repr, expected))
    missing, extra = list((want - have).elements()), list((have - want).elements())
    lines = [f"{what}: {len(actual):,} rows where {len(expected):,} were expected"]
    if missing:
        lines += [f"  {len(missing):,} expected rows are missing; the first:", _shown(missing)]
    if extra:
        lines += [f"  {len(extra):,} rows were not expected; the first:", _shown(extra)]
    if not missing and not extra:  # equal by repr, unequal by == (e.g. 1 and 1.0) or in order
        at = next((i for i, (a, e) in enumerate(zip(actual, expected, strict=True)) if a != e), 0)
        lines.append(f"  the rows first differ at position {at}: {actual[at]!r} against {expected[at]!r}")
    raise AssertionError("\n".join(lines))
