"""MovieLens releases in their original layouts, read from one setting
(input.movielens): the release recognised by its files, each file read with its
own delimiter, header and encoding, and every line accepted, rejected or counted."""

from __future__ import annotations

from pathlib import Path

import pytest
from pyspark.sql import functions as F

from amazon_recs import io
from amazon_recs.config import load_config
from amazon_recs.errors import ConfigError, InputError
from amazon_recs.ingest import movielens
from amazon_recs.pipeline.registry import stage_function
from tests.conftest import ROOT

FLAGS = ["0"] * 19


def _flags(*genres: str) -> str:
    flags = list(FLAGS)
    for g in genres:
        flags[movielens.GENRES_100K.index(g)] = "1"
    return "|".join(flags)


def ml_100k(folder: Path) -> Path:
    """u.data (tab-separated, no header) and u.item (Latin-1, | and genre flags), with
    the release's other files beside them, and one broken line in each."""
    folder.mkdir(parents=True)
    (folder / "u.data").write_text(
        "196\t242\t3\t881250949\n186\t302\t3\t891717742\n22\t242\t1\t878887116\n244\t51\n"
    )
    items = [
        f"242|Kolya (1996)|24-Jan-1997||http://us.imdb.com/M/title-exact?Kolya%20(1996)|{_flags('Comedy')}",
        f"302|L.A. Confidential (1997)|01-Jan-1997||http://x|{_flags('Crime', 'Film-Noir', 'Thriller')}",
        f"51|Légendes d'automne (1994)|01-Jan-1994||http://x|{_flags('Drama', 'Romance', 'War', 'Western')}",
        "99|Too short|01-Jan-1994",
    ]
    (folder / "u.item").write_bytes(("\n".join(items) + "\n").encode("latin-1"))
    (folder / "u.genre").write_text("\n".join(f"{g}|{i}" for i, g in enumerate(movielens.GENRES_100K)) + "\n")
    (folder / "u.user").write_text("1|24|M|technician|85711\n")
    (folder / "README").write_text("MovieLens 100k\n")
    return folder


def ml_1m(folder: Path) -> Path:
    """ratings.dat and movies.dat (:: separated, Latin-1 titles), users.dat beside them."""
    folder.mkdir(parents=True)
    (folder / "ratings.dat").write_text(
        "1::1193::5::978300760\n1::661::3::978302109\n2::1193::4::978298413\n"
    )
    movies = [
        "1193::One Flew Over the Cuckoo's Nest (1975)::Drama",
        "661::Café au lait (1993)::Comedy|Romance",
    ]
    (folder / "movies.dat").write_bytes(("\n".join(movies) + "\n").encode("latin-1"))
    (folder / "users.dat").write_text("1::F::1::10::48067\n")
    return folder


def ml_latest(folder: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / "ratings.csv").write_text(
        "userId,movieId,rating,timestamp\n1,1,4.0,964982703\n1,3,0.5,964981247\n"
    )
    (folder / "movies.csv").write_text(
        "movieId,title,genres\n"
        "1,Toy Story (1995),Adventure|Animation\n"
        '3,"American President, The (1995)",Comedy\n'
    )
    (folder / "tags.csv").write_text("userId,movieId,tag,timestamp\n2,3,funny,1445714994\n")
    return folder


def _config(tmp_path: Path, folder: Path, *extra: str):
    return load_config(
        ROOT / "conf" / "test.yaml",
        [
            f"paths.raw={tmp_path / 'raw'}",
            f"paths.warehouse={tmp_path / 'warehouse'}",
            f"paths.models={tmp_path / 'models'}",
            f"paths.reports={tmp_path / 'reports'}",
            f"input.movielens={folder}",
            *extra,
        ],
    )


@pytest.mark.parametrize(
    ("layout", "name", "fmt", "files"),
    [
        (ml_100k, "100k", "movielens", {"reviews": "u.data", "products": "u.item"}),
        (ml_1m, "1m/10m", "movielens", {"reviews": "ratings.dat", "products": "movies.dat"}),
        (
            ml_latest,
            "latest",
            "csv",
            {"reviews": "ratings.csv", "products": "movies.csv", "tags": "tags.csv"},
        ),
    ],
)
def test_the_release_is_recognised_by_its_files(spark, tmp_path, layout, name, fmt, files):
    folder = layout(tmp_path / "release")
    found, paths = movielens.release(spark, str(folder))
    assert found.name == name
    assert {kind: Path(p).name for kind, p in paths.items()} == files
    config = movielens.configured(spark, _config(tmp_path, folder))
    assert config.require("input.format") == fmt
    assert Path(config.require("input.reviews")).name == files["reviews"]
    assert (config.require("input.rating_min"), config.require("input.rating_max")) == (0.5, 5.0)


def test_a_folder_without_a_release_or_with_reviews_set_too_is_a_clear_error(spark, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("x\n")
    with pytest.raises(InputError, match=r"is not a MovieLens release folder .*u\.data \+ u\.item"):
        movielens.configured(spark, _config(tmp_path, empty))
    folder = ml_1m(tmp_path / "ml-1m")
    with pytest.raises(ConfigError, match="input.movielens .* and input.reviews .* are both set"):
        movielens.configured(spark, _config(tmp_path, folder, "input.reviews=/data/other.csv"))


def _ingested(spark, config) -> dict:
    summary = stage_function("ingest")(spark, config)
    read = lambda name: io.read_table(spark, config, name)  # noqa: E731
    return {
        "summary": summary,
        "reviews": {(r.user_id, r.item_id): r for r in read("bronze/reviews").collect()},
        "products": {r.item_id: r for r in read("bronze/products").collect()},
        "rejects": {
            (Path(r.source_file).name, r.line_number): r.reason for r in read("bronze/rejects").collect()
        },
    }


def test_100k_reads_tabs_latin_1_titles_and_genre_flags(spark, tmp_path):
    # One broken line in four: over the default reject rate, which would stop the run.
    got = _ingested(spark, _config(tmp_path, ml_100k(tmp_path / "ml-100k"), "input.max_reject_rate=0.5"))
    assert set(got["reviews"]) == {("196", "242"), ("186", "302"), ("22", "242")}
    review = got["reviews"][("196", "242")]
    assert review.rating == 3.0 and review.ts.year == 1997
    assert got["products"]["51"].title == "Légendes d'automne (1994)"  # Latin-1 decoded
    assert got["products"]["302"].categories == ["Crime", "Film-Noir", "Thriller"]
    assert got["products"]["242"].categories == ["Comedy"]
    # The broken lines are rejected with their reason, not dropped; the other files are not read.
    assert got["rejects"] == {
        ("u.data", 4): "wrong number of fields (expected 4)",
        ("u.item", 4): "wrong number of fields (expected 24)",
    }
    files = {Path(f["source_file"]).name for f in got["summary"]["files"]}
    assert files == {"u.data", "u.item"}


def test_1m_reads_double_colons_and_latin_1(spark, tmp_path):
    got = _ingested(spark, _config(tmp_path, ml_1m(tmp_path / "ml-1m")))
    assert len(got["reviews"]) == 3 and not got["rejects"]
    assert got["reviews"][("1", "1193")].rating == 5.0
    assert got["products"]["661"].title == "Café au lait (1993)"
    assert got["products"]["661"].categories == ["Comedy", "Romance"]


def test_latest_reads_csv_with_headers_quotes_half_stars_and_tags(spark, tmp_path):
    config = _config(tmp_path, ml_latest(tmp_path / "ml-latest"))
    got = _ingested(spark, config)
    assert got["reviews"][("1", "3")].rating == 0.5  # half stars: not a reject
    assert got["products"]["3"].title == "American President, The (1995)"
    tags = io.read_table(spark, config, "bronze/item_tags").select("item_id", "tag").collect()
    assert [(r.item_id, r.tag) for r in tags] == [("3", "funny")]
    assert not got["rejects"]
    assert io.read_table(spark, config, "bronze/reviews").filter(F.col("rating") < 1).count() == 1
