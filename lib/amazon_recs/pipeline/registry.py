"""The stages in the order they run, and where each one's ``run_<stage>`` lives.

Nothing heavy is imported here: ``amazon-recs emr`` builds its steps from this
list without pyspark. ``stage_function`` imports a stage's module when asked.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib import import_module

STAGE_ORDER = ("ingest", "features", "train", "recommend", "evaluate", "export")


def stage_function(name: str) -> Callable:
    """``run_<name>`` from ``amazon_recs.pipeline.<name>``.

    Raises:
        KeyError: ``name`` is not a stage.
    """
    if name not in STAGE_ORDER:
        raise KeyError(name)
    return getattr(import_module(f"amazon_recs.pipeline.{name}"), f"run_{name}")
