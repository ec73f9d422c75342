"""Least-privilege IAM policy documents for the EMR instance profile, from configuration.

The cluster's processes (the bootstrap action, EMR's log pusher, the Spark jobs
through EMRFS, boto3 and the Glue catalog client) act as the instance profile.
The policy grants exactly what the pipeline does, on exactly the configured
resources:

- S3, by prefix: read the artifacts of every version and the inputs; read and
  write the warehouse, models and reports (Delta commits, overwrites and
  multipart uploads); write EMR's logs; list the bucket only under those prefixes;
- DynamoDB: the serving table (describe, create it and switch on TTL when
  ``export.dynamodb.create_table``, read the version pointer, write the lists);
  the run lease of an ``s3://`` warehouse in ``run.lock_table`` (read, take,
  renew and release one item by conditional writes);
- Glue (with ``emr.spark.glue_catalog``): the catalog, the configured database
  and its tables; plus ``glue:GetDatabase`` on ``default``, which Spark's Hive
  client looks up when it opens the catalog.

No statement has ``"*"`` as its action or resource: every action used here is
resource-scoped. Account IDs are ``emr.iam.account_id``, or the policy variable
``${aws:PrincipalAccount}`` (the account of the role using the policy).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from typing import Any

from amazon_recs.config import Config
from amazon_recs.errors import ConfigError

POLICY_VERSION = "2012-10-17"
ACCOUNT_VARIABLE = "${aws:PrincipalAccount}"
READ_ACTIONS = ["s3:GetObject"]
WRITE_ACTIONS = [
    "s3:GetObject",
    "s3:PutObject",
    "s3:DeleteObject",
    "s3:AbortMultipartUpload",
    "s3:ListMultipartUploadParts",
]
LOG_ACTIONS = ["s3:PutObject"]
BUCKET_ACTIONS = ["s3:GetBucketLocation", "s3:ListBucketMultipartUploads"]
DYNAMODB_ACTIONS = [
    "dynamodb:DescribeTable",
    "dynamodb:GetItem",
    "dynamodb:PutItem",
    "dynamodb:BatchWriteItem",
]
DYNAMODB_CREATE_ACTIONS = ["dynamodb:CreateTable", "dynamodb:UpdateTimeToLive"]
LEASE_ACTIONS = [
    "dynamodb:DescribeTable",
    "dynamodb:GetItem",
    "dynamodb:PutItem",
    "dynamodb:UpdateItem",
    "dynamodb:DeleteItem",
]
GLUE_ACTIONS = [
    "glue:GetDatabase",
    "glue:GetTable",
    "glue:GetTables",
    "glue:CreateTable",
    "glue:UpdateTable",
    "glue:DeleteTable",
    "glue:GetPartition",
    "glue:GetPartitions",
    "glue:BatchGetPartition",
    "glue:CreatePartition",
    "glue:BatchCreatePartition",
    "glue:UpdatePartition",
    "glue:DeletePartition",
    "glue:BatchDeletePartition",
]
GLUE_DEFAULT_DATABASE = "default"


def s3_prefixes(config: Config) -> dict[str, list[tuple[str, str]]]:
    """``{"read": [...], "write": [...], "logs": [...]}``: the (bucket, prefix) pairs the
    cluster touches, from the configured paths (local paths are left out, and a
    prefix inside another of the same or a stronger grant is dropped)."""
    inputs = [config.require(f"input.{kind}") for kind in ("reviews", "products", "tags")]
    folders = {
        "read": [config.require("emr.artifacts"), config.require("paths.raw")],
        "write": [config.require(f"paths.{name}") for name in ("warehouse", "models", "reports")]
        + [config.require("spark.checkpoint_dir")],
        "logs": [config.require("emr.log_uri")],
    }
    pairs = {group: {_bucket_prefix(u) for u in uris if _on_s3(u)} for group, uris in folders.items()}
    pairs["read"] |= {_bucket_prefix(u, names_files=True) for u in inputs if _on_s3(u)}
    write = _outermost(pairs["write"])
    return {
        "read": _outermost(pairs["read"], also=write),
        "write": write,
        "logs": _outermost(pairs["logs"], also=write),
    }


def _on_s3(uri: str) -> bool:
    return str(uri).startswith("s3://")


def _bucket_prefix(uri: str, names_files: bool = False) -> tuple[str, str]:
    """``s3://b/warehouse/`` -> ``("b", "warehouse")``. With ``names_files`` (inputs:
    globs or files), the folder holding them: ``s3://b/raw/x/*.gz`` -> ``("b", "raw/x")``."""
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    if not bucket:
        raise ConfigError(f"'{uri}' names no bucket (is aws.bucket empty?)")
    parts = [p for p in key.split("/") if p]
    if names_files:
        globbed = [i for i, part in enumerate(parts) if any(c in part for c in "*?[{")]
        parts = parts[: globbed[0]] if globbed else (parts if key.endswith("/") else parts[:-1])
    if not parts:
        raise ConfigError(f"'{uri}' is a whole bucket: give the pipeline a prefix of its own")
    return bucket, "/".join(parts)


def _outermost(pairs: set[tuple[str, str]], also: Iterable[tuple[str, str]] = ()) -> list[tuple[str, str]]:
    """The pairs not inside another of ``pairs`` or of ``also``."""
    others = set(also)

    def inside(pair: tuple[str, str], other: tuple[str, str]) -> bool:
        return pair[0] == other[0] and (pair[1] == other[1] or pair[1].startswith(other[1] + "/"))

    kept = [p for p in pairs if not any(inside(p, o) for o in others)]
    return sorted(p for p in kept if not any(o != p and inside(p, o) for o in kept))


def instance_profile_policy(config: Config) -> dict[str, Any]:
    """The policy document for the EMR instance profile."""
    region = config.require("aws.region")
    account = config.require("emr.iam.account_id") or ACCOUNT_VARIABLE
    prefixes = s3_prefixes(config)
    statements = []
    for sid, group, actions in (
        ("ReadArtifactsAndInputs", "read", READ_ACTIONS),
        ("ReadWriteTablesModelsReports", "write", WRITE_ACTIONS),
        ("WriteEmrLogs", "logs", LOG_ACTIONS),
    ):
        if prefixes[group]:
            resources = [f"arn:aws:s3:::{bucket}/{prefix}/*" for bucket, prefix in prefixes[group]]
            statements.append(_statement(sid, actions, resources))
    listed: dict[str, set[str]] = defaultdict(set)
    for pairs in prefixes.values():
        for bucket, prefix in pairs:
            listed[bucket].update({prefix, f"{prefix}/*"})
    for bucket in sorted(listed):
        statements.append(
            _statement(
                f"ListOwnPrefixes{_sid_suffix(bucket)}",
                ["s3:ListBucket"],
                [f"arn:aws:s3:::{bucket}"],
                {"StringLike": {"s3:prefix": sorted(listed[bucket])}},
            )
        )
        statements.append(
            _statement(f"LocateBucket{_sid_suffix(bucket)}", BUCKET_ACTIONS, [f"arn:aws:s3:::{bucket}"])
        )
    if config.require("export.dynamodb.enabled"):
        actions = DYNAMODB_ACTIONS + (
            DYNAMODB_CREATE_ACTIONS if config.require("export.dynamodb.create_table") else []
        )
        table = config.require("export.dynamodb.table")
        statements.append(
            _statement("ServingTable", actions, [f"arn:aws:dynamodb:{region}:{account}:table/{table}"])
        )
    if config.require("run.lock") and config.require("paths.warehouse").startswith("s3"):
        actions = LEASE_ACTIONS + (
            DYNAMODB_CREATE_ACTIONS if config.require("export.dynamodb.create_table") else []
        )
        table = config.require("run.lock_table")
        statements.append(
            _statement("RunLease", actions, [f"arn:aws:dynamodb:{region}:{account}:table/{table}"])
        )
    if config.require("emr.spark.glue_catalog"):
        database = config.require("export.glue_database")
        glue = f"arn:aws:glue:{region}:{account}"
        statements.append(
            _statement(
                "GlueDatabaseAndTables",
                GLUE_ACTIONS,
                [f"{glue}:catalog", f"{glue}:database/{database}", f"{glue}:table/{database}/*"],
            )
        )
        statements.append(
            _statement(
                "GlueDefaultDatabaseLookup",
                ["glue:GetDatabase"],
                [f"{glue}:catalog", f"{glue}:database/{GLUE_DEFAULT_DATABASE}"],
            )
        )
    return {"Version": POLICY_VERSION, "Statement": statements}


def ec2_trust_policy() -> dict[str, Any]:
    """Who may assume the instance profile's role: EC2 instances, nothing else."""
    return {
        "Version": POLICY_VERSION,
        "Statement": [
            {"Effect": "Allow", "Principal": {"Service": "ec2.amazonaws.com"}, "Action": "sts:AssumeRole"}
        ],
    }


def _statement(sid: str, actions: list[str], resources: list[str], condition: dict | None = None) -> dict:
    statement: dict[str, Any] = {"Sid": sid, "Effect": "Allow", "Action": actions, "Resource": resources}
    if condition:
        statement["Condition"] = condition
    return statement


def _sid_suffix(bucket: str) -> str:
    """Statement ids are alphanumeric: ``my-bucket.x`` -> ``MyBucketX``."""
    return "".join(part.capitalize() for part in bucket.replace(".", "-").split("-"))
