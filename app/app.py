"""The recommendations app: pick a model and a user, see their top 10 beside their history.

    streamlit run app/app.py --server.address 127.0.0.1 -- --config conf/local.yaml [--set key=value]

Lists come through the library's reader (``amazon_recs.serving``): from DynamoDB when
``export.dynamodb.enabled``, else from the gold Delta tables under ``paths.warehouse``.
The user's history, the metrics and the sample users always come from the warehouse's
tables (local or s3://); when they cannot be read the app says so and still serves lists.
Without ``--config`` the app reads ``AMAZON_RECS_CONFIG``, else ``conf/local.yaml``.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TypeVar

import pandas as pd
import streamlit as st

from amazon_recs.config import Config, load_config
from amazon_recs.errors import RecsError
from amazon_recs.serving import gold_tables, interface, validation
from amazon_recs.serving.stores import get_recommendations, store_from_config

log = logging.getLogger("amazon_recs.app")
T = TypeVar("T")

DEFAULT_CONFIG = "conf/local.yaml"
MODEL_LABELS = {
    "hybrid": "Hybrid",
    "als": "ALS",
    "item_knn": "Item-kNN",
    "content": "Content",
    "popular": "Popularity",
}
MODEL_HELP = {
    "hybrid": "ALS, item-kNN, content and popularity blended with weights tuned on validation",
    "als": "implicit-feedback matrix factorisation (MLlib ALS)",
    "item_knn": "products often chosen by the same people as the ones the user rated",
    "content": "TF-IDF similarity to the products the user rated",
    "popular": "most popular (recent interactions weigh more when popularity decays), the same for everyone",
}
METRIC_LABELS = {
    "ndcg": "NDCG@10",
    "precision": "Precision@10",
    "recall": "Recall@10",
    "map": "MAP@10",
    "hit_rate": "Hit rate@10",
    "mrr": "MRR@10",
    "coverage": "Coverage",
    "novelty": "Novelty",
}
HEADLINE_METRICS = ("ndcg", "precision", "recall", "hit_rate", "coverage")


def app_args(argv: list[str]) -> argparse.Namespace:
    """``--config`` and ``--set`` after streamlit's ``--``; anything else is streamlit's."""
    parser = argparse.ArgumentParser(prog="app.py", allow_abbrev=False, add_help=False)
    parser.add_argument("--config", default=os.environ.get("AMAZON_RECS_CONFIG") or DEFAULT_CONFIG)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    return parser.parse_known_args(argv)[0]


@dataclass(frozen=True)
class Stores:
    config: Config
    recs: interface.RecommendationStore  # the lists: DynamoDB or the gold tables
    tables: gold_tables.GoldTableStore  # history, metrics, sample users


@st.cache_resource(show_spinner=False)
def open_stores(config_path: str, overrides: tuple[str, ...]) -> Stores:
    """Shared by every session; tables load on first use and stay until "Reload data"."""
    config = load_config(config_path, overrides)
    recs = store_from_config(config)
    tables = (
        recs
        if isinstance(recs, gold_tables.GoldTableStore)
        else gold_tables.GoldTableStore.from_config(config)
    )
    return Stores(config, recs, tables)


# --- turning store answers into tables ------------------------------------------

_PUNCTUATION = re.compile(r"([!-/:-@\[-`{-~])")


def md(text: object) -> str:
    """``text`` to show as it is in Markdown (st.table cells, messages): every ASCII
    punctuation mark backslash-escaped, so a product title from the data cannot become
    a link, emphasis, math or an emoji."""
    return _PUNCTUATION.sub(r"\\\1", str(text))


def recommendations_frame(items: list[dict]) -> pd.DataFrame:
    rows = [
        {
            "#": item["rank"],
            "Product": md(item.get("title") or item["item_id"]),
            "Category": md(item.get("category") or "-"),
            "Score": f"{float(item['score']):.3f}",
            "Why": md(item.get("reason") or ""),
        }
        for item in items
    ]
    frame = pd.DataFrame(rows, columns=["#", "Product", "Category", "Score", "Why"]).set_index("#")
    frame.index.name = None  # the rank shows as the row label, without a header row of its own
    return frame


def history_frame(rows: list[dict]) -> pd.DataFrame:
    out = [
        {
            "Date": row["ts"].strftime("%Y-%m-%d") if row.get("ts") else "",
            "Product": md(row.get("title") or row["item_id"]),
            "Category": md(row.get("category") or "-"),
            "Rating": "★" * round(row["rating"]) if row.get("rating") else "",
            "Split": md(row.get("split") or ""),
        }
        for row in rows
    ]
    return pd.DataFrame(out, columns=["Date", "Product", "Category", "Rating", "Split"])


def _cell(row: dict | None) -> str:
    """A metric's value, with its bootstrap interval when the row has one."""
    if row is None:
        return "-"
    if row.get("ci_low") is None:
        return f"{row['value']:.3f}"
    return f"{row['value']:.3f} [{row['ci_low']:.3f}, {row['ci_high']:.3f}]"


def _models(rows: list[dict]) -> list[str]:
    present = {r["model"] for r in rows}
    return [m for m in (*MODEL_LABELS, "random") if m in present]


def _label(model: str) -> str:
    return MODEL_LABELS.get(model, f"{model} (floor)")


def metrics_frame(rows: list[dict]) -> pd.DataFrame:
    """Models down, metrics across (with their 95% intervals); served models first, the
    random floor last."""
    by = {(r["model"], r["metric"]): r for r in rows}
    metrics = [m for m in METRIC_LABELS if any(metric == m for _, metric in by)]
    table = {
        _label(model): {METRIC_LABELS[metric]: _cell(by.get((model, metric))) for metric in metrics}
        for model in _models(rows)
    }
    return pd.DataFrame.from_dict(table, orient="index")


# Where each model helps: NDCG of the user segments and of the cold-item slice.
SEGMENT_LABELS = {
    "light_ndcg": "Light users",
    "heavy_ndcg": "Heavy users",
    "cold_ndcg": "Cold items",
}


def segments_frame(rows: list[dict]) -> pd.DataFrame | None:
    """Models down, NDCG@10 per segment across, with intervals; None before segments."""
    by = {(r["model"], r["metric"]): r for r in rows}
    present = [m for m in SEGMENT_LABELS if any(metric == m for _, metric in by)]
    if not present:
        return None
    table = {}
    for model in _models(rows):
        table[_label(model)] = {}
        for metric in present:
            row = by.get((model, metric))
            label = f"{SEGMENT_LABELS[metric]} ({row['users']:,})" if row else SEGMENT_LABELS[metric]
            table[_label(model)][label] = _cell(row)
    return pd.DataFrame.from_dict(table, orient="index")


def readable_time(iso: str | None) -> str:
    """``2026-11-27T21:18:54+00:00`` as ``2026-11-27 21:18 UTC``; anything else as it is."""
    if not iso:
        return "at an unknown time"
    try:
        return datetime.fromisoformat(iso).astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")
    except ValueError:
        return iso


# --- the page -------------------------------------------------------------------


def guarded(action: Callable[[], T]) -> T | None:
    """Run a part of the page; its failures become a message, never a stack trace."""
    try:
        return action()
    except RecsError as exc:
        st.error(md(exc))
    except Exception as exc:  # the app's last line: the log keeps the traceback
        log.exception("unexpected failure")
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        st.error(md(f"Something went wrong ({type(exc).__name__}: {first}). The app's log has the details."))
    return None


def sidebar(stores: Stores) -> str:
    st.sidebar.header("amazon-recs")
    model = st.sidebar.radio(
        "Model",
        list(MODEL_LABELS),
        format_func=MODEL_LABELS.get,
        key="model",
        captions=[MODEL_HELP[m] for m in MODEL_LABELS],
    )
    st.sidebar.caption(md(f"Serving from {stores.recs.source}."))
    if st.sidebar.button("Reload data", help="read the tables again, e.g. after a new pipeline run"):
        open_stores.clear()
        st.rerun()
    return model


def choose_user(stores: Stores) -> str:
    """The user id typed, or picked from the sample (which fills the box)."""

    def copy_pick() -> None:
        if st.session_state.get("sample_user"):
            st.session_state["user_id"] = st.session_state["sample_user"]

    samples: list[str] = []
    note = None
    try:
        samples = stores.tables.sample_users(stores.config.require("app.sample_users"))
    except RecsError as exc:
        note = f"No sample users: {exc}"
    typed, picked = st.columns([3, 2])
    user = typed.text_input(
        "User id", key="user_id", placeholder="enter a user id, e.g. " + (samples or ["U1"])[0]
    )
    picked.selectbox(
        "...or pick a sample user",
        samples,
        index=None,
        key="sample_user",
        placeholder="type to search",
        on_change=copy_pick,
        disabled=not samples,
    )
    if note:
        st.caption(md(note))
    return user.strip()


def show_version(stores: Stores) -> str | None:
    pointer = stores.recs.current_version()
    if pointer is None:
        st.warning("Nothing is published yet: run the pipeline (make run).")
        return None
    code = str(pointer["model_version"]).replace("`", "")  # a code span shows the rest as it is
    st.sidebar.markdown(f"Model version `{code}`")
    st.sidebar.caption(md(f"published {readable_time(pointer.get('generated_at'))}"))
    return pointer["model_version"]


def show_recommendations(stores: Stores, user: str, model: str) -> None:
    if not user:
        st.info("Enter a user id, or pick one of the sample users.")
        return
    user = validation.validate_id(user)  # a RequestError is shown as it is
    recs = get_recommendations(user, model, store=stores.recs)
    left, right = st.columns([4, 3], gap="medium")
    with left.container(key="recommendations"):
        st.subheader(md(f"Top {len(recs.items)} for {user} · {MODEL_LABELS[model]}"))
        if recs.fallback:
            st.warning(
                md(
                    f"{user} is not a user of model version {recs.model_version}, "
                    "so these are the most popular products."
                )
            )
        st.table(recommendations_frame(recs.items))
    with right.container(key="history"):
        st.subheader("Recent history")
        guarded(lambda: show_history(stores, user))


def show_history(stores: Stores, user: str) -> None:
    try:
        rows = stores.tables.history(user)
    except RecsError as exc:
        st.caption(md(f"History unavailable: {exc}"))
        return
    if not rows:
        st.caption("No history: this user has no interactions in silver/interactions.")
        return
    shown = stores.config.require("app.history_rows")
    st.table(history_frame(rows[:shown]))
    st.caption(
        f"The latest {min(shown, len(rows))} of {len(rows)} interactions; "
        "test rows were held out of training to evaluate the models."
    )


def show_metrics(stores: Stores, model: str, version: str | None) -> None:
    try:
        rows = stores.tables.metrics()
    except RecsError as exc:
        st.caption(md(f"Metrics unavailable: {exc}"))
        return
    if not rows:
        st.caption("No metrics yet: run the evaluate stage.")
        return
    evaluated = rows[0]["model_version"]
    st.subheader(md(f"Evaluation of model version {evaluated}"))
    if version and evaluated != version:
        st.caption(md(f"These metrics are of version {evaluated}; version {version} is being served."))
    mine = {r["metric"]: r for r in rows if r["model"] == model}
    for column, metric in zip(st.columns(len(HEADLINE_METRICS)), HEADLINE_METRICS, strict=True):
        row = mine.get(metric)
        interval = None
        if row and row.get("ci_low") is not None:
            interval = f"95% interval over users: {row['ci_low']:.3f} to {row['ci_high']:.3f}"
        column.metric(METRIC_LABELS[metric], f"{row['value']:.3f}" if row else "-", help=interval)
    st.caption(
        f"{MODEL_LABELS[model]} on each user's held-out interactions ({rows[0]['users']:,} users), "
        "over the whole catalogue with training items removed; in brackets, the 95% bootstrap "
        "interval over users. All models:"
    )
    st.table(metrics_frame(rows))
    segments = segments_frame(rows)
    if segments is not None:
        st.caption(
            "NDCG@10 where each model helps: light and heavy users (by training interactions; "
            "how many in brackets) and the held-out interactions with cold items:"
        )
        st.table(segments)


def main() -> None:
    st.set_page_config(page_title="amazon-recs", page_icon="🛒", layout="wide")
    args = app_args(sys.argv[1:])
    try:
        stores = open_stores(args.config, tuple(args.overrides))
    except RecsError as exc:
        st.error(md(f"Cannot start: {exc}"))
        st.stop()
    model = sidebar(stores)
    st.title("Product recommendations")
    user = choose_user(stores)
    version = guarded(lambda: show_version(stores))
    if version:
        guarded(lambda: show_recommendations(stores, user, model))
    st.divider()
    guarded(lambda: show_metrics(stores, model, version))


if __name__ == "__main__":
    main()
