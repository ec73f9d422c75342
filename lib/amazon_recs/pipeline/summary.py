"""What ``make run`` prints when every stage has run: table sizes, the reconciliation
of every input file, the metrics, and where the outputs are."""

from __future__ import annotations

from pyspark.sql import functions as F

from amazon_recs import io
from amazon_recs.config import Config
from amazon_recs.evaluation import report
from amazon_recs.serving.gold_tables import VERSIONED_TABLES

SUMMARY_TABLES = (
    "bronze/reviews",
    "bronze/products",
    "bronze/rejects",
    "silver/interactions",
    "silver/items",
    "silver/users",
    "gold/recommendations",
    "gold/user_recommendations",
    "gold/popular_fallback",
    "gold/metrics",
)


def pipeline_summary(spark, config: Config, summaries: dict) -> str:
    """What ``make run`` prints at the end: table sizes, metrics, where things are."""
    version = summaries.get("evaluate", {}).get("model_version")
    lines = ["", "== amazon-recs: pipeline finished ==", "", f"Rows per table (gold: version {version}):"]
    for name in SUMMARY_TABLES:
        path = io.table_path(config, name)
        rows = "-"
        if io.table_exists(spark, path):
            table = spark.read.format("delta").load(path)
            if name in VERSIONED_TABLES and version is not None:  # the gold tables keep a few versions
                table = table.filter(F.col(io.MODEL_VERSION) == version)
            rows = table.count()
        lines.append(f"  {name:<28} {rows:>9}  {path}")
    ingest = summaries.get("ingest", {})
    for f in ingest.get("files", []):
        if f["kind"] != "events":
            lines.append(f"  ingest {f['kind']:<8} {f['source_file']}: {_line_counts(f)}")
    if ingest.get("event_files"):  # one object per event: one line for them all
        events = [f for f in ingest["files"] if f["kind"] == "events"]
        totals = {key: sum(f[key] for f in events) for key in ("lines_read", "accepted", "rejected", "blank")}
        since = ingest.get("event_files_since")
        listed = f"event files in the folders from {since} on" if since else "event files"
        lines.append(
            f"  ingest events   {ingest['event_files_read']:,} of {ingest['event_files']:,} {listed} "
            f"(the others read whole by an earlier run): {_line_counts(totals)}"
        )
    cleaning = summaries.get("features", {}).get("text_cleaning") or {}
    if any(any(counts.values()) for counts in cleaning.values()):
        lines.append("  text cleaning (features): " + cleaning_line(cleaning))
    evaluation = summaries.get("evaluate", {})
    lines += [
        "",
        f"Metrics (model version {evaluation.get('model_version')}):",
        "",
        report.metrics_table(evaluation.get("metrics", [])),
        "",
    ]
    paired = evaluation.get("paired")
    if paired:
        level = config.require("evaluate.confidence")
        lines += ["The hybrid against each model, same users:", "", report.paired_section(paired, level)]
    cold = evaluation.get("cold")
    if cold and cold["interactions"]:
        lines += [
            f"Cold items (test interactions whose item had at most {cold['max_train']} training "
            f"interactions: {cold['interactions']} of {cold['test_interactions']}):",
            "",
            report.metrics_table(evaluation.get("metrics", []), cold=True),
            "",
        ]
    method = evaluation.get("neighbour_method")
    if method:
        lines.append(f"Content neighbours: {report.recall_line(evaluation.get('lsh_recall'), method)}")
    lines.append(f"Report:  {evaluation.get('report')}")
    lines.append(f"Models:  {summaries.get('train', {}).get('model_dir')}")
    export = summaries.get("export", {})
    if export.get("athena_ddl"):
        lines.append(f"Athena:  {export['athena_ddl']}")
    if export.get("dynamodb"):
        d = export["dynamodb"]
        if d.get("already_live"):
            lines.append(
                f"DynamoDB: version {d['model_version']} already live in {d['table']}: nothing rewritten"
            )
        else:
            lines.append(
                f"DynamoDB: version {d['model_version']} published to table {d['table']} "
                f"({d['lists']} lists in {d['batches']} batches, {d['retries']} retries; "
                f"previous version {d['previous_version'] or 'none'})"
            )
    recs = spark.read.format("delta").load(io.table_path(config, "gold/recommendations"))
    if version is not None:
        recs = recs.filter(F.col(io.MODEL_VERSION) == version)
    sample_user = recs.select("user_id").orderBy("user_id").first()[0]
    lines.append(
        f"See one user's top-10:  .venv/bin/amazon-recs show --config {config.source} "
        f"--user {sample_user} --model hybrid"
    )
    return "\n".join(lines)


def _line_counts(f: dict) -> str:
    return (
        f"read {f['lines_read']} = accepted {f['accepted']} + rejected {f['rejected']} + blank {f['blank']}"
    )


def cleaning_line(cleaning: dict) -> str:
    """What the features stage did to the product text, the fields it touched only."""
    parts = []
    for field, counts in cleaning.items():
        done = [f"{what.replace('_', ' ')} {n:,}" for what, n in counts.items() if n]
        if done:
            parts.append(f"{field}: {', '.join(done)}")
    return "; ".join(parts)
