"""numba compilation shared by the kernels that run inside Spark tasks (LSH, blocked ALS)."""

from __future__ import annotations

import numba


def njit_cached(**options):
    """numba.njit, caching the compiled kernel on disk where there is a place for it
    (beside this file, NUMBA_CACHE_DIR or the user's cache). Imported from a zip (a
    wheel on sys.path, Spark's --py-files) there is none: compiled once per process."""

    def wrap(fn):
        try:
            return numba.njit(cache=True, **options)(fn)
        except RuntimeError:  # numba: "cannot cache function ...: no locator available"
            return numba.njit(**options)(fn)

    return wrap
