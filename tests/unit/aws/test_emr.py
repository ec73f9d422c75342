"""EMR requests, checked against botocore's own EMR service model; the CLI's dry runs
and (through botocore's Stubber on real clients pointed at 127.0.0.1:1, so nothing
can leave the machine) its create/submit/status/wait paths; polling; the IAM policy.

Every request is validated here with botocore directly (``ParamValidator`` against
the operation's input shape, plus the model's enums), not only with the helper
the code uses, so a bug in that helper cannot hide a malformed request.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import boto3
import botocore.session
import pytest
from botocore.stub import Stubber
from botocore.validate import ParamValidator

from amazon_recs import cli
from amazon_recs.aws import commands, emr, iam
from amazon_recs.aws.emr import EmrError, Poll, Release, StepsFailedError
from amazon_recs.config import Config, load_config
from amazon_recs.errors import ConfigError
from amazon_recs.pipeline.registry import STAGES

ROOT = Path(__file__).resolve().parents[3]
EMR_CONFIG = ROOT / "conf" / "emr.yaml"
VERSION = "0.1.0-0123456789ab"
NOWHERE = "http://127.0.0.1:1"  # a Stubber answers before any connection is made
MODEL = botocore.session.get_session().get_service_model("emr")


def botocore_problems(operation: str, params: dict) -> list[str]:
    """botocore's own verdict on ``params``, and enum values it leaves to the service."""
    shape = MODEL.operation_model(operation).input_shape
    report = ParamValidator().validate(params, shape)
    problems = [report.generate_report()] if report.has_errors() else []
    return problems + list(enum_problems(shape, params))


def enum_problems(shape, value, where="params"):
    if shape.type_name == "structure":
        for name, member in shape.members.items():
            if name in value:
                yield from enum_problems(member, value[name], f"{where}.{name}")
    elif shape.type_name == "list":
        for i, item in enumerate(value):
            yield from enum_problems(shape.member, item, f"{where}[{i}]")
    elif shape.type_name == "string" and shape.enum and value not in shape.enum:
        yield f"{where}={value!r}"


@pytest.fixture
def config() -> Config:
    return load_config(EMR_CONFIG)


@pytest.fixture
def rel(config) -> Release:
    return emr.release(config, VERSION)


def transient(config, rel, jobs=("pipeline",), overrides=()):
    step_configs = emr.steps(config, rel, list(jobs), "conf/emr.yaml", list(overrides), long_running=False)
    return emr.run_job_flow_request(config, rel, step_configs, long_running=False)


def classification(request: dict, name: str) -> dict:
    return next(c for c in request["Configurations"] if c["Classification"] == name)


# --- RunJobFlow ----------------------------------------------------------------


def test_transient_cluster_request_is_valid_and_built_from_config(config, rel):
    request = transient(config, rel)
    assert botocore_problems("RunJobFlow", request) == []
    bucket = config.require("aws.bucket")
    assert request["ReleaseLabel"] == "emr-7.13.0"
    assert [a["Name"] for a in request["Applications"]] == ["Spark", "Hadoop"]
    assert request["LogUri"] == f"s3://{bucket}/emr-logs/"
    assert (request["ServiceRole"], request["JobFlowRole"]) == ("EMR_DefaultRole", "EMR_EC2_DefaultRole")
    assert request["AutoTerminationPolicy"] == {"IdleTimeout": 3600}
    assert request["Instances"]["KeepJobFlowAliveWhenNoSteps"] is False
    assert [s["ActionOnFailure"] for s in request["Steps"]] == ["TERMINATE_CLUSTER"]
    groups = {g["InstanceRole"]: g for g in request["Instances"]["InstanceGroups"]}
    assert set(groups) == {"MASTER", "CORE"}  # no task nodes by default
    assert (groups["MASTER"]["InstanceCount"], groups["CORE"]["InstanceCount"]) == (1, 2)
    assert {"Key": "project", "Value": "amazon-recs"} in request["Tags"]
    assert {"Key": "amazon-recs:version", "Value": VERSION} in request["Tags"]


def test_classifications_enable_delta_dynamic_allocation_aqe_glue_and_the_venv_python(config, rel):
    request = transient(config, rel)
    assert classification(request, "delta-defaults")["Properties"] == {"delta.enabled": "true"}
    defaults = classification(request, "spark-defaults")["Properties"]
    assert defaults["spark.dynamicAllocation.enabled"] == "true"
    assert defaults["spark.shuffle.service.enabled"] == "true"
    assert defaults["spark.sql.adaptive.enabled"] == "true"
    assert defaults["spark.sql.extensions"] == "io.delta.sql.DeltaSparkSessionExtension"
    assert classification(request, "spark-hive-site")["Properties"] == {
        "hive.metastore.client.factory.class": emr.GLUE_FACTORY
    }
    # Spark's Python is the virtualenv the bootstrap action fills.
    venv = config.require("emr.bootstrap.venv")
    exported = classification(request, "spark-env")["Configurations"][0]["Properties"]
    assert exported["PYSPARK_PYTHON"] == defaults["spark.pyspark.python"] == f"{venv}/bin/python"
    # numba's kernel cache where the executors' user can write it
    cache = defaults["spark.executorEnv.NUMBA_CACHE_DIR"]
    assert exported["NUMBA_CACHE_DIR"] == cache == "/tmp/amazon-recs-numba"
    args = request["BootstrapActions"][0]["ScriptBootstrapAction"]["Args"]
    assert args[args.index("--venv") + 1] == venv
    assert args[args.index("--artifacts") + 1] == rel.root
    assert args[args.index("--wheel") + 1] == "amazon_recs-0.1.0-py3-none-any.whl"


def test_switches_in_config_reach_the_request(config, rel):
    cfg = config.with_overrides(
        [
            "emr.spark.dynamic_allocation=false",
            "emr.spark.adaptive_execution=false",
            "emr.spark.glue_catalog=false",
            "emr.spark.defaults=[spark.executor.memory=6g]",
            "emr.idle_timeout_s=0",
            "emr.ec2_key_name=ops",
            "emr.tags=[team=recs, cost-centre=42]",
        ]
    )
    request = transient(cfg, rel)
    assert botocore_problems("RunJobFlow", request) == []
    defaults = classification(request, "spark-defaults")["Properties"]
    assert defaults["spark.dynamicAllocation.enabled"] == "false"
    assert defaults["spark.sql.adaptive.enabled"] == "false"
    assert "spark.shuffle.service.enabled" not in defaults
    assert defaults["spark.executor.memory"] == "6g"
    assert "spark-hive-site" not in {c["Classification"] for c in request["Configurations"]}
    assert "AutoTerminationPolicy" not in request
    assert request["Instances"]["Ec2KeyName"] == "ops"
    assert {t["Key"]: t["Value"] for t in request["Tags"]} == {
        "team": "recs",
        "cost-centre": "42",
        "amazon-recs:version": VERSION,
    }


def test_long_running_cluster_stays_up_and_needs_no_steps(config, rel):
    request = emr.run_job_flow_request(config, rel, [], long_running=True)
    assert botocore_problems("RunJobFlow", request) == []
    assert request["Instances"]["KeepJobFlowAliveWhenNoSteps"] is True
    assert request["Steps"] == []
    with pytest.raises(ConfigError, match="transient cluster needs steps"):
        emr.run_job_flow_request(config, rel, [], long_running=False)


def test_instance_fleets_with_subnets_ebs_and_spot_task_nodes(config, rel):
    cfg = config.with_overrides(
        [
            "emr.instances.kind=fleets",
            "emr.instances.core.types=[m7g.xlarge, m6i.xlarge]",
            "emr.instances.task.count=3",
            "emr.instances.ebs_gb=128",
            "emr.subnet_ids=[subnet-a, subnet-b]",
        ]
    )
    request = transient(cfg, rel)
    assert botocore_problems("RunJobFlow", request) == []
    instances = request["Instances"]
    assert "InstanceGroups" not in instances
    assert instances["Ec2SubnetIds"] == ["subnet-a", "subnet-b"]
    fleets = {f["InstanceFleetType"]: f for f in instances["InstanceFleets"]}
    assert fleets["MASTER"]["TargetOnDemandCapacity"] == 1
    assert fleets["CORE"]["TargetOnDemandCapacity"] == 2
    assert fleets["TASK"]["TargetSpotCapacity"] == 3
    assert [t["InstanceType"] for t in fleets["CORE"]["InstanceTypeConfigs"]] == ["m7g.xlarge", "m6i.xlarge"]
    volume = fleets["CORE"]["InstanceTypeConfigs"][0]["EbsConfiguration"]["EbsBlockDeviceConfigs"][0]
    assert volume["VolumeSpecification"] == {"VolumeType": "gp3", "SizeInGB": 128}


def test_instance_groups_take_one_subnet(config, rel):
    request = transient(config.with_overrides(["emr.subnet_ids=[subnet-a]"]), rel)
    assert request["Instances"]["Ec2SubnetId"] == "subnet-a"
    with pytest.raises(ConfigError, match="one subnet"):
        transient(config.with_overrides(["emr.subnet_ids=[subnet-a, subnet-b]"]), rel)


@pytest.mark.parametrize(
    "override, message",
    [
        ("emr.instances.kind=pools", "groups or fleets"),
        ("emr.idle_timeout_s=30", "60..604800"),
        ("emr.tags=[nokey]", "key=value"),
        ("emr.action_on_failure.transient=STOP", "STOP.*not one of"),
        ("emr.instances.core.count=-1", "0 or more"),
        ("aws.bucket=", r"aws\.bucket empty"),
    ],
)
def test_bad_settings_are_refused_in_one_line(config, override, message):
    with pytest.raises(ConfigError, match=message):
        transient(config.with_overrides([override]), emr.release(config.with_overrides([override]), VERSION))


def test_the_checker_finds_what_the_service_would_refuse(config, rel):
    request = transient(config, rel)
    assert emr.request_problems("RunJobFlow", request) == []
    bad = json.loads(json.dumps(request))
    bad["Steps"][0]["ActionOnFailure"] = "STOP"  # ParamValidator alone lets an unknown enum through
    bad["Name"] = "x" * 300
    del bad["Instances"]["InstanceGroups"][0]["InstanceRole"]
    problems = " ".join(emr.request_problems("RunJobFlow", bad))
    assert "ActionOnFailure: 'STOP' is not one of" in problems
    assert "Name: 300 characters, more than 256" in problems
    assert "InstanceRole" in problems
    with pytest.raises(EmrError, match="RunJobFlow request is malformed"):
        emr.check_request("RunJobFlow", bad)


def test_delta_settings_match_the_local_session():
    from amazon_recs.spark import DELTA_CONF

    assert emr.DELTA_SQL_CONF == DELTA_CONF


# --- steps -------------------------------------------------------------------


def test_each_job_is_a_spark_submit_of_its_entry_point_in_cluster_mode(config, rel):
    overrides = ["als.rank=64", "input.reviews=s3://b/k=v/*.gz"]
    step_configs = emr.steps(config, rel, emr.JOBS, "conf/emr.yaml", overrides, long_running=True)
    assert botocore_problems("AddJobFlowSteps", emr.add_steps_request("j-EXAMPLE", step_configs)) == []
    assert len(step_configs) == 1 + len(STAGES)
    for job, step in zip(emr.JOBS, step_configs, strict=True):
        assert step["ActionOnFailure"] == "CANCEL_AND_WAIT"
        assert step["HadoopJarStep"]["Jar"] == "command-runner.jar"
        assert step["HadoopJarStep"]["Args"] == [
            "spark-submit",
            "--deploy-mode",
            "cluster",
            "--py-files",
            f"{rel.root}/amazon_recs-0.1.0-py3-none-any.whl",
            f"{rel.root}/jobs/{job}.py",
            "--config",
            f"{rel.root}/conf/emr.yaml",
            "--set",
            "als.rank=64",
            "--set",
            "input.reviews=s3://b/k=v/*.gz",
        ]
        assert (ROOT / "jobs" / f"{job}.py").is_file()


def test_extra_spark_submit_options_come_before_the_entry_point(config, rel):
    cfg = config.with_overrides(["emr.spark.submit_args=[--driver-memory, 4g]"])
    args = emr.step(cfg, rel, "train", "conf/emr.yaml", [], "CONTINUE")["HadoopJarStep"]["Args"]
    assert args[3:5] == ["--driver-memory", "4g"]
    assert args.index("--driver-memory") < args.index(f"{rel.root}/jobs/train.py")


def test_unknown_job_and_undeployed_config_are_refused(config, rel):
    with pytest.raises(ConfigError, match="unknown job 'rank'"):
        emr.step(config, rel, "rank", "conf/emr.yaml", [], "CONTINUE")
    with pytest.raises(ConfigError, match="not deployed with the artifacts"):
        emr.config_file_in_release("/tmp/mine.yaml", ["conf/emr.yaml", "jobs/train.py"])
    assert emr.config_file_in_release("./conf/emr.yaml", ["conf/emr.yaml"]) == "conf/emr.yaml"


@pytest.mark.parametrize("version", ["0.1.0", "0.1.0+abc", "0.1.0-0123456789AB", "0.1.0-0123"])
def test_artifact_versions_have_one_form(version):
    with pytest.raises(ConfigError, match="not <package version>-<12 hex digits>"):
        emr.wheel_name(version)


# --- status requests and what is shown ---------------------------------------------


def test_status_requests_are_valid():
    for params in (
        emr.list_steps_request("j-EXAMPLE"),
        emr.list_steps_request("j-EXAMPLE", sorted(emr.ACTIVE_STATES), marker="page-2"),
    ):
        assert botocore_problems("ListSteps", params) == []
    assert botocore_problems("DescribeStep", emr.describe_step_request("j-EXAMPLE", "s-1")) == []
    with pytest.raises(EmrError, match="'SLEEPING' is not one of"):
        emr.list_steps_request("j-EXAMPLE", ["SLEEPING"])


def a_step(step_id: str, state: str, name: str = "amazon-recs pipeline", **status) -> dict:
    return {
        "Id": step_id,
        "Name": name,
        "Config": {"Jar": "command-runner.jar", "Args": ["spark-submit"]},
        "ActionOnFailure": "CONTINUE",
        "Status": {"State": state, **status},
    }


def test_a_step_shows_its_state_and_logs():
    view = emr.step_view(a_step("s-1", "RUNNING"), "j-1", "s3://b/emr-logs/")
    assert view.line() == "s-1  RUNNING        amazon-recs pipeline  logs: s3://b/emr-logs/j-1/steps/s-1/"
    failed = a_step(
        "s-2",
        "FAILED",
        FailureDetails={
            "Reason": "Unknown error.",
            "Message": "exit 2",
            "LogFile": "s3://b/emr-logs/j-1/steps/s-2/",
        },
    )
    lines = emr.step_view(failed, "j-1", "s3://b/emr-logs").line().splitlines()
    assert lines[1:] == [
        "    reason: Unknown error. - exit 2",
        "    log file: s3://b/emr-logs/j-1/steps/s-2/",
    ]


# --- polling -----------------------------------------------------------------


class FakeTime:
    def __init__(self):
        self.now, self.sleeps = 0.0, []

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds

    def clock(self) -> float:
        return self.now


def replay(*rounds):
    """A fetch returning each round of steps in turn, then the last one forever."""
    rounds = list(rounds)
    return lambda: rounds.pop(0) if len(rounds) > 1 else rounds[0]


def test_wait_backs_off_while_nothing_changes_and_resets_on_a_change():
    fake, printed = FakeTime(), []
    running, done = [a_step("s-1", "RUNNING")], [a_step("s-1", "COMPLETED")]
    fetch = replay([a_step("s-1", "PENDING")], running, running, running, running, running, done)
    views = emr.wait_for_steps(
        fetch, "j-1", "s3://b/logs/", Poll(10, 30, 3600), printed.append, fake.sleep, fake.clock
    )
    assert [v.state for v in views] == ["COMPLETED"]
    # PENDING, then RUNNING (a change: back to 10), then unchanged polls grow by 1.5 up to 30.
    assert fake.sleeps == [10, 10, 15, 22.5, 30, 30]
    assert [line.split()[1] for line in printed] == ["PENDING", "RUNNING", "COMPLETED"]


def test_wait_fails_naming_the_failed_step_and_its_log_file():
    fetch = replay(
        [a_step("s-1", "RUNNING"), a_step("s-2", "PENDING")],
        [
            a_step("s-1", "FAILED", FailureDetails={"LogFile": "s3://b/logs/j-1/steps/s-1/stderr.gz"}),
            a_step("s-2", "CANCELLED"),
        ],
    )
    fake = FakeTime()
    with pytest.raises(StepsFailedError) as err:
        emr.wait_for_steps(
            fetch, "j-1", "s3://b/logs/", Poll(1, 2, 60), lambda _: None, fake.sleep, fake.clock
        )
    assert "2 of 2 step(s) did not complete" in str(err.value)
    assert "s-1 amazon-recs pipeline FAILED (logs: s3://b/logs/j-1/steps/s-1/stderr.gz)" in str(err.value)
    assert err.value.exit_code == 1


def test_wait_gives_up_after_the_timeout():
    fake = FakeTime()
    with pytest.raises(EmrError, match=r"still running after 60s: s-1 RUNNING"):
        emr.wait_for_steps(
            lambda: [a_step("s-1", "RUNNING")],
            "j-1",
            "s3://b/",
            Poll(10, 20, 60),
            lambda _: None,
            fake.sleep,
            fake.clock,
        )
    assert sum(fake.sleeps) <= 60


# --- the CLI: dry runs send nothing ------------------------------------------


@pytest.fixture
def no_aws(monkeypatch):
    """Any attempt to make an AWS client fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError("a dry run made an AWS client")

    monkeypatch.setattr(boto3, "client", refuse)
    monkeypatch.setattr(emr, "make_client", refuse)


@pytest.fixture
def in_project(monkeypatch):
    monkeypatch.chdir(ROOT)


def dry_run(capsys, *argv) -> object:
    assert cli.main(["emr", *argv, "--dry-run"]) == 0
    return json.loads(capsys.readouterr().out)


def test_create_cluster_dry_run_prints_a_request_botocore_accepts(in_project, no_aws, capsys):
    printed = dry_run(capsys, "create-cluster", "--config", "conf/emr.yaml")
    assert printed["operation"] == "RunJobFlow"
    assert printed["region"] == "us-east-1"
    assert botocore_problems("RunJobFlow", printed["params"]) == []
    # The version is this checkout's, and the step reads the deployed conf/emr.yaml.
    from amazon_recs.aws.artifacts import artifact_version

    version = artifact_version(ROOT)
    args = printed["params"]["Steps"][0]["HadoopJarStep"]["Args"]
    assert args[-2:] == ["--config", f"s3://amazon-recs-example/artifacts/{version}/conf/emr.yaml"]


def test_long_running_dry_run_with_stages(in_project, no_aws, capsys):
    printed = dry_run(capsys, "create-cluster", "--long-running", "ingest", "features")
    params = printed["params"]
    assert botocore_problems("RunJobFlow", params) == []
    assert [s["Name"].split()[1] for s in params["Steps"]] == ["ingest", "features"]
    assert {s["ActionOnFailure"] for s in params["Steps"]} == {"CANCEL_AND_WAIT"}
    assert dry_run(capsys, "create-cluster", "--long-running")["params"]["Steps"] == []


def test_submit_dry_run_prints_a_request_botocore_accepts(in_project, no_aws, capsys):
    printed = dry_run(
        capsys, "submit", "--config", "conf/emr.yaml", "--cluster-id", "j-EXAMPLE", "--set", "als.rank=8"
    )
    assert printed["operation"] == "AddJobFlowSteps"
    assert botocore_problems("AddJobFlowSteps", printed["params"]) == []
    assert printed["params"]["JobFlowId"] == "j-EXAMPLE"
    assert printed["params"]["Steps"][0]["HadoopJarStep"]["Args"][-2:] == ["--set", "als.rank=8"]


def test_status_and_wait_dry_runs(in_project, no_aws, capsys):
    status = dry_run(capsys, "status", "--cluster-id", "j-EXAMPLE", "--step-id", "s-1", "--step-id", "s-2")
    assert [(r["operation"], r["params"]["StepId"]) for r in status] == [
        ("DescribeStep", "s-1"),
        ("DescribeStep", "s-2"),
    ]
    wait = dry_run(capsys, "wait", "--cluster-id", "j-EXAMPLE")
    assert [r["operation"] for r in wait] == ["ListSteps"]
    for request in [*status, *wait]:
        assert botocore_problems(request["operation"], request["params"]) == []


def test_cli_errors_are_one_line(in_project, no_aws, capsys):
    assert cli.main(["emr", "submit", "--cluster-id", "j-1", "--dry-run", "rank"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: unknown job 'rank'; choose from {', '.join(emr.JOBS)}"
    assert cli.main(["emr", "create-cluster", "--dry-run", "--config", "conf/local.yaml"]) == 2
    assert "aws.bucket empty" in capsys.readouterr().err


# --- the CLI against stubbed clients -----------------------------------------------


@pytest.fixture
def stubbed(monkeypatch, in_project):
    """Real EMR and S3 clients aimed at 127.0.0.1:1 with Stubbers that check every
    request against the model and answer it; the CLI gets them."""
    emr_client = boto3.client("emr", region_name="us-east-1", endpoint_url=NOWHERE)
    s3_client = boto3.client("s3", region_name="us-east-1", endpoint_url=NOWHERE)
    monkeypatch.setattr(emr, "make_client", lambda config: emr_client)
    monkeypatch.setattr(commands, "_s3_client", lambda config: s3_client)
    with Stubber(emr_client) as emr_stub, Stubber(s3_client) as s3_stub:
        yield emr_stub, s3_stub
        emr_stub.assert_no_pending_responses()
        s3_stub.assert_no_pending_responses()


FAST_POLL = ["--set", "emr.poll.initial_s=0.01", "--set", "emr.poll.max_s=0.02"]


def expect_deployed(s3_stub, release_root: str, names: list[str]) -> None:
    bucket, _, prefix = release_root.removeprefix("s3://").partition("/")
    for name in names:
        s3_stub.add_response(
            "head_object", {"ContentLength": 1}, {"Bucket": bucket, "Key": f"{prefix}/{name}"}
        )


def test_create_cluster_sends_exactly_the_dry_run_request_then_lists_its_steps(stubbed, capsys):
    emr_stub, s3_stub = stubbed
    request = dry_run(capsys, "create-cluster")["params"]
    root = request["BootstrapActions"][0]["ScriptBootstrapAction"]["Args"][1]
    wheel = "amazon_recs-0.1.0-py3-none-any.whl"
    expect_deployed(
        s3_stub,
        root,
        [wheel, emr.BOOTSTRAP_SCRIPT, emr.REQUIREMENTS_FILE, "conf/emr.yaml", "jobs/pipeline.py"],
    )
    emr_stub.add_response("run_job_flow", {"JobFlowId": "j-NEW"}, request)
    emr_stub.add_response("list_steps", {"Steps": [a_step("s-PIPE", "PENDING")]}, {"ClusterId": "j-NEW"})
    assert cli.main(["emr", "create-cluster"]) == 0
    out = capsys.readouterr().out
    assert "cluster j-NEW starting (transient" in out
    assert "step s-PIPE" in out
    assert "amazon-recs emr wait --config conf/emr.yaml --cluster-id j-NEW --step-id s-PIPE" in out


def test_create_cluster_refuses_when_the_version_is_not_deployed(stubbed, capsys):
    _, s3_stub = stubbed
    s3_stub.add_client_error("head_object", service_error_code="404", http_status_code=404)
    for _ in range(4):
        s3_stub.add_response("head_object", {"ContentLength": 1})
    assert cli.main(["emr", "create-cluster"]) == 2
    err = capsys.readouterr().err
    assert re.match(
        r"error: not deployed: s3://amazon-recs-example/artifacts/.*\.whl; run `make deploy`", err
    )


def test_submit_then_wait_pending_running_completed(stubbed, capsys):
    emr_stub, s3_stub = stubbed
    request = dry_run(capsys, "submit", "--cluster-id", "j-1", "train", "recommend", *FAST_POLL)["params"]
    root = request["Steps"][0]["HadoopJarStep"]["Args"][4].rsplit("/", 1)[0]
    wheel = "amazon_recs-0.1.0-py3-none-any.whl"
    names = [
        wheel,
        emr.BOOTSTRAP_SCRIPT,
        emr.REQUIREMENTS_FILE,
        "conf/emr.yaml",
        "jobs/train.py",
        "jobs/recommend.py",
    ]
    expect_deployed(s3_stub, root, names)
    emr_stub.add_response("add_job_flow_steps", {"StepIds": ["s-T", "s-R"]}, request)
    for train, recommend in [
        ("PENDING", "PENDING"),
        ("RUNNING", "PENDING"),
        ("COMPLETED", "RUNNING"),
        ("COMPLETED", "COMPLETED"),
    ]:
        for step_id, state in (("s-T", train), ("s-R", recommend)):
            emr_stub.add_response(
                "describe_step", {"Step": a_step(step_id, state)}, {"ClusterId": "j-1", "StepId": step_id}
            )
    assert cli.main(["emr", "submit", "--cluster-id", "j-1", "train", "recommend", "--wait", *FAST_POLL]) == 0
    out = capsys.readouterr().out
    states = re.findall(r"^(s-[TR])  (\w+)", out, flags=re.M)
    assert states == [
        ("s-T", "PENDING"),
        ("s-R", "PENDING"),
        ("s-T", "RUNNING"),
        ("s-T", "COMPLETED"),
        ("s-R", "RUNNING"),
        ("s-R", "COMPLETED"),
    ]
    assert "logs: s3://amazon-recs-example/emr-logs/j-1/steps/s-T/" in out
    assert "all 2 step(s) completed" in out


def test_wait_on_a_failed_step_exits_non_zero_naming_its_log_file(stubbed, capsys):
    emr_stub, _ = stubbed
    log_file = "s3://amazon-recs-example/emr-logs/j-1/steps/s-F/stderr.gz"
    failed = a_step("s-F", "FAILED", FailureDetails={"Reason": "Unknown error.", "LogFile": log_file})
    emr_stub.add_response(
        "list_steps",
        {"Steps": [a_step("s-F", "RUNNING")]},
        {"ClusterId": "j-1", "StepStates": sorted(emr.ACTIVE_STATES)},
    )
    emr_stub.add_response(
        "describe_step", {"Step": a_step("s-F", "RUNNING")}, {"ClusterId": "j-1", "StepId": "s-F"}
    )
    emr_stub.add_response("describe_step", {"Step": failed}, {"ClusterId": "j-1", "StepId": "s-F"})
    assert cli.main(["emr", "wait", "--cluster-id", "j-1", *FAST_POLL]) == 1
    captured = capsys.readouterr()
    assert f"    log file: {log_file}" in captured.out
    assert captured.err.startswith("error: 1 of 1 step(s) did not complete: s-F amazon-recs pipeline FAILED")
    assert log_file in captured.err and "Traceback" not in captured.err


def test_status_reads_every_page(stubbed, capsys):
    emr_stub, _ = stubbed
    emr_stub.add_response(
        "list_steps", {"Steps": [a_step("s-2", "RUNNING")], "Marker": "m1"}, {"ClusterId": "j-1"}
    )
    emr_stub.add_response(
        "list_steps", {"Steps": [a_step("s-1", "COMPLETED")]}, {"ClusterId": "j-1", "Marker": "m1"}
    )
    assert cli.main(["emr", "status", "--cluster-id", "j-1"]) == 0
    assert re.findall(r"^(s-\d)  (\w+)", capsys.readouterr().out, flags=re.M) == [
        ("s-2", "RUNNING"),
        ("s-1", "COMPLETED"),
    ]


def test_aws_refusals_are_one_line(stubbed, capsys):
    emr_stub, _ = stubbed
    emr_stub.add_client_error(
        "list_steps",
        service_error_code="InvalidRequestException",
        service_message="Cluster id 'j-1' is not valid.",
    )
    assert cli.main(["emr", "status", "--cluster-id", "j-1"]) == 2
    assert capsys.readouterr().err.strip() == (
        "error: EMR ListSteps refused: InvalidRequestException: Cluster id 'j-1' is not valid."
    )


# --- IAM -----------------------------------------------------------------------


def arns(policy: dict) -> list[str]:
    return [r for s in policy["Statement"] for r in s["Resource"]]


def test_policy_names_only_the_configured_resources(config):
    policy = json.loads(emr.to_json(iam.instance_profile_policy(config)))
    bucket, region = config.require("aws.bucket"), config.require("aws.region")
    table, database = config.require("export.dynamodb.table"), config.require("export.glue_database")
    account = iam.ACCOUNT_VARIABLE
    allowed = re.compile(
        "|".join(
            [
                rf"arn:aws:s3:::{bucket}",
                rf"arn:aws:s3:::{bucket}/(artifacts|raw|warehouse|models|reports|emr-logs)/\*",
                rf"arn:aws:dynamodb:{region}:{re.escape(account)}:table/{table}",
                rf"arn:aws:glue:{region}:{re.escape(account)}:(catalog|database/{database}|table/{database}/\*)",
                rf"arn:aws:glue:{region}:{re.escape(account)}:database/default",
            ]
        )
    )
    assert policy["Version"] == "2012-10-17"
    for arn in arns(policy):
        assert allowed.fullmatch(arn), arn
    for statement in policy["Statement"]:
        assert statement["Effect"] == "Allow"
        assert "*" not in statement["Resource"] and "*" not in statement["Action"]
        assert all(re.fullmatch(r"(s3|dynamodb|glue):[A-Za-z]+", a) for a in statement["Action"]), statement
    # The default database is only looked up.
    default = [s for s in policy["Statement"] if any(r.endswith(":database/default") for r in s["Resource"])]
    assert [s["Action"] for s in default] == [["glue:GetDatabase"]]
    # Listing is confined to the pipeline's prefixes.
    listing = next(s for s in policy["Statement"] if s["Action"] == ["s3:ListBucket"])
    assert set(listing["Condition"]["StringLike"]["s3:prefix"]) == {
        p
        for name in ("artifacts", "raw", "warehouse", "models", "reports", "emr-logs")
        for p in (name, f"{name}/*")
    }


def test_policy_follows_the_configuration(config):
    cfg = config.with_overrides(
        [
            "aws.region=eu-west-1",
            "emr.iam.account_id='123456789012'",
            "input.reviews=s3://public-data/amazon/2023/*/reviews.jsonl.gz",
            "paths.reports=s3://other-reports/recs/reports",
            "export.dynamodb.create_table=false",
            "emr.spark.glue_catalog=false",
        ]
    )
    policy = iam.instance_profile_policy(cfg)
    statements = {s["Sid"]: s for s in policy["Statement"]}
    read = statements["ReadArtifactsAndInputs"]["Resource"]
    assert "arn:aws:s3:::public-data/amazon/2023/*" in read
    assert (
        "arn:aws:s3:::other-reports/recs/reports/*" in statements["ReadWriteTablesModelsReports"]["Resource"]
    )
    assert statements["ServingTable"]["Resource"] == [
        "arn:aws:dynamodb:eu-west-1:123456789012:table/amazon-recs"
    ]
    assert "dynamodb:CreateTable" not in statements["ServingTable"]["Action"]
    # The run lease of the s3:// warehouse: one item, taken and renewed by conditional writes.
    assert statements["RunLease"]["Resource"] == statements["ServingTable"]["Resource"]
    assert set(statements["RunLease"]["Action"]) == {
        "dynamodb:DescribeTable",
        "dynamodb:GetItem",
        "dynamodb:PutItem",
        "dynamodb:UpdateItem",
        "dynamodb:DeleteItem",
    }
    leases = iam.instance_profile_policy(cfg.with_overrides(["run.lock_table=recs-locks"]))
    lease = next(s for s in leases["Statement"] if s["Sid"] == "RunLease")
    assert lease["Resource"] == ["arn:aws:dynamodb:eu-west-1:123456789012:table/recs-locks"]
    assert not any(a.startswith("glue:") for s in policy["Statement"] for a in s["Action"])
    assert {s["Resource"][0] for s in policy["Statement"] if s["Action"] == ["s3:ListBucket"]} == {
        "arn:aws:s3:::amazon-recs-example",
        "arn:aws:s3:::public-data",
        "arn:aws:s3:::other-reports",
    }
    no_export = iam.instance_profile_policy(
        cfg.with_overrides(["export.dynamodb.enabled=false", "run.lock=false"])
    )
    assert not any(a.startswith("dynamodb:") for s in no_export["Statement"] for a in s["Action"])


def test_a_whole_bucket_is_refused(config):
    with pytest.raises(ConfigError, match="whole bucket"):
        iam.instance_profile_policy(config.with_overrides(["paths.warehouse=s3://mybucket"]))


def test_committed_policy_documents_are_the_generated_ones(config):
    folder = ROOT / "bootstrap" / "emr" / "iam"
    committed = json.loads((folder / "instance-profile-policy.json").read_text())
    assert committed == iam.instance_profile_policy(config)
    trust = json.loads((folder / "ec2-trust-policy.json").read_text())
    assert trust == iam.ec2_trust_policy()
    assert trust["Statement"][0]["Principal"] == {"Service": "ec2.amazonaws.com"}


def test_iam_policy_command_writes_both_documents(in_project, tmp_path, capsys):
    assert cli.main(["emr", "iam-policy", "--out", str(tmp_path)]) == 0
    for name in ("instance-profile-policy.json", "ec2-trust-policy.json"):
        assert json.loads((tmp_path / name).read_text())["Version"] == "2012-10-17"


def test_emr_config_runs_on_yarn_over_emrfs(config):
    assert config.require("spark.master") == "yarn"
    assert config.require("spark.packages") == []
    assert config.require("aws.s3a") is False
    assert not config.require("aws.s3_endpoint")
    for key in ("paths.warehouse", "paths.models", "paths.reports", "input.reviews", "input.products"):
        assert config.require(key).startswith(f"s3://{config.require('aws.bucket')}/"), key
    assert config.require("export.dynamodb.enabled") is True
