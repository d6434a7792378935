"""`plcbridge promote` (plcbridge/tools/promote.py): the shadow model becomes the live one
through a reload of a real daemon process (SIGHUP), the station file edited in place (the two
manifests swapped, every other line kept); a candidate the reload refuses leaves the file as
it was and the live model serving; nothing to promote is exit 2 with the file untouched."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from helpers import closed_tcp_port, wait_for
from onnx_models import constant_model, copy_demo, slow_model

from plcbridge.tools.promote import PromoteError, swap_manifests

STATION = """\
# line 3, station 7: the defect check
[station]
name = "promote-test"   # as the journal names it
mode = "triggered"

[camera]
source = "synthetic"

[model]
manifest = "{live}"    # the model that decides
inference_timeout_ms = 200
latency_check_runs = 5

[model.shadow]
# the candidate, judged beside it
manifest = '{shadow}'

[plc]
protocol = "modbus"
host = "127.0.0.1"
port = {plc_port}

[metrics]
enabled = true
host = "127.0.0.1"
port = {metrics_port}

[logging]
format = "json"
"""


def test_swap_manifests_keeps_every_other_line():
    text = STATION.format(live="models/a", shadow="models/b", plc_port=502, metrics_port=9108)
    out = swap_manifests(text, "models/a", "models/b")
    assert 'manifest = "models/b"    # the model that decides' in out
    assert 'manifest = "models/a"\n' in out
    changed = [(a, b) for a, b in zip(text.splitlines(), out.splitlines()) if a != b]
    assert len(changed) == 2 and len(out.splitlines()) == len(text.splitlines())


def test_swap_manifests_writes_an_implicit_live_manifest_and_refuses_what_it_cannot_edit():
    out = swap_manifests('[model]\ndevice = "cpu"\n[model.shadow]\nmanifest = "c"\n', "builtin:demo", "c")
    assert out == '[model]\nmanifest = "c"\ndevice = "cpu"\n[model.shadow]\nmanifest = "builtin:demo"\n'
    with pytest.raises(PromoteError, match=r"\[model.shadow\] has no `manifest"):
        swap_manifests('[model]\nmanifest = "a"\nshadow = { manifest = "c" }\n', "a", "c")


def _promote(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "plcbridge", "promote", *args], capture_output=True, text=True,
                          timeout=180)


def _status(port: int) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/status", timeout=5) as r:
        return json.loads(r.read())


class DaemonProcess:
    """`plcbridge run --config FILE` as the line PC runs it; its log into a file."""

    def __init__(self, station: Path, metrics_port: int) -> None:
        self.port = metrics_port
        self.log = station.with_suffix(".log")
        self._log_file = self.log.open("w")
        self.p = subprocess.Popen([sys.executable, "-m", "plcbridge", "run", "--config", str(station)],
                                  stdout=self._log_file, stderr=subprocess.STDOUT)

    def status(self) -> dict[str, Any]:
        return _status(self.port)

    def ready(self) -> bool:
        try:
            s = self.status()
        except OSError:
            return False
        return bool(s.get("ready")) and bool((s.get("shadow") or {}).get("state") == "running")

    def stop(self) -> None:
        self.p.send_signal(signal.SIGTERM)
        try:
            self.p.wait(timeout=20)
        finally:
            self._log_file.close()


@pytest.fixture
def station(make_sim, tmp_path: Path):
    sim = make_sim("triggered", trigger_hz=10, watchdog_ms=60_000)
    live = copy_demo(tmp_path / "live", version=1).parent
    candidate = constant_model(tmp_path / "candidate", 0.1, "always_pass", version=22)
    port = closed_tcp_port()
    path = tmp_path / "station.toml"

    def write(shadow: Path) -> tuple[Path, DaemonProcess]:
        path.write_text(STATION.format(live=live, shadow=shadow, plc_port=sim.port, metrics_port=port))
        d = DaemonProcess(path, port)
        wait_for(d.ready, 60, f"the daemon ready with its shadow running (log: {d.log})")
        return path, d

    return write, live, candidate


def test_promote_makes_the_shadow_live_through_a_reload_of_the_running_daemon(station):
    write, live, candidate = station
    path, d = write(candidate)
    try:
        before = path.read_text()
        assert d.status()["model"]["version"] == 1
        r = _promote("--config", str(path), "--pid", str(d.p.pid))
        assert r.returncode == 0, r.stderr
        assert "live: always_pass v22" in r.stderr
        s = d.status()
        assert s["model"]["version"] == 22 and s["reloads"]["applied"] == 1
        # The previous live model is the shadow now, and the watch runs on the new one.
        wait_for(lambda: (d.status()["shadow"] or {}).get("state") == "running", 60, "the new shadow running")
        assert d.status()["shadow"]["candidate"]["version"] == 1
        assert d.status()["watch"]["state"] in ("watching", "passed", "tripped")
        shown = subprocess.run([sys.executable, "-m", "plcbridge", "status", "--url", f"http://127.0.0.1:{d.port}"],
                               capture_output=True, text=True, timeout=60).stdout
        assert "shadow: demo-defect-cnn v1 running" in shown and "watch of v22 (last-known-good v1)" in shown, shown
        after = path.read_text()
        assert f'manifest = "{candidate}"    # the model that decides' in after
        assert f'manifest = "{live}"\n' in after and after.count("\n") == before.count("\n")
    finally:
        d.stop()
    assert d.p.returncode == 0


def test_a_candidate_the_reload_refuses_leaves_the_file_and_the_live_model_as_they_were(station, tmp_path):
    write, live, _ = station
    slow = slow_model(tmp_path / "slow")  # about 1 s a run: far over half of inference_timeout_ms
    path, d = write(slow)
    try:
        before = path.read_text()
        r = _promote("--config", str(path), "--pid", str(d.p.pid))
        assert r.returncode == 1, r.stderr
        assert "refused the reload" in r.stderr and "station file is as it was" in r.stderr
        assert path.read_text() == before
        s = d.status()
        assert s["model"]["version"] == 1 and s["reloads"]["refused"] == 1 and s["ready"]
    finally:
        d.stop()


def test_nothing_to_promote_is_exit_2_and_the_file_untouched(tmp_path):
    path = tmp_path / "station.toml"
    text = '[camera]\nsource = "synthetic"\n[model]\nmanifest = "builtin:demo"\n'
    path.write_text(text)
    r = _promote("--config", str(path), "--no-reload")
    assert r.returncode == 2 and "no [model.shadow]: nothing to promote" in r.stderr
    assert path.read_text() == text
