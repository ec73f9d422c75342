"""MovieLens releases as GroupLens ships them, from one setting: ``input.movielens``.

The releases differ in everything but content:

- 100k: ``u.data`` (tab-separated, no header) and ``u.item`` (``|``-separated,
  Latin-1, 19 genre flags);
- 1M and 10M: ``ratings.dat`` and ``movies.dat`` (``::``-separated, genres
  ``|``-separated, Latin-1 in 1M), ``tags.dat`` in 10M;
- latest, 20M, 25M, 32M: ``ratings.csv``, ``movies.csv`` (quoted titles) and
  ``tags.csv``, each with a header line.

``configured`` reads the folder, names the release, and returns the settings of
the generic reader that fit it: ``csv`` with the column mapping for the CSV
releases, ``movielens`` (the delimited parsers below) for the older ones; ratings
from 0.5 to 5 stars, timestamps in seconds. A line that is not valid UTF-8 is
read as Latin-1 (the 100k and 1M files are Latin-1; later ones are UTF-8), so
"Café" stays "Café". The parsers make the same ``shape`` and ``f`` as every
family (``formats``): ingest accepts, rejects and counts their lines alike.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import PurePosixPath

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from amazon_recs import io
from amazon_recs.config import Config
from amazon_recs.errors import ConfigError, InputError
from amazon_recs.ingest import formats

log = logging.getLogger(__name__)

FORMAT = "movielens"
# The 100k release's genres, in the order of u.item's 19 flags (its u.genre).
GENRES_100K = (
    "unknown",
    "Action",
    "Adventure",
    "Animation",
    "Children's",
    "Comedy",
    "Crime",
    "Documentary",
    "Drama",
    "Fantasy",
    "Film-Noir",
    "Horror",
    "Musical",
    "Mystery",
    "Romance",
    "Sci-Fi",
    "Thriller",
    "War",
    "Western",
)


@dataclass(frozen=True)
class Release:
    name: str
    ratings: str
    movies: str
    tags: str | None
    separator: str  # "" for the CSV releases


RELEASES = (
    Release("100k", "u.data", "u.item", None, "\t"),
    Release("1m/10m", "ratings.dat", "movies.dat", "tags.dat", "::"),
    Release("latest", "ratings.csv", "movies.csv", "tags.csv", ""),
)
DELIMITERS = {"u.data": "\t", "u.item": "|", "ratings.dat": "::", "movies.dat": "::", "tags.dat": "::"}


def release(spark: SparkSession, folder: str) -> tuple[Release, dict[str, str]]:
    """The release in ``folder`` and its files: (release, {kind: path}).

    Raises:
        InputError: the folder holds none of the releases' ratings files.
    """
    names = {PurePosixPath(f.path).name: f.path for f in io.list_files(spark, folder, allow_none=True)}
    for candidate in RELEASES:
        if candidate.ratings in names and candidate.movies in names:
            files = {"reviews": names[candidate.ratings], "products": names[candidate.movies]}
            if candidate.tags and candidate.tags in names:
                files["tags"] = names[candidate.tags]
            return candidate, files
    expected = ", ".join(f"{r.ratings} + {r.movies}" for r in RELEASES)
    raise InputError(
        f"input.movielens: {folder} is not a MovieLens release folder (looked for {expected}; "
        f"found {sorted(names)[:10] or 'no files'})"
    )


def configured(spark: SparkSession, config: Config) -> Config:
    """``config`` with the reader settings of the release in ``input.movielens`` (unchanged
    when it is not set).

    Raises:
        ConfigError: ``input.reviews`` is set too: one of the two says what to read.
    """
    folder = config.require("input.movielens")
    if not folder:
        return config
    if config.require("input.reviews"):
        raise ConfigError(
            f"input.movielens ({folder}) and input.reviews ({config.require('input.reviews')}) are both "
            "set: input.movielens reads the whole release folder; unset one of them"
        )
    found, files = release(spark, folder)
    log.info("input.movielens: MovieLens %s in %s (%s)", found.name, folder, ", ".join(files.values()))
    settings = {
        "input.reviews": files["reviews"],
        "input.products": files["products"],
        "input.tags": files.get("tags", ""),
        "input.rating_min": 0.5,
        "input.rating_max": 5.0,
        "input.timestamp_unit": "s",
    }
    if found.separator:
        settings["input.format"] = FORMAT
    else:  # the CSV releases: the generic reader with their column names
        settings.update(
            {
                "input.format": "csv",
                "input.columns": {
                    "user": "userId",
                    "item": "movieId",
                    "rating": "rating",
                    "timestamp": "timestamp",
                },
                "input.item_columns": {"item": "movieId", "title": "title", "categories": "genres"},
                "input.categories_separator": "|",
                "input.tag_columns": {"user": "userId", "item": "movieId", "tag": "tag"},
            }
        )
    return config.with_overrides([f"{key}={json.dumps(value)}" for key, value in settings.items()])


def _text(value: Column) -> Column:
    """A line as text: UTF-8 when it is, else Latin-1 (its bytes as Spark kept them)."""
    invalid = value.contains("\ufffd") | (value.cast("binary") != F.encode(value, "UTF-8"))
    return F.when(invalid, F.decode(value.cast("binary"), "ISO-8859-1")).otherwise(value)


def _fields(lines: DataFrame, files: list[io.InputFile], count: int | tuple[int, ...]) -> DataFrame:
    """``lines`` decoded, split on their file's delimiter into ``_f``, with ``shape``."""
    names = {PurePosixPath(f.path).name for f in files}
    delimiters = {DELIMITERS.get(name) for name in names}
    if None in delimiters or len(delimiters) != 1:
        raise InputError(f"input.movielens: cannot read {sorted(names)} as one MovieLens file kind")
    delimiter = delimiters.pop()
    counts = (count,) if isinstance(count, int) else count
    decoded = lines.withColumn("value", _text(F.col("value")))
    parts = F.split(F.col("value"), formats._regex_quote(delimiter))
    shape = F.when(F.col("value").rlike(r"^\s*$"), F.lit(None)).when(
        ~F.size(parts).isin(*counts),
        F.lit(f"wrong number of fields (expected {' or '.join(map(str, counts))})"),
    )
    return decoded.withColumn("_f", parts).withColumn(formats.SHAPE, shape)


def ratings(lines: DataFrame, config: Config, files: list[io.InputFile]) -> DataFrame:
    """``user<sep>item<sep>rating<sep>timestamp`` (seconds), no header."""
    parsed = _fields(lines, files, 4)
    f = F.col("_f")
    return parsed.withColumn(
        "f",
        F.struct(
            f[0].alias("user"),
            f[1].alias("item"),
            f[1].alias("asin"),
            f[2].alias("rating"),
            f[3].alias("timestamp"),
            F.lit(1000).alias("ts_unit_ms"),
            F.lit(None).cast("string").alias("title"),
            F.lit(None).cast("string").alias("text"),
            F.lit(None).cast("string").alias("verified"),
            F.lit(None).cast("string").alias("helpful"),
        ),
    )


def movies(lines: DataFrame, config: Config, files: list[io.InputFile]) -> DataFrame:
    """``u.item`` (id|title|release|video release|IMDb URL|19 genre flags) or
    ``movies.dat`` (id::title::genres, ``|``-separated)."""
    if all(PurePosixPath(f.path).name == "u.item" for f in files):
        parsed = _fields(lines, files, 5 + len(GENRES_100K))
        flags = [F.when(F.col("_f")[5 + i] == "1", F.lit(g)) for i, g in enumerate(GENRES_100K)]
        genres = F.filter(F.array(*flags), lambda g: g.isNotNull())
    else:
        parsed = _fields(lines, files, 3)
        genres = F.split(F.col("_f")[2], r"\|")
    f = F.col("_f")
    return parsed.withColumn(
        "f",
        F.struct(
            f[0].alias("item"),
            f[1].alias("title"),
            formats._empty_array().alias("description"),
            formats._empty_array().alias("features"),
            F.coalesce(genres, formats._empty_array()).alias("categories"),
            F.lit(None).cast("string").alias("brand"),
            F.lit(None).cast("string").alias("price"),
        ),
    )


def tags(lines: DataFrame, config: Config, files: list[io.InputFile]) -> DataFrame:
    """``tags.dat``: user::item::tag::timestamp."""
    parsed = _fields(lines, files, 4)
    f = F.col("_f")
    return parsed.withColumn("f", F.struct(f[0].alias("user"), f[1].alias("item"), f[2].alias("tag")))


PARSERS = {"reviews": ratings, "products": movies, "tags": tags}
