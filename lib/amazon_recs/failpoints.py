"""Named points where a crash test stops a run, to kill it exactly there.

With ``AMAZON_RECS_FAILPOINT=<name>`` in its environment, the process that reaches
``reached(name)`` (the driver, or a Python worker, which inherit the variable) says
so in one line on stderr and waits to be killed. Without it, as always outside the
crash tests, ``reached`` is one dictionary lookup. No imports beyond the standard
library: the serving modules use it too.
"""

from __future__ import annotations

import os
import sys
import time

ENV = "AMAZON_RECS_FAILPOINT"


def reached(name: str) -> None:
    if os.environ.get(ENV) != name:
        return
    print(f"failpoint {name} reached: waiting to be killed", file=sys.stderr, flush=True)
    while True:
        time.sleep(60)
