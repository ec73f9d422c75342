"""Run the pipeline on EMR: the cluster spec, the steps, and the calls to EMR.

Every request is built by a pure function from the configuration and checked
against botocore's own EMR service model (types, required members, enums and
lengths) before it is sent, or printed by ``--dry-run``:

- ``RunJobFlow``: emr-7.13.0 with Spark and Hadoop, the ``delta-defaults``,
  ``spark-defaults``, ``spark-env`` and ``spark-hive-site`` (Glue) classifications,
  instance groups or fleets, the bootstrap action, roles, tags, log URI and
  auto-termination;
- ``AddJobFlowSteps``: one step per job (``pipeline`` or a stage), each
  ``spark-submit --deploy-mode cluster --py-files <wheel> <job.py> --config
  <conf on S3> [--set ...]`` through ``command-runner.jar``;
- ``ListSteps`` / ``DescribeStep``: status and waiting, with each step's logs.

A deployed version lives under ``<emr.artifacts>/<version>/`` (see
``amazon_recs.artifacts``): the wheel, ``jobs/``, ``conf/``, ``bootstrap/emr/``
and the pinned requirements.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from amazon_recs.config import Config
from amazon_recs.errors import ConfigError, RecsError
from amazon_recs.pipeline.registry import STAGES

JOBS = ("pipeline", *STAGES)
COMMAND_RUNNER = "command-runner.jar"
BOOTSTRAP_SCRIPT = "bootstrap/emr/install.sh"
REQUIREMENTS_FILE = "requirements-emr.txt"
CHECKSUMS_FILE = "SHA256SUMS"
# A version is <package version>-<first 12 hex digits of the sources' SHA-256>.
VERSION_PATTERN = re.compile(r"^(?P<package>[0-9][0-9A-Za-z.]*)-(?P<digest>[0-9a-f]{12})$")
ACTIONS_ON_FAILURE = ("TERMINATE_CLUSTER", "CANCEL_AND_WAIT", "CONTINUE")
ACTIVE_STATES = frozenset({"PENDING", "CANCEL_PENDING", "RUNNING"})
GLUE_FACTORY = "com.amazonaws.glue.catalog.metastore.AWSGlueDataCatalogHiveClientFactory"
# The same as amazon_recs.spark.DELTA_CONF (a test keeps them equal); repeated so
# this module does not import pyspark.
DELTA_SQL_CONF = {
    "spark.sql.extensions": "io.delta.sql.DeltaSparkSessionExtension",
    "spark.sql.catalog.spark_catalog": "org.apache.spark.sql.delta.catalog.DeltaCatalog",
}
# Step concurrency stays 1: the stages of a submission read each other's output.
STEP_CONCURRENCY = 1


class EmrError(RecsError):
    """An EMR request is malformed, refused, or its steps did not complete."""


class StepsFailedError(EmrError):
    """Steps ended FAILED, CANCELLED or INTERRUPTED."""

    exit_code = 1


# --- checking requests against botocore's model ------------------------------


@lru_cache(maxsize=1)
def service_model():
    import botocore.session

    return botocore.session.get_session().get_service_model("emr")


def request_problems(operation: str, params: dict) -> list[str]:
    """What botocore's EMR model finds wrong with ``params`` for ``operation`` ([] = none).

    botocore's ParamValidator checks members, required members and types; enum
    values and length limits, which it leaves to the service, are checked here
    from the same model.
    """
    from botocore.validate import ParamValidator

    shape = service_model().operation_model(operation).input_shape
    report = ParamValidator().validate(params, shape)
    problems = report.generate_report().splitlines() if report.has_errors() else []
    return [p.strip() for p in problems if p.strip()] + list(_constraint_problems(shape, params, operation))


def _constraint_problems(shape, value: Any, where: str) -> Iterable[str]:
    meta = shape.metadata
    if shape.type_name == "structure" and isinstance(value, dict):
        for name, member in shape.members.items():
            if name in value:
                yield from _constraint_problems(member, value[name], f"{where}.{name}")
    elif shape.type_name == "list" and isinstance(value, list):
        yield from _length_problems(meta, len(value), where, "items")
        for i, item in enumerate(value):
            yield from _constraint_problems(shape.member, item, f"{where}[{i}]")
    elif shape.type_name == "map" and isinstance(value, dict):
        for key, item in value.items():
            yield from _constraint_problems(shape.value, item, f"{where}.{key}")
    elif shape.type_name == "string" and isinstance(value, str):
        if shape.enum and value not in shape.enum:
            yield f"{where}: {value!r} is not one of {', '.join(shape.enum)}"
        yield from _length_problems(meta, len(value), where, "characters")
    elif shape.type_name in ("integer", "long") and isinstance(value, int):
        if "min" in meta and value < meta["min"] or "max" in meta and value > meta["max"]:
            yield f"{where}: {value} is outside [{meta.get('min')}, {meta.get('max')}]"


def _length_problems(meta: dict, length: int, where: str, unit: str) -> Iterable[str]:
    if "max" in meta and length > meta["max"]:
        yield f"{where}: {length} {unit}, more than {meta['max']}"
    if "min" in meta and length < meta["min"]:
        yield f"{where}: {length} {unit}, fewer than {meta['min']}"


def check_request(operation: str, params: dict) -> dict:
    """``params``, after checking them against the model.

    Raises:
        EmrError: naming every problem found.
    """
    problems = request_problems(operation, params)
    if problems:
        raise EmrError(f"{operation} request is malformed: {'; '.join(problems)}")
    return params


def render(operation: str, region: str, params: dict) -> dict:
    """What ``--dry-run`` prints for one request."""
    return {"operation": operation, "region": region, "params": params}


def to_json(document: Any) -> str:
    return json.dumps(document, indent=2, sort_keys=False)


# --- where a version's artifacts are -----------------------------------------


@dataclass(frozen=True)
class Release:
    """One deployed version: ``<emr.artifacts>/<version>/`` and its wheel."""

    version: str
    root: str

    @property
    def wheel(self) -> str:
        return wheel_name(self.version)

    def uri(self, relative: str) -> str:
        return f"{self.root}/{relative}"


def wheel_name(version: str) -> str:
    """``0.1.0-0123456789ab`` -> ``amazon_recs-0.1.0-py3-none-any.whl``."""
    match = VERSION_PATTERN.match(version)
    if not match:
        raise ConfigError(
            f"artifact version '{version}' is not <package version>-<12 hex digits> "
            "(as `make package` prints it)"
        )
    return f"amazon_recs-{match['package']}-py3-none-any.whl"


def release(config: Config, version: str) -> Release:
    """The release ``version`` under the configured artifacts prefix."""
    wheel_name(version)  # checks the form
    for setting in ("emr.artifacts", "emr.log_uri"):
        uri = config.require(setting)
        if not uri.startswith("s3://") or not uri[len("s3://") :].split("/")[0]:
            hint = " (is aws.bucket empty? set it in the config or with --set aws.bucket=...)"
            raise ConfigError(f"setting '{setting}' must be an s3://bucket/... URI, got '{uri}'{hint}")
    return Release(version, f"{config.require('emr.artifacts').rstrip('/')}/{version}")


def config_file_in_release(config_path: str, project_files: Sequence[str]) -> str:
    """The deployed name (``conf/emr.yaml``) of the config given to the CLI.

    Only the files of ``conf/`` are deployed, so the config must be one of them.
    """
    normalized = config_path.removeprefix("./")
    if normalized not in project_files:
        deployed = ", ".join(sorted(f for f in project_files if f.startswith("conf/")))
        raise ConfigError(
            f"--config {config_path} is not deployed with the artifacts; use one of: {deployed}"
        )
    return normalized


# --- steps -------------------------------------------------------------------


def step(
    config: Config,
    rel: Release,
    job: str,
    config_file: str,
    overrides: Sequence[str],
    action_on_failure: str,
) -> dict:
    """One ``StepConfig``: ``spark-submit`` of ``jobs/<job>.py`` in cluster mode.

    The job gets the deployed copy of the config the CLI was given, plus the same
    ``--set`` overrides, so it sees the configuration the request was built from.
    """
    if job not in JOBS:
        raise ConfigError(f"unknown job '{job}'; choose from {', '.join(JOBS)}")
    if action_on_failure not in ACTIONS_ON_FAILURE:
        raise ConfigError(
            f"action on failure '{action_on_failure}' is not one of {', '.join(ACTIONS_ON_FAILURE)}"
        )
    args = [
        "spark-submit",
        "--deploy-mode",
        "cluster",
        *config.require("emr.spark.submit_args"),
        "--py-files",
        rel.uri(rel.wheel),
        rel.uri(f"jobs/{job}.py"),
        "--config",
        rel.uri(config_file),
    ]
    for override in overrides:
        args += ["--set", override]
    return {
        "Name": f"amazon-recs {job} {rel.version}",
        "ActionOnFailure": action_on_failure,
        "HadoopJarStep": {"Jar": COMMAND_RUNNER, "Args": args},
    }


def steps(
    config: Config,
    rel: Release,
    jobs: Sequence[str],
    config_file: str,
    overrides: Sequence[str],
    long_running: bool,
) -> list[dict]:
    """One step per job, in the order given, with the configured action on failure."""
    action = config.require(f"emr.action_on_failure.{'long_running' if long_running else 'transient'}")
    return [step(config, rel, job, config_file, overrides, action) for job in jobs]


def add_steps_request(cluster_id: str, step_configs: list[dict]) -> dict:
    return check_request("AddJobFlowSteps", {"JobFlowId": cluster_id, "Steps": step_configs})


# --- the cluster -------------------------------------------------------------


def run_job_flow_request(config: Config, rel: Release, step_configs: list[dict], long_running: bool) -> dict:
    """The ``RunJobFlow`` request for a cluster running ``rel``.

    Transient (``long_running`` false): it runs ``step_configs`` and terminates.
    Long-running: it waits for steps and terminates after ``emr.idle_timeout_s``.
    """
    if not long_running and not step_configs:
        raise ConfigError("a transient cluster needs steps (or create it with --long-running)")
    emr = config.require("emr")
    request = {
        "Name": f"{emr['name']} {rel.version}",
        "LogUri": emr["log_uri"],
        "ReleaseLabel": emr["release_label"],
        "Applications": [{"Name": name} for name in emr["applications"]],
        "Configurations": configurations(config),
        "Instances": instances(config, long_running),
        "BootstrapActions": [bootstrap_action(config, rel)],
        "Steps": step_configs,
        "StepConcurrencyLevel": STEP_CONCURRENCY,
        "ServiceRole": emr["service_role"],
        "JobFlowRole": emr["instance_profile"],
        "Tags": tags(config, rel),
    }
    idle = emr["idle_timeout_s"]
    if idle:
        if not 60 <= idle <= 604_800:
            raise ConfigError(f"setting 'emr.idle_timeout_s' must be 0 or 60..604800 seconds, got {idle}")
        request["AutoTerminationPolicy"] = {"IdleTimeout": idle}
    return check_request("RunJobFlow", request)


NUMBA_CACHE_DIR = "/tmp/amazon-recs-numba"


def configurations(config: Config) -> list[dict]:
    """The classifications: Delta, Spark defaults, Spark's Python, the Glue catalog."""
    spark = config.require("emr.spark")
    python = f"{config.require('emr.bootstrap.venv').rstrip('/')}/bin/python"
    flag = {True: "true", False: "false"}
    defaults = {
        **DELTA_SQL_CONF,
        "spark.dynamicAllocation.enabled": flag[spark["dynamic_allocation"]],
        "spark.sql.adaptive.enabled": flag[spark["adaptive_execution"]],
        "spark.sql.adaptive.coalescePartitions.enabled": flag[spark["adaptive_execution"]],
        "spark.sql.adaptive.skewJoin.enabled": flag[spark["adaptive_execution"]],
        "spark.pyspark.python": python,
        "spark.pyspark.driver.python": python,
        # Numba caches the compiled LSH kernels beside their source, which the
        # executors' user cannot write in the bootstrap's virtualenv: here instead.
        "spark.executorEnv.NUMBA_CACHE_DIR": NUMBA_CACHE_DIR,
    }
    if spark["dynamic_allocation"]:
        defaults["spark.shuffle.service.enabled"] = "true"
    defaults.update(key_values(spark["defaults"], "emr.spark.defaults"))
    classifications = [
        {"Classification": "delta-defaults", "Properties": {"delta.enabled": "true"}},
        {"Classification": "spark-defaults", "Properties": defaults},
        {
            "Classification": "spark-env",
            "Configurations": [
                {
                    "Classification": "export",
                    "Properties": {
                        "PYSPARK_PYTHON": python,
                        "PYSPARK_DRIVER_PYTHON": python,
                        "NUMBA_CACHE_DIR": NUMBA_CACHE_DIR,
                    },
                }
            ],
        },
    ]
    if spark["glue_catalog"]:
        classifications.append(
            {
                "Classification": "spark-hive-site",
                "Properties": {"hive.metastore.client.factory.class": GLUE_FACTORY},
            }
        )
    return classifications


def instances(config: Config, long_running: bool) -> dict:
    """``JobFlowInstancesConfig``: instance groups or fleets, subnets, key pair, keep-alive."""
    spec = config.require("emr.instances")
    subnets = config.require("emr.subnet_ids")
    result: dict[str, Any] = {"KeepJobFlowAliveWhenNoSteps": long_running, "TerminationProtected": False}
    roles = [("primary", "MASTER", 1), ("core", "CORE", None), ("task", "TASK", None)]
    nodes = []
    for name, role, fixed_count in roles:
        node = spec[name]
        count = fixed_count or node["count"]
        if count < 0:
            raise ConfigError(f"setting 'emr.instances.{name}.count' must be 0 or more, got {count}")
        if count and not node["types"]:
            raise ConfigError(f"setting 'emr.instances.{name}.types' names no instance type")
        if count:
            nodes.append((name, role, count, node))
    if spec["kind"] == "groups":
        if len(subnets) > 1:
            raise ConfigError("instance groups run in one subnet: give one in emr.subnet_ids, or use fleets")
        result["InstanceGroups"] = [
            _group(name, role, count, node, spec["ebs_gb"]) for name, role, count, node in nodes
        ]
        if subnets:
            result["Ec2SubnetId"] = subnets[0]
    elif spec["kind"] == "fleets":
        result["InstanceFleets"] = [
            _fleet(name, role, count, node, spec["ebs_gb"]) for name, role, count, node in nodes
        ]
        if subnets:
            result["Ec2SubnetIds"] = list(subnets)
    else:
        raise ConfigError(f"setting 'emr.instances.kind' must be groups or fleets, got '{spec['kind']}'")
    if config.require("emr.ec2_key_name"):
        result["Ec2KeyName"] = config.require("emr.ec2_key_name")
    return result


def _ebs(ebs_gb: int) -> dict:
    volume = {"VolumeSpecification": {"VolumeType": "gp3", "SizeInGB": ebs_gb}, "VolumesPerInstance": 1}
    return {"EbsConfiguration": {"EbsBlockDeviceConfigs": [volume]}} if ebs_gb else {}


def _group(name: str, role: str, count: int, node: dict, ebs_gb: int) -> dict:
    return {
        "Name": name,
        "InstanceRole": role,
        "Market": node["market"],
        "InstanceType": node["types"][0],
        "InstanceCount": count,
        **_ebs(ebs_gb),
    }


def _fleet(name: str, role: str, count: int, node: dict, ebs_gb: int) -> dict:
    target = "TargetSpotCapacity" if node["market"] == "SPOT" else "TargetOnDemandCapacity"
    return {
        "Name": name,
        "InstanceFleetType": role,
        target: count,
        "InstanceTypeConfigs": [
            {"InstanceType": t, "WeightedCapacity": 1, **_ebs(ebs_gb)} for t in node["types"]
        ],
    }


def bootstrap_action(config: Config, rel: Release) -> dict:
    """The action installing ``rel``'s wheel and pinned requirements on every node."""
    return {
        "Name": f"install amazon-recs {rel.version}",
        "ScriptBootstrapAction": {
            "Path": rel.uri(BOOTSTRAP_SCRIPT),
            "Args": [
                "--artifacts",
                rel.root,
                "--wheel",
                rel.wheel,
                "--venv",
                config.require("emr.bootstrap.venv"),
                "--python",
                config.require("emr.bootstrap.python"),
            ],
        },
    }


def tags(config: Config, rel: Release) -> list[dict]:
    pairs = key_values(config.require("emr.tags"), "emr.tags")
    pairs.setdefault("amazon-recs:version", rel.version)
    return [{"Key": k, "Value": v} for k, v in pairs.items()]


def key_values(items: Sequence[str], setting: str) -> dict[str, str]:
    """``["a=1", "b=x=y"]`` -> ``{"a": "1", "b": "x=y"}``."""
    result = {}
    for item in items:
        key, sep, value = str(item).partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"setting '{setting}': '{item}' is not of the form key=value")
        result[key.strip()] = value.strip()
    return result


# --- status ------------------------------------------------------------------


def list_steps_request(cluster_id: str, states: Sequence[str] = (), marker: str | None = None) -> dict:
    params: dict[str, Any] = {"ClusterId": cluster_id}
    if states:
        params["StepStates"] = list(states)
    if marker:
        params["Marker"] = marker
    return check_request("ListSteps", params)


def describe_step_request(cluster_id: str, step_id: str) -> dict:
    return check_request("DescribeStep", {"ClusterId": cluster_id, "StepId": step_id})


@dataclass(frozen=True)
class StepView:
    """What ``emr status`` shows of one step."""

    id: str
    name: str
    state: str
    logs: str
    reason: str = ""
    log_file: str = ""

    def line(self) -> str:
        text = f"{self.id}  {self.state:<14} {self.name}  logs: {self.logs}"
        if self.reason:
            text += f"\n    reason: {self.reason}"
        if self.log_file:
            text += f"\n    log file: {self.log_file}"
        return text


def step_view(step_: dict, cluster_id: str, log_uri: str) -> StepView:
    """A ``Step`` or ``StepSummary`` of EMR's answers, with where its logs go.

    EMR writes a step's controller, stdout and stderr under
    ``<LogUri>/<cluster id>/steps/<step id>/`` (every five minutes while it runs);
    the Spark driver's own log (cluster mode) is under ``containers/``.
    """
    status = step_.get("Status", {})
    details = status.get("FailureDetails", {})
    change = status.get("StateChangeReason", {})
    reason = " - ".join(p for p in (details.get("Reason"), details.get("Message")) if p) or change.get(
        "Message", ""
    )
    logs = step_.get("LogUri") or f"{log_uri.rstrip('/')}/{cluster_id}/steps/{step_['Id']}/"
    return StepView(
        id=step_["Id"],
        name=step_.get("Name", ""),
        state=status.get("State", "UNKNOWN"),
        logs=logs,
        reason=reason,
        log_file=details.get("LogFile", ""),
    )


def list_steps(client, cluster_id: str, states: Sequence[str] = ()) -> list[dict]:
    """Every step of the cluster (all pages), newest first as EMR lists them."""
    found, marker = [], None
    while True:
        response = call(client, "ListSteps", list_steps_request(cluster_id, states, marker))
        found += response.get("Steps", [])
        marker = response.get("Marker")
        if not marker:
            return found


def describe_steps(client, cluster_id: str, step_ids: Sequence[str]) -> list[dict]:
    return [call(client, "DescribeStep", describe_step_request(cluster_id, s))["Step"] for s in step_ids]


@dataclass(frozen=True)
class Poll:
    """Polling intervals: ``initial_s``, growing by ``factor`` to ``max_s`` while
    nothing changes, back to ``initial_s`` after a change; give up after ``timeout_s``."""

    initial_s: float
    max_s: float
    timeout_s: float
    factor: float = 1.5

    @classmethod
    def from_config(cls, config: Config) -> Poll:
        poll = config.require("emr.poll")
        if not 0 < poll["initial_s"] <= poll["max_s"]:
            raise ConfigError("settings 'emr.poll': need 0 < initial_s <= max_s")
        return cls(poll["initial_s"], poll["max_s"], poll["timeout_s"])

    def next(self, delay: float | None, changed: bool) -> float:
        """The wait after a poll: back to ``initial_s`` after a change, else longer."""
        return self.initial_s if changed or delay is None else min(self.max_s, delay * self.factor)


def wait_for_steps(
    fetch: Callable[[], list[dict]],
    cluster_id: str,
    log_uri: str,
    poll: Poll,
    out: Callable[[str], None] = print,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> list[StepView]:
    """Poll ``fetch`` until no step is pending or running; print each state change.

    Returns:
        The final view of every step.

    Raises:
        StepsFailedError: a step ended other than COMPLETED (its logs are named).
        EmrError: ``poll.timeout_s`` passed first.
    """
    started, delay = clock(), None
    last: dict[str, str] = {}
    while True:
        views = [step_view(s, cluster_id, log_uri) for s in fetch()]
        changed = [v for v in views if last.get(v.id) != v.state]
        for view in changed:
            out(view.line())
        last.update({v.id: v.state for v in views})
        if not any(v.state in ACTIVE_STATES for v in views):
            break
        delay = poll.next(delay, bool(changed))
        if clock() - started + delay > poll.timeout_s:
            raise EmrError(
                f"steps still running after {poll.timeout_s:.0f}s: "
                + ", ".join(f"{v.id} {v.state}" for v in views if v.state in ACTIVE_STATES)
                + f" (amazon-recs emr status --cluster-id {cluster_id} to look again)"
            )
        sleep(delay)
    failed = [v for v in views if v.state != "COMPLETED"]
    if failed:
        raise StepsFailedError(
            f"{len(failed)} of {len(views)} step(s) did not complete: "
            + "; ".join(f"{v.id} {v.name} {v.state} (logs: {v.log_file or v.logs})" for v in failed)
        )
    return views


# --- talking to AWS -----------------------------------------------------------


def missing_artifacts(s3, rel: Release, relative_paths: Iterable[str]) -> list[str]:
    """The URIs of ``rel`` that S3 does not hold (checked before a cluster is paid for)."""
    from botocore.exceptions import ClientError

    bucket, _, prefix = rel.root.removeprefix("s3://").partition("/")
    missing = []
    for relative in relative_paths:
        try:
            s3.head_object(Bucket=bucket, Key=f"{prefix}/{relative}")
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") not in ("404", "NoSuchKey", "NotFound"):
                raise EmrError(f"cannot check {rel.uri(relative)}: {exc}") from None
            missing.append(rel.uri(relative))
    return missing


def make_client(config: Config):
    """An EMR client for ``aws.region``; credentials from the default chain."""
    import boto3
    from botocore.config import Config as BotoConfig

    return boto3.client(
        "emr",
        region_name=config.require("aws.region"),
        config=BotoConfig(retries={"mode": "standard", "max_attempts": 8}),
    )


def call(client, operation: str, params: dict) -> dict:
    """Send one checked request; AWS's refusals become one-line ``EmrError``s."""
    from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

    method = getattr(client, _snake(operation))
    try:
        return method(**params)
    except ClientError as exc:
        error = exc.response.get("Error", {})
        raise EmrError(f"EMR {operation} refused: {error.get('Code')}: {error.get('Message')}") from None
    except NoCredentialsError:
        raise EmrError(
            f"EMR {operation}: no AWS credentials (environment, profile or instance role)"
        ) from None
    except BotoCoreError as exc:
        raise EmrError(f"EMR {operation} failed: {exc}") from None


def _snake(operation: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", operation).lower()
