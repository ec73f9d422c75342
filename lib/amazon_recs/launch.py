"""``bin/spark-submit``: spark-submit with this project's settings, from any shell.

spark-submit starts the driver's JVM before any Python runs, so what must be
known at launch comes from the configuration here: the master, the driver's
memory (``spark.driver_memory``; set on a session builder it would be ignored),
the Delta and S3A packages resolved into the project's jar cache, and where
Spark's own log goes (``spark.log_file``: the console keeps the pipeline's lines,
Spark's WARN and above go to the file; ``--verbose`` shows Spark's INFO too).

    bin/spark-submit jobs/train.py --config conf/local.yaml --set als.rank=64
    bin/spark-submit --verbose --conf spark.executor.cores=2 jobs/pipeline.py

Options before the job file go to spark-submit and win over these; the job's own
``--config`` and ``--set`` choose the configuration.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from amazon_recs.config import DEFAULT_CONFIG, Config, load_config
from amazon_recs.errors import JVM_OOM_EXIT, STATUS_FILE, ConfigError, RecsError, memory_error

ROOT = Path(__file__).resolve().parents[2]
LOG4J = ROOT / "conf" / "log4j2.properties"
FLAGS = ("--verbose", "--supervise")  # spark-submit options that take no value
RESOLVED = "resolved.json"  # beside the jar cache: which packages its jars/ folder holds


def record_resolved(ivy_dir: Path, packages: Sequence[str]) -> Path:
    """Note that ``<ivy_dir>/jars`` now holds ``packages`` and everything they need.

    Written once the packages have been resolved (``make setup``): later launches
    pass those jars with ``--jars`` instead of resolving again, which spares each
    run Ivy's thirty lines of output and its network check.
    """
    jars = sorted(str(p) for p in (ivy_dir / "jars").glob("*.jar"))
    path = ivy_dir / RESOLVED
    path.write_text(json.dumps({"packages": list(packages), "jars": jars}, indent=1) + "\n")
    return path


def resolved_jars(ivy_dir: Path, packages: Sequence[str]) -> list[str] | None:
    """The recorded jars of exactly ``packages``, or None when they must be resolved."""
    try:
        recorded = json.loads((ivy_dir / RESOLVED).read_text())
    except (OSError, ValueError):
        return None
    jars = recorded.get("jars") or []
    if recorded.get("packages") != list(packages) or not all(Path(j).is_file() for j in jars):
        return None
    return jars


def split_args(argv: Sequence[str]) -> tuple[list[str], str, list[str]]:
    """(spark-submit options, the job file, the job's arguments)."""
    for i, arg in enumerate(argv):
        after_option = i and argv[i - 1].startswith("--") and "=" not in argv[i - 1]
        if arg.endswith(".py") and not (after_option and argv[i - 1] not in FLAGS):
            return list(argv[:i]), arg, list(argv[i + 1 :])
    raise ConfigError(
        "usage: bin/spark-submit [spark-submit options] jobs/<job>.py [--config FILE] [--set K=V]"
    )


def job_config(job_args: Sequence[str]) -> Config:
    """The configuration the job will load: its ``--config`` and ``--set`` arguments."""
    path, overrides = DEFAULT_CONFIG, []
    args = list(job_args)
    for i, arg in enumerate(args):
        value = args[i + 1] if i + 1 < len(args) else None
        if arg == "--config" and value:
            path = value
        elif arg.startswith("--config="):
            path = arg.split("=", 1)[1]
        elif arg == "--set" and value:
            overrides.append(value)
        elif arg.startswith("--set="):
            overrides.append(arg.split("=", 1)[1])
    return load_config(path, overrides)


def log_file(config: Config, now: datetime | None = None) -> str | None:
    """This run's Spark log, ``<spark.log_dir>/spark-<UTC time>.log``; None leaves Spark's logging alone."""
    folder = config.require("spark.log_dir")
    if not folder:
        return None
    stamp = (now or datetime.now(tz=UTC)).strftime("%Y%m%dT%H%M%SZ")
    return str(Path(folder).resolve() / f"spark-{stamp}.log")


def java_options(log_path: str | None, verbose: bool = False) -> str:
    """The driver's JVM options that route Spark's logging (empty when it is left alone)."""
    if not log_path:
        return ""
    console, spark = ("info", "info") if verbose else ("off", "warn")
    return (
        f"-Dlog4j2.configurationFile=file:{LOG4J} -Damazon_recs.log_file={log_path} "
        f"-Damazon_recs.console_level={console} -Damazon_recs.spark_level={spark}"
    )


def submit_command(
    config: Config, job: str, job_args: Sequence[str], passthrough: Sequence[str] = (), verbose: bool = False
) -> tuple[list[str], str | None]:
    """The spark-submit command line for ``job``, and the Spark log file it writes (or None)."""
    ivy = config.require("spark.ivy_dir") or ".cache/ivy"
    ivy_path = Path(ivy) if Path(ivy).is_absolute() else ROOT / ivy
    command = [
        str(ROOT / ".venv" / "bin" / "spark-submit"),
        "--master",
        config.require("spark.master"),
        "--driver-memory",
        config.require("spark.driver_memory"),
        "--conf",
        f"spark.jars.ivy={ivy_path}",
    ]
    packages = config.require("spark.packages")
    if packages:
        jars = resolved_jars(ivy_path, packages)
        command += ["--jars", ",".join(jars)] if jars else ["--packages", ",".join(packages)]
    path = log_file(config)
    options = java_options(path, verbose)
    if options:
        command += ["--driver-java-options", options]
    return [*command, *passthrough, job, *job_args], path


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--record-resolved"]:  # make setup, after resolving: --record-resolved IVY_DIR PACKAGES
        print(f"recorded {record_resolved(Path(argv[1]), argv[2].split(','))}")
        return 0
    try:
        passthrough, job, job_args = split_args(argv)
        verbose = "--verbose" in passthrough
        passthrough = [a for a in passthrough if a != "--verbose"]
        config = job_config(job_args)
        command, path = submit_command(config, job, job_args, passthrough, verbose)
    except RecsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        print(f"Spark's log: {path}", file=sys.stderr, flush=True)
    return supervise(command, config, path)


def supervise(command: Sequence[str], config: Config, log_path: str | None) -> int:
    """Run spark-submit and pass its exit code on, with one line when Spark ended the JVM
    for an OutOfMemoryError: the Python driver is stopped with it and cannot say so.

    The driver keeps its stage and step in a status file (``pipeline.base.STATUS_FILE``)
    for that line. SIGTERM and SIGHUP are passed to spark-submit; SIGINT reaches it from
    the terminal (same process group), so here it is only waited out.
    """
    with tempfile.TemporaryDirectory(prefix="amazon-recs-") as folder:
        status = Path(folder) / "status.json"
        proc = subprocess.Popen(command, env={**os.environ, STATUS_FILE: str(status)})
        for sig in (signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, lambda number, _frame: proc.send_signal(number))
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        code = proc.wait()
        if code != JVM_OOM_EXIT:
            return code if code >= 0 else 128 - code
        try:
            now = json.loads(status.read_text())
        except (OSError, ValueError):
            now = {}
    what = f"ran out of memory (Spark ended its JVM with exit {JVM_OOM_EXIT}: java.lang.OutOfMemoryError)"
    memory = config.require("spark.driver_memory")
    oom = memory_error(now.get("stage"), now.get("step"), what, memory, log_path)
    print(f"error: {oom}", file=sys.stderr, flush=True)
    return oom.exit_code


if __name__ == "__main__":
    sys.exit(main())
