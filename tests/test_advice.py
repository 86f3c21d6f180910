"""Advice: specific to the model and optimizer, never suggesting what the model already has."""

from __future__ import annotations

import torch
from torch import nn

from torchhealth.advice import suggest
from torchhealth.facts import ModelFacts


def facts_for(model: nn.Module, optimizer=None) -> ModelFacts:
    return ModelFacts.from_model(model, optimizer)


def plain(depth: int = 8, activation=nn.Sigmoid) -> nn.Sequential:
    layers = []
    for _ in range(depth - 1):
        layers += [nn.Linear(16, 16), activation()]
    return nn.Sequential(*layers, nn.Linear(16, 2))


def test_lr_value_comes_from_the_optimizer():
    model = plain(3, nn.ReLU)
    for lr, lowered in ((0.3, "0.03"), (2e-3, "0.0002")):
        out = suggest("exploding_gradient", facts_for(model, torch.optim.SGD(model.parameters(), lr=lr)))
        assert out[0].startswith(f"Lower the learning rate from {lr:g} to {lowered}:")


def test_clip_norm_comes_from_healthy_norms():
    model = plain(3, nn.ReLU)
    out = suggest("exploding_gradient", facts_for(model), {"healthy_norm": 3.2})
    assert any("max_norm=6.4" in s and "about 3.2" in s for s in out)


def test_normalization_only_when_model_has_none():
    bare = plain(8)
    normed = nn.Sequential(nn.Linear(16, 16), nn.LayerNorm(16), nn.Tanh(), nn.Linear(16, 2))
    assert any("Add BatchNorm" in s for s in suggest("vanishing_gradient", facts_for(bare)))
    for kind in ("vanishing_gradient", "exploding_gradient", "dead_units", "saturated_activation", "loss_divergence"):
        assert not any("Norm" in s and s.startswith("Add") for s in suggest(kind, facts_for(normed), {"layers": ["2"]}))


def test_relu_for_deep_saturating_stacks_only():
    assert any(s.startswith("Use ReLU") for s in suggest("vanishing_gradient", facts_for(plain(8, nn.Sigmoid))))
    assert not any(s.startswith("Use ReLU") for s in suggest("vanishing_gradient", facts_for(plain(8, nn.ReLU))))


def test_residual_only_for_deep_plain_stacks():
    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(16, 16), nn.Linear(16, 16)

        def forward(self, x):
            return x + self.b(torch.relu(self.a(x)))

    assert any("residual" in s for s in suggest("vanishing_gradient", facts_for(plain(8))))
    assert not any("residual" in s for s in suggest("vanishing_gradient", facts_for(plain(3))))
    assert not any("residual" in s for s in suggest("vanishing_gradient", facts_for(nn.Sequential(*[Block() for _ in range(4)]))))


def test_kaiming_only_when_init_scale_is_off():
    tiny = plain(4, nn.ReLU)
    for m in tiny:
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=1e-4)
    assert any("kaiming_normal_" in s for s in suggest("vanishing_gradient", facts_for(tiny)))
    assert not any("Re-initialise" in s for s in suggest("vanishing_gradient", facts_for(plain(4, nn.ReLU))))


def test_dead_units_name_the_layers():
    out = suggest("dead_units", facts_for(plain(3, nn.ReLU)), {"layers": ["1", "3"]})
    assert out[0].startswith("Replace ReLU with LeakyReLU(0.01) or ELU in `1`, `3`")


def test_overfitting_regularisation_respects_what_exists():
    model = plain(3, nn.ReLU)
    out = suggest("overfitting", facts_for(model, torch.optim.SGD(model.parameters(), lr=0.1)))
    assert "Add nn.Dropout(p=0.3)" in out[0] and any("weight_decay=1e-4" in s for s in out)
    with_dropout = nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Dropout(0.2), nn.Linear(16, 2))
    out = suggest("overfitting", facts_for(with_dropout, torch.optim.AdamW(with_dropout.parameters(), weight_decay=0.01)))
    assert not any(s.startswith("Add nn.Dropout") or s.startswith("Add weight decay") for s in out)
    assert out[0].startswith("Raise the dropout rate of `2`") and any("from 0.01 to 0.1" in s for s in out)
    adam = suggest("overfitting", facts_for(model, torch.optim.Adam(model.parameters())))
    assert any("AdamW" in s for s in adam)


def test_every_suggestion_gives_a_reason():
    facts = facts_for(plain(8), None)
    for kind in ("exploding_gradient", "vanishing_gradient", "dead_units", "nonfinite", "saturated_activation",
                 "loss_divergence", "loss_plateau", "overfitting"):
        for s in suggest(kind, facts, {"layers": ["1"], "root": "loss"}):
            assert ":" in s, s
