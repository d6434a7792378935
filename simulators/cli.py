"""`plcbridge sim PROTOCOL`: run the simulated PLC behind one protocol front-end until stopped.

The main CLI (plcbridge/cli.py) creates one `sim NAME` sub-parser per simulated protocol of
the protocol table (plcbridge/protocols.py),
calls `add_arguments(parser)` on it and `run(args)` for it (`args.frontend` names the
front-end). `python -m plcbridge.simulators.cli modbus ...` does the same standalone.

Output is meant to be scripted: stdout carries exactly one `listening on HOST:PORT` line
(flushed, so a demo can wait for it; with a reply delay, the network relay's address) and, at
the end, the JSON summary; the live status goes to stderr. `--reply-delay-ms` and
`--reply-jitter-ms` put the network relay (simulators/network.py) in front of the server, as
`[network]` in the device file does; like every flag they override single fields of it. The
scenario flags (--max-outstanding, --early-first-trigger, --wait-trigger-ready, --no-ack,
--restart-after-s, --stuck-trigger-after-s, --stuck-trigger-for-s, --recipe, --recipe-sequence,
--recipe-change-every-s, --wait-active-recipe) override the [program] fields of the same names
(simulators/program.py, devices/default.toml); --optional-outputs and --optional-inputs the
front-end section's lists.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

from plcbridge import protocols
from plcbridge.cliargs import positive
from plcbridge.contract import OPTIONAL_INPUT_SIGNALS, OPTIONAL_OUTPUT_SIGNALS, RECIPE_NONE, Signal
from plcbridge.signals import SignalWaiter

from .device import DeviceFileError, DeviceSettings, load_device
from .program import SimulatedPlc
from .trace import TracingPlc


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags common to every front-end. Defaults are None so the device file's value stands."""
    parser.add_argument("--device", default=None, help="device TOML file, or a bundled device name (default: default)")
    parser.add_argument("--host", default=None, help="address to listen on (device file default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=None, help="TCP port; 0 lets the OS choose (printed)")
    parser.add_argument("--mode", choices=["triggered", "free-run"], default=None)
    parser.add_argument("--trigger-hz", type=float, default=None, help="triggers per second (triggered mode)")
    parser.add_argument("--optional-outputs", type=_output_names, default=None, metavar="NAMES",
                        help="comma-separated optional outputs this PLC takes: defect_count, defect_class, "
                             "anomaly_area, active_recipe, result_recipe (the device file's "
                             "<protocol>.optional_outputs; must match the bridge's)")
    parser.add_argument("--optional-inputs", type=_input_names, default=None, metavar="NAMES",
                        help="comma-separated optional inputs this PLC writes: recipe_id (the device file's "
                             "<protocol>.optional_inputs; must match the bridge's)")
    scenarios = parser.add_argument_group(
        "scenarios", "PLC behaviours to rehearse; each overrides one [program] field of the device file "
                     "(see devices/default.toml)")
    scenarios.add_argument("--max-outstanding", type=int, default=None, metavar="N",
                           help="triggers that may wait for a result at once; > 1 with a --trigger-hz above the "
                                "camera's frame rate: triggers faster than the camera (program.max_outstanding)")
    scenarios.add_argument("--early-first-trigger", action=argparse.BooleanOptionalAction, default=None,
                           help="raise the first trigger as soon as TRIGGER_READY is seen, not one trigger period "
                                "after READY (program.early_first_trigger)")
    scenarios.add_argument("--wait-trigger-ready", action=argparse.BooleanOptionalAction, default=None,
                           help="trigger only while the bridge's TRIGGER_READY bit is set (program.wait_trigger_ready)")
    scenarios.add_argument("--ack", action=argparse.BooleanOptionalAction, default=None,
                           help="--no-ack: never write result_ack_seq; each answer then stays for the bridge's "
                                "result_hold_ms (program.ack)")
    scenarios.add_argument("--restart-after-s", type=float, default=None, metavar="S",
                           help="restart the PLC once, S seconds after the bridge's first write: trigger_seq, part_id "
                                "and result_ack_seq to 0, client connections dropped behind the network relay "
                                "(program.restart_after_s)")
    scenarios.add_argument("--stuck-trigger-after-s", type=float, default=None, metavar="S",
                           help="a stuck trigger edge S seconds after the bridge's first write: trigger_seq + 1 on "
                                "every program tick (program.stuck_trigger_after_s)")
    scenarios.add_argument("--stuck-trigger-for-s", type=float, default=None, metavar="S",
                           help="how long the trigger edge stays stuck (program.stuck_trigger_for_s, default 0.1)")
    scenarios.add_argument("--recipe", type=int, default=None, metavar="N",
                           help=f"the recipe id the PLC writes in recipe_id, 0..{RECIPE_NONE} (0: the station's "
                                f"default recipe; {RECIPE_NONE} names none): needs --optional-inputs recipe_id and "
                                "--optional-outputs active_recipe (program.recipe)")
    scenarios.add_argument("--recipe-sequence", type=_recipe_ids, default=None, metavar="IDS",
                           help="comma-separated recipe ids the product changes go to in turn, cycling "
                                "(program.recipe_sequence)")
    scenarios.add_argument("--recipe-change-every-s", type=float, default=None, metavar="S",
                           help="a product change every S seconds from the bridge's first write: recipe_id := the "
                                "next id of --recipe-sequence; no trigger until active_recipe == recipe_id and READY "
                                "(program.recipe_change_every_s)")
    scenarios.add_argument("--wait-active-recipe", action=argparse.BooleanOptionalAction, default=None,
                           help="trigger only while the bridge's active_recipe equals recipe_id (default); --no-...: "
                                "trigger the new product at once, through the switch (program.wait_active_recipe)")
    parser.add_argument("--reply-delay-ms", type=float, default=None, metavar="MS",
                        help="answer every request this much later, through a relay in front of the server "
                             "(device file network.reply_delay_ms)")
    parser.add_argument("--camera-line-port", type=int, default=None, metavar="PORT",
                        help="pulse a hardware-triggered synthetic camera: one UDP datagram to 127.0.0.1:PORT per "
                             "trigger (camera_line.port; the bridge's camera.trigger_port)")
    parser.add_argument("--reply-jitter-ms", type=float, default=None, metavar="MS",
                        help="plus a uniformly random 0..MS, replies kept in order (network.reply_jitter_ms)")
    parser.add_argument("--seconds", type=positive(float), default=None, help="stop after this long (default: until SIGINT/SIGTERM)")
    parser.add_argument("--summary-json", type=Path, default=None, help="also write the final summary to this file")
    parser.add_argument("--quiet", action="store_true", help="no live status line on stderr")
    parser.add_argument("--trace", type=Path, default=None, metavar="FILE",
                        help="append one JSON line per new result written (result_seq, result, fault, "
                             "CLOCK_MONOTONIC arrival time t); see simulators/trace.py")


def _signal_names(signals: tuple[Signal, ...], what: str) -> Callable[[str], list[str]]:
    """An argparse type for a comma-separated list of `signals`' names ("" for none):
    --optional-outputs "defect_count,defect_class", --optional-inputs "recipe_id"."""
    known = [s.name for s in signals]

    def parse(text: str) -> list[str]:
        names = [n.strip() for n in text.split(",") if n.strip()]
        unknown = [n for n in names if n not in known]
        if unknown:
            raise argparse.ArgumentTypeError(f"unknown {what}(s) {', '.join(unknown)}; known: {', '.join(known)}")
        return names

    return parse


_output_names = _signal_names(OPTIONAL_OUTPUT_SIGNALS, "optional output")
_input_names = _signal_names(OPTIONAL_INPUT_SIGNALS, "optional input")


def _recipe_ids(text: str) -> list[int]:
    """--recipe-sequence: "1,2,3" (validated against 0..65535 with the device file's fields)."""
    try:
        return [int(n) for n in text.split(",") if n.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of recipe ids") from None


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    return {
        f"{args.frontend}.optional_outputs": getattr(args, "optional_outputs", None),
        f"{args.frontend}.optional_inputs": getattr(args, "optional_inputs", None),
        f"{args.frontend}.host": args.host,
        f"{args.frontend}.port": args.port,
        "program.mode": args.mode,
        "program.trigger_hz": args.trigger_hz,
        "program.max_outstanding": getattr(args, "max_outstanding", None),
        "program.early_first_trigger": getattr(args, "early_first_trigger", None),
        "program.wait_trigger_ready": getattr(args, "wait_trigger_ready", None),
        "program.ack": getattr(args, "ack", None),
        "program.restart_after_s": getattr(args, "restart_after_s", None),
        "program.stuck_trigger_after_s": getattr(args, "stuck_trigger_after_s", None),
        "program.stuck_trigger_for_s": getattr(args, "stuck_trigger_for_s", None),
        "program.recipe": getattr(args, "recipe", None),
        "program.recipe_sequence": getattr(args, "recipe_sequence", None),
        "program.recipe_change_every_s": getattr(args, "recipe_change_every_s", None),
        "program.wait_active_recipe": getattr(args, "wait_active_recipe", None),
        "camera_line.port": getattr(args, "camera_line_port", None),
        "network.reply_delay_ms": args.reply_delay_ms,
        "network.reply_jitter_ms": args.reply_jitter_ms,
    }


class _StatusLine:
    """Once-a-second status: rewritten in place on a terminal, one line each in a log."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.tty = stream.isatty()
        self.dirty = False

    def show(self, line: str) -> None:
        if self.tty:
            self.stream.write("\r" + line + "\x1b[K")
            self.dirty = True
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.dirty:
            self.stream.write("\n")
            self.stream.flush()


def run(args: argparse.Namespace) -> int:
    """Serve until SIGINT/SIGTERM or --seconds, then print the JSON summary; exit status."""
    try:
        settings = load_device(args.device, _overrides(args))
    except DeviceFileError as e:
        print(f"plcbridge sim: {e}", file=sys.stderr)
        return 2

    # No lock in a signal handler (plcbridge/signals.py); outside the main thread, no handlers.
    with SignalWaiter(signal.SIGINT, signal.SIGTERM) as signals:
        return _serve(args, settings, signals)


def _serve(args: argparse.Namespace, settings: DeviceSettings, signals: SignalWaiter) -> int:
    """Run the simulator until a stop signal or --seconds; print (and write) the summary."""
    trace = getattr(args, "trace", None)
    try:
        section = getattr(settings, args.frontend)
        program = SimulatedPlc(settings.program) if trace is None else \
            TracingPlc(settings.program, trace, section.optional_outputs, section.optional_inputs)
    except OSError as e:
        print(f"plcbridge sim: cannot open the trace file {trace}: {e.strerror}", file=sys.stderr)
        return 2
    try:
        sim = protocols.frontend_class(args.frontend)(settings, program)
    except ValueError as e:  # a program the front-end's mapping cannot carry (recipes without recipe_id)
        if isinstance(program, TracingPlc):
            program.close()
        print(f"plcbridge sim {args.frontend}: {e}", file=sys.stderr)
        return 2
    status = None if args.quiet else _StatusLine(sys.stderr)
    try:
        # asyncua logs a failed start with its traceback on its own; the message below says it all.
        start_logger = logging.getLogger("asyncua.server.server")
        start_level = start_logger.level
        start_logger.setLevel(logging.CRITICAL)
        try:
            sim.start()
        except (OSError, RuntimeError) as e:  # pymodbus reports a busy port as RuntimeError
            where = getattr(settings, args.frontend)
            print(f"plcbridge sim {args.frontend}: cannot listen on {where.host}:{where.port}: {e}", file=sys.stderr)
            return 1
        finally:
            start_logger.setLevel(start_level)
        print(f"listening on {sim.host}:{sim.port}", flush=True)
        deadline = None if args.seconds is None else time.monotonic() + args.seconds
        while sim.running:
            wait = 1.0 if deadline is None else min(1.0, deadline - time.monotonic())
            if wait <= 0 or signals.wait(wait):
                break
            if deadline is not None and time.monotonic() >= deadline:
                break
            if status is not None:
                status.show(sim.status_line())
    finally:
        sim.stop()
        if isinstance(program, TracingPlc):
            program.close()
        if status is not None:
            status.close()

    summary = sim.summary()
    text = json.dumps(summary, indent=2)
    print(text, flush=True)
    if args.summary_json is not None:
        try:
            args.summary_json.write_text(text + "\n")
        except OSError as e:
            print(f"plcbridge sim: cannot write {args.summary_json}: {e.strerror}", file=sys.stderr)
            return 1
    if sim.error is not None:
        print(f"plcbridge sim: simulator stopped: {sim.error!r}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    """Standalone entry point mirroring `plcbridge sim ...`."""
    parser = argparse.ArgumentParser(prog="python -m plcbridge.simulators.cli", description="PLC simulator")
    sub = parser.add_subparsers(dest="frontend", required=True)
    for name in protocols.SIMULATED:
        add_arguments(sub.add_parser(name, help=f"{protocols.get(name).title} PLC simulator"))
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
