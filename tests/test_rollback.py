"""Automatic rollback in the daemon ([model.watch], plcbridge/rollback.py): after a model change
by reload, each watch trigger is tripped by a real model built to trip it, and the bridge
swaps the last-known-good back in at once, sets MODEL_ROLLED_BACK in the blocks the PLC gets
(on the simulated PLC over Modbus on 127.0.0.1), says which trigger and the figures, and
shows it in /api/status's `reloads.rolled_back`. A good model change passes its watch and
sets nothing; a model change a person applies after a rollback clears the bit.

Each test keeps one trigger on (the others' thresholds unset) so that the one under test is
the one that trips."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from helpers import wait_for
from onnx_models import constant_model, copy_demo, nan_band_model, slow_model

from plcbridge.contract import StatusBit


def only(trigger: str) -> dict[str, Any]:
    """[model.watch] with that trigger alone on."""
    return {"triggers": [trigger]}


def _toml(value: Any) -> str:
    import json

    return json.dumps(value)  # a string, a number, a list of strings: as TOML writes them


def _station(path: Path, sim: Any, live: Path | str, watch: dict[str, Any], shadow: Path | str | None = None,
             camera: dict[str, Any] | None = None, timeout_ms: int = 200) -> Path:
    """A free-run station file (a verdict per frame: the watch fills fast) on the simulator."""
    lines = ["[station]", 'name = "watch"', 'mode = "free-run"',
             "[camera]", 'source = "synthetic"', "fps = 30", *(f"{k} = {_toml(v)}" for k, v in (camera or {}).items()),
             "[model]", f'manifest = "{live}"', f"inference_timeout_ms = {timeout_ms}", "latency_check_runs = 5",
             f"latency_budget_ms = {timeout_ms}",
             *([] if shadow is None else ["[model.shadow]", f'manifest = "{shadow}"']),
             "[model.watch]", *(f"{k} = {_toml(v)}" for k, v in watch.items()),
             "[plc]", 'protocol = "modbus"', 'host = "127.0.0.1"', f"port = {sim.port}",
             "[metrics]", "enabled = false", ""]
    path.write_text("\n".join(lines))
    return path


class Station:
    """A daemon in this process on a station file, its blocks spied on as they go to the link."""

    def __init__(self, path: Path) -> None:
        from plcbridge.config import load_config
        from plcbridge.daemon import Daemon

        self.path = path
        self.d = Daemon(load_config(path), config_path=path)
        self.blocks: list[Any] = []
        original = self.d.link.post

        def spy(block_id: int, block: Any, token: Any, session: int) -> None:
            self.blocks.append(block)
            original(block_id, block, token, session)

        self.d.link.post = spy

    def __enter__(self) -> "Station":
        self.d.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.d.stop()

    def decisions(self, n: int) -> None:
        """At least n decisions journaled (and so handed to the watch) since the daemon started."""
        wait_for(lambda: sum(self.d.journal.summary()["results"].values()) >= n, 30, f"{n} decisions")


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("watch-models")
    return {
        "good": copy_demo(root / "good", version=1).parent,
        "also_good": copy_demo(root / "also_good", version=2).parent,
        "fails": constant_model(root / "fails", 0.9, "always_fail", version=31),
        "passes": constant_model(root / "passes", 0.1, "always_pass", version=32),
        # 640x480 camera frames are above its frame limits (validate-model's 256x256 are not):
        # every frame of that camera BAD_FRAME.
        "bad_frames": copy_demo(root / "bad_frames", version=33, frame={"max_size": [320, 320]}).parent,
        "slow": _versioned(slow_model(root / "slow", matmuls=25, size=512), 34),
        # NaN for frames of mean grey 0.05..0.4: a camera at 40 % light; validate-model's are outside.
        "nan": nan_band_model(root / "nan", 0.05, 0.4, version=35),
    }


def _versioned(model_dir: Path, version: int) -> Path:
    import json

    manifest = model_dir / "manifest.json"
    raw = json.loads(manifest.read_text())
    raw["version"] = version
    manifest.write_text(json.dumps(raw))
    return model_dir


def _rolled_back(st: Station, trigger: str, good: int, bad: int) -> dict[str, Any]:
    d = st.d
    wait_for(lambda: d.rolled_back is not None, 60, f"the {trigger} trigger to trip")
    trip = d.reload_view()["rolled_back"]
    assert trip["trigger"] == trigger, trip
    assert trip["old_version"] == good and trip["new_version"] == bad
    assert d.worker.model_version == good, "the last-known-good judges again"
    wait_for(lambda: st.blocks[-1].status & StatusBit.MODEL_ROLLED_BACK and st.blocks[-1].model_version == good, 5,
             "MODEL_ROLLED_BACK in the blocks, with the good model's version")
    assert st.blocks[-1].status & StatusBit.READY, "READY is unaffected: the station still inspects"
    assert d._count("plcbridge_model_rollbacks_total", trigger=trigger) == 1
    return trip


def _change(st: Station, sim: Any, live: Path, watch: dict[str, Any], **kw: Any) -> None:
    _station(st.path, sim, live, watch, **kw)
    assert st.d.reload(), st.d.last_reload


WATCH = {"decisions": 60, "min_decisions": 15}


def test_a_good_change_passes_its_watch_and_sets_nothing(make_sim, models, tmp_path):
    sim = make_sim("free-run", watchdog_ms=60_000)
    watch = {**WATCH, "max_reject_rate_change": 0.3, "max_failsafe_rate": 0.2, "max_inference_errors": 3,
             "triggers": ["failsafe_rate", "reject_rate_change", "inference_errors"]}
    with Station(_station(tmp_path / "s.toml", sim, models["good"], watch)) as st:
        st.decisions(30)
        _change(st, sim, models["also_good"], watch)
        good = st.d._last_good
        assert good is not None and good.version == 1  # kept loaded while the watch may roll back to it
        wait_for(lambda: st.d.watch.view()["state"] == "passed", 60, "the watch to pass")
        assert st.d.rolled_back is None and st.d.worker.model_version == 2
        # Passed: nothing rolls back to v1 now, so its session is let go and closed by the worker.
        wait_for(lambda: st.d._last_good is None and good._session is None, 10, "the last-known-good released")
    assert not [b for b in st.blocks if b.status & StatusBit.MODEL_ROLLED_BACK]


def test_reject_rate_change_rolls_back_a_model_that_fails_every_part(make_sim, models, tmp_path):
    sim = make_sim("free-run", watchdog_ms=60_000)
    watch = {**WATCH, **only("reject_rate_change"), "max_reject_rate_change": 0.15}
    with Station(_station(tmp_path / "s.toml", sim, models["good"], watch)) as st:
        st.decisions(40)  # the good model's reject rate: the baseline
        _change(st, sim, models["fails"], watch)
        trip = _rolled_back(st, "reject_rate_change", 1, 31)
        assert trip["figure"] > 0.15 and trip["threshold"] == 0.15


def test_failsafe_rate_rolls_back_a_model_that_refuses_the_cameras_frames(make_sim, models, tmp_path):
    sim = make_sim("free-run", watchdog_ms=60_000)
    watch = {**WATCH, **only("failsafe_rate"), "max_failsafe_rate": 0.05}
    big = {"width": 640, "height": 480}
    with Station(_station(tmp_path / "s.toml", sim, models["good"], watch, camera=big)) as st:
        st.decisions(25)
        _change(st, sim, models["bad_frames"], watch, camera=big)
        trip = _rolled_back(st, "failsafe_rate", 1, 33)
        assert trip["figure"] > 0.05


def test_inference_p99_rolls_back_a_model_over_its_budget(make_sim, models, tmp_path):
    sim = make_sim("free-run", watchdog_ms=60_000)
    watch = {**WATCH, **only("inference_p99"), "max_inference_p99_ms": 20}
    with Station(_station(tmp_path / "s.toml", sim, models["good"], watch, timeout_ms=2000)) as st:
        st.decisions(25)
        _change(st, sim, models["slow"], watch, timeout_ms=2000)
        trip = _rolled_back(st, "inference_p99", 1, 34)
        assert trip["figure"] > 20


def test_inference_errors_roll_back_a_model_that_gives_nan_on_this_cameras_frames(make_sim, models, tmp_path):
    sim = make_sim("free-run", watchdog_ms=60_000)
    dim = {"lighting_change_after_s": 0.0, "lighting_gain": 0.4}  # frames of mean grey ~0.15..0.27
    watch = {**WATCH, **only("inference_errors"), "max_inference_errors": 3}
    with Station(_station(tmp_path / "s.toml", sim, models["good"], watch, camera=dim)) as st:
        st.decisions(25)
        _change(st, sim, models["nan"], watch, camera=dim)
        trip = _rolled_back(st, "inference_errors", 1, 35)
        assert trip["figure"] >= 3


def test_agreement_with_the_previous_model_run_as_the_shadow_rolls_back_and_a_reload_clears_the_bit(
        make_sim, models, tmp_path):
    """As after `plcbridge promote`: the new live model passes every part, the previous one,
    now the shadow, does not agree often enough."""
    sim = make_sim("free-run", watchdog_ms=60_000)
    # A longer window: the shadow runs at idle priority, and on a loaded machine it compares
    # the 15 verdicts the trigger needs more slowly than 60 decisions go by.
    watch = {**WATCH, "decisions": 900, **only("agreement"), "min_agreement": 0.9}
    with Station(_station(tmp_path / "s.toml", sim, models["good"], watch)) as st:
        st.decisions(25)
        _change(st, sim, models["passes"], watch, shadow=models["good"])
        trip = _rolled_back(st, "agreement", 1, 32)
        assert trip["figure"] < 0.9
        # A person applies a model change: the bit clears.
        _change(st, sim, models["also_good"], {**WATCH, **only("inference_errors")})
        wait_for(lambda: not st.blocks[-1].status & StatusBit.MODEL_ROLLED_BACK, 5, "MODEL_ROLLED_BACK cleared")
        assert st.d.rolled_back is None and st.d.worker.model_version == 2
