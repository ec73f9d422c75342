"""load_config from s3:// URIs, as the jobs get them on EMR, against the local S3 server.

The ``extends`` chain resolves under the same prefix (or to another s3:// URI);
the endpoint is explicit or ``AWS_ENDPOINT_URL_S3``; every failure is one
ConfigError line naming the file.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import boto3
import pytest
from botocore.stub import Stubber

from amazon_recs import config as config_module
from amazon_recs.config import is_s3_uri, load_config, split_s3_uri
from amazon_recs.errors import ConfigError

CONF = Path(__file__).resolve().parents[2] / "conf"


@pytest.fixture(scope="module")
def s3(local_aws):
    return boto3.client("s3", endpoint_url=local_aws["s3"], region_name="us-east-1")


@pytest.fixture
def bucket(s3) -> str:
    name = f"conf-test-{uuid.uuid4().hex[:8]}"
    s3.create_bucket(Bucket=name)
    return name


def put(s3, bucket: str, key: str, text: str) -> str:
    s3.put_object(Bucket=bucket, Key=key, Body=text.encode("utf-8"))
    return f"s3://{bucket}/{key}"


def upload_conf(s3, bucket: str, prefix: str) -> None:
    for path in CONF.glob("*.yaml"):
        put(s3, bucket, f"{prefix}/{path.name}", path.read_text(encoding="utf-8"))


def test_the_repo_configs_load_the_same_from_s3(s3, bucket, local_aws):
    upload_conf(s3, bucket, "artifacts/0.1.0-0123456789ab/conf")
    for name in ("test.yaml", "emr.yaml", "local-aws.yaml"):
        uri = f"s3://{bucket}/artifacts/0.1.0-0123456789ab/conf/{name}"
        remote = load_config(uri, ["als.rank=4"], s3_endpoint=local_aws["s3"])
        local = load_config(CONF / name, ["als.rank=4"])
        assert remote.to_dict() == local.to_dict(), name
        assert remote.source == uri


def test_extends_resolves_under_the_same_prefix(s3, bucket, local_aws):
    put(s3, bucket, "conf/base.yaml", "a:\n  x: 1\n  y: two\n  z: [1]\n")
    put(s3, bucket, "conf/envs/mid.yaml", "extends: ../base.yaml\na:\n  x: 5\n")
    env = put(s3, bucket, "conf/envs/prod/dev.yaml", "extends: ../mid.yaml\na:\n  y: three\n")
    cfg = load_config(env, ["a.z=[2]"], s3_endpoint=local_aws["s3"])
    assert cfg.to_dict() == {"a": {"x": 5, "y": "three", "z": [2]}}


def test_extends_may_name_another_s3_uri(s3, bucket, local_aws):
    base = put(s3, bucket, "shared/base.yaml", "a:\n  x: 1\n")
    env = put(s3, bucket, "team/env.yaml", f"extends: {base}\na:\n  x: 2\n")
    assert load_config(env, s3_endpoint=local_aws["s3"]).get("a.x") == 2


def test_the_endpoint_comes_from_aws_endpoint_url_s3(s3, bucket, local_aws, monkeypatch):
    uri = put(s3, bucket, "c.yaml", "a:\n  x: 1\n")
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", local_aws["s3"])
    assert load_config(uri).get("a.x") == 1


def test_unknown_key_in_an_s3_file_names_the_uri(s3, bucket, local_aws):
    put(s3, bucket, "conf/base.yaml", "a:\n  x: 1\n")
    env = put(s3, bucket, "conf/env.yaml", "extends: base.yaml\na:\n  w: 1\n")
    with pytest.raises(ConfigError, match=rf"unknown setting 'a\.w' in {env}"):
        load_config(env, s3_endpoint=local_aws["s3"])


@pytest.mark.parametrize(
    "files, start, message",
    [
        ({"e.yaml": "a: 1\n"}, "missing.yaml", r"config file s3://{b}/missing\.yaml does not exist"),
        ({"e.yaml": "extends: gone.yaml\n"}, "e.yaml", r"config file s3://{b}/gone\.yaml does not exist"),
        ({"e.yaml": "extends: ../../up.yaml\n"}, "e.yaml", r"leads outside bucket {b}"),
        ({"e.yaml": "extends: /etc/base.yaml\n"}, "e.yaml", r"is a local path"),
        ({"a.yaml": "extends: b.yaml\n", "b.yaml": "extends: ./a.yaml\n"}, "a.yaml", r"makes a cycle"),
        ({"e.yaml": "a: [1,\n"}, "e.yaml", r"s3://{b}/e\.yaml is not valid YAML"),
        ({"e.yaml": "- a\n"}, "e.yaml", r"must hold a mapping"),
    ],
)
def test_bad_s3_configs_are_one_line_errors(s3, bucket, local_aws, files, start, message):
    for key, text in files.items():
        put(s3, bucket, key, text)
    with pytest.raises(ConfigError, match=message.format(b=bucket)):
        load_config(f"s3://{bucket}/{start}", s3_endpoint=local_aws["s3"])


def test_missing_bucket_and_unreachable_endpoint(local_aws):
    with pytest.raises(ConfigError, match=r"bucket no-such-bucket-xyz does not exist"):
        load_config("s3://no-such-bucket-xyz/c.yaml", s3_endpoint=local_aws["s3"])
    with pytest.raises(ConfigError, match=r"config file s3://b/c\.yaml could not be read: .*127\.0\.0\.1:1"):
        load_config("s3://b/c.yaml", s3_endpoint="http://127.0.0.1:1")


def test_access_denied_says_what_is_missing(monkeypatch):
    client = boto3.client("s3", region_name="us-east-1", endpoint_url="http://127.0.0.1:1")
    monkeypatch.setattr(config_module, "_s3_client", lambda endpoint: client)
    with Stubber(client) as stub:
        stub.add_client_error("get_object", service_error_code="AccessDenied", http_status_code=403)
        with pytest.raises(ConfigError, match=r"s3://b/c\.yaml: access denied \(the role needs s3:GetObject"):
            load_config("s3://b/c.yaml")


def test_each_file_of_a_chain_is_read_once(s3, bucket, local_aws, monkeypatch):
    put(s3, bucket, "base.yaml", "a:\n  x: 1\n")
    env = put(s3, bucket, "env.yaml", "extends: base.yaml\na:\n  x: 2\n")
    client = boto3.client("s3", endpoint_url=local_aws["s3"], region_name="us-east-1")
    reads = []
    client.meta.events.register(
        "before-parameter-build.s3.GetObject", lambda params, **_: reads.append(params["Key"])
    )
    monkeypatch.setattr(config_module, "_s3_client", lambda endpoint: client)
    assert load_config(env).get("a.x") == 2
    assert sorted(reads) == ["base.yaml", "env.yaml"]


def test_uri_helpers():
    assert is_s3_uri("s3://b/k.yaml") and not is_s3_uri(Path("s3:/b/k.yaml")) and not is_s3_uri("conf/x.yaml")
    assert split_s3_uri("s3://b/a/k.yaml") == ("b", "a/k.yaml")
    for bad in ("s3://b", "s3://b/", "s3:///k.yaml", "s3://b/dir/"):
        with pytest.raises(ConfigError, match="not an s3://bucket/key URI"):
            split_s3_uri(bad)
