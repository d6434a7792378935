"""The page's routes on the daemon's bounded HTTP endpoint (plcbridge/endpoint.py), all GET
and read-only:

    /                      the page (static/index.html), /page.css, /page.js
    /api/status            readiness, the PLC view, link, counts and yield, model, write loop
    /api/decisions?limit=N the newest N decisions (1..KEEP, default 50), newest first
    /api/live.jpg          the newest judged frame with its verdict; 404 before any
    /api/thumb/<id>        an archived decision's image, small; 404 when not archived

The static files ship inside the package and are read once, when the routes are made:
nothing is fetched from anywhere else, by the daemon or by the page.
"""

from __future__ import annotations

import json
from importlib import resources
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

from plcbridge.endpoint import Route
from plcbridge.page.api import StatusApi
from plcbridge.page.images import LiveImage, Thumbs, no_archive
from plcbridge.page.sink import KEEP, PageSink

if TYPE_CHECKING:
    from plcbridge.daemon import Daemon

DEFAULT_LIMIT = 50
STATIC = {"/": ("index.html", "text/html; charset=utf-8"),
          "/page.css": ("page.css", "text/css; charset=utf-8"),
          "/page.js": ("page.js", "text/javascript; charset=utf-8")}
TEXT = "text/plain; charset=utf-8"
JSON = "application/json"

Response = tuple[int, bytes, str]


def static_files() -> dict[str, tuple[bytes, str]]:
    """path -> (body, content type), read from the package's static/ folder."""
    folder = resources.files("plcbridge.page") / "static"
    return {path: ((folder / name).read_bytes(), ctype) for path, (name, ctype) in STATIC.items()}


def _json(data: Any) -> Response:
    return 200, (json.dumps(data, default=str, separators=(",", ":")) + "\n").encode(), JSON


def parse_limit(target: str) -> int | str:
    """?limit=N as an int within 1..KEEP (more is served as KEEP), or why it is refused."""
    values = parse_qs(urlsplit(target).query).get("limit")
    if not values:
        return DEFAULT_LIMIT
    try:
        n = int(values[-1])
    except ValueError:
        return f"limit must be a whole number 1..{KEEP}, got {values[-1][:20]!r}"
    return min(n, KEEP) if n >= 1 else f"limit must be 1..{KEEP}, got {n}"


def page_routes(daemon: Daemon, sink: PageSink) -> dict[str, Route]:
    """The routes for HealthServer(routes=...)."""
    archived = no_archive if daemon.archive is None else daemon.archive.pictures
    api = StatusApi(daemon, sink, archived)
    live = LiveImage(sink)
    thumbs = Thumbs(archived)
    files = static_files()

    def static(target: str) -> Response:
        # "/" is a prefix route too (the endpoint's rule for keys ending in "/"): anything
        # no other route took, and no file of the page, ends here as 404.
        found = files.get(urlsplit(target).path)
        return (200, *found) if found is not None else (404, b"not found\n", TEXT)

    def status(_target: str) -> Response:
        return _json(api.status())

    def decisions(target: str) -> Response:
        limit = parse_limit(target)
        if isinstance(limit, str):
            return 400, (limit + "\n").encode(), TEXT
        return _json(api.decisions(limit))

    def live_jpg(_target: str) -> Response:
        made = live.jpeg()
        if made is None:
            return 404, b"no frame judged yet\n", TEXT
        return 200, made[1], "image/jpeg"

    def thumb(target: str) -> Response:
        decision_id = urlsplit(target).path.rsplit("/", 1)[-1]
        data = thumbs.jpeg(decision_id)
        if data is None:
            return 404, b"not in the image archive\n", TEXT
        return 200, data, "image/jpeg"

    routes: dict[str, Route] = {path: static for path in STATIC}
    routes.update({"/api/status": status, "/api/decisions": decisions, "/api/live.jpg": live_jpg, "/api/thumb/": thumb})
    return routes
