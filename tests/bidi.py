"""Firefox for the station page's browser test, driven over WebDriver BiDi.

Firefox (Debian's firefox-esr) speaks WebDriver BiDi itself when started with
`--remote-debugging-port`; Selenium would need geckodriver, which Debian does not package and
Selenium Manager would download. So the test talks the protocol directly, on the
websocket-client that Selenium already brings: a session of its own, one browsing context,
a JavaScript function body run in the page (as Selenium's `execute_script`), and the page's
console errors and failed requests collected as events.

The port is 0 (the kernel picks a free one on 127.0.0.1) and read back from the profile's
WebDriverBiDiServer.json, so parallel test workers never collide.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import websocket

FIREFOX = shutil.which("firefox-esr") or shutil.which("firefox")
START_S = 60.0  # a cold Firefox on a busy 2-core machine
CALL_S = 30.0

# The remote agent already applies its recommended preferences (no updates, telemetry or
# remote settings); these keep the rest of a first start quiet and off the network.
_PREFS = {
    "browser.shell.checkDefaultBrowser": False,
    "browser.startup.homepage_override.mstone": "ignore",
    "datareporting.policy.dataSubmissionEnabled": False,
    "toolkit.telemetry.reportingpolicy.firstRun": False,
    "network.captive-portal-service.enabled": False,
    "network.connectivity-service.enabled": False,
}


class BidiError(RuntimeError):
    """A command the browser answered with an error, or a script that threw."""


def _value(remote: dict[str, Any]) -> Any:
    """A BiDi RemoteValue as Python: what Selenium's execute_script would return."""
    kind, value = remote.get("type"), remote.get("value")
    if kind in ("undefined", "null"):
        return None
    if kind == "number":
        if isinstance(value, str):  # "NaN", "-0", "Infinity", "-Infinity"
            return {"NaN": math.nan, "-0": -0.0, "Infinity": math.inf, "-Infinity": -math.inf}[value]
        return value
    if kind in ("string", "boolean", "bigint"):
        return value
    if kind in ("array", "set"):
        return [_value(v) for v in value or []]
    if kind in ("object", "map"):
        return {(k if isinstance(k, str) else json.dumps(_value(k))): _value(v) for k, v in value or []}
    return remote  # a node, a window, a function...: as the browser described it


class Firefox:
    """One headless Firefox with one page; `js(body)` runs a function body in it."""

    def __init__(self, profile: Path) -> None:
        if FIREFOX is None:
            raise RuntimeError("Firefox is not installed")
        profile.mkdir(parents=True, exist_ok=True)
        (profile / "user.js").write_text("".join(f"user_pref({json.dumps(k)}, {json.dumps(v)});\n"
                                                 for k, v in _PREFS.items()))
        self._log = (profile.parent / "firefox.log").open("wb")
        self.proc = subprocess.Popen([FIREFOX, "--headless", "--no-remote", "--profile", str(profile),
                                      "--remote-debugging-port", "0", "--window-size", "1280,1000", "about:blank"],
                                     stdout=self._log, stderr=subprocess.STDOUT)
        self._next = 0
        self.errors: list[dict[str, Any]] = []  # console errors, uncaught exceptions, failed requests
        self.ws: websocket.WebSocket | None = None
        try:
            self.ws = websocket.create_connection(f"ws://127.0.0.1:{self._port(profile)}/session", timeout=CALL_S,
                                                  suppress_origin=True)  # the agent refuses a foreign Origin
            self.call("session.new", {"capabilities": {}})
            self.context = self.call("browsingContext.getTree", {"maxDepth": 0})["contexts"][0]["context"]
            self.call("session.subscribe", {"events": ["log.entryAdded", "network.responseCompleted",
                                                       "network.fetchError"]})
        except BaseException:
            self.quit()
            raise

    def _port(self, profile: Path) -> int:
        deadline = time.monotonic() + START_S
        info = profile / "WebDriverBiDiServer.json"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"Firefox exited with {self.proc.returncode} before it listened")
            try:
                return int(json.loads(info.read_text())["ws_port"])
            except (OSError, ValueError, KeyError):
                time.sleep(0.1)
        raise TimeoutError(f"Firefox did not listen for WebDriver BiDi within {START_S:.0f} s")

    def call(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        assert self.ws is not None
        self._next += 1
        self.ws.send(json.dumps({"id": self._next, "method": method, "params": params}))
        while True:
            message = json.loads(self.ws.recv())
            if message.get("type") == "event":
                self._event(message["method"], message["params"])
            elif message.get("id") == self._next:
                if message.get("type") == "error":
                    raise BidiError(f"{method}: {message.get('error')}: {message.get('message')}")
                return dict(message["result"])

    def _event(self, method: str, params: dict[str, Any]) -> None:
        if method == "log.entryAdded" and params.get("level") == "error":
            self.errors.append(params)
        elif method == "network.fetchError":
            self.errors.append({"url": params["request"]["url"], "error": params.get("errorText")})
        elif method == "network.responseCompleted" and params["response"]["status"] >= 400:
            self.errors.append({"url": params["request"]["url"], "status": params["response"]["status"]})

    def get(self, url: str) -> None:
        self.call("browsingContext.navigate", {"context": self.context, "url": url, "wait": "complete"})

    def js(self, body: str) -> Any:
        result = self.call("script.callFunction", {"functionDeclaration": f"function() {{ {body} }}",
                                                   "target": {"context": self.context}, "awaitPromise": True})
        if result["type"] == "exception":
            raise BidiError(f"the script threw: {result['exceptionDetails'].get('text')}")
        return _value(result["result"])

    def quit(self) -> None:
        try:
            if self.ws is not None:
                try:
                    self.call("browser.close", {})
                except (BidiError, OSError, websocket.WebSocketException):
                    pass
                self.ws.close()
        finally:
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self._log.close()
