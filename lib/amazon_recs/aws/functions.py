"""The Lambda functions as a deployable unit: the handlers' zip and a CloudFormation template.

``make package-lambda`` (``amazon-recs emr package-lambda``) writes
``dist/lambda/<version>/`` (the same version as ``make package``'s; ``make deploy``
uploads it to ``<emr.artifacts>/<version>/lambda/``)::

    functions.zip   the handlers' code: the amazon_recs modules that
                    ``serving.api`` imports (found by reading their imports, function
                    bodies included), and boto3 and PyYAML built for Lambda's Python
                    and architecture, botocore's and boto3's data cut to the services
                    the handlers call; no pyspark, numpy or pandas
    template.yaml   CloudFormation: both functions, an HTTP API with their two routes,
                    the serving table (pk/sk, on demand, TTL on expires_at), a role per
                    function with only what it does, and an EventBridge schedule that
                    adds the refresh step to a running EMR cluster

One zip serves any configuration: the template hands every setting to the
functions as environment variables (``serving.api.ENV_FIELDS``). Least privilege,
per function:

- recommendations: ``dynamodb:GetItem`` on the serving table, its own log stream;
- activity: ``s3:PutObject`` under ``<aws.bucket>/<api.events_prefix>/``, and on
  the table ``GetItem``, ``Query`` and ``UpdateItem`` (it reads the user's stored
  lists and takes a bought or rated product out of them);
- the schedule: ``elasticmapreduce:AddJobFlowSteps`` on the one cluster named by
  the ``RefreshClusterId`` parameter (no schedule when it is empty).
"""

from __future__ import annotations

import ast
import json
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from amazon_recs.aws import emr
from amazon_recs.aws.artifacts import PackagingError, artifact_version
from amazon_recs.config import Config

LIBRARY = "amazon_recs"
HANDLER_MODULE = "amazon_recs.serving.api"
# Logical name in the template -> the handler function of HANDLER_MODULE.
HANDLERS = {"Recommendations": "recommendations_handler", "Activity": "activity_handler"}
# The third-party modules the handlers may import, and the distribution each comes from.
DISTRIBUTIONS = {"boto3": "boto3", "botocore": "botocore", "yaml": "PyYAML"}
REQUIREMENTS = ("boto3", "PyYAML")  # pip brings botocore, s3transfer, jmespath, dateutil, urllib3
# The services the handlers call: other services' API models are left out of the zip.
SERVICES = ("dynamodb", "s3")
RUNTIME = "python3.11"
PYTHON_VERSION = "3.11"
PLATFORMS = {"x86_64": "manylinux2014_x86_64", "arm64": "manylinux2014_aarch64"}
ZIP_NAME = "functions.zip"
TEMPLATE_NAME = "template.yaml"
# Lambda's limits: a zip uploaded directly, and the code unzipped (layers included).
MAX_ZIP_BYTES = 50 * 2**20
MAX_UNZIPPED_BYTES = 250 * 2**20
ZIP_TIME = (1980, 1, 1, 0, 0, 0)  # the same sources give the same bytes


# --- what the handlers import -------------------------------------------------


def _module_file(lib: Path, module: str) -> Path | None:
    """The source of ``module`` under ``lib`` (a module file or a package's __init__)."""
    base = lib.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _imports(tree: ast.AST, package: str) -> list[str]:
    """Every module an import statement names (absolute), skipping ``if TYPE_CHECKING:``.
    ``from a import b`` names ``a`` and ``a.b`` (b may be a module)."""
    found: list[str] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                parts = parts[: len(parts) - node.level + 1]
                base = ".".join([*parts, node.module] if node.module else parts)
            else:
                base = node.module or ""
            found.append(base)
            found.extend(f"{base}.{alias.name}" for alias in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def handler_modules(lib: Path, entry: str = HANDLER_MODULE) -> tuple[list[str], set[str]]:
    """The library modules ``entry`` needs, transitively (with their packages' __init__),
    and the top-level names of the other modules they import.

    Raises:
        PackagingError: they import a third-party module the package does not carry.
    """
    todo, seen, external = [entry], set(), set()
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        path = _module_file(lib, module)
        if path is None:
            continue
        seen.add(module)
        parts = module.split(".")
        todo.extend(".".join(parts[:i]) for i in range(1, len(parts)))
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        for name in _imports(ast.parse(path.read_text(encoding="utf-8")), package):
            top = name.split(".")[0]
            if top == LIBRARY:
                todo.append(name)
            elif top:
                external.add(top)
    foreign = sorted(external - set(sys.stdlib_module_names) - {"__future__"} - set(DISTRIBUTIONS))
    if foreign:
        raise PackagingError(
            f"the Lambda handlers import {', '.join(foreign)}, which the function's package does not "
            f"carry (only {', '.join(sorted(DISTRIBUTIONS))}): keep such imports out of {entry}'s modules"
        )
    return sorted(seen), external


# --- the zip ----------------------------------------------------------------------


@dataclass(frozen=True)
class Functions:
    version: str
    directory: Path
    zip_bytes: int
    unzipped_bytes: int
    modules: list[str]


def package_functions(root: Path, out: Path, config: Config, config_file: str, overrides=()) -> Functions:
    """Build ``out/<version>/functions.zip`` and ``template.yaml`` (replacing an older build)."""
    version = artifact_version(root)
    target = out / version
    architecture = config.require("lambda.architecture")
    if architecture not in PLATFORMS:
        raise PackagingError(f"lambda.architecture '{architecture}' is not one of {', '.join(PLATFORMS)}")
    modules, _ = handler_modules(root / "lib")
    with tempfile.TemporaryDirectory(prefix="amazon-recs-lambda-") as tmp:
        code = Path(tmp) / "code"
        install_requirements(code, root / "constraints.txt", PLATFORMS[architecture])
        for module in modules:
            source = _module_file(root / "lib", module)
            dest = code / source.relative_to(root / "lib")
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest)
        trim(code)
        staging = Path(tmp) / version
        staging.mkdir()
        unzipped = write_zip(code, staging / ZIP_NAME)
        zipped = (staging / ZIP_NAME).stat().st_size
        if zipped > MAX_ZIP_BYTES or unzipped > MAX_UNZIPPED_BYTES:
            raise PackagingError(
                f"the functions' code is {zipped / 2**20:.1f} MiB zipped and {unzipped / 2**20:.1f} MiB "
                f"unzipped: Lambda takes at most {MAX_ZIP_BYTES >> 20} and {MAX_UNZIPPED_BYTES >> 20} MiB"
            )
        rel = emr.release(config, version)
        document = template(config, rel, config_file, overrides)
        (staging / TEMPLATE_NAME).write_text(to_yaml(document), encoding="utf-8")
        if target.exists():
            shutil.rmtree(target)
        out.mkdir(parents=True, exist_ok=True)
        shutil.move(str(staging), target)
    return Functions(version, target, zipped, unzipped, modules)


def install_requirements(target: Path, constraints: Path, platform: str) -> None:
    """boto3 and PyYAML as Lambda's Python runs them: wheels for its version and
    architecture (whatever this machine is), pinned by constraints.txt."""
    command = [
        sys.executable,
        "-m",
        "pip",
        "install",
        "--quiet",
        "--disable-pip-version-check",
        "--no-compile",
        "--target",
        str(target),
        "--only-binary=:all:",
        "--platform",
        platform,
        "--implementation",
        "cp",
        "--python-version",
        PYTHON_VERSION,
        "-c",
        str(constraints),
        *REQUIREMENTS,
    ]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-5:])
        raise PackagingError(f"pip could not fetch {', '.join(REQUIREMENTS)} for Lambda:\n{tail}")


def trim(code: Path) -> None:
    """Leave out what the functions never load: scripts, caches, and the API models of
    services other than SERVICES (botocore ships some 400; two are used)."""
    shutil.rmtree(code / "bin", ignore_errors=True)
    for cache in list(code.rglob("__pycache__")):
        shutil.rmtree(cache)
    for data in (code / "botocore" / "data", code / "boto3" / "data"):
        if not data.is_dir():
            raise PackagingError(f"{data.relative_to(code)} is missing from the installed boto3")
        for service in data.iterdir():
            if service.is_dir() and service.name not in SERVICES:
                shutil.rmtree(service)


def write_zip(code: Path, path: Path) -> int:
    """``code``'s files into ``path``, sorted, with fixed times and modes (Lambda needs
    them world-readable). Returns the bytes unzipped."""
    total = 0
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as archive:
        for file in sorted(p for p in code.rglob("*") if p.is_file()):
            info = zipfile.ZipInfo(file.relative_to(code).as_posix(), ZIP_TIME)
            info.external_attr = 0o100644 << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            data = file.read_bytes()
            total += len(data)
            archive.writestr(info, data)
    return total


# --- the template -----------------------------------------------------------------


def _sub(text: str) -> dict:
    return {"Fn::Sub": text}


def _ref(name: str) -> dict:
    return {"Ref": name}


def _role(service: str, policy_name: str, statements: list[dict]) -> dict:
    return {
        "Type": "AWS::IAM::Role",
        "Properties": {
            "AssumeRolePolicyDocument": {
                "Version": "2012-10-17",
                "Statement": [
                    {"Effect": "Allow", "Principal": {"Service": service}, "Action": "sts:AssumeRole"}
                ],
            },
            "Policies": [
                {
                    "PolicyName": policy_name,
                    "PolicyDocument": {"Version": "2012-10-17", "Statement": statements},
                }
            ],
        },
    }


def _logs(log_group: str) -> dict:
    return {
        "Sid": "OwnLogs",
        "Effect": "Allow",
        "Action": ["logs:CreateLogStream", "logs:PutLogEvents"],
        "Resource": {"Fn::GetAtt": [log_group, "Arn"]},
    }


def template(config: Config, rel: emr.Release, config_file: str, overrides=()) -> dict:
    """The CloudFormation template of the functions, their API, the table and the
    refresh schedule, from the configuration and the release whose zip it runs."""
    name = config.require("lambda.function_prefix")
    table = config.require("export.dynamodb.table")
    bucket = config.require("aws.bucket")
    prefix = config.require("api.events_prefix").strip("/")
    if not bucket:
        raise PackagingError("aws.bucket is empty: set it in the config or with --set aws.bucket=...")
    code_bucket, _, code_prefix = rel.root.removeprefix("s3://").partition("/")
    table_arn = _sub(f"arn:${{AWS::Partition}}:dynamodb:${{AWS::Region}}:${{AWS::AccountId}}:table/{table}")
    settings = {
        "AMAZON_RECS_TABLE": table,
        "AMAZON_RECS_EVENTS_PREFIX": prefix,
        "AMAZON_RECS_CORS_ORIGIN": config.require("api.cors_origin"),
        "AMAZON_RECS_POINTER_CACHE_SECONDS": str(config.require("api.pointer_cache_seconds")),
        "AMAZON_RECS_MAX_K": str(config.require("recommend.k")),
    }
    grants = {
        "Recommendations": [
            {"Sid": "ReadLists", "Effect": "Allow", "Action": ["dynamodb:GetItem"], "Resource": table_arn}
        ],
        "Activity": [
            {
                "Sid": "LandEvents",
                "Effect": "Allow",
                "Action": ["s3:PutObject"],
                "Resource": _sub(f"arn:${{AWS::Partition}}:s3:::{bucket}/{prefix}/*"),
            },
            {
                "Sid": "EditLists",
                "Effect": "Allow",
                "Action": ["dynamodb:GetItem", "dynamodb:Query", "dynamodb:UpdateItem"],
                "Resource": table_arn,
            },
        ],
    }
    routes = {"Recommendations": ("GET", "/recommendations/{user_id}"), "Activity": ("POST", "/events")}
    resources: dict[str, Any] = {
        "ServingTable": {
            "Type": "AWS::DynamoDB::Table",
            "Condition": "CreateTable",
            "DeletionPolicy": "Retain",
            "UpdateReplacePolicy": "Retain",
            "Properties": {
                "TableName": table,
                "BillingMode": "PAY_PER_REQUEST",
                "AttributeDefinitions": [
                    {"AttributeName": "pk", "AttributeType": "S"},
                    {"AttributeName": "sk", "AttributeType": "S"},
                ],
                "KeySchema": [
                    {"AttributeName": "pk", "KeyType": "HASH"},
                    {"AttributeName": "sk", "KeyType": "RANGE"},
                ],
                "TimeToLiveSpecification": {"AttributeName": "expires_at", "Enabled": True},
            },
        },
        "HttpApi": {
            "Type": "AWS::ApiGatewayV2::Api",
            "Properties": {
                "Name": name,
                "ProtocolType": "HTTP",
                "CorsConfiguration": {
                    "AllowOrigins": [config.require("api.cors_origin")],
                    "AllowMethods": ["GET", "POST", "OPTIONS"],
                    "AllowHeaders": ["content-type"],
                },
            },
        },
        "HttpApiStage": {
            "Type": "AWS::ApiGatewayV2::Stage",
            "Properties": {"ApiId": _ref("HttpApi"), "StageName": "$default", "AutoDeploy": True},
        },
    }
    for function, handler in HANDLERS.items():
        log_group, role = f"{function}LogGroup", f"{function}Role"
        function_name = f"{name}-{function.lower()}"
        env = dict(settings)
        if function == "Activity":
            env["AMAZON_RECS_BUCKET"] = bucket
        method, path = routes[function]
        resources[log_group] = {
            "Type": "AWS::Logs::LogGroup",
            "Properties": {
                "LogGroupName": f"/aws/lambda/{function_name}",
                "RetentionInDays": config.require("lambda.log_retention_days"),
            },
        }
        resources[role] = _role(
            "lambda.amazonaws.com", f"{function_name}", [*grants[function], _logs(log_group)]
        )
        resources[f"{function}Function"] = {
            "Type": "AWS::Lambda::Function",
            "DependsOn": [log_group],
            "Properties": {
                "FunctionName": function_name,
                "Runtime": RUNTIME,
                "Architectures": [config.require("lambda.architecture")],
                "Handler": f"{HANDLER_MODULE}.{handler}",
                "Code": {"S3Bucket": _ref("CodeBucket"), "S3Key": _ref("CodeKey")},
                "MemorySize": config.require("lambda.memory_mb"),
                "Timeout": config.require("lambda.timeout_seconds"),
                "Role": {"Fn::GetAtt": [role, "Arn"]},
                "Environment": {"Variables": env},
            },
        }
        resources[f"{function}Integration"] = {
            "Type": "AWS::ApiGatewayV2::Integration",
            "Properties": {
                "ApiId": _ref("HttpApi"),
                "IntegrationType": "AWS_PROXY",
                "IntegrationUri": {"Fn::GetAtt": [f"{function}Function", "Arn"]},
                "PayloadFormatVersion": "2.0",
            },
        }
        resources[f"{function}Route"] = {
            "Type": "AWS::ApiGatewayV2::Route",
            "Properties": {
                "ApiId": _ref("HttpApi"),
                "RouteKey": f"{method} {path}",
                "Target": _sub(f"integrations/${{{function}Integration}}"),
            },
        }
        source = path.replace("{user_id}", "*")
        resources[f"{function}Permission"] = {
            "Type": "AWS::Lambda::Permission",
            "Properties": {
                "Action": "lambda:InvokeFunction",
                "FunctionName": _ref(f"{function}Function"),
                "Principal": "apigateway.amazonaws.com",
                "SourceArn": _sub(
                    f"arn:${{AWS::Partition}}:execute-api:${{AWS::Region}}:${{AWS::AccountId}}:${{HttpApi}}/*/{method}{source}"
                ),
            },
        }
    refresh = emr.step(config, rel, "refresh", config_file, overrides, "CONTINUE")
    emr.add_steps_request("j-PLACEHOLDER", [refresh])  # checked against botocore's EMR model
    request = json.dumps(
        {"JobFlowId": "${RefreshClusterId}", "Steps": [_escape_sub(refresh)]}, sort_keys=True
    )
    resources["RefreshSchedulerRole"] = {
        **_role(
            "scheduler.amazonaws.com",
            f"{name}-refresh-schedule",
            [
                {
                    "Sid": "AddRefreshStep",
                    "Effect": "Allow",
                    "Action": ["elasticmapreduce:AddJobFlowSteps"],
                    "Resource": _sub(
                        "arn:${AWS::Partition}:elasticmapreduce:${AWS::Region}:${AWS::AccountId}"
                        ":cluster/${RefreshClusterId}"
                    ),
                }
            ],
        ),
        "Condition": "ScheduleRefresh",
    }
    resources["RefreshSchedule"] = {
        "Type": "AWS::Scheduler::Schedule",
        "Condition": "ScheduleRefresh",
        "Properties": {
            "Name": f"{name}-refresh",
            "Description": "adds the refresh step (new events -> fresh lists) to the EMR cluster",
            "ScheduleExpression": _ref("RefreshScheduleExpression"),
            "FlexibleTimeWindow": {"Mode": "OFF"},
            "Target": {
                "Arn": _sub("arn:${AWS::Partition}:scheduler:::aws-sdk:emr:addJobFlowSteps"),
                "RoleArn": {"Fn::GetAtt": ["RefreshSchedulerRole", "Arn"]},
                "Input": _sub(request),
            },
        },
    }
    return {
        "AWSTemplateFormatVersion": "2010-09-09",
        "Description": f"amazon-recs {rel.version}: the recommendations and activity functions and their API",
        "Parameters": {
            "CodeBucket": {
                "Type": "String",
                "Default": code_bucket,
                "Description": "bucket of functions.zip (make deploy uploads it)",
            },
            "CodeKey": {"Type": "String", "Default": f"{code_prefix}/lambda/{ZIP_NAME}"},
            "CreateServingTable": {
                "Type": "String",
                "AllowedValues": ["true", "false"],
                "Default": "true",
                "Description": "false when the table exists already (an export created it)",
            },
            "RefreshClusterId": {
                "Type": "String",
                "Default": "",
                "Description": "a long-running EMR cluster (j-...) to add refresh steps to; empty: none",
            },
            "RefreshScheduleExpression": {
                "Type": "String",
                "Default": config.require("lambda.refresh_schedule"),
                "Description": "when the refresh step is added (EventBridge Scheduler expression)",
            },
        },
        "Conditions": {
            "CreateTable": {"Fn::Equals": [_ref("CreateServingTable"), "true"]},
            "ScheduleRefresh": {"Fn::Not": [{"Fn::Equals": [_ref("RefreshClusterId"), ""]}]},
        },
        "Resources": resources,
        "Outputs": {
            "ApiUrl": {"Value": {"Fn::GetAtt": ["HttpApi", "ApiEndpoint"]}},
            "ServingTable": {"Value": table},
        },
    }


def _escape_sub(value: Any) -> Any:
    """``value`` with every literal ``${`` written as Fn::Sub's ``${!``."""
    if isinstance(value, str):
        return value.replace("${", "${!")
    if isinstance(value, list):
        return [_escape_sub(v) for v in value]
    if isinstance(value, dict):
        return {k: _escape_sub(v) for k, v in value.items()}
    return value


class _NoAliases(yaml.SafeDumper):
    """CloudFormation rejects YAML anchors and aliases: repeated values are written out."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def to_yaml(document: dict) -> str:
    return yaml.dump(document, Dumper=_NoAliases, sort_keys=False, width=120, default_flow_style=False)
