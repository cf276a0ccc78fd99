import io
import json
import time

from prometheus_client import CollectorRegistry, Gauge

from runtime.phases import PhaseRecorder, process_start_time


def test_startup_line_is_one_json_line_relative_to_launch() -> None:
    out = io.StringIO()
    registry = CollectorRegistry()
    gauge = Gauge("torpor_runtime_startup_phase_seconds", "x", ["phase"], registry=registry)
    rec = PhaseRecorder(replica_id="r-1", launched_at=100.0, warm=True, out=out, gauge=gauge)
    rec.mark("process_started", at=100.5)
    rec.mark("imports_done", at=105.0)
    rec.mark("weights_resolved", at=105.25)
    rec.mark("engine_ready", at=108.0)
    rec.emit("startup")
    lines = out.getvalue().splitlines()
    assert len(lines) == 1
    event = json.loads(lines[0])
    assert event == {
        "event": "startup",
        "replica_id": "r-1",
        "launched_at": 100.0,
        "warm": True,
        "phases": {
            "process_started": 0.5,
            "imports_done": 5.0,
            "weights_resolved": 5.25,
            "engine_ready": 8.0,
        },
    }
    value = registry.get_sample_value(
        "torpor_runtime_startup_phase_seconds", {"phase": "engine_ready"}
    )
    assert value == 8.0


def test_process_start_time_is_in_the_past() -> None:
    started = process_start_time()
    assert started <= time.time()
    assert time.time() - started < 3600


def test_knative_identity_labels_the_report_and_the_gauge() -> None:
    out = io.StringIO()
    registry = CollectorRegistry()
    labels = {"service": "tiny-chat", "revision": "tiny-chat-00001"}
    gauge = Gauge(
        "torpor_runtime_startup_phase_seconds", "x", ["phase", *labels], registry=registry
    )
    rec = PhaseRecorder(replica_id="pod-1", launched_at=10.0, warm=False, out=out, labels=labels)
    rec.mark("process_started", at=10.5)
    rec.set_gauge(gauge)  # a phase marked before the gauge existed still reaches it
    rec.mark("engine_ready", at=12.0)
    rec.emit("startup")
    event = json.loads(out.getvalue())
    assert (event["service"], event["revision"]) == ("tiny-chat", "tiny-chat-00001")
    assert "configuration" not in event
    for phase, want in (("process_started", 0.5), ("engine_ready", 2.0)):
        sample = registry.get_sample_value(
            "torpor_runtime_startup_phase_seconds", {"phase": phase, **labels}
        )
        assert sample == want
