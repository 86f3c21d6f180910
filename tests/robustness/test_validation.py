"""Bad configuration fails at construction, with a message naming the option and what is allowed."""

from __future__ import annotations

import os

import pytest
import torch
from torch import nn

from torchhealth import Monitor, MonitorOptions
from torchhealth.options import MAX_INTERVAL


@pytest.fixture
def model():
    return nn.Linear(3, 1)


@pytest.mark.parametrize("bad", [object(), None, "resnet", torch.zeros(3), [nn.Linear(1, 1)]])
def test_model_must_be_a_module(bad):
    with pytest.raises(TypeError, match=r"model must be a torch\.nn\.Module, got"):
        Monitor(bad)


def test_optimizer_type(model):
    with pytest.raises(TypeError, match=r"optimizer must be a torch\.optim\.Optimizer or None, got list"):
        Monitor(model, optimizer=[1])


@pytest.mark.parametrize("name, close", [("check_evry", "check_every"), ("on_alerts", "on_alert"),
                                         ("stric", "strict"), ("log_evry", "log_every")])
def test_unknown_option_suggests_close_match(model, name, close):
    with pytest.raises(TypeError) as info:
        Monitor(model, **{name: 1})
    message = str(info.value)
    assert repr(name) in message and f"Did you mean {close!r}?" in message
    assert all(field in message for field in ("check_every", "window_samples", "on_alert"))


def test_unknown_option_without_close_match_lists_all(model):
    with pytest.raises(TypeError, match=r"unknown torchhealth option 'xyz'\. Valid options: check_every"):
        Monitor(model, xyz=1)


@pytest.mark.parametrize("name", ["check_every", "log_every", "sample_every", "window_samples"])
@pytest.mark.parametrize("value", [0, -5, 2.5, "10", True, None])
def test_intervals_must_be_positive_integers(model, name, value):
    with pytest.raises(ValueError, match=rf"option '{name}' must be a positive integer, got {value!r}"):
        Monitor(model, **{name: value})


@pytest.mark.parametrize("name", ["check_every", "log_every", "sample_every"])
def test_intervals_have_an_upper_bound(model, name):
    too_big = MAX_INTERVAL + 1
    options = {name: too_big, "log_every": too_big} if name == "check_every" else {name: too_big}
    with pytest.raises(ValueError, match=rf"option '{name}' must be between 1 and {MAX_INTERVAL} steps, got {too_big}"):
        Monitor(model, **options)
    MonitorOptions(**{**options, name: MAX_INTERVAL, **({"log_every": MAX_INTERVAL} if name == "check_every" else {})})


def test_log_every_must_be_a_multiple_of_check_every(model):
    with pytest.raises(ValueError, match=r"'log_every' \(15\) must be a multiple of 'check_every' \(10\)"):
        Monitor(model, check_every=10, log_every=15)


@pytest.mark.parametrize("name", ["strict", "functional_activations", "per_parameter"])
def test_flags_must_be_booleans(model, name):
    with pytest.raises(ValueError, match=rf"option '{name}' must be True or False, got 1"):
        Monitor(model, **{name: 1})


@pytest.mark.parametrize("bad, hint", [("warning", "Did you mean 'warn'?"), ("raises", "Did you mean 'raise'?"),
                                       ("email", ""), (42, ""), (["log", "pager"], ""), ([], "must not be an empty list")])
def test_on_alert_must_be_a_policy_or_callable(model, bad, hint):
    with pytest.raises(ValueError, match="option 'on_alert'") as info:
        Monitor(model, on_alert=bad)
    assert hint in str(info.value)
    if bad != []:
        assert "('log', 'warn', 'raise')" in str(info.value) and "callable" in str(info.value)


def test_on_alert_accepts_policies_callables_and_lists(model):
    for on_alert in ("log", "warn", "raise", print, ["log", print], ("warn",)):
        Monitor(model, on_alert=on_alert).close()


def test_webhook_url_must_be_http(model):
    with pytest.raises(ValueError, match=r"option 'webhook_url' must be an http:// or https:// URL, got 'ftp://x'"):
        Monitor(model, webhook_url="ftp://x")


def test_log_dir_that_is_a_file_names_the_path(model, tmp_path):
    path = tmp_path / "taken"
    path.write_text("not a directory")
    with pytest.raises(ValueError, match=rf"log_dir {str(path)!r} cannot be written .*log_dir=None"):
        Monitor(model, log_dir=path)


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root writes read-only directories")
def test_read_only_log_dir_names_the_path(model, tmp_path):
    path = tmp_path / "ro"
    path.mkdir()
    path.chmod(0o500)
    try:
        with pytest.raises(ValueError, match=rf"log_dir {str(path / 'run')!r} cannot be written"):
            Monitor(model, log_dir=path / "run")
    finally:
        path.chmod(0o700)


def test_log_dir_below_a_file_names_the_path(model, tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(ValueError, match=rf"log_dir {str(tmp_path / 'file' / 'run')!r} cannot be written"):
        Monitor(model, log_dir=tmp_path / "file" / "run")


def test_log_dir_of_wrong_type(model):
    with pytest.raises(TypeError, match=r"log_dir must be a path \(str or os\.PathLike\) or None, got int"):
        Monitor(model, log_dir=3)


def test_validation_leaves_nothing_behind(model, tmp_path):
    """A rejected configuration must not have hooked the model already."""
    with pytest.raises(ValueError):
        Monitor(model, log_dir=tmp_path, check_every=0)
    assert not model._forward_hooks and not model._forward_pre_hooks
    assert os.listdir(tmp_path) == []
