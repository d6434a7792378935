"""`plcbridge bench --page`: the station page open in a real browser for the whole run, as an
engineer at the line would leave it, so that its cost on the write loop is measured and not
guessed. Headless Chromium from the distribution (`chromium`, `chromium-driver`) driven by
Selenium (the `page-test` extra); never a downloaded driver."""

from __future__ import annotations

import shutil
from typing import Any


class BrowserMissing(RuntimeError):
    """No Chromium, chromedriver or Selenium here: what to install."""


HINT = ("the station page needs Chromium and Selenium: as root `apt-get install chromium chromium-driver` and "
        "`pip install -e '.[page-test]'` (or `make test` as root, which installs both)")


def open_page(url: str) -> Any:
    """A headless Chromium showing `url`; quit() it when done."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_path = shutil.which("chromedriver")
    if chromium is None or driver_path is None:
        raise BrowserMissing(HINT)
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        raise BrowserMissing(HINT) from None
    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,1000"):
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=opts)
    driver.get(url)
    return driver
