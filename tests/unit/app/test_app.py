"""The Streamlit app (app/app.py), run by streamlit's AppTest without a browser or Spark.

On a small warehouse written with deltalake (tests/gold_tables.py):
- the first page asks for a user and shows the model version and every model's metrics;
- a known user sees the ten products of the chosen model in rank order, with
  category, score and reason, beside their latest interactions; each model its own;
- picking a sample user fills the user box;
- an unknown user gets the popular products and a message saying so;
- an empty id gets a prompt, a malformed one a message, never a list;
- a missing warehouse, a missing config and an unreachable DynamoDB are messages,
  never stack traces;
- with DynamoDB configured (the local server), the lists come from DynamoDB and
  the history still from the warehouse.
"""

from __future__ import annotations

import re
import socket
import uuid

import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

from amazon_recs.serving import dynamodb, writer
from tests.conftest import ROOT
from tests.gold_tables import NO_METADATA_ITEM, USERS, VERSION, Warehouse, write_config, write_gold_tables

APP = ROOT / "app" / "app.py"
SERVED = ("hybrid", "als", "item_knn", "content", "popular")
USER = USERS[3]


@pytest.fixture(scope="module")
def warehouse(tmp_path_factory) -> Warehouse:
    return write_gold_tables(tmp_path_factory.mktemp("gold"))


@pytest.fixture
def open_app(monkeypatch):
    """Runs the app on a config file; each test starts with an empty resource cache."""

    def run(config_path) -> AppTest:
        st.cache_resource.clear()
        monkeypatch.setenv("AMAZON_RECS_CONFIG", str(config_path))
        return AppTest.from_file(str(APP), default_timeout=60).run()

    return run


@pytest.fixture
def app(open_app, warehouse, tmp_path) -> AppTest:
    return open_app(write_config(tmp_path, warehouse))


def enter(at: AppTest, user: str, model: str | None = None) -> AppTest:
    if model is not None:
        at.radio(key="model").set_value(model)
    return at.text_input(key="user_id").input(user).run()


def plain(text: str) -> str:
    """What Markdown shows of ``text``: the app backslash-escapes the punctuation of data."""
    return re.sub(r"\\(.)", r"\1", text)


def tables(at: AppTest) -> list:
    """The page's tables as shown: the list's first, the history's second, the metrics' last."""
    return [t.value.map(lambda v: plain(v) if isinstance(v, str) else v) for t in at.table]


def recommendations(at: AppTest):
    shown = tables(at)
    assert len(shown) >= 2, f"expected the recommendations table, got {len(shown)} tables"
    return shown[0]


def messages(at: AppTest, kind: str) -> list[str]:
    return [plain(e.value) for e in at.get(kind)]


def texts(at: AppTest) -> str:
    return "\n".join(
        m for kind in ("error", "warning", "info", "caption", "markdown") for m in messages(at, kind)
    )


def no_failures(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]
    assert "Traceback" not in texts(at)


def test_the_first_page_asks_for_a_user_and_shows_the_version_and_metrics(app, warehouse):
    no_failures(app)
    assert messages(app, "info") == ["Enter a user id, or pick one of the sample users."]
    assert f"`{VERSION}`" in "\n".join(m.value for m in app.sidebar.markdown)
    assert app.radio(key="model").value == "hybrid"
    assert app.radio(key="model").options == ["Hybrid", "ALS", "Item-kNN", "Content", "Popularity"]

    metrics, segments = tables(app)  # no list yet: the metrics and the segments
    assert list(metrics.index) == ["Hybrid", "ALS", "Item-kNN", "Content", "Popularity", "random (floor)"]
    # Every mean over users with its interval; coverage is of the catalogue: none.
    assert metrics.loc["Hybrid", "NDCG@10"] == "0.210 [0.189, 0.231]"
    assert metrics.loc["random (floor)", "Coverage"] == "1.000"
    tiles = {m.label: m for m in app.metric}
    assert tiles["NDCG@10"].value == "0.210" and tiles["Coverage"].value == "0.950"  # the selected model's
    assert tiles["NDCG@10"].help == "95% interval over users: 0.189 to 0.231"
    assert list(segments.index) == list(metrics.index)
    assert list(segments.columns) == ["Light users (2)", "Heavy users (1)", "Cold items (3)"]
    assert segments.loc["Hybrid", "Cold items (3)"] == "0.105 [0.095, 0.116]"


def test_a_known_user_sees_ten_products_in_rank_order_beside_their_history(app, warehouse):
    at = enter(app, USER)
    no_failures(at)
    assert not at.warning and not at.error

    listed = recommendations(at)
    expected = warehouse.lists[(USER, "hybrid")]
    assert list(listed.index) == list(range(1, 11))
    assert list(listed["Product"]) == warehouse.titles(USER, "hybrid")
    assert list(listed["Category"]) == [i["category"] or "-" for i in expected]
    assert list(listed["Why"]) == [i["reason"] for i in expected]
    assert list(listed["Score"]) == [f"{i['score']:.3f}" for i in expected]
    assert f"Top 10 for {USER} · Hybrid" in messages(at, "subheader")

    history = tables(at)[1]
    newest = warehouse.history[USER][:10]
    assert list(history["Product"]) == [warehouse.items[r["item_id"]]["title"] for r in newest]
    assert list(history["Date"]) == [r["ts"].strftime("%Y-%m-%d") for r in newest]
    assert list(history["Split"]) == [r["split"] for r in newest]
    assert f"The latest 10 of {len(warehouse.history[USER])} interactions" in texts(at)


@pytest.mark.parametrize("model", SERVED)
def test_each_model_shows_its_own_list_and_metrics(app, warehouse, model):
    at = enter(app, USER, model)
    no_failures(at)
    assert list(recommendations(at)["Product"]) == warehouse.titles(USER, model)
    ndcg = next(r["value"] for r in warehouse.metrics if (r["model"], r["metric"]) == (model, "ndcg"))
    assert {m.label: m.value for m in at.metric}["NDCG@10"] == f"{ndcg:.3f}"


def test_the_lists_of_two_models_differ(app, warehouse):
    assert warehouse.titles(USER, "als") != warehouse.titles(USER, "popular")
    als = list(recommendations(enter(app, USER, "als"))["Product"])
    popular = list(recommendations(enter(app, USER, "popular"))["Product"])
    assert als != popular


def test_picking_a_sample_user_fills_the_box(app, warehouse):
    picker = app.selectbox(key="sample_user")
    assert picker.options and set(picker.options) <= set(USERS)
    chosen = picker.options[-1]

    at = picker.select(chosen).run()
    no_failures(at)
    assert at.text_input(key="user_id").value == chosen
    assert list(recommendations(at)["Product"]) == warehouse.titles(chosen, "hybrid")


def test_an_unknown_user_gets_popular_products_and_is_told_so(app, warehouse):
    at = enter(app, "U9999999", "als")
    no_failures(at)
    assert messages(at, "warning") == [
        f"U9999999 is not a user of model version {VERSION}, so these are the most popular products."
    ]
    listed = recommendations(at)
    assert list(listed["Product"]) == [p["title"] for p in warehouse.popular]
    assert all(why.startswith("popular in ") for why in listed["Why"])
    assert "No history" in texts(at)


def test_a_product_without_a_title_is_shown_by_its_id(app, warehouse):
    user = next(u for u in USERS if NO_METADATA_ITEM in [i["item_id"] for i in warehouse.lists[(u, "als")]])
    listed = recommendations(enter(app, user, "als"))
    row = listed[listed["Product"] == NO_METADATA_ITEM]
    assert len(row) == 1 and row["Category"].item() == "-"


def test_titles_full_of_markdown_are_escaped_so_they_show_as_they_are(app, warehouse):
    from tests.gold_tables import MARKDOWN_ITEM

    title = warehouse.items[f"B{MARKDOWN_ITEM:09d}"]["title"]
    at = enter(app, "U9999999")  # the popular list holds it
    (raw,) = [v for v in at.table[0].value["Product"] if plain(v) == title]
    assert raw == r"Maneline Argan Oil Shampoo \| Sulfate\-Free\, 16 fl\. oz \(2\-Pack\) \*Salon Formula\*"


@pytest.mark.parametrize("typed", ["", "   "])
def test_an_empty_id_gets_a_prompt_and_no_list(app, typed):
    at = enter(app, typed)
    no_failures(at)
    assert messages(at, "info") == ["Enter a user id, or pick one of the sample users."]
    assert len(at.table) == 2  # the metrics and the segments only


@pytest.mark.parametrize("typed", ["bad id!", "a#b", "U" * 129, "ü1"])
def test_a_malformed_id_gets_a_message_and_no_list(app, typed):
    at = enter(app, typed)
    no_failures(at)
    (error,) = messages(at, "error")
    assert "is not a valid user id: use 1 to 128 letters, digits or . _ - : @" in error
    assert len(error) < 200, "the input is echoed back cut short"
    assert len(at.table) == 2  # the metrics and the segments


def test_a_missing_warehouse_says_to_run_the_pipeline(open_app, tmp_path):
    at = open_app(write_config(tmp_path))  # paths under tmp_path, where nothing was written
    no_failures(at)
    errors = messages(at, "error")
    assert errors and all("run the pipeline first (make run)" in e for e in errors)
    assert str(tmp_path / "warehouse" / "gold" / "user_recommendations") in errors[0]


def test_a_missing_config_file_is_one_message(open_app, tmp_path):
    at = open_app(tmp_path / "nope.yaml")
    no_failures(at)
    (error,) = messages(at, "error")
    assert error.startswith("Cannot start:") and "nope.yaml" in error


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again when this returns: connections are refused


def test_an_unreachable_dynamodb_is_a_message_not_a_stack_trace(open_app, warehouse, tmp_path):
    endpoint = f"http://127.0.0.1:{closed_port()}"
    config = write_config(
        tmp_path, warehouse, **{"export.dynamodb.enabled": True, "aws.dynamodb_endpoint": endpoint}
    )
    at = enter(open_app(config), USER)
    no_failures(at)
    (error,) = messages(at, "error")
    assert error.startswith("cannot reach DynamoDB table") and endpoint in error
    assert f"Serving from DynamoDB table amazon-recs at {endpoint}." in texts(at)
    assert len(at.table) == 2  # no list, but the metrics and segments still come from the warehouse


def test_with_dynamodb_configured_the_lists_come_from_dynamodb(open_app, warehouse, tmp_path, local_aws):
    table = f"app-test-{uuid.uuid4().hex[:8]}"
    settings = dynamodb.StoreSettings(table=table, region="us-east-1", endpoint_url=local_aws["dynamodb"])
    client = dynamodb.make_client(settings)
    dynamodb.ensure_table(client, table)
    published = list(reversed(warehouse.lists[(USER, "als")]))  # not the gold order: proves the source
    published = [{**item, "rank": rank} for rank, item in enumerate(published, start=1)]
    writer.write_items(
        client,
        settings,
        [
            writer.list_item(
                dynamodb.rec_key("als", USER), "ddb-v1", published, "2026-01-02T03:04:05+00:00", 2**31
            ),
            writer.list_item(
                dynamodb.FALLBACK_PK, "ddb-v1", warehouse.popular, "2026-01-02T03:04:05+00:00", 2**31
            ),
        ],
    )
    dynamodb.switch_version(client, table, "ddb-v1", "2026-01-02T03:04:05+00:00", expected=None)
    config = write_config(
        tmp_path,
        warehouse,
        **{
            "export.dynamodb.enabled": True,
            "export.dynamodb.table": table,
            "aws.dynamodb_endpoint": local_aws["dynamodb"],
        },
    )

    at = enter(open_app(config), USER, "als")
    no_failures(at)
    listed = recommendations(at)
    assert list(listed["Product"]) == [i["title"] or i["item_id"] for i in published]
    assert list(listed["Category"]) == [i["category"] or "-" for i in published]
    assert "Model version `ddb-v1`" in "\n".join(m.value for m in at.sidebar.markdown)
    assert "published 2026-01-02 03:04 UTC" in texts(at)
    assert f"DynamoDB table {table}" in texts(at)
    history = tables(at)[1]
    assert len(history) == 10  # from the warehouse, beside DynamoDB's list
    assert f"These metrics are of version {VERSION}; version ddb-v1 is being served." in texts(at)

    at = enter(at, USER, "content")  # no content list published for the user: the fallback
    assert messages(at, "warning") == [
        f"{USER} is not a user of model version ddb-v1, so these are the most popular products."
    ]
    assert list(recommendations(at)["Product"]) == [p["title"] for p in warehouse.popular]


def test_reload_data_shows_a_new_run(open_app, warehouse, tmp_path):
    import shutil

    from deltalake import DeltaTable, write_deltalake

    root = tmp_path / "copy"
    shutil.copytree(warehouse.root, root)
    at = open_app(
        write_config(
            tmp_path, **{"paths.warehouse": str(root / "warehouse"), "paths.models": str(root / "models")}
        )
    )
    assert f"`{VERSION}`" in "\n".join(m.value for m in at.sidebar.markdown)

    path = str(root / "warehouse" / "gold" / "user_recommendations")
    table = DeltaTable(path).to_pyarrow_table()
    rows = [{**r, "model_version": "next"} for r in table.to_pylist()]
    write_deltalake(
        path, type(table).from_pylist(rows, schema=table.schema), mode="overwrite", partition_by=["model"]
    )
    assert f"`{VERSION}`" in "\n".join(m.value for m in at.run().sidebar.markdown), "a run keeps its snapshot"

    at = at.sidebar.button[0].click().run()
    no_failures(at)
    assert "`next`" in "\n".join(m.value for m in at.sidebar.markdown)
