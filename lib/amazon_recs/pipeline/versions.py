"""Model versions: how a version is named, where it is stored, which one is current.

A version is derived from the model settings, the training rows, the items and
the package's code, so the same inputs give the same version, and a checkout that
pulled a change to the models or their tuning trains anew instead of reusing a
version the old code made; ``models/CURRENT`` names the one later stages use.

Versions are immutable. A version is written whole before anyone can see it:
locally into a hidden staging directory beside the others, renamed into place at
the end; on S3 (no atomic rename of a prefix) into its own prefix, complete once
its ``_COMPLETE`` marker, written last, exists. A complete version is never
written again: the train stage finds it and reuses it instead of refitting. The
one file added later is derived from it: the recommend stage's item catalogue
(``CATALOGUE_FILE``, ``save_catalogue``), which ``refresh`` maps instead of
collecting the models again; a re-run writes it whole, with the same content.

A version's ``model_info.json`` records the Delta commit of each silver table it
was trained on (``inputs``); the stages after training read those commits (time
travel), never "latest", so a features run in between cannot change the split
under a trained model.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.resources
import json
import logging
import os
import shutil
import tempfile
import uuid
from importlib.resources.abc import Traversable

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

import amazon_recs
from amazon_recs import __version__, io
from amazon_recs.config import Config
from amazon_recs.errors import StageOrderError
from amazon_recs.schemas import ITEM_IDX, TS, USER_IDX, WEIGHT
from amazon_recs.spark import MappedShare, dump_mapped, share_file

log = logging.getLogger(__name__)
CURRENT_POINTER = "CURRENT"
COMPLETE_MARKER = "_COMPLETE"  # written last into a version's directory
STAGING = ".staging-"  # prefix of a local version being written
# The silver tables a model is trained on and later stages read at the same commit.
INPUT_TABLES = (
    "silver/interactions",
    "silver/items",
    "silver/user_ids",
    "silver/item_ids",
    "silver/events",
    "silver/event_files",
)
# Left out of a warehouse whose features stage ran before these tables existed.
OPTIONAL_INPUTS = ("silver/events", "silver/event_files")
# A version directory's table of item-kNN's neighbours (item_idx, neighbour_idx, similarity, rank).
ITEM_KNN_NEIGHBOURS = "item_knn_neighbours"
# The recommend stage's catalogue of the version (models.user_lists.Catalogue), in
# spark.dump_mapped's layout: pickled classes, so named by the package that wrote it
# (another package's is not read; refresh collects the catalogue instead).
CATALOGUE_FILE = f"catalogue-{__version__}.bin"
VERSION_SECTIONS = ("split", "als", "content", "item_knn", "popular", "recommend", "tune")


@functools.cache
def code_digest() -> str:
    """``sources_digest`` of this package as imported: from a checkout, from an installed
    wheel, or from the wheel itself on ``--py-files`` (a zip import, as on EMR)."""
    return sources_digest(importlib.resources.files(amazon_recs))


def sources_digest(package: Traversable) -> str:
    """SHA-256 of the Python sources under ``package`` (relative path and bytes of each,
    in path order): the same for a checkout and the wheel built from it. The package
    version alone does not move between releases, when the code does."""
    sources: dict[str, Traversable] = {}
    folders = [("", package)]
    while folders:
        prefix, folder = folders.pop()
        for entry in folder.iterdir():
            if entry.is_dir() and entry.name != "__pycache__":
                folders.append((f"{prefix}{entry.name}/", entry))
            elif entry.is_file() and entry.name.endswith(".py"):
                sources[f"{prefix}{entry.name}"] = entry
    digest = hashlib.sha256()
    for name in sorted(sources):
        digest.update(name.encode() + b"\0" + sources[name].read_bytes() + b"\0")
    return digest.hexdigest()


def model_version(config: Config, train: DataFrame, items: DataFrame | None = None) -> str:
    """Derived from the model settings, the training rows, the items (their text feeds the
    content model) and the package's code: same inputs, same version."""
    configured = config.require("run.model_version")
    if configured != "auto":
        return configured
    data_hash = train.select(F.sum(F.xxhash64(USER_IDX, ITEM_IDX, WEIGHT, TS).cast("decimal(38,0)"))).first()[
        0
    ]
    item_hash = None
    if items is not None:
        every_column = F.xxhash64(*[F.col(c) for c in sorted(items.columns)])
        item_hash = items.select(F.sum(every_column.cast("decimal(38,0)"))).first()[0]
    settings = {s: config.require(s) for s in VERSION_SECTIONS}
    fingerprint = [settings, str(data_hash), str(item_hash), __version__, code_digest()]
    digest = hashlib.sha1(json.dumps(fingerprint, sort_keys=True).encode())
    return digest.hexdigest()[:12]


def input_versions(spark: SparkSession, config: Config) -> dict[str, int]:
    """The latest commit of each input table, to train on and to record."""
    return {
        name: io.table_version(spark, config, name)
        for name in INPUT_TABLES
        if name not in OPTIONAL_INPUTS or io.table_exists(spark, io.table_path(config, name))
    }


def model_info(spark: SparkSession, config: Config, version: str) -> dict:
    """``model_info.json`` of ``version`` ({} when absent)."""
    return json.loads(io.read_text(spark, f"{model_dir(config, version)}/model_info.json") or "{}")


def read_input(spark: SparkSession, config: Config, version: str, name: str, info: dict | None = None):
    """Input table ``name`` at the commit ``version`` was trained on (the latest for a
    model trained before commits were recorded)."""
    info = model_info(spark, config, version) if info is None else info
    return io.read_table(spark, config, name, info.get("inputs", {}).get(name))


def read_lists(spark: SparkSession, config: Config, version: str, reader: str) -> DataFrame:
    """``version``'s rows of ``gold/recommendations`` (the table keeps a few versions).

    Raises:
        StageOrderError: the recommend stage has not written them; ``reader`` names the
            stage that needs them.
    """
    recs = io.read_version(spark, config, "gold/recommendations", version)
    if not recs.limit(1).count():
        raise StageOrderError(
            f"gold/recommendations has no lists of the current version {version}: "
            f"run the recommend stage before {reader}"
        )
    return recs


def model_dir(config: Config, version: str) -> str:
    return f"{config.require('paths.models').rstrip('/')}/{version}"


def catalogue_path(config: Config, version: str) -> str:
    """Where the recommend stage saves ``version``'s catalogue: beside its models."""
    return f"{model_dir(config, version)}/{CATALOGUE_FILE}"


def save_catalogue(spark: SparkSession, config: Config, version: str, catalogue) -> str:
    """Keep the recommend stage's ``catalogue`` of ``version`` beside its models (its
    ALS index included), so ``refresh`` maps it instead of collecting every model
    part again. Replaced whole: a reader finds the old file or the new one. Returns
    its path."""
    path = catalogue_path(config, version)
    local = io.local_path(path)
    if local is not None:
        local.parent.mkdir(parents=True, exist_ok=True)
        tmp = local.with_name(f".{local.name}.{uuid.uuid4().hex}.tmp")
        dump_mapped(catalogue, str(tmp))
        os.replace(tmp, local)
        return path
    with tempfile.TemporaryDirectory(prefix="amazon-recs-catalogue-") as tmp:
        written = os.path.join(tmp, CATALOGUE_FILE)
        dump_mapped(catalogue, written)
        io.upload(spark, written, path)  # one PUT: whole or absent
    return path


def share_catalogue(spark: SparkSession, config: Config, version: str) -> MappedShare | None:
    """``version``'s saved catalogue shared with the tasks as it is (``spark.share_file``:
    mapped, never unpickled in the driver; from a remote store, copied here first), or
    None for a version whose recommend stage saved none."""
    path = catalogue_path(config, version)
    local = io.local_path(path)
    if local is not None:
        return share_file(spark, str(local)) if local.is_file() else None
    with tempfile.TemporaryDirectory(prefix="amazon-recs-catalogue-") as tmp:
        copy = os.path.join(tmp, CATALOGUE_FILE)
        return share_file(spark, copy, own=True) if io.download(spark, path, copy) else None


def pointer_path(config: Config) -> str:
    return f"{config.require('paths.models').rstrip('/')}/{CURRENT_POINTER}"


def current_version(spark: SparkSession, config: Config) -> str:
    pointer = pointer_path(config)
    version = io.read_text(spark, pointer)
    if not version:
        raise StageOrderError(f"no trained model at {pointer}: run the train stage first")
    return version.strip()


def tuning(spark: SparkSession, config: Config, version: str) -> dict | None:
    """What tuning chose for ``version`` (``tuning.json``), or None when it was not tuned."""
    tuned = io.read_text(spark, f"{model_dir(config, version)}/tuning.json")
    return json.loads(tuned) if tuned else None


def is_complete(spark: SparkSession, config: Config, version: str) -> bool:
    """Whether ``version`` was saved whole (its marker exists)."""
    return io.read_text(spark, f"{model_dir(config, version)}/{COMPLETE_MARKER}") is not None


def staging_dir(config: Config, version: str) -> str:
    """Where ``version`` is written before it becomes visible: locally a hidden sibling
    of the versions, renamed into place by ``complete``; on S3 its own prefix."""
    models = config.require("paths.models").rstrip("/")
    if io.local_path(models) is None:
        return model_dir(config, version)
    return f"{models}/{STAGING}{version}-{uuid.uuid4().hex[:8]}"


def complete(spark: SparkSession, config: Config, version: str, staged: str) -> None:
    """Make the version written under ``staged`` visible, whole: the marker last, then
    (locally) one rename. An incomplete directory of the same version (a run killed
    before this change wrote versions this way) is moved aside first, then removed."""
    io.write_text(spark, f"{staged}/{COMPLETE_MARKER}", version)
    local = io.local_path(staged)
    if local is None:
        return
    final = io.local_path(model_dir(config, version))
    aside = None
    if final.exists():
        aside = final.with_name(f"{STAGING}{version}-replaced-{uuid.uuid4().hex[:8]}")
        os.rename(final, aside)
    os.rename(local, final)
    if aside is not None:
        shutil.rmtree(aside, ignore_errors=True)


def clear_staging(config: Config) -> list[str]:
    """Remove the local staging directories of runs that died while saving a version.
    The run lock makes this run the only writer, so every one found is dead."""
    models = io.local_path(config.require("paths.models"))
    if models is None or not models.exists():
        return []
    removed = []
    for leftover in sorted(models.glob(f"{STAGING}*")):
        shutil.rmtree(leftover, ignore_errors=True)
        removed.append(leftover.name)
    if removed:
        log.warning(
            "removed %d unfinished model version(s) of dead runs: %s", len(removed), ", ".join(removed)
        )
    return removed
