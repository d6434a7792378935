"""`plcbridge` command line: run, check-config, demo, sim, docs, validate-model, bench, gate.

Heavy imports (numpy, onnxruntime, pymodbus) happen inside the commands, after
`limit_native_pools()` has sized the BLAS/OpenMP pools, which read the environment once.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from pathlib import Path

from plcbridge.threads import limit_native_pools


def _load_config_or_report(path: Path | None):
    """The validated config, or None after printing why it is not valid (to stderr)."""
    from plcbridge.config import ConfigError, load_config

    try:
        return load_config(path)
    except ConfigError as e:
        print(f"plcbridge: {e}", file=sys.stderr)
        return None


def _cmd_check_config(args: argparse.Namespace) -> int:
    cfg = _load_config_or_report(args.file)
    if cfg is None:
        return 2
    print(json.dumps(cfg.model_dump(mode="json"), indent=2))
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    cfg = _load_config_or_report(args.config)
    if cfg is None:
        return 2
    from plcbridge.daemon import Daemon
    from plcbridge.logs import LogPipeline, get_logger, log_event
    from plcbridge.sdnotify import Notifier

    logs = LogPipeline(cfg.logging.format, cfg.logging.level, cfg.logging.rate_limit_s).start()
    log = get_logger("daemon")
    stop, hup = threading.Event(), threading.Event()
    # Handlers only set flags: the work happens on the main thread, never in a signal handler.
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGHUP, lambda *_: hup.set())
    notifier = Notifier()
    try:
        try:
            daemon = Daemon(cfg, config_path=args.config, notifier=notifier, log_pipeline=logs).start()
        except OSError as e:  # e.g. the metrics port is taken
            log_event(log, "start_failed", 40, reason=str(e))
            return 1
        # Every 20 ms until READY=1 has gone out (so systemd hears it promptly), then 0.2 s.
        while not stop.wait(0.2 if daemon.ready_sent else 0.02):
            if hup.is_set():
                hup.clear()
                log_event(log, "reload_requested", 20, signal="SIGHUP", config=str(args.config or "<embedded default>"))
                daemon.request_reload()  # in the background: SIGTERM is still seen at once
            daemon.poll()
        daemon.stop()
        if args.summary_json is not None:
            _write_run_summary(args.summary_json, daemon)
        return 0
    finally:
        notifier.close()
        logs.stop()


def _write_run_summary(path: Path, daemon) -> None:
    """`run --summary-json`: the daemon's summary plus every write-loop lateness sample (ms,
    in tick order) for `plcbridge bench`'s timeline. Written once, after the final write."""
    data = {**daemon.summary(), "lateness_samples_ms": [round(v * 1000, 4) for v in daemon.loop.lateness.values()]}
    try:
        path.write_text(json.dumps(data) + "\n")
    except OSError as e:
        print(f"plcbridge: cannot write {path}: {e.strerror}", file=sys.stderr)


def _cmd_demo(args: argparse.Namespace) -> int:
    from plcbridge.demo import run_demo

    if args.camera_trigger != "free-run" and args.mode != "triggered":
        print(f"plcbridge demo: --camera-trigger {args.camera_trigger} needs --mode triggered", file=sys.stderr)
        return 2
    return run_demo(args.seconds, args.mode, args.trigger_hz, protocol=args.protocol, verbose=args.verbose,
                    camera_trigger=args.camera_trigger)


def _cmd_docs(args: argparse.Namespace) -> int:
    from plcbridge.docs import render_interface_doc

    text = render_interface_doc(Path(args.output))
    if args.check:
        current = Path(args.output).read_text() if Path(args.output).exists() else ""
        if current != text:
            print(f"plcbridge: {args.output} is out of date; run `plcbridge docs`", file=sys.stderr)
            return 1
        return 0
    Path(args.output).write_text(text)
    print(f"wrote {args.output}")
    return 0


def _ort_version_arg(text: str) -> str:
    from plcbridge.inference.validate import parse_ort_version

    try:
        parse_ort_version(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


def _positive(kind: type):
    def parse(text: str):
        value = kind(text)  # ValueError -> argparse's "invalid ... value"
        if not value > 0:
            raise argparse.ArgumentTypeError(f"must be positive, got {text}")
        return value

    parse.__name__ = kind.__name__
    return parse


def _cmd_validate_model(args: argparse.Namespace) -> int:
    """The JSON report goes to stdout alone (a pipeline keeps it as an artifact); progress
    and the reason for a failure go to stderr."""
    import time

    from plcbridge.inference.validate import validate_model

    last = time.monotonic()

    def progress(done: int, total: int) -> None:
        nonlocal last
        if time.monotonic() - last >= 1.0:
            last = time.monotonic()
            print(f"plcbridge validate-model: latency: {done}/{total} runs", file=sys.stderr, flush=True)

    report = validate_model(args.path, target_ort_version=args.target_ort_version, runs=args.runs,
                            p99_max_ms=args.p99_max_ms, device=args.device, progress=progress)
    print(report.to_json())
    if not report.ok:
        print(f"plcbridge validate-model: {args.path}: FAILED {report.failure}", file=sys.stderr)
        return 1
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="plcbridge", description="Camera -> ONNX Runtime -> PLC bridge, fail-safe by design")
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("run", help="run the daemon")
    r.add_argument("--config", type=Path, default=None, help="station TOML (default: the embedded demo station)")
    r.add_argument("--summary-json", type=Path, default=None, metavar="FILE",
                   help="at exit, write the run's summary and write-loop lateness samples to FILE (used by bench)")
    r.set_defaults(func=_cmd_run)

    c = sub.add_parser("check-config", help="validate a config file and print it resolved")
    c.add_argument("file", type=Path)
    c.set_defaults(func=_cmd_check_config)

    d = sub.add_parser("demo", help="simulator + daemon + bundled model + synthetic camera; prints a JSON summary")
    d.add_argument("--seconds", type=float, default=20.0)
    d.add_argument("--mode", choices=["triggered", "free-run"], default="triggered")
    d.add_argument("--protocol", choices=["modbus", "opcua", "enip"], default="modbus")
    d.add_argument("--trigger-hz", type=float, default=10.0, help="simulated line rate in triggered mode")
    d.add_argument("--camera-trigger", choices=["free-run", "software", "hardware"], default="free-run",
                   help="software: one frame taken per trigger; hardware: the simulated PLC pulses the camera's "
                        "trigger input (camera.trigger); free-run: the camera streams")
    d.add_argument("--verbose", action="store_true", help="show the daemon's info logs on stderr")
    d.set_defaults(func=_cmd_demo)

    s = sub.add_parser("sim", help="PLC simulator for commissioning")
    ssub = s.add_subparsers(dest="frontend", required=True)
    from plcbridge.simulators.cli import FRONTENDS, add_arguments, run

    for name in FRONTENDS:
        add_arguments(ssub.add_parser(name, help=f"{name} PLC simulator"))
    s.set_defaults(func=run)

    g = sub.add_parser("docs", help="regenerate docs/plc-interface.md from the signal contract")
    g.add_argument("--output", default="docs/plc-interface.md")
    g.add_argument("--check", action="store_true", help="exit 1 if the file differs from what would be written")
    g.set_defaults(func=_cmd_docs)

    from plcbridge import bench, gate

    bench.add_arguments(sub.add_parser("bench", help="benchmark the whole pipeline against the PLC simulator; JSON report + PNG"))
    gate.add_arguments(sub.add_parser("gate", help="hardware-in-the-loop promotion gate: bench against a budget TOML, exit 1 if broken"))

    v = sub.add_parser("validate-model", help="check a model before promotion; prints a JSON report, exit 1 if a check fails")
    v.add_argument("path", help="manifest.json, the model directory holding it, or builtin:NAME")
    v.add_argument("--target-ort-version", type=_ort_version_arg, default=None, metavar="X.Y",
                   help="ONNX Runtime the model will run on, for the opset check (default: the installed one)")
    v.add_argument("--runs", type=_positive(int), default=200, help="timed runs for the latency figures (default 200)")
    v.add_argument("--p99-max-ms", type=_positive(float), default=None, metavar="MS",
                   help="fail when p99 latency (preprocess + inference) is above this (default: report only)")
    v.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    v.set_defaults(func=_cmd_validate_model)
    return p


def main(argv: list[str] | None = None) -> int:
    limit_native_pools()
    args = build_parser().parse_args(argv)
    return args.func(args)
