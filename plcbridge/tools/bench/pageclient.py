"""`plcbridge bench --page --page-client remote`: the station page's requests, as a browser on
another computer makes them, from a process of its own on this one.

An engineer usually opens the page from a laptop or the control room, so what the line PC
pays is serving the page, not drawing it. This client asks for exactly what page.js asks for
and at the same rates (`/api/status` every second, `/api/live.jpg` twice a second once there
is a frame, `/api/decisions?limit=50` when the newest decision changed, then the thumbnails
of the listed decisions it has not fetched yet, newest first, one at a time, at most four a
second), and draws
nothing. Python's stdlib only; it runs until it is terminated.

    python -m plcbridge.tools.bench.pageclient http://127.0.0.1:PORT/
"""

from __future__ import annotations

import json
import sys
import threading
import time
import urllib.error
import urllib.request
from typing import Any

STATUS_EVERY_S = 1.0  # page.js STATUS_EVERY_MS
LIVE_EVERY_S = 0.5  # page.js LIVE_EVERY_MS
DECISIONS_SHOWN = 50  # page.js DECISIONS_SHOWN
THUMB_EVERY_S = 0.25  # page.js THUMB_EVERY_MS
TIMEOUT_S = 5.0


def _get(url: str) -> bytes | None:
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_S) as r:
            return bytes(r.read())
    except (OSError, urllib.error.URLError):
        return None


class PageClient:
    def __init__(self, base: str) -> None:
        self.base = base.rstrip("/") + "/"
        self.has_frame = threading.Event()
        self._newest: Any = object()
        self._thumbs_seen: set[str] = set()
        self._thumbs: list[tuple[str, str]] = []
        self._cond = threading.Condition()

    def status_loop(self) -> None:
        while True:
            t0 = time.monotonic()
            body = _get(self.base + "api/status")
            if body is not None:
                s = json.loads(body)
                if s.get("live", {}).get("decision_id") is not None:
                    self.has_frame.set()
                if s.get("newest_decision_id") != self._newest and self._decisions():
                    self._newest = s.get("newest_decision_id")
            time.sleep(max(0.0, STATUS_EVERY_S - (time.monotonic() - t0)))

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
        """One thumbnail at a time, at most one per THUMB_EVERY_S, beside the polling, as page.js loads them."""
        last = -float("inf")
        while True:
            time.sleep(max(0.0, last + THUMB_EVERY_S - time.monotonic()))
            with self._cond:
                while not self._thumbs:
                    self._cond.wait()
                decision_id, url = self._thumbs.pop(0)
                self._thumbs_seen.add(decision_id)
            last = time.monotonic()
            _get(self.base + url.lstrip("/"))

    def live_loop(self) -> None:
        n = 0
        while True:
            t0 = time.monotonic()
            if self.has_frame.is_set():
                n += 1
                _get(f"{self.base}api/live.jpg?n={n}")
            time.sleep(max(0.0, LIVE_EVERY_S - (time.monotonic() - t0)))


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m plcbridge.tools.bench.pageclient http://127.0.0.1:PORT/", file=sys.stderr)
        return 2
    client = PageClient(args[0])
    threading.Thread(target=client.live_loop, name="live", daemon=True).start()
    threading.Thread(target=client.thumb_loop, name="thumbs", daemon=True).start()
    client.status_loop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
