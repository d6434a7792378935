"""The station page in real browsers: headless Chromium (Debian's chromium and
chromium-driver) driven by Selenium, and headless Firefox (Debian's firefox-esr) driven over
WebDriver BiDi (tests/bidi.py), each against a running daemon and the PLC simulator on
127.0.0.1. The page loads without a console error or a failed request, its live image
changes, a new decision appears in the list, and a PLC outage shows its reason.

`make test` installs what it needs when run as root with apt (`make page-test-deps`:
apt chromium chromium-driver firefox-esr, pip .[page-test]); elsewhere a browser that is
missing is skipped, saying how. Selenium is given the driver's path, so Selenium Manager
(which would download one) never runs; Firefox needs no driver.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import running, station_config, wait_for

HINT = "as root run 'make page-test-deps' (apt: chromium chromium-driver firefox-esr; pip: .[page-test])"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
try:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
except ImportError:
    webdriver = None
try:
    from bidi import FIREFOX, Firefox
except ImportError:  # websocket-client, which [page-test] brings
    FIREFOX = None

# What the page's polling sums to, with room for a slow, busy test machine.
SHOWS_WITHIN_S = 10.0

# The live image's pixels, summed in the page (same origin: the canvas may read them).
PIXELS = """
const img = document.getElementById("live");
if (img.hidden || !img.complete || !img.naturalWidth) return null;
const c = document.createElement("canvas");
c.width = img.naturalWidth; c.height = img.naturalHeight;
const g = c.getContext("2d");
g.drawImage(img, 0, 0);
const d = g.getImageData(0, 0, c.width, c.height).data;
let h = 0;
for (let i = 0; i < d.length; i += 7) h = (h * 31 + d[i]) >>> 0;
return h;
"""


class Chromium:
    """Headless Chromium through Selenium, with the interface of tests/bidi.py's Firefox."""

    def __init__(self, profile: Path) -> None:
        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                    "--no-default-browser-check", "--disable-extensions", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync", "--window-size=1280,1000",
                    f"--user-data-dir={profile}"):
            options.add_argument(arg)
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        self.driver = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))

    def get(self, url: str) -> None:
        self.driver.get(url)

    def js(self, body: str) -> Any:
        return self.driver.execute_script(body)

    @property
    def errors(self) -> list[dict[str, Any]]:
        """Console errors and failed requests (Chromium logs both as SEVERE)."""
        return [e for e in self.driver.get_log("browser") if e["level"] == "SEVERE"]

    def quit(self) -> None:
        self.driver.quit()


@pytest.fixture(params=["chromium", "firefox"])
def browser(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    if request.param == "chromium":
        if CHROMIUM is None or CHROMEDRIVER is None or webdriver is None:
            pytest.skip(f"Chromium, its driver or Selenium is not installed, the page's Chromium test is skipped: {HINT}")
        page: Any = Chromium(tmp_path / "profile")
    else:
        if FIREFOX is None:
            pytest.skip(f"Firefox or websocket-client is not installed, the page's Firefox test is skipped: {HINT}")
        page = Firefox(tmp_path / "profile")
    try:
        yield page
    finally:
        page.quit()


def js(page: Any, script: str) -> Any:
    return page.js(script)


def test_the_page_in_a_browser_shows_the_station_and_a_plc_outage(make_sim, browser: Any, tmp_path: Path) -> None:
    sim = make_sim(trigger_hz=5, device={"network.relay": True})
    archive = {"enabled": True, "path": str(tmp_path / "archive"), "pass_every": 2, "format": "jpeg"}
    (tmp_path / "archive").mkdir()
    with running(station_config(sim, metrics={"enabled": True, "port": 0}, archive=archive)) as d:
        wait_for(lambda: d.ready() and sum(d.journal.summary()["results"].values()) >= 1, 15, "ready and a decision")
        browser.get(f"http://127.0.0.1:{d.http.port}/")
        wait_for(lambda: js(browser, 'return document.getElementById("ready").textContent') == "READY",
                 SHOWS_WITHIN_S, "READY on the page", poll=0.1)
        assert js(browser, 'return document.getElementById("station").textContent') == d.config.station.name
        parts = js(browser, 'return Array.from(document.querySelectorAll("#readiness tbody tr"), r => [r.dataset.part, r.dataset.ok])')
        assert parts == [[p, "true"] for p in ("write_loop", "plc", "camera", "model")]
        signals = js(browser, 'return Array.from(document.querySelectorAll("#outputs tbody tr[data-signal]"), r => r.dataset.signal)')
        assert "heartbeat" in signals and "status" in signals

        # The live image is shown and changes (the pixels, not only the URL).
        first = wait_for(lambda: js(browser, PIXELS), SHOWS_WITHIN_S, "the live image", poll=0.1)
        wait_for(lambda: (h := js(browser, PIXELS)) is not None and h != first, SHOWS_WITHIN_S, "a newer live image", poll=0.2)

        # A decision made after the page loaded appears in the list.
        listed = set(js(browser, 'return Array.from(document.querySelectorAll("#decisions tbody tr"), r => r.dataset.decision)'))
        assert listed, "no decision listed"
        newer = wait_for(lambda: set(js(browser, 'return Array.from(document.querySelectorAll("#decisions tbody tr"), '
                                                 'r => r.dataset.decision)')) - listed, SHOWS_WITHIN_S, "a new decision listed",
                         poll=0.2)
        assert all(len(x) == 26 for x in newer)
        # Every row has a cell per column, the findings column among them (empty for a classifier).
        heads = js(browser, 'return Array.from(document.querySelectorAll("#decisions thead th"), h => h.textContent)')
        assert "findings" in heads
        cells = js(browser, 'return Array.from(document.querySelectorAll("#decisions tbody tr"), r => r.cells.length)')
        assert cells and set(cells) == {len(heads)}, (heads, cells)
        # Archived decisions show their thumbnail (loaded, not only asked for).
        wait_for(lambda: js(browser, 'return Array.from(document.querySelectorAll("#decisions tbody img"))'
                                     '.some(i => i.complete && i.naturalWidth > 0)'), SHOWS_WITHIN_S, "a thumbnail shown", poll=0.2)

        # A PLC outage: its reason shows (the page polls once a second).
        sim.network.blackhole(True)
        t0 = time.monotonic()
        wait_for(lambda: js(browser, 'const r = document.querySelector("#readiness tr[data-part=plc]"); '
                                     'return r !== null && r.dataset.ok === "false"'), SHOWS_WITHIN_S, "the plc part NOT OK", poll=0.05)
        took = time.monotonic() - t0
        alerts = js(browser, 'const a = document.getElementById("alerts"); return a.hidden ? "" : a.textContent')
        assert alerts.startswith("plc: ") and len(alerts) > len("plc: "), alerts
        print(f"the outage showed on the page after {took:.2f} s: {alerts}")
        wait_for(lambda: js(browser, 'return document.getElementById("ready").textContent') == "NOT READY",
                 SHOWS_WITHIN_S, "NOT READY on the page", poll=0.1)
        sim.network.blackhole(False)
        wait_for(lambda: js(browser, 'return document.getElementById("ready").textContent') == "READY",
                 SHOWS_WITHIN_S * 2, "READY again", poll=0.1)

        assert browser.errors == [], browser.errors
