"""One SparkSession for each test process (`make test` runs two, pytest-xdist's
workers, each a file at a time); each test writes under tmp_path."""

from __future__ import annotations

import gc
import os
import subprocess
from pathlib import Path

import pytest
from pyspark import SparkContext

from amazon_recs.config import Config, load_config
from amazon_recs.spark import get_spark, release_caches

ROOT = Path(__file__).resolve().parents[1]
TEST_CONFIG = ROOT / "conf" / "test.yaml"
# Real public data lives beside the checkout; override with AMAZON_RECS_SHARED_DATA.
SHARED_DATA = Path(os.environ.get("AMAZON_RECS_SHARED_DATA", ROOT.parent / "shared" / "data"))

# Every AWS call in the tests goes to the local servers on 127.0.0.1, which take
# any key. Set before the JVM starts, so S3A and the executors see the same; the
# caller's own AWS credentials are never used.
LOCAL_AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "local",
    "AWS_SECRET_ACCESS_KEY": "local",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
}
for _var in ("AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE"):
    os.environ.pop(_var, None)
os.environ.update(LOCAL_AWS_ENV)


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


@pytest.fixture(autouse=True, scope="module")
def _module_leaves_nothing_cached(request):
    """What a test module cached ends with it, as a stage's caches end with the
    stage: one driver runs the whole suite, and caches hold its heap."""
    yield
    if SparkContext._active_spark_context is not None:
        spark = request.getfixturevalue("spark")
        release_caches(spark)
        # What the module's plans held (Spark's own join broadcasts, shuffles) is
        # cleaned once the JVM collects them: let both sides collect now, not
        # when the old generation happens to fill.
        gc.collect()
        spark.sparkContext._jvm.java.lang.System.gc()


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


def missing(reason: str) -> None:
    """A dependency of the test is absent: skipped on a developer's machine, failed
    with the reason under CI=true, where a green run must mean every proof ran."""
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"CI=true and {reason}", pytrace=False)
    pytest.skip(reason)


def shared_data(*parts: str) -> Path:
    """A path in the shared real-data folder; without it, ``missing`` with the reason."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        missing(f"real data {path} not found (set AMAZON_RECS_SHARED_DATA; download links in README.md)")
    return path


SERVICES = ROOT / "bootstrap" / "local" / "services.sh"
# pytest-xdist's worker of this process (gw0, gw1, ...): each worker runs its own
# servers, since a test may kill and restart them (test_crash_s3).
WORKER = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw"))
# Ports of their own, so a `make up` on the defaults (9000, 8000) is left alone, one
# pair per worker. Overridable, so two checkouts can run their suites side by side.
TEST_S3_PORT = int(os.environ.get("AMAZON_RECS_TEST_S3_PORT", "19100")) + WORKER
TEST_DYNAMODB_PORT = int(os.environ.get("AMAZON_RECS_TEST_DYNAMODB_PORT", "18100")) + WORKER


@pytest.fixture(scope="session")
def local_aws(tmp_path_factory):
    """Local S3 (s3server) and DynamoDB (dynalite) servers on 127.0.0.1 for this test
    session, started and stopped by bootstrap/local/services.sh: their endpoints."""
    home = tmp_path_factory.mktemp("aws-local")
    env = {
        **os.environ,
        "AWS_LOCAL_HOME": str(home),
        "AWS_LOCAL_S3_PORT": str(TEST_S3_PORT),
        "AWS_LOCAL_DYNAMODB_PORT": str(TEST_DYNAMODB_PORT),
    }

    def services(command: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            ["bash", str(SERVICES), command], env=env, capture_output=True, text=True, timeout=600
        )

    started = services("up")
    assert started.returncode == 0, f"services.sh up failed:\n{started.stdout}{started.stderr}"
    yield {
        "s3": f"http://127.0.0.1:{TEST_S3_PORT}",
        "dynamodb": f"http://127.0.0.1:{TEST_DYNAMODB_PORT}",
        "home": home,  # AWS_LOCAL_HOME: pid files, logs, the servers' data
        "services": services,  # run services.sh up|down|status on these servers
    }
    services("down")
