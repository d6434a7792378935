"""SIGHUP hot reload against the simulator: a good model is swapped in without a missed
write tick; every broken model or config is refused whole and the last good model serves on."""

from __future__ import annotations

import hashlib
import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import onnx
import pytest
from helpers import wait_for
from onnx_models import copy_demo

from plcbridge.contract import StatusBit
from plcbridge.inference.manifest import load_manifest

PERIOD_S = 0.01


class DaemonProcess:
    """`plcbridge run` in a subprocess, its JSON log lines collected as they come."""

    def __init__(self, config: Path) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "plcbridge", "run", "--config", str(config)],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.events: list[dict] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.startswith("{"):
                self.events.append(json.loads(line))

    def named(self, event: str) -> list[dict]:
        return [e for e in self.events if e["event"] == event]

    def hup_and_wait(self, event: str) -> dict:
        before = len(self.named("reload_failed")) + len(self.named("reload_applied"))
        self.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: len(self.named("reload_failed")) + len(self.named("reload_applied")) > before, 30,
                 "the reload's outcome")
        outcome = (self.named("reload_failed") + self.named("reload_applied"))
        outcome.sort(key=lambda e: e["ts"])
        assert outcome[-1]["event"] == event, outcome[-1]
        return outcome[-1]

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(15)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()


def _station(path: Path, port: int, manifest: Path | str, extra: str = "") -> None:
    path.write_text(f'[camera]\nsource = "synthetic"\n[model]\nmanifest = "{manifest}"\n[plc]\nport = {port}\n[metrics]\nenabled = false\n'
                    f'[logging]\nformat = "json"\n{extra}')


def _opset_too_new(model_dir: Path) -> Path:
    """The demo model declaring opset 99, newer than any onnxruntime knows; hash kept right."""
    manifest = copy_demo(model_dir, version=9)
    onnx_file = model_dir / load_manifest(manifest)[0].file
    model = onnx.load(str(onnx_file))
    model.opset_import[0].version = 99
    onnx.save(model, str(onnx_file))
    return _rewrite(manifest, opset=99, sha256=hashlib.sha256(onnx_file.read_bytes()).hexdigest())


def _rewrite(manifest: Path, **fields) -> Path:
    raw = json.loads(manifest.read_text())
    raw.update(fields)
    manifest.write_text(json.dumps(raw))
    return manifest


def _results_with_version(plc, version: int, after: float) -> int:
    return sum(1 for t, o in plc.seen if t > after and o.status & StatusBit.RESULT_VALID and o.model_version == version)


@pytest.mark.serial  # the heartbeat-gap bound is two periods: no other test may share the CPU
def test_reload_swaps_good_models_and_refuses_bad_ones(make_sim, tmp_path):
    sim = make_sim("triggered", trigger_hz=20)
    plc = sim.program
    v1 = copy_demo(tmp_path / "v1", version=1).parent
    v2 = copy_demo(tmp_path / "v2", version=2).parent
    cfg = tmp_path / "station.toml"
    _station(cfg, sim.port, v1)
    d = DaemonProcess(cfg)
    try:
        wait_for(lambda: _results_with_version(plc, 1, 0) >= 3, 30, "results from model v1")

        # A good new model: swapped in, model_version follows, no write tick missed.
        _station(cfg, sim.port, v2)
        t_hup = time.monotonic()
        applied = d.hup_and_wait("reload_applied")
        assert (applied["model_version"], applied["previous_model_version"]) == (2, 1)
        assert applied["changed"] == ["model.manifest"] and "changed: model.manifest" in applied["detail"]
        assert "v1 -> v2" in applied["detail"], applied["detail"]
        wait_for(lambda: _results_with_version(plc, 2, t_hup) >= 3, 10, "results from model v2")
        window = [t for t, o in plc.seen if t >= t_hup - 0.1]
        gaps = [b - a for a, b in zip(window, window[1:])]
        # Two periods, plus 5 ms for the simulator's own receive jitter on a busy 2-core machine.
        assert max(gaps) <= 2 * PERIOD_S + 0.005, f"heartbeat gap {max(gaps) * 1000:.1f} ms during the reload"

        # Broken models: each refused with its reason, v2 keeps serving.
        corrupt = copy_demo(tmp_path / "corrupt", version=3)
        onnx_file = corrupt.parent / load_manifest(corrupt)[0].file
        onnx_file.write_bytes(b"\x08\x07garbage" * 100)
        _rewrite(corrupt, sha256=hashlib.sha256(onnx_file.read_bytes()).hexdigest())  # hash matches: the content is bad
        wrong_hash = _rewrite(copy_demo(tmp_path / "hash", version=4), sha256="0" * 64)
        wrong_shape = copy_demo(tmp_path / "shape", version=5)
        raw = json.loads(wrong_shape.read_text())
        raw["input"]["shape"] = [1, 3, 64, 64]
        raw["preprocessing"]["resize"] = [64, 64]
        wrong_shape.write_text(json.dumps(raw))
        too_new = _opset_too_new(tmp_path / "opset")
        cases = {
            "corrupt file": (corrupt.parent, ("onnx", "corrupt", "not a readable", "parse", "protobuf", "load")),
            "wrong hash": (wrong_hash.parent, ("sha256",)),
            "wrong input shape": (wrong_shape.parent, ("shape",)),
            "too-new opset": (too_new.parent, ("opset",)),
            "missing file": (tmp_path / "nowhere", ("cannot read", "no such", "not found", "missing")),
        }
        for name, (model_dir, words) in cases.items():
            _station(cfg, sim.port, model_dir)
            t = time.monotonic()
            failed = d.hup_and_wait("reload_failed")
            assert failed["what"] == "model", (name, failed)
            assert any(w in failed["reason"].lower() for w in words), (name, failed["reason"])
            assert failed["serving_model_version"] == 2
            wait_for(lambda: _results_with_version(plc, 2, t) >= 2, 10, f"v2 still serving after the {name}")

        # A bad config: refused, the running config unchanged.
        cfg.write_text("[plc\nport = 1\n")
        failed = d.hup_and_wait("reload_failed")
        assert failed["what"] == "config" and "not valid TOML" in failed["reason"]
        # A config that needs a new PLC connection: refused whole, never half applied.
        _station(cfg, sim.port + 1, v1)
        failed = d.hup_and_wait("reload_failed")
        assert failed["what"] == "config" and "plc" in failed["reason"] and "restart" in failed["reason"]
        t = time.monotonic()
        wait_for(lambda: _results_with_version(plc, 2, t) >= 2, 10, "v2 still serving after the refused configs")
        assert d.stop() == 0
    finally:
        if d.proc.poll() is None:
            d.proc.kill()
    s = sim.summary()
    assert s["missing"] == 0 and s["protocol_errors"] == 0, s


def test_a_reload_names_every_changed_key_and_the_model_change(tmp_path):
    from types import SimpleNamespace

    from plcbridge.config import changed_keys, parse_config
    from plcbridge.daemon import reload_changes

    v1, v2 = copy_demo(tmp_path / "v1", version=1), copy_demo(tmp_path / "v2", version=2)
    old = parse_config({"model": {"manifest": str(v1.parent)}}, env={})
    new = parse_config({"model": {"manifest": str(v2.parent), "latency_check_runs": 20},
                        "failsafe": {"result_code": "FAIL"}}, env={})
    keys = changed_keys(old, new)
    assert keys == ["failsafe.result_code", "model.latency_check_runs", "model.manifest"]
    assert changed_keys(old, old) == []

    def model(path):
        m = load_manifest(path)[0]
        return SimpleNamespace(manifest=m, name=m.name, version=m.version)

    text = reload_changes(keys, model(v1), model(v2))
    assert text.startswith("changed: failsafe.result_code, model.latency_check_runs, model.manifest; ")
    assert "v1 -> v2" in text
    # The files behind an unchanged path replaced: no key changed, and the model change still said.
    same_path = reload_changes([], model(v1), model(_rewrite(copy_demo(tmp_path / "v3", version=3), sha256="a" * 64)))
    assert same_path.startswith("no key of the station file changed; ") and "v1 -> v3" in same_path
    assert "sha256" in same_path and "nothing" not in same_path
    assert "the model is the same" in reload_changes([], model(v1), model(v1))
