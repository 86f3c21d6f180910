"""Every detector on hand-written snapshot sequences, including the traps named in issue 3."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from torchhealth.detectors import (DeadUnits, ExplodingGradient, LossDivergence, LossPlateau, NonFinite, Overfitting,
                                   SaturatedActivation, StaticChecks, VanishingGradient, default_detectors)
from torchhealth.facts import ModelFacts
from torchhealth.records import TOTAL, Snapshot

from tests.helpers import mlp_facts


def snap(step: int, loss: float | None = None, **families) -> Snapshot:
    return Snapshot(step=step, stats={k: dict(v) for k, v in families.items()}, loss=loss)


def run(detector, snapshots, facts):
    return [a for s in snapshots for a in detector.check(s, facts)]


# -- exploding_gradient -------------------------------------------------------------------------------
def grad_sequence(norms, losses):
    return [snap(10 * i, loss, grad_norm={TOTAL: n, "0": n / 2, "2": n / 2}) for i, (n, loss) in enumerate(zip(norms, losses))]


def test_exploding_flags_geometric_growth_before_overflow():
    facts = mlp_facts()
    norms = [1.0 * 2 ** i for i in range(16)]  # doubles every check
    losses = [2.0 + 0.5 * i for i in range(16)]
    alerts = run(ExplodingGradient(), grad_sequence(norms, losses), facts)
    assert [a.severity for a in alerts] == ["warning", "critical"]  # one episode, escalated once
    assert alerts[0].step <= 60 and alerts[0].value < 100  # flagged long before float32 overflows
    assert "Lower the learning rate from 0.1 to 0.01" in alerts[0].suggestions[0]


def test_exploding_flags_sudden_jump_even_while_loss_falls():
    norms = [1.0, 1.1, 0.9, 5e4]
    alerts = run(ExplodingGradient(), grad_sequence(norms, [2, 1.9, 1.8, 1.7]), mlp_facts())
    assert len(alerts) == 1 and alerts[0].severity == "critical"


def test_trap_large_but_falling_norms_in_healthy_regression():
    norms = [1e3 * 0.8 ** i for i in range(30)]
    losses = [1e4 * 0.7 ** i for i in range(30)]
    assert run(ExplodingGradient(), grad_sequence(norms, losses), mlp_facts()) == []


def test_trap_late_training_bounce_is_not_explosion():
    norms = [10, 8, 5, 2, 1] + [10 ** -(i / 4) for i in range(20)] + [0.5, 2.0, 0.3, 3.0]  # bounces 100x+ late
    losses = [2, 1.5, 1, 0.5, 0.2] + [0.1 * 0.8 ** i for i in range(20)] + [0.02, 0.05, 0.01, 0.04]
    assert run(ExplodingGradient(), grad_sequence(norms, losses), mlp_facts()) == []


def test_trap_growth_while_loss_improves_is_not_explosion():
    norms = [1e-4 * 3 ** i for i in range(10)]  # tiny-init model waking up
    losses = [2.3 - 0.2 * i for i in range(10)]
    assert run(ExplodingGradient(), grad_sequence(norms, losses), mlp_facts()) == []


def test_trap_amp_skipped_steps_are_not_explosion():
    detector, facts = ExplodingGradient(), mlp_facts()
    seq = grad_sequence([1.0, 1.1, math.inf, 1.0], [2, 1.9, 1.9, 1.8])
    seq[2].skipped_steps = 1
    seq[2].nonfinite = {"grad:0": 20, "grad:2": 20}
    assert run(detector, seq, facts) == []
    assert run(NonFinite(), seq, facts) == []


def test_exploding_names_fastest_growing_layer_and_recovers_then_relapses():
    facts, detector = mlp_facts(), ExplodingGradient()
    seq = [snap(10 * i, 2.0 + i, grad_norm={TOTAL: n, "0": 1.0, "2": n}) for i, n in
           enumerate([1, 1, 50, 1, 1, 1, 60])]
    alerts = run(detector, seq, facts)
    assert [a.step for a in alerts] == [20, 60]
    assert alerts[0].layer == "2"
    assert detector.episodes.history[0]["recovered"] == 50 and alerts[1].evidence["relapse"] == 1


# -- vanishing_gradient -------------------------------------------------------------------------------
def layered(step, loss, lower, upper, mid=None):
    mid = math.sqrt(lower * upper) if mid is None else mid
    return snap(step, loss, grad_norm={"0": lower, "2": mid, "4": mid, "6": upper, TOTAL: upper})


def test_vanishing_needs_persistence_and_stalled_loss():
    facts = mlp_facts()
    stalled = [layered(10 * i, 2.30, 1e-7, 0.1) for i in range(10)]
    alerts = run(VanishingGradient(), stalled, facts)
    assert len(alerts) == 1 and alerts[0].layer == "0" and alerts[0].step == 70
    assert alerts[0].kind == "vanishing_gradient"


def test_trap_one_quiet_step_is_not_vanishing():
    facts = mlp_facts()
    seq = [layered(10 * i, 2.3, 1e-7 if i % 4 == 0 else 0.05, 0.1) for i in range(20)]
    assert run(VanishingGradient(), seq, facts) == []


def test_trap_small_lower_gradients_while_training_progresses():
    facts = mlp_facts()
    seq = [layered(10 * i, 2.3 * 0.8 ** i, 1e-5, 0.1) for i in range(20)]
    assert run(VanishingGradient(), seq, facts) == []


def test_vanishing_uses_forward_order_not_definition_order():
    facts = mlp_facts()
    facts.forward_order = ["6", "5", "4", "3", "2", "1", "0"]  # the model runs its layers backwards
    seq = [snap(10 * i, 2.3, grad_norm={"0": 0.1, "2": 0.01, "4": 1e-3, "6": 1e-8}) for i in range(10)]
    alerts = run(VanishingGradient(), seq, facts)
    assert alerts and alerts[0].layer == "6"


# -- dead_units ---------------------------------------------------------------------------------------
def test_trap_element_sparsity_is_not_death():
    facts = mlp_facts()
    seq = [snap(10 * i, 1.0, zero_fraction={"1": 0.8}, **({"dead_units": {"1": 0.0}} if i % 5 == 4 else {}))
           for i in range(30)]
    assert run(DeadUnits(), seq, facts) == []


def test_silent_layer_is_dead_before_its_window_closes():
    # small batches: the 1024-sample window has not closed, but the layer output only zeros for 3 checks
    facts = mlp_facts()
    seq = [snap(10 * i, 0.7, zero_fraction={"1": 0.5, "3": 1.0 if i >= 2 else 0.9}) for i in range(8)]
    alerts = run(DeadUnits(), seq + [snap(80, 0.7, dead_units={"3": 1.0}, zero_fraction={"3": 1.0})], facts)
    assert [(a.layer, a.severity, a.step) for a in alerts] == [("3", "critical", 40)]  # once, window verdict agrees


def test_trap_nearly_silent_or_briefly_silent_layers_are_not_dead():
    facts = mlp_facts()
    nearly = [snap(10 * i, 0.7, zero_fraction={"1": 0.999}) for i in range(20)]
    brief = [snap(10 * i, 0.7, zero_fraction={"1": 1.0 if i % 3 else 0.95}) for i in range(20)]
    assert run(DeadUnits(), nearly, facts) == [] and run(DeadUnits(), brief, facts) == []


def test_dead_units_once_per_episode_escalates_and_names_layer():
    facts = mlp_facts()
    detector = DeadUnits()
    seq = [snap(0, dead_units={"1": 0.6, "3": 0.1}), snap(10, dead_units={"1": 0.7}),
           snap(20, dead_units={"1": 0.95})]
    alerts = run(detector, seq, facts)
    assert [(a.layer, a.severity) for a in alerts] == [("1", "warning"), ("1", "critical")]
    assert "LeakyReLU" in alerts[0].suggestions[0] and "`1`" in alerts[0].suggestions[0]


def test_dead_units_reports_negative_bias_of_feeding_layer():
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    nn.init.constant_(model[0].bias, -3.0)
    facts = ModelFacts.from_model(model)
    facts.forward_order = ["0", "1", "2"]
    alert = DeadUnits().check(snap(0, dead_units={"1": 1.0}), facts)[0]
    assert alert.evidence["preceding_bias_mean"] == -3.0
    assert any("bias" in s for s in alert.suggestions)


# -- nonfinite ----------------------------------------------------------------------------------------
def test_nonfinite_reports_root_of_cascade_once():
    facts = mlp_facts()
    facts.forward_order = ["0", "1", "2", "3", "4", "5", "6"]
    cascade = {"activation:5": 13, "activation:3": 13, "activation:1": 14, "loss": 13, "grad:0": 20, "grad:6": 20}
    detector = NonFinite()
    alerts = run(detector, [snap(20, nonfinite=None)] if False else [Snapshot(20, nonfinite=cascade),
                                                                    Snapshot(30, nonfinite={"loss": 21})], facts)
    assert len(alerts) == 1
    assert alerts[0].layer == "3" and alerts[0].step == 13 and alerts[0].severity == "critical"
    assert alerts[0].evidence["root"] == "activation:3"


def test_nonfinite_loss_root_suggests_safe_loss():
    alerts = NonFinite().check(Snapshot(10, nonfinite={"loss": 4, "grad:0": 10}), mlp_facts())
    assert alerts[0].layer is None and alerts[0].step == 4
    assert "BCEWithLogitsLoss" in alerts[0].suggestions[0]


def test_nonfinite_recovers_and_fires_again():
    detector, facts = NonFinite(), mlp_facts()
    seq = [Snapshot(0, nonfinite={"loss": 0}), Snapshot(10), Snapshot(20), Snapshot(30, nonfinite={"loss": 25})]
    assert [a.step for a in run(detector, seq, facts)] == [0, 25]


# -- saturated_activation -----------------------------------------------------------------------------
def saturation_facts() -> ModelFacts:
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 1), nn.Sigmoid())
    facts = ModelFacts.from_model(model)
    facts.forward_order = ["0", "1", "2", "3", "4", "5"]
    return facts


def test_saturation_needs_persistence_and_skips_output_activation():
    seq = [snap(10 * i, 1.0, saturation={"1": 0.95, "3": 0.6 if i != 1 else 0.1, "5": 0.99}) for i in range(7)]
    alerts = run(SaturatedActivation(), seq, saturation_facts())
    assert [(a.layer, a.severity, a.step) for a in alerts] == [("1", "critical", 40), ("3", "warning", 60)]


def test_trap_saturation_a_third_of_outputs_while_loss_falls_is_flagged():
    # 44% of a hidden sigmoid layer stuck at its extremes for 200 steps while Adam still lowers the
    # loss: the layer trains at a fraction of its speed; a practitioner wants to hear about it.
    seq = [snap(10 * i, 5.0 * 0.9 ** i, saturation={"1": 0.44, "3": 0.02}) for i in range(20)]
    alerts = run(SaturatedActivation(), seq, saturation_facts())
    assert [(a.layer, a.severity, a.step) for a in alerts] == [("1", "warning", 40)]


def test_trap_healthy_or_transient_saturation_is_not_flagged():
    # healthy tanh layers keep a few percent at the extremes; a short burst (4 checks) is transient
    healthy = [snap(10 * i, 1.0, saturation={"1": 0.03, "3": 0.25}) for i in range(30)]
    burst = [snap(10 * i, 1.0, saturation={"1": 0.7 if 3 <= i < 7 else 0.05}) for i in range(30)]
    assert run(SaturatedActivation(), healthy + burst, saturation_facts()) == []


class HandWrittenLSTM(nn.Module):
    """An LSTM cell written with torch.sigmoid/torch.tanh gates, unrolled over 3 steps, then a head."""

    def __init__(self) -> None:
        super().__init__()
        self.cell = nn.Linear(8, 16)
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        h = c = torch.zeros(x.shape[0], 4)
        for _ in range(3):
            i, f, g, o = self.cell(torch.cat([x, h], 1)).chunk(4, 1)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            h = torch.sigmoid(o) * torch.tanh(c)
        return self.head(h)


def test_trap_saturated_gates_of_a_hand_written_lstm_are_not_flagged():
    from torchhealth.monitor import Monitor

    model = HandWrittenLSTM()
    monitor = Monitor(model, sample_every=1, check_every=1)
    model(torch.randn(4, 4))
    sites = [s for s in monitor.facts.activations if s.startswith("cell") or ":" in s]
    assert len(sites) >= 5  # the function mode saw the gates
    seq = [snap(10 * i, 1.0, saturation={s: 0.95 for s in sites}) for i in range(10)]
    assert run(SaturatedActivation(), seq, monitor.facts) == []
    monitor.close()
    # the same shares in a plain tanh stack are flagged
    assert run(SaturatedActivation(), [snap(10 * i, 1.0, saturation={"1": 0.95}) for i in range(10)],
               saturation_facts())


# -- loss_divergence / loss_plateau / overfitting -----------------------------------------------------
def test_divergence_on_rising_loss_and_not_on_late_bounce():
    facts = mlp_facts()
    rising = [snap(10 * i, 2.3 * 1.5 ** i) for i in range(8)]
    alerts = run(LossDivergence(), rising, facts)
    assert [a.severity for a in alerts] == ["warning", "critical"]
    bounce = [snap(10 * i, v) for i, v in enumerate([2.3, 1.0, 0.3, 0.05, 0.01, 0.06, 0.01, 0.08])]
    assert run(LossDivergence(), bounce, facts) == []


def test_trap_divergence_within_the_first_checks_is_measured_from_the_earliest_loss():
    # Adam with lr far too high: the loss is already diverged on the 2nd and 3rd checks, so their
    # median (8.5) would hide the rise; the starting level is the lowest early loss (0.72).
    losses = [0.72, 8.5, 20.0, 9.0, 7.5, 8.1, 7.9, 8.3]
    alerts = run(LossDivergence(), [snap(10 * i, v) for i, v in enumerate(losses)], mlp_facts())
    assert alerts and alerts[0].step == 10 and alerts[0].evidence["start_loss"] == 0.72
    assert alerts[0].severity == "critical"


def test_trap_one_noisy_interval_is_not_divergence():
    # small batches on noisy targets: single checks bounce to 2.3x the lowest early loss and back
    losses = [0.67, 0.9, 0.8, 1.53, 0.75, 0.85, 1.6, 0.7, 0.95, 0.8, 1.55, 0.72]
    assert run(LossDivergence(), [snap(10 * i, v) for i, v in enumerate(losses)], mlp_facts()) == []


def test_trap_loss_that_starts_high_and_falls_is_not_divergence():
    # huge init: the first loss is enormous and falls fast; noise on the way down is not a rise
    losses = [400.0, 60.0, 9.0, 4.0, 4.4, 3.0, 3.3, 2.1, 2.4, 1.5]
    assert run(LossDivergence(), [snap(10 * i, v) for i, v in enumerate(losses)], mlp_facts()) == []


def test_plateau_only_when_training_never_progressed():
    facts = mlp_facts()
    assert run(LossPlateau(), [snap(10 * i, 2.30 + 0.001 * (i % 2)) for i in range(20)], facts)
    converged = [snap(10 * i, max(2.3 * 0.6 ** i, 0.01)) for i in range(40)]
    assert run(LossPlateau(), converged, facts) == []


def test_overfitting_needs_val_rise_and_falling_train_loss():
    facts = mlp_facts()
    train = [2.0 * 0.8 ** i for i in range(12)]
    val = [2.0, 1.6, 1.3, 1.1, 1.0, 1.05, 1.12, 1.2, 1.3, 1.4, 1.5, 1.6]
    seq = [Snapshot(10 * i, loss=t, val_loss=v) for i, (t, v) in enumerate(zip(train, val))]
    alerts = run(Overfitting(), seq, facts)
    assert len(alerts) == 1 and alerts[0].step == 80 and alerts[0].evidence["best_val_step"] == 40
    assert "Dropout(p=0.3)" in alerts[0].suggestions[0]
    no_val = [Snapshot(10 * i, loss=t) for i, t in enumerate(train)]
    assert run(Overfitting(), no_val, facts) == []
    both_rise = [Snapshot(10 * i, loss=1.0 + 0.1 * i, val_loss=1.0 + 0.2 * i) for i in range(10)]
    assert run(Overfitting(), both_rise, facts) == []


# -- static checks ------------------------------------------------------------------------------------
def test_static_checks_dropout_and_final_softmax():
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Dropout(1.0), nn.Linear(8, 3), nn.Softmax(dim=1))
    alerts = StaticChecks().static_check(model, ModelFacts.from_model(model))
    assert {(a.kind, a.layer) for a in alerts} == {("suspicious_dropout", "2"), ("final_activation", "4")}
    assert all(a.severity == "warning" for a in alerts)
    healthy = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Dropout(0.2), nn.Linear(8, 3))
    assert StaticChecks().static_check(healthy, ModelFacts.from_model(healthy)) == []


# -- state ----------------------------------------------------------------------------------------------
def test_state_dict_is_plain_data_and_resumes_episodes():
    facts = mlp_facts()
    detectors = default_detectors()
    seq = grad_sequence([1, 1, 1, 50, 60], [2, 2, 2, 3, 4])
    for s in seq[:4]:
        for d in detectors:
            d.check(s, facts)
    states = [json.loads(json.dumps(d.state_dict())) for d in detectors]  # JSON round trip: plain data
    resumed = default_detectors()
    for d, state in zip(resumed, states):
        d.load_state_dict(state)
    assert run(resumed[1], seq[4:], facts) == []  # episode still open after resume: no second alert
    assert resumed[1].state_dict() != ExplodingGradient().state_dict()


@pytest.mark.parametrize("detector", default_detectors(), ids=lambda d: type(d).__name__)
def test_empty_snapshots_raise_nothing(detector):
    assert run(detector, [Snapshot(10 * i) for i in range(30)], mlp_facts()) == []


def test_trap_fast_falling_loss_is_not_divergence_whatever_the_early_median():
    # Adam on an easy task: the third check is already 30x below the first; the median of the last
    # three checks (0.56) is far above the lowest early loss (0.038), yet the loss only fell.
    losses = [1.27, 0.56, 0.038, 0.0019, 0.0004, 0.0002, 0.00016]
    assert run(LossDivergence(), [snap(10 * i, v) for i, v in enumerate(losses)], mlp_facts()) == []


def test_trap_the_start_of_a_long_run_is_not_forgotten_when_old_checks_are_dropped():
    # a loss that fell 20x in the first checks then stayed flat for far longer than the kept history
    losses = [2.1, 1.0, 0.4] + [0.111] * 300
    assert run(LossPlateau(), [snap(10 * i, v) for i, v in enumerate(losses)], mlp_facts()) == []
    assert run(LossDivergence(), [snap(10 * i, v) for i, v in enumerate(losses)], mlp_facts()) == []


@pytest.mark.parametrize("best", [0.0, -2.0])
def test_overflow_after_a_best_loss_of_zero_or_below_claims_no_growth(best):
    """Found by the property test: a zero best loss divided by zero; a negative one gave negative growth."""
    detector, facts = ExplodingGradient(), ModelFacts()
    for step, norm in enumerate([1.0, 1.0, float("nan")]):
        snapshot = Snapshot(step=10 * step, stats={"grad_norm": {"fc1": norm, TOTAL: norm}}, loss=best)
        assert detector.check(snapshot, facts) == []


# -- phase-aware scales: spikes that recover, references from more than one step -------------------------
def learning_rnn(spike: list[float], spike_losses: list[float]):
    """A recurrent net on an initial plateau (tiny norms), then learning (norms 15x higher, loss falling), then a spike."""
    norms = [0.07, 0.08, 0.06, 0.07, 0.08] + [0.3, 0.6, 1.0, 1.2] + [1.0, 0.9, 1.1, 0.8, 1.0, 0.9, 1.2, 1.0, 0.9, 1.1]
    losses = [0.69, 0.69, 0.68, 0.69, 0.68] + [0.6, 0.45, 0.3, 0.2] + [0.1 * 0.95 ** i for i in range(10)]
    return grad_sequence(norms + spike, losses + spike_losses)


def test_a_spike_that_falls_back_is_an_advisory_gradient_spike_not_an_explosion():
    # 8x the recent level, 100x the plateau's: measured against the first steps this was an explosion
    alerts = run(ExplodingGradient(), learning_rnn([8.0, 3.0, 1.0, 0.9, 1.1], [0.9, 0.3, 0.07, 0.06, 0.06]),
                 mlp_facts())
    assert [a.kind for a in alerts] == []  # under 10x the recent level: nothing at all
    alerts = run(ExplodingGradient(), learning_rnn([30.0, 5.0, 1.0, 0.9, 1.1], [0.9, 0.3, 0.07, 0.06, 0.06]),
                 mlp_facts())
    assert [(a.kind, a.severity, a.step) for a in alerts] == [("gradient_spike", "info", 190)]
    assert alerts[0].evidence["spike_step"] == 190 and "190" in alerts[0].suggestions[0]


def test_a_spike_that_stays_becomes_an_explosion_after_spike_checks():
    alerts = run(ExplodingGradient(), learning_rnn([30.0, 40.0, 60.0, 90.0], [0.9, 1.2, 1.5, 2.0]), mlp_facts())
    assert [(a.kind, a.step) for a in alerts] == [("gradient_spike", 190), ("exploding_gradient", 220)]
    assert alerts[1].evidence["spike_step"] == 190 and alerts[1].severity == "warning"


def test_a_sudden_critical_jump_is_an_explosion_at_once_even_with_a_recent_level():
    alerts = run(ExplodingGradient(), learning_rnn([5e4], [5.0]), mlp_facts())
    assert [(a.kind, a.severity, a.step) for a in alerts] == [("exploding_gradient", "critical", 190)]


def test_norm_references_come_from_the_first_steps_not_the_first_checks():
    # Adam on an easy task: norms fall 600x by the third check; later noise at 3x the first norm is no growth
    norms = [0.525, 0.00733, 0.000863, 5.8e-6, 0.00845, 0.000119, 0.0278, 1.4e-7, 0.00978, 1.47]
    losses = [1.1, 0.179, 0.0203, 0.0047, 0.0272, 0.00046, 0.0128, 0.0434, 0.0151, 0.0628]
    assert run(ExplodingGradient(), grad_sequence(norms, losses), mlp_facts()) == []
    assert run(LossDivergence(), [snap(10 * i, v) for i, v in enumerate(losses)], mlp_facts()) == []


def test_trap_adam_start_up_transient_is_not_divergence():
    # the loss trip-wire adds checks at steps 1-3 while Adam's first steps overshoot; by step 10 it is back
    steps, losses = [0, 1, 2, 3, 10, 20, 30], [0.7, 1.6, 2.9, 2.4, 0.65, 0.5, 0.4]
    assert run(LossDivergence(), [snap(s, v) for s, v in zip(steps, losses)], mlp_facts()) == []
    # the same shape that does not come back is divergence, once the first steps are over
    diverged = run(LossDivergence(), [snap(s, v) for s, v in zip(steps, [0.7, 1.6, 2.9, 2.4, 3.0, 3.5, 4.0])],
                   mlp_facts())
    assert diverged and diverged[0].step == 10 and diverged[0].evidence["start_loss"] == 0.7


def test_a_loss_spike_late_in_a_run_is_advisory_and_divergence_only_if_it_stays():
    base = [0.69, 0.6, 0.45, 0.3, 0.2] + [0.1 * 0.95 ** i for i in range(10)]
    back = run(LossDivergence(), [snap(10 * i, v) for i, v in enumerate(base + [8.0, 0.2, 0.06, 0.06])], mlp_facts())
    assert [(a.kind, a.severity, a.step) for a in back] == [("loss_spike", "info", 150)]
    stays = run(LossDivergence(), [snap(10 * i, v) for i, v in enumerate(base + [8.0, 7.0, 7.5, 8.0])], mlp_facts())
    assert [a.kind for a in stays] == ["loss_spike", "loss_divergence"]


def test_vanishing_message_says_exactly_zero_not_a_ratio_of_0():
    alerts = run(VanishingGradient(), [layered(10 * i, 2.30, 0.0, 0.15) for i in range(10)], mlp_facts())
    assert "norm exactly 0" in alerts[0].message and " is 0 of" not in alerts[0].message


def test_units_silent_for_half_a_window_are_a_provisional_warning_confirmed_by_the_window():
    facts = mlp_facts()
    seq = [snap(10 * i, 0.7, silent_units={"1": 0.0 if i < 5 else 0.7}) for i in range(12)]
    seq.append(snap(120, 0.7, silent_units={"1": 0.7}, dead_units={"1": 0.7}))
    alerts = run(DeadUnits(), seq, facts)
    assert [(a.layer, a.severity, a.step) for a in alerts] == [("1", "warning", 50)]  # the window adds nothing
    assert alerts[0].evidence["provisional"] and "provisional" in alerts[0].message


def test_a_window_that_saw_units_fire_before_they_died_does_not_close_the_episode():
    facts, detector = mlp_facts(), DeadUnits()
    seq = [snap(10 * i, 0.7, silent_units={"1": 0.7}, dead_units={"1": 0.05}) for i in range(6)]
    assert len(run(detector, seq, facts)) == 1 and "1" in detector.episodes.open


def test_dead_unit_advice_lowers_the_learning_rate_only_for_large_updates():
    facts = mlp_facts(lr=0.05)
    calm = run(DeadUnits(), [snap(0, 0.7, update_ratio={"0": 1e-3}, silent_units={"1": 0.8})], facts)
    assert not any("learning rate" in s for s in calm[0].suggestions)
    wild = run(DeadUnits(), [snap(0, 0.7, update_ratio={"0": 0.2}, silent_units={"1": 0.8})], facts)
    assert any(s.startswith("Lower the learning rate from 0.05 to 0.01") for s in wild[0].suggestions)


def test_a_summed_surrogate_loss_whose_scale_follows_the_episode_is_no_explosion():
    # REINFORCE summed over each episode: the loss takes both signs, and the norm rises ~20x when the
    # episodes reach their length limit, then stays there
    norms = [6.5, 8.0, 7.0, 9.0, 12.0, 150.0, 160.0, 140.0, 170.0, 150.0, 160.0, 155.0]
    losses = [-0.03, 1.7, -3.7, 2.0, -4.0, 16.0, -45.0, 21.0, -8.0, 30.0, -52.0, 15.0]
    alerts = run(ExplodingGradient(), grad_sequence(norms, losses), mlp_facts())
    assert [a.kind for a in alerts] == ["gradient_spike"]
    assert run(LossDivergence(), [snap(10 * i, v) for i, v in enumerate(losses)], mlp_facts()) == []
    # the same loss with a norm that keeps growing past its spike is an explosion
    growing = norms[:5] + [150.0 * 3 ** i for i in range(7)]
    assert "exploding_gradient" in [a.kind for a in run(ExplodingGradient(), grad_sequence(growing, losses), mlp_facts())]


def test_no_divergence_verdict_from_a_starting_level_of_one_step():
    # the trip-wire's checks at steps 1 and 2 while the loss of a summed objective moves with its data
    steps, losses = [0, 1, 2, 10, 20], [0.58, 9.0, 18.2, 0.9, 0.7]
    assert run(LossDivergence(), [snap(s, v) for s, v in zip(steps, losses)], mlp_facts()) == []


def test_a_loss_another_optimizer_plays_against_may_settle_higher():
    gan = nn.ModuleDict({"g": nn.Linear(4, 4), "d": nn.Linear(4, 1)})
    facts = ModelFacts.from_model(gan, torch.optim.Adam(gan["g"].parameters()))
    assert facts.trained_elsewhere == ["d"]
    losses = [0.58, 0.6, 0.7, 0.8, 0.9, 1.0, 1.1, 1.2, 1.25, 1.3]  # a generator's loss while its discriminator learns
    seq = [snap(10 * i, v) for i, v in enumerate(losses)]
    assert run(LossDivergence(), seq, facts) == []
    assert run(LossDivergence(), seq, mlp_facts())  # the same climb of a model's own loss is divergence


def test_zero_gradients_are_no_growth_and_growth_from_zero_says_so():
    alerts = run(ExplodingGradient(), grad_sequence([0.0] * 6, [1.0] * 6), mlp_facts())
    assert alerts == []
    alerts = run(ExplodingGradient(), grad_sequence([0.0, 0.0, 0.0, 1850.0], [1e-9, 1e-9, 1e-9, 366.0]), mlp_facts())
    assert "infx" not in alerts[0].message and "exactly 0" in alerts[0].message


def test_a_learning_rate_warmup_is_no_plateau():
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: min(1.0, (k + 1) / 300))
    facts, detector, alerts = ModelFacts.from_model(model, opt), LossPlateau(), []
    for i in range(40):
        alerts += detector.check(snap(10 * i, 2.30), facts)
        for _ in range(10):
            opt.step()
            scheduler.step()
    assert [a.step for a in alerts] == [300]  # once the warmup has ended (step 300), not during it


def test_one_check_far_above_the_start_is_a_spike_until_it_stays():
    # REINFORCE summed over episodes that grow: the loss has not yet taken both signs at step 12
    steps, losses = [0, 10, 11, 12, 20, 30], [0.58, 1.0, 1.1, 25.6, 4.0, -12.0]
    alerts = run(LossDivergence(), [snap(s, v) for s, v in zip(steps, losses)], mlp_facts())
    assert [(a.kind, a.step) for a in alerts] == [("loss_spike", 12)]
    # Adam with lr 1.0: the loss jumps and stays up: divergence once it has stayed for 3 checks
    steps, losses = [0, 1, 2, 10, 20, 30, 40], [0.72, 25.0, 50.0, 8.0, 8.3, 7.9, 8.1]
    alerts = run(LossDivergence(), [snap(s, v) for s, v in zip(steps, losses)], mlp_facts())
    assert [a.kind for a in alerts] == ["loss_spike", "loss_divergence"] and alerts[1].step <= 30


def test_the_starting_level_includes_the_first_scheduled_check():
    # the check at step 0 is one step; the one at step 10 averages steps 1-10: both make the start
    detector = LossDivergence()
    run(detector, [snap(0, 1.1), snap(10, 0.18), snap(20, 0.02)], mlp_facts())
    assert detector.first("loss") == [1.1, 0.18]
