"""Diagnosis: causal links between alerts, grouping, one consistent set of fixes, raise on roots only."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from torchhealth import Monitor, TrainingHealthError
from torchhealth.advice import suggest
from torchhealth.detectors import Alert
from torchhealth.detectors.diagnosis import Diagnosis, render, summarize
from torchhealth.facts import ModelFacts
from torchhealth_scenarios import SCENARIOS, run_scenario
from torchhealth.records import Snapshot
from tests.helpers import mlp_facts


def relu_facts(depth: int = 4, lr: float = 0.05) -> ModelFacts:
    return mlp_facts(depth, lr=lr)


def alert(kind: str, step: int, facts: ModelFacts, layer: str | None = None, severity: str = "warning",
          **evidence) -> Alert:
    evidence.setdefault("layers", [layer] if layer else [])
    return Alert(kind, layer, step, severity, 1.0, f"{kind} here", suggest(kind, facts, evidence), evidence)


def check(diagnosis: Diagnosis, step: int, alerts: list[Alert], facts: ModelFacts) -> list[Alert]:
    return diagnosis.link(alerts, Snapshot(step=step), facts)


def test_symptoms_after_nonfinite_are_linked_to_it_and_carry_only_its_fix():
    facts, diagnosis = relu_facts(), Diagnosis()
    [root] = check(diagnosis, 10, [alert("nonfinite", 8, facts, severity="critical", root="loss")], facts)
    later = check(diagnosis, 40, [alert("dead_units", 40, facts, "1", "critical"),
                                  alert("vanishing_gradient", 40, facts, "0", lower_layers=["0"])], facts)
    assert root.caused_by is None
    assert [a.caused_by for a in later] == [root.ref, root.ref]
    for consequence in later:  # NaN weights are not dead units: no LeakyReLU, only the root's fix
        assert consequence.suggestions == [f"Fix the root cause first, nonfinite at step 8: {root.suggestions[0]}"]


def test_dead_units_per_layer_after_one_nan_are_one_grouped_alert():
    facts, diagnosis = relu_facts(depth=8), Diagnosis()
    check(diagnosis, 10, [alert("nonfinite", 10, facts, severity="critical", root="loss")], facts)
    sites = [str(i) for i in range(1, 14, 2)]
    grouped = check(diagnosis, 30, [alert("dead_units", 30, facts, s, "critical") for s in reversed(sites)], facts)
    assert len(grouped) == 1
    assert grouped[0].evidence["layers"] == sites and grouped[0].layer == "1"
    assert grouped[0].message.startswith("7 layers:") and grouped[0].caused_by["kind"] == "nonfinite"


def test_vanishing_is_linked_to_dead_units_above_it_not_below_it():
    facts = relu_facts(depth=4)
    above, below = Diagnosis(), Diagnosis()
    check(above, 20, [alert("dead_units", 20, facts, "3", "critical")], facts)
    [linked] = check(above, 70, [alert("vanishing_gradient", 70, facts, "0", lower_layers=["0"])], facts)
    assert linked.caused_by == {"kind": "dead_units", "layer": "3", "step": 20}
    check(below, 20, [alert("dead_units", 20, facts, "1", "critical")], facts)
    [alone] = check(below, 70, [alert("vanishing_gradient", 70, facts, "4", lower_layers=["4"])], facts)
    assert alone.caused_by is None


def test_an_explosion_is_the_root_of_the_divergence_and_overflow_it_causes():
    facts, diagnosis = relu_facts(), Diagnosis()
    # detectors report nonfinite first; the causal order puts the explosion first
    same = check(diagnosis, 3, [alert("nonfinite", 3, facts, severity="critical", root="grad:0"),
                                alert("exploding_gradient", 3, facts, "0", "critical"),
                                alert("loss_divergence", 3, facts, severity="critical")], facts)
    assert [a.kind for a in same] == ["exploding_gradient", "nonfinite", "loss_divergence"]
    assert same[0].caused_by is None and all(a.caused_by == same[0].ref for a in same[1:])


def test_a_nan_loss_in_the_same_check_as_a_divergence_is_its_own_root():
    facts, diagnosis = relu_facts(), Diagnosis()
    out = check(diagnosis, 30, [alert("nonfinite", 28, facts, severity="critical", root="loss"),
                                alert("loss_divergence", 30, facts, severity="critical")], facts)
    assert out[0].kind == "nonfinite" and out[0].caused_by is None and out[1].caused_by == out[0].ref


def test_links_expire_once_the_cause_has_been_healthy_for_the_horizon():
    facts, diagnosis = relu_facts(), Diagnosis()
    check(diagnosis, 0, [alert("exploding_gradient", 0, facts, "0")], facts)
    for step in range(10, 130, 10):
        check(diagnosis, step, [], facts)
    [plateau] = check(diagnosis, 130, [alert("loss_plateau", 130, facts)], facts)
    assert plateau.caused_by is None


def test_the_learning_rate_is_never_both_lowered_and_raised_in_one_run():
    facts, diagnosis = relu_facts(lr=0.05), Diagnosis()
    [dead] = check(diagnosis, 20, [alert("dead_units", 20, facts, "1", "critical", preceding_bias_mean=-3.0)], facts)
    assert any(s.startswith("Lower the learning rate from 0.05 to 0.01") for s in dead.suggestions)
    plateau = alert("loss_plateau", 120, facts, update_ratio=1e-9)
    assert any(s.startswith("Raise the learning rate") for s in plateau.suggestions)  # what it said before
    [plateau] = check(diagnosis, 120, [plateau], facts)
    assert not any("Raise the learning rate" in s for s in plateau.suggestions)
    assert plateau.evidence["withheld_fixes"][0]["contradicts"] == dead.ref


def test_one_target_value_per_knob_across_alerts():
    facts, diagnosis = relu_facts(lr=1.0), Diagnosis()
    out = check(diagnosis, 2, [alert("exploding_gradient", 2, facts, "0", healthy_norm=1.3),
                               alert("dead_units", 30, facts, "1")], facts)
    lr_fixes = {s for a in out for s in a.suggestions if "Lower the learning rate from" in s}
    clips = {s for a in out for s in a.suggestions if s.startswith("Clip")}
    assert len({s[s.index("Lower"):s.index(":", s.index("Lower"))] for s in lr_fixes}) == 1
    assert len(clips) == 1


def test_state_round_trips_so_a_resumed_run_links_to_earlier_alerts():
    facts, diagnosis = relu_facts(), Diagnosis()
    check(diagnosis, 10, [alert("nonfinite", 10, facts, severity="critical", root="loss")], facts)
    resumed = Diagnosis()
    resumed.load_state_dict(json.loads(json.dumps(diagnosis.state_dict())))
    [dead] = check(resumed, 30, [alert("dead_units", 30, facts, "1")], facts)
    assert dead.caused_by == {"kind": "nonfinite", "layer": None, "step": 10}


def test_summary_names_roots_chains_and_ranked_fixes_from_jsonl_dicts():
    facts, diagnosis = relu_facts(), Diagnosis()
    alerts = check(diagnosis, 20, [alert("dead_units", 20, facts, "3", "critical", preceding_bias_mean=-3.0)], facts)
    alerts += check(diagnosis, 70, [alert("vanishing_gradient", 70, facts, "0", lower_layers=["0"])], facts)
    alerts += check(diagnosis, 120, [alert("loss_plateau", 120, facts, update_ratio=1e-9)], facts)
    diagnosis_ = summarize([json.loads(json.dumps(a.to_dict())) for a in alerts])
    assert len(diagnosis_["roots"]) == 1 and diagnosis_["roots"][0]["alert"]["kind"] == "dead_units"
    assert [c["kind"] for c in diagnosis_["roots"][0]["consequences"]] == ["vanishing_gradient", "loss_plateau"]
    assert diagnosis_["fixes"][0].startswith("Replace ReLU with LeakyReLU")
    text = "\n".join(render(diagnosis_))
    assert "1 root cause" in text and "↳ then vanishing_gradient" in text and "Raise the learning rate" not in text


class Scripted:
    """A detector that raises the given alerts at given steps (for Monitor wiring tests)."""

    def __init__(self, kind, plan):
        from torchhealth.detectors.episodes import Episodes
        self.kind, self.plan, self.episodes = kind, plan, Episodes()

    def check(self, snapshot, facts):
        return [Alert(self.kind, layer, snapshot.step, severity, 1.0, "scripted", ["do"], {"layers": [layer]})
                for step, layer, severity in self.plan if step == snapshot.step]

    def static_check(self, model, facts):
        return []

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass


def scripted_monitor(plan, **options):
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    monitor = Monitor(model, torch.optim.SGD(model.parameters(), lr=0.1), check_every=1, **options)
    monitor.detectors = [Scripted(kind, [p[1:] for p in plan if p[0] == kind]) for kind in dict.fromkeys(p[0] for p in plan)]
    return model, monitor


def train(model, monitor, steps):
    out = []
    for _ in range(steps):
        loss = model(torch.randn(8, 4)).pow(2).mean()
        loss.backward()
        out += monitor.step(loss)
    return out


def test_raise_pages_on_roots_not_on_their_consequences():
    plan = [("nonfinite", 1, None, "critical"), ("dead_units", 3, "1", "critical")]
    model, monitor = scripted_monitor(plan, on_alert="raise")
    with pytest.raises(TrainingHealthError) as info:
        train(model, monitor, 2)
    assert info.value.alert.kind == "nonfinite"
    assert [a.kind for a in train(model, monitor, 3)] == ["dead_units"]  # the consequence does not raise
    assert monitor.alerts[-1].caused_by["kind"] == "nonfinite"


def test_a_critical_consequence_of_a_warning_raises_naming_its_root():
    plan = [("exploding_gradient", 1, "0", "warning"), ("loss_divergence", 2, None, "critical")]
    model, monitor = scripted_monitor(plan, on_alert="raise")
    with pytest.raises(TrainingHealthError) as info:
        train(model, monitor, 4)
    assert info.value.alert.kind == "exploding_gradient"


def test_monitor_state_dict_keeps_links_across_a_resume():
    plan = [("nonfinite", 1, None, "critical"), ("dead_units", 3, "1", "critical")]
    model, monitor = scripted_monitor(plan)
    train(model, monitor, 2)
    state = json.loads(json.dumps(monitor.state_dict()))
    model2, resumed = scripted_monitor(plan)
    resumed.load_state_dict(state)
    new = train(model2, resumed, 2)
    assert new[0].caused_by == {"kind": "nonfinite", "layer": None, "step": 1}
    assert resumed.alerts[0].to_dict() == monitor.alerts[0].to_dict()


def test_demo_dead_unit_run_reads_as_one_diagnosis():
    result = run_scenario(SCENARIOS["dead_units"])
    roots = [a for a in result.alerts if a.caused_by is None]
    assert [a.kind for a in roots] == ["dead_units"] and roots[0].evidence["layers"] == ["1", "3"]
    assert {a.kind for a in result.alerts if a.caused_by} == {"vanishing_gradient", "loss_plateau"}
    fixes = [s for a in result.alerts for s in a.suggestions]
    assert not any(s.startswith("Raise the learning rate") for s in fixes)


def test_advisories_stand_alone_and_are_listed_apart():
    facts, diagnosis = relu_facts(), Diagnosis()
    spike = Alert("gradient_spike", None, 190, "info", 30.0, "spike", suggest("gradient_spike", facts, {"spike_step": 190}),
                  {"spike_step": 190})
    out = check(diagnosis, 190, [spike], facts)
    [plateau] = check(diagnosis, 200, [alert("loss_plateau", 200, facts)], facts)
    assert out[0].caused_by is None and plateau.caused_by is None  # a spike explains nothing
    summary = summarize(out + [plateau])
    assert [r["alert"]["kind"] for r in summary["roots"]] == ["loss_plateau"]
    assert [a["kind"] for a in summary["advisories"]] == ["gradient_spike"]
    assert render(summarize(out))[:2] == ["Diagnosis: no problem found.", "Advisories (no problem on their own):"]


def test_an_escalation_is_the_same_root_getting_worse_not_a_new_one():
    facts, diagnosis = relu_facts(), Diagnosis()
    first = check(diagnosis, 2, [alert("exploding_gradient", 2, facts, "0")], facts)
    worse = alert("exploding_gradient", 3, facts, "2", "critical", escalated_from="warning")
    later = check(diagnosis, 3, [worse, alert("nonfinite", 3, facts, severity="critical", root="grad:0")], facts)
    assert later[0].caused_by is None and later[1].caused_by == first[0].ref
    summary = summarize(first + later)
    assert len(summary["roots"]) == 1 and [c["step"] for c in summary["roots"][0]["consequences"]] == [3, 3]
    assert "↳ worse exploding_gradient in `2` at step 3" in "\n".join(render(summary))


def test_sinks_render_a_consequence_under_its_root():
    root = Alert("nonfinite", None, 8, "critical", 8.0, "NaN", ["make the loss safe"])
    consequence = Alert("dead_units", "3", 30, "critical", 1.0, "dead", ["fix the root"], caused_by=root.ref)
    assert "(consequence of nonfinite at step 8)" in str(consequence)
    assert "↳ consequence of nonfinite at step 8" in consequence.to_markdown()
    assert json.loads(json.dumps(consequence.to_dict()))["caused_by"] == {"kind": "nonfinite", "layer": None, "step": 8}
    assert "consequence" not in str(root) and root.caused_by is None


def test_detectors_of_the_users_own_join_the_diagnosis_with_their_own_fixes():
    """A rule that keeps no episodes (no ``super().__init__()``) and a kind advice.py does not know."""
    import torch
    from torch import nn

    import torchhealth

    class EveryLayer(torchhealth.Detector):
        kind = "my_rule"

        def __init__(self):  # no super().__init__(): no episodes, no series
            pass

        def check(self, snapshot, facts):
            return [torchhealth.Alert(self.kind, layer, snapshot.step, "warning", 1.0, "mine", ["my fix"])
                    for layer in ("0", "2")]

    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 1))
    monitor = torchhealth.Monitor(model, check_every=1, log_every=1, on_alert=lambda a: None,
                                  detectors=[*torchhealth.default_detectors(), EveryLayer()])
    model(torch.randn(2, 3)).sum().backward()
    alerts = monitor.step()
    monitor.close()
    assert "diagnosis" not in monitor.guard.disabled
    mine = [a for a in alerts if a.kind == "my_rule"]
    assert len(mine) == 1 and mine[0].evidence["layers"] == ["0", "2"] and mine[0].suggestions == ["my fix"]
