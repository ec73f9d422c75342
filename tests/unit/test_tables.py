"""The table comparison the integration tests use: short, exact failure messages."""

from __future__ import annotations

import pytest

from tests.tables import SHOWN, assert_same_rows


def rows(n: int) -> list[tuple]:
    # Nested lists, as gold/user_recommendations' rows carry: unhashable.
    return [(f"U{u:05d}", "als", [{"rank": 1, "item_id": f"B{u:04d}"}], 0.5) for u in range(n)]


def test_equal_tables_pass():
    assert_same_rows(rows(100), rows(100), "gold")


def test_a_mismatch_counts_each_side_and_shows_its_first_rows():
    expected = rows(10_000)
    actual = expected[:9_990] + [(f"X{u}", "als", [], 0.5) for u in range(3)]
    with pytest.raises(AssertionError) as failed:
        assert_same_rows(actual, expected, "gold/recommendations")
    message = str(failed.value)
    assert message.startswith("gold/recommendations: 9,993 rows where 10,000 were expected")
    assert "10 expected rows are missing" in message
    assert "3 rows were not expected" in message
    assert repr(expected[9_990]) in message and repr(actual[-1]) in message
    assert repr(expected[-1]) not in message  # only the first SHOWN of the ten
    assert len(message.splitlines()) == 3 + SHOWN + 3


def test_rows_equal_by_repr_but_not_by_value_are_pointed_at():
    nan = float("nan")
    with pytest.raises(AssertionError, match="first differ at position 1"):
        assert_same_rows([(1, 0.0), (2, nan)], [(1, 0.0), (2, float("nan"))], "gold/metrics")
