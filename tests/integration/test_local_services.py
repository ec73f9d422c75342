"""bootstrap/local/services.sh: local S3 (s3server) and DynamoDB (dynalite) on 127.0.0.1.

Runs under its own temporary AWS_LOCAL_HOME and on its own ports, so it cannot
disturb the services another test or a local run uses (default home, 9000/8000).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
from botocore.config import Config

from tests.conftest import ROOT, missing

pytestmark = pytest.mark.integration

SCRIPT = ROOT / "bootstrap" / "local" / "services.sh"
PREFERRED_PORTS = {"s3": 19000, "dynamodb": 18000}
TABLE = "local_services_test"
BUCKET = "local-services-test"


def port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


def pick_port(preferred: int) -> int:
    """The preferred port when nothing listens on it, else one the OS hands out."""
    if port_free(preferred):
        return preferred
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Services:
    def __init__(self, home: Path, s3_port: int, dynamodb_port: int) -> None:
        self.home = home
        self.ports = {"s3": s3_port, "dynamodb": dynamodb_port}
        self.env = {
            **os.environ,
            "AWS_LOCAL_HOME": str(home),
            "AWS_LOCAL_S3_PORT": str(s3_port),
            "AWS_LOCAL_DYNAMODB_PORT": str(dynamodb_port),
        }

    def run(self, command: str) -> str:
        proc = subprocess.run(
            ["bash", str(SCRIPT), command], env=self.env, capture_output=True, text=True, timeout=180
        )
        assert proc.returncode == 0, f"services.sh {command} failed:\n{proc.stdout}\n{proc.stderr}"
        return proc.stdout

    def pids(self) -> dict[str, str | None]:
        run = self.home / "run"
        return {
            name: (run / f"{name}.pid").read_text().strip() if (run / f"{name}.pid").exists() else None
            for name in self.ports
        }

    def running(self) -> bool:
        return all("running/healthy" in line for line in self.run("status").splitlines())

    def exported(self) -> dict[str, str]:
        """The variables `services.sh env` exports (credentials come only from there)."""
        out = {}
        for line in self.run("env").splitlines():
            key, _, value = line.removeprefix("export ").partition("=")
            out[key] = value
        return out


@pytest.fixture
def services(tmp_path: Path) -> Iterator[Services]:
    if shutil.which("node") is None or shutil.which("npm") is None:
        missing("node and npm are needed for dynalite (local DynamoDB)")
    svc = Services(
        tmp_path / "aws-local", pick_port(PREFERRED_PORTS["s3"]), pick_port(PREFERRED_PORTS["dynamodb"])
    )
    was_running = svc.running()
    try:
        yield svc
    finally:
        # Leave the services as they were found.
        svc.run("up" if was_running else "down")


@pytest.fixture
def clients(services: Services, monkeypatch: pytest.MonkeyPatch):
    exported = services.exported()
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION"):
        monkeypatch.setenv(key, exported[key])
    for key in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    config = Config(retries={"max_attempts": 2}, connect_timeout=5, read_timeout=30)

    def make():
        return (
            boto3.client("s3", endpoint_url=exported["AWS_LOCAL_S3_ENDPOINT"], config=config),
            boto3.client("dynamodb", endpoint_url=exported["AWS_LOCAL_DYNAMODB_ENDPOINT"], config=config),
        )

    return exported, make


def listeners(port: int) -> list[str]:
    """Local addresses listening on the port, per `ss`."""
    out = subprocess.run(["ss", "-ltnH"], capture_output=True, text=True, check=True).stdout
    return [f[3] for f in (line.split() for line in out.splitlines()) if f[3].endswith(f":{port}")]


def test_up_down_and_both_keep_their_data(services: Services, clients) -> None:
    exported, make = clients
    assert exported["AWS_LOCAL_S3_ENDPOINT"] == f"http://127.0.0.1:{services.ports['s3']}"
    assert exported["AWS_LOCAL_DYNAMODB_ENDPOINT"] == f"http://127.0.0.1:{services.ports['dynamodb']}"

    services.run("up")
    first = services.pids()
    assert all(first.values()), first
    services.run("up")  # a no-op: same processes
    assert services.pids() == first
    assert services.running()
    if shutil.which("ss"):  # bound to the loopback address only
        for port in services.ports.values():
            assert listeners(port) == [f"127.0.0.1:{port}"]

    s3, ddb = make()
    s3.create_bucket(Bucket=BUCKET)
    s3.put_object(Bucket=BUCKET, Key="a/b.txt", Body=b"hello local s3")
    assert s3.get_object(Bucket=BUCKET, Key="a/b.txt")["Body"].read() == b"hello local s3"

    ddb.create_table(
        TableName=TABLE,
        KeySchema=[{"AttributeName": "user_id", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "user_id", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
    )
    ddb.get_waiter("table_exists").wait(TableName=TABLE, WaiterConfig={"Delay": 0.2, "MaxAttempts": 100})
    item = {"user_id": {"S": "u1"}, "items": {"L": [{"S": "B001"}, {"S": "B002"}]}}
    ddb.put_item(TableName=TABLE, Item=item)
    assert ddb.get_item(TableName=TABLE, Key={"user_id": {"S": "u1"}}, ConsistentRead=True)["Item"] == item

    services.run("down")
    assert services.pids() == {"s3": None, "dynamodb": None}
    assert "running" not in services.run("status")
    for pid in first.values():
        assert not Path(f"/proc/{pid}").exists() or "State:\tZ" in Path(f"/proc/{pid}/status").read_text()
    services.run("down")  # idempotent

    services.run("up")
    second = services.pids()
    assert all(second.values()) and second != first
    s3, ddb = make()
    # dynalite kept the table and the item on disk under AWS_LOCAL_HOME/dynamodb,
    # the S3 server the bucket and the object in AWS_LOCAL_HOME/s3/objects.db.
    assert TABLE in ddb.list_tables()["TableNames"]
    assert ddb.get_item(TableName=TABLE, Key={"user_id": {"S": "u1"}}, ConsistentRead=True)["Item"] == item
    assert [b["Name"] for b in s3.list_buckets()["Buckets"]] == [BUCKET]
    assert s3.get_object(Bucket=BUCKET, Key="a/b.txt")["Body"].read() == b"hello local s3"

    # A kill -9 loses no acknowledged write either: bolt commits each one with an fsync.
    s3.put_object(Bucket=BUCKET, Key="a/c.txt", Body=b"written just before the kill")
    os.kill(int(second["s3"]), signal.SIGKILL)
    services.run("up")
    assert services.pids()["s3"] != second["s3"]
    s3, _ = make()
    assert s3.get_object(Bucket=BUCKET, Key="a/c.txt")["Body"].read() == b"written just before the kill"


def test_the_s3_server_serves_what_spark_and_boto3_ask_for(services: Services, clients) -> None:
    """The calls S3A and boto3 make beyond put and get: directory markers beside
    their folder, listings past one page, ranged reads (boto3 checks checksums),
    copies (S3A's rename), bulk deletes, multipart uploads and a conditional put."""
    _, make = clients
    services.run("up")
    s3, _ = make()
    s3.create_bucket(Bucket=BUCKET)
    s3.put_object(Bucket=BUCKET, Key="t/", Body=b"")
    s3.put_object(Bucket=BUCKET, Key="t/part-0.parquet", Body=b"0123456789")
    s3.put_object(Bucket=BUCKET, Key="t/_delta_log/00000.json", Body=b"{}")
    listed = s3.list_objects_v2(Bucket=BUCKET, Prefix="t/", Delimiter="/")
    assert [c["Key"] for c in listed["Contents"]] == ["t/", "t/part-0.parquet"]
    assert listed["CommonPrefixes"] == [{"Prefix": "t/_delta_log/"}]

    assert s3.get_object(Bucket=BUCKET, Key="t/part-0.parquet", Range="bytes=2-4")["Body"].read() == b"234"

    s3.copy_object(
        Bucket=BUCKET, Key="u/part-0.parquet", CopySource={"Bucket": BUCKET, "Key": "t/part-0.parquet"}
    )
    deleted = s3.delete_objects(
        Bucket=BUCKET, Delete={"Objects": [{"Key": "t/part-0.parquet"}, {"Key": "t/"}]}
    )
    assert sorted(d["Key"] for d in deleted["Deleted"]) == ["t/", "t/part-0.parquet"]
    assert s3.get_object(Bucket=BUCKET, Key="u/part-0.parquet")["Body"].read() == b"0123456789"

    with pytest.raises(s3.exceptions.ClientError, match="PreconditionFailed"):
        s3.put_object(Bucket=BUCKET, Key="u/part-0.parquet", Body=b"again", IfNoneMatch="*")

    upload = s3.create_multipart_upload(Bucket=BUCKET, Key="big")["UploadId"]
    parts = [
        {
            "PartNumber": n,
            "ETag": s3.upload_part(Bucket=BUCKET, Key="big", UploadId=upload, PartNumber=n, Body=body)[
                "ETag"
            ],
        }
        for n, body in ((1, b"a" * (5 << 20)), (2, b"b" * 10))
    ]
    s3.complete_multipart_upload(Bucket=BUCKET, Key="big", UploadId=upload, MultipartUpload={"Parts": parts})
    assert s3.head_object(Bucket=BUCKET, Key="big")["ContentLength"] == (5 << 20) + 10

    for i in range(1_203):
        s3.put_object(Bucket=BUCKET, Key=f"many/{i:05d}", Body=b"1")
    pages = list(s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix="many/"))
    assert len(pages) == 2
    assert [c["Key"] for page in pages for c in page["Contents"]] == [f"many/{i:05d}" for i in range(1_203)]


def test_env_prints_the_contract(tmp_path: Path) -> None:
    env = {**os.environ, "AWS_LOCAL_S3_PORT": "19001", "AWS_LOCAL_DYNAMODB_PORT": "18001"}
    env["AWS_LOCAL_HOME"] = str(tmp_path)
    out = subprocess.run(
        ["bash", str(SCRIPT), "env"], env=env, capture_output=True, text=True, check=True
    ).stdout
    exported = dict(line.removeprefix("export ").split("=", 1) for line in out.splitlines())
    assert all(line.startswith("export ") for line in out.splitlines())
    assert list(exported) == [
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_DEFAULT_REGION",
        "AWS_LOCAL_S3_ENDPOINT",
        "AWS_LOCAL_DYNAMODB_ENDPOINT",
    ]
    assert exported["AWS_ACCESS_KEY_ID"] and exported["AWS_SECRET_ACCESS_KEY"]
    assert exported["AWS_DEFAULT_REGION"] == "us-east-1"
    assert exported["AWS_LOCAL_S3_ENDPOINT"] == "http://127.0.0.1:19001"
    assert exported["AWS_LOCAL_DYNAMODB_ENDPOINT"] == "http://127.0.0.1:18001"
    assert not list(tmp_path.iterdir())  # `env` starts nothing and writes nothing


def test_bad_command_prints_usage() -> None:
    proc = subprocess.run(["bash", str(SCRIPT), "start"], capture_output=True, text=True)
    assert proc.returncode == 2 and "usage:" in proc.stderr
