"""What every protocol front-end of the simulated PLC shares: an asyncio server on a thread.

Tests, the demo and `plcbridge sim` drive a front-end the same way whatever the protocol:
start() returns once the port is bound (port 0 gives an OS-chosen one), stop() ends it,
summary()/status_line() read the program under a lock. A subclass implements `_serve()` (bind,
then `await self._run_program(port)`, then close) and `_tick_forever()` (the program's clock).
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from .device import DeviceSettings
from .program import SimulatedPlc


class ThreadedFrontend:
    #: the DeviceSettings section this front-end reads ("modbus", "opcua", "enip")
    section = ""
    #: how the protocol is named in messages
    title = ""

    def __init__(self, settings: DeviceSettings, program: SimulatedPlc | None = None) -> None:
        self.settings = settings
        self.program = program or SimulatedPlc(settings.program)
        self._lock = threading.Lock()  # held while the program runs, so snapshots are consistent
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._port: int | None = None
        self._error: BaseException | None = None

    @property
    def host(self) -> str:
        return getattr(self.settings, self.section).host

    @property
    def port(self) -> int:
        """The port actually bound (useful with port 0)."""
        if self._port is None:
            raise RuntimeError("simulator is not listening")
        return self._port

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def error(self) -> BaseException | None:
        """Why the server thread ended, if it ended by itself."""
        return self._error

    def start(self, timeout: float = 30.0) -> "ThreadedFrontend":
        """Start listening; returns once the port is bound, raises if starting failed."""
        if self._thread is not None:
            raise RuntimeError("simulator already started")
        self._thread = threading.Thread(target=self._thread_main, name=f"plc-sim-{self.section}", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise TimeoutError(f"{self.title} simulator did not start listening in time")
        if self._error is not None:
            self._thread.join()
            raise self._error
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Close the server (every client connection ends) and its thread; idempotent."""
        if self._loop is not None and self._stop is not None and self.running:
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(timeout)

    def summary(self) -> dict[str, Any]:
        with self._lock:
            return self.program.summary()

    def status_line(self) -> str:
        with self._lock:
            return self.program.status_line()

    def __enter__(self) -> "ThreadedFrontend":
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    def _thread_main(self) -> None:
        try:
            # Leaving asyncio.run cancels the client handlers, which close their sockets.
            asyncio.run(self._main())
        except BaseException as e:  # reported through start() / .error, never lost
            self._error = e
        finally:
            self._ready.set()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        await self._serve()

    async def _run_program(self, port: int) -> None:
        """Listening on `port`: run the program's clock until stop().

        A clock that fails is a program bug: it is re-raised (and reported through start()
        or `error`) rather than leaving a server that answers without a PLC program behind it.
        """
        self._port = port
        ticker = asyncio.create_task(self._tick_forever())
        self._ready.set()
        assert self._stop is not None
        stop = asyncio.create_task(self._stop.wait())
        try:
            await asyncio.wait({stop, ticker}, return_when=asyncio.FIRST_COMPLETED)
            if ticker.done():
                ticker.result()
        finally:
            stop.cancel()
            ticker.cancel()

    async def _serve(self) -> None:
        raise NotImplementedError

    async def _tick_forever(self) -> None:
        raise NotImplementedError
