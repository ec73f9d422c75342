"""``amazon-recs emr ...``: package, deploy, IAM policy, and cluster and step requests.

The current folder is the project (setup.py, lib/, jobs/, conf/): versions are
computed from its sources, and --config must be one of its conf/ files. Nothing
here imports pyspark; boto3 and the EMR modules are imported by the command that
needs them.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from pathlib import Path

from amazon_recs.config import Config, add_config_arguments, load_config
from amazon_recs.pipeline.registry import STAGES

DEFAULT_EMR_CONFIG = "conf/emr.yaml"


def _load(args: argparse.Namespace) -> Config:
    return load_config(args.config, args.overrides)


def add_parser(emr: argparse.ArgumentParser) -> None:
    """The ``emr`` subcommands and their options, on ``emr``."""
    sub = emr.add_subparsers(dest="emr_command", required=True)
    jobs_help = "jobs to run as steps, in order: pipeline (all stages in one step) or stages " + ", ".join(
        STAGES
    )

    package = sub.add_parser(
        "package", help="build dist/<version>/: wheel, jobs, conf, bootstrap, requirements"
    )
    package.add_argument("--out", default="dist", help="folder of the built versions (default dist)")
    package.add_argument("--debug", action="store_true")

    deploy = sub.add_parser("deploy", help="upload dist/<version>/ to <emr.artifacts>/<version>/")
    deploy.add_argument("--dist", default="dist", help="folder `emr package` built into (default dist)")
    deploy.add_argument("--create-bucket", action="store_true", help="create aws.bucket when missing")

    functions = sub.add_parser(
        "package-lambda", help="build dist/lambda/<version>/: the handlers' zip and a CloudFormation template"
    )
    functions.add_argument(
        "--out", default="dist/lambda", help="folder of the built versions (default dist/lambda)"
    )

    policy = sub.add_parser("iam-policy", help="the instance profile's least-privilege IAM policy (JSON)")
    policy.add_argument("--out", help="write instance-profile-policy.json and ec2-trust-policy.json here")

    create = sub.add_parser("create-cluster", help="start a cluster: transient with steps, or --long-running")
    create.add_argument("jobs", nargs="*", help=jobs_help + " (default: pipeline; none with --long-running)")
    create.add_argument("--long-running", action="store_true", help="keep the cluster up for later submits")
    create.add_argument("--wait", action="store_true", help="then wait for the steps, as `emr wait` does")

    submit = sub.add_parser("submit", help="add steps to a running cluster")
    submit.add_argument("jobs", nargs="*", default=["pipeline"], help=jobs_help + " (default: pipeline)")
    submit.add_argument("--cluster-id", required=True)
    submit.add_argument("--wait", action="store_true", help="then wait for the steps, as `emr wait` does")

    status = sub.add_parser("status", help="each step's state and where its logs are")
    wait = sub.add_parser(
        "wait", help="poll (with backoff) until the steps end; non-zero unless all completed"
    )
    for command in (status, wait):
        command.add_argument("--cluster-id", required=True)
        command.add_argument(
            "--step-id",
            dest="step_ids",
            action="append",
            default=[],
            help="only this step (repeatable); default: every step (wait: those pending or running now)",
        )
    for command in (deploy, functions, policy, create, submit, status, wait):
        add_config_arguments(
            command, DEFAULT_EMR_CONFIG, "environment YAML in conf/ (the steps read its deployed copy)"
        )
        if command not in (policy, functions):
            command.add_argument(
                "--dry-run", action="store_true", help="print the request(s) as JSON, send nothing"
            )


# The current folder is the project (setup.py, lib/, jobs/, conf/): versions are
# computed from its sources, and --config must be one of its conf/ files.


def _emr_release(config: Config):
    from amazon_recs.aws import artifacts, emr

    version = config.require("emr.artifact_version") or artifacts.artifact_version(Path.cwd())
    return emr.release(config, version)


def _deployed_config_name(config_path: str) -> str:
    from amazon_recs.aws import artifacts, emr

    path = Path(config_path)
    if path.is_absolute():
        try:
            path = path.resolve().relative_to(Path.cwd().resolve())
        except ValueError:
            pass
    return emr.config_file_in_release(path.as_posix(), artifacts.shipped_files(Path.cwd()))


def _print_json(document) -> None:
    from amazon_recs.aws.emr import to_json

    print(to_json(document))


def _emr_package(args: argparse.Namespace) -> int:
    from amazon_recs.aws import artifacts

    built = artifacts.package(Path.cwd(), Path(args.out))
    print(f"built version {built.version} in {built.directory}:")
    for name in built.files:
        print(f"  {name}")
    print("next: make deploy (uploads it to <emr.artifacts>/<version>/)")
    return 0


def _emr_package_lambda(args: argparse.Namespace) -> int:
    from amazon_recs.aws import functions

    config = _load(args)
    built = functions.package_functions(
        Path.cwd(), Path(args.out), config, _deployed_config_name(args.config), args.overrides
    )
    code_key = f"{_emr_release(config).root}/lambda/{functions.ZIP_NAME}"
    print(
        f"built the functions of version {built.version} in {built.directory}:\n"
        f"  {functions.ZIP_NAME}  {built.zip_bytes / 2**20:.1f} MiB "
        f"({built.unzipped_bytes / 2**20:.1f} MiB unzipped; {len(built.modules)} amazon_recs modules)\n"
        f"  {functions.TEMPLATE_NAME}\n"
        f"next: make deploy (uploads it to {code_key}), then\n"
        f"      aws cloudformation deploy --template-file {built.directory / functions.TEMPLATE_NAME} "
        "--stack-name amazon-recs-api --capabilities CAPABILITY_IAM"
    )
    return 0


def _emr_deploy(args: argparse.Namespace) -> int:
    from amazon_recs.aws import artifacts

    config = _load(args)
    rel = _emr_release(config)
    directory = Path(args.dist) / rel.version
    if not directory.is_dir():
        raise artifacts.PackagingError(
            f"{directory} not found: run `make package` first (this checkout is {rel.version})"
        )
    uploads = artifacts.plan_uploads(directory, rel.root)
    lambda_dir = Path(args.dist) / "lambda" / rel.version  # `make package-lambda`, when built
    if lambda_dir.is_dir():
        uploads += artifacts.plan_uploads(lambda_dir, f"{rel.root}/lambda")
    if args.dry_run:
        _print_json(
            [
                {"operation": "PutObject", "params": {"Bucket": u.bucket, "Key": u.key}, "file": str(u.path)}
                for u in uploads
            ]
        )
        return 0
    region = config.require("aws.region")
    results = artifacts.deploy(_s3_client(config), uploads, region, args.create_bucket)
    for upload, outcome in results:
        print(f"  {outcome:<9} {upload.uri}")
    uploaded = sum(outcome == "uploaded" for _, outcome in results)
    print(f"deployed {rel.version} to {rel.root}/ ({uploaded} uploaded, {len(results) - uploaded} unchanged)")
    return 0


def _s3_client(config: Config):
    import boto3

    return boto3.client(
        "s3", region_name=config.require("aws.region"), endpoint_url=config.require("aws.s3_endpoint") or None
    )


def _emr_iam_policy(args: argparse.Namespace) -> int:
    from amazon_recs.aws import iam
    from amazon_recs.aws.emr import to_json

    config = _load(args)
    policy = iam.instance_profile_policy(config)
    if not args.out:
        _print_json(policy)
        return 0
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name, document in (
        ("instance-profile-policy.json", policy),
        ("ec2-trust-policy.json", iam.ec2_trust_policy()),
    ):
        (out / name).write_text(to_json(document) + "\n", encoding="utf-8")
        print(f"wrote {out / name}")
    return 0


def _emr_create_cluster(args: argparse.Namespace) -> int:
    from amazon_recs.aws import emr

    config = _load(args)
    rel = _emr_release(config)
    jobs = args.jobs or ([] if args.long_running else ["pipeline"])
    config_name = _deployed_config_name(args.config)
    step_configs = emr.steps(config, rel, jobs, config_name, args.overrides, args.long_running)
    request = emr.run_job_flow_request(config, rel, step_configs, args.long_running)
    if args.dry_run:
        _print_json(emr.render("RunJobFlow", config.require("aws.region"), request))
        return 0
    _require_deployed(config, rel, jobs, config_name)
    client = emr.make_client(config)
    cluster_id = emr.call(client, "RunJobFlow", request)["JobFlowId"]
    kind = "long-running" if args.long_running else "transient: it terminates after its steps"
    print(f"cluster {cluster_id} starting ({kind}), version {rel.version}")
    step_ids = [s["Id"] for s in reversed(emr.list_steps(client, cluster_id))] if jobs else []
    return _after_submit(args, config, client, cluster_id, step_ids)


def _emr_submit(args: argparse.Namespace) -> int:
    from amazon_recs.aws import emr

    config = _load(args)
    rel = _emr_release(config)
    config_name = _deployed_config_name(args.config)
    step_configs = emr.steps(config, rel, args.jobs, config_name, args.overrides, long_running=True)
    request = emr.add_steps_request(args.cluster_id, step_configs)
    if args.dry_run:
        _print_json(emr.render("AddJobFlowSteps", config.require("aws.region"), request))
        return 0
    _require_deployed(config, rel, args.jobs, config_name)
    client = emr.make_client(config)
    step_ids = emr.call(client, "AddJobFlowSteps", request)["StepIds"]
    return _after_submit(args, config, client, args.cluster_id, step_ids)


def _require_deployed(config: Config, rel, jobs: Sequence[str], config_name: str) -> None:
    from amazon_recs.aws import emr

    needed = [
        rel.wheel,
        emr.BOOTSTRAP_SCRIPT,
        emr.REQUIREMENTS_FILE,
        config_name,
        *(f"jobs/{j}.py" for j in jobs),
    ]
    missing = emr.missing_artifacts(_s3_client(config), rel, needed)
    if missing:
        raise emr.EmrError(
            f"not deployed: {', '.join(missing)}; run `make deploy` for version {rel.version} first"
        )


def _after_submit(
    args: argparse.Namespace, config: Config, client, cluster_id: str, step_ids: list[str]
) -> int:
    for step_id in step_ids:
        print(f"  step {step_id}")
    follow = f"--config {args.config} --cluster-id {cluster_id}" + "".join(
        f" --step-id {s}" for s in step_ids
    )
    print(
        f"logs: {config.require('emr.log_uri').rstrip('/')}/{cluster_id}/ (EMR pushes them every 5 minutes)"
    )
    if not args.wait:
        print(f"follow: amazon-recs emr wait {follow}")
        return 0
    return _wait(config, client, cluster_id, step_ids)


def _emr_status(args: argparse.Namespace) -> int:
    from amazon_recs.aws import emr

    config = _load(args)
    requests = _status_requests(args)
    if args.dry_run:
        _print_json([emr.render(op, config.require("aws.region"), params) for op, params in requests])
        return 0
    client = emr.make_client(config)
    found = (
        emr.describe_steps(client, args.cluster_id, args.step_ids)
        if args.step_ids
        else emr.list_steps(client, args.cluster_id)
    )
    if not found:
        print(f"cluster {args.cluster_id} has no steps")
    for step in found:
        print(emr.step_view(step, args.cluster_id, config.require("emr.log_uri")).line())
    return 0


def _status_requests(args: argparse.Namespace, states: Sequence[str] = ()) -> list[tuple[str, dict]]:
    from amazon_recs.aws import emr

    if args.step_ids:
        return [("DescribeStep", emr.describe_step_request(args.cluster_id, s)) for s in args.step_ids]
    return [("ListSteps", emr.list_steps_request(args.cluster_id, states))]


def _emr_wait(args: argparse.Namespace) -> int:
    from amazon_recs.aws import emr

    config = _load(args)
    emr.Poll.from_config(config)
    if args.dry_run:
        requests = _status_requests(args, states=sorted(emr.ACTIVE_STATES))
        _print_json([emr.render(op, config.require("aws.region"), params) for op, params in requests])
        return 0
    client = emr.make_client(config)
    step_ids = args.step_ids or [
        s["Id"] for s in reversed(emr.list_steps(client, args.cluster_id, sorted(emr.ACTIVE_STATES)))
    ]
    if not step_ids:
        print(f"no step is pending or running on {args.cluster_id}")
        return 0
    return _wait(config, client, args.cluster_id, step_ids)


def _wait(config: Config, client, cluster_id: str, step_ids: list[str]) -> int:
    from amazon_recs.aws import emr

    views = emr.wait_for_steps(
        lambda: emr.describe_steps(client, cluster_id, step_ids),
        cluster_id,
        config.require("emr.log_uri"),
        emr.Poll.from_config(config),
        out=lambda line: print(line, flush=True),
    )
    print(f"all {len(views)} step(s) completed")
    return 0


EMR_COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "package": _emr_package,
    "deploy": _emr_deploy,
    "package-lambda": _emr_package_lambda,
    "iam-policy": _emr_iam_policy,
    "create-cluster": _emr_create_cluster,
    "submit": _emr_submit,
    "status": _emr_status,
    "wait": _emr_wait,
}
