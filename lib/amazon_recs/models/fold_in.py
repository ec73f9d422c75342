"""New and changed users folded into a trained ALS model, with its item factors fixed.

A user's factors in implicit ALS solve one least-squares system against the item
factors (``als_blocked``'s module docstring has it). The training's last
half-iteration solves exactly that for every user, so solving it again for a
user with their training history gives back their trained factors (to float
rounding), and with events added gives the factors the next half-iteration would,
without refitting anything: this is how ``refresh`` serves a user who acted since
the last run, or one the model has never seen.
"""

from __future__ import annotations

import numpy as np

from amazon_recs.models.als_blocked import solve_rows


def fold_in(
    item_factors: np.ndarray,
    rows: np.ndarray,
    cols: np.ndarray,
    weights: np.ndarray,
    n_rows: int,
    reg_param: float,
    alpha: float,
    gram: np.ndarray | None = None,
) -> np.ndarray:
    """Factors of ``n_rows`` users from their interactions with fixed items.

    Args:
        item_factors: items x rank, float32: the trained model's item factors.
        rows, cols, weights: one entry per (user, item) interaction: the user's row
            (0 .. n_rows - 1), the item's row in ``item_factors`` and its weight
            (the interaction's weight, as the model was trained on).
        reg_param, alpha: the model's regularisation and confidence scale.
        gram: ``item_factors``' Gram matrix in float64, when the caller has it.

    Returns:
        n_rows x rank float32; zeros for a user without a positive interaction.
    """
    rank = item_factors.shape[1]
    out = np.zeros((n_rows, rank), np.float32)
    if not n_rows:
        return out
    rows = np.asarray(rows, np.int64)
    cols = np.asarray(cols, np.int32)
    vals = np.asarray(weights, np.float32)
    # Training sums each user's ratings in (item, rating) order: the same order here.
    order = np.lexsort((vals, cols, rows))
    rows, cols, vals = rows[order], cols[order], vals[order]
    indptr = np.zeros(n_rows + 1, np.int64)
    np.cumsum(np.bincount(rows, minlength=n_rows), out=indptr[1:])
    if gram is None:
        factors64 = item_factors.astype(np.float64)
        gram = factors64.T @ factors64
    factors = np.ascontiguousarray(item_factors, np.float32)
    solve_rows(indptr, cols, vals, factors, gram, float(alpha), float(reg_param), out)
    return out
