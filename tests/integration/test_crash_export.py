"""A publish killed half-way, and killed between the lists and the pointer switch, is
recovered by the next run, and readers never see a mixed or missing list.

Four ``bin/spark-submit jobs/pipeline.py`` runs on the test sample, publishing to a
table of the local DynamoDB server, while a reader polls a few users' lists (every
served model) through ``ServingStore``, and the same lists from the gold tables through
``GoldTableStore`` (a new snapshot each round), the whole time:

A. an uninterrupted run publishes version v1;
B. a run of new settings (version v2) is killed (``kill -9`` of its process group)
   in its export, right after a first batch of v2's lists reached DynamoDB
   (failpoint ``dynamodb.batch_written``, in a Python worker);
C. the same run again, killed after every v2 list and the fallback are written but
   before the pointer moves (failpoint ``export.before_switch``, in the driver);
D. the same run again, to the end.

After B and C the pointer is still v1 and every reader got v1's lists whole. After D
the pointer is v2, every v2 item in DynamoDB equals its row of
``gold/user_recommendations`` (what an uninterrupted export writes), and the replaced
v1's items carry their TTL. The gold tables hold v1's partitions as A wrote them and
v2's beside them; gold/versions names v1, then v2 once D completes.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
import uuid

import pytest
from deltalake import DeltaTable

from amazon_recs.serving import dynamodb
from amazon_recs.serving.gold_tables import GoldTableStore
from amazon_recs.serving.validation import SERVED_MODELS
from tests.conftest import LOCAL_AWS_ENV
from tests.integration.test_run_lock import submit as launch

pytestmark = pytest.mark.integration

REGION = LOCAL_AWS_ENV["AWS_DEFAULT_REGION"]


def submit(home, root, failpoint: str | None, *settings) -> subprocess.Popen:
    failing = {"AMAZON_RECS_FAILPOINT": failpoint} if failpoint else {}
    return launch(home, root, "tune.enabled=false", *settings, env_extra={**LOCAL_AWS_ENV, **failing})


def finish(run: subprocess.Popen) -> str:
    log = run.communicate(timeout=900)[0]
    assert run.returncode == 0, log[-4000:]
    return log


def kill_at(run: subprocess.Popen, failpoint: str) -> str:
    """Read the run's output until it reaches ``failpoint``, then kill -9 all of it."""
    output = []
    for line in run.stdout:
        output.append(line)
        if f"failpoint {failpoint} reached" in line:
            os.killpg(run.pid, signal.SIGKILL)
            break
    run.wait(timeout=120)
    text = "".join(output)
    assert f"failpoint {failpoint} reached" in text, text[-4000:]
    return text


def serving_lists(root, version: str) -> dict[tuple[str, str], list[str]]:
    """(user, model) -> item ids of ``version``'s served lists in gold/user_recommendations,
    at the latest commit holding them."""
    table = DeltaTable(str(root / "warehouse" / "gold" / "user_recommendations"))
    for commit in range(table.version(), -1, -1):
        table.load_as_version(commit)
        rows = [r for r in table.to_pyarrow_table().to_pylist() if r["model_version"] == version]
        if rows:
            return {
                (r["user_id"], r["model"]): [i["item_id"] for i in r["items"]]
                for r in rows
                if r["model"] in SERVED_MODELS
            }
    raise AssertionError(f"no commit of gold/user_recommendations holds {version}")


class Reader(threading.Thread):
    """Polls the served lists of ``users`` until stopped; records what it saw."""

    def __init__(self, store: dynamodb.ServingStore, users: list[str]):
        super().__init__(daemon=True)
        self.store, self.users = store, users
        self.seen: list[tuple[str, str, str, list[str]]] = []
        self.errors: list[str] = []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            self.run_once()
            time.sleep(0.2)

    def run_once(self) -> None:
        for user in self.users:
            for model in SERVED_MODELS:
                try:
                    recs = self.store.get_recommendations(user, model)
                    self.seen.append((user, model, recs.model_version, [i["item_id"] for i in recs.items]))
                except Exception as exc:  # every failure counts: none is allowed
                    self.errors.append(f"{user} {model}: {exc!r}")


class GoldReader(Reader):
    """Polls the same lists from the gold tables without Spark, a new ``GoldTableStore``
    (one snapshot) per round, as the app and Athena read them while exports run."""

    def __init__(self, warehouse, users: list[str]):
        super().__init__(None, users)
        self.warehouse = str(warehouse)

    def run(self) -> None:
        while not self.stop.is_set():
            self.store = GoldTableStore(self.warehouse)
            super().run_once()
            time.sleep(0.2)


@pytest.fixture(scope="module")
def crashes(tmp_path_factory, local_aws):
    home = tmp_path_factory.mktemp("home")
    root = tmp_path_factory.mktemp("crash")
    table = f"crash-{uuid.uuid4().hex[:10]}"
    publish = [
        "export.dynamodb.enabled=true",
        f"export.dynamodb.table={table}",
        f"aws.dynamodb_endpoint={local_aws['dynamodb']}",
        f"aws.region={REGION}",
    ]
    v2 = [*publish, "popular.half_life_days=30"]  # other settings: another version
    settings = dynamodb.StoreSettings(table=table, region=REGION, endpoint_url=local_aws["dynamodb"])
    client = dynamodb.make_client(settings)

    finish(submit(home, root, None, *publish))
    v1 = dynamodb.current_version(client, table)["model_version"]
    v1_lists = serving_lists(root, v1)
    users = sorted({u for u, _ in v1_lists})[:3]
    reader = Reader(dynamodb.ServingStore(client, table), users)
    gold_reader = GoldReader(root / "warehouse", users)
    reader.start()
    gold_reader.start()
    try:
        b = kill_at(submit(home, root, "dynamodb.batch_written", *v2), "dynamodb.batch_written")
        after_b = dynamodb.current_version(client, table)["model_version"]
        c = kill_at(submit(home, root, "export.before_switch", *v2), "export.before_switch")
        after_c = dynamodb.current_version(client, table)["model_version"]
        d = finish(submit(home, root, None, *v2))
        time.sleep(1.0)  # the reader sees the switch
    finally:
        for r in (reader, gold_reader):
            r.stop.set()
            r.join(timeout=30)
    v2_version = dynamodb.current_version(client, table)["model_version"]
    return {
        "client": client,
        "table": table,
        "root": root,
        "v1": v1,
        "v2": v2_version,
        "v1_lists": v1_lists,
        "after_b": after_b,
        "after_c": after_c,
        "logs": {"B": b, "C": c, "D": d},
        "reader": reader,
        "gold_reader": gold_reader,
    }


def items_of(client, table: str, version: str) -> dict[tuple[str, str], dict]:
    found, kwargs = {}, {"TableName": table}
    while True:
        page = client.scan(**kwargs)
        for item in page["Items"]:
            pk, sk = item["pk"]["S"], item["sk"]["S"]
            if sk == version and pk.startswith("rec#"):
                _, model, user = pk.split("#", 2)
                found[(user, model)] = item
        if "LastEvaluatedKey" not in page:
            return found
        kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]


def test_a_killed_publish_leaves_the_pointer_on_the_old_version(crashes):
    assert crashes["v2"] != crashes["v1"]
    assert crashes["after_b"] == crashes["v1"] and crashes["after_c"] == crashes["v1"]
    assert "took over the lock" in crashes["logs"]["C"] and "took over the lock" in crashes["logs"]["D"]


@pytest.mark.parametrize("which", ["reader", "gold_reader"])
def test_readers_saw_whole_lists_of_one_version_or_the_other_and_no_error(crashes, which):
    """DynamoDB's reader and the gold tables' reader alike: the killed exports wrote v2's
    partitions of the gold tables beside v1's, but v2 is served only once the export
    that completes records it in gold/versions."""
    reader = crashes[which]
    assert reader.errors == []
    v2_lists = serving_lists(crashes["root"], crashes["v2"])
    expected = {crashes["v1"]: crashes["v1_lists"], crashes["v2"]: v2_lists}
    versions = [version for _, _, version, _ in reader.seen]
    assert set(versions) == {crashes["v1"], crashes["v2"]}, "the reader saw both versions"
    for user, model, version, items in reader.seen:
        assert items == expected[version][(user, model)], (user, model, version)
    # Once v2 was served, never v1 again (each reads the pointer on every round).
    first_v2 = versions.index(crashes["v2"])
    assert crashes["v1"] not in versions[first_v2:]


def test_after_the_recovery_dynamodb_holds_exactly_the_serving_tables_lists(crashes):
    client, table = crashes["client"], crashes["table"]
    v2_lists = serving_lists(crashes["root"], crashes["v2"])
    stored = items_of(client, table, crashes["v2"])
    assert set(stored) == set(v2_lists)
    for key, item in stored.items():
        assert [i["M"]["item_id"]["S"] for i in item["items"]["L"]] == v2_lists[key], key
        assert "expires_at" not in item  # the live version never expires


def test_the_replaced_version_gets_its_ttl_despite_the_killed_overwrites(crashes):
    old = items_of(crashes["client"], crashes["table"], crashes["v1"])
    assert set(old) == set(crashes["v1_lists"])
    assert all("expires_at" in item for item in old.values())
    assert "keep no TTL" not in crashes["logs"]["D"]


def test_the_gold_tables_keep_the_replaced_version_whole(crashes):
    """v1's partitions were never rewritten by v2's exports, killed or not, and gold/versions
    records one publish of each (the killed exports recorded nothing)."""
    root = crashes["root"]
    table = DeltaTable(str(root / "warehouse" / "gold" / "user_recommendations"))
    rows = table.to_pyarrow_table().to_pylist()
    assert {r["model_version"] for r in rows} == {crashes["v1"], crashes["v2"]}
    v1_now = {
        (r["user_id"], r["model"]): [i["item_id"] for i in r["items"]]
        for r in rows
        if r["model_version"] == crashes["v1"] and r["model"] in SERVED_MODELS
    }
    assert v1_now == crashes["v1_lists"]
    assert table.metadata().partition_columns == ["model_version", "model"]
    published = DeltaTable(str(root / "warehouse" / "gold" / "versions")).to_pyarrow_table().to_pylist()
    assert [r["model_version"] for r in sorted(published, key=lambda r: r["published_at"])] == [
        crashes["v1"],
        crashes["v2"],
    ]
    store = GoldTableStore(str(root / "warehouse"))
    assert store.current_version()["model_version"] == crashes["v2"]
    assert {r["model_version"] for r in store.metrics()} == {crashes["v2"]}
