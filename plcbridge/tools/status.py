"""`plcbridge status`: one screen of a running daemon, read from its station page's JSON API
(/api/status and /api/decisions, docs/station-page.md): readiness with the reasons, the PLC
blocks as the PLC got and gave them, the link, MQTT (when `[mqtt]` is on: the broker
connection and the spool's backlog), counts and yield, the last decisions.

    plcbridge status                           # http://127.0.0.1:9108
    plcbridge status --config station.toml     # that station's [metrics] host and port
    plcbridge status --url http://127.0.0.1:9200 --watch 2

It reads what the daemon serves and prints it; every name, bit and code on the screen comes
from the daemon's JSON, which takes them from the signal contract. `--watch [SECONDS]`
clears the screen and prints it again until Ctrl-C (a daemon that goes away shows as one
line there until it is back). A daemon that does not answer is one line on stderr and exit
1; a station file that cannot be read, exit 2.

The lead registers it in cli.py as

    status_tool.add_arguments(sub.add_parser("status", help=status_tool.HELP))
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import textwrap
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from plcbridge.cliargs import positive

HELP = "show a running daemon's readiness, PLC blocks, link, counts and last decisions (its station page's API)"
DEFAULT_URL = "http://127.0.0.1:9108"
TIMEOUT_S = 2.0
DECISIONS = 10
CLEAR = "\x1b[H\x1b[2J"


class Unreachable(Exception):
    """The daemon did not answer as a station page does: the message says how (one line)."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--url", default=None, help=f"the daemon's metrics/page address (default: from --config, else {DEFAULT_URL})")
    p.add_argument("--config", type=Path, default=None, metavar="STATION.toml",
                   help="take the address from this station file's [metrics] host and port")
    p.add_argument("--watch", nargs="?", type=positive(float), const=1.0, default=None, metavar="SECONDS",
                   help="print it again every SECONDS (default 1) until Ctrl-C")
    p.set_defaults(func=run)


def url_from_config(path: Path) -> str:
    """http://HOST:PORT of a station file's [metrics]; a wildcard host is asked on loopback."""
    from plcbridge.config import load_config

    m = load_config(path).metrics
    if not m.enabled:
        raise ValueError(f"{path}: [metrics] enabled = false: this station serves no page to ask")
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(m.host, m.host)
    return f"http://[{host}]:{m.port}" if ":" in host else f"http://{host}:{m.port}"


def fetch(url: str, path: str) -> dict[str, Any]:
    """GET url+path as JSON, or Unreachable saying why in one line."""
    try:
        with urllib.request.urlopen(url + path, timeout=TIMEOUT_S) as r:
            body = r.read()
    except urllib.error.HTTPError as e:
        raise Unreachable(f"{url}{path} answered HTTP {e.code}: not a plcbridge daemon with the station page?") from None
    except urllib.error.URLError as e:
        why = e.reason.strerror if isinstance(e.reason, OSError) and e.reason.strerror else str(e.reason)
        raise Unreachable(f"no plcbridge daemon answers at {url} ({why})") from None
    except (TimeoutError, OSError) as e:
        raise Unreachable(f"no plcbridge daemon answers at {url} ({e or 'timed out'})") from None
    try:
        data = json.loads(body)
    except ValueError:
        raise Unreachable(f"{url}{path} did not answer JSON: not a plcbridge daemon?") from None
    if not isinstance(data, dict):
        raise Unreachable(f"{url}{path} did not answer a JSON object: not a plcbridge daemon?")
    return data


def _ms(v: Any) -> str:
    return "-" if v is None else f"{v:g} ms"


def _pct(v: Any) -> str:
    return "-" if v is None else f"{v * 100:.1f} %"


def _wrap(text: str, width: int) -> list[str]:
    return textwrap.wrap(text, width, initial_indent="  ", subsequent_indent="    ") or ["  "]


def render(status: dict[str, Any], decisions: list[dict[str, Any]], url: str, width: int = 100) -> str:
    """The screen, as text."""
    s, out = status, []
    st = s["station"]
    up = "" if s.get("uptime_s") is None else f"   up {s['uptime_s']:g} s"
    out.append(f"{st['name']} ({st['mode']}, {st['protocol']} {st['plc']}, camera {st['camera']})   "
               f"{'READY' if s['ready'] else 'NOT READY'}{up}   {s['time_utc']}   {url}")
    out.append("readiness")
    for p in s["readiness"]:
        line = f"  {p['part']:<11} {'OK' if p['ok'] else 'NOT OK'}"
        if not p["ok"]:
            line += f"  {p['reason']} (for {p['for_s']} s, since {p.get('since_utc') or '?'})"
        out.append(line)
    link = s["plc"]["link"]
    if link["connected"]:
        out.append(f"PLC link: connected (session {link['sessions']}), reply {_ms(link['reply_age_ms'])} old, "
                   f"{link['exchanges']} exchanges, {link['late_exchanges']} late, {link['reconnects']} reconnects"
                   + ("" if link["inputs_ok"] else ", INPUTS STALE"))
    else:
        out.append(f"PLC link: NOT CONNECTED ({link['last_error'] or 'connecting'}), {link['reconnects']} reconnects")
    mqtt = s.get("mqtt")
    if mqtt:  # [mqtt] on: the connection to the plant's broker and the spool's backlog
        age = mqtt.get("backlog_oldest_age_s")
        backlog = (f"backlog {mqtt['backlog_messages']} ({mqtt['backlog_bytes']} bytes"
                   + (f", oldest {age:g} s" if age is not None else "") + ")")
        counts = f"{mqtt.get('published', 0)} published, {mqtt.get('dropped', 0)} dropped"
        if mqtt["connected"]:
            out.append(f"MQTT: connected to {mqtt['broker']}, {backlog}, {counts}")
        else:
            out += textwrap.wrap(f"MQTT: NOT CONNECTED to {mqtt['broker']} ({mqtt.get('last_error') or mqtt['state']}), "
                                 f"{backlog}, {counts}", width, subsequent_indent="    ")
    outputs, inputs = s["plc"]["outputs"], s["plc"]["inputs"]
    if outputs is None:
        out.append("outputs: none has reached the PLC yet")
    else:
        out.append(f"outputs, as the PLC got them {_ms(outputs['age_ms'])} ago:")
        out += _wrap(" ".join(f"{k}={v}" for k, v in outputs["values"].items()), width)
        out += _wrap(f"status: {' '.join(outputs['status_bits']) or '(no bit set)'}; result {outputs['result']}; "
                     f"fault {outputs['fault']}", width)
    if inputs is None:
        out.append("inputs: none read yet")
    else:
        out.append(f"inputs, as read {_ms(inputs['age_ms'])} ago:")
        out += _wrap(" ".join(f"{k}={v}" for k, v in inputs["values"].items()), width)
    names = list(s["counts"]["since_start"])
    out.append(f"{'counts':<13}" + "".join(f"{n:>10}" for n in names) + f"{'yield':>10}")
    for label, key in (("since start", "since_start"), ("last hour", "last_hour")):
        counts = s["counts"][key]
        out.append(f"  {label:<11}" + "".join(f"{counts.get(n, 0):>10}" for n in names) + f"{_pct(s['yield'][key]):>10}")
    m, w = s["model"], s["write_loop"]
    late = w.get("lateness_ms") or {}
    model = f"model v{m['version']} ({m['manifest']})" if m["loaded"] else f"model NOT LOADED ({m.get('error') or 'loading'})"
    out.append(f"{model}; write loop {w['period_ms']:g} ms, {w['ticks']} ticks, {w['overruns']} overruns, lateness "
               f"p50 {_ms(late.get('p50'))} p99 {_ms(late.get('p99'))} max {_ms(late.get('max'))}")
    out += _model_operations(s)
    out.append(f"last decisions ({len(decisions)})" if decisions else "last decisions: none yet")
    for d in decisions:
        t = (d.get("time_utc") or "")[11:23]
        score = f"{d['score']:.4f}" if isinstance(d.get("score"), (int, float)) else "-"
        about = "  ".join(f"{k.split('_')[0]} {d[k]}" for k in ("part_id", "trigger_seq", "frame_seq") if d.get(k) is not None)
        fault = "" if d.get("fault") in (None, "NONE") else f"  {d['fault']}"
        line = f"  {t}  {d.get('result', '?'):<8} {score}{fault}  {about}"
        if d.get("reason"):
            line += f"  {d['reason']}"
        out.append(line[:width])
    return "\n".join(out)


def _model_operations(s: dict[str, Any]) -> list[str]:
    """The lines of recipes, the shadow, the watch and a rollback, where the daemon has them."""
    out = []
    r = s.get("recipe")
    if r:
        active = "none (switching or unknown)" if r.get("active") is None else r["active"]
        out.append(f"recipe: asked {r['asked']} ({r.get('asked_name') or 'unknown'}), active {active}, loaded "
                   f"{r.get('loaded')}" + (f", last switch {_ms(r['last_switch_ms'])}" if r.get("last_switch_ms") else "")
                   + (f"; ERROR {r['error']}" if r.get("error") else ""))
    sh = s.get("shadow")
    if sh:
        cand = sh.get("candidate") or {}
        late = sh.get("latency_ms") or {}
        out.append(f"shadow: {cand.get('name', sh.get('manifest'))} v{cand.get('version', '?')} {sh.get('state')}, "
                   f"agreement {_pct(sh.get('agreement'))} of {sh.get('compared', 0)}, dropped "
                   f"{sum((sh.get('dropped') or {}).values())}, p99 {_ms(late.get('p99'))}")
    wt = s.get("watch")
    if wt and wt.get("state") not in (None, "idle"):
        out.append(f"watch of v{wt.get('new_version')} (last-known-good v{wt.get('old_version')}): {wt['state']}, "
                   f"{wt.get('decisions')}/{wt.get('window')} decisions")
    rb = (s.get("reloads") or {}).get("rolled_back")
    if rb:
        out.append(f"MODEL ROLLED BACK to v{rb.get('old_version')} ({rb.get('trigger')}): {rb.get('reason')}")
    return out


def screen(url: str, width: int) -> str:
    status = fetch(url, "/api/status")
    decisions = fetch(url, f"/api/decisions?limit={DECISIONS}").get("decisions", [])
    return render(status, decisions, url, width)


def run(args: argparse.Namespace) -> int:
    if args.url:
        url = args.url.rstrip("/")
    elif args.config is not None:
        try:
            url = url_from_config(args.config)
        except Exception as e:  # noqa: BLE001 - ConfigError, ValueError: said, no traceback
            for line in (str(e) or type(e).__name__).splitlines():
                print(f"plcbridge status: {line}", file=sys.stderr)
            return 2
    else:
        url = DEFAULT_URL
    width = max(60, shutil.get_terminal_size((100, 40)).columns)
    if args.watch is None:
        try:
            print(screen(url, width))
        except Unreachable as e:
            print(f"plcbridge status: {e}", file=sys.stderr)
            return 1
        return 0
    try:
        while True:
            try:
                text = screen(url, width)
            except Unreachable as e:
                text = f"plcbridge status: {e}; trying again every {args.watch:g} s"
            sys.stdout.write(CLEAR + text + "\n")
            sys.stdout.flush()
            time.sleep(args.watch)
    except KeyboardInterrupt:
        return 0
