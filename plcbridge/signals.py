"""Stop and reload signals for a main loop, with no lock taken in a signal handler.

CPython runs a Python signal handler on the main thread between two bytecodes, so it can
interrupt that thread inside `threading.Event.wait` while it holds the Event's lock (a plain,
non-reentrant Lock). A handler that calls `Event.set()` then waits for that lock forever, and
SIGTERM never stops the process: cpython#126434 describes it for multiprocessing's Event, and
threading's Event is built the same way. The simulator once hung so on SIGTERM in the test
suite; for the daemon it would mean no final fail-safe write until systemd's SIGKILL.

Here the interpreter's C-level handler writes the signal's number to a socket
(`signal.set_wakeup_fd`), the Python handler does nothing, and the main loop waits on the
socket with `select`: a signal ends the wait at once and nothing takes a lock. A signal is
lost only if the socket's buffer is full (hundreds of thousands of signals unread): the daemon
reads it at least every 0.2 s.
"""

from __future__ import annotations

import select
import signal
import socket
import threading
import time
from typing import Any


def _ignore(_signum: int, _frame: Any) -> None:
    """The Python-level handler: the wakeup socket has already carried the signal."""


class SignalWaiter:
    """`with SignalWaiter(signal.SIGTERM, signal.SIGHUP) as signals:` installs handlers for
    those signals; `signals.wait(timeout)` returns the ones that arrived since the last call, in
    order ([] when the timeout passed first). On exit the previous handlers and wakeup fd come
    back. Outside the main thread (where Python allows no handler) it installs nothing and
    `wait` only sleeps."""

    def __init__(self, *signums: int) -> None:
        self.signums = frozenset(int(s) for s in signums)
        self._previous: dict[int, Any] = {}
        self._previous_fd = -1
        self._socks: tuple[socket.socket, socket.socket] | None = None

    def __enter__(self) -> "SignalWaiter":
        if threading.current_thread() is not threading.main_thread():
            return self
        read, write = socket.socketpair()
        read.setblocking(False)
        write.setblocking(False)
        self._socks = (read, write)
        self._previous_fd = signal.set_wakeup_fd(write.fileno(), warn_on_full_buffer=False)
        for sig in sorted(self.signums):
            self._previous[sig] = signal.signal(sig, _ignore)
        return self

    def wait(self, timeout: float) -> list[int]:
        """The signals among ours that arrived, waiting up to `timeout` seconds for one."""
        if self._socks is None:
            time.sleep(max(0.0, timeout))
            return []
        read = self._socks[0]
        select.select([read], [], [], max(0.0, timeout))  # retried after a handler (PEP 475)
        got: list[int] = []
        while True:
            try:
                data = read.recv(256)
            except BlockingIOError:
                break
            if not data:
                break
            got.extend(data)
        return [s for s in got if s in self.signums]

    def __exit__(self, *_exc: object) -> None:
        if self._socks is None:
            return
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        signal.set_wakeup_fd(self._previous_fd)
        for sock in self._socks:
            sock.close()
        self._socks = None
