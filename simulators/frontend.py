"""What every protocol front-end of the simulated PLC shares: an asyncio server on a thread.

Tests, the demo and `plcbridge sim` drive a front-end the same way whatever the protocol:
start() returns once the port is bound (port 0 gives an OS-chosen one), stop() ends it,
summary()/status_line() read the program under a lock. A subclass implements `_serve()` (bind
its protocol server to `_bind_address()`, then `await self._run_program(port)`, then close)
and `_tick_forever()` (the program's clock).

When the device file's `[network]` asks for it, the network relay (simulators/network.py)
listens on the configured address instead and `_bind_address()` is an internal one: `port`
is always the one clients connect to, and `network` gives the relay's runtime controls
(`sim.network.set_reply_delay(30, 5)`, `.blackhole(True)`, `.drop_connections()`).
summary() adds a program-independent "network" entry: {"relay": false} without the relay,
else its settings and connection counts (Relay.stats()).

Where the front-end's mapping carries optional outputs (its section's `optional_outputs`),
summary() adds "result_details" (SimulatedPlc.result_details: the last result's values and
totals over the verdicts) and the status line the last result's values; otherwise both are
as they were.

Recipes: the front-end tells the program which optional signals its mapping carries
(`SimulatedPlc.set_mapping`: its section's `optional_inputs` and `optional_outputs`, every
one for a front-end that carries the whole contract), and refuses a program that asks for
recipes (`recipe`, `recipe_change_every_s`) through a mapping without recipe_id and
active_recipe: the bridge would never see the recipe, nor the PLC the switch. Where the
section lists a recipe signal, or the program uses recipes, summary() adds "recipes"
(SimulatedPlc.recipe_summary) and the status line the recipe asked.

A PLC restart (`restart_plc()` from any thread, or the device file's `restart_after_s`)
resets the program (SimulatedPlc.restart) and, with the relay in the path, drops every client
connection as a real restart does; without the relay the connections stay up.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
from typing import Any

from plcbridge.contract import OPTIONAL_INPUT_SIGNALS, OPTIONAL_OUTPUT_SIGNALS

from .camera_line import CameraLine
from .device import DeviceSettings
from .network import INTERNAL_HOST, Relay
from .program import SimulatedPlc


class ThreadedFrontend:
    #: the DeviceSettings section this front-end reads ("modbus", "opcua", "enip")
    section = ""
    #: how the protocol is named in messages
    title = ""
    #: the front-end carries every signal of the contract, whatever a section lists (the loop)
    carries_every_signal = False

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
        net = settings.network
        self._relay = Relay(net.reply_delay_ms, net.reply_jitter_ms) if net.relayed else None
        self.program.add_restart_listener(self._on_program_restart)
        listed = {*self.optional_inputs, *self.optional_outputs}
        carried_inputs, carried_outputs = self._carried()
        self.program.set_mapping(carried_inputs, carried_outputs,
                                 show=bool(listed & {"recipe_id", "active_recipe", "result_recipe"}))
        missing = [n for n in ("recipe_id", "active_recipe") if n not in {*carried_inputs, *carried_outputs}]
        if settings.program.uses_recipes and missing:
            raise ValueError(
                f"program.recipe / recipe_change_every_s ask for recipes, but the {self.title} mapping does not carry "
                f"{' and '.join(missing)}: list recipe_id in {self.section}.optional_inputs and active_recipe (and "
                f"result_recipe, the recipe each result was judged with) in {self.section}.optional_outputs")
        self.camera_line: CameraLine | None = None
        if settings.camera_line.port is not None:
            self.camera_line = CameraLine(settings.camera_line)
            self.program.add_trigger_listener(self.camera_line.on_trigger)

    @property
    def host(self) -> str:
        return getattr(self.settings, self.section).host

    @property
    def network(self) -> Relay:
        """The network relay's runtime controls and counts (simulators/network.py)."""
        if self._relay is None:
            raise RuntimeError(
                f"this {self.title} simulator runs without the network relay: set network.relay = true "
                "(or a reply delay) in its device settings")
        return self._relay

    @property
    def port(self) -> int:
        """The port clients connect to (the relay's when it is in the path; useful with port 0)."""
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
        if self.camera_line is not None:
            self.camera_line.close()
        if self._loop is not None and self._stop is not None and self.running:
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(timeout)

    @property
    def optional_outputs(self) -> tuple[str, ...]:
        """The optional outputs this front-end's mapping carries (none for one without a section)."""
        return tuple(getattr(getattr(self.settings, self.section, None), "optional_outputs", ()))

    @property
    def optional_inputs(self) -> tuple[str, ...]:
        """The optional inputs this front-end's mapping carries (none for one without a section)."""
        return tuple(getattr(getattr(self.settings, self.section, None), "optional_inputs", ()))

    def _carried(self) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """The optional inputs and outputs that cross this front-end: its section's lists, or
        every one where it carries the whole contract (the loop)."""
        if self.carries_every_signal:
            return tuple(s.name for s in OPTIONAL_INPUT_SIGNALS), tuple(s.name for s in OPTIONAL_OUTPUT_SIGNALS)
        return self.optional_inputs, self.optional_outputs

    def summary(self) -> dict[str, Any]:
        carried = self.optional_outputs
        with self._lock:
            summary = self.program.summary()
            if carried:
                summary["result_details"] = self.program.result_details(carried)
            if getattr(self.program, "shows_recipes", False):  # SimulatedPlc; a test's own PLC program has none
                summary["recipes"] = self.program.recipe_summary()
        summary["network"] = self._relay.stats() if self._relay is not None else {"relay": False}
        if self.camera_line is not None:
            summary["camera_line"] = self.camera_line.stats()
        return summary

    def restart_plc(self, timeout: float = 5.0) -> None:
        """Restart the simulated PLC now (SimulatedPlc.restart under the program's lock); with
        the network relay, every client connection is dropped too. Callable from any thread.

        With the relay, the restart and the drop run as one callback on the server's loop, as
        a real PLC's restart kills its connections with it: a request of the old connection
        the loop had not served yet never reaches the restarted program (else a READY written
        before the restart could start the new program's first trigger before the bridge read
        it, a race no real PLC has)."""
        loop = self._loop
        on_loop = False
        try:
            on_loop = asyncio.get_running_loop() is loop
        except RuntimeError:
            pass
        if self._relay is None or loop is None or loop.is_closed() or not loop.is_running() or on_loop:
            self._restart_now()
            return
        done: concurrent.futures.Future[None] = concurrent.futures.Future()

        def run() -> None:
            try:
                self._restart_now()
                done.set_result(None)
            except BaseException as e:  # handed to the calling thread
                done.set_exception(e)

        try:
            loop.call_soon_threadsafe(run)
        except RuntimeError:  # the loop closed meanwhile
            self._restart_now()
            return
        done.result(timeout)

    def _restart_now(self) -> None:
        with self._lock:
            self.program.restart(time.monotonic())

    def _on_program_restart(self) -> None:
        """The program restarted (on its loop, or in restart_plc's thread): drop the clients.

        Never waits for the loop: the caller may hold the program lock the loop needs."""
        relay, loop = self._relay, self._loop
        if relay is None or loop is None or loop.is_closed():
            return
        try:
            on_loop = asyncio.get_running_loop() is loop
        except RuntimeError:
            on_loop = False
        if on_loop:
            relay.drop_connections()
            return
        try:
            loop.call_soon_threadsafe(relay.drop_connections)
        except RuntimeError:  # the loop closed meanwhile: no connections left to drop
            pass

    def status_line(self) -> str:
        carried = self.optional_outputs
        with self._lock:
            line = self.program.status_line()
            if carried:
                last = self.program.result_details(carried)["last"]
                line += "".join(f" {name}={value}" for name, value in last.items())
        if self._relay is not None:
            r = self._relay
            line += f" conns={r.connections_accepted} open={r.connections_open}" + (" BLACKHOLE" if r.blackholed else "")
        return line

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
        try:
            await self._serve()
        finally:
            if self._relay is not None:
                await self._relay.close()

    def _bind_address(self) -> tuple[str, int]:
        """Where the protocol server listens: the configured address, or an internal one
        (an OS-chosen port on 127.0.0.1) when the network relay listens there instead."""
        if self._relay is not None:
            return INTERNAL_HOST, 0
        where = getattr(self.settings, self.section)
        return where.host, where.port

    async def _expose(self, server_port: int) -> int:
        """The protocol server listens on `server_port`: start the relay in front of it if
        there is one; returns (and `port` reports) the port clients connect to."""
        if self._relay is not None:
            where = getattr(self.settings, self.section)
            self._port = await self._relay.start(where.host, where.port, server_port)
        else:
            self._port = server_port
        return self._port

    async def _run_program(self, port: int | None = None) -> None:
        """Listening on `port` (None: `_expose()` was called already): run the program's
        clock until stop().

        A clock that fails is a program bug: it is re-raised (and reported through start()
        or `error`) rather than leaving a server that answers without a PLC program behind it.
        """
        if port is not None:
            await self._expose(port)
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
            if self._relay is not None:  # clients see the PLC go before its server stops
                await self._relay.close()

    async def _serve(self) -> None:
        raise NotImplementedError

    async def _tick_forever(self) -> None:
        raise NotImplementedError
