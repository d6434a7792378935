"""`plcbridge archive list | show | export`: the image archive (plcbridge/archive, docs/archive.md)
for the quality engineer, read from the folder the daemon writes.

* `list [--since T] [--until T] [--result R] [--limit N] [--json]`: one line per entry, oldest
  first (UTC time, result, fault, score, part_id, plc_session, decision_id, image path), or
  one JSON object per line.
* `show DECISION_ID`: the entry's sidecar (its decision record), its image path, and its
  overlay's (the frame with the findings drawn) when it has one.
* `export --since T --until T [--result R] --out PATH`: the entries' images, overlays and
  sidecars and an `index.csv` (with the findings: defects counted, worst class, area), as a
  tar (PATH ends in .tar, .tar.gz or .tgz) or in a new folder; either mirrors the archive's
  own layout (DAY/HOUR/NAME), so an unpacked export is itself an archive that `--path` can
  read.

The folder comes from `--config STATION.toml` (its `[archive] path`) or `--path DIR`. The tool
only reads the archive: it never deletes, moves or writes a file there (the daemon's writer
owns it, and may evict the oldest entries while the tool runs: an entry gone half way is
skipped with a warning). Every user error is one line on stderr and exit 1, never a
traceback. Times are half-open ranges, [since, until), in UTC unless they carry an offset.

Only the standard library is imported at the top: `plcbridge` builds every subcommand's
parser at each start, and the archive package imports OpenCV (its writer encodes frames).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import re
import sys
import tarfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from plcbridge.archive.store import Entry

PROG = "plcbridge archive"
# The results in the entries' names; SHADOW: a shadow model's disagreement (store.SHADOW_TAG,
# spelled here so that the tool starts without the archive writer's OpenCV).
RESULTS = ("PASS", "FAIL", "FAILSAFE", "SHADOW")
TAR_SUFFIXES = (".tar.gz", ".tgz", ".tar")
# At most one progress line per this many seconds of an export (none for a quick one).
PROGRESS_INTERVAL_S = 1.0
# index.csv: the record fields a reviewer sorts and filters by, the findings (anomaly,
# detection, segmentation models: defects counted, the worst one's class name (its id when
# the model has no names), the area in frame pixels: the worst defect's, or the anomalous
# one), then where the files are (overlay: empty when the entry has none).
INDEX_FIELDS = ("saved_utc", "decision_id", "result", "fault", "score", "part_id", "plc_session", "trigger_seq",
                "frame_seq", "model_version", "station", "latency_ms", "defects", "worst_class", "area_px",
                "image", "sidecar", "overlay")
_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_RELATIVE = re.compile(r"-(\d+(?:\.\d+)?)([smhd])")
_TIME_HELP = ("an ISO date (2026-12-06), a datetime (2026-12-06T21:00, UTC unless it has an offset such as "
              "+01:00 or Z), a relative time (-2h, -30m, -7d) or now")


class ToolError(Exception):
    """A user error: printed as one line, exit 1."""


# ---------------------------------------------------------------------- command line


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """`archive`'s options and subcommands. --config/--path are accepted before or after the
    subcommand (`archive --path D list` and `archive list --path D`): the subcommand's copies
    default to SUPPRESS so that they never overwrite what was given before it."""
    _folder_options(parser, None)
    sub = parser.add_subparsers(dest="archive_command", required=True, metavar="{list,show,export}")

    ls = sub.add_parser("list", help="one line per archived entry, oldest first")
    _folder_options(ls, argparse.SUPPRESS)
    _range_options(ls, required=False)
    ls.add_argument("--limit", default=None, metavar="N", help="only the newest N of the entries that match")
    ls.add_argument("--json", action="store_true",
                    help="one JSON object per line: the sidecar plus image_path, sidecar_path, overlay_path")

    show = sub.add_parser("show", help="one entry's sidecar (its decision record), image path and overlay path")
    _folder_options(show, argparse.SUPPRESS)
    show.add_argument("decision_id", metavar="DECISION_ID", help="the decision id (the journal's), or a unique beginning of it")
    show.add_argument("--json", action="store_true", help="one JSON object: record, image_path, overlay_path, sidecar_path")

    ex = sub.add_parser("export", help="copy a time range's images, overlays, sidecars and an index.csv to a tar or a new folder")
    _folder_options(ex, argparse.SUPPRESS)
    _range_options(ex, required=True)
    ex.add_argument("--out", type=Path, default=None, metavar="PATH",
                    help="required: a .tar, .tar.gz or .tgz file (must not exist), else a folder (new, or empty)")


def _folder_options(parser: argparse.ArgumentParser, default: Any) -> None:
    parser.add_argument("--config", type=Path, default=default, metavar="STATION.toml",
                        help="the station file whose [archive] path is the archive folder")
    parser.add_argument("--path", type=Path, default=default, metavar="DIR", help="the archive folder itself")


def _range_options(parser: argparse.ArgumentParser, *, required: bool) -> None:
    # argparse takes a value that starts with "-" for an option unless it looks like a
    # negative number: widen that to the relative times, so `--since -2h` works as written
    # (no option of these parsers looks like one). Without the attribute, --since=-2h does.
    if hasattr(parser, "_negative_number_matcher"):
        setattr(parser, "_negative_number_matcher", re.compile(r"^-\d+$|^-\d*\.\d+$|^-\d+(\.\d+)?[smhdSMHD]$"))
    need = "required: " if required else ""
    parser.add_argument("--since", default=None, metavar="T", help=f"{need}entries saved at or after T: {_TIME_HELP}")
    parser.add_argument("--until", default=None, metavar="T", help=f"{need}entries saved before T (same forms)")
    parser.add_argument("--result", default=None, metavar="R",
                        help="PASS, FAIL, FAILSAFE or SHADOW (a shadow model's disagreement), or several with "
                             "commas (FAIL,FAILSAFE); any case")


def main(argv: list[str] | None = None) -> int:
    """The tool on its own (tests, scripts): `plcbridge archive` is the same parser, built into cli.py's."""
    parser = argparse.ArgumentParser(prog=PROG, description="the image archive: list, show, export (read only)")
    add_arguments(parser)
    return run(parser.parse_args(argv))


def run(args: argparse.Namespace) -> int:
    """Dispatch; user errors (ToolError) and OS errors become one stderr line and exit 1."""
    try:
        if args.archive_command == "list":
            return _cmd_list(args)
        if args.archive_command == "show":
            return _cmd_show(args)
        return _cmd_export(args)
    except ToolError as e:
        print(f"{PROG}: {e}", file=sys.stderr)
        return 1
    except OSError as e:  # reading the archive: permission, an I/O error, a disk gone mid-way
        where = f"{e.filename}: " if e.filename else ""
        print(f"{PROG}: {where}{e.strerror or e}", file=sys.stderr)
        return 1


# ---------------------------------------------------------------------- arguments


def archive_root(config: Path | None, path: Path | None) -> Path:
    """The archive folder, absolute, from --config or --path; it must exist (the tool, like
    the daemon, never creates it: a missing one is most likely a disk that is not mounted)."""
    if config is not None and path is not None:
        raise ToolError("give either --config STATION.toml or --path DIR, not both")
    if config is None and path is None:
        raise ToolError("which archive? give --config STATION.toml (its [archive] path) or --path DIR (the folder)")
    note = ""
    if config is not None:
        from plcbridge.config import ConfigError, load_config

        try:
            cfg = load_config(config, env={})  # the archive path has no environment override
        except ConfigError as e:
            raise ToolError("; ".join(str(e).splitlines())) from None
        root, source = cfg.archive.path, f"[archive] path in {config}"
        if not cfg.archive.enabled:
            note = f" ([archive] enabled = false in {config})"
    else:
        assert path is not None
        root, source = path, "--path"
    root = Path(os.path.abspath(root))
    if not root.exists():
        raise ToolError(f"the archive folder {root} ({source}) does not exist{note}: check the path, and that its disk is mounted")
    if not root.is_dir():
        raise ToolError(f"{root} ({source}) is not a folder")
    if not os.access(root, os.R_OK | os.X_OK):  # else its listing would look empty, silently
        raise ToolError(f"cannot read the archive folder {root} ({source}): permission denied")
    return root


def parse_time(text: str, flag: str, now: float | None = None) -> float:
    """Wall-clock seconds for a --since/--until value: ISO date or datetime (naive is UTC),
    `now`, or `-N[smhd]` before now."""
    t = text.strip()
    now = time.time() if now is None else now
    if t.lower() == "now":
        return now
    m = _RELATIVE.fullmatch(t.lower())
    if m:
        return now - float(m[1]) * _UNITS[m[2]]
    try:
        dt = datetime.fromisoformat(t[:-1] + "Z" if t.endswith("z") else t)
    except ValueError:
        raise ToolError(f"{flag} {text!r}: not a time; give {_TIME_HELP}") from None
    return (dt if dt.tzinfo is not None else dt.replace(tzinfo=timezone.utc)).timestamp()


def parse_results(text: str | None) -> frozenset[str] | None:
    """--result: one or more of RESULTS, comma-separated, any case; None: every result."""
    if text is None:
        return None
    names = [n.strip().upper() for n in text.split(",") if n.strip()]
    bad = [n for n in names if n not in RESULTS]
    if bad or not names:
        raise ToolError(f"--result {text!r}: unknown result {', '.join(bad) or '(empty)'}; give PASS, FAIL, FAILSAFE or "
                        "SHADOW (several with commas)")
    return frozenset(names)


def _range(args: argparse.Namespace) -> tuple[float | None, float | None]:
    now = time.time()
    since = None if args.since is None else parse_time(args.since, "--since", now)
    until = None if args.until is None else parse_time(args.until, "--until", now)
    if since is not None and until is not None and since >= until:
        raise ToolError(f"--since {args.since} ({utc(since)}) is not before --until {args.until} ({utc(until)}): "
                        "the range is empty")
    return since, until


# ---------------------------------------------------------------------- reading the archive


def utc(t: float) -> str:
    """2026-12-06T21:53:01.123Z: the archive's times, in UTC like its folders."""
    return datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def select(root: Path, since: float | None, until: float | None, results: frozenset[str] | None) -> list[Entry]:
    """The entries in [since, until) with one of `results`, oldest first."""
    from plcbridge.archive.store import iter_entries

    return [e for e in iter_entries(root, since, until) if results is None or e.result in results]


def read_record(entry: Entry) -> dict[str, Any] | None:
    """The entry's sidecar, or None after a warning when it cannot be read (evicted by the
    daemon since the listing, or a file edited by hand): one bad entry does not stop a listing."""
    try:
        record = entry.record()
        if not isinstance(record, dict):
            raise ValueError("not a JSON object")
        return record
    except FileNotFoundError:
        _warn(f"{entry.sidecar}: gone since the listing (evicted by the daemon?): skipped")
    except (OSError, ValueError) as e:
        _warn(f"{entry.sidecar}: unreadable sidecar ({getattr(e, 'strerror', None) or e}): skipped")
    return None


def _warn(text: str) -> None:
    print(f"{PROG}: warning: {text}", file=sys.stderr)


def _text(value: Any) -> str:
    return "-" if value is None or value == "" else str(value)


def _score(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, (int, float)) and not isinstance(value, bool) else _text(value)


# ---------------------------------------------------------------------- list, show


_ROW = "{:<24}  {:<8}  {:<17}  {:>6}  {:>10}  {:>7}  {:<26}  {}"


def _cmd_list(args: argparse.Namespace) -> int:
    since, until = _range(args)
    results = parse_results(args.result)
    limit = None
    if args.limit is not None:
        try:
            limit = int(args.limit)
        except ValueError:
            limit = 0
        if limit <= 0:
            raise ToolError(f"--limit {args.limit!r}: give a whole number of entries above 0")
    root = archive_root(args.config, args.path)
    entries = select(root, since, until, results)
    if limit is not None:
        entries = entries[-limit:]  # the newest N, still oldest first
    if not args.json:
        print(_ROW.format("time (UTC)", "result", "fault", "score", "part_id", "session", "decision_id", "image"))
    for e in entries:
        record = read_record(e)
        if record is None:
            continue
        if args.json:
            print(json.dumps({**record, "image_path": str(e.image), "sidecar_path": str(e.sidecar),
                              "overlay_path": None if e.overlay is None else str(e.overlay)}, default=str))
        else:
            print(_ROW.format(utc(e.saved), _text(record.get("result", e.result)), _text(record.get("fault")),
                              _score(record.get("score")), _text(record.get("part_id")), _text(record.get("plc_session")),
                              _text(record.get("decision_id", e.decision_id)), e.image))
    return 0


def find_sidecar(root: Path, decision_id: str) -> Path:
    """The sidecar of a decision id, or of the one entry whose id starts with it."""
    key = decision_id.strip().upper()
    if not re.fullmatch(r"[0-9A-Z]+", key):
        raise ToolError(f"{decision_id!r} is not a decision id (26 letters and digits, e.g. 01M96N04VGAZHG5VYJ438PG01X)")
    found = [p for p in root.glob(f"*/*/*_{key}*.json")
             if not p.name.startswith(".") and p.stem.rsplit("_", 1)[-1].startswith(key)]
    exact = [p for p in found if p.stem.rsplit("_", 1)[-1] == key]
    if len(exact) == 1 or len(found) == 1:
        return (exact or found)[0]
    if found:
        raise ToolError(f"{decision_id} is the beginning of {len(found)} decision ids in {root}: give more of it")
    raise ToolError(f"no archived entry with decision id {decision_id} in {root} (only kept frames are archived: every "
                    "FAIL, the fail-safes that judged a frame, a sample of PASS; the oldest are evicted)")


def _cmd_show(args: argparse.Namespace) -> int:
    from plcbridge.archive.store import IMAGE_SUFFIXES, overlay_path

    root = archive_root(args.config, args.path)
    sidecar = find_sidecar(root, args.decision_id)
    try:
        record = json.loads(sidecar.read_text())
    except FileNotFoundError:
        raise ToolError(f"{sidecar}: gone since it was found (evicted by the daemon?)") from None
    except ValueError as e:
        raise ToolError(f"{sidecar}: unreadable sidecar: {e}") from None
    image = next((sidecar.with_suffix(s) for s in IMAGE_SUFFIXES if sidecar.with_suffix(s).exists()), None)
    overlay = overlay_path(sidecar) if overlay_path(sidecar).exists() else None
    if args.json:
        print(json.dumps({"record": record, "image_path": None if image is None else str(image),
                          "overlay_path": None if overlay is None else str(overlay),
                          "sidecar_path": str(sidecar)}, indent=2, default=str))
    else:
        print(json.dumps(record, indent=2, default=str))
        print(f"image: {image}" if image is not None else f"image: (missing: no image beside {sidecar.name})")
        if overlay is not None:
            print(f"overlay: {overlay} (the frame with the findings drawn: {_findings_words(record)})")
        elif record.get("overlay"):
            print(f"overlay: (missing: {record['overlay']} is not beside {sidecar.name})")
    return 0


def _findings_words(record: dict[str, Any]) -> str:
    findings = record.get("findings")
    if not isinstance(findings, dict):
        return "none"
    from plcbridge.overlay import findings_summary

    return findings_summary(findings) or "none"


# ---------------------------------------------------------------------- export


class _Output(Protocol):
    def add(self, name: str, data: bytes, mtime: float) -> None: ...

    def commit(self) -> None: ...

    def abort(self) -> None: ...


class _TarOutput:
    """A tar (gzip for .tar.gz/.tgz) written under a hidden temporary name beside PATH and
    renamed at the end, so that PATH holds a whole export or nothing. Members sit under one
    top folder named like the file (export-fails.tar.gz -> export-fails/), as tars should."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.tmp = out.with_name(f".{out.name}.partial")
        name = out.name
        self.top = next(name[: -len(s)] for s in TAR_SUFFIXES if name.lower().endswith(s)) or "archive-export"
        self.tar = tarfile.open(self.tmp, "w:gz" if not name.lower().endswith(".tar") else "w")

    def add(self, name: str, data: bytes, mtime: float) -> None:
        info = tarfile.TarInfo(f"{self.top}/{name}")
        info.size, info.mtime, info.mode = len(data), int(mtime), 0o644
        self.tar.addfile(info, io.BytesIO(data))

    def commit(self) -> None:
        self.tar.close()
        if self.out.exists():
            raise FileExistsError(17, "appeared during the export; not overwritten", str(self.out))
        os.replace(self.tmp, self.out)

    def abort(self) -> None:
        try:
            self.tar.close()
        except Exception:  # noqa: BLE001 - already failing: the file is removed anyway
            pass
        self.tmp.unlink(missing_ok=True)


class _FolderOutput:
    """Files written into PATH (created if absent, else empty); abort() removes every file
    and folder this export made, and PATH too if it made PATH."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.made_out = not out.exists()
        self.files: list[Path] = []
        self.dirs: list[Path] = []
        out.mkdir(exist_ok=True)

    def add(self, name: str, data: bytes, mtime: float) -> None:
        path = self.out / name
        missing = [p for p in reversed(path.relative_to(self.out).parents) if p != Path(".") and not (self.out / p).is_dir()]
        for p in missing:
            (self.out / p).mkdir()
            self.dirs.append(self.out / p)
        self.files.append(path)
        with open(path, "xb") as f:  # never over a file: the folder was empty, names are unique
            f.write(data)
        os.utime(path, (mtime, mtime))

    def commit(self) -> None:
        pass

    def abort(self) -> None:
        for path in self.files:
            path.unlink(missing_ok=True)
        for folder in [*reversed(self.dirs), *([self.out] if self.made_out else [])]:  # the deepest first
            try:
                folder.rmdir()
            except OSError:
                pass


def is_tar(out: Path) -> bool:
    return out.name.lower().endswith(TAR_SUFFIXES)


def _check_out(out: Path, root: Path) -> None:
    """Refuse what would overwrite, mix with other files, or write into the archive."""
    target = Path(os.path.abspath(out))
    real_root = root.resolve()
    if target.resolve() == real_root or real_root in target.resolve().parents:
        raise ToolError(f"--out {out} is inside the archive folder {root}: export elsewhere (the tool never writes there)")
    if not target.parent.is_dir():
        raise ToolError(f"--out {out}: the folder {target.parent} does not exist")
    if is_tar(out):
        if out.exists():
            raise ToolError(f"--out {out} exists: not overwritten; give a new file name")
    elif out.exists():
        if not out.is_dir():
            raise ToolError(f"--out {out} exists and is not a folder (a tar must end in .tar, .tar.gz or .tgz)")
        if any(out.iterdir()):
            raise ToolError(f"--out {out} is a folder that is not empty: refusing to write into it; give a new or empty folder")


def _human(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


def _index_row(record: dict[str, Any], entry: Entry, image: str, sidecar: str, overlay: str) -> dict[str, Any]:
    row = {k: record.get(k, "") for k in INDEX_FIELDS}
    row.update(saved_utc=utc(entry.saved), decision_id=record.get("decision_id", entry.decision_id), image=image,
               sidecar=sidecar, overlay=overlay, defects="", worst_class="", area_px="")
    findings = record.get("findings")
    if isinstance(findings, dict):
        worst = findings.get("worst_class_name")
        row.update(defects=findings.get("count", ""), area_px=findings.get("area_px", ""),
                   worst_class=worst if worst is not None else findings.get("worst_class", ""))
    return row


def _cmd_export(args: argparse.Namespace) -> int:
    if args.since is None or args.until is None or args.out is None:
        raise ToolError("export needs --since T, --until T and --out PATH (e.g. --since -1d --until now --out fails.tar.gz)")
    since, until = _range(args)
    results = parse_results(args.result)
    root = archive_root(args.config, args.path)
    out: Path = args.out
    _check_out(out, root)
    entries = select(root, since, until, results)
    what = f"between {utc(since or 0)} and {utc(until or 0)}" + (f" with result {','.join(sorted(results))}" if results else "")
    if not entries:
        print(f"{PROG}: no entries {what} in {root}: nothing written", file=sys.stderr)
        return 0
    output: _Output = _TarOutput(out) if is_tar(out) else _FolderOutput(out)
    try:
        rows, size, skipped = _copy(root, entries, output)
        if not rows:
            raise ToolError(f"none of the {len(entries)} entries {what} could be read (see the warnings): nothing written")
        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=INDEX_FIELDS)
        writer.writeheader()
        writer.writerows(rows)
        output.add("index.csv", text.getvalue().encode(), time.time())
        output.commit()
    except OSError as e:
        output.abort()
        raise ToolError(f"cannot write {e.filename or out}: {e.strerror or e}; the partial export was removed") from None
    except BaseException:  # a ToolError, Ctrl-C: no half export left behind either way
        output.abort()
        raise
    extra = f", {skipped} skipped (see the warnings)" if skipped else ""
    print(f"exported {len(rows)} entries, {size} bytes ({_human(size)}), {rows[0]['saved_utc']} .. {rows[-1]['saved_utc']} "
          f"to {out}{extra}")
    return 0


def _copy(root: Path, entries: list[Entry], output: _Output) -> tuple[list[dict[str, Any]], int, int]:
    """Each entry's sidecar, image and overlay into `output`; (index rows, bytes copied,
    entries skipped).

    Read errors skip the entry (the daemon may evict it meanwhile); write errors raise."""
    rows: list[dict[str, Any]] = []
    size = skipped = 0
    t0 = last = time.monotonic()
    for i, e in enumerate(entries, 1):
        try:
            sidecar_data, image_data = e.sidecar.read_bytes(), e.image.read_bytes()
            overlay_data = e.overlay.read_bytes() if e.overlay is not None else b""
            record = json.loads(sidecar_data)
            if not isinstance(record, dict):
                raise ValueError("not a JSON object")
        except FileNotFoundError:
            _warn(f"{e.sidecar}: gone since the listing (evicted by the daemon?): skipped")
            skipped += 1
            continue
        except (OSError, ValueError) as err:
            _warn(f"{e.sidecar}: cannot be read ({getattr(err, 'strerror', None) or err}): skipped")
            skipped += 1
            continue
        sidecar_name, image_name = e.sidecar.relative_to(root).as_posix(), e.image.relative_to(root).as_posix()
        overlay_name = e.overlay.relative_to(root).as_posix() if e.overlay is not None else ""
        output.add(sidecar_name, sidecar_data, e.saved)
        output.add(image_name, image_data, e.saved)
        if e.overlay is not None:
            output.add(overlay_name, overlay_data, e.saved)
        rows.append(_index_row(record, e, image_name, sidecar_name, overlay_name))
        size += len(sidecar_data) + len(image_data) + len(overlay_data)
        now = time.monotonic()
        if now - last >= PROGRESS_INTERVAL_S:
            last = now
            print(f"{PROG}: export: {i}/{len(entries)} entries, {_human(size)}, {now - t0:.0f} s", file=sys.stderr, flush=True)
    return rows, size, skipped
