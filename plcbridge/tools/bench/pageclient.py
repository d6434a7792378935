"""`plcbridge bench --page --page-client remote`: the station page's requests, as a browser on
another computer makes them, from a process of its own on this one.

An engineer usually opens the page from a laptop or the control room, so what the line PC
pays is serving the page, not drawing it. This client asks for exactly what page.js asks for
and at the same rates, read from page.js itself (`/api/status` every second, `/api/live.jpg`
twice a second once there is a frame, `/api/decisions?limit=20` when the newest decision
changed, then the thumbnails of the listed decisions it has not fetched yet, newest first, one
at a time: the first eight at once, then one a second), and draws nothing. Python's stdlib
only; it runs until it is terminated.

    python -m plcbridge.tools.bench.pageclient http://127.0.0.1:PORT/
"""

from __future__ import annotations

import json
import re
import sys
import threading
import time
import urllib.error
import urllib.request
from importlib import resources
from typing import Any


def page_js_constants() -> dict[str, int]:
    """page.js's `const NAME = NUMBER;` lines: the page's rates and sizes, from the one file
    that sets them, so that this client cannot drift from the page it stands for."""
    text = (resources.files("plcbridge.page") / "static" / "page.js").read_text(encoding="utf-8")
    return {m[1]: int(m[2]) for m in re.finditer(r"^\s*const ([A-Z_]+) = (\d+);", text, re.MULTILINE)}


_PAGE = page_js_constants()
STATUS_EVERY_S = _PAGE["STATUS_EVERY_MS"] / 1000
LIVE_EVERY_S = _PAGE["LIVE_EVERY_MS"] / 1000
DECISIONS_SHOWN = _PAGE["DECISIONS_SHOWN"]
THUMB_BURST = _PAGE["THUMB_BURST"]
THUMB_EVERY_S = _PAGE["THUMB_EVERY_MS"] / 1000
TIMEOUT_S = 5.0


def _get(url: str) -> bytes | None:
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_S) as r:
            return bytes(r.read())
    except (OSError, urllib.error.URLError):
        return None


class PageClient:
    """The page's three pollers (status and decisions, thumbnails, live image), each on a
    thread of its own, as page.js runs them side by side; until stop is set."""

    def __init__(self, base: str) -> None:
        self.base = base.rstrip("/") + "/"
        self.has_frame = threading.Event()
        self.stop = threading.Event()
        self._newest: Any = object()
        self._thumbs_seen: set[str] = set()
        self._thumbs: list[tuple[str, str]] = []
        self._cond = threading.Condition()

    def start(self) -> list[threading.Thread]:
        """The three loops on daemon threads; set `stop` and join them to end."""
        threads = [threading.Thread(target=loop, name=name, daemon=True) for name, loop in
                   (("status", self.status_loop), ("thumbs", self.thumb_loop), ("live", self.live_loop))]
        for t in threads:
            t.start()
        return threads

    def status_loop(self) -> None:
        while not self.stop.is_set():
            t0 = time.monotonic()
            body = _get(self.base + "api/status")
            if body is not None:
                s = json.loads(body)
                if s.get("live", {}).get("decision_id") is not None:
                    self.has_frame.set()
                if s.get("newest_decision_id") != self._newest and self._decisions():
                    self._newest = s.get("newest_decision_id")
            self.stop.wait(max(0.0, STATUS_EVERY_S - (time.monotonic() - t0)))

    def _decisions(self) -> bool:
        body = _get(f"{self.base}api/decisions?limit={DECISIONS_SHOWN}")
        if body is None:
            return False
        listed = json.loads(body).get("decisions", [])
        with self._cond:  # the thumbnails still wanted: listed, not fetched yet, newest first
            self._thumbs = [(d["decision_id"], d["thumb"]) for d in listed
                            if d.get("thumb") and d["decision_id"] not in self._thumbs_seen]
            self._thumbs_seen &= {d["decision_id"] for d in listed}
            self._cond.notify()
        return True

    def thumb_loop(self) -> None:
        """One thumbnail at a time, beside the polling, from a bucket of THUMB_BURST that
        refills one per THUMB_EVERY_S, as page.js loads them."""
        tokens, refilled = float(THUMB_BURST), time.monotonic()
        while not self.stop.is_set():
            with self._cond:
                if not self._thumbs:
                    self._cond.wait(0.2)  # woken by a new list; the timeout only to see stop
                    continue
            now = time.monotonic()
            tokens, refilled = min(THUMB_BURST, tokens + (now - refilled) / THUMB_EVERY_S), now
            if tokens < 1:
                self.stop.wait((1 - tokens) * THUMB_EVERY_S)
                continue
            with self._cond:  # the newest still wanted once a token is there, as page.js takes it
                if not self._thumbs:
                    continue
                decision_id, url = self._thumbs.pop(0)
                self._thumbs_seen.add(decision_id)
            tokens -= 1
            _get(self.base + url.lstrip("/"))

    def live_loop(self) -> None:
        n = 0
        while not self.stop.is_set():
            t0 = time.monotonic()
            if self.has_frame.is_set():
                n += 1
                _get(f"{self.base}api/live.jpg?n={n}")
            self.stop.wait(max(0.0, LIVE_EVERY_S - (time.monotonic() - t0)))


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m plcbridge.tools.bench.pageclient http://127.0.0.1:PORT/", file=sys.stderr)
        return 2
    for t in PageClient(args[0]).start():
        t.join()
    return 0


if __name__ == "__main__":
    sys.exit(main())
