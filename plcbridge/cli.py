"""`plcbridge` command line: run, check-config, demo, sim, docs, validate-model, bench, gate.

Heavy imports (numpy, onnxruntime, the PLC clients) happen inside the commands, after
`limit_native_pools()` has sized the BLAS/OpenMP pools, which read the environment once.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

from plcbridge import protocols
from plcbridge.cliargs import positive
from plcbridge.threads import limit_native_pools


def _load_config_or_report(path: Path | None, *, check: bool = True, warnings: list | None = None):
    """The validated config, or None after printing why it is not usable (to stderr).

    `path` None: the embedded demo station; "-": a station file on stdin. `check`: also make
    the station checks (plcbridge.checks: the model loads, certificate files parse, a folder
    camera's folder holds images). `warnings` gets (source, field, reason) for each warning.
    """
    from plcbridge.checks import config_warnings, station_problems
    from plcbridge.config import ConfigError, load_config, load_config_text

    stdin = path is not None and str(path) == "-"
    source = "<stdin>" if stdin else "<embedded default.toml>" if path is None else str(path)
    try:
        cfg = load_config_text(sys.stdin.read(), source) if stdin else load_config(path)
    except ConfigError as e:
        print("\n".join(f"plcbridge: {line}" for line in str(e).splitlines()), file=sys.stderr)
        return None
    if warnings is not None:
        warnings.extend((source, where, why) for where, why in config_warnings(cfg))
    if check:
        problems = station_problems(cfg)
        if problems:
            print("\n".join(f"plcbridge: {source}: {where}: {why}" for where, why in problems), file=sys.stderr)
            return None
    return cfg


def _cmd_check_config(args: argparse.Namespace) -> int:
    resolved: dict[str, dict] = {}
    bad = 0
    for path in args.files:
        warnings: list = []
        cfg = _load_config_or_report(path, warnings=warnings)
        for source, where, why in warnings:
            print(f"plcbridge: warning: {source}: {where}: {why}", file=sys.stderr)
        if cfg is None:
            bad += 1
        else:
            resolved["<stdin>" if str(path) == "-" else str(path)] = cfg.model_dump(mode="json")
    if len(args.files) == 1:
        for one in resolved.values():
            print(json.dumps(one, indent=2))
    elif resolved:
        print(json.dumps(resolved, indent=2))  # {file: resolved config} for the good ones
    return 2 if bad else 0


def _cmd_run(args: argparse.Namespace) -> int:
    from plcbridge.checks import metrics_bind_message, writable_file_problem

    warnings: list = []
    cfg = _load_config_or_report(args.config, warnings=warnings)
    if cfg is None:
        return 2
    if args.summary_json is not None:
        problem = writable_file_problem(args.summary_json)
        if problem is not None:  # found now, not after the whole run
            print(f"plcbridge: --summary-json: {problem}", file=sys.stderr)
            return 2
    from plcbridge.daemon import Daemon
    from plcbridge.logs import LogPipeline, get_logger, log_event
    from plcbridge.sdnotify import Notifier
    from plcbridge.signals import SignalWaiter

    logs = LogPipeline(cfg.logging.format, cfg.logging.level, cfg.logging.rate_limit_s).start()
    log = get_logger("daemon")
    for source, where, why in warnings:
        log_event(log, "config_warning", 30, config=source, field=where, reason=why)
    # The handlers take no lock (plcbridge/signals.py): the work happens on the main thread.
    with SignalWaiter(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
        notifier = Notifier()
        try:
            daemon = Daemon(cfg, config_path=args.config, notifier=notifier, log_pipeline=logs)
            try:
                daemon.start()
            except OSError as e:
                # The metrics/health endpoint listens first: no http server yet means it is what failed.
                metrics = cfg.metrics.enabled and daemon.http is None
                reason = metrics_bind_message(cfg, e) if metrics else str(e)
                log_event(log, "start_failed", 40, reason=reason)
                print(f"plcbridge: {args.config or '<embedded default.toml>'}: {reason}", file=sys.stderr)
                return 2 if metrics else 1
            # Every 20 ms until READY=1 has gone out (so systemd hears it promptly), then 0.2 s.
            while True:
                got = signals.wait(0.2 if daemon.ready_sent else 0.02)
                if signal.SIGTERM in got or signal.SIGINT in got:
                    break
                if signal.SIGHUP in got:
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
    import math

    from plcbridge.tools.demo import run_demo

    for flag, value in (("--seconds", args.seconds), ("--trigger-hz", args.trigger_hz)):
        if not (value > 0 and math.isfinite(value)):
            print(f"plcbridge demo: {flag} must be a positive number, got {value:g}", file=sys.stderr)
            return 2
    if args.camera_trigger not in (None, "free-run") and args.mode != "triggered":
        print(f"plcbridge demo: --camera-trigger {args.camera_trigger} needs --mode triggered", file=sys.stderr)
        return 2
    return run_demo(args.seconds, args.mode, args.trigger_hz, protocol=args.protocol, verbose=args.verbose,
                    camera_trigger=args.camera_trigger, model=args.model)


def _cmd_docs(args: argparse.Namespace) -> int:
    from plcbridge.tools.docs import DOCUMENTS

    paths = [Path(args.output)] if args.output is not None else list(DOCUMENTS)
    return max(_render_doc(out, args.check) for out in paths)


def _render_doc(out: Path, check: bool) -> int:
    from plcbridge.tools.docs import render_interface_doc

    # The document is both template and output: its hand-written prose is kept, so it must exist.
    try:
        text = render_interface_doc(out)
    except (OSError, UnicodeDecodeError) as e:
        why = getattr(e, "strerror", None) or str(e)
        print(f"plcbridge docs: cannot read {out} (from {os.getcwd()}): {why}; run it from the repository root "
              "or pass --output PATH to the checked-out docs/plc-interface.md", file=sys.stderr)
        return 2
    except ValueError as e:  # not the interface document: its generated sections are missing
        print(f"plcbridge docs: {e}", file=sys.stderr)
        return 2
    if check:
        if out.read_text() != text:
            print(f"plcbridge: {out} is out of date; run `plcbridge docs`", file=sys.stderr)
            return 1
        return 0
    try:
        out.write_text(text)
    except OSError as e:
        print(f"plcbridge docs: cannot write {out}: {e.strerror or e}", file=sys.stderr)
        return 2
    print(f"wrote {out}")
    return 0


def _ort_version_arg(text: str) -> str:
    from plcbridge.inference.validate import parse_ort_version

    try:
        parse_ort_version(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


def _cmd_validate_model(args: argparse.Namespace) -> int:
    """The JSON report goes to stdout alone (a pipeline keeps it as an artifact); progress
    and the reason for a failure go to stderr."""
    import time

    from plcbridge.inference.validate import REFERENCE_MIN_IMAGES, ReferenceFolderError, reference_files, validate_model

    last = time.monotonic()
    reference_dir: Path | None = args.reference
    if reference_dir is not None:  # a wrong folder is found before the checks take their time
        refuse = None
        if str(args.path).startswith("builtin:"):
            refuse = (f"--reference writes into the manifest, and {args.path} is the one installed with plcbridge: "
                      "copy its folder and name the copy")
        else:
            try:
                files = len(reference_files(reference_dir))
            except ReferenceFolderError as e:
                refuse = str(e)
            else:
                if files < REFERENCE_MIN_IMAGES:
                    refuse = (f"{reference_dir}: {files} file(s); a reference needs at least {REFERENCE_MIN_IMAGES} "
                              "images (a few hundred images of the line's usual parts make a useful one)")
        if refuse is not None:
            print(f"plcbridge validate-model: {refuse}", file=sys.stderr)
            return 2

    def progress(done: int, total: int) -> None:
        nonlocal last
        if time.monotonic() - last >= 1.0:
            last = time.monotonic()
            print(f"plcbridge validate-model: latency: {done}/{total} runs", file=sys.stderr, flush=True)

    checked: list[Any] = []
    report = validate_model(args.path, target_ort_version=args.target_ort_version, runs=args.runs, require_device=True,
                            p99_max_ms=args.p99_max_ms, device=args.device, progress=progress,
                            on_pass=checked.append if reference_dir is not None else None)
    if reference_dir is None or not checked:
        print(report.to_json())
    if report.bad_spec:  # a wrong path is not a bad model: exit 2, so CI can tell them apart
        print(f"plcbridge validate-model: {args.path}: {report.check('manifest').detail}", file=sys.stderr)
        return 2
    if not report.ok:
        print(f"plcbridge validate-model: {args.path}: FAILED {report.failure}", file=sys.stderr)
        return 1
    if not checked or reference_dir is None:
        return 0
    model = checked[0]
    try:
        code, reference = _write_reference(args.path, model, reference_dir)
    finally:
        model.close()
    print(json.dumps({**report.to_dict(), "reference": reference}, indent=2))
    return code


REFERENCE_PROGRESS_EVERY = 100  # images


def _write_reference(spec: str, model: Any, folder: Path) -> tuple[int, dict[str, Any]]:
    """validate-model --reference, after every check passed: the checked model judges the
    folder, the histogram goes into its manifest.json. (exit code, the report's `reference`)."""
    from plcbridge.inference.errors import ModelError
    from plcbridge.inference.validate import ReferenceFolderError, build_reference, write_reference

    def progress(done: int, total: int) -> None:
        if done % REFERENCE_PROGRESS_EVERY == 0 or done == total:
            print(f"plcbridge validate-model: reference: {done}/{total} files", file=sys.stderr, flush=True)

    try:
        built = build_reference(model, folder, progress=progress)
    except ReferenceFolderError as e:
        print(f"plcbridge validate-model: {spec}: no reference written: {e}", file=sys.stderr)
        return 2, {"written": False, "error": str(e)}
    ref = built.reference
    try:
        write_reference(model.manifest_path, ref)
    except ModelError as e:
        print(f"plcbridge validate-model: {spec}: no reference written: {e}", file=sys.stderr)
        return 1, {"written": False, "error": str(e)}
    left_out = f"{ref.unreadable} unreadable, {ref.refused} refused" + (f"; first: {built.first_problem}"
                                                                         if built.first_problem else "")
    print(f"plcbridge validate-model: reference written to {model.manifest_path}: {ref.images} of {built.files} "
          f"images in {folder} judged ({left_out}), {built.failed} FAIL ({built.failed / ref.images:.1%}), "
          f"{len(ref.counts)} score bins", file=sys.stderr, flush=True)
    return 0, {"written": True, "manifest_path": str(model.manifest_path), "files": built.files, "failed": built.failed,
               **ref.model_dump(mode="json")}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="plcbridge", description="Camera -> ONNX Runtime -> PLC bridge, fail-safe by design")
    p.add_argument("--version", action=_VersionAction)
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("run", help="run the daemon")
    r.add_argument("--config", type=Path, default=None,
                   help="station TOML; it must name its [camera] and [model] (default: the embedded demo station)")
    r.add_argument("--summary-json", type=Path, default=None, metavar="FILE",
                   help="at exit, write the run's summary and write-loop lateness samples to FILE (used by bench)")
    r.set_defaults(func=_cmd_run)

    c = sub.add_parser("check-config", help="validate station files (and what they name: model, certificates, "
                                            "camera folder) and print them resolved; exit 2 if any is bad")
    c.add_argument("files", type=Path, nargs="+", metavar="FILE", help="station TOML; - reads one from stdin")
    c.set_defaults(func=_cmd_check_config)

    d = sub.add_parser("demo", help="simulator + daemon + bundled model + synthetic camera; prints a JSON summary")
    d.add_argument("--seconds", type=float, default=20.0)
    d.add_argument("--mode", choices=["triggered", "free-run"], default="triggered")
    d.add_argument("--protocol", choices=protocols.SIMULATED, default="modbus")
    d.add_argument("--trigger-hz", type=float, default=10.0, help="simulated line rate in triggered mode")
    d.add_argument("--camera-trigger", choices=["free-run", "software", "hardware"], default=None,
                   help="software: one frame taken per trigger; hardware: the simulated PLC pulses the camera's "
                        "trigger input (camera.trigger); free-run: the camera streams (default: the station's, "
                        "software when triggered)")
    d.add_argument("--model", default=None, metavar="SPEC",
                   help="the model to run (default builtin:demo, the defect classifier); builtin:anomaly: the anomaly "
                        "detector trained on good surfaces only; or any manifest, directory or .onnx with one")
    d.add_argument("--verbose", action="store_true", help="show the daemon's info logs on stderr")
    d.set_defaults(func=_cmd_demo)

    s = sub.add_parser("sim", help="PLC simulator for commissioning")
    ssub = s.add_subparsers(dest="frontend", required=True)
    from plcbridge.simulators.cli import add_arguments, run

    for name in protocols.SIMULATED:
        add_arguments(ssub.add_parser(name, help=f"{protocols.get(name).title} PLC simulator"))
    s.set_defaults(func=run)

    g = sub.add_parser("docs", help="regenerate the generated tables of docs/plc-interface.md (signal contract), "
                                    "docs/configuration.md (config schema) and docs/mqtt.md (MQTT payload schemas)")
    g.add_argument("--output", default=None, metavar="PATH",
                   help="one document to render (default: all three, from the repository root)")
    g.add_argument("--check", action="store_true", help="exit 1 if the file differs from what would be written")
    g.set_defaults(func=_cmd_docs)

    from plcbridge.tools import archive as archive_tool
    from plcbridge.tools import camera as camera_tool
    from plcbridge.tools import manifest as manifest_tool
    from plcbridge.tools.bench import gate
    from plcbridge.tools.bench import run as bench

    manifest_tool.add_arguments(sub.add_parser("manifest", help=manifest_tool.HELP))
    cam = sub.add_parser("camera", help="GenICam commissioning: list (discovery), info, grab one frame")
    camera_tool.add_arguments(cam)
    cam.set_defaults(func=camera_tool.run)
    arc = sub.add_parser("archive", help="the image archive, read only: list entries, show one, export a time range")
    archive_tool.add_arguments(arc)
    arc.set_defaults(func=archive_tool.run)

    bench.add_arguments(sub.add_parser("bench", help="benchmark the whole pipeline against the PLC simulator; JSON report + PNG"))
    gate.add_arguments(sub.add_parser("gate", help="hardware-in-the-loop promotion gate: bench against a budget TOML, exit 1 if broken"))

    from plcbridge.tools import promote as promote_tool
    from plcbridge.tools import status as status_tool

    status_tool.add_arguments(sub.add_parser("status", help=status_tool.HELP))
    promote_tool.add_arguments(sub.add_parser("promote", help=promote_tool.HELP))

    v = sub.add_parser("validate-model", help="check a model before promotion; prints a JSON report, exit 1 if a check fails")
    v.add_argument("path", help="manifest.json, the model directory holding it, the .onnx file named by the "
                                "manifest.json beside it, or builtin:NAME (a path that leads to no manifest: exit 2)")
    v.add_argument("--target-ort-version", type=_ort_version_arg, default=None, metavar="X.Y",
                   help="ONNX Runtime the model will run on, for the opset check (default: the installed one)")
    v.add_argument("--runs", type=positive(int), default=200, help="timed runs for the latency figures (default 200)")
    v.add_argument("--p99-max-ms", type=positive(float), default=None, metavar="MS",
                   help="fail when p99 latency (preprocess + inference) is above this (default: report only)")
    v.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    v.add_argument("--reference", type=Path, default=None, metavar="FOLDER",
                   help="when every check passes, judge each image in FOLDER (at least 50) and write the histogram of "
                        "the scores into the manifest as its reference score distribution, for drift (docs/drift.md); "
                        "a folder that cannot make one: exit 2, nothing written")
    v.set_defaults(func=_cmd_validate_model)
    return p


def version_text() -> str:
    """"plcbridge X.Y.Z", plus " (git abc1234)" when the package runs from a git checkout."""
    import subprocess
    from importlib import metadata

    try:
        text = f"plcbridge {metadata.version('plcbridge')}"
    except metadata.PackageNotFoundError:
        text = "plcbridge (version unknown: not installed)"
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=Path(__file__).resolve().parent,
                                check=False, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return text
    if commit.returncode == 0 and commit.stdout.strip():
        text += f" (git {commit.stdout.strip()})"
    return text


class _VersionAction(argparse.Action):
    """`--version`, computed only when asked for (it may run git)."""

    def __init__(self, option_strings, dest, **kwargs) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS,
                         help="print the version (and git commit, in a checkout) and exit")

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        print(version_text())
        parser.exit()


def main(argv: list[str] | None = None) -> int:
    limit_native_pools()
    try:
        try:
            args = build_parser().parse_args(argv)
            rc = args.func(args)
        except SystemExit:  # argparse: --help, --version, usage errors; their text may meet a closed pipe too
            sys.stdout.flush()
            raise
        except KeyboardInterrupt:  # Ctrl-C in a command without its own handling: no traceback
            print("plcbridge: interrupted", file=sys.stderr)
            return 130
        sys.stdout.flush()  # here, not at interpreter exit, so that a closed pipe is caught below
        return rc
    except BrokenPipeError:
        # Python docs, "Note on SIGPIPE": the reader (e.g. `| head`) went away. Point stdout at
        # devnull so the interpreter's own flush at exit cannot fail again, and exit like SIGPIPE.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141
