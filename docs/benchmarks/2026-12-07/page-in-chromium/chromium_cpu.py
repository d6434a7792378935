"""What headless Chromium (nice 19, CPU 0, as the bench starts it) spends on a page, in cores,
over 30 s after 4 s of settling: a blank page, a 10 KB JPEG fetched twice a second, the same
JPEG drawn twice a second (at 640 px and at its own 256 px), and, given the daemon's page URL,
the station page itself. The JPEG comes from a keep-alive stdlib server on 127.0.0.1.

    .venv/bin/python chromium_cpu.py LIVE.jpg [http://127.0.0.1:PORT/ [VARIANT ...]]

run-1.txt: every variant; run-2.txt and run-3.txt: the four without the daemon's page, then
the page alone twice (a `plcbridge bench --page --page-client remote` running throughout).
"""
import http.server
import os
import sys
import threading
import time

from selenium import webdriver
from selenium.webdriver.chrome.service import Service

from plcbridge.tools.bench.browser import tree_cpu_seconds

JPEG = open(sys.argv[1], "rb").read()


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "image/jpeg")
        self.send_header("Content-Length", str(len(JPEG)))
        self.send_header("Access-Control-Allow-Origin", "*")
        self.end_headers()
        self.wfile.write(JPEG)

    def log_message(self, *args: object) -> None:
        pass


server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
threading.Thread(target=server.serve_forever, daemon=True).start()
U = f"http://127.0.0.1:{server.server_address[1]}/x.jpg"


def chromium(url: str):
    opts = webdriver.ChromeOptions()
    opts.binary_location = "/usr/bin/chromium"
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,1000",
              "--disable-web-security", f"--user-data-dir=/tmp/chromium-cpu-{time.time_ns()}"):
        opts.add_argument(a)

    def start() -> None:
        os.nice(19)
        os.sched_setaffinity(0, (0,))

    d = webdriver.Chrome(service=Service(executable_path="/usr/bin/chromedriver", env={**os.environ, "HOME": "/tmp"},
                                         popen_kw={"preexec_fn": start}), options=opts)
    d.get(url)
    return d


def img(attrs: str) -> str:
    return f"data:text/html,<img id=i {attrs}><script>let n=0;setInterval(()=>{{i.src='{U}?n='+(++n)}},500)</script>"


VARIANTS = {
    "blank": "about:blank",
    "fetch 2/s": f"data:text/html,<script>let n=0;setInterval(async()=>{{const r=await fetch('{U}?n='+(++n),"
                 "{cache:'no-store'});await r.arrayBuffer()},500)</script>",
    "draw 2/s at 640 px": img("width=640"),
    "draw 2/s at 256 px": img("width=256 height=256"),
}
if len(sys.argv) > 2:
    VARIANTS["the station page"] = sys.argv[2]
for name, url in VARIANTS.items():
    if len(sys.argv) > 3 and name not in sys.argv[3:]:
        continue
    d = chromium(url)
    time.sleep(4)
    a, t = tree_cpu_seconds(d), time.monotonic()
    time.sleep(30)
    b = tree_cpu_seconds(d)
    print(f"{name:22} {(b - a) / (time.monotonic() - t):.4f} cores", flush=True)
    d.quit()
