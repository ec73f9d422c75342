"""The stages in the order they run, and where each one's ``run_<stage>`` lives.

Nothing heavy is imported here: ``amazon-recs emr`` builds its steps from this
list without pyspark. ``stage_function`` imports a stage's module when asked.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib import import_module

STAGE_ORDER = ("ingest", "features", "train", "recommend", "evaluate", "export")
# Stages run on their own, not by ``all``: refresh re-scores the users who acted since
# the last run, between two runs (``pipeline.refresh``).
ON_DEMAND = ("refresh",)
STAGES = STAGE_ORDER + ON_DEMAND


def stage_function(name: str) -> Callable:
    """``run_<name>`` from ``amazon_recs.pipeline.<name>``.

    Raises:
        KeyError: ``name`` is not a stage.
    """
    if name not in STAGES:
        raise KeyError(name)
    return getattr(import_module(f"amazon_recs.pipeline.{name}"), f"run_{name}")
