"""The Lambda functions' package (aws.functions): what the handlers import, and the
CloudFormation template, validated by cfn-lint. The zip itself serving requests from a
clean environment is tests/integration/test_lambda_package.py."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from amazon_recs.aws import emr, functions
from amazon_recs.aws.artifacts import PackagingError
from amazon_recs.config import load_config
from tests.conftest import ROOT

VERSION = "0.1.0-0123456789ab"


@pytest.fixture(scope="module")
def config():
    return load_config(ROOT / "conf" / "emr.yaml")


@pytest.fixture(scope="module")
def document(config) -> dict:
    rel = emr.release(config, VERSION)
    return functions.template(config, rel, "conf/emr.yaml", ["recommend.k=10"])


def statements(document: dict, role: str) -> list[dict]:
    (policy,) = document["Resources"][role]["Properties"]["Policies"]
    return policy["PolicyDocument"]["Statement"]


def test_the_handlers_need_eleven_library_modules_and_no_spark_numpy_or_pandas():
    modules, external = functions.handler_modules(ROOT / "lib")
    assert "amazon_recs.serving.api" in modules and "amazon_recs.events" in modules
    assert not any(
        m.startswith(("amazon_recs.pipeline", "amazon_recs.models.", "amazon_recs.ingest")) for m in modules
    )
    assert {"boto3", "botocore", "yaml"} <= external
    assert not external & {"pyspark", "numpy", "pandas", "pyarrow", "deltalake"}


def test_a_third_party_import_in_a_function_body_is_refused_with_its_name(tmp_path):
    lib = tmp_path / "lib"
    (lib / "amazon_recs" / "serving").mkdir(parents=True)
    (lib / "amazon_recs" / "__init__.py").write_text("")
    (lib / "amazon_recs" / "serving" / "__init__.py").write_text("")
    (lib / "amazon_recs" / "serving" / "api.py").write_text(
        "from typing import TYPE_CHECKING\nfrom . import helpers\nif TYPE_CHECKING:\n    import pyspark\n"
    )
    (lib / "amazon_recs" / "serving" / "helpers.py").write_text(
        "def f():\n    import numpy\n    return numpy\n"
    )
    with pytest.raises(PackagingError, match=r"import numpy, which the function's package does not carry"):
        functions.handler_modules(lib)
    (lib / "amazon_recs" / "serving" / "helpers.py").write_text("import boto3\n")
    modules, _ = functions.handler_modules(lib)
    assert modules == [
        "amazon_recs",
        "amazon_recs.serving",
        "amazon_recs.serving.api",
        "amazon_recs.serving.helpers",
    ]


def test_the_template_passes_cfn_lint(document, tmp_path):
    path = tmp_path / "template.yaml"
    path.write_text(functions.to_yaml(document))
    assert "*id" not in path.read_text() and "&id" not in path.read_text()  # no YAML aliases
    lint = subprocess.run(
        [str(Path(sys.executable).parent / "cfn-lint"), str(path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert lint.returncode == 0, lint.stdout + lint.stderr


def test_each_function_is_routed_and_runs_the_handler_from_the_zip(document):
    resources = document["Resources"]
    routes = {
        r["Properties"]["RouteKey"] for r in resources.values() if r["Type"] == "AWS::ApiGatewayV2::Route"
    }
    assert routes == {"GET /recommendations/{user_id}", "POST /events"}
    for name, handler in (("Recommendations", "recommendations_handler"), ("Activity", "activity_handler")):
        props = resources[f"{name}Function"]["Properties"]
        assert props["Handler"] == f"amazon_recs.serving.api.{handler}" and props["Runtime"] == "python3.11"
        assert props["Code"] == {"S3Bucket": {"Ref": "CodeBucket"}, "S3Key": {"Ref": "CodeKey"}}
        assert props["Environment"]["Variables"]["AMAZON_RECS_TABLE"] == "amazon-recs"
    params = document["Parameters"]
    assert params["CodeBucket"]["Default"] == "amazon-recs-example"
    assert params["CodeKey"]["Default"] == f"artifacts/{VERSION}/lambda/functions.zip"


def test_the_table_is_pk_sk_on_demand_with_ttl_and_outlives_the_stack(document):
    table = document["Resources"]["ServingTable"]
    assert table["DeletionPolicy"] == "Retain" and table["Condition"] == "CreateTable"
    props = table["Properties"]
    assert props["BillingMode"] == "PAY_PER_REQUEST"
    assert [k["AttributeName"] for k in props["KeySchema"]] == ["pk", "sk"]
    assert props["TimeToLiveSpecification"] == {"AttributeName": "expires_at", "Enabled": True}


def test_each_role_grants_only_what_its_function_does(document):
    table = "arn:${AWS::Partition}:dynamodb:${AWS::Region}:${AWS::AccountId}:table/amazon-recs"
    reads = statements(document, "RecommendationsRole")
    assert [(s["Action"], s["Resource"]) for s in reads] == [
        (["dynamodb:GetItem"], {"Fn::Sub": table}),
        (["logs:CreateLogStream", "logs:PutLogEvents"], {"Fn::GetAtt": ["RecommendationsLogGroup", "Arn"]}),
    ]
    writes = {s["Sid"]: s for s in statements(document, "ActivityRole")}
    assert writes["LandEvents"]["Action"] == ["s3:PutObject"]
    assert writes["LandEvents"]["Resource"] == {
        "Fn::Sub": "arn:${AWS::Partition}:s3:::amazon-recs-example/raw/events/*"
    }
    assert writes["EditLists"]["Action"] == ["dynamodb:GetItem", "dynamodb:Query", "dynamodb:UpdateItem"]
    every = [
        s
        for role in ("RecommendationsRole", "ActivityRole", "RefreshSchedulerRole")
        for s in statements(document, role)
    ]
    assert all("*" not in a for s in every for a in s["Action"])
    assert all(s["Resource"] != "*" for s in every)


def test_the_schedule_adds_the_refresh_step_to_the_named_cluster_only(document):
    schedule = document["Resources"]["RefreshSchedule"]
    assert schedule["Condition"] == "ScheduleRefresh"
    target = schedule["Properties"]["Target"]
    assert target["Arn"] == {"Fn::Sub": "arn:${AWS::Partition}:scheduler:::aws-sdk:emr:addJobFlowSteps"}
    request = json.loads(target["Input"]["Fn::Sub"])
    assert request["JobFlowId"] == "${RefreshClusterId}"
    (step,) = request["Steps"]
    args = step["HadoopJarStep"]["Args"]
    assert step["ActionOnFailure"] == "CONTINUE"
    assert args[args.index("--config") + 1] == f"s3://amazon-recs-example/artifacts/{VERSION}/conf/emr.yaml"
    assert args[-2:] == ["--set", "recommend.k=10"] and f"artifacts/{VERSION}/jobs/refresh.py" in " ".join(
        args
    )
    (grant,) = statements(document, "RefreshSchedulerRole")
    assert grant["Action"] == ["elasticmapreduce:AddJobFlowSteps"]
    assert grant["Resource"]["Fn::Sub"].endswith(":cluster/${RefreshClusterId}")


def test_the_functions_environment_gives_the_configs_settings(config, document):
    from amazon_recs.serving.api import ApiSettings

    env = document["Resources"]["ActivityFunction"]["Properties"]["Environment"]["Variables"]
    assert ApiSettings.from_env(env) == ApiSettings.from_config(config)
    reader = document["Resources"]["RecommendationsFunction"]["Properties"]["Environment"]["Variables"]
    assert "AMAZON_RECS_BUCKET" not in reader


def test_an_empty_bucket_is_refused(config):
    empty = config.with_overrides(["aws.bucket="])
    with pytest.raises(PackagingError, match="aws.bucket is empty"):
        functions.template(empty, emr.Release(VERSION, "s3://b/artifacts/" + VERSION), "conf/emr.yaml")


def test_the_yaml_round_trips(document):
    assert yaml.safe_load(functions.to_yaml(document)) == document
