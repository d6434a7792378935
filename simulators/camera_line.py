"""The wire from the PLC's output to the camera's trigger input, emulated on 127.0.0.1.

On a hardware-triggered station the PLC pulses an output wired to the camera's trigger
input at the moment it raises `trigger_seq`; the camera exposes once per pulse and the bridge
pairs frames with triggers by time. Here the simulated PLC sends one UDP datagram to
127.0.0.1:`camera_line.port` per pulse, and the synthetic camera with `trigger = "hardware"`
takes one frame per datagram. The payload (the trigger_seq, as ASCII) is for people reading
a capture; the camera must not use it, because a real wire carries only an edge.

`drop_every` and `extra_every` make the wire rude on purpose: every Nth pulse is lost (the
bridge must answer that trigger NO_FRAME, never pair it with the next part's frame), or an
extra pulse follows every Nth trigger (a frame no trigger asked for, counted and left).
"""

from __future__ import annotations

import socket

from .device import CameraLineSettings

HOST = "127.0.0.1"


class CameraLine:
    def __init__(self, settings: CameraLineSettings) -> None:
        assert settings.port is not None
        self.settings = settings
        self._addr = (HOST, settings.port)
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._sock.setblocking(False)
        self.pulses = 0
        self.dropped = 0
        self.extra = 0
        self._triggers = 0

    def on_trigger(self, seq: int, t: float) -> None:
        """Called by the PLC program as it raises trigger_seq (on the program's thread)."""
        self._triggers += 1
        s = self.settings
        if s.drop_every and self._triggers % s.drop_every == 0:
            self.dropped += 1
        else:
            self._send(seq)
        if s.extra_every and self._triggers % s.extra_every == 0:
            self.extra += 1
            self._send(seq)

    def _send(self, seq: int) -> None:
        try:
            self._sock.sendto(str(seq).encode(), self._addr)
            self.pulses += 1
        except OSError:  # nobody listening yet (ECONNREFUSED on loopback): a pulse into nothing
            pass

    def stats(self) -> dict[str, int]:
        return {"port": self._addr[1], "pulses": self.pulses, "dropped": self.dropped, "extra": self.extra}

    def close(self) -> None:
        self._sock.close()
