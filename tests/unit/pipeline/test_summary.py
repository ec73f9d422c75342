"""What the end-of-run summary says about text cleaning: the fields it touched only."""

from amazon_recs.pipeline.summary import cleaning_line


def test_cleaning_line_names_only_what_cleaning_did():
    cleaning = {
        "title": {
            "entities_decoded": 178,
            "markup_removed": 0,
            "only_markup": 3,
            "from_description": 2,
            "missing": 1,
        },
        "brand": {"entities_decoded": 0, "markup_removed": 0, "only_markup": 0},
        "categories": {"entities_decoded": 12, "markup_removed": 0, "only_markup": 0},
    }
    assert cleaning_line(cleaning) == (
        "title: entities decoded 178, only markup 3, from description 2, missing 1; "
        "categories: entities decoded 12"
    )
    assert cleaning_line({"title": {"entities_decoded": 0}}) == ""
