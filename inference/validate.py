"""`validate_model`: the one gate a model passes before it may serve, used twice.

- `plcbridge validate-model PATH` runs it in a model build pipeline, before an artifact
  is promoted (JSON report on stdout, exit 1 with the reason when a check fails);
- the daemon runs it on SIGHUP, before swapping a new model in.

One function for both, so that "promoted" and "accepted on reload" cannot mean different
things. The checks, in order, each named in the report:

- `manifest`:  manifest.json parses and is consistent (`load_manifest`);
- `sha256`:    the file is the one the manifest pins (`read_verified`), and so is every file
               beside it the manifest pins (external weights, anomalib 1.x's metadata.json);
               every external weights file the graph names must be pinned;
- `opset`:     the file declares the manifest's opset, and the target ONNX Runtime implements
               it (`MAX_OPSET`; the target defaults to the installed onnxruntime);
- `interface`: onnxruntime loads the file and its input/output names, shapes and dtypes are
               the manifest's (`Model`'s build checks);
- `smoke`:     one judge() of a mid-grey frame, through the real preprocessing, gives a score;
               anomaly and detection outputs are decoded and judged by the manifest's rules (a
               NaN map, a map of another size than the manifest's is a failure naming the
               output); fails, saying so, when `frame_size` is outside the manifest's frame limits;
- `range`:     black, white and noise frames too give finite outputs, in [0, 1] for
               probability/softmax outputs (a logit only needs to be finite), decoded and judged
               for the other kinds;
- `latency`:   `runs` judge() calls (preprocess + inference, as the daemon runs them) give
               p50/p95/p99/max; the check fails when p99 > `p99_max_ms`.

`build_reference` and `write_reference` are `validate-model PATH --reference FOLDER`: the
checked model judges every readable image of a folder, and the histogram of its scores goes
into the manifest as `reference` (plcbridge.inference.drift says how it is binned), the rest
of manifest.json kept byte for byte.

A failed check skips the checks that need it and the report still lists every check, so a
pipeline log shows what was and was not looked at. Problems with the model are never
exceptions here: a ModelError becomes a failed check with its message. Only bad arguments
(ValueError) and bugs raise.
"""

from __future__ import annotations

import json
import math
import os
import re
import tempfile
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Literal

import numpy as np

from plcbridge.inference.drift import histogram, reference_edges
from plcbridge.inference.errors import BadFrame, InferenceError, InferenceTimeout, ModelError
from plcbridge.inference.manifest import Manifest, ModelSpecError, PinnedFile, ScoreReference, load_manifest
from plcbridge.inference.modelfile import default_opset, external_data_files, read_verified
from plcbridge.schedule import percentile_summary

if TYPE_CHECKING:
    from plcbridge.inference.session import Model

CHECKS = ("manifest", "sha256", "opset", "interface", "smoke", "range", "latency")

# The newest default-domain (ai.onnx) opset each ONNX Runtime minor release implements.
# ONNX Runtime has no API for this number, so it is kept here. Sources:
# - 1.0 .. 1.20: the version table in ONNX Runtime's docs, docs/reference/compatibility.md
#   (https://onnxruntime.ai/docs/reference/compatibility.html);
# - 1.21: 22, ONNX 1.17 (opset 22) was integrated "for ORT 1.21.0" (microsoft/onnxruntime#21897);
# - 1.22: 22. ONNX 1.18 (opset 23) was integrated from a release candidate in April 2025
#   (microsoft/onnxruntime#24449) and finally in June, "part of 1.23" (#24945); whether
#   1.22 accepts opset 23 is not documented, and 22 is the conservative reading: a gate
#   that is too strict fails a build, one that is too lenient fails a line;
# - 1.23: 23, ONNX 1.18 (microsoft/onnxruntime#24945: "part of 1.23");
# - 1.32: 28, probed on the installed 1.32.0 wheel with one-node models at opsets 17..31:
#   it loads 28 and refuses 29 ("Current official support for domain ai.onnx is till
#   opset 28"). tests/test_validate_model.py re-probes the installed release's entry.
# Releases between two entries get the older entry's value, releases after the newest get
# the newest's; the check's detail says so. Add a row when a new release is known.
MAX_OPSET: dict[tuple[int, int], int] = {
    (1, 0): 11, (1, 1): 11, (1, 2): 11, (1, 3): 12, (1, 4): 12, (1, 5): 12, (1, 6): 13,
    (1, 7): 13, (1, 8): 14, (1, 9): 15, (1, 10): 15, (1, 11): 16, (1, 12): 17, (1, 13): 17,
    (1, 14): 18, (1, 15): 19, (1, 16): 19, (1, 17): 20, (1, 18): 21, (1, 19): 21, (1, 20): 21,
    (1, 21): 22, (1, 22): 22, (1, 23): 23,
    (1, 32): 28,
}
MIN_OPSET = 7  # every ONNX Runtime release supports opset 7 and newer, none anything older

# (w, h): the synthetic camera's default in config.py. Inside the default frame limits of
# every manifest whose preprocessing.resize is at most 1024 per side (min_size is a quarter
# of it); a manifest that sets its own frame limits may exclude it: see _judge_checks.
DEFAULT_FRAME_SIZE = (256, 256)

# X.Y, X.Y.Z, and PEP 440 suffixes as wheels report them: 1.21.0rc1, 1.21.0.dev2025, 1.21.0+cu124
_VERSION = re.compile(r"^(\d+)\.(\d+)(?:\.\d+)?(?:(?:[.+-]|rc|a|b|dev)[0-9A-Za-z.+-]*)?$")


def parse_ort_version(text: str) -> tuple[int, int]:
    """(major, minor) of "1.20", "1.20.1", "1.21.0rc1" or "1.21.0+cu124"; ValueError for anything else."""
    match = _VERSION.match(text.strip())
    if not match:
        raise ValueError(f"not an ONNX Runtime version: {text!r} (expected e.g. 1.20 or 1.20.1)")
    return int(match[1]), int(match[2])


def max_opset_for(version: tuple[int, int]) -> tuple[int | None, str]:
    """The newest ai.onnx opset `version` implements, or None if older than the table,
    with a note saying which table entry the number comes from."""
    name = f"{version[0]}.{version[1]}"
    if version in MAX_OPSET:
        return MAX_OPSET[version], f"ONNX Runtime {name} implements opsets {MIN_OPSET}..{MAX_OPSET[version]}"
    older = [v for v in MAX_OPSET if v < version]
    if not older:
        oldest = min(MAX_OPSET)
        return None, f"ONNX Runtime {name} is older than any release known here ({oldest[0]}.{oldest[1]})"
    known = max(older)
    where = "newer than" if known == max(MAX_OPSET) else "not in"
    return MAX_OPSET[known], (
        f"ONNX Runtime {name} is {where} the table in plcbridge.inference.validate; assuming "
        f"opsets {MIN_OPSET}..{MAX_OPSET[known]}, as in {known[0]}.{known[1]}"
    )


def installed_ort_version() -> str:
    import onnxruntime

    return onnxruntime.__version__


@dataclass
class Check:
    """One named check: "passed", "failed" or "skipped" (a check it needs failed)."""

    name: str
    status: Literal["passed", "failed", "skipped"]
    detail: str

    @property
    def ok(self) -> bool:
        return self.status == "passed"


@dataclass
class ValidationReport:
    """Everything validate_model found. `ok` when every check passed; `failure` is the first
    failed check as "name: reason". `sha256` is the verified file's hash (None unless the
    sha256 check passed), so a caller that loads the model afterwards can tell whether it
    got the same file."""

    spec: str
    target_ort_version: str
    installed_ort_version: str
    device: str
    checks: list[Check] = field(default_factory=list)
    manifest_path: str | None = None
    name: str | None = None
    version: int | None = None
    sha256: str | None = None
    opset: int | None = None
    max_opset: int | None = None
    providers: list[str] = field(default_factory=list)
    runs: int = 0  # timed runs actually made (fewer than asked when stopped early)
    p99_max_ms: float | None = None
    latency_ms: dict[str, float] = field(default_factory=dict)  # p50, p95, p99, max
    # True when `spec` did not lead to a manifest at all (missing path, folder without
    # manifest.json, not a manifest): a wrong argument, which the CLI exits 2 for, not 1.
    bad_spec: bool = False

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks) and len(self.checks) == len(CHECKS)

    @property
    def failed_check(self) -> str | None:
        return next((c.name for c in self.checks if c.status == "failed"), None)

    @property
    def failure(self) -> str | None:
        return next((f"{c.name}: {c.detail}" for c in self.checks if c.status == "failed"), None)

    def check(self, name: str) -> Check:
        return next(c for c in self.checks if c.name == name)

    def _record(self, name: str, ok: bool, detail: str) -> bool:
        self.checks.append(Check(name, "passed" if ok else "failed", detail))
        return ok

    def _skip_rest(self, why: str) -> "ValidationReport":
        self.checks += [Check(n, "skipped", why) for n in CHECKS[len(self.checks) :]]
        return self

    def to_dict(self) -> dict:
        return {"ok": self.ok, "failed_check": self.failed_check, "failure": self.failure, **asdict(self)}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)


def generated_frames(size: tuple[int, int] = DEFAULT_FRAME_SIZE) -> dict[str, np.ndarray]:
    """BGR uint8 camera frames, (w, h) = size, that any model must score: the extremes a
    camera produces (black, white: lens cap, overexposure), mid-grey and seeded noise."""
    w, h = size
    return {
        "mid-grey": np.full((h, w, 3), 128, np.uint8),
        "black": np.zeros((h, w, 3), np.uint8),
        "white": np.full((h, w, 3), 255, np.uint8),
        "noise": np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8),
    }


def _latency(samples_ms: list[float]) -> dict[str, float]:
    """p50, p95, p99 and max of a run of at least one sample (so none of them is None)."""
    return {k: v for k, v in percentile_summary(samples_ms).items() if v is not None}


def validate_model(
    spec: str | Path,
    *,
    target_ort_version: str | None = None,
    runs: int = 200,
    p99_max_ms: float | None = None,
    device: Literal["cpu", "cuda"] = "cpu",
    intra_op_threads: int = 1,
    timeout_ms: float = 10_000,
    frame_size: tuple[int, int] = DEFAULT_FRAME_SIZE,
    progress: Callable[[int, int], None] | None = None,
    pause_s: float = 0.0,
    on_pass: Callable[["Model"], None] | None = None,
    require_device: bool = False,
) -> ValidationReport:
    """Run every check on the model at `spec` (manifest path, model directory or
    "builtin:NAME") and return the report; see the module docstring for the checks.

    `target_ort_version`: the ONNX Runtime that will run the model (default: the installed
    one); only the opset check uses it, the other checks run on the installed one.
    `runs`: timed judge() calls; with `p99_max_ms` set, timing stops as soon as enough runs
    were over budget that p99 cannot be met, so a far too slow model fails in a few runs.
    `timeout_ms`: any single run longer than this fails its check (a hung model must not
    hang a pipeline or a reload); it is the whole judge() budget, preprocessing included.
    `frame_size`: (w, h) of the generated camera frames; preprocessing cost depends on it,
    and it must be inside the manifest's frame limits (else the smoke check fails, saying so). `progress(done, runs)` is called after each timed run.
    `pause_s`: sleep between timed runs, so that a check run inside the daemon (SIGHUP
    reload) leaves the CPU to the write loop and the serving model; the timing is unaffected.
    `on_pass(model)`: called with the checked Model when every check passed; the caller then
    owns it (it is not closed), so a reload serves the very session it checked, built once.
    `require_device`: a model that fell back from `device` to the CPU fails the interface
    check (the promotion gate must not pass CPU figures as the GPU's); the daemon's reload
    accepts it, logged, as its start-up load does.
    Bad arguments raise ValueError; problems with the model are failed checks.
    """
    if runs < 1:
        raise ValueError(f"runs must be at least 1, got {runs}")
    if p99_max_ms is not None and not p99_max_ms > 0:
        raise ValueError(f"p99_max_ms must be positive, got {p99_max_ms}")
    if min(frame_size) < 1:
        raise ValueError(f"frame_size must be (w, h) >= 1, got {frame_size}")
    installed = installed_ort_version()
    target = parse_ort_version(target_ort_version or installed)
    r = ValidationReport(str(spec), target_ort_version or installed, installed, device, p99_max_ms=p99_max_ms)

    try:
        manifest, manifest_path = load_manifest(spec)
    except ModelError as e:
        r.bad_spec = isinstance(e, ModelSpecError)
        r._record("manifest", False, str(e))
        return r._skip_rest("needs a valid manifest")
    where = str(manifest_path)
    r.manifest_path, r.name, r.version = where, manifest.name, manifest.version
    r._record("manifest", True, f"{manifest.name} v{manifest.version}: {manifest.file}, {manifest.describe_output()}")

    try:
        data = read_verified(manifest_path.parent / manifest.file, manifest.sha256, where)
    except ModelError as e:
        r._record("sha256", False, str(e))
        return r._skip_rest("needs the file the manifest pins")
    pinned = _pinned_files(manifest)
    problem = _pinned_problem(manifest, manifest_path, data, pinned)
    if problem is not None:
        r._record("sha256", False, problem)
        return r._skip_rest("needs every file the manifest pins")
    r.sha256 = manifest.sha256
    also = f", and {', '.join(f'{e.file} ({what})' for e, what in pinned)}" if pinned else ""
    r._record("sha256", True, f"{manifest.file} ({len(data)} bytes){also} {'have' if pinned else 'has'} the "
                              "manifest's sha256")

    # A file that misdeclares its opset is refused by Model too, so that stops the rest; a
    # target too old for it does not: the remaining checks run on the installed release.
    try:
        opset = default_opset(data)
    except ValueError as e:
        r._record("opset", False, f"{where}: {manifest.file} is not a readable ONNX model: {e}")
        return r._skip_rest("needs a readable ONNX file")
    r.opset = opset
    if opset != manifest.opset:
        r._record("opset", False, f"{where}: manifest says opset {manifest.opset}, {manifest.file} declares opset {opset}")
        return r._skip_rest("needs the file's opset to match the manifest")
    r.max_opset, note = max_opset_for(target)
    if r.max_opset is None:
        r._record("opset", False, f"{note}; cannot tell whether it runs opset {opset}")
    elif not MIN_OPSET <= opset <= r.max_opset:
        r._record("opset", False, f"model opset {opset} is not supported by the target: {note}")
    else:
        r._record("opset", True, f"opset {opset}: {note}")

    from plcbridge.inference.session import (
        Model,  # here, so that the CLI parses without onnxruntime
    )

    try:
        model = Model(manifest_path, device, intra_op_threads, timeout_ms)
    except ModelError as e:
        # Model's build checks the interface, then judges one mid-grey frame; its message is
        # the only seam between the two (tests/test_validate_model.py pins it with an all-NaN model).
        if "smoke run failed" in str(e):
            r._record("interface", True, f"onnxruntime {installed} loads it; input and output match the manifest")
            r._record("smoke", False, str(e))
            return r._skip_rest("needs a smoke run that gives a score")
        r._record("interface", False, str(e))
        return r._skip_rest("needs a model onnxruntime loads with the manifest's interface")
    handed_over = False
    try:
        r.providers = list(model.providers)
        if model.manifest != manifest:  # Model re-reads both files; same manifest => same verified hash
            r._record("interface", False, f"{where}: the model changed while it was being checked")
            return r._skip_rest("needs the same model throughout")
        fallback = f"; asked for {device}, running on CPU: {model.fallback_reason}" if model.fell_back else ""
        if model.fell_back and require_device:
            r._record("interface", False, f"asked for {device}, but ONNX Runtime runs it on {r.providers[0]} "
                                          f"({model.fallback_reason}): the latency figures would be the CPU's")
            return r._skip_rest(f"needs the model running on {device}")
        i = manifest.input
        outs = [manifest.output] if manifest.output is not None else list(manifest.outputs or [])
        listed = ", ".join(f"{o.name!r} {o.shape} {o.dtype}" for o in outs)
        r._record("interface", True, f"onnxruntime {installed} loads it on {r.providers[0]}; input {i.name!r} "
                                     f"{i.shape} {i.dtype}, output{'s' if len(outs) > 1 else ''} {listed}{fallback}")
        _judge_checks(model, r, runs, p99_max_ms, frame_size, progress, pause_s)
        if on_pass is not None and r.ok:
            on_pass(model)
            handed_over = True
        return r
    finally:
        if not handed_over:
            model.close()


def _pinned_files(manifest: Manifest) -> list[tuple[PinnedFile, str]]:
    """The files beside the graph the manifest pins, each with what it is."""
    pinned = [(e, "external weights, external_data") for e in manifest.external_data]
    if manifest.anomaly is not None and manifest.anomaly.metadata is not None:
        pinned.append((manifest.anomaly.metadata, "anomalib 1.x metadata, anomaly.metadata"))
    return pinned


def _pinned_problem(manifest: Manifest, manifest_path: Path, data: bytes,
                    pinned: list[tuple[PinnedFile, str]]) -> str | None:
    """Why the files beside the graph are not the ones the manifest pins, or None: each is
    there with its sha256, and every external weights file the graph names is pinned (else
    ONNX Runtime would read an unverified file, or fail with its own message)."""
    where, model_dir = str(manifest_path), manifest_path.parent
    for extra, what in pinned:
        path = model_dir / extra.file
        if not path.is_file():
            return (f"{where}: {extra.file} ({what}) is missing: looked for {path}. The manifest pins it by sha256 and "
                    f"{manifest.file} cannot run without it: copy it into the model directory together with the .onnx")
        try:
            read_verified(path, extra.sha256, where)
        except ModelError as e:
            return f"{e} ({what})"
    try:
        referenced = external_data_files(data)
    except (ValueError, IndexError, UnicodeDecodeError):
        return None  # not a readable ModelProto: the opset check says so
    graph_dir = (model_dir / manifest.file).parent
    listed = {(model_dir / e.file).resolve() for e in manifest.external_data}
    unlisted = [loc for loc in referenced if (graph_dir / loc).resolve() not in listed]
    if unlisted:
        return (f"{where}: {manifest.file} keeps its weights in {', '.join(repr(u) for u in unlisted)} (the graph's "
                "external data), which the manifest does not pin: list each under external_data with its sha256 "
                "(plcbridge manifest MODEL.onnx writes them)")
    return None


def _judge_checks(model: Model, r: ValidationReport, runs: int, p99_max_ms: float | None,
                  frame_size: tuple[int, int], progress: Callable[[int, int], None] | None,
                  pause_s: float = 0.0) -> None:
    """smoke, range and latency: judge() calls on a built Model, exactly as the worker makes them."""
    limits = model.manifest.frame_limits
    w, h = frame_size
    outside = limits.problem(w, h)
    if outside is not None:
        lo, hi = limits.min_size, limits.max_size
        r._record("smoke", False, f"validate's generated frames ({w}x{h}, frame_size) are outside the manifest's "
                                  f"frame limits {lo[0]}x{lo[1]} .. {hi[0]}x{hi[1]}: {outside}; "
                                  f"pass a frame_size within the limits")
        r._skip_rest("needs a smoke run that gives a score")
        return
    frames = generated_frames(frame_size)
    scores: dict[str, float] = {}
    for name, frame in frames.items():
        try:
            verdict = model.judge(frame)
            scores[name] = verdict.score
        except (BadFrame, InferenceError, InferenceTimeout) as e:
            if name == "mid-grey":
                r._record("smoke", False, f"{name} frame {frame_size[0]}x{frame_size[1]}: {e}")
                r._skip_rest("needs a smoke run that gives a score")
            else:
                r._record("range", False, f"{name} frame: {e}")
                r._skip_rest("needs every generated frame to give a score")
            return
        if name == "mid-grey":
            # Anomaly and detection models: the outputs were decoded and judged; say what came out.
            decoded = f" ({verdict.label}: {verdict.findings.note})" if verdict.findings is not None else ""
            r._record("smoke", True, f"mid-grey frame {frame_size[0]}x{frame_size[1]} -> score {scores[name]:.4f}{decoded}")
    out = model.manifest.output
    if out is None:
        what = f"{model.manifest.kind} outputs decoded and judged (finite, scores in [0, 1])"
    else:
        what = f"{out.kind} output {'finite' if out.kind == 'logit' else 'finite, in [0, 1]'}"
    r._record("range", True, f"{what} for every frame: " + ", ".join(f"{n} {s:.4f}" for n, s in scores.items()))

    cycle = list(frames.values())
    samples: list[float] = []
    over = 0
    # numpy's (linear) p99 is >= the k-th smallest of N samples, k = floor(0.99 (N - 1)):
    # once N - k runs were over budget, p99 is over budget whatever the other runs give.
    hopeless = runs - math.floor(0.99 * (runs - 1))
    for n in range(1, runs + 1):
        t0 = time.perf_counter()
        try:
            model.judge(cycle[n % len(cycle)])
        except (BadFrame, InferenceError, InferenceTimeout) as e:
            r.runs, r.latency_ms = len(samples), _latency(samples) if samples else {}
            r._record("latency", False, f"timed run {n}: {e}")
            return
        samples.append((time.perf_counter() - t0) * 1000.0)
        if progress is not None:
            progress(n, runs)
        if pause_s:
            time.sleep(pause_s)
        if p99_max_ms is not None and samples[-1] > p99_max_ms:
            over += 1
            if over >= hopeless and n < runs:
                r.runs, r.latency_ms = n, _latency(samples)
                r._record("latency", False, f"p99 over {runs} runs cannot be <= {p99_max_ms:g} ms: {over} of the "
                                            f"first {n} runs took longer (max {r.latency_ms['max']:g} ms); stopped early")
                return
    r.runs, r.latency_ms = runs, _latency(samples)
    lat = r.latency_ms
    figures = f"p50 {lat['p50']:g} / p95 {lat['p95']:g} / p99 {lat['p99']:g} / max {lat['max']:g} ms over {runs} runs"
    if p99_max_ms is None:
        r._record("latency", True, f"{figures}; no p99 budget given")
    else:
        ok = lat["p99"] <= p99_max_ms
        r._record("latency", ok, f"{figures}; p99 {'<=' if ok else '>'} budget {p99_max_ms:g} ms")


# ---------------------------------------------------------------- the reference score distribution

REFERENCE_MIN_IMAGES = 50  # fewer judged images than this make no reference (the histogram is noise)


class ReferenceFolderError(ValueError):
    """The reference folder cannot make a reference (missing, too few images, every score
    the same): a wrong argument, nothing is written. The CLI exits 2 for it."""


@dataclass
class ReferenceBuild:
    """What `build_reference` made: the reference, and what the model said of the images."""

    reference: ScoreReference
    files: int  # files looked at (hidden ones are not)
    failed: int  # images the model judged FAIL
    first_problem: str | None = None  # why the first unreadable or refused file was left out


def reference_files(folder: Path) -> list[Path]:
    """The files of `folder` a reference is made of: every regular file directly in it, by
    name, hidden ones (.DS_Store, .gitkeep) left out. ReferenceFolderError when it is no folder."""
    if not folder.is_dir():
        what = "no such folder" if not folder.exists() else "not a folder"
        raise ReferenceFolderError(f"{folder}: {what}; --reference takes a folder of reference images")
    try:
        return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    except OSError as e:
        raise ReferenceFolderError(f"{folder}: cannot list it: {e.strerror or e}") from None


def build_reference(model: "Model", folder: Path, *, folder_text: str | None = None,
                    min_images: int = REFERENCE_MIN_IMAGES,
                    progress: Callable[[int, int], None] | None = None) -> ReferenceBuild:
    """Judge every readable image in `folder` (cv2.imread; unreadable files and frames the
    model refuses are counted and left out) and make the histogram of the scores over
    `reference_edges` (the deciles and the model's threshold). `folder_text` is what the
    reference says it came from (default: the folder as given). `progress(done, total)` after
    each file. ReferenceFolderError when fewer than `min_images` images were judged, or the
    scores have no spread; problems with single images never raise."""
    import cv2

    files = reference_files(folder)
    if len(files) < min_images:
        raise ReferenceFolderError(f"{folder}: {len(files)} file(s); a reference needs at least {min_images} images "
                                   "(a few hundred images of the line's usual parts make a useful one)")
    scores: list[float] = []
    unreadable = refused = failed = 0
    first_problem: str | None = None
    for n, path in enumerate(files, 1):
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if image is None:
            unreadable += 1
            first_problem = first_problem or f"{path.name}: not an image OpenCV can read"
        else:
            try:
                verdict = model.judge(image)
            except (BadFrame, InferenceError, InferenceTimeout) as e:
                refused += 1
                first_problem = first_problem or f"{path.name}: {e}"
            else:
                scores.append(verdict.score)
                failed += verdict.label == "fail"
        if progress is not None:
            progress(n, len(files))
    if len(scores) < min_images:
        raise ReferenceFolderError(f"{folder}: {len(scores)} of {len(files)} files judged ({unreadable} unreadable, "
                                   f"{refused} refused by the model; first: {first_problem}); a reference needs at "
                                   f"least {min_images} images")
    threshold = model.manifest.verdict_threshold
    try:
        edges = reference_edges(scores, also=() if threshold is None else (threshold,))
    except ValueError as e:
        raise ReferenceFolderError(f"{folder}: {e}") from None
    reference = ScoreReference(
        edges=edges, counts=histogram(scores, edges), images=len(scores),
        folder=folder_text if folder_text is not None else str(folder),
        created=datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z"),
        unreadable=unreadable, refused=refused, model_sha256=model.manifest.sha256)
    return ReferenceBuild(reference, len(files), failed, first_problem)


_WS = re.compile(r"[ \t\n\r]*")


def _skip_ws(text: str, i: int) -> int:
    m = _WS.match(text, i)
    return m.end() if m else i


def _top_level(text: str) -> tuple[dict[str, tuple[int, int, int]], int]:
    """The members of the JSON object `text`: key -> (key start, value start, value end), and
    the index of its closing brace. ValueError for text that is not one JSON object."""
    decoder = json.JSONDecoder()
    i = _skip_ws(text, 0)
    if text[i : i + 1] != "{":
        raise ValueError("not a JSON object")
    i += 1
    members: dict[str, tuple[int, int, int]] = {}
    while True:
        i = _skip_ws(text, i)
        if text[i : i + 1] == "}" and not members:
            return members, i
        if text[i : i + 1] != '"':
            raise ValueError(f"expected a key at character {i}")
        key_start = i
        key, i = json.decoder.scanstring(text, i + 1)  # type: ignore[attr-defined]
        i = _skip_ws(text, i)
        if text[i : i + 1] != ":":
            raise ValueError(f"expected ':' at character {i}")
        i = _skip_ws(text, i + 1)
        _, end = decoder.raw_decode(text, i)
        members[key] = (key_start, i, end)
        i = _skip_ws(text, end)
        if text[i : i + 1] == ",":
            i += 1
        elif text[i : i + 1] == "}":
            return members, i
        else:
            raise ValueError(f"expected ',' or '}}' at character {i}")


def _reference_json(reference: ScoreReference, indent: str) -> str:
    """The reference as the manifest shows it: one member a line, the arrays on one line each."""
    values = reference.model_dump(mode="json", exclude_none=True)
    inner = indent * 2
    lines = [f"{inner}{json.dumps(k)}: {json.dumps(v, ensure_ascii=False)}" for k, v in values.items()]
    return "{\n" + ",\n".join(lines) + f"\n{indent}}}"


def write_reference(manifest_path: Path, reference: ScoreReference) -> None:
    """Put `reference` into manifest.json as its `reference` member, in place and atomically
    (a temporary file beside it, then os.replace; its permissions kept): an existing
    `reference` is replaced where it stands, else the member goes last; every other byte of
    the file stays as it was. The result is validated as a Manifest before it replaces the
    file. ModelError when the file cannot be read, parsed or written."""
    where = str(manifest_path)
    try:
        text = manifest_path.read_text(encoding="utf-8")
        mode = manifest_path.stat().st_mode & 0o7777
    except OSError as e:
        raise ModelError(f"{where}: cannot read it: {e.strerror or e}") from None
    try:
        members, close = _top_level(text)
    except ValueError as e:
        raise ModelError(f"{where}: not a JSON object: {e}") from None
    first = min((start for start, _, _ in members.values()), default=None)
    line_start = text.rfind("\n", 0, first) + 1 if first is not None else 0
    indent = text[line_start:first] if first is not None and not text[line_start:first].strip() else "  "
    indent = indent or "  "
    value = _reference_json(reference, indent)
    if "reference" in members:
        _, start, end = members["reference"]
        new = text[:start] + value + text[end:]
    elif members:
        end = max(e for _, _, e in members.values())
        new = text[:end] + f",\n{indent}\"reference\": {value}" + text[end:]
    else:
        new = text[:close] + f"\n{indent}\"reference\": {value}\n" + text[close:]
    try:
        Manifest.model_validate(json.loads(new))
    except ValueError as e:  # pydantic's ValidationError is a ValueError
        raise ModelError(f"{where}: the manifest with the reference would not be valid: {e}") from None
    fd, tmp = tempfile.mkstemp(prefix=f".{manifest_path.name}.", suffix=".tmp", dir=manifest_path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(new)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, manifest_path)
    except OSError as e:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise ModelError(f"{where}: cannot write it: {e.strerror or e}") from None
