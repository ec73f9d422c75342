"""The local S3 server killed and restarted in the middle of a run's writes: the run
ends as an uninterrupted one does, and a restart after it loses nothing.

Two ``bin/spark-submit jobs/pipeline.py`` runs on s3:// (conf/local-aws.yaml) against
the session's S3 and DynamoDB servers, each with a bucket and a DynamoDB table of its
own holding amazon-2018/gift_cards:

A. an uninterrupted run;
B. the same settings, with the S3 server killed (``kill -9``) the moment the train
   stage starts saving the model, and started again (``services.sh up``, the same
   ``objects.db``) some seconds later, while the run goes on writing.

B completes: S3A's retries carry its writes over the outage. Then both servers are
stopped and started once more (``down``, ``up``), and B's bucket holds what A's does:
the same gold tables (row for row, read without Spark), the same model files, the
same bronze and silver rows, and DynamoDB the same lists under the same version.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import boto3
import pytest
from deltalake import DeltaTable

from amazon_recs.serving import dynamodb
from tests.conftest import LOCAL_AWS_ENV, shared_data
from tests.integration.test_aws import FAST, GIFT_CARDS
from tests.integration.test_run_lock import spark_submit
from tests.tables import assert_same_rows

pytestmark = pytest.mark.integration

REGION = LOCAL_AWS_ENV["AWS_DEFAULT_REGION"]
OUTAGE_SECONDS = 8
# Where the outage starts: the model's files are written right after this line.
SAVING = "stage train: fitted ALS"
RANDOM_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
RANDOM_UID = re.compile(r"(?<=_)[0-9a-f]{12}\b")


class Shop:
    """A bucket holding gift_cards and a DynamoDB table, for one run."""

    def __init__(self, local_aws, tmp: Path) -> None:
        name = f"crash-s3-{uuid.uuid4().hex[:8]}"
        self.bucket = self.table = name
        self.local_aws = local_aws
        self.tmp = tmp
        self.back_at: datetime | None = None  # when the S3 server was up again, in the run it restarted
        s3 = self.s3()
        s3.create_bucket(Bucket=self.bucket)
        for file in GIFT_CARDS:
            s3.upload_file(
                str(shared_data("amazon-2018", "gift_cards", file)),
                self.bucket,
                f"raw/amazon-2018/gift_cards/{file}",
            )

    def s3(self):
        return boto3.client("s3", endpoint_url=self.local_aws["s3"], region_name=REGION)

    def submit(self) -> subprocess.Popen:
        settings = [
            f"aws.bucket={self.bucket}",
            f"aws.s3_endpoint={self.local_aws['s3']}",
            f"aws.dynamodb_endpoint={self.local_aws['dynamodb']}",
            f"export.dynamodb.table={self.table}",
            f"spark.checkpoint_dir={self.tmp / 'checkpoints'}",
            *FAST,
        ]
        return spark_submit(self.tmp, "conf/local-aws.yaml", settings, LOCAL_AWS_ENV)

    def objects(self, prefix: str) -> list[dict]:
        pages = self.s3().get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix)
        return [obj for page in pages for obj in page.get("Contents", [])]

    def files(self, prefix: str) -> list[str]:
        """The keys under the prefix, after it, with the random part of their names
        (Spark's part-file uuids, ML stages' uids) made the same in every run."""
        keys = (obj["Key"].removeprefix(prefix) for obj in self.objects(prefix))
        return sorted(RANDOM_UID.sub("<uid>", RANDOM_UUID.sub("<uuid>", key)) for key in keys)

    def rows(self, table: str) -> list[tuple]:
        options = {
            "AWS_ENDPOINT_URL": self.local_aws["s3"],
            "AWS_REGION": REGION,
            "AWS_ACCESS_KEY_ID": LOCAL_AWS_ENV["AWS_ACCESS_KEY_ID"],
            "AWS_SECRET_ACCESS_KEY": LOCAL_AWS_ENV["AWS_SECRET_ACCESS_KEY"],
            "AWS_ALLOW_HTTP": "true",
        }
        rows = DeltaTable(f"s3://{self.bucket}/warehouse/{table}", storage_options=options).to_pyarrow_table()
        # The run's own id differs by construction, and source paths name the bucket.
        return sorted(
            tuple(repr(v).replace(self.bucket, "<bucket>") for k, v in row.items() if k != "ingest_run_id")
            for row in rows.to_pylist()
        )

    def lists(self) -> tuple[str, dict[tuple[str, str], list[str]]]:
        """The served version and (user, model) -> item ids of its lists in DynamoDB."""
        client = dynamodb.make_client(
            dynamodb.StoreSettings(table=self.table, region=REGION, endpoint_url=self.local_aws["dynamodb"])
        )
        version = dynamodb.current_version(client, self.table)["model_version"]
        out = {}
        for page in client.get_paginator("scan").paginate(TableName=self.table):
            for raw in page["Items"]:
                item = {k: dynamodb.untyped(v) for k, v in raw.items()}
                if item["pk"].startswith("rec#") and item["sk"] == version:
                    out[(item["user_id"], item["model"])] = [i["item_id"] for i in item["items"]]
        return version, out


def finish(run: subprocess.Popen, output: list[str]) -> str:
    output.append(run.communicate(timeout=900)[0])
    text = "".join(output)
    assert run.returncode == 0, text[-4000:]
    return text


@pytest.fixture(scope="module")
def shops(local_aws, tmp_path_factory):
    services = local_aws["services"]
    uninterrupted = Shop(local_aws, tmp_path_factory.mktemp("uninterrupted"))
    finish(uninterrupted.submit(), [])

    restarted = Shop(local_aws, tmp_path_factory.mktemp("restarted"))
    run, output = restarted.submit(), []
    for line in run.stdout:
        output.append(line)
        if SAVING in line:
            pid = int((local_aws["home"] / "run" / "s3.pid").read_text())
            os.kill(pid, signal.SIGKILL)
            time.sleep(OUTAGE_SECONDS)
            started = services("up")
            assert started.returncode == 0 and "s3: started" in started.stdout, (
                started.stdout + started.stderr
            )
            restarted.back_at = datetime.now(tz=UTC)
            break
    log = finish(run, output)
    assert SAVING in log

    # Both servers once more, after the run: nothing it wrote may depend on their memory.
    for command in ("down", "up"):
        done = services(command)
        assert done.returncode == 0, done.stdout + done.stderr
    return uninterrupted, restarted


@pytest.mark.parametrize(
    "table",
    [
        "bronze/reviews",
        "silver/interactions",
        "gold/recommendations",
        "gold/user_recommendations",
        "gold/popular_fallback",
        "gold/metrics",
    ],
)
def test_the_tables_equal_those_of_an_uninterrupted_run(shops, table):
    uninterrupted, restarted = shops
    expected = uninterrupted.rows(table)
    assert expected
    assert_same_rows(restarted.rows(table), expected, table)


def test_the_model_was_saved_across_the_outage(shops):
    """The save did not finish before the kill: files of the model were written once
    the server was back, by the same run."""
    _, restarted = shops
    (version,) = {o["Key"].split("/")[1] for o in restarted.objects("models/") if o["Key"].count("/") > 1}
    assert max(o["LastModified"] for o in restarted.objects(f"models/{version}/")) > restarted.back_at


def test_the_model_directory_holds_the_same_files(shops):
    uninterrupted, restarted = shops
    expected = uninterrupted.files("models/")
    assert "CURRENT" in expected and any(key.endswith("/_COMPLETE") for key in expected)
    assert restarted.files("models/") == expected


def test_dynamodb_serves_the_same_version_and_lists(shops):
    uninterrupted, restarted = shops
    version, lists = uninterrupted.lists()
    assert lists and restarted.lists() == (version, lists)
