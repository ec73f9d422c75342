"""The report's Markdown tables and plots, from long-form metric rows."""

from __future__ import annotations

import io as stdio
import math

import pytest
from matplotlib import image

from amazon_recs.errors import ConfigError
from amazon_recs.evaluation import plots, report
from amazon_recs.pipeline.evaluate import curve_ks

ROWS = [
    {"model": m, "metric": metric, "k": 10, "value": v, "users": 3, "model_version": "v1"}
    for m, values in {"popular": (0.1, 0.2, 0.05), "hybrid": (0.3, 0.5, 0.4)}.items()
    for metric, v in zip(("precision", "ndcg", "coverage"), values, strict=True)
]
CURVE = [
    {"model": m, "metric": "ndcg", "k": k, "value": v, "users": 3}
    for m, points in {"als": {1: 0.5, 5: 0.25}, "random": {1: 0.0}}.items()
    for k, v in points.items()
]


def test_metrics_table_orders_metrics_and_models():
    table = report.metrics_table(ROWS).splitlines()
    assert table[0] == "| model | users | precision@10 | ndcg@10 | coverage@10 |"
    assert table[2:] == [
        "| popular | 3 | 0.1000 | 0.2000 | 0.0500 |",
        "| hybrid | 3 | 0.3000 | 0.5000 | 0.4000 |",
    ]


def test_curve_table_has_a_column_per_k_and_models_in_pipeline_order():
    table = report.curve_table(CURVE).splitlines()
    assert table[0] == "| model | ndcg@1 | ndcg@5 |"
    assert table[2] == "| als | 0.5000 | 0.2500 |"
    assert table[3].startswith("| random | 0.0000 | nan")


@pytest.mark.parametrize("draw, rows", [(plots.metrics_by_model, ROWS), (plots.metrics_against_k, CURVE)])
def test_plots_are_decodable_pngs_and_repeatable(draw, rows):
    png = draw(rows)
    pixels = image.imread(stdio.BytesIO(png), format="png")
    assert pixels.shape[0] > 200 and pixels.shape[1] > 400
    assert not math.isclose(float(pixels.std()), 0.0)  # not a blank canvas
    assert draw(rows) == png


@pytest.mark.parametrize("ks", [[0, 5], [5, 11], []])
def test_curve_cut_offs_outside_the_recommendations_are_refused(config, ks):
    config = config.with_overrides([f"evaluate.curve_ks={ks}"])
    with pytest.raises(ConfigError, match="evaluate.curve_ks must be between 1 and recommend.k"):
        curve_ks(config)


def test_cold_rows_have_their_own_table_and_section():
    cold_rows = [
        {**r, "metric": f"cold_{r['metric']}", "value": r["value"] / 10}
        for r in ROWS
        if r["metric"] != "coverage"
    ]
    rows = ROWS + cold_rows
    assert report.metrics_table(rows) == report.metrics_table(ROWS)  # the whole split only
    cold_table = report.metrics_table(rows, cold=True).splitlines()
    assert cold_table[0] == "| model | users | precision@10 | ndcg@10 |"
    assert cold_table[3] == "| hybrid | 3 | 0.0300 | 0.0500 |"
    cold = {"max_train": 5, "interactions": 12, "users": 9, "items": 4, "test_interactions": 48}
    section = report.cold_section(rows, {**cold, "new_item_interactions": 0})
    assert "at most 5 training interactions" in section
    assert "12 of 48 (25.0%), from 9 users, with 4 products. None of these products is new" in section
    assert section.endswith("\n".join(cold_table))
    new = report.cold_section(rows, {**cold, "new_item_interactions": 7})
    assert "7 of these interactions are with products that had no training interaction at all: " in new
    assert "only the content model can rank those, from their text." in new
    no_text = report.cold_section(rows, {**cold, "new_item_interactions": 7}, has_text=False)
    assert "no model here has a signal for those, since no product has text" in no_text
    empty = report.cold_section(
        rows, {"max_train": 0, "interactions": 0, "users": 0, "items": 0, "test_interactions": 48}
    )
    assert empty.endswith("from 0 users.") and "|" not in empty


def test_tuning_section_says_what_was_chosen_with_the_trust_setting():
    tuned = {
        "als": {"rank": 32, "alpha": 5.0},
        "hybrid_weights": {"als": 0.6, "content": 0.3, "popular": 0.1},
        "validation_ndcg": 0.1546,
        "als_grid": [{"rank": 32, "alpha": 5.0, "ndcg": 0.13}],
        "validation_users": 40,
    }
    assert "ALS trust" not in report.tuning_section(tuned)  # a version tuned before the setting
    off = report.tuning_section({**tuned, "als_half_trust": 0.0})
    assert "ALS trust per item off (validation NDCG@k 0.1546)" in off
    assert "ALS trust per item n / (n + 5)" in report.tuning_section({**tuned, "als_half_trust": 5.0})
    assert "| 5.0000 | 32 | 0.1300 |" in off
    assert "Item-kNN" not in off  # a version tuned before item-kNN
    knn = report.tuning_section(
        {
            **tuned,
            "item_knn": {"neighbours": 50, "shrinkage": 10.0},
            "item_knn_grid": [
                {"neighbours": 20, "shrinkage": 10.0, "ndcg": 0.11},
                {"neighbours": 50, "shrinkage": 10.0, "ndcg": 0.12},
            ],
        }
    )
    assert "Item-kNN {'neighbours': 50, 'shrinkage': 10.0}:" in knn
    assert "| neighbours | shrinkage | ndcg |" in knn and "| 50 | 10.0000 | 0.1200 |" in knn
    assert report.tuning_section(None).startswith("Not tuned")


def test_tuning_section_says_what_matching_als_on_cold_items_would_cost():
    tuned = {
        "als": {"rank": 32},
        "hybrid_weights": {"als": 0.1, "item_knn": 0.9},
        "als_half_trust": 0.0,
        "validation_ndcg": 0.1784,
        "als_grid": [{"rank": 32, "ndcg": 0.12}],
        "validation_users": 455,
    }

    def row(trust, als, ndcg, cold):
        return {
            "als": als,
            "item_knn": round(1 - als, 6),
            "als_half_trust": trust,
            "ndcg": ndcg,
            "cold_ndcg": cold,
        }

    cold = {"max_train": 5, "interactions": 70, "users": 66}
    chosen, als, matching = (
        row(0.0, 0.1, 0.1784, 0.0201),
        row(0.0, 1.0, 0.1239, 0.0388),
        row(5.0, 0.4, 0.1576, 0.0402),
    )
    text = report.tuning_section(
        {**tuned, "cold_validation": {**cold, "chosen": chosen, "als": als, "matching_als": matching}}
    )
    assert (
        "On validation's cold items (their item had at most 5 fit interactions: "
        "70 interactions of 66 users), "
        "the chosen setting scores NDCG@k 0.0201 and ALS alone 0.0388 (0.1239 on all validation items). "
        "The best on all validation items of the settings scoring at least that on them: weights "
        "{'als': 0.4, 'item_knn': 0.6}, ALS trust per item n / (n + 5), NDCG@k 0.1576 on all items "
        "(the chosen: 0.1784) and 0.0402 on the cold ones."
    ) in text
    none = report.tuning_section(
        {**tuned, "cold_validation": {**cold, "chosen": chosen, "als": als, "matching_als": None}}
    )
    assert "No setting scores as much as ALS alone on them." in none
    empty = report.tuning_section(
        {**tuned, "cold_validation": {"max_train": 5, "interactions": 0, "users": 0}}
    )
    assert "0 interactions of 0 users): none, so no setting was scored on them." in empty
    assert "cold items" not in report.tuning_section(tuned)  # a version tuned before the cold scores
