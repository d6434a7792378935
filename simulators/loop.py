"""The in-process front-end of the simulated PLC: the `loop` protocol (plcbridge/protocols.py).

No server and no socket: start() attaches the SimulatedPlc to a named channel of
plcbridge/contract/loop.py, where the bridge's loop adapter (`[plc.loop] channel`) finds it,
and runs the program's clock on the front-end's thread like every front-end. One exchange is
`program.on_outputs(outputs, t)` then `program.inputs`, under the program's lock, so it is as
atomic as a Modbus FC23 transaction and the inputs carry the answer to this very write.

Tests use it wherever the PLC is only the handshake partner: no port to find, no protocol
stack in the path. What it leaves out is the network, so:

- `port` is 0 and `host` is "" (nothing listens); the channel name is `channel` (given, or a
  fresh "plc-N" unique in this process);
- the device file's `[network]` (reply delay, jitter, the relay) is refused: with no
  connection there is nothing to delay or drop, and a test that wants a slow or lossy network
  wants a network front-end (modbus, opcua, enip);
- a PLC restart (`restart_plc()` or `program.restart_after_s`) renews the channel: the bridge's
  session ends as a real restart ends every connection, and its link reconnects. (The network
  front-ends can do that only with the relay in the path.)

A program error inside an exchange is counted as an "internal_error" protocol error and ends
that exchange with an error, as the Modbus front-end answers it with DEVICE_FAILURE.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time

from plcbridge.contract import Inputs, Outputs
from plcbridge.contract import loop as wire

from .device import DeviceSettings
from .frontend import ThreadedFrontend
from .network import Relay
from .program import SimulatedPlc

log = logging.getLogger(__name__)

TICK_S = 0.001
_names = itertools.count(1)


class LoopSimulator(ThreadedFrontend):
    """A SimulatedPlc attached to a loop channel, its clock on a thread of its own."""

    section, title = "loop", "in-process loop"
    carries_every_signal = True  # recipe_id and every optional output cross the channel

    def __init__(self, settings: DeviceSettings, program: SimulatedPlc | None = None, *,
                 channel: str | None = None) -> None:
        net = settings.network
        if net.relayed:
            raise ValueError(
                "the loop PLC has no network: [network] reply_delay_ms, reply_jitter_ms and relay apply to the "
                "network simulators (modbus, opcua, enip); remove them, or use one of those")
        super().__init__(settings, program)
        self.channel = channel if channel is not None else f"plc-{next(_names)}"
        if not self.channel:
            raise ValueError("a loop channel needs a name")
        self._attachment: wire.Attachment | None = None

    @property
    def host(self) -> str:
        """Nothing listens: no host."""
        return ""

    @property
    def network(self) -> Relay:
        raise RuntimeError("the loop PLC has no network (no relay, no connections): use a network simulator "
                           "(modbus, opcua, enip) to test one")

    @property
    def attachment(self) -> wire.Attachment | None:
        """The channel attachment now (renewed by every restart), None before start / after stop."""
        return self._attachment

    async def _serve(self) -> None:
        self._attachment = wire.attach(self.channel, self._exchange, self._lock)
        try:
            await self._run_program(0)  # port 0: nothing listens
        finally:
            with self._lock:  # not between a restart's renew and its assignment
                attachment, self._attachment = self._attachment, None
            if attachment is not None:
                attachment.detach()

    async def _tick_forever(self) -> None:
        while True:
            with self._lock:
                self.program.tick(time.monotonic())
            await asyncio.sleep(TICK_S)

    def _exchange(self, outputs: Outputs | None, t: float) -> Inputs:
        """One exchange (the channel holds the program's lock): the write, then the read;
        without outputs, the read alone."""
        try:
            if outputs is not None:
                self.program.on_outputs(outputs, t)
            return self.program.inputs
        except Exception as e:
            log.exception("simulated PLC failed on an exchange")
            self.program.protocol_error("internal_error", f"loop exchange: {e!r}")
            raise

    def _on_program_restart(self) -> None:
        """The program restarted (inside its lock): a fresh attachment under the same name, so
        the bridge's session on the old one ends, as a real PLC restart ends its connections."""
        attachment = self._attachment
        if attachment is not None:
            self._attachment = attachment.renew()
