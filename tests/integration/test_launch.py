"""bin/spark-submit from a new shell: no virtualenv activated, no JAVA_HOME, and the
project's memory, jar cache and logging applied when the driver's JVM starts."""

from __future__ import annotations

import os
import re
import subprocess

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.integration


def test_a_job_runs_as_the_readme_shows_it_from_a_new_shell(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "LANG": "C.UTF-8"}
    if os.environ.get("PYTHONPATH"):  # a checkout beside the one the virtualenv installed
        env["PYTHONPATH"] = os.environ["PYTHONPATH"]
    settings = [
        f"paths.raw={tmp_path / 'raw'}",
        f"paths.warehouse={tmp_path / 'warehouse'}",
        f"paths.models={tmp_path / 'models'}",
        f"paths.reports={tmp_path / 'reports'}",
        f"spark.log_dir={tmp_path / 'logs'}",
        f"spark.checkpoint_dir={tmp_path / 'checkpoints'}",
        "spark.driver_memory=1536m",
        "sample.users=60",
        "sample.items=30",
    ]
    command = [str(ROOT / "bin" / "spark-submit"), "jobs/ingest.py", "--config", "conf/local.yaml"]
    command += [arg for s in settings for arg in ("--set", s)]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-3000:]

    # The driver got the configured heap, not spark-submit's default 1 GiB.
    heap = float(re.search(r"JVM heap at most ([\d.]+) GiB \(spark.driver_memory 1536m\)", output).group(1))
    assert 1.3 <= heap <= 1.5
    assert "stage ingest: done in" in output
    # A readable console: no Spark INFO chatter, no Ivy resolution (the jars are recorded).
    assert not re.search(r"^\S+ \S+ INFO (SparkContext|Utils|SecurityManager)", output, re.M), output[:2000]
    assert ":: resolving dependencies ::" not in output
    logs = list((tmp_path / "logs").glob("spark-*.log"))
    assert len(logs) == 1 and f"Spark's log: {logs[0]}" in output
    assert (tmp_path / "warehouse" / "bronze" / "reviews" / "_delta_log").is_dir()


def test_a_missing_virtualenv_is_one_line(tmp_path):
    fake = tmp_path / "project"
    (fake / "bin").mkdir(parents=True)
    (fake / "bin" / "spark-submit").write_bytes((ROOT / "bin" / "spark-submit").read_bytes())
    (fake / "bin" / "spark-submit").chmod(0o755)
    done = subprocess.run(
        [str(fake / "bin" / "spark-submit"), "jobs/train.py"],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin"},
    )
    assert done.returncode == 1
    assert done.stderr.strip() == f"error: {fake}/.venv is missing: run 'make setup' (or 'make run') first"


BOOM = """
from pyspark.sql import SparkSession

from amazon_recs.pipeline.base import progress, stage


@stage
def run_boom(spark, config):
    progress("repeating a string past the heap")
    spark.range(1).selectExpr("length(repeat(cast(id as string), 700000000)) as n").collect()
    return {}


run_boom(SparkSession.builder.getOrCreate(), None)
"""


def test_a_task_out_of_heap_is_one_line_naming_stage_step_and_setting(tmp_path):
    """A task's OutOfMemoryError makes Spark end the JVM (exit 52), and the Python
    driver with it: the launcher says where, and Spark's log keeps the error."""
    job = tmp_path / "boom.py"
    job.write_text(BOOM)
    command = [str(ROOT / "bin" / "spark-submit"), str(job), "--config", "conf/local.yaml"]
    command += ["--set", "spark.driver_memory=512m", "--set", f"spark.log_dir={tmp_path / 'logs'}"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 3, done.stdout + done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert errors == [
        "error: stage boom (repeating a string past the heap) ran out of memory (Spark ended its JVM "
        "with exit 52: java.lang.OutOfMemoryError) with spark.driver_memory=512m: raise it, e.g. "
        '--set spark.driver_memory=8g (make run SET="spark.driver_memory=8g"); '
        f"Spark's log: {next((tmp_path / 'logs').glob('spark-*.log'))}"
    ], done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    (log,) = (tmp_path / "logs").glob("spark-*.log")
    assert "java.lang.OutOfMemoryError: Java heap space" in log.read_text()
