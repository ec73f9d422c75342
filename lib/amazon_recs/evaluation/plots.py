"""PNG plots for the evaluation report: every metric per model, and metrics against k.

Both functions take the long-form metric rows of ``gold/metrics``
(model, metric, k, value, users) and return PNG bytes, so the caller decides
where they go (a local folder or S3, through ``io.write_bytes``).
"""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")  # no display on a cluster or in CI

import matplotlib.pyplot as plt  # noqa: E402

from amazon_recs.models import MODELS  # noqa: E402

RANKING_METRICS = ("precision", "recall", "ndcg", "map", "hit_rate", "mrr")
CURVE_METRICS = ("ndcg", "precision", "recall", "hit_rate")
# Fixed metadata keeps the bytes of a re-run identical (matplotlib stamps the version otherwise).
_PNG_METADATA = {"Software": None}


def model_order(models: set[str]) -> list[str]:
    known = [m for m in MODELS if m in models]
    return known + sorted(models - set(known))


def _png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight", metadata=_PNG_METADATA)
    plt.close(fig)
    return buffer.getvalue()


def metrics_by_model(rows: list[dict]) -> bytes:
    """Grouped bars: each ranking metric and coverage per model, with their bootstrap
    intervals as error bars; novelty (bits) beside them."""
    value = {(r["model"], r["metric"]): r["value"] for r in rows}
    bounds = {(r["model"], r["metric"]): (r.get("ci_low"), r.get("ci_high")) for r in rows}

    def errors(model: str) -> list[list[float]]:
        pairs = [(bounds.get((model, m)) or (None, None), value.get((model, m), 0.0)) for m in shared_scale]
        below = [v - lo if lo is not None else 0.0 for (lo, _), v in pairs]
        above = [hi - v if hi is not None else 0.0 for (_, hi), v in pairs]
        return [below, above]

    models = model_order({r["model"] for r in rows})
    k = rows[0]["k"] if rows else 10
    shared_scale = [m for m in (*RANKING_METRICS, "coverage") if any((x, m) in value for x in models)]

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5), gridspec_kw={"width_ratios": [4, 1]})
    width = 0.8 / max(len(models), 1)
    for i, model in enumerate(models):
        xs = [j + i * width for j in range(len(shared_scale))]
        heights = [value.get((model, m), 0.0) for m in shared_scale]
        left.bar(xs, heights, width, label=model, yerr=errors(model), capsize=2, error_kw={"lw": 0.8})
        right.bar(i, value.get((model, "novelty"), 0.0), 0.8, label=model)
    left.set_xticks([j + width * (len(models) - 1) / 2 for j in range(len(shared_scale))])
    left.set_xticklabels([f"{m}@{k}" for m in shared_scale])
    left.set_ylabel("value")
    left.set_title(f"Metrics at k={k} per model")
    left.legend(fontsize="small")
    left.grid(axis="y", alpha=0.3)
    right.set_xticks(range(len(models)))
    right.set_xticklabels(models, rotation=45, ha="right")
    right.set_ylabel("bits")
    right.set_title(f"novelty@{k}")
    right.grid(axis="y", alpha=0.3)
    return _png(fig)


def metrics_against_k(rows: list[dict]) -> bytes:
    """One panel per metric of CURVE_METRICS, one line per model, k on the x axis."""
    models = model_order({r["model"] for r in rows})
    fig, axes = plt.subplots(1, len(CURVE_METRICS), figsize=(4 * len(CURVE_METRICS), 3.8))
    for ax, metric in zip(axes, CURVE_METRICS, strict=True):
        for model in models:
            points = sorted(
                (r["k"], r["value"]) for r in rows if r["model"] == model and r["metric"] == metric
            )
            if points:
                ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=model)
        ax.set_xticks(sorted({r["k"] for r in rows}))
        ax.set_title(f"{metric}@k")
        ax.set_xlabel("k")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize="small")
    return _png(fig)
