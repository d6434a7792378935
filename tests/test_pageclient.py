"""`plcbridge bench --page-client remote` stands for a browser on another computer: it must ask
for what page.js asks for, at page.js's rates (read from page.js), or the benchmark measures a
different page. Here it polls a real loopback server that lists 20 archived decisions, all
new on every status, as a station archiving every frame does."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

from plcbridge.tools.bench import pageclient
from plcbridge.tools.bench.pageclient import PageClient, page_js_constants


class _Station(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.lock = threading.Lock()
        self.requests: list[tuple[float, str]] = []  # (monotonic, target)
        self.listed = 0  # decision lists served: each one lists 20 new decisions


class _Handler(BaseHTTPRequestHandler):
    server: _Station

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        s = self.server
        with s.lock:
            s.requests.append((time.monotonic(), self.path))
            path = urlsplit(self.path).path
            if path == "/api/status":
                body = json.dumps({"live": {"decision_id": "x"}, "newest_decision_id": f"n{len(s.requests)}"}).encode()
            elif path == "/api/decisions":
                s.listed += 1
                limit = int(parse_qs(urlsplit(self.path).query)["limit"][0])
                ids = [f"d{s.listed}-{i}" for i in range(limit)]
                body = json.dumps({"decisions": [{"decision_id": d, "thumb": f"/api/thumb/{d}"} for d in ids]}).encode()
            else:
                body = b"jpeg"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def test_the_rates_are_page_js_own() -> None:
    js = page_js_constants()
    assert pageclient.STATUS_EVERY_S == js["STATUS_EVERY_MS"] / 1000
    assert pageclient.LIVE_EVERY_S == js["LIVE_EVERY_MS"] / 1000
    assert pageclient.THUMB_EVERY_S == js["THUMB_EVERY_MS"] / 1000
    assert (pageclient.DECISIONS_SHOWN, pageclient.THUMB_BURST) == (js["DECISIONS_SHOWN"], js["THUMB_BURST"])


def test_it_polls_as_the_page_does_and_paces_thumbnails_burst_then_steady() -> None:
    station = _Station()
    threading.Thread(target=station.serve_forever, daemon=True).start()
    client = PageClient(f"http://127.0.0.1:{station.server_address[1]}/")
    t0 = time.monotonic()
    threads = client.start()
    seconds = 3 * pageclient.THUMB_EVERY_S + 0.5
    time.sleep(seconds)
    client.stop.set()
    for t in threads:
        t.join(timeout=5)
    station.shutdown()
    station.server_close()
    assert not any(t.is_alive() for t in threads), "a loop did not end when asked to stop"

    def asked(prefix: str) -> list[float]:
        return [t - t0 for t, target in station.requests if target.startswith(prefix)]

    lists = [target for _, target in station.requests if target.startswith("/api/decisions")]
    assert lists and all(target == f"/api/decisions?limit={pageclient.DECISIONS_SHOWN}" for target in lists)
    status, live, thumbs = asked("/api/status"), asked("/api/live.jpg"), asked("/api/thumb/")
    # Generous bounds around the page's rates: once a second, twice a second.
    assert 2 <= len(status) <= seconds / pageclient.STATUS_EVERY_S + 1
    assert 3 <= len(live) <= seconds / pageclient.LIVE_EVERY_S + 1
    # The bucket: the first THUMB_BURST thumbnails at once (20 listed, all wanted), then one per
    # THUMB_EVERY_S; never the 20 of each list, nor four a second.
    first = thumbs[:pageclient.THUMB_BURST]
    assert len(first) == pageclient.THUMB_BURST and first[-1] - first[0] < pageclient.THUMB_EVERY_S / 2
    steady = thumbs[pageclient.THUMB_BURST:]
    assert 1 <= len(steady) <= 4
    gaps = [b - a for a, b in zip([first[-1], *steady], steady)]
    assert min(gaps) > pageclient.THUMB_EVERY_S * 0.8
