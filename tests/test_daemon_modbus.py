"""End to end over a real Modbus TCP socket: synthetic camera -> bundled ONNX model -> write
loop -> pymodbus simulator running the simulated PLC program. Bounds are generous on
purpose (this runs on a noisy 2-core CI machine); speed figures live in the demo's output."""

from __future__ import annotations

import time

from helpers import read_metric, running, station_config, wait_for

from plcbridge.contract import FaultCode, ResultCode, StatusBit

PERIOD_S = 0.01


def _sim_results(sim) -> int:
    return sum(sim.summary()["results"].values())


def test_triggered_every_trigger_answered_and_verdicts_match_ground_truth(make_sim):
    sim = make_sim("triggered", trigger_hz=10)
    with running(station_config(sim.port, "triggered")) as d:
        wait_for(lambda: _sim_results(sim) >= 40, 30, "40 answered triggers")
    s = sim.summary()
    assert s["missing"] == 0 and s["skipped"] == 0, s
    assert s["protocol_errors"] == 0, s["recent_protocol_errors"]  # result_seq and part_id echo matched
    # No fail-safe in service; a trigger still undecided at stop is answered by the final block.
    assert s["results"].get("FAILSAFE", 0) == s["failsafe_faults"].get("SHUTTING_DOWN", 0) <= 1, s["failsafe_faults"]
    acc = d.journal.summary()["accuracy"]
    assert acc["labelled"] >= 40
    assert acc["agreement"] >= 0.9, acc
    # Every answered trigger was judged on a frame captured after the trigger was seen.
    assert s["latency_ms"]["count"] == _sim_results(sim)


def test_free_run_writes_newest_verdicts_matching_ground_truth(make_sim):
    sim = make_sim("free-run")
    with running(station_config(sim.port, "free-run")) as d:
        wait_for(lambda: d.journal.summary()["accuracy"]["labelled"] >= 60, 30, "60 judged frames")
        wait_for(lambda: sim.summary()["results"].get("PASS", 0) + sim.summary()["results"].get("FAIL", 0) >= 30, 10,
                 "30 verdicts seen by the PLC")
    acc = d.journal.summary()["accuracy"]
    assert acc["agreement"] >= 0.9, acc


def test_stopped_camera_gives_failsafe_within_a_few_periods_of_the_limit(make_sim):
    sim = make_sim("free-run")
    cfg = station_config(sim.port, "free-run", timing={"max_result_age_ms": 200})
    plc = sim.program
    with running(cfg) as d:
        wait_for(lambda: any(o.result_code == ResultCode.PASS or o.result_code == ResultCode.FAIL for _, o in plc.seen[-5:]),
                 30, "verdicts on the PLC")
        d.grab.stop()  # the camera stops delivering
        last_capture = d.frames.last_capture
        assert last_capture is not None
        wait_for(lambda: plc.seen and plc.seen[-1][1].status & StatusBit.FAILSAFE_ACTIVE, 5, "fail-safe on the PLC")
        time.sleep(0.6)  # past the camera stall limit too
    limit = last_capture + cfg.timing.max_result_age_ms / 1000
    after = [(t, o) for t, o in plc.seen if t > limit + PERIOD_S and not o.fault_code == FaultCode.SHUTTING_DOWN]
    first_fs = next(t for t, o in plc.seen if t > last_capture and o.status & StatusBit.FAILSAFE_ACTIVE)
    assert first_fs - limit < 3 * PERIOD_S + 0.1, f"fail-safe came {(first_fs - limit) * 1000:.0f} ms after the limit"
    # Never an old verdict: every block written past the limit is the fail-safe output.
    assert after and all(o.status & StatusBit.FAILSAFE_ACTIVE and o.result_code == ResultCode.FAILSAFE for _, o in after)
    assert {FaultCode(o.fault_code) for _, o in after} <= {FaultCode.STALE_RESULT, FaultCode.CAMERA_FAULT}
    assert FaultCode.CAMERA_FAULT in {FaultCode(o.fault_code) for _, o in after}  # the stall limit named the cause
    assert not plc.seen[-1][1].status & StatusBit.CAMERA_OK


def test_stopped_camera_answers_triggers_with_camera_fault_and_clears_ready(make_sim):
    sim = make_sim("triggered", trigger_hz=10)
    plc = sim.program
    with running(station_config(sim.port, "triggered")) as d:
        wait_for(lambda: _sim_results(sim) >= 3, 30, "first answered triggers")
        d.grab.stop()
        before = dict(sim.summary()["failsafe_faults"])
        # The trigger raised while frames stopped is answered with CAMERA_FAULT; then READY
        # goes (frames no longer arrive), and a line that waits for READY sends no more parts.
        wait_for(lambda: sim.summary()["failsafe_faults"].get("CAMERA_FAULT", 0) > before.get("CAMERA_FAULT", 0), 10,
                 "a trigger answered with CAMERA_FAULT")
        wait_for(lambda: not plc.seen[-1][1].status & StatusBit.CAMERA_OK, 5, "CAMERA_OK cleared (stall limit)")
        assert plc.seen[-1][1].fault_code == FaultCode.CAMERA_FAULT
        last = plc.seen[-1][1]
        assert not last.status & (StatusBit.READY | StatusBit.TRIGGER_READY | StatusBit.CAMERA_OK), last
        assert last.status & StatusBit.MODEL_OK and last.status & StatusBit.PLC_INPUTS_OK
    s = sim.summary()
    assert s["missing"] == 0 and s["skipped"] == 0 and s["protocol_errors"] == 0, s


def test_slow_inference_gives_inference_timeout_failsafe_on_time(make_sim, tmp_path):
    from onnx_models import slow_model, write_manifest

    model_dir = slow_model(tmp_path / "slow")  # ~1 s a run on this machine
    write_manifest(model_dir, "slow.onnx")
    sim = make_sim("triggered", trigger_hz=2)
    cfg = station_config(sim.port, "triggered", model={"manifest": str(model_dir), "inference_timeout_ms": 100},
                         timing={"result_timeout_ms": 400})
    with running(cfg):
        wait_for(lambda: sum(sim.summary()["results"].values()) >= 3, 30, "three answered triggers")
    s = sim.summary()
    assert s["results"].get("FAILSAFE", 0) == sum(s["results"].values()), s
    assert set(s["failsafe_faults"]) == {"INFERENCE_TIMEOUT"}, s
    assert s["missing"] == 0 and s["protocol_errors"] == 0, s
    # On time: the run is aborted at 100 ms; wait for a frame (<= 33 ms) and two write periods
    # come on top. Never later than the 400 ms result timeout plus a few periods.
    assert s["latency_ms"]["max"] < 400 + 50, s["latency_ms"]


def test_camera_that_cannot_open_gives_camera_fault_a_log_and_a_metric(make_sim, tmp_path):
    from plcbridge.config import parse_config

    sim = make_sim("free-run")
    raw = station_config(sim.port, "free-run").model_dump(mode="json")
    raw["camera"] = {"source": "folder", "path": str(tmp_path / "no-such-folder"), "reconnect_min_ms": 20, "reconnect_max_ms": 50}
    plc = sim.program
    with running(parse_config(raw, "<test>", env={})) as d:
        wait_for(lambda: read_metric(d, "plcbridge_camera_errors_total", kind="open") >= 2, 10, "repeated open failures")
        wait_for(lambda: plc.seen and plc.seen[-1][1].fault_code == FaultCode.CAMERA_FAULT, 5, "CAMERA_FAULT on the PLC")
    last = [o for _, o in plc.seen if o.fault_code != FaultCode.SHUTTING_DOWN][-1]
    assert last.status & StatusBit.FAILSAFE_ACTIVE and not last.status & StatusBit.CAMERA_OK
    assert last.result_code == ResultCode.FAILSAFE
