"""The station page: a live view of one station for the people beside the line, served on
the metrics host and port (127.0.0.1 by default) by the daemon's bounded endpoint, and the
JSON API that `plcbridge status` reads (docs/station-page.md).

- sink.py: a sink on the journal's seam (plcbridge/sinks.py) keeping, bounded, the newest
  judged frame, the newest decisions and the last hour's counts;
- api.py: /api/status and /api/decisions, from the daemon and the sink;
- images.py: the live JPEG and archived decisions' thumbnails (OpenCV, cached);
- routes.py: the route table for the endpoint, and the static page (static/: HTML, CSS and
  a little JavaScript, all shipped in the package; the page loads nothing from elsewhere).

Nothing here runs on the write loop: the sink has its own thread, the routes run on the
endpoint's workers, both below the loop's priority.
"""

from plcbridge.page.routes import page_routes
from plcbridge.page.sink import PageSink

__all__ = ["PageSink", "page_routes"]
