"""A model version is named by its settings, its training rows, its items and the
package's code: new model code never reuses a version the old code saved."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

import amazon_recs
from amazon_recs.pipeline import versions


@pytest.fixture
def package_copy(tmp_path, monkeypatch):
    """A copy of the package's sources, which code_digest reads instead of the real ones."""
    copy = tmp_path / "amazon_recs"
    shutil.copytree(Path(amazon_recs.__file__).parent, copy, ignore=shutil.ignore_patterns("__pycache__"))
    versions.code_digest.cache_clear()
    monkeypatch.setattr(amazon_recs, "__file__", str(copy / "__init__.py"))
    yield copy
    versions.code_digest.cache_clear()


def test_the_code_digest_follows_every_source_and_nothing_else(package_copy):
    real = versions.code_digest()
    versions.code_digest.cache_clear()
    (package_copy / "__pycache__").mkdir(exist_ok=True)
    (package_copy / "__pycache__" / "stale.pyc").write_bytes(b"not a source")
    (package_copy / "notes.txt").write_text("not a source")
    assert versions.code_digest() == real  # compiled files and other files do not count

    blend = package_copy / "models" / "lists.py"
    blend.write_text(blend.read_text() + "\n# a changed blend\n")
    versions.code_digest.cache_clear()
    changed = versions.code_digest()
    assert changed != real

    (package_copy / "models" / "new_model.py").write_text("")
    versions.code_digest.cache_clear()
    assert versions.code_digest() not in (real, changed)


def test_the_same_inputs_give_the_same_version_and_other_code_another(spark, config, monkeypatch):
    train = spark.createDataFrame(
        [(0, 0, 1.0, 100), (0, 1, 2.0, 200), (1, 1, 1.0, 300), (1, 1, 1.0, 300)],
        "user_idx int, item_idx int, weight double, ts long",
    )
    items = spark.createDataFrame(
        [(0, "a", None), (1, "b", "desc")], "item_idx int, title string, text string"
    )
    auto = config.with_overrides(["run.model_version=auto"])
    first = versions.model_version(auto, train, items)
    assert first == versions.model_version(auto, train, items)
    assert versions.model_version(auto, train.limit(3), items) != first

    monkeypatch.setattr(versions, "code_digest", lambda: "0" * 64)
    assert versions.model_version(auto, train, items) != first
