"""`plcbridge bench --page`: the station page open in a real browser for the whole run, as an
engineer at the line would leave it, so that its cost on the write loop is measured and not
guessed. Headless Chromium from the distribution (`chromium`, `chromium-driver`) driven by
Selenium (the `page-test` extra); never a downloaded driver."""

from __future__ import annotations

import os
import shutil
from typing import Any


class BrowserMissing(RuntimeError):
    """No Chromium, chromedriver or Selenium here: what to install."""


HINT = ("the station page needs Chromium and Selenium: as root `apt-get install chromium chromium-driver` and "
        "`pip install -e '.[page-test]'` (or `make test` as root, which installs both)")


def open_page(url: str, niceness: int = 0, cpus: tuple[int, ...] | None = None) -> Any:
    """A headless Chromium showing `url` (chromedriver and every browser process it starts at
    `niceness`: 0 is a browser as a user starts it; on `cpus` only, when given, as `taskset`
    starts it); quit() it when done.

    Run as root (a container, CI), it runs as the unprivileged user `nobody`, as a person's
    browser would: Chromium started by root raises some of its own processes to nice -8,
    above the daemon's threads, which no user's browser can do."""
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
    demote = None
    if os.geteuid() == 0:
        import pwd
        import tempfile

        nobody = pwd.getpwnam("nobody")
        profile = tempfile.mkdtemp(prefix="plcbridge-page-")
        os.chown(profile, nobody.pw_uid, nobody.pw_gid)
        opts.add_argument(f"--user-data-dir={profile}")

        def demote() -> None:
            os.setgroups([])
            os.setgid(nobody.pw_gid)
            os.setuid(nobody.pw_uid)

    def start() -> None:
        if niceness:
            os.nice(niceness)
        if cpus:
            os.sched_setaffinity(0, cpus)
        if demote is not None:
            demote()

    env = {**os.environ, "HOME": "/tmp"}
    service = Service(executable_path=driver_path, env=env, popen_kw={"preexec_fn": start})
    driver = webdriver.Chrome(service=service, options=opts)
    driver.get(url)
    return driver


def tree_cpu_seconds(driver: Any) -> float | None:
    """CPU seconds used so far by chromedriver and every browser process under it (those
    already gone included, as their parents' cutime/cstime), or None if it is gone."""
    from pathlib import Path

    from plcbridge.tools.bench.stats import cpu_seconds

    root = getattr(getattr(getattr(driver, "service", None), "process", None), "pid", None)
    if root is None:
        return None
    ticks = os.sysconf("SC_CLK_TCK")
    stats: dict[int, tuple[int, str]] = {}  # pid -> (ppid, stat line)
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                line = (d / "stat").read_text()
            except OSError:
                continue
            stats[int(d.name)] = (int(line.rsplit(")", 1)[1].split()[1]), line)
    if root not in stats:
        return None
    tree, total = {root}, 0.0
    for pid in sorted(stats):  # parents before children, almost always; a second pass catches the rest
        if stats[pid][0] in tree:
            tree.add(pid)
    for pid in sorted(stats):
        if stats[pid][0] in tree:
            tree.add(pid)
    for pid in tree:
        line = stats[pid][1]
        fields = line.rsplit(")", 1)[1].split()
        total += cpu_seconds(line, ticks) + (int(fields[13]) + int(fields[14])) / ticks  # + cutime, cstime
    return total
