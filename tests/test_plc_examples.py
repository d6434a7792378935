"""The three triggered-mode PLC examples of docs/plc-interface.md, run as scan-cycle PLCs.

tests/scan_plcs.py translates each example line by line (ModbusExample, LogixExample,
SclExample). Here:

- the translations are checked against the page: every code line of each example, in
  order, is the `# ST:` comment of a translated statement, and every variable the examples
  use is declared (or, for Logix, listed among the tags to create);
- each translation is driven scan by scan with a scripted output image, no daemon: the 1 s
  result timeout runs from each part's own trigger, a heartbeat that never changed is no
  bridge, three fail-safe answers in a row raise RepeatAlarm, part_id's words follow
  plc.modbus.word_order;
- each translation runs as the PLC program behind the project's real protocol server
  (Modbus in both word orders, Logix over EtherNet/IP, SCL over OPC UA), against the real
  daemon in this process, through a PLC restart and a bridge restart, with parts coming
  every 100-150 ms: every part gets exactly one outcome and no part passes without the
  bridge's PASS for that very part and trigger.

Bounds are generous and nothing is timed for speed: the test machine has 2 slow cores and
runs 4 test workers.
"""

from __future__ import annotations

import difflib
import inspect
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from helpers import station_config, wait_for
from scan_plcs import SCAN_S, Example, LogixExample, ModbusExample, PartLine, ScanPlc, SclExample
from test_trigger_modes import _recording_daemon

from plcbridge import protocols
from plcbridge.contract import FaultCode, Inputs, Outputs, ResultCode, StatusBit, next_seq
from plcbridge.decision import Decision
from plcbridge.simulators.device import load_device

DOC = Path(__file__).resolve().parents[1] / "docs" / "plc-interface.md"

HEADINGS: dict[type[Example], str] = {
    ModbusExample: "### Triggered mode, Modbus TCP (IEC 61131-3)",
    LogixExample: "### Structured Text example (Studio 5000 Logix Designer, triggered mode)",
    SclExample: "### SCL example (Siemens S7-1500, triggered mode)",
}
WATCHDOG_S: dict[type[Example], float] = {ModbusExample: 0.300, LogixExample: 0.300, SclExample: 0.500}

EXAMPLES = [
    pytest.param(lambda: ModbusExample("high_first"), id="modbus-high_first"),
    pytest.param(lambda: ModbusExample("low_first"), id="modbus-low_first"),
    pytest.param(LogixExample, id="logix"),
    pytest.param(SclExample, id="scl"),
]


# ---------------------------------------------------------------------- the page's code


def _block(cls: type[Example]) -> str:
    """The example's code block on the page (the first ```iecst block after its heading)."""
    text = DOC.read_text()
    at = text.index(HEADINGS[cls] + "\n")
    start = text.index("```iecst\n", at) + len("```iecst\n")
    return text[start:text.index("\n```", start)]


def _uncommented(code: str) -> str:
    """`(* ... *)` and `// ...` comments removed (the examples have no strings that hold them)."""
    code = re.sub(r"\(\*.*?\*\)", "", code, flags=re.S)
    return re.sub(r"//[^\n]*", "", code)


def _norm(line: str) -> str:
    return " ".join(line.split())


def _code_lines(code: str) -> list[str]:
    return [n for n in (_norm(line) for line in _uncommented(code).splitlines()) if n]


def _body(cls: type[Example]) -> list[str]:
    """The statements of the example, one entry per non-empty code line, declarations left out."""
    lines = _code_lines(_block(cls))
    if cls is ModbusExample:
        lines = lines[len(lines) - lines[::-1].index("END_VAR"):lines.index("END_PROGRAM")]
    elif cls is SclExample:
        lines = lines[lines.index("BEGIN") + 1:lines.index("END_FUNCTION_BLOCK")]
    return lines


def _translated(cls: type[Example], tag: str = "ST") -> list[str]:
    """The `# ST:` (or `# ST low_first:`) comments of the translation, in source order."""
    return [_norm(m) for m in re.findall(rf"#\s*{tag}:\s?(.*)$", inspect.getsource(cls), flags=re.M)]


@pytest.mark.parametrize("cls", [ModbusExample, LogixExample, SclExample], ids=lambda c: c.__name__)
def test_each_translation_mirrors_its_example_on_the_page_line_by_line(cls):
    docs, ours = _body(cls), _translated(cls)
    assert ours == docs, "tests/scan_plcs.py no longer mirrors docs/plc-interface.md:\n" + "\n".join(
        difflib.unified_diff(docs, ours, "docs", "scan_plcs.py", lineterm=""))


def test_the_modbus_example_shows_the_low_first_lines_where_the_high_first_ones_are():
    raw = [_norm(line) for line in _block(ModbusExample).splitlines()]
    alt = _translated(ModbusExample, "ST low_first")
    assert len(alt) == 2
    at = raw.index(alt[0])
    assert raw[at:at + 2] == alt, raw[at - 2:at + 3]
    assert "low_first" in raw[at - 1] and raw[at - 1].startswith("(*"), "the alternative lines are commented out"
    assert not set(alt) & set(_body(ModbusExample)), "the low_first lines are not code of the default example"
    # The high_first pair sits right above them: a programmer swaps the two in one place.
    high = [line for line in _translated(ModbusExample) if line.startswith(("PartIdFirst :=", "PartIdSecond :="))]
    assert _code_lines("\n".join(raw[at - 3:at - 1])) == high and len(high) == 2, raw[at - 3:at - 1]


_IEC_WORDS = {"IF", "THEN", "ELSE", "ELSIF", "END_IF", "AND", "OR", "NOT", "MOD", "TRUE", "FALSE",
              "UINT_TO_WORD", "UDINT_TO_WORD", "SHR", "IN", "PT", "T"}
_LOGIX_WORDS = {"IF", "THEN", "ELSE", "ELSIF", "END_IF", "AND", "OR", "NOT", "MOD", "TONR", "S"}


def _declared(code: str) -> set[str]:
    """Names declared in the VAR[_INPUT, _OUTPUT][ RETAIN] ... END_VAR blocks of an IEC / SCL example."""
    names: set[str] = set()
    for block in re.findall(r"^\s*VAR(?:_\w+)?\b[^\n]*$(.*?)^\s*END_VAR", _uncommented(code), flags=re.M | re.S):
        names.update(re.findall(r"^\s*(\w+)\s*:", block, flags=re.M))
    return names


def test_every_variable_an_example_uses_is_declared_or_listed():
    # IEC: every identifier in the statements, less keywords, functions, members (after '.')
    # and literals (after '#': 16#0002, T#1S).
    iec = " ".join(_body(ModbusExample))
    used = {n for n in re.findall(r"(?<![.#\w])([A-Za-z_]\w*)", iec) if n not in _IEC_WORDS}
    assert used <= _declared(_block(ModbusExample)), used - _declared(_block(ModbusExample))
    # SCL: the block's own variables are the #names.
    used = set(re.findall(r"#([A-Za-z_]\w*)", " ".join(_body(SclExample))))
    assert used <= _declared(_block(SclExample)), used - _declared(_block(SclExample))
    # Logix: everything that is not the bridge's PB_ tag is one "of your own", listed in the prose.
    text = DOC.read_text()
    prose = text[text.index(HEADINGS[LogixExample]):text.index("```iecst", text.index(HEADINGS[LogixExample]))]
    own = prose[prose.index("these of your own"):prose.index("It follows")]
    listed = set(re.findall(r"`(\w+)`", own))
    used = {n for n in re.findall(r"(?<![.:\w])([A-Za-z_]\w*)", " ".join(_body(LogixExample)))
            if n not in _LOGIX_WORDS and not n.startswith("PB_")}
    assert used <= listed, used - listed
    for new in ("HbSeen", "FailsafeRun", "RepeatAlarm"):
        assert new in listed and new in _declared(_block(ModbusExample)) and new in _declared(_block(SclExample))


# ---------------------------------------------------------------------- the logic, scan by scan

READY_BITS = (StatusBit.READY | StatusBit.TRIGGER_READY | StatusBit.CAMERA_OK | StatusBit.MODEL_OK
              | StatusBit.PLC_INPUTS_OK)


@dataclass(frozen=True)
class Answer:
    """What a scripted bridge presents for one trigger."""

    seq: int
    part_id: int
    code: ResultCode = ResultCode.PASS
    failsafe: bool = False
    fault: FaultCode = FaultCode.NONE


@dataclass(frozen=True)
class Done:
    t: float
    part: int
    rejected: bool


class Bench:
    """One example on the bench: a scripted bridge writes the output image before every
    scan (heartbeat +1 each scan while `beating`), scans every 10 ms on a fake clock."""

    def __init__(self, example: Example) -> None:
        self.ex = example
        self.k = 0
        self.hb = 0
        self.beating = True
        self.status = int(READY_BITS)
        self.answer: Answer | None = None

    @property
    def now(self) -> float:
        return self.k * round(SCAN_S * 1000) / 1000  # integer ms, then seconds

    def scan(self, part: bool = False) -> Done | None:
        self.k += 1
        if self.beating:
            self.hb = (self.hb + 1) & 0xFFFF
        a, status = self.answer, self.status
        if a is not None:
            status |= StatusBit.RESULT_VALID | (StatusBit.FAILSAFE_ACTIVE if a.failsafe else 0)
        self.ex.write_outputs(Outputs(
            heartbeat=self.hb, status=int(status), result_seq=a.seq if a else 0, result_code=a.code if a else 0,
            score=10000 if a and a.code != ResultCode.PASS else 0, fault_code=a.fault if a else 0,
            part_id=a.part_id if a else 0))
        self.ex.PartPresent = part
        self.ex.scan(self.now)
        return Done(self.now, self.ex.done_part, self.ex.rejected) if self.ex.Done else None

    def run_until(self, t: float) -> list[Done]:
        """Scan up to time t (inclusive); the parts finished meanwhile."""
        done = []
        while self.now + SCAN_S / 2 < t:
            d = self.scan()
            if d is not None:
                done.append(d)
        return done

    def start(self) -> None:
        """Half a second of a live bridge with TRIGGER_READY: the example may trigger."""
        assert not self.run_until(self.now + 0.5)
        assert self.ex.BridgeAlive and self.ex.Started  # type: ignore[attr-defined]  # every example has Started

    def trigger(self) -> tuple[int, int]:
        """One new part (a one-scan PartPresent pulse): its trigger_seq and part id."""
        seq_before = self.ex.seq
        self.scan(part=True)
        assert self.ex.Waiting and self.ex.seq == next_seq(seq_before), "the part was not triggered"
        return self.ex.seq, self.ex.part

    def answer_part(self, code: ResultCode, failsafe: bool = False, fault: FaultCode = FaultCode.NONE) -> Done:
        """Trigger a part, present `code` for it, and scan until the example is done with it."""
        seq, part = self.trigger()
        self.answer = Answer(seq, part, code, failsafe, fault)
        done = [d for d in (self.scan() for _ in range(5)) if d is not None]
        assert [d.part for d in done] == [part] and self.ex.ack == seq, done
        return done[0]


@pytest.mark.parametrize("make", EXAMPLES)
def test_the_result_timeout_runs_from_each_parts_own_trigger(make: Callable[[], Example]):
    b = Bench(make())
    ex = b.ex
    b.start()
    seq1, part1 = b.trigger()
    t1 = b.now
    assert not b.run_until(t1 + 0.9)
    b.answer = Answer(seq1, part1, ResultCode.PASS)
    # The first scan with the answer on the outputs: not taken yet (two scans running).
    assert b.scan() is None and ex.Waiting and ex.ack == 0
    # Taken in the next scan, in which the next part comes and is triggered.
    done = b.scan(part=True)
    assert done == Done(b.now, part1, False) and ex.ack == seq1
    assert ex.Waiting and ex.seq == next_seq(seq1) and ex.part != part1
    t2, part2 = b.now, ex.part
    # Nothing for part 2 (the bridge still shows part 1's answer): no timeout before 1 s has
    # passed since part 2's own trigger. Timing from part 1's trigger, it came after 0.1 s.
    early = b.run_until(t2 + 1.0 - SCAN_S)
    assert not early, f"part 2 timed out {early[0].t - t2:.2f} s after its trigger"
    late = b.run_until(t2 + 1.1)
    assert [(d.part, d.rejected) for d in late] == [(part2, True)] and late[0].t >= t2 + 1.0, late
    # Its answer after the PLC's own timeout is neither taken nor acked.
    b.answer = Answer(ex.seq, part2, ResultCode.PASS)
    assert not b.run_until(b.now + 0.2) and ex.ack == seq1


@pytest.mark.parametrize("make", EXAMPLES)
def test_a_heartbeat_that_never_changed_is_no_bridge(make: Callable[[], Example]):
    ex = make()
    b = Bench(ex)
    # A PLC start: the heartbeat and LastHeartbeat are both 0 and stay so (no bridge), while
    # the status word claims READY and TRIGGER_READY (a stale image, say).
    b.beating = False
    alive, parts = [], []
    for k in range(1, 101):
        b.scan(part=k == 25)  # a part at 250 ms, after StartTimer's 200 ms
        alive.append(ex.BridgeAlive)
        if k == 25:
            parts.append((ex.Uninspected, ex.seq))
    assert not any(alive), f"BridgeAlive for {sum(alive) * 10} ms without a heartbeat"
    assert parts == [(True, 0)], "the part was triggered against a bridge that was never seen"
    # The heartbeat changes once: alive; it stops: dead after the watchdog time.
    b.beating = True
    b.scan()
    assert ex.BridgeAlive
    b.beating = False
    b.run_until(b.now + WATCHDOG_S[type(ex)] - 2 * SCAN_S)
    assert ex.BridgeAlive
    b.run_until(b.now + 3 * SCAN_S)
    assert not ex.BridgeAlive


def test_the_logix_first_scan_forgets_the_retained_heartbeat():
    ex = LogixExample()
    b = Bench(ex)
    b.start()
    # Power cycle: every tag is retained, PB_Heartbeat equals LastHeartbeat, and no bridge
    # writes any more; only S:FS runs the first-scan branch.
    ex.restart()
    b.beating = False
    b.scan()
    assert (ex.BridgeAlive, ex.Started, ex.seq, ex.ack) == (False, False, 0, 0)
    alive = []
    for k in range(40):
        b.scan(part=k == 30)
        alive.append(ex.BridgeAlive)
    assert not any(alive) and ex.seq == 0
    b.beating = True
    b.scan()
    assert ex.BridgeAlive


@pytest.mark.parametrize("make", EXAMPLES)
def test_three_failsafe_answers_in_a_row_raise_the_repeat_alarm(make: Callable[[], Example]):
    b = Bench(make())
    ex = b.ex
    b.start()
    fs = dict(failsafe=True, fault=FaultCode.INFERENCE_TIMEOUT)
    script: list[tuple[ResultCode, dict[str, Any]]] = [
        (ResultCode.FAILSAFE, fs), (ResultCode.FAILSAFE, fs), (ResultCode.FAIL, {}),  # a verdict ends the run
        (ResultCode.FAILSAFE, fs),
        (ResultCode.FAIL, dict(failsafe=True, fault=FaultCode.NO_FRAME)),  # failsafe.result_code = FAIL: still one
        (ResultCode.FAILSAFE, fs),
        (ResultCode.PASS, {}),
    ]
    seen = []
    for code, kw in script:
        done = b.answer_part(code, **kw)
        seen.append((done.rejected, ex.failsafe_run, ex.RepeatAlarm))
    assert seen == [(True, 1, False), (True, 2, False), (True, 0, False), (True, 1, False), (True, 2, False),
                    (True, 3, True), (False, 0, False)]
    assert ex.last_fault == FaultCode.INFERENCE_TIMEOUT


@pytest.mark.parametrize("word_order", ["high_first", "low_first"])
def test_the_modbus_part_id_words_follow_the_word_order(word_order):
    ex = ModbusExample(word_order, next_part_id=0x1234_5678)
    b = Bench(ex)
    b.start()
    seq, part = b.trigger()
    # The bridge decodes the registers with the same word order and reads the PLC's id.
    assert part == 0x1234_5678 and ex.read_inputs() == Inputs(seq, 0x1234_5678, 0)
    # The echo with its words the other way round is another part: rejected even on PASS.
    b.answer = Answer(seq, 0x5678_1234, ResultCode.PASS)
    assert [d.rejected for d in b.run_until(b.now + 0.05)] == [True]
    assert not b.answer_part(ResultCode.PASS).rejected


# ---------------------------------------------------------------------- against the real daemon

STATIONS = [
    pytest.param("modbus", lambda: ModbusExample("high_first", next_part_id=0x1234_FFF8),
                 {"modbus": {"word_order": "high_first"}}, id="modbus-high_first"),
    pytest.param("modbus", lambda: ModbusExample("low_first", next_part_id=0x1234_FFF8),
                 {"modbus": {"word_order": "low_first"}}, id="modbus-low_first"),
    # Ids from -20 up: negative DINTs (ids from 2^31 as u32), then 0 and positive ones.
    pytest.param("enip", lambda: LogixExample(next_part_id=-20), {}, id="enip-logix"),
    # Ids across 2^31: UDInt values with the top bit set.
    pytest.param("opcua", lambda: SclExample(next_part_id=0x7FFF_FFF8), {}, id="opcua-scl"),
]


def _journaled(decisions: list[Decision]) -> dict[tuple[int, int], Decision]:
    """What the bridge decided for each (trigger_seq, part_id) it answered."""
    return {(x.request.trigger_seq, x.request.part_id): x for x in decisions if x.request is not None}


@pytest.mark.parametrize("protocol, make, plc_section", STATIONS)
def test_each_example_runs_a_line_with_the_real_daemon_through_a_plc_and_a_bridge_restart(
        protocol: str, make: Callable[[], Example], plc_section: dict[str, Any]):
    example = make()
    plc = ScanPlc(example, PartLine(seed=sum(map(ord, protocol + str(plc_section)))))
    device: dict[str, Any] = {f"{protocol}.host": "127.0.0.1", f"{protocol}.port": 0,
                              "network.relay": True}  # a PLC restart drops the connections, as a real one does
    if protocol == "modbus":
        device["modbus.word_order"] = plc_section["modbus"]["word_order"]
    sim = protocols.frontend_class(protocol)(load_device(None, device), plc).start()
    decisions: list[Decision] = []
    try:
        cfg = station_config(sim, "triggered", plc=plc_section)
        # Phase 1: the line runs from the PLC's start; the bridge comes up meanwhile.
        d, seen = _recording_daemon(cfg)
        try:
            wait_for(lambda: plc.answered(1) >= 15, 90, "15 parts answered")
            # Phase 2: the line stops, the last part is finished, the PLC restarts.
            plc.pause_line()
            wait_for(plc.idle, 10, "the last part before the PLC restart to be finished")
            sim.restart_plc()
            plc.next_phase()
            plc.pause_line(running=True)
            wait_for(lambda: plc.answered(2) >= 10, 90, "10 parts answered after the PLC restart")
        finally:
            d.stop()
            decisions += seen
        # Phase 3: the bridge restarts on the same PLC while the line keeps running.
        plc.next_phase()
        time.sleep(0.5)  # longer than the heartbeat watchdog: the PLC sees the bridge gone
        d, seen = _recording_daemon(cfg)
        try:
            wait_for(lambda: plc.answered(3) >= 10, 90, "10 parts answered after the bridge restart")
            plc.pause_line()
            wait_for(plc.idle, 10, "the last part to be finished")
        finally:
            d.stop()
            decisions += seen
        summary = sim.summary()
    finally:
        sim.stop()

    assert summary["protocol_errors"] == 0, summary["recent_protocol_errors"]
    assert summary["problems"] == [], summary["problems"]
    assert summary["restarts"] == 1
    # Every part got exactly one outcome.
    assert len(plc.parts) == len(set(plc.parts))
    twice = {p: o for p, o in plc.outcomes.items() if len(o) != 1}
    assert not twice, twice
    assert set(plc.outcomes) == set(plc.parts), set(plc.parts) ^ set(plc.outcomes)
    outcomes = [plc.outcomes[p][0] for p in plc.parts]
    # No part passed unless the bridge decided PASS for that very part and trigger, and
    # every answer the PLC took is the one the bridge journaled for it.
    journal = _journaled(decisions)
    passed = [o for o in outcomes if not o.rejected]
    assert passed, summary
    for o in passed:
        assert o.kind == "answered", o
        x = journal.get((o.trigger_seq, o.part_id))  # type: ignore[arg-type]  # answered: it had a trigger
        assert x is not None and x.result is ResultCode.PASS, (o, x)
    for o in outcomes:
        if o.kind == "answered":
            x = journal.get((o.trigger_seq, o.part_id))  # type: ignore[arg-type]
            assert x is not None and o.rejected == (x.result is not ResultCode.PASS), (o, x)
    # Most parts were inspected: in each phase, from its first answer on (the bridge was up),
    # at least half of the parts had an answer taken; a few were, after each restart.
    for phase in (1, 2, 3):
        arrived = [o for o in outcomes if o.phase == phase]
        first = next(i for i, o in enumerate(arrived) if o.kind == "answered")
        window = arrived[first:]
        answered = sum(o.kind == "answered" for o in window)
        assert answered >= 10 and answered >= len(window) / 2, (phase, summary["outcomes"], len(window))
    # While the bridge was down, parts came and were rejected uninspected.
    assert any(o.kind == "uninspected" and o.phase == 3 for o in outcomes), summary
