"""One SparkSession for the whole test session; each test writes under tmp_path."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from amazon_recs.config import Config, load_config
from amazon_recs.spark import get_spark

ROOT = Path(__file__).resolve().parents[1]
TEST_CONFIG = ROOT / "conf" / "test.yaml"
# Real public data lives beside the checkout; override with AMAZON_RECS_SHARED_DATA.
SHARED_DATA = Path(os.environ.get("AMAZON_RECS_SHARED_DATA", ROOT.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def spark(tmp_path_factory):
    config = load_config(
        TEST_CONFIG,
        [
            f"spark.ivy_dir={ROOT / '.cache' / 'ivy'}",
            f"spark.checkpoint_dir={tmp_path_factory.mktemp('checkpoints')}",
        ],
    )
    session = get_spark(config)
    yield session
    session.stop()


@pytest.fixture
def config(tmp_path: Path) -> Config:
    """The test configuration with every output path under this test's tmp_path."""
    return load_config(
        TEST_CONFIG,
        [
            f"paths.raw={tmp_path / 'raw'}",
            f"paths.warehouse={tmp_path / 'warehouse'}",
            f"paths.models={tmp_path / 'models'}",
            f"paths.reports={tmp_path / 'reports'}",
            f"spark.checkpoint_dir={tmp_path / 'checkpoints'}",
        ],
    )


def shared_data(*parts: str) -> Path:
    """A path in the shared real-data folder, or skip the test with the reason."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"real data {path} not found (set AMAZON_RECS_SHARED_DATA; download links in README.md)")
    return path
