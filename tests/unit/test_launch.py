"""bin/spark-submit's command line: what must be known when the driver's JVM starts."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from amazon_recs import launch
from amazon_recs.config import load_config
from amazon_recs.errors import ConfigError, OutOfMemory, out_of_memory
from tests.conftest import ROOT

LOCAL = ROOT / "conf" / "local.yaml"


def option(command: list[str], name: str) -> str:
    return command[command.index(name) + 1]


def test_the_job_file_splits_spark_options_from_the_jobs_own():
    argv = [
        "--conf",
        "spark.x=1",
        "--verbose",
        "jobs/train.py",
        "--config",
        "conf/test.yaml",
        "--set",
        "a.b=1",
    ]
    passthrough, job, job_args = launch.split_args(argv)
    assert (passthrough, job, job_args) == (
        ["--conf", "spark.x=1", "--verbose"],
        "jobs/train.py",
        ["--config", "conf/test.yaml", "--set", "a.b=1"],
    )
    with pytest.raises(ConfigError, match="usage"):
        launch.split_args(["--conf", "spark.x=1"])


def test_the_jobs_config_and_overrides_choose_the_driver(tmp_path):
    config = launch.job_config(
        ["--config", str(LOCAL), "--set", "spark.driver_memory=7g", "--set=spark.master=local[1]"]
    )
    command, _ = launch.submit_command(
        config, "jobs/pipeline.py", ["--config", str(LOCAL)], ["--conf", "k=v"]
    )
    # Memory and master are given to spark-submit itself: on a session builder they come too late.
    assert option(command, "--driver-memory") == "7g"
    assert option(command, "--master") == "local[1]"
    # The project's jar cache, wherever the shell stands; the caller's options last, so they win.
    assert option(command, "--conf") == f"spark.jars.ivy={ROOT / '.cache' / 'ivy'}"
    assert command[-5:] == ["--conf", "k=v", "jobs/pipeline.py", "--config", str(LOCAL)]


def test_resolved_jars_replace_resolution_only_for_the_same_packages(tmp_path):
    ivy = tmp_path / "ivy"
    (ivy / "jars").mkdir(parents=True)
    for name in ("io.delta_delta-spark_2.12-3.3.2.jar", "org.antlr_antlr4-runtime-4.9.3.jar"):
        (ivy / "jars" / name).write_bytes(b"jar")
    packages = ["io.delta:delta-spark_2.12:3.3.2"]
    assert launch.resolved_jars(ivy, packages) is None  # nothing recorded yet
    launch.record_resolved(ivy, packages)
    assert [Path(j).name for j in launch.resolved_jars(ivy, packages)] == sorted(
        p.name for p in (ivy / "jars").iterdir()
    )
    assert launch.resolved_jars(ivy, [*packages, "org.apache.hadoop:hadoop-aws:3.3.4"]) is None
    config = load_config(LOCAL, [f"spark.ivy_dir={ivy}", f"spark.packages=[{packages[0]}]"])
    command, _ = launch.submit_command(config, "jobs/train.py", [])
    assert "--packages" not in command and option(command, "--jars").count(".jar") == 2
    (ivy / "jars" / "org.antlr_antlr4-runtime-4.9.3.jar").unlink()  # a jar gone: resolve again
    command, _ = launch.submit_command(config, "jobs/train.py", [])
    assert option(command, "--packages") == packages[0]
    assert json.loads((ivy / launch.RESOLVED).read_text())["packages"] == packages


def test_spark_logs_to_a_file_per_run_unless_the_platform_keeps_them(tmp_path):
    config = load_config(LOCAL, [f"spark.log_dir={tmp_path}"])
    when = datetime(2026, 11, 30, 13, 5, 9, tzinfo=UTC)
    assert launch.log_file(config, when) == str(tmp_path / "spark-20261130T130509Z.log")
    command, path = launch.submit_command(config, "jobs/train.py", [])
    options = option(command, "--driver-java-options")
    assert f"-Damazon_recs.log_file={path}" in options and "console_level=off" in options
    assert "spark_level=warn" in options  # the console is quiet, Spark's log file is not
    command, _ = launch.submit_command(config, "jobs/train.py", [], verbose=True)
    assert "console_level=info" in option(command, "--driver-java-options")
    assert "spark_level=info" in option(command, "--driver-java-options")
    quiet = load_config(LOCAL, ["spark.log_dir="])
    command, path = launch.submit_command(quiet, "jobs/train.py", [])
    assert path is None and "--driver-java-options" not in command


@pytest.mark.parametrize(
    "error, gone",
    [
        (
            "An error occurred while calling o4716.collectToPython.\n: java.lang.OutOfMemoryError: Java heap",
            False,
        ),
        ("Answer from Java side is empty", True),
        (  # the heap ran out fetching a large task result: the job says only this
            "An error occurred while calling z:org.apache.spark.api.python.PythonRDD.collectAndServe.\n"
            ": org.apache.spark.SparkException: Job aborted due to stage failure: Task 0 in stage 300.0 "
            "failed 1 times, most recent failure: Lost task 0.0 in stage 300.0 (TID 870) (localhost executor "
            "driver): TaskResultLost (result lost from block manager)",
            False,
        ),
    ],
)
def test_running_out_of_memory_is_one_line_naming_stage_step_and_setting(error, gone):
    exc = RuntimeError(error)
    oom = out_of_memory(exc, "train", "tuning: fitting ALS 3 of 6", "4g", "/x/spark.log")
    assert isinstance(oom, OutOfMemory)
    message = str(oom)
    assert "\n" not in message
    assert message.startswith("stage train (tuning: fitting ALS 3 of 6) ")
    assert "spark.driver_memory=4g" in message and "--set spark.driver_memory=8g" in message
    assert ("stopped answering" in message) is gone
    assert out_of_memory(RuntimeError("Table not found"), "train", None, "4g", None) is None
