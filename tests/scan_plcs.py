"""The three triggered-mode PLC examples of docs/plc-interface.md, translated line by line
into Python, and a scan-cycle PLC that runs one of them behind a simulator front-end.

Why: the examples are what PLC programmers copy. Running their logic, statement by
statement, against the real daemon over the real protocol servers shows that what the page
tells a programmer to paste actually works with the bridge; tests/test_plc_examples.py also
checks that every `# ST:` comment below is, in order, the code of the docs' example, so the
translation cannot drift from the page unnoticed.

- ModbusExample: "### Triggered mode, Modbus TCP (IEC 61131-3)", on the 104-word holding
  register image `HR` (part_id in two words per `plc.modbus.word_order`);
- LogixExample: "### Structured Text example (Studio 5000 Logix Designer, triggered mode)",
  on DINT/REAL controller tags (`PB_Score` REAL = score / 10000, part ids two's complement);
- SclExample: "### SCL example (Siemens S7-1500, triggered mode)", on the typed OPC UA values
  of `"InspectionDB"`.

Each class's `scan(now)` is one PLC scan: the statements in the docs' order, each under the
`# ST:` comment of the line it mirrors. Timers are emulated as the PLCs run them: `Ton` is
IEC 61131-3 TON / Siemens TON_TIME, `FbdTimer` + `TONR` is Logix's FBD_TIMER run by TONR.

`ScanPlc` is the program object a simulator front-end drives (the interface of
plcbridge/simulators/program.py's SimulatedPlc, whose logic is not used here): the comms
copy each output block the bridge writes into the example's image (`on_outputs`), the
bridge reads the example's inputs from the image (`inputs`), and `tick(now)` runs one scan
every 10 ms, with `PartLine` pulsing PartPresent for each part. Every part's outcome (Done
with its reject bit, or Uninspected) is recorded by part id.
"""

from __future__ import annotations

import random
import threading
from collections import Counter, deque
from collections.abc import Callable, Collection
from dataclasses import dataclass, fields
from typing import Any

from plcbridge.contract import U16_MAX, U32_MAX, Inputs, Outputs
from plcbridge.contract.enip import OUTPUT_TAGS, carried_input_tags, decode_inputs, default_names, encode_outputs
from plcbridge.contract.modbus import RegisterMap, WordOrder

SCAN_S = 0.010  # the examples' task: a periodic task / cyclic OB of 10 ms


# ---------------------------------------------------------------------- PLC data types and timers


def dint(value: int) -> int:
    """A Logix DINT: 32 bits, two's complement (an overflow wraps, as the controller's does)."""
    return (value + (1 << 31)) % (1 << 32) - (1 << 31)


def bit(word: int, n: int) -> bool:
    """Bit n of a word: Logix `PB_Status.n`, Siemens `status.%Xn`."""
    return bool(word >> n & 1)


def _elapsed(now: float, since: float) -> float:
    """Seconds from `since` to `now`, rounded to a microsecond so that 100 scans of 10 ms
    are 1 s and not 0.999999... (a PLC's clock counts integer ticks)."""
    return round(now - since, 6)


class Ton:
    """IEC 61131-3 TON (Siemens TON_TIME): Q once IN has been TRUE for PT; IN FALSE resets
    it. Like the function block it changes only when it is called: `timer(now, IN=..., PT=...)`
    is the ST call `Timer(IN := ..., PT := ...)` made at time `now` (seconds)."""

    def __init__(self) -> None:
        self.IN = False
        self.PT = 0.0
        self.Q = False
        self.ET = 0.0
        self._start: float | None = None

    def __call__(self, now: float, *, IN: bool, PT: float) -> None:
        self.PT = PT
        if not IN:
            self._start, self.Q, self.ET = None, False, 0.0
        else:
            if self._start is None:  # rising edge of IN: timing starts with this call
                self._start = now
            self.ET = min(_elapsed(now, self._start), PT)
            self.Q = _elapsed(now, self._start) >= PT
        self.IN = IN


class FbdTimer:
    """A Logix FBD_TIMER tag (the members the example uses): PRE and ACC in ms."""

    def __init__(self) -> None:
        self.PRE = 0
        self.TimerEnable = False
        self.ACC = 0
        self.EN = False
        self.TT = False
        self.DN = False
        self._last: float | None = None
        self._acc_s = 0.0


def TONR(timer: FbdTimer, now: float) -> None:
    """Logix TONR (timer on delay with reset) at time `now`: while TimerEnable is set, ACC
    accumulates the time between executions (from 0 at the first enabled one) and DN is set
    once ACC reaches PRE (ACC stops at PRE); TimerEnable cleared resets ACC, EN, TT and DN.
    It is not retentive (that is RTOR)."""
    if not timer.TimerEnable:
        timer.ACC, timer.EN, timer.TT, timer.DN = 0, False, False, False
        timer._last, timer._acc_s = None, 0.0
        return
    if not timer.EN or timer._last is None:
        timer.EN, timer._last, timer._acc_s = True, now, 0.0
    else:
        timer._acc_s = min(timer._acc_s + _elapsed(now, timer._last), timer.PRE / 1000.0)
        timer._last = now
    timer.ACC = int(round(timer._acc_s * 1000.0))
    timer.DN = timer.ACC >= timer.PRE
    timer.TT = not timer.DN


# ---------------------------------------------------------------------- the examples


class Example:
    """What the scan-cycle PLC needs from a translated example, whatever its transport.

    Part ids here are the contract's u32 values (a Logix DINT id is converted)."""

    protocol = ""
    PartPresent: bool
    Done: bool
    Uninspected: bool
    Waiting: bool
    BridgeAlive: bool
    RepeatAlarm: bool

    def scan(self, now: float) -> None:
        raise NotImplementedError

    def write_outputs(self, outputs: Outputs) -> None:
        """The comms store an output block the bridge wrote into the image."""
        raise NotImplementedError

    def read_inputs(self) -> Inputs:
        """The comms read the inputs from the image for the bridge."""
        raise NotImplementedError

    def restart(self) -> None:
        """A PLC restart: what a restarted PLC keeps, and nothing more."""
        raise NotImplementedError

    @property
    def rejected(self) -> bool:
        """The verdict output that goes with Done: RejectPart (Reject in SCL)."""
        raise NotImplementedError

    @property
    def next_part(self) -> int:
        raise NotImplementedError

    @property
    def part(self) -> int:
        raise NotImplementedError

    @property
    def done_part(self) -> int:
        raise NotImplementedError

    @property
    def seq(self) -> int:
        """The trigger_seq the example last raised (0: idle)."""
        raise NotImplementedError

    @property
    def ack(self) -> int:
        """The result_ack_seq the example presents."""
        raise NotImplementedError

    @property
    def failsafe_run(self) -> int:
        raise NotImplementedError

    @property
    def last_fault(self) -> int:
        raise NotImplementedError


class ModbusExample(Example):
    """"### Triggered mode, Modbus TCP (IEC 61131-3)" on its holding-register image HR.

    `word_order` picks the example's high_first lines or its commented low_first ones.
    NextPartId is kept through a restart (VAR RETAIN in the example); every other
    variable and HR start again at their initial values."""

    protocol = "modbus"

    def __init__(self, word_order: WordOrder = "high_first", next_part_id: int = 1) -> None:
        self.word_order = word_order
        self.rmap = RegisterMap(outputs_base=0, inputs_base=100, word_order=word_order)
        self.NextPartId = next_part_id
        self._start()

    def _start(self) -> None:
        """The VAR block's initial values (but NextPartId); HR 0 at start."""
        self.HR = [0] * 104
        self.PartPresent = False
        self.PartBefore = False
        self.PartId = 0
        self.PartIdFirst = 0
        self.PartIdSecond = 0
        self.TriggerSeq = 0
        self.Waiting = False
        self.Started = False
        self.Matched = False
        self.MatchedBefore = False
        self.LastHeartbeat = 0
        self.HbSeen = False
        self.HbTimer = Ton()
        self.StartTimer = Ton()
        self.ResultTimer = Ton()
        self.BridgeAlive = False
        self.Status = 0
        self.Done = False
        self.DonePartId = 0
        self.RejectPart = False
        self.Uninspected = False
        self.BridgeFault = 0
        self.LastFault = 0
        self.FailsafeRun = 0
        self.RepeatAlarm = False

    def restart(self) -> None:
        self._start()

    def write_outputs(self, outputs: Outputs) -> None:
        self.HR[0:10] = self.rmap.encode_outputs(outputs)

    def read_inputs(self) -> Inputs:
        return self.rmap.decode_inputs(self.HR[100:104])

    def scan(self, now: float) -> None:
        HR = self.HR
        # ST: HbTimer(IN := HR[0] = LastHeartbeat, PT := T#300MS);
        self.HbTimer(now, IN=HR[0] == self.LastHeartbeat, PT=0.300)
        # ST: HbSeen := HbSeen OR (HR[0] <> LastHeartbeat);
        self.HbSeen = self.HbSeen or (HR[0] != self.LastHeartbeat)
        # ST: LastHeartbeat := HR[0];
        self.LastHeartbeat = HR[0]
        # ST: BridgeAlive := HbSeen AND NOT HbTimer.Q;
        self.BridgeAlive = self.HbSeen and not self.HbTimer.Q
        # ST: Status := HR[1];
        self.Status = HR[1]
        # ST: BridgeFault := HR[5];
        self.BridgeFault = HR[5]
        # ST: Done := FALSE;
        self.Done = False
        # ST: Uninspected := FALSE;
        self.Uninspected = False

        # ST: StartTimer(IN := BridgeAlive AND (Status AND 16#0002) <> 0, PT := T#200MS);
        self.StartTimer(now, IN=self.BridgeAlive and (self.Status & 0x0002) != 0, PT=0.200)
        # ST: Started := Started OR StartTimer.Q;
        self.Started = self.Started or self.StartTimer.Q

        # ST: ResultTimer(IN := Waiting, PT := T#1S);
        self.ResultTimer(now, IN=self.Waiting, PT=1.0)
        # ST: Matched := Waiting AND (Status AND 16#0020) <> 0 AND HR[2] = UINT_TO_WORD(TriggerSeq);
        self.Matched = self.Waiting and (self.Status & 0x0020) != 0 and HR[2] == self.TriggerSeq
        # ST: IF Matched AND MatchedBefore THEN
        if self.Matched and self.MatchedBefore:
            # ST: RejectPart := NOT (HR[3] = 1 AND HR[8] = PartIdFirst AND HR[9] = PartIdSecond);
            self.RejectPart = not (HR[3] == 1 and HR[8] == self.PartIdFirst and HR[9] == self.PartIdSecond)
            # ST: IF (Status AND 16#0010) <> 0 THEN
            if (self.Status & 0x0010) != 0:
                # ST: LastFault := HR[5];
                self.LastFault = HR[5]
                # ST: FailsafeRun := FailsafeRun + 1;
                self.FailsafeRun = (self.FailsafeRun + 1) & U32_MAX
            # ST: ELSE
            else:
                # ST: FailsafeRun := 0;
                self.FailsafeRun = 0
            # ST: END_IF;
            # ST: HR[103] := HR[2];
            HR[103] = HR[2]
            # ST: DonePartId := PartId;
            self.DonePartId = self.PartId
            # ST: Done := TRUE;
            self.Done = True
            # ST: Waiting := FALSE;
            self.Waiting = False
            # ST: Matched := FALSE;
            self.Matched = False
        # ST: ELSIF Waiting AND (ResultTimer.Q OR NOT BridgeAlive) THEN
        elif self.Waiting and (self.ResultTimer.Q or not self.BridgeAlive):
            # ST: RejectPart := TRUE;
            self.RejectPart = True
            # ST: DonePartId := PartId;
            self.DonePartId = self.PartId
            # ST: Done := TRUE;
            self.Done = True
            # ST: Waiting := FALSE;
            self.Waiting = False
            # ST: Matched := FALSE;
            self.Matched = False
        # ST: END_IF;
        # ST: MatchedBefore := Matched;
        self.MatchedBefore = self.Matched
        # ST: RepeatAlarm := FailsafeRun >= 3;
        self.RepeatAlarm = self.FailsafeRun >= 3

        # ST: IF PartPresent AND NOT PartBefore THEN
        if self.PartPresent and not self.PartBefore:
            # ST: IF Started AND BridgeAlive AND NOT Waiting AND (Status AND 16#0002) <> 0 THEN
            if self.Started and self.BridgeAlive and not self.Waiting and (self.Status & 0x0002) != 0:
                # ST: PartId := NextPartId;
                self.PartId = self.NextPartId
                if self.word_order == "high_first":
                    # ST: PartIdFirst := UDINT_TO_WORD(SHR(PartId, 16));
                    self.PartIdFirst = (self.PartId >> 16) & U16_MAX
                    # ST: PartIdSecond := UDINT_TO_WORD(PartId AND 16#FFFF);
                    self.PartIdSecond = self.PartId & 0xFFFF
                else:
                    # ST low_first: PartIdFirst := UDINT_TO_WORD(PartId AND 16#FFFF);
                    self.PartIdFirst = self.PartId & 0xFFFF
                    # ST low_first: PartIdSecond := UDINT_TO_WORD(SHR(PartId, 16));
                    self.PartIdSecond = (self.PartId >> 16) & U16_MAX
                # ST: HR[101] := PartIdFirst;
                HR[101] = self.PartIdFirst
                # ST: HR[102] := PartIdSecond;
                HR[102] = self.PartIdSecond
                # ST: TriggerSeq := (TriggerSeq MOD 65535) + 1;
                self.TriggerSeq = (self.TriggerSeq % 65535) + 1
                # ST: HR[100] := UINT_TO_WORD(TriggerSeq);
                HR[100] = self.TriggerSeq
                # ST: ResultTimer(IN := FALSE, PT := T#1S);
                self.ResultTimer(now, IN=False, PT=1.0)
                # ST: Waiting := TRUE;
                self.Waiting = True
                # ST: MatchedBefore := FALSE;
                self.MatchedBefore = False
            # ST: ELSE
            else:
                # ST: Uninspected := TRUE;
                self.Uninspected = True
            # ST: END_IF;
            # ST: NextPartId := NextPartId + 1;
            self.NextPartId = (self.NextPartId + 1) & U32_MAX
        # ST: END_IF;
        # ST: PartBefore := PartPresent;
        self.PartBefore = self.PartPresent

    @property
    def rejected(self) -> bool:
        return self.RejectPart

    @property
    def next_part(self) -> int:
        return self.NextPartId

    @property
    def part(self) -> int:
        return self.PartId

    @property
    def done_part(self) -> int:
        return self.DonePartId

    @property
    def seq(self) -> int:
        return self.TriggerSeq

    @property
    def ack(self) -> int:
        return self.HR[103]

    @property
    def failsafe_run(self) -> int:
        return self.FailsafeRun

    @property
    def last_fault(self) -> int:
        return self.LastFault


_LOGIX_OUTPUT_NAMES = default_names(OUTPUT_TAGS)


class LogixExample(Example):
    """"### Structured Text example (Studio 5000 Logix Designer, triggered mode)" on the
    default controller tags. Logix tags are retentive: a restart keeps every tag and only
    sets S:FS for the next scan, whose first-scan branch sets the handshake back to idle."""

    protocol = "enip"

    def __init__(self, next_part_id: int = 1) -> None:
        # The bridge's tags (PB_...), written by the comms.
        self.PB_Heartbeat = 0
        self.PB_Status = 0
        self.PB_ResultSeq = 0
        self.PB_ResultCode = 0
        self.PB_Score = 0.0
        self.PB_FaultCode = 0
        self.PB_LatencyMs = 0
        self.PB_ModelVersion = 0
        self.PB_PartId = 0
        # The PLC's tags (PB_Plc...), read by the comms.
        self.PB_PlcTriggerSeq = 0
        self.PB_PlcPartId = 0
        self.PB_PlcResultAckSeq = 0
        # The routine's own tags.
        self.PartPresent = False
        self.PartBefore = False
        self.Waiting = False
        self.Started = False
        self.Matched = False
        self.MatchedBefore = False
        self.HbSeen = False
        self.BridgeAlive = False
        self.Done = False
        self.RejectPart = False
        self.Uninspected = False
        self.RepeatAlarm = False
        self.NextPartId = dint(next_part_id)
        self.PartId = 0
        self.DonePartId = 0
        self.LastHeartbeat = 0
        self.LastFault = 0
        self.FailsafeRun = 0
        self.LastScore = 0.0
        self.HbTimer = FbdTimer()
        self.StartTimer = FbdTimer()
        self.ResultTimer = FbdTimer()
        self.S_FS = True  # S:FS, the controller's first-scan flag

    def restart(self) -> None:
        self.S_FS = True
        # The controller's first scan also initializes every TONR: EN, TT and DN cleared,
        # ACC 0 (Logix 5000 General Instructions, TONR "instruction first scan").
        self.HbTimer, self.StartTimer, self.ResultTimer = FbdTimer(), FbdTimer(), FbdTimer()

    def write_outputs(self, outputs: Outputs) -> None:
        for name, value in encode_outputs(outputs, _LOGIX_OUTPUT_NAMES):
            setattr(self, name, value)

    def read_inputs(self) -> Inputs:
        return decode_inputs({t.signal.name: getattr(self, t.default_name) for t in carried_input_tags(())})

    def scan(self, now: float) -> None:
        # ST: IF S:FS THEN
        if self.S_FS:
            # ST: PB_PlcTriggerSeq := 0;
            self.PB_PlcTriggerSeq = 0
            # ST: PB_PlcResultAckSeq := 0;
            self.PB_PlcResultAckSeq = 0
            # ST: Waiting := 0;
            self.Waiting = False
            # ST: Started := 0;
            self.Started = False
            # ST: HbSeen := 0;
            self.HbSeen = False
            # ST: FailsafeRun := 0;
            self.FailsafeRun = 0
        # ST: END_IF;

        # ST: HbTimer.PRE := 300;
        self.HbTimer.PRE = 300
        # ST: HbTimer.TimerEnable := PB_Heartbeat = LastHeartbeat;
        self.HbTimer.TimerEnable = self.PB_Heartbeat == self.LastHeartbeat
        # ST: TONR(HbTimer);
        TONR(self.HbTimer, now)
        # ST: HbSeen := HbSeen OR (PB_Heartbeat <> LastHeartbeat);
        self.HbSeen = self.HbSeen or (self.PB_Heartbeat != self.LastHeartbeat)
        # ST: LastHeartbeat := PB_Heartbeat;
        self.LastHeartbeat = self.PB_Heartbeat
        # ST: BridgeAlive := HbSeen AND NOT HbTimer.DN;
        self.BridgeAlive = self.HbSeen and not self.HbTimer.DN
        # ST: Done := 0;
        self.Done = False
        # ST: Uninspected := 0;
        self.Uninspected = False

        # ST: StartTimer.PRE := 200;
        self.StartTimer.PRE = 200
        # ST: StartTimer.TimerEnable := BridgeAlive AND PB_Status.1;
        self.StartTimer.TimerEnable = self.BridgeAlive and bit(self.PB_Status, 1)
        # ST: TONR(StartTimer);
        TONR(self.StartTimer, now)
        # ST: Started := Started OR StartTimer.DN;
        self.Started = self.Started or self.StartTimer.DN

        # ST: ResultTimer.PRE := 1000;
        self.ResultTimer.PRE = 1000
        # ST: ResultTimer.TimerEnable := Waiting;
        self.ResultTimer.TimerEnable = self.Waiting
        # ST: TONR(ResultTimer);
        TONR(self.ResultTimer, now)
        # ST: Matched := Waiting AND PB_Status.5 AND PB_ResultSeq = PB_PlcTriggerSeq;
        self.Matched = self.Waiting and bit(self.PB_Status, 5) and self.PB_ResultSeq == self.PB_PlcTriggerSeq
        # ST: IF Matched AND MatchedBefore THEN
        if self.Matched and self.MatchedBefore:
            # ST: RejectPart := NOT (PB_ResultCode = 1 AND PB_PartId = PartId);
            self.RejectPart = not (self.PB_ResultCode == 1 and self.PB_PartId == self.PartId)
            # ST: IF PB_Status.4 THEN
            if bit(self.PB_Status, 4):
                # ST: LastFault := PB_FaultCode;
                self.LastFault = self.PB_FaultCode
                # ST: FailsafeRun := FailsafeRun + 1;
                self.FailsafeRun = dint(self.FailsafeRun + 1)
            # ST: ELSE
            else:
                # ST: FailsafeRun := 0;
                self.FailsafeRun = 0
            # ST: END_IF;
            # ST: LastScore := PB_Score;
            self.LastScore = self.PB_Score
            # ST: PB_PlcResultAckSeq := PB_ResultSeq;
            self.PB_PlcResultAckSeq = self.PB_ResultSeq
            # ST: DonePartId := PartId;
            self.DonePartId = self.PartId
            # ST: Done := 1;
            self.Done = True
            # ST: Waiting := 0;
            self.Waiting = False
            # ST: Matched := 0;
            self.Matched = False
        # ST: ELSIF Waiting AND (ResultTimer.DN OR NOT BridgeAlive) THEN
        elif self.Waiting and (self.ResultTimer.DN or not self.BridgeAlive):
            # ST: RejectPart := 1;
            self.RejectPart = True
            # ST: DonePartId := PartId;
            self.DonePartId = self.PartId
            # ST: Done := 1;
            self.Done = True
            # ST: Waiting := 0;
            self.Waiting = False
            # ST: Matched := 0;
            self.Matched = False
        # ST: END_IF;
        # ST: MatchedBefore := Matched;
        self.MatchedBefore = self.Matched
        # ST: RepeatAlarm := FailsafeRun >= 3;
        self.RepeatAlarm = self.FailsafeRun >= 3

        # ST: IF PartPresent AND NOT PartBefore THEN
        if self.PartPresent and not self.PartBefore:
            # ST: IF Started AND BridgeAlive AND NOT Waiting AND PB_Status.1 THEN
            if self.Started and self.BridgeAlive and not self.Waiting and bit(self.PB_Status, 1):
                # ST: PartId := NextPartId;
                self.PartId = self.NextPartId
                # ST: PB_PlcPartId := PartId;
                self.PB_PlcPartId = self.PartId
                # ST: PB_PlcTriggerSeq := (PB_PlcTriggerSeq MOD 65535) + 1;
                self.PB_PlcTriggerSeq = (self.PB_PlcTriggerSeq % 65535) + 1
                # ST: ResultTimer.TimerEnable := 0;
                self.ResultTimer.TimerEnable = False
                # ST: TONR(ResultTimer);
                TONR(self.ResultTimer, now)
                # ST: Waiting := 1;
                self.Waiting = True
                # ST: MatchedBefore := 0;
                self.MatchedBefore = False
            # ST: ELSE
            else:
                # ST: Uninspected := 1;
                self.Uninspected = True
            # ST: END_IF;
            # ST: NextPartId := NextPartId + 1;
            self.NextPartId = dint(self.NextPartId + 1)
        # ST: END_IF;
        # ST: PartBefore := PartPresent;
        self.PartBefore = self.PartPresent
        self.S_FS = False  # the controller clears S:FS after the first scan

    @property
    def rejected(self) -> bool:
        return self.RejectPart

    @property
    def next_part(self) -> int:
        return self.NextPartId & U32_MAX

    @property
    def part(self) -> int:
        return self.PartId & U32_MAX

    @property
    def done_part(self) -> int:
        return self.DonePartId & U32_MAX

    @property
    def seq(self) -> int:
        return self.PB_PlcTriggerSeq

    @property
    def ack(self) -> int:
        return self.PB_PlcResultAckSeq

    @property
    def failsafe_run(self) -> int:
        return self.FailsafeRun

    @property
    def last_fault(self) -> int:
        return self.LastFault


@dataclass
class DbOutputs:
    """`"InspectionDB".outputs`: UInt16 / UInt32 values the bridge writes over OPC UA."""

    heartbeat: int = 0
    status: int = 0
    result_seq: int = 0
    result_code: int = 0
    score: int = 0
    fault_code: int = 0
    latency_ms: int = 0
    model_version: int = 0
    part_id: int = 0


@dataclass
class DbInputs:
    """`"InspectionDB".inputs`: the values the block writes and the bridge reads."""

    trigger_seq: int = 0
    part_id: int = 0
    result_ack_seq: int = 0


class InspectionDb:
    """The data block `"InspectionDB"`: non-retentive, start value 0."""

    def __init__(self) -> None:
        self.outputs = DbOutputs()
        self.inputs = DbInputs()


class SclExample(Example):
    """"### SCL example (Siemens S7-1500, triggered mode)": the function block, called once per
    cycle, on the data block `"InspectionDB"`. A restart gives the (non-retentive) data block
    and the block's variables their start values, but NextPartId, which is kept as if set
    Retain so that part ids stay unique across a restart."""

    protocol = "opcua"

    def __init__(self, next_part_id: int = 1) -> None:
        self.NextPartId = next_part_id
        self._start()

    def _start(self) -> None:
        self.db = InspectionDb()
        # VAR_INPUT
        self.PartPresent = False
        # VAR_OUTPUT
        self.Done = False
        self.DonePartId = 0
        self.Reject = False
        self.Uninspected = False
        self.BridgeAlive = False
        self.LastFault = 0
        self.RepeatAlarm = False
        # VAR (but NextPartId)
        self.PartId = 0
        self.PartBefore = False
        self.Waiting = False
        self.Started = False
        self.Matched = False
        self.MatchedBefore = False
        self.LastHeartbeat = 0
        self.HbSeen = False
        self.FailsafeRun = 0
        self.HbTimer = Ton()
        self.StartTimer = Ton()
        self.ResultTimer = Ton()

    def restart(self) -> None:
        self._start()

    def write_outputs(self, outputs: Outputs) -> None:
        for name, value in outputs.as_dict().items():
            setattr(self.db.outputs, name, value)

    def read_inputs(self) -> Inputs:
        return Inputs(**{f.name: getattr(self.db.inputs, f.name) for f in fields(DbInputs)})

    def scan(self, now: float) -> None:
        out, inp = self.db.outputs, self.db.inputs  # "InspectionDB".outputs, "InspectionDB".inputs
        # ST: #HbTimer(IN := "InspectionDB".outputs.heartbeat = #LastHeartbeat, PT := T#500MS);
        self.HbTimer(now, IN=out.heartbeat == self.LastHeartbeat, PT=0.500)
        # ST: #HbSeen := #HbSeen OR ("InspectionDB".outputs.heartbeat <> #LastHeartbeat);
        self.HbSeen = self.HbSeen or (out.heartbeat != self.LastHeartbeat)
        # ST: #LastHeartbeat := "InspectionDB".outputs.heartbeat;
        self.LastHeartbeat = out.heartbeat
        # ST: #BridgeAlive := #HbSeen AND NOT #HbTimer.Q;
        self.BridgeAlive = self.HbSeen and not self.HbTimer.Q
        # ST: #Done := FALSE;
        self.Done = False
        # ST: #Uninspected := FALSE;
        self.Uninspected = False

        # ST: #StartTimer(IN := #BridgeAlive AND "InspectionDB".outputs.status.%X1, PT := T#200MS);
        self.StartTimer(now, IN=self.BridgeAlive and bit(out.status, 1), PT=0.200)
        # ST: #Started := #Started OR #StartTimer.Q;
        self.Started = self.Started or self.StartTimer.Q

        # ST: #ResultTimer(IN := #Waiting, PT := T#1S);
        self.ResultTimer(now, IN=self.Waiting, PT=1.0)
        # ST: #Matched := #Waiting AND "InspectionDB".outputs.status.%X5
        # ST: AND "InspectionDB".outputs.result_seq = "InspectionDB".inputs.trigger_seq;
        self.Matched = (self.Waiting and bit(out.status, 5)
                        and out.result_seq == inp.trigger_seq)
        # ST: IF #Matched AND #MatchedBefore THEN
        if self.Matched and self.MatchedBefore:
            # ST: #Reject := NOT ("InspectionDB".outputs.result_code = 1
            # ST: AND "InspectionDB".outputs.part_id = #PartId);
            self.Reject = not (out.result_code == 1
                               and out.part_id == self.PartId)
            # ST: IF "InspectionDB".outputs.status.%X4 THEN
            if bit(out.status, 4):
                # ST: #LastFault := "InspectionDB".outputs.fault_code;
                self.LastFault = out.fault_code
                # ST: #FailsafeRun := #FailsafeRun + 1;
                self.FailsafeRun = (self.FailsafeRun + 1) & U32_MAX
            # ST: ELSE
            else:
                # ST: #FailsafeRun := 0;
                self.FailsafeRun = 0
            # ST: END_IF;
            # ST: "InspectionDB".inputs.result_ack_seq := "InspectionDB".outputs.result_seq;
            inp.result_ack_seq = out.result_seq
            # ST: #DonePartId := #PartId;
            self.DonePartId = self.PartId
            # ST: #Done := TRUE;
            self.Done = True
            # ST: #Waiting := FALSE;
            self.Waiting = False
            # ST: #Matched := FALSE;
            self.Matched = False
        # ST: ELSIF #Waiting AND (#ResultTimer.Q OR NOT #BridgeAlive) THEN
        elif self.Waiting and (self.ResultTimer.Q or not self.BridgeAlive):
            # ST: #Reject := TRUE;
            self.Reject = True
            # ST: #DonePartId := #PartId;
            self.DonePartId = self.PartId
            # ST: #Done := TRUE;
            self.Done = True
            # ST: #Waiting := FALSE;
            self.Waiting = False
            # ST: #Matched := FALSE;
            self.Matched = False
        # ST: END_IF;
        # ST: #MatchedBefore := #Matched;
        self.MatchedBefore = self.Matched
        # ST: #RepeatAlarm := #FailsafeRun >= 3;
        self.RepeatAlarm = self.FailsafeRun >= 3

        # ST: IF #PartPresent AND NOT #PartBefore THEN
        if self.PartPresent and not self.PartBefore:
            # ST: IF #Started AND #BridgeAlive AND NOT #Waiting AND "InspectionDB".outputs.status.%X1 THEN
            if self.Started and self.BridgeAlive and not self.Waiting and bit(out.status, 1):
                # ST: #PartId := #NextPartId;
                self.PartId = self.NextPartId
                # ST: "InspectionDB".inputs.part_id := #PartId;
                inp.part_id = self.PartId
                # ST: "InspectionDB".inputs.trigger_seq := ("InspectionDB".inputs.trigger_seq MOD 65535) + 1;
                inp.trigger_seq = (inp.trigger_seq % 65535) + 1
                # ST: #ResultTimer(IN := FALSE, PT := T#1S);
                self.ResultTimer(now, IN=False, PT=1.0)
                # ST: #Waiting := TRUE;
                self.Waiting = True
                # ST: #MatchedBefore := FALSE;
                self.MatchedBefore = False
            # ST: ELSE
            else:
                # ST: #Uninspected := TRUE;
                self.Uninspected = True
            # ST: END_IF;
            # ST: #NextPartId := #NextPartId + 1;
            self.NextPartId = (self.NextPartId + 1) & U32_MAX
        # ST: END_IF;
        # ST: #PartBefore := #PartPresent;
        self.PartBefore = self.PartPresent

    @property
    def rejected(self) -> bool:
        return self.Reject

    @property
    def next_part(self) -> int:
        return self.NextPartId

    @property
    def part(self) -> int:
        return self.PartId

    @property
    def done_part(self) -> int:
        return self.DonePartId

    @property
    def seq(self) -> int:
        return self.db.inputs.trigger_seq

    @property
    def ack(self) -> int:
        return self.db.inputs.result_ack_seq

    @property
    def failsafe_run(self) -> int:
        return self.FailsafeRun

    @property
    def last_fault(self) -> int:
        return self.LastFault


# ---------------------------------------------------------------------- the line and the scan-cycle PLC


class PartLine:
    """The conveyor in front of the camera: a part every 100..150 ms (seeded jitter), each a
    PartPresent pulse of a few scans. `running` False lets no new part come; a pulse under
    way still ends."""

    def __init__(self, seed: int, gap_s: tuple[float, float] = (0.100, 0.150),
                 pulse_scans: tuple[int, int] = (2, 4)) -> None:
        self._rng = random.Random(seed)
        self._gap_s = gap_s
        self._pulse_scans = pulse_scans
        self._left = 0  # scans of the current pulse still to come
        self._high = False  # PartPresent in the last scan
        self._next: float | None = None
        self.running = True

    @property
    def pulsing(self) -> bool:
        return self._high

    def sense(self, now: float) -> tuple[bool, bool]:
        """(PartPresent for the scan at `now`, whether a new part arrives with it)."""
        if self._left > 0:
            self._left -= 1
            return True, False
        if self._high:
            # The sensor drops for at least one scan between two parts, however late the
            # scans run on a busy machine: each part is an edge of its own.
            self._high = False
            return False, False
        if not self.running:
            self._next = None
            return False, False
        if self._next is None:
            self._next = now + self._rng.uniform(*self._gap_s)
        if now < self._next:
            return False, False
        self._left = self._rng.randint(*self._pulse_scans) - 1
        self._high = True
        self._next = now + self._rng.uniform(*self._gap_s)
        return True, True


@dataclass(frozen=True)
class Outcome:
    """What the PLC program decided for one part."""

    part_id: int
    kind: str  # "answered" (an answer taken and acked), "no_answer" (1 s timeout or dead heartbeat), "uninspected"
    rejected: bool
    trigger_seq: int | None  # the trigger raised for it (None: uninspected)
    phase: int  # the test phase in which the part arrived
    t: float


class ScanPlc:
    """A scan-cycle PLC running one translated example: the program object a simulator
    front-end drives (see simulators/frontend.py; called under the front-end's lock, and
    under this object's own lock so that a test thread can read it safely).

    `on_outputs` is the comms storing the bridge's block into the image, `inputs` the comms
    reading it, `tick(now)` (every 1-2 ms) runs one scan every SCAN_S. Every part, its
    trigger and its outcome are recorded; whatever breaks the bookkeeping (a part the
    example did not count, an ack that answers no part) goes into `problems`.
    """

    def __init__(self, example: Example, line: PartLine | None = None, scan_s: float = SCAN_S) -> None:
        self.example = example
        self.line = line
        self.scan_s = scan_s
        self.lock = threading.Lock()
        self.phase = 1
        self._next_scan: float | None = None
        self._restart_listeners: list[Callable[[], None]] = []
        self._trigger_listeners: list[Callable[[int, float], None]] = []
        self.protocol_errors: Counter[str] = Counter()
        self._recent_errors: deque[str] = deque(maxlen=10)
        self.writes_seen = 0
        self.scans = 0
        self.restarts = 0
        self.parts: list[int] = []  # part ids in arrival order
        self.part_phase: dict[int, int] = {}
        self.trigger_of: dict[int, int] = {}  # part id -> the trigger_seq raised for it
        self.outcomes: dict[int, list[Outcome]] = {}
        self.problems: list[str] = []
        self.repeat_alarms = 0  # scans that ended with RepeatAlarm set

    # ------------------------------------------------------------------ front-end API

    @property
    def inputs(self) -> Inputs:
        with self.lock:
            return self.example.read_inputs()

    def set_mapping(self, optional_inputs: Collection[str], optional_outputs: Collection[str], *,
                    show: bool = False) -> None:
        """The front-end tells every program which optional signals its mapping carries
        (simulators/program.py); the examples use none (no recipes, no result details)."""

    def on_outputs(self, outputs: Outputs, t: float) -> None:
        with self.lock:
            self.writes_seen += 1
            self.example.write_outputs(outputs)

    def tick(self, now: float) -> None:
        with self.lock:
            if self._next_scan is not None and now < self._next_scan:
                return
            self._scan(now)
            due = (self._next_scan if self._next_scan is not None else now) + self.scan_s
            self._next_scan = due if due > now else now + self.scan_s  # an overrun skips scans

    def protocol_error(self, kind: str, detail: str) -> None:
        self.protocol_errors[kind] += 1
        self._recent_errors.append(f"{kind}: {detail}")

    def restart(self, t: float | None = None) -> None:
        """A PLC restart (the front-end's restart_plc()): the example's restart, the next scan
        at once; then the listeners (the front-end drops its connections)."""
        with self.lock:
            self.restarts += 1
            if self.example.Waiting:
                self.problems.append(f"restart while part {self.example.part} waited: it gets no outcome")
            self.example.restart()
            self._next_scan = None
        for listener in list(self._restart_listeners):
            listener()

    def add_restart_listener(self, listener: Callable[[], None]) -> None:
        self._restart_listeners.append(listener)

    def add_trigger_listener(self, listener: Callable[[int, float], None]) -> None:
        self._trigger_listeners.append(listener)

    def summary(self) -> dict[str, Any]:
        with self.lock:
            kinds = Counter(o.kind for outs in self.outcomes.values() for o in outs)
            return {
                "protocol": self.example.protocol,
                "writes_seen": self.writes_seen,
                "scans": self.scans,
                "restarts": self.restarts,
                "parts": len(self.parts),
                "outcomes": dict(kinds),
                "problems": list(self.problems),
                "protocol_errors": sum(self.protocol_errors.values()),
                "protocol_errors_by_kind": dict(self.protocol_errors),
                "recent_protocol_errors": list(self._recent_errors),
            }

    def status_line(self) -> str:
        s = self.summary()
        return (f"{s['protocol']} scans={s['scans']} writes={s['writes_seen']} parts={s['parts']} "
                f"outcomes={s['outcomes']} proto_err={s['protocol_errors']}")

    # ------------------------------------------------------------------ for the test thread

    def pause_line(self, running: bool = False) -> None:
        with self.lock:
            if self.line is not None:
                self.line.running = running

    def idle(self) -> bool:
        """No part under way: no pulse, no part waiting for its answer."""
        with self.lock:
            return not self.example.Waiting and (self.line is None or not self.line.pulsing)

    def next_phase(self) -> None:
        with self.lock:
            self.phase += 1

    def answered(self, phase: int) -> int:
        """Parts that arrived in `phase` and had an answer taken."""
        with self.lock:
            return sum(1 for outs in self.outcomes.values() for o in outs if o.kind == "answered" and o.phase == phase)

    # ------------------------------------------------------------------ one scan

    def _scan(self, now: float) -> None:
        ex = self.example
        present, arrives = self.line.sense(now) if self.line is not None else (False, False)
        ex.PartPresent = present  # the input image, read at the start of the scan
        next_before, ack_before = ex.next_part, ex.ack
        ex.scan(now)
        self.scans += 1
        if ex.RepeatAlarm:
            self.repeat_alarms += 1
        answered_part = None
        if ex.Done:
            part = ex.done_part
            seq = self.trigger_of.get(part)
            answered = seq is not None and ex.ack == seq and ex.ack != ack_before
            answered_part = part if answered else None
            self._outcome(Outcome(part, "answered" if answered else "no_answer", ex.rejected, seq,
                                  self.part_phase.get(part, 0), now))
        if ex.ack != ack_before and ex.ack != 0 and answered_part is None:
            self.problems.append(f"ack {ex.ack} at {now:.3f} answers no part that was waiting")
        if arrives:
            part = next_before
            if ex.next_part != (next_before + 1) & U32_MAX:
                self.problems.append(f"a part arrived at {now:.3f} but NextPartId went {next_before} -> {ex.next_part}")
                return
            self.parts.append(part)
            self.part_phase[part] = self.phase
            if ex.Uninspected:
                self._outcome(Outcome(part, "uninspected", True, None, self.phase, now))
            elif ex.Waiting and ex.part == part:
                self.trigger_of[part] = ex.seq
                for listener in self._trigger_listeners:
                    listener(ex.seq, now)
            else:
                self.problems.append(f"part {part} arrived at {now:.3f}: neither triggered nor uninspected")
        elif ex.next_part != next_before:
            self.problems.append(f"NextPartId moved {next_before} -> {ex.next_part} at {now:.3f} without a part")

    def _outcome(self, outcome: Outcome) -> None:
        self.outcomes.setdefault(outcome.part_id, []).append(outcome)
