"""SignalWaiter: signals reach the main loop through a socket, no lock taken in a handler.

Each case runs in a process of its own, as the daemon and the simulator do: Python delivers
signals to the main thread, and a test worker's main thread is not ours to re-handle."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

_SCRIPT = textwrap.dedent("""
    import json, os, signal, threading, time
    from plcbridge.signals import SignalWaiter

    out = {}
    with SignalWaiter(signal.SIGTERM, signal.SIGHUP) as s:
        out["timeout"] = s.wait(0.05)
        threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGHUP)).start()
        t = time.monotonic()
        out["woken"] = s.wait(20)
        out["woken_after_s"] = time.monotonic() - t
        os.kill(os.getpid(), signal.SIGHUP)
        os.kill(os.getpid(), signal.SIGTERM)
        out["both"] = s.wait(0)
        out["none_left"] = s.wait(0)
    out["handler_restored"] = signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    out["wakeup_fd_restored"] = signal.set_wakeup_fd(-1) == -1
    print(json.dumps(out))
""")

# Thousands of SIGHUPs from another thread while the main thread waits in short slices, then
# SIGTERM: the waiter keeps up (one byte a signal in its socket) and the loop still ends.
_STORM = textwrap.dedent("""
    import os, signal, threading
    from plcbridge.signals import SignalWaiter

    def storm():
        for _ in range(3000):
            os.kill(os.getpid(), signal.SIGHUP)
        os.kill(os.getpid(), signal.SIGTERM)

    hups = 0
    with SignalWaiter(signal.SIGTERM, signal.SIGHUP) as s:
        threading.Thread(target=storm, daemon=True).start()
        while True:
            got = s.wait(0.001)
            hups += got.count(signal.SIGHUP)
            if signal.SIGTERM in got:
                break
    print(hups)
""")


def _run(script: str) -> str:
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_wait_returns_the_signals_that_arrived_in_order_and_exit_restores_the_handlers():
    out = json.loads(_run(_SCRIPT))
    assert out["timeout"] == []
    assert out["woken"] == [1]  # SIGHUP, before the 20 s were up
    assert out["woken_after_s"] < 10, out
    assert out["both"] == [1, 15] and out["none_left"] == []  # SIGHUP then SIGTERM
    assert out["handler_restored"] and out["wakeup_fd_restored"], out


def test_a_sigterm_after_a_storm_of_sighups_still_ends_the_loop():
    hups = int(_run(_STORM))
    # Linux merges a standard signal while one is pending, so fewer arrive than were sent.
    assert 1 <= hups <= 3000
