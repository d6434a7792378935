"""The PLC link: a connection the write loop can use without ever waiting for a connect.

A background connector thread builds a fresh adapter, connects it (with bounded
exponential backoff between failures) and hands it over. From then on only the write
loop's thread uses it. When an exchange fails, the write loop drops the adapter and the
connector closes it and builds a new one; the loop keeps its cadence throughout, writing
nowhere while there is no connection.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable

from plcbridge.adapters.plc.base import PlcAdapter, PlcError, adapter_class
from plcbridge.backoff import Backoff
from plcbridge.contract import Inputs, Outputs
from plcbridge.logs import get_logger, log_event
from plcbridge.metrics import Metrics

log = get_logger("plc")


class PlcLink:
    def __init__(self, settings, metrics: Metrics, factory: Callable[[object], PlcAdapter] | None = None) -> None:
        self.settings = settings
        self.metrics = metrics
        self._factory = factory or adapter_class(settings.protocol)
        self._backoff = Backoff(settings.reconnect_min_ms / 1000, settings.reconnect_max_ms / 1000)
        self._adapter: PlcAdapter | None = None  # owned by the write loop once set
        self._dropped: list[PlcAdapter] = []
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._ever_connected = False
        self.last_error: str | None = None
        self._thread = threading.Thread(target=self._connector, name="plc-connector", daemon=True)

    @property
    def connected(self) -> bool:
        return self._adapter is not None

    def start(self) -> "PlcLink":
        self._wake.set()
        self._thread.start()
        return self

    def exchange(self, outputs: Outputs, deadline_s: float) -> Inputs | None:
        """One exchange, or None when there is no connection (or it just failed)."""
        adapter = self._adapter
        if adapter is None:
            return None
        t0 = time.monotonic()
        try:
            inputs = adapter.exchange(outputs, deadline_s)
        except PlcError as e:
            self._drop(adapter, f"exchange failed: {e}")
            return None
        took = time.monotonic() - t0
        if took > deadline_s:
            # Complete but late (this process was slow, not the PLC): counted, connection kept.
            self.metrics.plc_late_exchanges.inc()
            log_event(log, "plc_exchange_late", logging.WARNING, took_ms=round(took * 1000, 2),
                      deadline_ms=round(deadline_s * 1000, 2), rate_key="late")
        return inputs

    def _drop(self, adapter: PlcAdapter, why: str) -> None:
        with self._lock:
            self._adapter = None
            self._dropped.append(adapter)
        self.last_error = why
        self.metrics.plc_connected.set(0)
        self.metrics.plc_errors.labels("exchange").inc()
        log_event(log, "plc_connection_lost", logging.WARNING, target=adapter.describe(), reason=why)
        self._wake.set()

    def _close_dropped(self) -> None:
        with self._lock:
            dropped, self._dropped = self._dropped, []
        for a in dropped:
            a.close()

    def _connector(self) -> None:
        while not self._stop.is_set():
            self._wake.wait()
            self._close_dropped()
            if self._stop.is_set():
                break
            if self._adapter is not None:
                self._wake.clear()
                continue
            adapter = self._factory(self.settings)
            try:
                adapter.connect()
            except Exception as e:  # noqa: BLE001 - any failure to connect is retried
                adapter.close()
                delay = self._backoff.next()
                self.last_error = f"connect failed: {e}"
                self.metrics.plc_errors.labels("connect").inc()
                log_event(
                    log, "plc_connect_failed", logging.WARNING,
                    target=adapter.describe(), reason=str(e), retry_in_ms=round(delay * 1000), rate_key=adapter.describe(),
                )
                self._stop.wait(delay)
                continue
            with self._lock:
                if self._stop.is_set():
                    adapter.close()
                    break
                self._adapter = adapter
                self._wake.clear()
            self._backoff.reset()
            self.last_error = None
            self.metrics.plc_connected.set(1)
            if self._ever_connected:
                self.metrics.plc_reconnects.inc()
            log_event(log, "plc_connected", logging.INFO, target=adapter.describe(), reconnect=self._ever_connected)
            self._ever_connected = True

    def close(self) -> None:
        """Stop reconnecting and close the connection. Call after the final write."""
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=5)
        with self._lock:
            adapter, self._adapter = self._adapter, None
        if adapter is not None:
            adapter.close()
        self._close_dropped()
        self.metrics.plc_connected.set(0)


__all__ = ["PlcLink", "PlcError"]
