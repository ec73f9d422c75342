"""The app in a real browser: `streamlit run` on a free 127.0.0.1 port, driven by
headless Chromium (Debian's `chromium` and `chromedriver`, through Selenium).

On a small warehouse written without Spark (tests/gold_tables.py) the test
selects a model, enters a user, waits for the ten product titles of that user's
list, checks them and the history beside them, then an unknown user's message,
and saves a screenshot under the test's tmp dir (and to docs/app.png, the
README's, with UPDATE_SCREENSHOT=1). Every request the page made must have gone
to 127.0.0.1: Chromium is also told to resolve no other host.

Skipped, saying why, only when chromium or chromedriver is not installed
(`make` installs them through bootstrap/local/system-deps.sh).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from urllib.parse import urlsplit

import pytest
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException, TimeoutException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import WebDriverWait

from tests.conftest import ROOT, missing
from tests.gold_tables import USERS, Warehouse, write_config, write_gold_tables

pytestmark = pytest.mark.e2e

APP = ROOT / "app" / "app.py"
SCREENSHOT = ROOT / "docs" / "app.png"
WAIT_S = 90  # generous: the test machine runs Spark jobs beside this one
WINDOW = (1440, 1720)
USER = USERS[4]
MODEL_LABEL, MODEL = "ALS", "als"
CHROMIUM_FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--disable-extensions",
    "--disable-domain-reliability",
    "--disable-client-side-phishing-detection",
    "--disable-features=OptimizationHints,Translate,MediaRouter,AutofillServerCommunication",
    "--no-pings",
    "--no-proxy-server",
    # Belt and braces: no name but 127.0.0.1 resolves, so nothing can leave the machine.
    "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
    f"--window-size={WINDOW[0]},{WINDOW[1]}",
)


def installed(name: str) -> str:
    path = shutil.which(name) or shutil.which(name, path="/usr/bin:/usr/lib/chromium")
    if path is None:
        missing(
            f"{name} is not installed: apt-get install chromium chromium-driver "
            "(bootstrap/local/system-deps.sh does it for `make`)"
        )
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def healthy(url: str) -> bool:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never through a proxy
    try:
        with opener.open(f"{url}/_stcore/health", timeout=2) as response:
            return response.read().strip() == b"ok"
    except OSError:
        return False


@pytest.fixture(scope="module")
def warehouse(tmp_path_factory) -> Warehouse:
    return write_gold_tables(tmp_path_factory.mktemp("gold"))


@pytest.fixture(scope="module")
def app_url(warehouse, tmp_path_factory):
    """`streamlit run app/app.py` on a free loopback port, as `make app` starts it."""
    folder = tmp_path_factory.mktemp("app")
    config = write_config(folder, warehouse)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [
        sys.executable, "-m", "streamlit", "run", str(APP),
        "--server.address", "127.0.0.1",
        "--server.port", str(port),
        "--server.headless", "true",
        "--server.fileWatcherType", "none",
        "--browser.serverAddress", "127.0.0.1",
        "--browser.gatherUsageStats", "false",
        "--client.toolbarMode", "minimal",
        "--", "--config", str(config),
    ]  # fmt: skip
    log_path = folder / "streamlit.log"
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + WAIT_S
        while not healthy(url):
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"the app did not come up on {url}:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.3)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=15)


@pytest.fixture
def browser(tmp_path, monkeypatch):
    chromium, chromedriver = installed("chromium"), installed("chromedriver")
    # Selenium Manager is never needed (the driver's path is given); were it ever
    # run, it must neither download nor report.
    monkeypatch.setenv("SE_OFFLINE", "true")
    monkeypatch.setenv("SE_AVOID_STATS", "true")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL"})
    service = Service(executable_path=chromedriver, log_output=str(tmp_path / "chromedriver.log"))
    driver = webdriver.Chrome(service=service, options=options)
    try:
        yield driver
    finally:
        driver.quit()


def visible_rows(driver, block: str) -> list[list[str]]:
    """The cells of the table in the container keyed ``block``, row label first."""
    rows = driver.find_elements(By.CSS_SELECTOR, f".st-key-{block} table tbody tr")
    return [[cell.text for cell in row.find_elements(By.CSS_SELECTOR, "th, td")] for row in rows]


def hosts_requested(driver) -> set[str]:
    hosts = set()
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            url = urlsplit(message["params"]["request"]["url"])
            if url.scheme in ("http", "https", "ws", "wss"):
                hosts.add(url.hostname)
        elif message["method"] == "Network.webSocketCreated":
            hosts.add(urlsplit(message["params"]["url"]).hostname)
    return hosts


def test_select_a_model_enter_a_user_and_see_ten_titles(app_url, browser, warehouse, tmp_path):
    wait = WebDriverWait(browser, WAIT_S)
    browser.get(app_url)

    option = f'//div[@data-testid="stRadio"]//label[.//p[normalize-space()="{MODEL_LABEL}"]]'
    wait.until(lambda d: d.find_elements(By.XPATH, option))[0].click()
    wait.until(lambda d: d.find_element(By.XPATH, option + "//input").is_selected())

    box = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, 'input[aria-label="User id"]'))
    box.send_keys(USER, Keys.ENTER)
    heading = f"Top 10 for {USER} · {MODEL_LABEL}"
    wait.until(lambda d: heading in d.find_element(By.CSS_SELECTOR, ".st-key-recommendations").text)
    wait.until(lambda d: len(visible_rows(d, "recommendations")) == 10)

    rows = visible_rows(browser, "recommendations")
    assert [row[0] for row in rows] == [str(rank) for rank in range(1, 11)]
    assert [row[1] for row in rows] == warehouse.titles(USER, MODEL)
    assert [row[4] for row in rows] == [i["reason"] for i in warehouse.lists[(USER, MODEL)]]
    history = visible_rows(browser, "history")
    assert [row[1] for row in history] == [
        warehouse.items[r["item_id"]]["title"] for r in warehouse.history[USER][:10]
    ]
    assert "Model version" in browser.find_element(By.CSS_SELECTOR, '[data-testid="stSidebar"]').text

    from tests.gold_tables import MARKDOWN_ITEM  # shown as written, not as Markdown

    assert warehouse.items[f"B{MARKDOWN_ITEM:09d}"]["title"] in [row[1] for row in history]

    browser.execute_script("document.activeElement.blur()")  # no focus ring in the picture
    shot = tmp_path / "app.png"
    assert browser.save_screenshot(str(shot))
    assert shot.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    if os.environ.get("UPDATE_SCREENSHOT") == "1":
        SCREENSHOT.parent.mkdir(exist_ok=True)
        shutil.copyfile(shot, SCREENSHOT)

    box.send_keys(Keys.CONTROL, "a")
    box.send_keys("U9999999", Keys.ENTER)
    told = "U9999999 is not a user of model version"
    popular = [p["title"] for p in warehouse.popular]

    def shows_the_popular_list(d) -> bool:
        # Streamlit draws the message before the table replaces the last list.
        try:
            text = d.find_element(By.CSS_SELECTOR, ".st-key-recommendations").text
            return told in text and [row[1] for row in visible_rows(d, "recommendations")] == popular
        except StaleElementReferenceException:  # redrawn while being read
            return False

    try:
        wait.until(shows_the_popular_list)
    except TimeoutException:
        assert told in browser.find_element(By.CSS_SELECTOR, ".st-key-recommendations").text
        assert [row[1] for row in visible_rows(browser, "recommendations")] == popular
        raise

    assert hosts_requested(browser) == {"127.0.0.1"}
