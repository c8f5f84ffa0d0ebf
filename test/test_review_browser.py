"""The review station in a real browser: headless Chromium (Debian's ``chromium`` and ``chromium-driver``) driven by
selenium against ``cmdr review serve`` on a free port: log in, filter, open a part, label it, see the dashboard.
Screenshots are kept in test_artifacts/review/ (or $CMDR_TEST_ARTIFACTS/review/)."""
import os
import queue
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from review_harness import PASSWORD, RUN, known_rows, make_store

pytestmark = pytest.mark.full_only  # a server process and a browser
REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = Path(os.environ.get("CMDR_TEST_ARTIFACTS", REPO / "test_artifacts")) / "review"
CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")


def _why_no_browser() -> str | None:
    if CHROMIUM is None or CHROMEDRIVER is None:
        return "chromium and chromedriver not found (Debian packages chromium, chromium-driver; `make setup` as root)"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (requirements-test.txt)"
    return None


@pytest.fixture
def server(tmp_path):
    """``cmdr review serve`` on the known decisions (port 0: the one the server reports); its base URL."""
    root = tmp_path / "evidence"
    make_store(str(tmp_path / "audit.db"), known_rows(), root).close()
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    proc = subprocess.Popen([sys.executable, "-m", "cmdr_ros.cli.main", "review", "serve", "--db",
                             str(tmp_path / "audit.db"), "--evidence", str(root), "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONPATH": path})
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout], daemon=True).start()
    log = []
    try:
        while True:
            line = lines.get(timeout=60)
            log.append(line)
            found = re.search(r"Uvicorn running on (http://\S+)", line)
            if found:
                break
            assert proc.poll() is None, "".join(log)
        yield found.group(1)
    finally:
        proc.terminate()
        proc.wait(30)


@pytest.fixture
def browser():
    why = _why_no_browser()
    if why is not None:
        pytest.skip(why)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1000",
                "--disable-gpu"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def _shot(driver, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    assert driver.save_screenshot(str(path)), path
    print(f"screenshot: {path}")


def _wait(driver, what: str, check) -> None:
    """Wait (at most 30 s) until ``check(driver)`` is true: a page the browser is still loading is no answer."""
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, 30).until(check, what)


def _loaded(driver, element) -> bool:
    """True when an <img> has been fetched and decoded (the server gave a picture, not an error)."""
    return driver.execute_script("return arguments[0].complete && arguments[0].naturalWidth > 0", element)


def test_log_in_filter_open_label_dashboard(server, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    d = browser
    d.get(server + "/decisions")
    assert "/login" in d.current_url  # no account, no page
    d.find_element(By.ID, "name").send_keys("rita")
    d.find_element(By.ID, "password").send_keys(PASSWORD)
    _shot(d, "1_login")
    d.find_element(By.ID, "login").click()
    _wait(d, "the decisions page", lambda d: d.current_url.endswith("/decisions"))
    assert d.find_element(By.ID, "who").text == "rita (reviewer)"
    assert d.find_element(By.ID, "count").text.startswith("15 decisions")
    Select(d.find_element(By.ID, "f-node")).select_by_visible_text("/cell_a")
    Select(d.find_element(By.ID, "f-decision")).select_by_visible_text("reject")
    d.find_element(By.ID, "apply").click()
    _wait(d, "the filtered list", lambda d: "decision=reject" in d.current_url)
    assert d.find_element(By.ID, "count").text == "4 decisions"
    _shot(d, "2_decisions_filtered")

    d.find_element(By.CSS_SELECTOR, f"a[href='/part/{RUN}/2']").click()
    _wait(d, "the part page", lambda d: d.current_url.endswith(f"/part/{RUN}/2"))
    assert d.find_element(By.ID, "decision").text == "reject"
    assert all(_loaded(d, d.find_element(By.ID, f"pic-{name}")) for name in ("image", "heatmap"))
    d.find_element(By.ID, "note").send_keys("burr, truly bad")
    d.find_element(By.ID, "label-defective").click()
    _wait(d, "the labelled part", lambda d: d.current_url.endswith("?saved=1"))
    assert d.find_element(By.ID, "saved").text == "Label saved."
    first = d.find_element(By.CSS_SELECTOR, "#labels tbody tr").text
    assert first.startswith("defective rita") and first.endswith("burr, truly bad")
    _shot(d, "3_part_labelled")

    d.find_element(By.LINK_TEXT, "Dashboard").click()
    _wait(d, "the dashboard", lambda d: d.current_url.endswith("/dashboard"))
    cell = d.find_element(By.ID, "cell-1")
    assert cell.find_element(By.CSS_SELECTOR, ".reject-rate").text == "40.00 %"
    assert cell.find_element(By.CSS_SELECTOR, ".false-reject-rate").text == "0.00 % (0 of 1)"
    assert all(_loaded(d, img) for img in d.find_elements(By.CSS_SELECTOR, "img.plot"))
    _shot(d, "4_dashboard")
    d.find_element(By.ID, "logout").click()
    _wait(d, "the login page", lambda d: "/login" in d.current_url)
    d.get(server + "/dashboard")
    assert "/login" in d.current_url
