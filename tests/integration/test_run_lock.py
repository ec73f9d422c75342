"""A second run on a warehouse in use stops at once, in one line, before Spark starts work."""

from __future__ import annotations

import os
import subprocess

import pytest

from amazon_recs.pipeline import run_lock as rl
from tests.conftest import ROOT

pytestmark = pytest.mark.integration


def test_a_second_run_on_a_locked_warehouse_stops_at_once_naming_the_first(tmp_path):
    warehouse = tmp_path / "warehouse"
    first = rl.RunLock(warehouse, "20261201T000000Z-abcdef", ["ingest", "features"])
    first.acquire()
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "LANG": "C.UTF-8"}
    if os.environ.get("PYTHONPATH"):
        env["PYTHONPATH"] = os.environ["PYTHONPATH"]
    command = [str(ROOT / "bin" / "spark-submit"), "jobs/pipeline.py", "--config", "conf/local.yaml"]
    for setting in (f"paths.warehouse={warehouse}", f"spark.log_dir={tmp_path / 'logs'}"):
        command += ["--set", setting]
    try:
        done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    finally:
        first.release()
    output = done.stdout + done.stderr  # spark-submit passes the driver's stderr on as stdout
    assert done.returncode == 4, output
    errors = [line for line in output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, output
    assert "is in use by run 20261201T000000Z-abcdef" in errors[0] and "stages ingest, features" in errors[0]
    assert "stage ingest: starting" not in output and "Traceback" not in output
    assert not (tmp_path / "logs").exists()  # refused before the SparkSession was built
