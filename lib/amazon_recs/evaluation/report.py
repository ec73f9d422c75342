"""The evaluation report: the metrics table, tuning choices and LSH recall in Markdown,
beside its plots."""

from __future__ import annotations

from pyspark.sql import SparkSession

from amazon_recs import io
from amazon_recs.config import Config
from amazon_recs.evaluation import plots
from amazon_recs.evaluation.metrics import COLD

BY_MODEL_PNG = "metrics_by_model.png"
AGAINST_K_PNG = "metrics_at_k.png"


def metrics_table(rows: list[dict], cold: bool = False, prefix: str = "") -> str:
    """A Markdown table, one row per model, one column per metric: of the whole test
    split, of its cold-item slice (``cold``: metrics named cold_*) or of a user segment
    (``prefix``: metrics named <prefix>_*). A metric with a bootstrap interval shows it
    under its value: ``0.1161 [0.0893, 0.1452]``."""
    prefix = COLD if cold else prefix and f"{prefix}_"
    if prefix:
        rows = [{**r, "metric": r["metric"][len(prefix) :]} for r in rows if r["metric"].startswith(prefix)]
    else:
        rows = [r for r in rows if r["metric"] in _MAIN]
    metrics = sorted({r["metric"] for r in rows}, key=_metric_order)
    models = plots.model_order({r["model"] for r in rows})
    k = rows[0]["k"] if rows else 10
    cell = {(r["model"], r["metric"]): _with_interval(r) for r in rows}
    users = {r["model"]: r["users"] for r in rows if r["metric"] == "precision"}
    header = "| model | users | " + " | ".join(f"{m}@{k}" for m in metrics) + " |"
    rule = "|---|---:|" + "---:|" * len(metrics)
    lines = [header, rule]
    for model in models:
        cells = " | ".join(cell.get((model, m), "") for m in metrics)
        lines.append(f"| {model} | {users.get(model, '')} | {cells} |")
    return "\n".join(lines)


_MAIN = ("precision", "recall", "ndcg", "map", "hit_rate", "mrr", "coverage", "novelty")


def _with_interval(row: dict) -> str:
    if row.get("ci_low") is None:
        return f"{row['value']:.4f}"
    return f"{row['value']:.4f} [{row['ci_low']:.4f}, {row['ci_high']:.4f}]"


def paired_section(paired: list[dict], level: float, metrics: tuple[str, ...] = ("ndcg", "recall")) -> str:
    """The hybrid minus each single model per metric, over the same users, with the
    interval of the difference; "above zero" only when the whole interval is."""
    rows = [p for p in paired if p["segment"] == "all" and p["metric"] in metrics]
    if not rows:
        return "No hybrid in this version: nothing to compare.\n"
    others = plots.model_order({p["other"] for p in rows})
    head = (
        f"The hybrid minus each model on the same users, with the {level:.0%} bootstrap interval "
        "of the difference (users resampled together, so the comparison is paired). "
        "A gain is real when its whole interval is above zero."
    )
    lines = [
        head,
        "",
        "| against | " + " | ".join(f"{m}@k" for m in metrics) + " |",
        "|---|" + "---:|" * len(metrics),
    ]
    by = {(p["other"], p["metric"]): p for p in rows}
    for other in others:
        cells = []
        for metric in metrics:
            p = by[(other, metric)]
            verdict = " (above zero)" if p["low"] > 0 else " (below zero)" if p["high"] < 0 else ""
            cells.append(f"{p['diff']:+.4f} [{p['low']:+.4f}, {p['high']:+.4f}]{verdict}")
        lines.append(f"| {other} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def segments_section(rows: list[dict], bounds: dict) -> str:
    """Each model on light and heavy users: where each one helps."""
    parts = []
    for name, rule in (
        ("light", f"at most {bounds['light_max_train']} training interactions"),
        ("heavy", f"at least {bounds['heavy_min_train']} training interactions"),
    ):
        mine = [r for r in rows if r["metric"].startswith(f"{name}_")]
        if not mine:
            parts.append(f"{name.capitalize()} users ({rule}): none in the test split.")
            continue
        parts.append(f"{name.capitalize()} users ({rule}):\n\n{metrics_table(rows, prefix=name)}")
    return "\n\n".join(parts) + "\n"


def _metric_order(metric: str) -> tuple[int, str]:
    order = ["precision", "recall", "ndcg", "map", "hit_rate", "mrr", "coverage", "novelty"]
    return (order.index(metric) if metric in order else len(order), metric)


def cold_section(rows: list[dict], cold: dict, has_text: bool = True) -> str:
    """The cold-item slice: what it holds (``metrics.slice_composition``), and every
    model's metrics on it. ``has_text``: whether any product has text, i.e. whether
    the content model can rank a product nobody interacted with in training."""
    share = cold["interactions"] / cold["test_interactions"] if cold["test_interactions"] else 0.0
    head = (
        f"Test interactions whose item had at most {cold['max_train']} training interactions "
        f"(`evaluate.cold_item_max_train`): {cold['interactions']} of {cold['test_interactions']} "
        f"({share:.1%}), from {cold['users']} users"
    )
    if not cold["interactions"]:
        return f"{head}."
    new = cold["new_item_interactions"]
    if not new:
        holds = "None of these products is new: each had a training interaction."
    else:
        holds = f"{new} of these interactions are with products that had no training interaction at all: " + (
            "only the content model can rank those, from their text."
            if has_text
            else "no model here has a signal for those, since no product has text for the content model."
        )
    return (
        f"{head}, with {cold['items']} products. {holds} Each model's usual top-k list, scored against "
        f"these items alone.\n\n{metrics_table(rows, cold=True)}"
    )


def _trust(tuning: dict) -> str:
    """How the hybrid trusts ALS on thin items, for versions tuned with it."""
    if "als_half_trust" not in tuning:
        return ""
    half = tuning["als_half_trust"]
    return f", ALS trust per item {'off' if not half else f'n / (n + {half:g})'}"


def tuning_section(tuning: dict | None) -> str:
    """What tuning chose on validation, and every ALS grid point's score."""
    if not tuning:
        return "Not tuned (`tune.enabled` is false): the configured settings were used.\n"
    columns = sorted(k for k in tuning["als_grid"][0] if k != "ndcg") + ["ndcg"]
    # Versions tuned before tune.max_validation_users scored every validation user.
    scored = tuning.get("validation_users_scored", tuning["validation_users"])
    sample = "" if scored == tuning["validation_users"] else f"{scored} (a seeded sample) of the "
    lines = [
        f"Chosen on {sample}{tuning['validation_users']} users of a validation split carved from training:",
        f"ALS {tuning['als']}, hybrid weights {tuning['hybrid_weights']}{_trust(tuning)} "
        f"(validation NDCG@k {tuning['validation_ndcg']:.4f}).",
        "",
        "| " + " | ".join(columns) + " |",
        "|" + "---:|" * len(columns),
    ]
    lines += _grid_rows(tuning["als_grid"], columns)
    if tuning.get("item_knn_grid"):  # versions tuned before item-kNN have none
        lines += _grid_table(f"Item-kNN {tuning['item_knn']}:", tuning["item_knn_grid"])
    if tuning.get("popular_grid"):  # versions tuned before popularity's half-life have none
        title = f"Popularity {tuning['popular']} (half_life_days 0: no decay):"
        lines += _grid_table(title, tuning["popular_grid"])
    lines += _cold_tradeoff(tuning.get("cold_validation"))
    return "\n".join(lines) + "\n"


def _cold_tradeoff(cold: dict | None) -> list[str]:
    """What the hybrid's settings did for validation's cold items (``tuning.cold_tradeoff``),
    for versions tuned with it: the choice, ALS alone, and the price of matching ALS."""
    if not cold:
        return []
    head = (
        f"On validation's cold items (their item had at most {cold['max_train']} fit interactions: "
        f"{cold['interactions']} interactions of {cold['users']} users)"
    )
    if "chosen" not in cold:
        return ["", f"{head}: none, so no setting was scored on them."]
    chosen, als, matching = cold["chosen"], cold["als"], cold["matching_als"]
    text = f"{head}, the chosen setting scores NDCG@k {chosen['cold_ndcg']:.4f}"
    if als is None:
        return ["", f"{text} (ALS alone, trust off, was not among the settings tried)."]
    text += f" and ALS alone {als['cold_ndcg']:.4f} ({als['ndcg']:.4f} on all validation items)."
    if matching is None:
        return ["", f"{text} No setting scores as much as ALS alone on them."]
    weights = {name: w for name, w in matching.items() if name not in ("ndcg", "cold_ndcg", "als_half_trust")}
    text += (
        f" The best on all validation items of the settings scoring at least that on them: weights "
        f"{weights}{_trust(matching)}, NDCG@k {matching['ndcg']:.4f} on all items (the chosen: "
        f"{chosen['ndcg']:.4f}) and {matching['cold_ndcg']:.4f} on the cold ones."
    )
    return ["", text]


def _grid_table(title: str, points: list[dict]) -> list[str]:
    """A titled table of a grid's points: its settings, then ndcg."""
    columns = sorted(k for k in points[0] if k != "ndcg") + ["ndcg"]
    header = ["", title, "", "| " + " | ".join(columns) + " |", "|" + "---:|" * len(columns)]
    return header + _grid_rows(points, columns)


def _grid_rows(points: list[dict], columns: list[str]) -> list[str]:
    return [
        "| "
        + " | ".join(f"{point[c]:.4f}" if isinstance(point[c], float) else str(point[c]) for c in columns)
        + " |"
        for point in points
    ]


def recall_line(lsh_recall: float | None, method: str | None = "lsh") -> str:
    if method == "exact":
        return "Neighbours found by the exact search (blocked sparse products): nothing missed."
    if lsh_recall is None:
        return "LSH recall not measured (no item text, or content.lsh.recall_sample is 0)."
    return (
        f"LSH found {lsh_recall:.1%} of the exact top-`content.neighbours` cosine neighbours "
        "(above content.min_similarity) of `content.lsh.recall_sample` sampled items."
    )


def curve_table(curve: list[dict], metric: str = "ndcg") -> str:
    """A Markdown table of one metric at each k of the curve, one row per model."""
    ks = sorted({r["k"] for r in curve})
    value = {(r["model"], r["k"]): r["value"] for r in curve if r["metric"] == metric}
    models = plots.model_order({r["model"] for r in curve})
    lines = ["| model | " + " | ".join(f"{metric}@{k}" for k in ks) + " |", "|---|" + "---:|" * len(ks)]
    for model in models:
        lines.append(
            f"| {model} | " + " | ".join(f"{value.get((model, k), float('nan')):.4f}" for k in ks) + " |"
        )
    return "\n".join(lines)


def split_line(config: Config, cold_users: dict | None) -> str:
    """How test was held out, and the users a global time cut left without training rows."""
    protocol = config.require("split.protocol")
    line = f"protocol `{protocol}`"
    if protocol == "global_temporal":
        cutoff, share = config.require("split.cutoff"), config.require("split.test_fraction")
        line += f" (cut at {cutoff})" if cutoff else f" (the latest {share:.0%})"
    elif protocol != "leave_last_out":
        line += f" (test_fraction {config.require('split.test_fraction')})"
    if cold_users is not None:
        line += (
            f"; {cold_users['users']:,} users with no interaction before the cut "
            f"({cold_users['interactions']:,} test interactions) are served the popular list "
            "and left out of the metrics"
        )
    return line


def write_metrics_report(
    spark: SparkSession,
    config: Config,
    rows: list[dict],
    tuning: dict | None = None,
    lsh_recall: float | None = None,
    curve: list[dict] | None = None,
    neighbour_method: str | None = "lsh",
    cold: dict | None = None,
    cold_users: dict | None = None,
    paired: list[dict] | None = None,
    segments: dict | None = None,
) -> str:
    """Write ``metrics.md`` and its two PNG plots under ``paths.reports``; return the report's path."""
    reports = config.require("paths.reports").rstrip("/")
    version = rows[0]["model_version"] if rows else "none"
    io.write_bytes(
        spark,
        f"{reports}/{BY_MODEL_PNG}",
        plots.metrics_by_model([r for r in rows if r["metric"] in _MAIN]),
    )
    sections = [
        f"# Evaluation report\n\nModel version `{version}`, split {split_line(config, cold_users)}, "
        f"full-catalogue ranking with each user's training items removed.\n\n{metrics_table(rows)}\n\n"
        f"![metrics per model]({BY_MODEL_PNG})\n",
    ]
    if curve:
        io.write_bytes(spark, f"{reports}/{AGAINST_K_PNG}", plots.metrics_against_k(curve))
        sections.append(
            f"## Metrics against k\n\n{curve_table(curve)}\n\n![metrics against k]({AGAINST_K_PNG})\n"
        )
    if paired is not None:
        level = config.require("evaluate.confidence")
        sections.append(f"## The hybrid against each model\n\n{paired_section(paired, level)}")
    if segments is not None:
        sections.append(f"## Light and heavy users\n\n{segments_section(rows, segments)}")
    if cold is not None:
        sections.append(f"## Cold items\n\n{cold_section(rows, cold, neighbour_method is not None)}\n")
    sections.append(f"## Tuning\n\n{tuning_section(tuning)}")
    sections.append(f"## Content neighbours\n\n{recall_line(lsh_recall, neighbour_method)}\n")
    path = f"{reports}/metrics.md"
    io.write_text(spark, path, "\n".join(sections))
    return path
