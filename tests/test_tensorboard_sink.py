"""What lands in TensorBoard and alerts.jsonl, read back with TensorBoard's own reader."""

from __future__ import annotations

import glob
import json
import os

import pytest
from hypothesis import given, settings, strategies as st
import torch
import torch.nn.functional as F
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.custom_scalar import layout_pb2, metadata as custom_scalar_metadata
from torch import nn

import torchhealth
from torchhealth import Alert
from torchhealth.detectors import Detector


def load(log_dir):
    acc = EventAccumulator(log_dir, size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    return acc


def small_net():
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.Sigmoid(), nn.Linear(8, 3))


def train(monitor, model, steps):
    for _ in range(steps):
        loss = F.cross_entropy(model(torch.randn(16, 4)), torch.randint(0, 3, (16,)))
        loss.backward()
        monitor.step(loss)
        model.zero_grad()


class EveryCheck(Detector):
    """A test detector: one alert per check, severity chosen by the test."""

    kind = "test_kind"

    def __init__(self, severity="warning"):
        self.severity = severity

    def check(self, snapshot, facts):
        return [Alert(self.kind, "0", snapshot.step, self.severity, 1.5, "test alert", ["do this", "or that"])]


def test_health_tags_and_values(tmp_path):
    model = small_net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with torchhealth.Monitor(model, opt, log_dir=tmp_path, check_every=5, log_every=5, sample_every=1,
                             window_samples=16, strict=True) as monitor:
        for _ in range(11):
            loss = F.cross_entropy(model(torch.randn(16, 4)), torch.randint(0, 3, (16,)))
            loss.backward()
            monitor.step(loss)
            opt.step()
            opt.zero_grad()
        last = monitor.last_snapshot
    tags = set(load(str(tmp_path)).Tags()["scalars"])
    for family, layers in (("grad_norm", ["0", "2", "4", "total"]), ("weight_norm", ["0", "2", "4"]),
                           ("update_ratio", ["0", "2", "4"]), ("zero_fraction", ["1"]),
                           ("dead_units", ["1"]), ("saturation", ["3"])):
        for layer in layers:
            assert f"health/{family}/{layer}" in tags
    assert "health/loss" in tags
    acc = load(str(tmp_path))
    events = acc.Scalars("health/grad_norm/total")
    assert [e.step for e in events] == [0, 5, 10]
    assert events[-1].value == pytest.approx(last.stats["grad_norm"]["total"], rel=1e-6)
    assert acc.Scalars("health/loss")[-1].value == pytest.approx(last.loss, rel=1e-6)
    assert len(glob.glob(os.path.join(tmp_path, "*", "events*"))) == 0, "add_scalars makes sub-runs"


def test_custom_scalars_dashboard_is_written_once(tmp_path):
    model = small_net()
    with torchhealth.Monitor(model, log_dir=tmp_path, check_every=1, log_every=1) as monitor:
        train(monitor, model, 3)
    acc = load(str(tmp_path))
    layouts = acc.Tensors(custom_scalar_metadata.CONFIG_SUMMARY_TAG)
    assert len(layouts) == 1
    layout = layout_pb2.Layout()
    layout.ParseFromString(layouts[0].tensor_proto.string_val[0])
    regexes = {r for cat in layout.category for chart in cat.chart for r in chart.multiline.tag}
    assert r"health/grad_norm/.*" in regexes and r"health/dead_units/.*" in regexes


def test_event_file_grows_with_logged_steps_not_steps(tmp_path):
    sizes = {}
    for log_every in (10, 50):
        model = small_net()
        path = tmp_path / str(log_every)
        with torchhealth.Monitor(model, log_dir=path, check_every=10, log_every=log_every) as monitor:
            train(monitor, model, 100)
        sizes[log_every] = sum(os.path.getsize(f) for f in glob.glob(str(path / "events*")))
        # every log_every-th step, plus close()'s final check at step 99 (after zero_grad: no gradients)
        events = load(str(path))
        assert [e.step for e in events.Scalars("health/grad_norm/total")] == [*range(0, 100, log_every)]
        assert [e.step for e in events.Scalars("health/loss")] == [*range(0, 100, log_every), 99]
    assert sizes[50] < sizes[10] / 2


def test_alerts_go_to_tensorboard_text_and_jsonl(tmp_path):
    model = small_net()
    monitor = torchhealth.Monitor(model, log_dir=tmp_path, check_every=2, log_every=2, on_alert=[lambda a: None])
    monitor.detectors.append(EveryCheck())
    train(monitor, model, 3)
    monitor.close()
    lines = [json.loads(line) for line in open(tmp_path / "alerts.jsonl")]
    assert [(a["kind"], a["step"], a["layer"]) for a in lines] == [("test_kind", 0, "0"), ("test_kind", 2, "0")]
    assert lines[0]["suggestions"] == ["do this", "or that"]
    texts = load(str(tmp_path)).Tensors("health/alerts")
    assert [t.step for t in texts] == [0, 2]
    assert b"test_kind" in texts[0].tensor_proto.string_val[0]


def test_nonfinite_values_in_alerts_are_valid_json(tmp_path):
    alert = Alert("nonfinite", None, 3, "critical", float("nan"), "NaN", [], {"grad": float("inf")})
    sink = torchhealth.sinks.JsonlAlertSink(str(tmp_path))
    sink.write_alerts([alert])
    sink.close()
    assert json.loads(open(tmp_path / "alerts.jsonl").read())["value"] == "nan"


def test_no_log_dir_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    model = small_net()
    with torchhealth.Monitor(model, check_every=1) as monitor:
        train(monitor, model, 2)
    assert os.listdir(tmp_path) == []


def read_records(path):
    """Every record of an event file through TensorBoard's own reader, which checks both checksums of each."""
    from tensorboard.compat.tensorflow_stub import errors, pywrap_tensorflow

    reader, records = pywrap_tensorflow.PyRecordReader_New(path), []
    while True:
        try:
            reader.GetNext()
        except errors.OutOfRangeError:
            return records
        records.append(reader.record())


def test_event_records_carry_native_checksums_that_tensorboard_accepts(tmp_path):
    pytest.importorskip("google_crc32c")
    from tensorboard.compat.tensorflow_stub import pywrap_tensorflow
    from tensorboard.summary.writer import record_writer

    from torchhealth.sinks import tensorboard as sink

    model = small_net()
    with torchhealth.Monitor(model, torch.optim.SGD(model.parameters(), lr=0.1), log_dir=str(tmp_path),
                             check_every=5, log_every=10) as monitor:
        train(monitor, model, 31)
    assert record_writer.masked_crc32c is sink.masked_crc32c  # the writer used the native checksum
    [path] = glob.glob(str(tmp_path / "events.out.tfevents.*"))
    records = read_records(path)  # raises DataLossError on any checksum that differs from TensorBoard's own
    assert len(records) >= 4  # file version, dashboard layout, log steps 0, 10, 20, 30
    assert {"health/grad_norm/total", "health/loss"} <= set(load(str(tmp_path)).Tags()["scalars"])
    assert pywrap_tensorflow.masked_crc32c is not sink.masked_crc32c  # TensorBoard's reader kept its own


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_native_checksum_is_tensorboards(data):
    pytest.importorskip("google_crc32c")
    from tensorboard.compat.tensorflow_stub import pywrap_tensorflow

    from torchhealth.sinks.tensorboard import masked_crc32c

    assert masked_crc32c(data) == pywrap_tensorflow.masked_crc32c(data)


def test_python_checksums_stay_when_no_native_crc32c_is_there(monkeypatch):
    from tensorboard.compat.tensorflow_stub import pywrap_tensorflow
    from tensorboard.summary.writer import record_writer

    from torchhealth.sinks import tensorboard as sink

    monkeypatch.setattr(record_writer, "masked_crc32c", pywrap_tensorflow.masked_crc32c)
    monkeypatch.setattr(sink, "_crc32c_implementation", "python")  # google-crc32c's slow fallback
    assert not sink.use_native_checksums()
    monkeypatch.setattr(sink, "_crc32c", None)  # google-crc32c not installed
    assert not sink.use_native_checksums()
    assert record_writer.masked_crc32c is pywrap_tensorflow.masked_crc32c
    monkeypatch.setattr(record_writer, "masked_crc32c", lambda data: 0)  # something else replaced it: left alone
    monkeypatch.setattr(sink, "_crc32c", pytest.importorskip("google_crc32c").value)
    monkeypatch.setattr(sink, "_crc32c_implementation", "c")
    assert not sink.use_native_checksums()
    assert record_writer.masked_crc32c(b"x") == 0

    def broken(data):
        raise RuntimeError("no CPU support")

    monkeypatch.setattr(record_writer, "masked_crc32c", pywrap_tensorflow.masked_crc32c)
    monkeypatch.setattr(sink, "_crc32c", broken)  # a native library that fails: TensorBoard's own checksums stay
    assert not sink.use_native_checksums()
    assert record_writer.masked_crc32c is pywrap_tensorflow.masked_crc32c


def test_a_removed_run_directory_gets_a_new_event_file_and_the_dashboard_goes_on(tmp_path, caplog):
    import shutil

    from torchhealth.records import TOTAL

    model = small_net()
    log_dir = tmp_path / "run"
    with caplog.at_level("WARNING", logger="torchhealth"):
        with torchhealth.Monitor(model, log_dir=log_dir, check_every=5, log_every=5, on_alert=lambda a: None) as monitor:
            train(monitor, model, 11)
            monitor.sinks[0].flush()
            shutil.rmtree(log_dir)  # e.g. a cleanup job, or the disk full for a moment
            train(monitor, model, 30)
            sink = monitor.sinks[0]
            assert "sink tensorboard" not in monitor.guard.disabled
    steps = [e.step for e in load(str(log_dir)).Scalars(f"health/grad_norm/{TOTAL}")]
    # the write that met the error is lost at most; every later log step is in the new file
    assert {20, 25, 30, 35, 40} <= set(steps), steps
    assert sink.reopens == 1
    assert len([r for r in caplog.records if "TensorBoard events" in r.getMessage()]) == 1


def test_a_run_directory_that_stays_unwritable_switches_the_sink_off_after_bounded_retries(tmp_path, caplog):
    from torchhealth.sinks.tensorboard import MAX_REOPENS

    model = small_net()
    log_dir = tmp_path / "run"
    monitor = torchhealth.Monitor(model, log_dir=log_dir, check_every=5, log_every=5, on_alert=lambda a: None)
    train(monitor, model, 6)
    monitor.sinks[0].flush()
    for name in os.listdir(log_dir):
        os.remove(log_dir / name)
    os.rmdir(log_dir)
    log_dir.write_text("not a directory")  # every new writer fails to make its directory
    with caplog.at_level("WARNING", logger="torchhealth"):
        train(monitor, model, 5 * (MAX_REOPENS + 3))
    sink = monitor.sinks[0]
    assert sink.reopens == MAX_REOPENS
    assert "sink tensorboard" in monitor.guard.disabled
    assert monitor.step_count == 6 + 5 * (MAX_REOPENS + 3), "training went on"
    messages = [r.getMessage() for r in caplog.records]
    assert len([m for m in messages if "TensorBoard events" in m]) == 1
    assert len([m for m in messages if "sink tensorboard failed" in m]) == 1
    monitor.close()


@pytest.mark.parametrize("batch, log_every", [(16, 100), (16, 70), (1024, 100), (1024, 30)])
def test_dead_units_have_a_value_at_every_log_step_once_a_window_has_closed(tmp_path, batch, log_every):
    """A window (1024 samples by default) closes on its own clock, rarely on a log step: with batch 16
    it closes every 640 steps, and log steps at multiples of 100 (or 70) met it only at their common
    multiples. Every log step from the first closed window on shows the latest window's value."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 32), nn.ReLU(), nn.Linear(32, 3))
    with torch.no_grad():
        model[0].bias[:16] = -50.0  # half the units never fire
    steps = 1500 if batch == 16 else 200
    with torchhealth.Monitor(model, log_dir=tmp_path, log_every=log_every, check_every=10,
                             on_alert=lambda a: None) as monitor:
        for _ in range(steps):
            loss = F.cross_entropy(model(torch.randn(batch, 4)), torch.randint(0, 3, (batch,)))
            loss.backward()
            monitor.step(loss)
            model.zero_grad()
    samples_per_window = -(-1024 // batch) * 10  # sampled every 10th step: steps until a window closes
    first_close = samples_per_window - 10 if batch == 16 else 0
    log_steps = [s for s in range(0, steps, log_every) if s >= first_close]
    written = load(str(tmp_path)).Scalars("health/dead_units/1")
    assert [e.step for e in written if e.step in log_steps] == log_steps
    assert all(e.value == pytest.approx(0.5) for e in written)
