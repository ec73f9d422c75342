"""A second run on a warehouse in use stops at once, in one line, before Spark starts work."""

from __future__ import annotations

import importlib.util
import os
import re
import signal
import subprocess
import sys
import time
import uuid

import boto3
import pytest

from amazon_recs.failpoints import ENV as FAILPOINT_ENV
from amazon_recs.pipeline import run_lock as rl
from amazon_recs.pipeline.registry import STAGE_ORDER
from amazon_recs.pipeline.summary import SUMMARY_TABLES
from amazon_recs.serving import dynamodb
from tests.conftest import LOCAL_AWS_ENV, ROOT, shared_data
from tests.tables import assert_same_rows

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
    assert "JVM heap at most" not in output  # refused before the SparkSession was built


def spark_submit(home, config: str, settings, env_extra: dict | None = None, job: str = "pipeline"):
    """bin/spark-submit jobs/<job>.py --config <config> --set <setting>... in its own process
    group (the launcher, the JVM, the driver and its Python workers), output in one pipe."""
    env = {"PATH": "/usr/bin:/bin", "HOME": str(home), "LANG": "C.UTF-8", **(env_extra or {})}
    if os.environ.get("PYTHONPATH"):
        env["PYTHONPATH"] = os.environ["PYTHONPATH"]
    command = [str(ROOT / "bin" / "spark-submit"), f"jobs/{job}.py", "--config", config]
    for setting in settings:
        command += ["--set", setting]
    return subprocess.Popen(
        command,
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group: killpg reaches all of it
    )


def submit(tmp_path, root, *settings, env_extra: dict | None = None, job: str = "pipeline"):
    """The test config with everything under ``root``."""
    folders = [f"paths.{name}={root / name}" for name in ("raw", "warehouse", "models", "reports")]
    folders.append(f"spark.checkpoint_dir={root / 'checkpoints'}")
    return spark_submit(tmp_path, "conf/test.yaml", [*folders, *settings], env_extra, job)


def gold(root) -> list[tuple]:
    from deltalake import DeltaTable

    rows = DeltaTable(str(root / "warehouse" / "gold" / "recommendations")).to_pyarrow_table().to_pylist()
    return sorted((r["model"], r["user_id"], r["rank"], r["item_id"], r["model_version"]) for r in rows)


def test_a_run_killed_while_saving_its_model_is_recovered_and_a_concurrent_run_refused(tmp_path):
    """kill -9 the whole run half-way through saving the model (ALS written, the
    neighbour tables not yet): its lock and half a version are left behind, hidden in
    a staging directory, with no CURRENT. The next run takes the lock over at once (the
    pid is gone), removes the half version, and ends with the same tables and the same
    current version as a run that was never interrupted; a run started beside that
    uninterrupted one, on its warehouse, is refused at once."""
    crashed = tmp_path / "crashed"
    first = submit(tmp_path, crashed, env_extra={FAILPOINT_ENV: "train.model_half_saved"})
    output = []
    for line in first.stdout:
        output.append(line)
        if "failpoint train.model_half_saved reached" in line:
            os.killpg(first.pid, signal.SIGKILL)  # the whole run, the Python driver included
            break
    first.wait(timeout=120)
    assert any("failpoint train.model_half_saved reached" in line for line in output), "".join(output)[-3000:]
    holder = rl.RunLock(crashed / "warehouse", "probe", []).read()
    assert holder is not None  # the dead run's lock is still there
    models = crashed / "models"
    (half,) = models.glob(".staging-*")
    assert (half / "als").is_dir() and not (half / "item_neighbours").exists()
    assert sorted(p.name for p in models.iterdir()) == [half.name]  # nothing visible, no CURRENT

    again = submit(tmp_path, crashed)
    log = again.communicate(timeout=900)[0]
    assert again.returncode == 0, log[-3000:]
    assert f"took over the lock of run {holder.run_id}" in log and "is gone from this host" in log
    assert f"removed 1 unfinished model version(s) of dead runs: {half.name}" in log
    assert not half.exists()
    assert not (crashed / "warehouse" / rl.LOCK_NAME).exists()

    # The uninterrupted run, with a second run started on its warehouse while it works:
    # the second is refused at once, naming it, and the first ends untouched (its tables
    # equal the recovered ones).
    clean = tmp_path / "clean"
    reference = submit(tmp_path, clean)
    head = []
    for line in reference.stdout:
        head.append(line)
        if "stage ingest: starting" in line:
            break
    (holder_id,) = re.findall(r"run (\S+): holding the lock", "".join(head))
    second = submit(tmp_path, clean)
    second_log = second.communicate(timeout=300)[0]
    assert second.returncode == 4, second_log[-3000:]
    assert f"is in use by run {holder_id}" in second_log and "stage ingest: starting" not in second_log
    reference_log = "".join(head) + reference.communicate(timeout=900)[0]
    assert reference.returncode == 0, reference_log[-3000:]
    assert_same_rows(gold(crashed), gold(clean), "gold/recommendations")
    assert (crashed / "models" / "CURRENT").read_text() == (clean / "models" / "CURRENT").read_text()
    assert_bench_reads_every_figure(reference_log)


def assert_bench_reads_every_figure(output: str) -> None:
    """``make bench-scale`` runs the pipeline as this test does and reads its figures from
    the output's progress lines (bench/scale.py): a reworded line must fail here, not
    leave a blank in BENCHMARKS.md after a 10-minute run."""
    spec = importlib.util.spec_from_file_location("bench_scale", ROOT / "bench" / "scale.py")
    bench = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = bench  # its dataclasses look their module up while it loads
    spec.loader.exec_module(bench)
    progress = bench.read_progress(output.splitlines())
    assert [stage for stage, _ in progress.stages] == list(STAGE_ORDER), output[-3000:]
    assert all(seconds > 0 for _, seconds in progress.stages)
    assert progress.lists and float(progress.lists.group(1)) > 0 and int(progress.lists.group(4)) >= 1
    assert progress.content and progress.content.group(2) == "exact"  # 80 products: below exact_max_items
    assert progress.search and progress.search.group(1) == "exact"  # below recommend.ivf_min_items
    assert progress.probe is None and progress.recall is None  # printed for the index only
    tables = dict(progress.tables)
    assert set(tables) == set(SUMMARY_TABLES) and int(tables["silver/interactions"]) > 0, tables


def test_runs_on_an_s3_warehouse_exclude_each_other_through_the_dynamodb_lease(tmp_path, local_aws):
    """An s3:// warehouse's lock is a lease in DynamoDB: a live lease (held by a run on
    another machine) stops a run at once; a dead one is taken over, the run completes
    on the local S3 and DynamoDB servers, and its lease is gone afterwards."""
    run = uuid.uuid4().hex[:8]
    bucket, table = f"lease-{run}", f"lease-{run}"
    s3 = boto3.client("s3", endpoint_url=local_aws["s3"], region_name="us-east-1")
    s3.create_bucket(Bucket=bucket)
    for name in ("Gift_Cards_5.json.gz", "meta_Gift_Cards.json.gz"):
        s3.upload_file(str(shared_data("amazon-2018", "gift_cards", name)), bucket, f"raw/{name}")
    client = boto3.client("dynamodb", endpoint_url=local_aws["dynamodb"], region_name="us-east-1")
    dynamodb.ensure_table(client, table)
    warehouse = f"s3://{bucket}/warehouse"
    other = rl.DynamoLease(client, table, warehouse, "20261201T000000Z-0ther0", ["train"])
    other.me.host = "emr-primary.internal"  # a run on another machine: only its renewals count
    other.me.started_at = other.me.renewed_at = time.time()
    assert other._create()

    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "LANG": "C.UTF-8", **LOCAL_AWS_ENV}
    if os.environ.get("PYTHONPATH"):
        env["PYTHONPATH"] = os.environ["PYTHONPATH"]
    command = [str(ROOT / "bin" / "spark-submit"), "jobs/ingest.py", "--config", "conf/local-aws.yaml"]
    for setting in (
        f"aws.bucket={bucket}",
        f"aws.s3_endpoint={local_aws['s3']}",
        f"aws.dynamodb_endpoint={local_aws['dynamodb']}",
        f"export.dynamodb.table={table}",
        f"input.reviews=s3://{bucket}/raw/Gift_Cards_5.json.gz",
        f"input.products=s3://{bucket}/raw/meta_Gift_Cards.json.gz",
        f"spark.log_dir={tmp_path / 'logs'}",
        f"spark.checkpoint_dir={tmp_path / 'checkpoints'}",
    ):
        command += ["--set", setting]

    def submit():
        done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
        return done.returncode, done.stdout + done.stderr

    code, output = submit()
    assert code == 4, output
    errors = [line for line in output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, output
    assert f"the warehouse {warehouse} is in use by run 20261201T000000Z-0ther0" in errors[0]
    assert "on emr-primary.internal" in errors[0] and f"DynamoDB table {table}" in errors[0]
    assert "JVM heap at most" not in output  # refused before the SparkSession was built

    client.update_item(  # that run died ten minutes ago
        TableName=table,
        Key=other.key,
        UpdateExpression="SET renewed_at = :t",
        ExpressionAttributeValues={":t": {"N": repr(time.time() - 600)}},
    )
    code, output = submit()
    assert code == 0, output
    assert "took over the lock of run 20261201T000000Z-0ther0" in output
    assert re.search(r"not renewed for 6\d\ds \(ttl 300s\)", output), output
    assert "stage ingest: done" in output
    assert other.read() is None  # released at the end of the run
    listed = s3.list_objects_v2(Bucket=bucket, Prefix="warehouse/bronze/reviews/_delta_log/")["KeyCount"]
    assert listed > 0
