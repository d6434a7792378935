"""`plcbridge promote`: make the shadow model live, through the same checked path as a reload.

    plcbridge promote --config /etc/plcbridge/station.toml            # systemctl reload plcbridge
    plcbridge promote --config station.toml --pid 4242                # a daemon run by hand
    plcbridge promote --config station.toml --no-reload               # edit the file only

The station file stays the one truth of what a station runs: promote swaps the two manifests
in it, `[model] manifest` <-> `[model.shadow] manifest`, so the candidate becomes the live
model and the model it replaces becomes the shadow (the watch after the change compares the
two: `[model.watch] min_agreement`), and everything else in the file (comments, order) is
left as it was. Then it asks the daemon to reload (SIGHUP), which checks the new live model
as any reload does (manifest, hash, opset, shapes, a latency check on this machine) and
applies all of it or nothing. Where the station serves its page ([metrics]), promote waits
for the reload's outcome: refused, the file is put back as it was and the reason printed
(exit 1); applied, the new model's name and version (exit 0). Exit 2: nothing to promote, a
file promote cannot edit, or no daemon to signal.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from plcbridge.cliargs import positive

HELP = "make [model.shadow] the live model (the live one becomes the shadow) and reload the daemon"

_TABLE = re.compile(r"^\s*\[\s*([A-Za-z0-9_.\-\s]+?)\s*\]\s*(#.*)?$")
_MANIFEST = re.compile(r"""^(\s*manifest\s*=\s*)("(?:[^"\\]|\\.)*"|'[^']*')(.*)$""")


class PromoteError(Exception):
    """Nothing was changed: the message says why (one line)."""


class NoOutcome(Exception):
    """The daemon was asked to reload and did not say how it ended in time: the file stays promoted."""


def swap_manifests(text: str, live: str, shadow: str) -> str:
    """The station file's text with the `manifest` values of [model] and [model.shadow]
    swapped, every other line as it was. The values are written as TOML basic strings."""
    lines = text.splitlines(keepends=True)
    table = ""
    where: dict[str, int] = {}
    header: dict[str, int] = {}
    for i, line in enumerate(lines):
        m = _TABLE.match(line)
        if m and not line.lstrip().startswith("[["):
            table = re.sub(r"\s+", "", m.group(1))
            header.setdefault(table, i)
            continue
        if table in ("model", "model.shadow") and _MANIFEST.match(line):
            where[table] = i
    if "model.shadow" not in where:
        raise PromoteError("[model.shadow] has no `manifest = \"...\"` line of its own (dotted keys and inline "
                           "tables are not edited: write it as its own line in [model.shadow])")

    def value(s: str) -> str:
        return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'

    def put(i: int, new: str) -> None:
        m = _MANIFEST.match(lines[i].rstrip("\r\n"))
        assert m is not None
        ending = lines[i][len(lines[i].rstrip("\r\n")):]
        lines[i] = m.group(1) + value(new) + m.group(3) + ending

    put(where["model.shadow"], live)
    if "model" in where:
        put(where["model"], shadow)
    elif "model" in header:  # [model] left the default manifest implicit: say it now
        lines.insert(header["model"] + 1, f"manifest = {value(shadow)}\n")
    else:
        raise PromoteError("the file has no [model] table to write the promoted manifest in")
    return "".join(lines)


def promoted_text(path: Path) -> tuple[str, str, str, str]:
    """(old text, new text, the candidate's manifest, the live one's), checked: the new text
    is a valid station file naming the candidate live and the old live model as the shadow."""
    from plcbridge.config import ConfigError, load_config, load_config_text

    try:
        config = load_config(path)
    except ConfigError as e:
        raise PromoteError(str(e).splitlines()[0]) from None
    if config.model.shadow is None:
        raise PromoteError(f"{path}: no [model.shadow]: nothing to promote")
    live, shadow = config.model.manifest, config.model.shadow.manifest
    old = path.read_text()
    new = swap_manifests(old, live, shadow)
    try:
        check = load_config_text(new, str(path))
    except ConfigError as e:
        raise PromoteError(f"the edited file would not be valid: {str(e).splitlines()[0]}") from None
    if check.model.manifest != shadow or check.model.shadow is None or check.model.shadow.manifest != live:
        raise PromoteError(f"{path}: the manifests could not be swapped where the file states them")
    return old, new, shadow, live


def write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.promote.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def signal_reload(pid: int | None, unit: str) -> str:
    """SIGHUP the daemon (by pid, or `systemctl reload UNIT`); what was done, in words."""
    if pid is not None:
        try:
            os.kill(pid, signal.SIGHUP)
        except OSError as e:
            raise PromoteError(f"cannot signal pid {pid}: {e.strerror}") from None
        return f"SIGHUP sent to pid {pid}"
    try:
        out = subprocess.run(["systemctl", "reload", unit], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise PromoteError(f"systemctl reload {unit}: {e}") from None
    if out.returncode != 0:
        raise PromoteError(f"systemctl reload {unit}: {(out.stderr or out.stdout).strip() or out.returncode}")
    return f"systemctl reload {unit}"


def reload_outcome(url: str, before: dict[str, int], timeout_s: float) -> dict[str, Any]:
    """Wait for the reload the signal started to end (the page's reload counts move); its status."""
    from plcbridge.tools.status import Unreachable, fetch

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            status = fetch(url, "/api/status")
        except Unreachable:
            status = {}
        reloads = status.get("reloads") or {}
        if sum(int(reloads.get(k) or 0) for k in ("applied", "refused")) > sum(before.values()):
            return status
        if time.monotonic() > deadline:
            raise NoOutcome(f"no reload outcome from {url} within {timeout_s:g} s (the check of a big model on a "
                               "busy machine takes long: see `journalctl -u plcbridge` for reload_applied or "
                               "reload_failed); the station file names the candidate as live")
        time.sleep(0.2)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, required=True, metavar="STATION.toml", help="the station file the daemon runs")
    how = p.add_mutually_exclusive_group()
    how.add_argument("--pid", type=int, default=None, help="signal this daemon process (default: systemctl reload)")
    how.add_argument("--no-reload", action="store_true", help="only edit the station file")
    p.add_argument("--unit", default="plcbridge", help="the systemd unit to reload (default plcbridge)")
    p.add_argument("--timeout", type=positive(float), default=300.0, metavar="SECONDS",
                   help="how long to wait for the reload's outcome (default 300)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    path: Path = args.config
    try:
        old, new, candidate, previous = promoted_text(path)
    except (PromoteError, OSError) as e:
        print(f"plcbridge promote: {e}", file=sys.stderr)
        return 2
    url = None
    before: dict[str, int] = {}
    if not args.no_reload:
        from plcbridge.tools.status import Unreachable, fetch, url_from_config

        try:
            url = url_from_config(path)
            reloads = fetch(url, "/api/status").get("reloads") or {}
            before = {k: int(reloads.get(k) or 0) for k in ("applied", "refused")}
        except (ValueError, Unreachable) as e:
            url = None
            print(f"plcbridge promote: the reload's outcome cannot be followed ({e}); see the daemon's log",
                  file=sys.stderr)
    write_atomically(path, new)
    print(f"plcbridge promote: {path}: [model] manifest = {candidate!r} (was the shadow), [model.shadow] manifest = "
          f"{previous!r}", file=sys.stderr)
    if args.no_reload:
        return 0
    try:
        print(f"plcbridge promote: {signal_reload(args.pid, args.unit)}", file=sys.stderr)
    except PromoteError as e:
        write_atomically(path, old)
        print(f"plcbridge promote: {e}; the station file is as it was", file=sys.stderr)
        return 2
    if url is None:
        return 0
    try:
        status = reload_outcome(url, before, args.timeout)
    except NoOutcome as e:
        print(f"plcbridge promote: {e}", file=sys.stderr)
        return 2
    reloads = status.get("reloads") or {}
    model = status.get("model") or {}
    if int(reloads.get("refused") or 0) > before.get("refused", 0):
        write_atomically(path, old)
        print(f"plcbridge promote: the daemon refused the reload: {reloads.get('last')}; the station file is as it "
              f"was, the live model unchanged", file=sys.stderr)
        return 1
    print(f"plcbridge promote: live: {model.get('name')} v{model.get('version')}; the previous model is the shadow "
          "and the watch runs ([model.watch]); `plcbridge status` shows both", file=sys.stderr)
    return 0
