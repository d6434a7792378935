"""`plcbridge gate --budget FILE`: the hardware-in-the-loop promotion gate.

Runs `plcbridge bench` at the budget's frame rate for its duration and compares the
report with the budget a plant sets (TOML, `budgets/default.toml` for the reference
edge-AI station). Exit 0 when every budget is met, 1 when any is broken (each one named
with the measured value beside the limit), 2 when the budget file or the options are bad
or the bench could not run. It never needs matplotlib: the gate does not plot.

Run it on the line PC's hardware class: a budget met on another machine proves nothing.
"""

from __future__ import annotations

import argparse
import json
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from plcbridge.cliargs import positive
from plcbridge.tools.bench.run import (
    BenchError,
    Interrupted,
    StopSignals,
    add_run_arguments,
    command_line,
    options_from_args,
    progress_printer,
    run_bench,
)

DEFAULT_BUDGET = Path(__file__).resolve().parent / "budgets" / "default.toml"  # package data


class BudgetError(ValueError):
    """The budget file cannot be read or is invalid; the message names the file and field."""


def _budget_model() -> Any:
    """The schema, built on first use: pydantic stays out of the CLI's start-up."""
    from typing import Annotated

    from pydantic import Field

    from plcbridge.schema import Strict

    class Budget(Strict):
        # capture -> value visible in the PLC, over the whole run
        p99_max_ms: Annotated[float, Field(gt=0)]
        p95_max_ms: Annotated[float, Field(gt=0)]
        duration_minutes: Annotated[float, Field(gt=0, le=24 * 60)]
        frame_rate_fps: Annotated[float, Field(gt=0, le=1000)]
        rss_max_mb: Annotated[float, Field(gt=0)]
        max_failsafe_events: Annotated[int, Field(ge=0)]
        lateness_p99_max_ms: Annotated[float, Field(gt=0)]

    return Budget


def load_budget(path: Path) -> Any:
    from pydantic import ValidationError

    from plcbridge.schema import validation_problems

    try:
        raw = tomllib.loads(Path(path).read_text())
    except OSError as e:
        raise BudgetError(f"{path}: cannot read: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise BudgetError(f"{path}: not valid TOML: {e}") from None
    model = _budget_model()
    try:
        return model.model_validate(raw)
    except ValidationError as e:
        problems = "\n".join(f"  {where}: {why}" for where, why in validation_problems(e, root=model))
        raise BudgetError(f"{path}: invalid budget\n{problems}") from None


@dataclass(frozen=True)
class Check:
    name: str
    measured: float | None  # None: nothing was measured, which breaks the budget
    limit: float
    unit: str

    @property
    def ok(self) -> bool:
        return self.measured is not None and self.measured <= self.limit

    def line(self) -> str:
        if self.measured is None:
            return f"{self.name}: measured nothing (no samples) > limit {self.limit:g} {self.unit}"
        verdict = ">" if not self.ok else "<="
        return f"{self.name}: measured {self.measured:g} {verdict} limit {self.limit:g} {self.unit}"


def check_report(report: dict[str, Any], budget: Any) -> list[Check]:
    """Every budget against the report, in the budget file's order."""
    c = report["capture_to_plc_ms"]
    return [
        Check("p99_max_ms", c["p99"], budget.p99_max_ms, "ms"),
        Check("p95_max_ms", c["p95"], budget.p95_max_ms, "ms"),
        Check("rss_max_mb", report["resources"]["peak_rss_mb"], budget.rss_max_mb, "MB"),
        Check("max_failsafe_events", report["failsafes"]["in_service"], budget.max_failsafe_events, "events"),
        Check("lateness_p99_max_ms", (report["write_loop"]["lateness_ms"] or {}).get("p99"),
              budget.lateness_p99_max_ms, "ms"),
    ]


def _cmd_gate(args: argparse.Namespace) -> int:
    try:
        budget = load_budget(args.budget)
    except BudgetError as e:
        print(f"plcbridge gate: {e}", file=sys.stderr)
        return 2
    minutes = args.duration_minutes if args.duration_minutes is not None else budget.duration_minutes
    opts = options_from_args(args, budget.frame_rate_fps, minutes * 60)
    # The gate does not plot: it must run where matplotlib is not installed.
    opts = type(opts)(**{**opts.__dict__, "plot": False})
    say = progress_printer(args.quiet, "plcbridge gate")
    try:
        with StopSignals() as stop:
            report = run_bench(opts, say, command_line(), stop)
    except BenchError as e:
        print(f"plcbridge gate: {e}", file=sys.stderr)
        return 2
    except Interrupted as e:
        print(f"plcbridge gate: {e}; the daemon and the simulator were stopped, no verdict", file=sys.stderr)
        return e.exit_code
    return print_gate_result(report, budget, args.budget, minutes, shortened=(
        args.duration_minutes is not None and args.duration_minutes < budget.duration_minutes))


def print_gate_result(report: dict[str, Any], budget: Any, budget_file: Path, minutes: float, *,
                      shortened: bool = False, out: Any = None, err: Any = None) -> int:
    """Add the gate section to the report, rewrite the report file, print the report as JSON
    on stdout (exactly that: `gate > report.json` is JSON) and the verdict lines on stderr.
    Returns the exit status: 1 when a budget is broken."""
    out = out if out is not None else sys.stdout
    err = err if err is not None else sys.stderr
    checks = check_report(report, budget)
    broken = [c for c in checks if not c.ok]
    report["gate"] = {"budget_file": str(budget_file), "budget": budget.model_dump(),
                      "duration_minutes": minutes, "passed": not broken,
                      "checks": [{"name": c.name, "measured": c.measured, "limit": c.limit, "ok": c.ok} for c in checks]}
    Path(report["files"]["report"]).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2), file=out)
    if shortened:
        print(f"NOTE: shortened run, {minutes:g} of the budget's {budget.duration_minutes:g} minutes: "
              "not a promotion result", file=err)
    for c in checks:
        print(("ok      " if c.ok else "BROKEN  ") + c.line(), file=err)
    print(f"GATE {'PASSED' if not broken else 'FAILED'}: " +
          (f"all {len(checks)} budgets met" if not broken else f"{len(broken)} budget(s) broken: "
           + ", ".join(c.name for c in broken)) + f" (report: {report['files']['report']})", file=err)
    return 1 if broken else 0


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--budget", type=Path, default=DEFAULT_BUDGET,
                   help="budget TOML (default: the shipped plcbridge/tools/bench/budgets/default.toml, the reference edge-AI station)")
    p.add_argument("--duration-minutes", type=positive(float), default=None, metavar="X",
                   help="override the budget's duration for a quick run (the verdict then says so)")
    add_run_arguments(p, for_gate=True)
    p.set_defaults(func=_cmd_gate)
