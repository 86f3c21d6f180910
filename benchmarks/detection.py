"""Detection benchmark: every scenario in torchhealth_scenarios under a Monitor with default settings.

Prints a markdown table (scenario, expected, detected kinds, first-detection step, first non-finite
step, top suggestion) and a summary per group (development, held-out, second held-out, issue 23; see
``Scenario.group``): recall, false alarms (advisory ``info`` alerts are none), median steps to
detection, explosions flagged before the first non-finite value, faulty runs whose diagnosis has more
than one root cause (each has one injected fault; the roots are listed), runs whose fixes
contradict each other (a setting both lowered and raised from the same value), and for dead-unit runs
the latency from the step the units died (measured on a second run without a Monitor: the step after
which half of a layer's units never fire again) to the first dead_units alert. Then, per run, its
alerts with their links and the run's diagnosis.

    python benchmarks/detection.py [--out docs/detection.md] [--only NAME ...] [--seed 0]
"""

from __future__ import annotations

import argparse
import math
import logging
import re
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmark the tree this file is in

from torchhealth.records import describe
from torchhealth.detectors.dead_units import DEAD_SHARE
from torchhealth.detectors.diagnosis import render, summarize
from torchhealth_scenarios import SCENARIOS, Scenario, ScenarioResult, run_scenario

EXPLOSIVE = ("exploding_gradient", "loss_divergence")
GROUPS = {"development": "Development set", "heldout": "Held-out set (first review)",
          "heldout2": "Second held-out set (written and frozen before the detectors ran on it)",
          "issue23": "Issue 23 set: one root, several symptoms; spikes; optimizer settings; data-scaled losses"}
KNOB = re.compile(r"^(Lower|Raise) (?:the scheduler's base )?(learning rate|weight decay|momentum|\S+'s eps|\S+'s beta2)"
                  r"(?: of parameter group \d+)? from (\S+)")


def row(result: ScenarioResult, seconds: float) -> dict:
    """One table row's values."""
    s = result.scenario
    expected_steps = [result.first_step(k) for k in s.expected if result.first_step(k) is not None]
    first = min(expected_steps) if expected_steps else (result.alerts[0].step if result.alerts else None)
    top = next((a.suggestions[0] for a in result.alerts if a.kind in s.expected and a.suggestions), "")
    if not top and result.alerts and result.alerts[0].suggestions:
        top = result.alerts[0].suggestions[0]
    onset = dead_onset(s) if "dead_units" in s.expected else None
    dead_alert = result.first_step("dead_units")
    return {"name": s.name, "group": s.group, "expected": s.expected, "kinds": result.kinds,
            "roots": [r["alert"] for r in summarize(result.alerts)["roots"]],
            "contradictions": contradictions(result), "onset": onset,
            "latency": dead_alert - onset if onset is not None and dead_alert is not None else None,
            "diagnosis": render(summarize(result.alerts)) if result.alerts else [], "alerts": result.alerts,
            "caught": all(k in result.kinds for k in s.expected),
            "false_alarm": not s.expected and any(a.severity != "info" for a in result.alerts),
            "first": first, "nonfinite": result.first_nonfinite_step, "top": top, "seconds": seconds,
            "explosion_first": min([result.first_step(k) for k in EXPLOSIVE if result.first_step(k) is not None],
                                   default=None)}


def contradictions(result: ScenarioResult) -> list[str]:
    """Settings the run's suggestions both lower and raise from the same value (read from the text)."""
    seen: dict[tuple[str, str], set[str]] = {}
    for alert in result.alerts:
        for suggestion in alert.suggestions:
            match = KNOB.match(suggestion.split(": ", 1)[-1] if suggestion.startswith("Fix the root") else suggestion)
            if match:
                seen.setdefault((match.group(2), match.group(3)), set()).add(match.group(1))
    return [f"{knob} from {value}" for (knob, value), ways in seen.items() if len(ways) > 1]


def dead_onset(scenario: Scenario, seed: int = 0) -> int | None:
    """The step after which DEAD_SHARE of some layer's units never fire again, from a run without a Monitor.

    Every step's forward is watched (ReLU modules; for models with functional ReLUs, the weight layers
    that feed them, whose positive outputs are the ReLU's); None when no layer has that many units
    dead for the last fifth of the run or more.
    """
    torch.manual_seed(seed)
    run = scenario.build(seed)
    relus = [m for m in run.model.modules() if isinstance(m, nn.ReLU)]
    sites = relus or [m for m in run.model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))][:-1]
    last: dict[int, torch.Tensor] = {}
    step = 0

    def hook(module, inputs, output, index):
        fired = (output.detach() > 0).transpose(0, 1).reshape(output.shape[1], -1).any(1)
        last.setdefault(index, torch.full((output.shape[1],), -1))[fired] = step

    handles = [m.register_forward_hook(lambda m, i, o, k=k: hook(m, i, o, k)) for k, m in enumerate(sites)]
    try:
        for step in range(scenario.steps):
            loss = run.loss_fn(run.model, next(run.batches))
            if not torch.isfinite(loss):
                break
            loss.backward()
            run.optimizer.step()
            run.optimizer.zero_grad(set_to_none=True)
    finally:
        for handle in handles:
            handle.remove()
    onsets = []
    for fires in last.values():
        ordered = sorted(fires.tolist())
        onset = ordered[max(int(math.ceil(DEAD_SHARE * len(ordered))) - 1, 0)] + 1
        if onset <= 0.8 * step:
            onsets.append(onset)
    return min(onsets, default=None)


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
    several = [f"{r['name']} ({', '.join(a['kind'] + '@' + str(a['step']) for a in r['roots'])})" for r in faulty
               if len(r["roots"]) > 1]
    contradicting = [f"{r['name']} ({'; '.join(r['contradictions'])})" for r in rows if r["contradictions"]]
    latencies = [f"{r['name']} {r['onset']}->{r['onset'] + r['latency']}" for r in rows if r["latency"] is not None]
    return (f"**{title}**: recall {len(caught)}/{len(faulty)}, false alarms {len(alarms)}/{len(healthy)}, "
            f"median steps to detection {statistics.median(steps) if steps else '-'}, explosions flagged before the "
            f"first non-finite value {len(before)}/{len(overflowed)}, faulty runs diagnosed with more than one root "
            f"{len(several)}/{len(faulty)}, runs with contradicting fixes {len(contradicting)}"
            + (f"; dead units died -> first alert: {', '.join(latencies)}" if latencies else "")
            + (f"; several roots: {', '.join(several)}" if several else "")
            + (f"; contradicting: {', '.join(contradicting)}" if contradicting else "")
            + (f"; missed: {', '.join(r['name'] for r in faulty if not r['caught'])}" if len(caught) < len(faulty) else "")
            + (f"; false alarms: {', '.join(r['name'] + ' (' + ', '.join(r['kinds']) + ')' for r in alarms)}" if alarms else ""))


def _alert_line(alert) -> str:
    cause = f"  <- caused by {describe(alert.caused_by)}" if alert.caused_by else ""
    where = f" in {alert.layer}" if alert.layer else ""
    return f"{alert.severity.upper():8} {alert.kind}{where} at step {alert.step}{cause}"


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
             f"All scenarios from `torchhealth_scenarios`, default Monitor settings, seed {args.seed}, "
             f"1 CPU thread, {total:.0f} s in total. Regenerate with `python benchmarks/detection.py --out docs/detection.md`.",
             ""]
    for key, title in GROUPS.items():
        group = [r for r in rows if r["group"] == key]
        if group:
            parts += [f"## {title}", "", summary(group, title), "", table(group), ""]
    parts += ["## Alerts, links and diagnosis per run", ""]
    for r in rows:
        if r["alerts"]:
            parts += [f"### {r['name']}", "", "```"] + [_alert_line(a) for a in r["alerts"]] + [""] + r["diagnosis"] + ["```", ""]
    report = "\n".join(parts)
    print(report)
    if args.out:
        Path(args.out).write_text(report + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
