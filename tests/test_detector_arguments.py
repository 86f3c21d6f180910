"""Detector thresholds as constructor arguments, the shared loss history, alerts built by one path, and the
evidence keys contract between the detectors and advice.py."""

from __future__ import annotations

import inspect
import math
import random
import re
from pathlib import Path

import pytest
from torch import nn

import torchhealth
from torchhealth import advice
from torchhealth.detectors import (DETECTORS, DeadUnits, ExplodingGradient, LossDivergence, LossPlateau, NonFinite,
                                   Overfitting, SaturatedActivation, StaticChecks, VanishingGradient)
from torchhealth.detectors import (dead_units, exploding_gradient, loss_divergence, loss_plateau, overfitting,
                                   saturated_activation, static_checks, vanishing_gradient)
from torchhealth.detectors.base import LOSS
from torchhealth.facts import ModelFacts
from torchhealth.records import TOTAL, Snapshot

from tests.helpers import mlp_facts
from tests.test_detectors import grad_sequence, layered, run, saturation_facts, snap

ROOT = Path(__file__).resolve().parents[1]


def arguments(cls) -> dict[str, object]:
    return {name: p.default for name, p in inspect.signature(cls).parameters.items()}


# -- 1. thresholds: defaults, decisions, validation ------------------------------------------------------
def test_every_shipped_detector_takes_its_thresholds_as_keyword_arguments_defaulting_to_the_module_constants():
    modules = {ExplodingGradient: exploding_gradient, DeadUnits: dead_units, VanishingGradient: vanishing_gradient,
               SaturatedActivation: saturated_activation, LossDivergence: loss_divergence, LossPlateau: loss_plateau,
               Overfitting: overfitting, StaticChecks: static_checks}
    for cls in DETECTORS:
        params = inspect.signature(cls).parameters
        assert all(p.kind is p.KEYWORD_ONLY for p in params.values()), cls
        if cls is not StaticChecks:  # static findings have no episodes to recover from
            assert params["recover_after"].default == cls.recover_after
        assert set(params) - {"recover_after"} == set(cls.thresholds)
        detector = cls()
        for name in cls.thresholds:
            constant = "SPIKE_CHECKS" if name == "spike_checks" else name.upper()
            assert getattr(detector, name) == getattr(modules[cls], constant) == params[name].default, (cls, name)
        assert detector.episodes.recover_after == cls.recover_after


def test_default_detectors_are_at_their_defaults():
    for detector in torchhealth.default_detectors():
        for name, default in arguments(type(detector)).items():
            assert getattr(detector, name) == default


def test_default_detectors_decide_as_detectors_built_with_explicit_defaults():
    # a random walk of every statistic the detectors read: the same alerts, at the same steps, either way
    facts = mlp_facts()
    rng = random.Random(0)
    snapshots, loss, norm = [], 2.0, 1.0
    for i in range(120):
        loss *= math.exp(rng.gauss(0.02 if 40 < i < 70 else -0.01, 0.2))
        norm *= math.exp(rng.gauss(0.15 if 60 < i < 80 else 0.0, 0.5))
        lower = 1e-7 if 85 < i < 100 else 0.01
        snapshots.append(Snapshot(10 * i, loss=loss, val_loss=loss * (1 + 0.02 * max(0, i - 50)), stats={
            "grad_norm": {TOTAL: norm, "0": lower, "2": norm / 3, "4": norm / 3, "6": norm / 2},
            "dead_units": {"1": rng.random()}, "zero_fraction": {"1": rng.random(), "3": float(i > 100)},
            "saturation": {"1": rng.random()}}))
    explicit = [cls(**arguments(cls)) for cls in DETECTORS]
    for default, given in zip(torchhealth.default_detectors(), explicit):
        got = [(a.kind, a.step, a.severity, a.layer) for s in snapshots for a in default.check(s, facts)]
        assert got == [(a.kind, a.step, a.severity, a.layer) for s in snapshots for a in given.check(s, facts)]


def test_nonfinite_recover_after_decides_when_a_new_episode_starts():
    seq = [Snapshot(20, nonfinite={"loss": 13}), Snapshot(30), Snapshot(40, nonfinite={"loss": 33})]
    assert len(run(NonFinite(), seq, mlp_facts())) == 1  # one finite check does not close the episode
    relapse = run(NonFinite(recover_after=1), seq, mlp_facts())
    assert [a.step for a in relapse] == [13, 33] and relapse[1].evidence["relapse"] == 1


def test_exploding_critical_growth_decides_a_sudden_jump():
    seq = grad_sequence([1.0, 1.1, 0.9, 5e4], [2, 1.9, 1.8, 1.7])
    assert len(run(ExplodingGradient(), seq, mlp_facts())) == 1
    assert run(ExplodingGradient(critical_growth=1e5), seq, mlp_facts()) == []


def test_exploding_growth_decides_how_early_growth_is_flagged():
    norms, losses = [2.0 ** i for i in range(16)], [2.0 + 0.5 * i for i in range(16)]
    default = run(ExplodingGradient(), grad_sequence(norms, losses), mlp_facts())
    later = run(ExplodingGradient(growth=20), grad_sequence(norms, losses), mlp_facts())
    assert [(a.step, a.severity) for a in default] == [(60, "warning"), (130, "critical")]
    assert [(a.step, a.severity) for a in later] == [(80, "warning"), (140, "critical")]


def test_vanishing_ratio_decides_what_has_vanished():
    stalled = [layered(10 * i, 2.30, 1e-7, 0.1) for i in range(10)]
    assert len(run(VanishingGradient(), stalled, mlp_facts())) == 1
    assert run(VanishingGradient(ratio=1e-8, critical_ratio=1e-9), stalled, mlp_facts()) == []
    assert run(VanishingGradient(persist=20), stalled, mlp_facts()) == []


def test_dead_units_dead_share_decides_the_warning():
    seq = [snap(0, dead_units={"1": 0.6}), snap(10, dead_units={"1": 0.7}), snap(20, dead_units={"1": 0.95})]
    assert [a.severity for a in run(DeadUnits(), seq, mlp_facts())] == ["warning", "critical"]
    assert [a.severity for a in run(DeadUnits(dead_share=0.8), seq, mlp_facts())] == ["critical"]
    assert [a.severity for a in run(DeadUnits(critical_share=1.0), seq, mlp_facts())] == ["warning"]


def test_saturated_share_decides_what_is_saturated():
    seq = [snap(10 * i, 5.0 * 0.9 ** i, saturation={"1": 0.44, "3": 0.02}) for i in range(20)]
    assert len(run(SaturatedActivation(), seq, saturation_facts())) == 1
    assert run(SaturatedActivation(saturated_share=0.5), seq, saturation_facts()) == []


def test_divergence_rise_decides_the_warning():
    rising = [snap(10 * i, 2.3 * 1.5 ** i) for i in range(8)]
    assert [a.severity for a in run(LossDivergence(), rising, mlp_facts())] == ["warning", "critical"]
    # 2x the start rising is no longer divergence: 10x at one check is first an advisory spike
    assert [a.severity for a in run(LossDivergence(rise=10), rising, mlp_facts())] == ["info", "critical"]


def test_plateau_window_decides_when_a_verdict_is_possible():
    flat = [snap(10 * i, 2.30 + 0.001 * (i % 2)) for i in range(20)]
    assert run(LossPlateau(), flat, mlp_facts())
    assert run(LossPlateau(window=25), flat, mlp_facts()) == []


def test_overfitting_rise_decides_what_is_a_rise():
    train = [2.0 * 0.8 ** i for i in range(12)]
    val = [2.0, 1.6, 1.3, 1.1, 1.0, 1.05, 1.12, 1.2, 1.3, 1.4, 1.5, 1.6]
    seq = [Snapshot(10 * i, loss=t, val_loss=v) for i, (t, v) in enumerate(zip(train, val))]
    assert [a.step for a in run(Overfitting(), seq, mlp_facts())] == [80]
    assert run(Overfitting(rise=0.7), seq, mlp_facts()) == []
    assert [a.step for a in run(Overfitting(persist=5), seq, mlp_facts())] == [100]


def test_static_suspicious_dropout_decides_what_is_flagged():
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Dropout(0.5), nn.Linear(8, 3))
    assert StaticChecks().static_check(model, ModelFacts.from_model(model)) == []
    alerts = StaticChecks(suspicious_dropout=0.5).static_check(model, ModelFacts.from_model(model))
    assert [(a.kind, a.layer) for a in alerts] == [("suspicious_dropout", "2")]


@pytest.mark.parametrize("cls", DETECTORS, ids=lambda c: c.__name__)
def test_a_bad_threshold_fails_at_construction_naming_the_argument_the_value_and_the_fix(cls):
    for name, default in arguments(cls).items():
        for bad in ("10", None, True, -1, 0, math.nan, math.inf):
            with pytest.raises(ValueError) as info:
                cls(**{name: bad})
            message = str(info.value)
            assert cls.__name__ in message and repr(name) in message and repr(bad) in message
            assert f"{name}={default!r}" in message  # the fix: the default
        if isinstance(default, int):
            with pytest.raises(ValueError, match="whole number"):
                cls(**{name: 2.5})


def test_numpy_scalars_are_valid_thresholds():
    np = pytest.importorskip("numpy")
    detector = DeadUnits(silent_checks=np.int64(4), dead_share=np.float64(0.6))
    assert detector.silent_checks == 4 and detector.dead_share == 0.6


@pytest.mark.parametrize("cls, kwargs, low", [
    (ExplodingGradient, {"growth": 2000.0}, "growth"),
    (ExplodingGradient, {"recovered_growth": 20.0}, "recovered_growth"),
    (DeadUnits, {"dead_share": 0.95}, "dead_share"),
    (DeadUnits, {"recovered_share": 0.6}, "recovered_share"),
    (SaturatedActivation, {"critical_share": 0.3}, "saturated_share"),
    (VanishingGradient, {"critical_ratio": 1e-2}, "critical_ratio"),
    (LossDivergence, {"rise": 20.0}, "rise"),
    (LossDivergence, {"sudden_rise": 5.0}, "critical_rise"),
    (DeadUnits, {"dead_share": 1.5}, "dead_share"),
    (VanishingGradient, {"ratio": 1.0}, "ratio"),
])
def test_a_warning_level_past_its_critical_level_fails_at_construction(cls, kwargs, low):
    with pytest.raises(ValueError, match=repr(low)):
        cls(**kwargs)


def test_every_detector_argument_is_in_the_docs_table_with_its_default():
    text = (ROOT / "docs" / "detectors.md").read_text()
    rows = set(re.findall(r"^\| `(\w+)` \| `(\w+)` \| `([^`]+)` \|", text, re.M))
    expected = {(cls.__name__, name, repr(default)) for cls in DETECTORS for name, default in arguments(cls).items()}
    assert expected <= rows, sorted(expected - rows)


# -- 2. one loss history --------------------------------------------------------------------------------
LOSS_READERS = (ExplodingGradient, VanishingGradient, LossDivergence, LossPlateau)


def test_every_detector_that_reads_the_loss_remembers_it_the_same_way():
    # the same series and start values in each (the exploding detector's only on checks with a finite norm)
    seq = [snap(5 + 10 * i, 2.0 / (1 + i), grad_norm={TOTAL: 1.0, "0": 0.5, "2": 0.5, "4": 0.5, "6": 0.5})
           for i in range(30)]
    detectors = [cls() for cls in LOSS_READERS]
    for detector in detectors:
        run(detector, seq, mlp_facts())
    states = [(d.series[LOSS], d.first(LOSS), d.first_checks(LOSS)) for d in detectors]
    assert all(state == states[0] for state in states)
    assert states[0][1] == [2.0, 1.0] and states[0][2] == [2.0, 1.0, 2 / 3]  # steps 5, 15 / the first 3 checks


def test_a_loss_reader_resumes_from_its_own_state_dict():
    seq = [snap(10 * i, 2.3 * 1.5 ** i) for i in range(8)]
    whole = run(LossDivergence(), seq, mlp_facts())
    first = LossDivergence()
    run(first, seq[:3], mlp_facts())
    resumed = LossDivergence()
    resumed.load_state_dict(first.state_dict())
    assert [(a.step, a.severity) for a in run(resumed, seq[3:], mlp_facts())] == [(a.step, a.severity) for a in whole]


# -- 3. alerts built by one path, and the evidence contract -----------------------------------------------
def test_static_findings_get_their_fixes_from_the_advice_catalogue():
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Dropout(1.0), nn.Linear(8, 3), nn.Softmax(dim=1))
    alerts = {a.kind: a for a in StaticChecks().static_check(model, ModelFacts.from_model(model))}
    assert alerts["suspicious_dropout"].suggestions == ["Set p to 0.1-0.5 in `2` (p is the share DROPPED, not kept)."]
    assert alerts["final_activation"].suggestions == ["Remove `4` from the model and apply it only at inference."]
    assert {"suspicious_dropout", "final_activation"} <= set(advice.CATALOGUE)


def test_nonfinite_alerts_through_make_alert_at_the_root_step():
    made = []

    class Recording(NonFinite):
        def make_alert(self, facts, **alert):
            made.append(alert["step"])
            return super().make_alert(facts, **alert)

    alerts = run(Recording(), [Snapshot(20, nonfinite={"activation:1": 13, "loss": 14})], mlp_facts())
    assert made == [13] and alerts[0].step == 13 and alerts[0].kind == "nonfinite"


def test_every_evidence_key_advice_reads_is_documented():
    source = inspect.getsource(advice)
    read = set(re.findall(r"""evidence(?:\.get\(|\[)["'](\w+)["']""", source))
    assert {"layers", "healthy_norm", "root", "preceding_bias_mean"} <= read
    documented = set(re.findall(r"^- ``(\w+)``:", advice.__doc__, re.M))
    assert read <= documented, sorted(read - documented)
