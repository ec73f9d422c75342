"""Small text outputs: the metrics report and the Athena DDL."""

from __future__ import annotations

from pyspark.sql import SparkSession

from amazon_recs import io
from amazon_recs.config import Config

GOLD_TABLES = ("recommendations", "user_recommendations", "metrics")


def metrics_table(rows: list[dict]) -> str:
    """A Markdown table, one row per model, one column per metric."""
    metrics = sorted({r["metric"] for r in rows}, key=_metric_order)
    models = sorted({r["model"] for r in rows})
    k = rows[0]["k"] if rows else 10
    value = {(r["model"], r["metric"]): r["value"] for r in rows}
    users = {r["model"]: r["users"] for r in rows if r["metric"] == "precision"}
    header = "| model | users | " + " | ".join(f"{m}@{k}" for m in metrics) + " |"
    rule = "|---|---:|" + "---:|" * len(metrics)
    lines = [header, rule]
    for model in models:
        cells = " | ".join(f"{value.get((model, m), float('nan')):.4f}" for m in metrics)
        lines.append(f"| {model} | {users.get(model, '')} | {cells} |")
    return "\n".join(lines)


def _metric_order(metric: str) -> tuple[int, str]:
    order = ["precision", "recall", "ndcg", "map", "hit_rate", "mrr", "coverage", "novelty"]
    return (order.index(metric) if metric in order else len(order), metric)


def write_metrics_report(spark: SparkSession, config: Config, rows: list[dict]) -> str:
    version = rows[0]["model_version"] if rows else "none"
    text = (
        f"# Evaluation report\n\nModel version `{version}`, held-out split as configured "
        f"(split.test_fraction = {config.require('split.test_fraction')}), full-catalogue "
        f"ranking with each user's training items removed.\n\n{metrics_table(rows)}\n"
    )
    path = f"{config.require('paths.reports').rstrip('/')}/metrics.md"
    io.write_text(spark, path, text)
    return path


def athena_ddl(config: Config) -> str:
    """Glue/Athena statements registering each gold Delta table in place."""
    db = config.require("export.glue_database")
    warehouse = config.require("paths.warehouse").rstrip("/")
    statements = [f"CREATE DATABASE IF NOT EXISTS {db};"]
    for table in GOLD_TABLES:
        statements.append(
            f"CREATE EXTERNAL TABLE IF NOT EXISTS {db}.{table}\n"
            f"LOCATION '{warehouse}/gold/{table}'\n"
            f"TBLPROPERTIES ('table_type'='DELTA');"
        )
    return "\n\n".join(statements) + "\n"
