"""Detection benchmark: every scenario in torchhealth.scenarios under a Monitor with default settings.

Prints a markdown table (scenario, expected, detected kinds, first-detection step, first non-finite
step, top suggestion) and a summary per group (development, held-out, second held-out; see
``Scenario.group``): recall, false alarms, median steps to detection, and explosions flagged before
the first non-finite value.

    python benchmarks/detection.py [--out docs/detection.md] [--only NAME ...] [--seed 0]
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmark the tree this file is in

from torchhealth.scenarios import SCENARIOS, ScenarioResult, run_scenario

EXPLOSIVE = ("exploding_gradient", "loss_divergence")
GROUPS = {"development": "Development set", "heldout": "Held-out set (first review)",
          "heldout2": "Second held-out set (written and frozen before the detectors ran on it)"}


def row(result: ScenarioResult, seconds: float) -> dict:
    """One table row's values."""
    s = result.scenario
    expected_steps = [result.first_step(k) for k in s.expected if result.first_step(k) is not None]
    first = min(expected_steps) if expected_steps else (result.alerts[0].step if result.alerts else None)
    top = next((a.suggestions[0] for a in result.alerts if a.kind in s.expected and a.suggestions), "")
    if not top and result.alerts and result.alerts[0].suggestions:
        top = result.alerts[0].suggestions[0]
    return {"name": s.name, "group": s.group, "expected": s.expected, "kinds": result.kinds,
            "caught": all(k in result.kinds for k in s.expected),
            "false_alarm": not s.expected and any(a.severity != "info" for a in result.alerts),
            "first": first, "nonfinite": result.first_nonfinite_step, "top": top, "seconds": seconds,
            "explosion_first": min([result.first_step(k) for k in EXPLOSIVE if result.first_step(k) is not None],
                                   default=None)}


def table(rows: list[dict]) -> str:
    lines = ["| scenario | expected | detected kinds | first detection | first non-finite | top suggestion |",
             "| --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        mark = "" if (r["caught"] and not r["false_alarm"]) else " **MISS**" if r["expected"] else " **FALSE ALARM**"
        top = r["top"].replace("|", "\\|")
        top = top if len(top) <= 140 else top[:137] + "..."
        lines.append(f"| {r['name']}{mark} | {', '.join(r['expected']) or 'healthy'} | {', '.join(r['kinds']) or '-'} | "
                     f"{_or_dash(r['first'])} | {_or_dash(r['nonfinite'])} | {top} |")
    return "\n".join(lines)


def summary(rows: list[dict], title: str) -> str:
    faulty = [r for r in rows if r["expected"]]
    healthy = [r for r in rows if not r["expected"]]
    caught = [r for r in faulty if r["caught"]]
    alarms = [r for r in healthy if r["false_alarm"]]
    steps = [r["first"] for r in caught if r["first"] is not None]
    overflowed = [r for r in faulty if r["nonfinite"] is not None and any(k in EXPLOSIVE for k in r["expected"])]
    before = [r for r in overflowed if r["explosion_first"] is not None and r["explosion_first"] < r["nonfinite"]]
    return (f"**{title}**: recall {len(caught)}/{len(faulty)}, false alarms {len(alarms)}/{len(healthy)}, "
            f"median steps to detection {statistics.median(steps) if steps else '-'}, explosions flagged before the "
            f"first non-finite value {len(before)}/{len(overflowed)}"
            + (f"; missed: {', '.join(r['name'] for r in faulty if not r['caught'])}" if len(caught) < len(faulty) else "")
            + (f"; false alarms: {', '.join(r['name'] + ' (' + ', '.join(r['kinds']) + ')' for r in alarms)}" if alarms else ""))


def _or_dash(value) -> str:
    return "-" if value is None else str(value)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="also write the markdown report to this file")
    parser.add_argument("--only", nargs="*", help="run only these scenarios")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    logging.getLogger("torchhealth").setLevel(logging.ERROR)  # the table is the output
    names = args.only or list(SCENARIOS)
    rows, start = [], time.perf_counter()
    for name in names:
        t0 = time.perf_counter()
        result = run_scenario(SCENARIOS[name], seed=args.seed)
        rows.append(row(result, time.perf_counter() - t0))
        print(f"{name}: {rows[-1]['kinds']} ({rows[-1]['seconds']:.1f}s)", file=sys.stderr)
    total = time.perf_counter() - start
    parts = ["# Detection benchmark", "",
             f"All scenarios from `torchhealth.scenarios`, default Monitor settings, seed {args.seed}, "
             f"1 CPU thread, {total:.0f} s in total. Regenerate with `python benchmarks/detection.py --out docs/detection.md`.",
             ""]
    for key, title in GROUPS.items():
        group = [r for r in rows if r["group"] == key]
        if group:
            parts += [f"## {title}", "", summary(group, title), "", table(group), ""]
    report = "\n".join(parts)
    print(report)
    if args.out:
        Path(args.out).write_text(report + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
