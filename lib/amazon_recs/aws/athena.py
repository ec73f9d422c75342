"""Athena: the DDL that registers each gold Delta table in the Glue catalogue, in place."""

from __future__ import annotations

from amazon_recs.config import Config

# refreshed_recommendations: the lists refresh recomputed since the export; a reader
# takes a user's row there before user_recommendations. Every table but versions holds
# one partition per model_version (the last export.keep_versions publishes): filter on
# the newest model_version of versions, e.g.
#   WHERE model_version = (SELECT model_version FROM versions ORDER BY published_at DESC LIMIT 1)
GOLD_TABLES = (
    "recommendations",
    "user_recommendations",
    "refreshed_recommendations",
    "popular_fallback",
    "metrics",
    "versions",
)


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
