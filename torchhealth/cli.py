"""The ``torchhealth`` command: ``demo``, ``report`` and ``--version``."""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from typing import Any, Sequence

DEFAULT_DEMO_DIR = os.path.join("runs", "torchhealth-demo")
SEVERITY_STYLE = {"critical": "bold red", "warning": "yellow", "info": "cyan"}
PIP_NAMES = {"sklearn": "scikit-learn"}
DEMO_LOG_EVERY = 10
"""Demo runs are a few hundred steps: every check goes to TensorBoard so the dashboard shows curves
(the Monitor's default, 100, is sized for the per-step cost of long runs)."""
"""Modules whose pip package has another name."""


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the command line; returns the exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    return args.run(args)


def _parser() -> argparse.ArgumentParser:
    from torchhealth import __version__

    parser = argparse.ArgumentParser(
        prog="torchhealth", description="Training-health monitor for PyTorch: try it on built-in runs, "
                                        "or read the health of a run you logged.")
    parser.add_argument("--version", action="version", version=f"torchhealth {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    demo = commands.add_parser("demo", help="train small runs that show each failure, with live alerts",
                               description="Trains small built-in runs (healthy, vanishing and exploding "
                                           "gradients, dead units, NaN) under a Monitor and prints what it finds.")
    demo.add_argument("--scenario", action="append", metavar="NAME",
                      help="run only this scenario (repeatable); `--scenario list` lists them")
    demo.add_argument("--logdir", default=DEFAULT_DEMO_DIR, help=f"where runs are written (default: {DEFAULT_DEMO_DIR})")
    demo.add_argument("--steps", type=int, default=None, metavar="N", help="train each scenario N steps (default: its own)")
    demo.set_defaults(run=_demo)

    report = commands.add_parser("report", help="print a run's per-layer health and its alerts",
                                 description="Reads the TensorBoard event files and alerts.jsonl under LOGDIR.")
    report.add_argument("logdir", metavar="LOGDIR")
    report.add_argument("--json", action="store_true", help="print JSON for programs instead of tables")
    report.set_defaults(run=_report)
    return parser


# -- demo ------------------------------------------------------------------------------------------
def _demo(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    import torchhealth_scenarios as scenarios

    console = Console(highlight=False)
    names = args.scenario or list(scenarios.DEMO_SCENARIOS)
    if names == ["list"]:
        for name, scenario in scenarios.SCENARIOS.items():
            console.print(f"[bold]{name}[/]: {scenario.description}")
        return 0
    unknown = [n for n in names if n not in scenarios.SCENARIOS]
    if unknown:
        console.print(f"[red]unknown scenario {', '.join(map(repr, unknown))}[/]; choose from: "
                      f"{', '.join(scenarios.SCENARIOS)}")
        return 2
    if args.steps is not None and args.steps < 1:
        console.print("[red]--steps must be a positive number of steps[/]")
        return 2

    results = []
    for name in names:
        scenario = scenarios.SCENARIOS[name]
        console.rule(f"[bold]{name}[/]: {scenario.description}")
        steps = args.steps or scenario.steps
        with Progress(TextColumn("  training"), BarColumn(), MofNCompleteColumn(), TextColumn("loss {task.fields[loss]}"),
                      TimeElapsedColumn(), console=console, transient=True) as progress:
            task = progress.add_task(name, total=steps, loss="-")

            def on_step(step: int, loss: float, alerts: list[Any]) -> None:
                progress.update(task, advance=1, loss=f"{loss:.4g}")

            try:
                result = scenarios.run_scenario(
                    scenario, steps=steps, log_dir=os.path.join(args.logdir, name), on_step=on_step,
                    log_every=DEMO_LOG_EVERY,
                    on_alert=[lambda alert: _print_alert(console, alert.to_dict())])
            except ModuleNotFoundError as exc:  # the scenarios' data sets come from optional packages
                package = PIP_NAMES.get((exc.name or "").split(".")[0], exc.name)
                console.print(f"[red]the {name!r} scenario needs the package {package!r}[/]: pip install {package}"
                              + (' (or pip install "torchhealth[demo]")' if package == "scikit-learn" else ""),
                              soft_wrap=True)
                return 1
        results.append(result)
        if not result.alerts:
            console.print(f"  [green]no alerts[/] in {result.steps_run} steps")
        else:
            _print_diagnosis(console, [a.to_dict() for a in result.alerts])

    _print_demo_summary(console, results)
    console.print(f"\nSee the health dashboard (Custom Scalars tab) in TensorBoard:\n"
                  f"  [bold]tensorboard --logdir {args.logdir}[/]\n"
                  f"or the same as a table here:\n  [bold]torchhealth report {args.logdir}[/]",
                  soft_wrap=True)  # commands stay on one line, to be copied
    return 0


def _print_alert(console: Any, alert: dict[str, Any]) -> None:
    """Prints one alert (``Alert.to_dict()`` form, as in alerts.jsonl) with its numbered suggestions."""
    from rich.markup import escape
    from rich.padding import Padding
    from rich.text import Text

    from torchhealth.records import describe

    where = f" in [bold]{escape(str(alert['layer']))}[/]" if alert.get("layer") else ""
    style = SEVERITY_STYLE.get(alert.get("severity"), "")
    cause, indent = "", 2
    if alert.get("caused_by"):  # shown under its root
        cause, indent = f"↳ consequence of {escape(describe(alert['caused_by'], '`'))}: ", 4
    console.print(Padding(Text.from_markup(
        f"{cause}[{style}]{str(alert.get('severity')).upper()}[/] {escape(str(alert.get('kind')))}{where} "
        f"at step {alert.get('step')}: {escape(str(alert.get('message')))}"), (0, 0, 0, indent), expand=False))
    for i, suggestion in enumerate(alert.get("suggestions") or [], 1):
        console.print(Padding(Text(f"{i}. {suggestion}"), (0, 0, 0, indent + 4), expand=False))  # wrapped lines stay indented


def _print_diagnosis(console: Any, alerts: list[dict[str, Any]]) -> None:
    """Prints the run's diagnosis: root causes, what followed from each, the ranked fixes."""
    from rich.padding import Padding
    from rich.text import Text

    from torchhealth.detectors.diagnosis import render, summarize

    for line in render(summarize(alerts)):
        indent = len(line) - len(line.lstrip())
        console.print(Padding(Text(line.lstrip(), style="bold" if not indent else ""), (0, 0, 0, 2 + indent),
                              expand=False))


def _print_demo_summary(console: Any, results: list[Any]) -> None:
    from rich.table import Table

    table = Table(title="torchhealth demo", title_justify="left")
    for column in ("scenario", "expected", "raised", "first alert at step", "steps"):
        table.add_column(column)
    for r in results:
        first = min((a.step for a in r.alerts), default=None)
        table.add_row(r.scenario.name, ", ".join(r.scenario.expected) or "(nothing)",
                      ", ".join(dict.fromkeys(a.kind for a in r.alerts)) or "(nothing)",
                      "-" if first is None else str(first), str(r.steps_run))
    console.print(table)


# -- report ----------------------------------------------------------------------------------------
def _report(args: argparse.Namespace) -> int:
    from torchhealth.report import NoRunError, load_runs

    try:
        reports = load_runs(args.logdir)
    except NoRunError as exc:
        print(f"torchhealth report: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps({"runs": [r.to_dict() for r in reports]}, indent=2, allow_nan=False))
        return 0
    from rich.console import Console
    from rich.table import Table

    console = Console(highlight=False)
    for report in reports:
        step = "-" if report.last_step is None else report.last_step
        loss = "" if report.loss is None else f", loss {_fmt(report.loss)}"
        table = Table(title=f"{report.run_dir} (last step {step}{loss})", title_justify="left")
        other = list(dict.fromkeys(family for h in report.layers.values() for family in h.other))  # user collectors'
        for column in ("layer", "grad norm", "grad norm min", "grad norm max", "dead units", "update ratio", *other):
            table.add_column(column.replace("_", " ") if column in other else column,
                             justify="left" if column == "layer" else "right")
        for layer, h in report.layers.items():
            table.add_row(layer, _fmt(h.grad_norm), _fmt(h.grad_norm_min), _fmt(h.grad_norm_max),
                          "-" if h.dead_units is None else f"{h.dead_units:.0%}", _fmt(h.update_ratio),
                          *(_fmt(h.other.get(family)) for family in other))
        console.print(table)
        if not report.alerts:
            console.print("  [green]no alerts[/]\n")
        for alert in report.alerts:
            _print_alert(console, alert)
        if report.alerts:
            _print_diagnosis(console, report.alerts)
        console.print()
    return 0


def _fmt(value: float | None) -> str:
    if value is None:
        return "-"
    return str(value) if not math.isfinite(value) else f"{value:.3g}"


if __name__ == "__main__":
    sys.exit(main())
