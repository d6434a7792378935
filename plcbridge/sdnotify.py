"""The sd_notify protocol, spoken directly: one datagram per message on $NOTIFY_SOCKET.

No dependency is needed for a few lines of socket code, and nothing here blocks: the
socket is non-blocking and a failed send is dropped (systemd is either there or not).
Without $NOTIFY_SOCKET every call is a no-op, so the daemon runs the same outside systemd.

WATCHDOG=1 is deliberately not sent from a timer thread. The write loop calls
`watchdog()` itself, so the pings stop the moment the loop stops ticking and systemd's
WatchdogSec restarts a daemon whose loop is stuck.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from typing import Mapping


class Notifier:
    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        env = os.environ if env is None else env
        path = env.get("NOTIFY_SOCKET", "")
        self._addr: str | None = None
        self._sock: socket.socket | None = None
        if path:
            # "@name" is an abstract-namespace socket: the name starts with a NUL byte.
            self._addr = "\0" + path[1:] if path.startswith("@") else path
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.setblocking(False)
        self.watchdog_interval_s: float | None = None
        usec = env.get("WATCHDOG_USEC")
        pid = env.get("WATCHDOG_PID")
        if usec and (not pid or pid == str(os.getpid())):
            # Ping at half the timeout, as sd_watchdog_enabled(3) recommends.
            self.watchdog_interval_s = int(usec) / 2_000_000

    def send(self, *lines: str) -> bool:
        if self._sock is None or self._addr is None:
            return False
        try:
            self._sock.sendto("\n".join(lines).encode(), self._addr)
            return True
        except OSError:
            return False

    def ready(self, status: str) -> bool:
        return self.send("READY=1", f"STATUS={status}")

    def status(self, status: str) -> bool:
        return self.send(f"STATUS={status}")

    def reloading(self) -> bool:
        # systemd (>= 253) wants the CLOCK_MONOTONIC time of the reload request alongside.
        return self.send("RELOADING=1", f"MONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}")

    def stopping(self, status: str = "stopping") -> bool:
        return self.send("STOPPING=1", f"STATUS={status}")

    def watchdog(self) -> bool:
        return self.send("WATCHDOG=1")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


class NotifyListener:
    """The receiving end, standing in for systemd: for the bench (cold start to READY=1) and
    the tests. Every datagram is kept as (CLOCK_MONOTONIC arrival time, {KEY: value})."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = str(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.settimeout(0.05)
        self.messages: list[tuple[float, dict[str, str]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="notify-listener", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(4096)
            except socket.timeout:
                continue
            except OSError:
                return
            fields = dict(line.split("=", 1) for line in data.decode(errors="replace").splitlines() if "=" in line)
            self.messages.append((time.monotonic(), fields))

    def first(self, key: str) -> float | None:
        """Arrival time of the first message carrying KEY (e.g. "READY"), or None."""
        return next((t for t, m in self.messages if key in m), None)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(1)
        self.sock.close()
