"""The network in front of the simulated PLC: replies late, or not at all, on purpose.

Real PLCs take time to answer (an OPC UA server 5-30 ms), a switch can lose a link, a PLC
can restart; the bridge is tested against all of that with one protocol-agnostic TCP relay
in front of whichever front-end runs:

    client --> relay (configured host:port) --> protocol server (127.0.0.1:ephemeral)

The relay runs on the front-end's own event loop. Bytes from the client pass at once; each
chunk the server sends back (a reply) reaches the client `reply_delay_ms` plus a uniformly
random 0..`reply_jitter_ms` after the server sent it, never before the chunk before it (so a
chunk's delay is the larger of its own and its predecessor's: order is kept). TCP_NODELAY is
set on both sides, so a reply is not held back by Nagle on top of the delay.

It is in the path only when the device file's `[network]` asks for it (a delay, a jitter, or
`relay = true`); otherwise the front-end listens on the configured address itself and
behaves exactly as without this module.

Runtime controls, callable from any thread (each returns once the relay's loop applied it):

- `set_reply_delay(delay_ms, jitter_ms=0)`: chunks read from the server from now on;
- `blackhole(on)`: a cable pulled behind a switch. Connections stay open and new ones are
  still accepted at TCP level, but nothing is forwarded either way: bytes sent meanwhile
  are lost (not delayed), and a close by either side is held back until the blackhole ends;
- `drop_connections()`: every client connection (and its server side) is closed at once,
  like a PLC restart; the listener stays up for the reconnect.

`connections_accepted`, `connections_open` and `connections_dropped` count client
connections from the PLC side; `stats()` is the front-end summary's "network" entry.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import random
import socket
from collections.abc import Callable
from typing import Any, TypeVar

from .device import MAX_REPLY_DELAY_MS

log = logging.getLogger(__name__)

#: Where a front-end's protocol server listens when the relay is in front of it.
INTERNAL_HOST = "127.0.0.1"
_READ_SIZE = 65536
_APPLY_TIMEOUT_S = 5.0
_T = TypeVar("_T")


def check_delay(delay_ms: float, jitter_ms: float) -> None:
    for name, v in (("delay_ms", delay_ms), ("jitter_ms", jitter_ms)):
        if not 0 <= v <= MAX_REPLY_DELAY_MS:  # also refuses NaN
            raise ValueError(f"{name} must be within 0..{MAX_REPLY_DELAY_MS:g}, not {v!r}")


def _nodelay(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class Relay:
    """A TCP relay that delays replies; see the module docstring."""

    def __init__(self, reply_delay_ms: float = 0.0, reply_jitter_ms: float = 0.0, *,
                 rng: random.Random | None = None) -> None:
        check_delay(reply_delay_ms, reply_jitter_ms)
        self._delay_ms = float(reply_delay_ms)
        self._jitter_ms = float(reply_jitter_ms)
        self._rng = rng or random.Random()
        self._blackholed = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.AbstractServer | None = None
        self._passable: asyncio.Event | None = None  # set while no blackhole
        self._upstream_port = 0
        self._links: set[_Link] = set()
        self.port: int | None = None
        self.connections_accepted = 0
        self.connections_dropped = 0

    @property
    def connections_open(self) -> int:
        return len(self._links)

    @property
    def reply_delay_ms(self) -> float:
        return self._delay_ms

    @property
    def reply_jitter_ms(self) -> float:
        return self._jitter_ms

    @property
    def blackholed(self) -> bool:
        return self._blackholed

    def stats(self) -> dict[str, Any]:
        return {
            "relay": True,
            "reply_delay_ms": self._delay_ms,
            "reply_jitter_ms": self._jitter_ms,
            "blackhole": self._blackholed,
            "connections_accepted": self.connections_accepted,
            "connections_open": self.connections_open,
            "connections_dropped": self.connections_dropped,
        }

    # ------------------------------------------------------------------ controls (any thread)

    def set_reply_delay(self, delay_ms: float, jitter_ms: float = 0.0) -> None:
        """Delay each reply chunk read from now on by delay_ms + uniform(0, jitter_ms)."""
        check_delay(delay_ms, jitter_ms)

        def apply() -> None:
            self._delay_ms, self._jitter_ms = float(delay_ms), float(jitter_ms)

        self._apply(apply)

    def blackhole(self, on: bool = True) -> None:
        """Forward nothing either way while on (connections stay open); see the module docstring."""

        def apply() -> None:
            self._blackholed = bool(on)
            if self._passable is not None:
                (self._passable.clear if on else self._passable.set)()

        self._apply(apply)

    def drop_connections(self) -> int:
        """Close every client connection and its server side at once; returns how many."""
        return self._apply(lambda: self._abort_all(count=True))

    def _apply(self, fn: Callable[[], _T]) -> _T:
        """Run fn on the relay's loop and wait for it (directly when there is no loop to ask)."""
        loop = self._loop
        if loop is None or loop.is_closed() or not loop.is_running():
            return fn()
        try:
            if asyncio.get_running_loop() is loop:
                return fn()
        except RuntimeError:
            pass
        done: concurrent.futures.Future[_T] = concurrent.futures.Future()

        def run() -> None:
            try:
                done.set_result(fn())
            except BaseException as e:  # handed to the calling thread
                done.set_exception(e)

        try:
            loop.call_soon_threadsafe(run)
        except RuntimeError:  # the loop closed meanwhile: nothing runs on it any more
            return fn()
        return done.result(_APPLY_TIMEOUT_S)

    # ------------------------------------------------------------------ on the loop

    async def start(self, host: str, port: int, upstream_port: int) -> int:
        """Listen on host:port, relaying to INTERNAL_HOST:upstream_port; returns the port bound."""
        self._loop = asyncio.get_running_loop()
        self._passable = asyncio.Event()
        if not self._blackholed:
            self._passable.set()
        self._upstream_port = upstream_port
        self._server = await asyncio.start_server(self._accept, host, port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def close(self) -> None:
        """Stop listening and close every connection; idempotent."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
        tasks = [link.task for link in self._links if link.task is not None]
        self._abort_all(count=False)
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        if server is not None:
            await server.wait_closed()

    def _abort_all(self, count: bool) -> int:
        links = list(self._links)
        for link in links:
            link.abort()
        if count:
            self.connections_dropped += len(links)
        return len(links)

    def _due(self) -> float:
        assert self._loop is not None
        delay = self._delay_ms + (self._rng.uniform(0.0, self._jitter_ms) if self._jitter_ms else 0.0)
        return self._loop.time() + delay / 1000.0

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections_accepted += 1
        link = _Link(self, reader, writer)
        self._links.add(link)
        try:
            await link.run()
        finally:
            self._links.discard(link)


class _Link:
    """One client connection and its connection to the protocol server."""

    def __init__(self, relay: Relay, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.relay = relay
        self.client_r, self.client_w = reader, writer
        self.server_w: asyncio.StreamWriter | None = None
        self.task = asyncio.current_task()
        self._replies: asyncio.Queue[tuple[float, bytes | None]] = asyncio.Queue()
        # Done when aborted. (Cancelling the task asyncio.start_server made for the link
        # makes Python 3.11 log a spurious "Exception in callback" for it.)
        self._aborted: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def abort(self) -> None:
        """Close both sides now, discarding what was not delivered yet."""
        for w in (self.client_w, self.server_w):
            if w is not None:
                w.transport.abort()
        if not self._aborted.done():
            self._aborted.set_result(None)

    async def run(self) -> None:
        relay = self.relay
        _nodelay(self.client_w)
        pumps: list[asyncio.Task[None]] = []
        try:
            try:
                server_r, self.server_w = await asyncio.open_connection(INTERNAL_HOST, relay._upstream_port)
            except OSError as e:
                log.warning("network relay: cannot reach the protocol server on port %s: %s", relay._upstream_port, e)
                return
            _nodelay(self.server_w)
            if self._aborted.done():
                return
            pumps = [
                asyncio.create_task(self._to_server()),
                asyncio.create_task(self._from_server(server_r)),
                asyncio.create_task(self._deliver()),
            ]
            # The link ends when the client is gone, or when the server closed and every
            # reply before its close was delivered.
            await asyncio.wait({pumps[0], pumps[2], self._aborted}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for t in pumps:
                t.cancel()
            for w in (self.server_w, self.client_w):
                if w is not None:
                    w.close()
            if pumps:
                await asyncio.gather(*pumps, return_exceptions=True)

    async def _to_server(self) -> None:
        relay, w = self.relay, self.server_w
        assert w is not None and relay._passable is not None
        try:
            while data := await self.client_r.read(_READ_SIZE):
                if relay._blackholed:
                    continue  # lost in the pulled cable
                w.write(data)
                await w.drain()
        except OSError:  # reset by either side: the link ends as on a close
            pass
        await relay._passable.wait()  # a close does not pass a pulled cable either

    async def _from_server(self, server_r: asyncio.StreamReader) -> None:
        relay = self.relay
        try:
            while data := await server_r.read(_READ_SIZE):
                self._replies.put_nowait((relay._due(), data))
        except OSError:
            pass
        self._replies.put_nowait((relay._due(), None))  # the close travels behind the replies

    async def _deliver(self) -> None:
        relay, w = self.relay, self.client_w
        assert relay._loop is not None and relay._passable is not None
        while True:
            due, data = await self._replies.get()
            while (wait := due - relay._loop.time()) > 0:
                await asyncio.sleep(wait)
            if data is None:
                await relay._passable.wait()
                return
            if relay._blackholed:
                continue
            try:
                w.write(data)
                await w.drain()
            except OSError:
                return
