"""Typed errors. The runner turns each into one line and a non-zero exit."""


class RecsError(Exception):
    """An error the user can act on; its message is shown as it is."""

    exit_code = 2


class ConfigError(RecsError):
    """A configuration file or override is missing, unknown or of the wrong type."""


class InputError(RecsError):
    """Input data is missing or unusable."""


class SchemaError(RecsError):
    """A DataFrame at a stage boundary does not have the promised columns."""


class StageOrderError(RecsError):
    """A stage ran before the stage whose output it reads."""


class RequestError(RecsError):
    """A request names a user, product, model or parameter the service cannot accept."""


class OutOfMemory(RecsError):
    """Spark's driver ran out of memory (or died of it) during a stage."""

    exit_code = 3


# What a Py4J error says when the JVM ran out of heap, or is gone after it did.
OOM_SIGNS = ("java.lang.OutOfMemoryError", "Java heap space", "GC overhead limit exceeded")
JVM_GONE_SIGNS = ("Answer from Java side is empty", "Connection refused", "Error while sending or receiving")
# A task result too large for the driver's heap: fetching it from the block manager ran
# out of memory, and the job fails saying only this (the OutOfMemoryError is in Spark's log).
RESULT_LOST_SIGNS = ("TaskResultLost (result lost from block manager)",)


def out_of_memory(
    exc: BaseException, stage: str | None, step: str | None, memory: str, log: str | None
) -> OutOfMemory | None:
    """One line for a run that ran out of memory, or None when ``exc`` is something else."""
    text = f"{type(exc).__name__}: {exc}"
    if any(sign in text for sign in OOM_SIGNS):
        what = "ran out of memory"
    elif any(sign in text for sign in RESULT_LOST_SIGNS):
        what = "lost a task's result, most likely to the driver running out of memory fetching it,"
    elif any(sign in text for sign in JVM_GONE_SIGNS):
        what = "the Spark driver stopped answering, most likely out of memory,"
    else:
        return None
    return memory_error(stage, step, what, memory, log)


# spark-submit's exit code when an uncaught OutOfMemoryError (in local mode, one in any
# task) made Spark end the JVM: the Python driver is stopped with it, before it can say why.
JVM_OOM_EXIT = 52
# The file (named by this environment variable) where a run keeps its stage and step, so
# that bin/spark-submit can name them then (``pipeline.base.progress``).
STATUS_FILE = "AMAZON_RECS_STATUS_FILE"


def memory_error(stage: str | None, step: str | None, what: str, memory: str, log: str | None) -> OutOfMemory:
    """The one line: where it happened, what happened, the setting and what to raise it to."""
    where = f"stage {stage or '?'}" + (f" ({step})" if step else "")
    return OutOfMemory(
        f"{where} {what} with spark.driver_memory={memory}: raise it, e.g. --set spark.driver_memory=8g "
        f'(make run SET="spark.driver_memory=8g")' + (f"; Spark's log: {log}" if log else "")
    )
