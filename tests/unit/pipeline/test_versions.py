"""A model version is named by its settings, its training rows, its items and the
package's code: new model code never reuses a version the old code saved."""

from __future__ import annotations

import shutil
import zipfile
from pathlib import Path

import pytest

import amazon_recs
from amazon_recs.pipeline import versions


@pytest.fixture
def package_copy(tmp_path):
    """A copy of the package's sources."""
    copy = tmp_path / "amazon_recs"
    shutil.copytree(Path(amazon_recs.__file__).parent, copy, ignore=shutil.ignore_patterns("__pycache__"))
    return copy


def test_the_code_digest_follows_every_source_and_nothing_else(package_copy):
    real = versions.code_digest()
    assert versions.sources_digest(package_copy) == real
    (package_copy / "__pycache__").mkdir(exist_ok=True)
    (package_copy / "__pycache__" / "stale.py").write_text("# not a source")
    (package_copy / "notes.txt").write_text("not a source")
    assert versions.sources_digest(package_copy) == real  # compiled and other files do not count

    blend = package_copy / "models" / "lists.py"
    blend.write_text(blend.read_text() + "\n# a changed blend\n")
    changed = versions.sources_digest(package_copy)
    assert changed != real
    (package_copy / "models" / "new_model.py").write_text("")
    assert versions.sources_digest(package_copy) not in (real, changed)


def test_the_package_in_a_zip_has_the_digest_of_its_checkout(package_copy, tmp_path):
    """An EMR step imports the package from the wheel on --py-files (a zip): the same
    code must give the same versions there."""
    wheel = tmp_path / "package.zip"
    with zipfile.ZipFile(wheel, "w") as zf:
        for path in sorted(package_copy.rglob("*")):
            if path.is_file():
                zf.write(path, path.relative_to(package_copy.parent).as_posix())
    assert versions.sources_digest(zipfile.Path(wheel, "amazon_recs/")) == versions.code_digest()


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
