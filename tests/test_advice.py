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


# -- the whole optimizer, the layer a fix names, numbers that carry meaning -----------------------------
def test_heavy_weight_decay_is_named_as_the_cause_of_vanishing_gradients():
    model = plain(6, nn.ReLU)
    heavy = suggest("vanishing_gradient", facts_for(model, torch.optim.SGD(model.parameters(), lr=0.05, weight_decay=0.3)))
    assert heavy[0].startswith("Lower weight decay from 0.3 to") and "1.5% per step" in heavy[0]
    usual = suggest("vanishing_gradient", facts_for(model, torch.optim.SGD(model.parameters(), lr=0.1, weight_decay=5e-4)))
    assert not any("weight decay" in s for s in usual)


def test_a_fix_names_the_parameter_group_of_the_alerts_layer():
    model = plain(3, nn.ReLU)
    opt = torch.optim.SGD([{"params": model[0].parameters(), "lr": 0.01},
                           {"params": list(model[2].parameters()) + list(model[4].parameters()), "lr": 0.5}])
    out = suggest("exploding_gradient", facts_for(model, opt), {"layers": ["4"]})
    assert out[0].startswith("Lower the learning rate of parameter group 1 from 0.5 to 0.05")
    facts = facts_for(model, opt)  # a ReLU: its feeding Linear's group
    for name in ("0", "1", "2", "3", "4"):
        facts.note_forward(name)
    assert suggest("exploding_gradient", facts, {"layers": ["1"]})[0].startswith("Lower the learning rate of parameter group 0")


def test_a_scheduler_decay_is_not_a_learning_rate_to_raise_and_lowering_targets_its_base():
    model = plain(3, nn.ReLU)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.01)
    opt.step()
    scheduler.step()  # lr 0.001, base 0.1
    assert not any("learning rate" in s for s in suggest("loss_plateau", facts_for(model, opt), {"update_ratio": 1e-7}))
    out = suggest("exploding_gradient", facts_for(model, opt))
    assert out[0].startswith("Lower the scheduler's base learning rate from 0.1 to 0.01 (now 0.001)")


def test_momentum_and_adam_settings_are_read():
    model = plain(3, nn.ReLU)
    high = suggest("exploding_gradient", facts_for(model, torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.99)))
    assert any(s.startswith("Lower momentum from 0.99 to 0.9") and "100x" in s for s in high)
    assert not any("momentum" in s for s in suggest("exploding_gradient", facts_for(
        model, torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9))))
    eps = suggest("vanishing_gradient", facts_for(model, torch.optim.Adam(model.parameters(), eps=0.1)))
    assert any(s.startswith("Lower Adam's eps from 0.1 to 1e-8") for s in eps)
    spike = suggest("gradient_spike", facts_for(model, torch.optim.AdamW(model.parameters())), {"spike_step": 40})
    assert "steps up to 40" in spike[0] and any(s.startswith("Lower AdamW's beta2 from 0.999 to 0.95") for s in spike)


def test_normalization_fits_the_weight_layer_a_site_follows():
    class ConvThenLinear(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 4, 3)
            self.fc = nn.Linear(36, 8)
            self.out = nn.Linear(8, 2)

        def forward(self, x):
            return self.out(torch.relu(self.fc(torch.relu(self.conv(x)).flatten(1))))

    facts = facts_for(ConvThenLinear())
    for name in ("conv", "model:relu#1", "fc", "model:relu#2", "out"):
        facts.note_forward(name)
    fc_site = suggest("dead_units", facts, {"layers": ["model:relu#2"]})
    assert any(s.startswith("Add BatchNorm1d/LayerNorm after `fc`:") for s in fc_site), fc_site
    conv_site = suggest("dead_units", facts, {"layers": ["model:relu#1"]})
    assert any(s.startswith("Add BatchNorm2d after `conv`:") for s in conv_site), conv_site


def test_numbers_read_as_meaning_not_as_zero():
    model = plain(3, nn.ReLU)
    facts = facts_for(model, torch.optim.SGD(model.parameters(), lr=0.05))
    assert not any("Raise the learning rate" in s for s in suggest("loss_plateau", facts, {"update_ratio": 0.0}))
    assert any("only 8.9e-07 of the weights" in s for s in suggest("loss_plateau", facts, {"update_ratio": 8.9e-7}))
    assert not any("biases" in s for s in suggest("dead_units", facts, {"layers": ["1"], "preceding_bias_mean": -0.011}))
    assert any("mean bias is -3," in s for s in suggest("dead_units", facts, {"layers": ["1"], "preceding_bias_mean": -3.0}))
