"""``make package-lambda``'s zip serves real requests from a clean Python.

The zip is built as ``amazon-recs emr package-lambda`` builds it (boto3 and PyYAML
fetched from PyPI for Lambda's Python 3.11 on x86_64), unzipped into a folder,
and run by the Python of a new virtual environment holding no package at all
(the folder on ``sys.path``, as Lambda puts ``/var/task``), with the environment
variables the generated template gives each function, pointed at the local
DynamoDB and S3 servers. A small version is published there first; then:

- GET /recommendations/{user_id} (HTTP API v2 events, as the template routes them)
  returns the published list, and an unknown user the popular fallback;
- POST /events lands the event in the bucket under the events prefix and takes the
  bought product out of the user's lists.
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
import zipfile

import boto3
import pytest
import yaml

from amazon_recs.aws import functions
from amazon_recs.config import load_config
from tests.conftest import LOCAL_AWS_ENV, ROOT
from tests.gold_tables import UNKNOWN_USER, USERS, write_gold_tables
from tests.integration.test_api import publish, served

pytestmark = pytest.mark.integration

# Runs in the clean interpreter: each request line -> the handler's response.
DRIVER = """
import json, sys
from amazon_recs.serving import api
for line in sys.stdin:
    name, event = json.loads(line)
    print(json.dumps(getattr(api, name)(event, None)), flush=True)
"""


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("lambda")
    config = load_config(ROOT / "conf" / "emr.yaml")
    return functions.package_functions(ROOT, out, config, "conf/emr.yaml")


@pytest.fixture(scope="module")
def task_root(built, tmp_path_factory):
    """The zip unzipped, as Lambda lays it out under /var/task."""
    root = tmp_path_factory.mktemp("task")
    with zipfile.ZipFile(built.directory / functions.ZIP_NAME) as archive:
        archive.extractall(root)
    return root


@pytest.fixture(scope="module")
def clean_python(tmp_path_factory):
    venv = tmp_path_factory.mktemp("venv")
    subprocess.run([sys.executable, "-m", "venv", "--clear", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    for module in ("boto3", "yaml", "amazon_recs"):
        found = subprocess.run([str(python), "-c", f"import {module}"], capture_output=True)
        assert found.returncode != 0, f"the clean environment already has {module}"
    return python


def test_the_zip_holds_the_handlers_and_their_dependencies_only(built):
    with zipfile.ZipFile(built.directory / functions.ZIP_NAME) as archive:
        names = archive.namelist()
    tops = {n.split("/")[0] for n in names}
    assert {"amazon_recs", "boto3", "botocore", "yaml"} <= tops
    assert not tops & {"pyspark", "numpy", "pandas", "pyarrow", "py4j", "deltalake"}
    services = {n.split("/")[2] for n in names if n.startswith("botocore/data/") and n.count("/") > 3}
    assert services == {"dynamodb", "s3"}
    assert "amazon_recs/serving/api.py" in names and "amazon_recs/pipeline/refresh.py" not in names
    assert built.zip_bytes <= functions.MAX_ZIP_BYTES and built.unzipped_bytes <= functions.MAX_UNZIPPED_BYTES


def test_the_same_sources_give_the_same_zip(built, tmp_path):
    again = functions.package_functions(
        ROOT, tmp_path, load_config(ROOT / "conf" / "emr.yaml"), "conf/emr.yaml"
    )
    first = (built.directory / functions.ZIP_NAME).read_bytes()
    assert (again.directory / functions.ZIP_NAME).read_bytes() == first


@pytest.fixture
def deployed(built, task_root, clean_python, local_aws, tmp_path):
    """Each function as the template configures it, over a freshly published table."""
    warehouse = write_gold_tables(tmp_path / "gold")
    table = publish(local_aws["dynamodb"], warehouse)
    s3 = boto3.client("s3", endpoint_url=local_aws["s3"], region_name=LOCAL_AWS_ENV["AWS_DEFAULT_REGION"])
    bucket = f"lambda-events-{uuid.uuid4().hex[:10]}"
    s3.create_bucket(Bucket=bucket)
    template = yaml.safe_load((built.directory / functions.TEMPLATE_NAME).read_text())

    def environment(function: str) -> dict[str, str]:
        variables = template["Resources"][f"{function}Function"]["Properties"]["Environment"]["Variables"]
        local = {
            "AMAZON_RECS_TABLE": table,
            "AMAZON_RECS_DYNAMODB_ENDPOINT": local_aws["dynamodb"],
            "AMAZON_RECS_S3_ENDPOINT": local_aws["s3"],
            "AWS_REGION": LOCAL_AWS_ENV["AWS_DEFAULT_REGION"],
        }
        if "AMAZON_RECS_BUCKET" in variables:
            local["AMAZON_RECS_BUCKET"] = bucket
        return {**LOCAL_AWS_ENV, "PYTHONPATH": "", "PATH": "/usr/bin:/bin", **variables, **local}

    def call(function: str, handler: str, events: list[dict]) -> list[dict]:
        driver = f"import sys; sys.path.insert(0, {str(task_root)!r})\n{DRIVER}"
        done = subprocess.run(
            [str(clean_python), "-s", "-c", driver],
            input="".join(json.dumps([handler, e]) + "\n" for e in events),
            capture_output=True,
            text=True,
            cwd=task_root,
            env=environment(function),
            timeout=120,
        )
        assert done.returncode == 0, done.stderr
        return [json.loads(line) for line in done.stdout.splitlines()]

    return warehouse, s3, bucket, call


def http_get(user_id: str, model: str = "hybrid") -> dict:
    """An HTTP API (payload 2.0) event for the template's GET route."""
    return {
        "version": "2.0",
        "routeKey": "GET /recommendations/{user_id}",
        "rawPath": f"/recommendations/{user_id}",
        "pathParameters": {"user_id": user_id},
        "queryStringParameters": {"model": model},
        "requestContext": {"http": {"method": "GET", "path": f"/recommendations/{user_id}"}},
        "isBase64Encoded": False,
    }


def http_post(body: dict) -> dict:
    return {
        "version": "2.0",
        "routeKey": "POST /events",
        "rawPath": "/events",
        "body": json.dumps(body),
        "requestContext": {"http": {"method": "POST", "path": "/events"}},
        "isBase64Encoded": False,
    }


def test_the_packaged_functions_serve_lists_and_land_events_from_a_clean_python(deployed):
    warehouse, s3, bucket, call = deployed
    reader, buyer = USERS[0], USERS[5]
    known, unknown = call(
        "Recommendations", "recommendations_handler", [http_get(reader), http_get(UNKNOWN_USER)]
    )
    assert known["statusCode"] == 200
    assert json.loads(known["body"])["items"] == served(warehouse, reader, "hybrid")
    assert json.loads(unknown["body"])["fallback"] is True

    bought = warehouse.lists[(buyer, "hybrid")][0]["item_id"]
    event = {"user_id": buyer, "item_id": bought, "event_type": "purchase", "event_id": "zip-1"}
    (landed,) = call("Activity", "activity_handler", [http_post(event)])
    assert landed["statusCode"] == 200, landed["body"]
    stored = json.loads(landed["body"])["stored"]
    assert stored.startswith(f"s3://{bucket}/raw/events/dt=")
    key = stored.removeprefix(f"s3://{bucket}/")
    assert json.loads(s3.get_object(Bucket=bucket, Key=key)["Body"].read())["item_id"] == bought

    (after,) = call("Recommendations", "recommendations_handler", [http_get(buyer)])
    items = [i["item_id"] for i in json.loads(after["body"])["items"]]
    assert bought not in items
    assert items == [i["item_id"] for i in warehouse.lists[(buyer, "hybrid")] if i["item_id"] != bought]
