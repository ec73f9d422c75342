"""The EMR artifacts and a step's command, run for real on this machine.

1. ``emr package`` builds a complete, reproducible version; the wheel alone
   (without the project's editable install) holds the whole library.
2. ``emr deploy`` uploads it to the local S3 server, and re-uploads nothing.
3. The bootstrap action installs the wheel into a virtualenv once, checks the
   checksums, and redoes an unfinished install.
4. The pipeline step's own ``spark-submit`` command line runs locally: the
   arguments EMR would get, with ``--deploy-mode cluster`` swapped for a local
   master and the wheel and entry point for their local copies. The config is
   read from the deployed ``conf/`` on the local S3 server (through boto3, its
   ``extends`` chain included), the driver imports the library from the wheel
   only, and the gold tables equal an in-process run of the same configuration.
"""

from __future__ import annotations

import contextlib
import io as stdio
import os
import subprocess
import sys
import uuid
import zipfile
from pathlib import Path

import boto3
import pytest
from botocore.validate import ParamValidator

from amazon_recs import cli
from amazon_recs.aws import artifacts, emr
from amazon_recs.config import load_config
from amazon_recs.ingest.sample import generate_sample
from amazon_recs.pipeline.registry import STAGE_ORDER, stage_function
from tests.conftest import ROOT, TEST_CONFIG
from tests.tables import assert_same_rows, sorted_rows

pytestmark = pytest.mark.integration

PACKAGES = "io.delta:delta-spark_2.12:3.3.2,org.apache.hadoop:hadoop-aws:3.3.4"
VENV_PYTHON = ROOT / ".venv" / "bin" / "python"
SITE_PACKAGES = next((ROOT / ".venv" / "lib").glob("python3.*/site-packages"))
# The plumbing is under test, not model quality: a small sample, untuned models.
SMALL = [
    "sample.users=120",
    "sample.items=40",
    "sample.categories=4",
    "tune.enabled=false",
    "als.rank=8",
    "als.max_iter=4",
    "content.num_features=1024",
    "content.lsh.recall_sample=0",
    "recommend.candidates=30",
]
GOLD = ("gold/recommendations", "gold/metrics")


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> artifacts.Package:
    return artifacts.package(ROOT, tmp_path_factory.mktemp("dist"))


@pytest.fixture(scope="module")
def bucket(local_aws) -> str:
    return f"emr-test-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def s3(local_aws):
    return boto3.client("s3", endpoint_url=local_aws["s3"], region_name="us-east-1")


def run_cli(*argv: str) -> tuple[int, str]:
    """``amazon-recs ...`` in process, from the project folder; exit code and stdout."""
    out = stdio.StringIO()
    with contextlib.chdir(ROOT), contextlib.redirect_stdout(out):
        code = cli.main(list(argv))
    return code, out.getvalue()


@pytest.fixture(scope="module")
def deployed(built, bucket, local_aws) -> tuple[int, str]:
    return run_cli(
        "emr",
        "deploy",
        "--config",
        "conf/test.yaml",
        "--dist",
        str(built.directory.parent),
        "--create-bucket",
        "--set",
        f"aws.bucket={bucket}",
        "--set",
        f"aws.s3_endpoint={local_aws['s3']}",
    )


# --- package -------------------------------------------------------------------


def test_package_holds_everything_a_cluster_needs(built):
    assert built.version == artifacts.artifact_version(ROOT)
    assert emr.VERSION_PATTERN.match(built.version)
    shipped = artifacts.shipped_files(ROOT)
    assert {"jobs/pipeline.py", "conf/emr.yaml", "conf/base.yaml", "bootstrap/emr/install.sh"} <= set(shipped)
    expected = {emr.wheel_name(built.version), emr.REQUIREMENTS_FILE, emr.CHECKSUMS_FILE, *shipped}
    on_disk = {p.relative_to(built.directory).as_posix() for p in built.directory.rglob("*") if p.is_file()}
    assert on_disk == expected == set(built.files)
    for line in (built.directory / emr.CHECKSUMS_FILE).read_text().splitlines():
        digest, name = line.split("  ", 1)
        assert artifacts.sha256_file(built.directory / name) == digest, name
    assert os.access(built.directory / emr.BOOTSTRAP_SCRIPT, os.X_OK)


def test_requirements_pin_the_whole_tree_without_spark(built):
    pins = dict(
        line.split("==")
        for line in (built.directory / emr.REQUIREMENTS_FILE).read_text().splitlines()
        if line and not line.startswith("#")
    )
    constraints = artifacts.read_pins(ROOT / "constraints.txt")
    for name in ("pyyaml", "numpy", "pandas", "pyarrow", "boto3", "botocore", "matplotlib", "delta-spark"):
        assert pins[name] == constraints[name], name
    assert "pyspark" not in pins and "py4j" not in pins
    assert {"moto", "pytest", "ruff"}.isdisjoint(pins)  # dev tools stay home


def test_package_is_reproducible(built, tmp_path):
    again = artifacts.package(ROOT, tmp_path)
    assert again.version == built.version
    for name in built.files:
        assert (again.directory / name).read_bytes() == (built.directory / name).read_bytes(), name


def test_the_version_follows_every_shipped_source(tmp_path):
    project = tmp_path / "project"
    for name in artifacts.source_files(ROOT):
        (project / name).parent.mkdir(parents=True, exist_ok=True)
        (project / name).write_bytes((ROOT / name).read_bytes())
    version = artifacts.artifact_version(project)
    assert version == artifacts.artifact_version(ROOT)
    for name in (
        "conf/emr.yaml",
        "jobs/train.py",
        "lib/amazon_recs/models/als.py",
        "bootstrap/emr/install.sh",
    ):
        original = (project / name).read_bytes()
        (project / name).write_bytes(original + b"\n# changed\n")
        assert artifacts.artifact_version(project) != version, name
        (project / name).write_bytes(original)
    assert artifacts.artifact_version(project) == version


def test_the_wheel_alone_holds_the_library(built):
    wheel = built.directory / emr.wheel_name(built.version)
    modules = sorted(
        n.removesuffix(".py").replace("/", ".").removesuffix(".__init__")
        for n in zipfile.ZipFile(wheel).namelist()
        if n.endswith(".py")
    )
    assert {
        "amazon_recs.cli",
        "amazon_recs.pipeline.train",
        "amazon_recs.aws.emr",
        "amazon_recs.models.als",
    } <= set(modules)
    # -S: no site processing, so the editable install of the project is invisible;
    # third-party packages come from site-packages put on the path by hand.
    code = (
        "import importlib, sys; "
        f"sys.path[:0] = [{str(wheel)!r}]; sys.path.append({str(SITE_PACKAGES)!r}); "
        f"[importlib.import_module(m) for m in {modules!r}]; "
        "import amazon_recs; print(amazon_recs.__file__)"
    )
    result = subprocess.run([str(VENV_PYTHON), "-S", "-c", code], capture_output=True, text=True, cwd="/")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().startswith(str(wheel))


# --- deploy --------------------------------------------------------------------


def deployed_keys(s3, bucket: str, version: str) -> set[str]:
    prefix = f"artifacts/{version}/"
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return {o["Key"].removeprefix(prefix) for page in pages for o in page.get("Contents", [])}


def test_deploy_uploads_the_version_once(built, deployed, s3, bucket, local_aws):
    code, out = deployed
    assert code == 0
    assert (
        f"deployed {built.version} to s3://{bucket}/artifacts/{built.version}/ ({len(built.files)} uploaded"
        in out
    )
    assert deployed_keys(s3, bucket, built.version) == set(built.files)
    wheel = emr.wheel_name(built.version)
    body = s3.get_object(Bucket=bucket, Key=f"artifacts/{built.version}/{wheel}")["Body"].read()
    assert body == (built.directory / wheel).read_bytes()
    code, out = run_cli(
        "emr",
        "deploy",
        "--config",
        "conf/test.yaml",
        "--dist",
        str(built.directory.parent),
        "--set",
        f"aws.bucket={bucket}",
        "--set",
        f"aws.s3_endpoint={local_aws['s3']}",
    )
    assert code == 0
    assert f"(0 uploaded, {len(built.files)} unchanged)" in out
    rel = emr.release(load_config(TEST_CONFIG, [f"aws.bucket={bucket}"]), built.version)
    assert emr.missing_artifacts(s3, rel, [wheel, "conf/test.yaml", "jobs/pipeline.py"]) == []
    assert emr.missing_artifacts(s3, rel, ["jobs/nope.py"]) == [rel.uri("jobs/nope.py")]


def test_deploy_refuses_a_missing_bucket_and_a_missing_build(built, local_aws, tmp_path, capsys):
    common = ["--config", "conf/test.yaml", "--set", f"aws.s3_endpoint={local_aws['s3']}"]
    code, _ = run_cli(
        "emr", "deploy", "--dist", str(built.directory.parent), "--set", "aws.bucket=nope-x1", *common
    )
    assert code == 2
    assert "bucket nope-x1 does not exist" in capsys.readouterr().err
    code, _ = run_cli("emr", "deploy", "--dist", str(tmp_path), "--set", "aws.bucket=nope-x1", *common)
    assert code == 2
    assert "run `make package` first" in capsys.readouterr().err


# --- the bootstrap action ----------------------------------------------------------


FAKE_AWS = f"""#!{VENV_PYTHON}
# `aws s3 cp [--only-show-errors] s3://bucket/key file`, against AWS_ENDPOINT_URL_S3.
import sys, boto3
src, dst = [a for a in sys.argv[1:] if not a.startswith("--")][2:4]
bucket, key = src.removeprefix("s3://").split("/", 1)
try:
    boto3.client("s3").download_file(bucket, key, dst)
except Exception as exc:
    sys.exit(f"download failed: {{src}}: {{exc}}")
"""


@pytest.fixture(scope="module")
def bootstrap_env(built, s3, bucket, local_aws, deployed, tmp_path_factory):
    """A version whose requirements list is empty (so the install needs no PyPI),
    on the local S3 server, and an `aws` that fetches from it."""
    folder = tmp_path_factory.mktemp("bootstrap")
    wheel = emr.wheel_name(built.version)
    files = {wheel: (built.directory / wheel).read_bytes(), emr.REQUIREMENTS_FILE: b"# nothing to install\n"}
    staging = folder / "artifacts"
    staging.mkdir()
    for name, data in files.items():
        (staging / name).write_bytes(data)
    sums = "".join(f"{artifacts.sha256_file(staging / n)}  {n}\n" for n in sorted(files))
    (staging / emr.CHECKSUMS_FILE).write_text(sums)
    prefix = f"bootstrap-test/{built.version}"
    for path in staging.iterdir():
        s3.upload_file(str(path), bucket, f"{prefix}/{path.name}")
    aws = folder / "aws"
    aws.write_text(FAKE_AWS)
    aws.chmod(0o755)
    env = {**os.environ, "AWS_CLI": str(aws), "AWS_ENDPOINT_URL_S3": local_aws["s3"]}
    return {"artifacts": f"s3://{bucket}/{prefix}", "wheel": wheel, "env": env, "venv": folder / "venv"}


def install(b: dict) -> subprocess.CompletedProcess:
    command = [
        "bash",
        str(ROOT / emr.BOOTSTRAP_SCRIPT),
        "--artifacts",
        b["artifacts"],
        "--wheel",
        b["wheel"],
        "--venv",
        str(b["venv"]),
        "--python",
        sys._base_executable,
    ]
    return subprocess.run(command, env=b["env"], capture_output=True, text=True, timeout=600)


def test_bootstrap_installs_once_checks_sums_and_redoes_an_unfinished_install(bootstrap_env, s3, bucket):
    b = bootstrap_env
    first = install(b)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "creating the virtualenv" in first.stdout
    assert f"installed {b['wheel']} (sha256 " in first.stdout
    where = subprocess.run(
        [str(b["venv"] / "bin" / "python"), "-c", "import amazon_recs; print(amazon_recs.__file__)"],
        capture_output=True,
        text=True,
    )
    assert where.stdout.startswith(str(b["venv"])), where.stderr
    marker = b["venv"] / ".amazon-recs-installed"
    stamp = marker.stat().st_mtime_ns

    again = install(b)
    assert again.returncode == 0, again.stderr
    assert "is already installed" in again.stdout and "nothing to do" in again.stdout
    assert "creating the virtualenv" not in again.stdout
    assert marker.stat().st_mtime_ns == stamp

    marker.unlink()  # as if a run had stopped half way
    redo = install(b)
    assert redo.returncode == 0, redo.stderr
    assert "replacing the virtualenv" in redo.stdout and "an unfinished install" in redo.stdout

    key = b["artifacts"].removeprefix(f"s3://{bucket}/") + f"/{emr.REQUIREMENTS_FILE}"
    s3.put_object(Bucket=bucket, Key=key, Body=b"numpy==1.0\n")  # not what SHA256SUMS says
    damaged = install(b)
    assert damaged.returncode != 0
    assert "checksum mismatch" in damaged.stderr


# --- the step, run locally -----------------------------------------------------------


def localize(args: list[str], rel: emr.Release, local_root: Path, ivy: Path) -> list[str]:
    """The step's command for this machine: a local master instead of cluster mode
    (PySpark cannot run a Python app in local cluster mode), the wheel and entry
    point from their local copies. The config stays the deployed s3:// one."""
    assert args[:3] == ["spark-submit", "--deploy-mode", "cluster"]
    rest = ["--master", "local[2]", *args[3:]]
    config_at = rest.index("--config") + 1
    for i, arg in enumerate(rest):
        if i != config_at and arg.startswith(f"{rel.root}/"):
            rest[i] = str(local_root / arg.removeprefix(f"{rel.root}/"))
    submit = [str(ROOT / ".venv" / "bin" / "spark-submit"), "--packages", PACKAGES]
    return [*submit, "--conf", f"spark.jars.ivy={ivy}", "--driver-memory", "2g", *rest]


def paths_under(root: Path) -> list[str]:
    return [
        f"paths.warehouse={root / 'warehouse'}",
        f"paths.models={root / 'models'}",
        f"paths.reports={root / 'reports'}",
        f"spark.checkpoint_dir={root / 'checkpoints'}",
    ]


def driver_python(folder: Path) -> Path:
    """A Python for the driver that sees third-party packages but not the project's
    editable install: amazon_recs can only come from the --py-files wheel."""
    wrapper = folder / "driver-python"
    wrapper.write_text(
        f'#!/bin/sh\nPYTHONPATH="${{PYTHONPATH}}:{SITE_PACKAGES}" exec {VENV_PYTHON} -S "$@"\n'
    )
    wrapper.chmod(0o755)
    return wrapper


def test_the_pipeline_step_runs_locally_and_matches_an_in_process_run(
    spark, built, deployed, bucket, local_aws, tmp_path
):
    assert deployed[0] == 0
    raw = tmp_path / "raw"
    local_config = load_config(
        TEST_CONFIG, [*SMALL, f"paths.raw={raw}", *paths_under(tmp_path / "in-process")]
    )
    generate_sample(raw, **local_config.require("sample"))  # both runs read these files

    # The step, exactly as create-cluster/submit would send it.
    overrides = [*SMALL, f"paths.raw={raw}", *paths_under(tmp_path / "step"), f"aws.bucket={bucket}"]
    step_config = load_config(TEST_CONFIG, overrides)
    rel = emr.release(step_config, built.version)
    step = emr.step(step_config, rel, "pipeline", "conf/test.yaml", overrides, "CONTINUE")
    request = emr.add_steps_request("j-LOCAL", [step])
    shape = emr.service_model().operation_model("AddJobFlowSteps").input_shape
    assert not ParamValidator().validate(request, shape).has_errors()
    args = step["HadoopJarStep"]["Args"]
    assert args[args.index("--config") + 1] == f"s3://{bucket}/artifacts/{built.version}/conf/test.yaml"

    command = localize(args, rel, built.directory, ROOT / ".cache" / "ivy")
    assert command[command.index("--py-files") + 1] == str(built.directory / emr.wheel_name(built.version))
    assert command[command.index("--config") - 1] == str(built.directory / "jobs" / "pipeline.py")
    wrapper = driver_python(tmp_path)
    hidden = subprocess.run(
        [str(wrapper), "-c", "import amazon_recs"], capture_output=True, text=True, cwd="/"
    )
    assert hidden.returncode != 0 and "No module named 'amazon_recs'" in hidden.stderr
    java_home = subprocess.run(
        ["bash", str(ROOT / "bootstrap" / "local" / "java-home.sh")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    env = {
        **os.environ,
        "JAVA_HOME": java_home,
        "SPARK_LOCAL_IP": "127.0.0.1",
        "PYSPARK_PYTHON": str(VENV_PYTHON),
        "PYSPARK_DRIVER_PYTHON": str(wrapper),
        "AWS_ENDPOINT_URL_S3": local_aws["s3"],  # where the deployed config is read from
    }
    # The step in its own JVM while this session runs the same stages in process
    # (as tests/integration/test_pipeline.py does): the two share nothing but the sample.
    out_path, err_path = tmp_path / "step.out", tmp_path / "step.err"
    with out_path.open("w") as out, err_path.open("w") as err:
        process = subprocess.Popen(command, env=env, cwd=tmp_path, stdout=out, stderr=err, text=True)
        try:
            for stage in STAGE_ORDER:
                stage_function(stage)(spark, local_config)
            returncode = process.wait(timeout=1200)
        finally:
            if process.poll() is None:
                process.kill()
    stdout = out_path.read_text()
    assert returncode == 0, "\n".join((stdout + err_path.read_text()).splitlines()[-40:])
    assert "pipeline finished" in stdout
    assert f"--config s3://{bucket}/artifacts/{built.version}/conf/test.yaml" in stdout

    for table in GOLD:
        in_process = sorted_rows(spark, local_config, table)
        assert in_process, table
        assert_same_rows(sorted_rows(spark, step_config, table), in_process, table)
