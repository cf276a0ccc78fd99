"""Knative Service manifests -> torpor specs: good manifests, each rule, revisions and traffic."""

from __future__ import annotations

import copy
import pickle
from dataclasses import replace
from pathlib import Path
from typing import Any

import jsonschema  # type: ignore[import-untyped]
import pytest
import yaml

from torpor import codec
from torpor.manifest import (
    MAX_MANIFEST_BYTES,
    ManifestError,
    ServiceManifest,
    apply_manifest,
    parse_service,
)
from torpor.manifest.durations import parse_go_duration
from torpor.manifest.env import container_env, expand
from torpor.manifest.limits import (
    DEFAULT_MAX_REPLICAS_TOTAL,
    DEFAULT_MAX_SCALE_PER_REVISION,
    ScaleLimits,
    check_total,
    clamp_revision,
    floor_replicas,
)
from torpor.spec import (
    DEFAULT_AUTOSCALER_CLASS,
    DEFAULT_QUEUE_DEPTH,
    DEFAULT_TIMEOUT_S,
    AutoscalingSpec,
    LivenessProbe,
    RevisionRef,
    ServiceSpec,
    TrafficTarget,
)

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "manifests" / "examples"
CRD = ROOT / "tests" / "data" / "knative" / "service-crd.yaml"
ANN = "spec.template.metadata.annotations"


def base() -> dict[str, Any]:
    return {
        "apiVersion": "serving.knative.dev/v1",
        "kind": "Service",
        "metadata": {"name": "chat"},
        "spec": {
            "template": {
                "spec": {
                    "containers": [
                        {
                            "image": "ghcr.io/torpor-dev/runtime:0.1.0-cpu",
                            "args": ["--model=/models/tiny", "--max-model-len=512"],
                        }
                    ]
                }
            }
        },
    }


def with_annotations(doc: dict[str, Any], **annotations: str) -> dict[str, Any]:
    doc = copy.deepcopy(doc)
    doc["spec"]["template"].setdefault("metadata", {}).setdefault("annotations", {}).update(
        annotations
    )
    return doc


def container(doc: dict[str, Any]) -> dict[str, Any]:
    c: dict[str, Any] = doc["spec"]["template"]["spec"]["containers"][0]
    return c


def parse(doc: dict[str, Any]) -> ServiceManifest:
    return parse_service(yaml.safe_dump(doc), source="test.yaml")


def ann(key: str) -> str:
    return f'{ANN}["{key}"]'


def rejects(doc: dict[str, Any] | str | bytes, field: str) -> ManifestError:
    text = doc if isinstance(doc, str | bytes) else yaml.safe_dump(doc)
    with pytest.raises(ManifestError) as info:
        parse_service(text, source="test.yaml")
    assert info.value.field == field, str(info.value)
    return info.value


def crd_schema() -> dict[str, Any]:
    crd = yaml.safe_load(CRD.read_text())
    schema: dict[str, Any] = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schema


# --- the example ---------------------------------------------------------------------------


def test_tiny_chat_example_parses() -> None:
    m = parse_service((EXAMPLES / "tiny-chat.yaml").read_bytes(), source="tiny-chat.yaml")
    assert (m.namespace, m.name, m.key) == ("default", "tiny-chat", "default/tiny-chat")
    rt = m.template.runtime
    assert rt.image == "ghcr.io/torpor-dev/runtime:0.1.0-cpu"
    assert rt.model == "/models/tiny-llama"  # the models volume; the embedded home maps it
    assert rt.served_model_name == "tiny-chat"
    assert rt.engine_args == ("--max-model-len=512", "--enforce-eager", "--dtype=bfloat16")
    assert rt.env == (("VLLM_CPU_KVCACHE_SPACE", "1"),)
    assert rt.container_port == 8080
    assert rt.liveness == LivenessProbe("/health", 15.0, 5.0, 4, 0.0)
    a = m.template.autoscaling
    assert a.min_scale == 0
    assert a.initial_scale == 0
    assert a.target == 4.0
    assert a.autoscaler_class == DEFAULT_AUTOSCALER_CLASS
    # Back to zero well within a minute of the last request.
    assert a.window_s + a.scale_to_zero_grace_s < 60
    assert m.template.timeout_s == 300.0
    assert m.traffic == ()


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.name)
def test_examples_are_valid_knative_services(path: Path) -> None:
    """What `kubectl apply` checks on a cluster with Knative Serving: the CRD's schema."""
    jsonschema.Draft7Validator(crd_schema()).validate(yaml.safe_load(path.read_text()))
    parse_service(path.read_bytes(), source=path.name)


def test_crd_schema_check_has_teeth() -> None:
    doc = base()
    doc["spec"]["template"]["spec"]["timeoutSeconds"] = "soon"
    assert list(jsonschema.Draft7Validator(crd_schema()).iter_errors(doc))


# --- defaults and the container ------------------------------------------------------------


def test_defaults() -> None:
    m = parse(base())
    assert m.namespace == "default"
    assert m.template.name is None
    # Knative's unbounded max-scale is the platform's cap per revision (torpor.manifest.limits).
    assert m.template.autoscaling == replace(
        AutoscalingSpec(), max_scale=DEFAULT_MAX_SCALE_PER_REVISION
    )
    assert m.template.container_concurrency == 0
    assert m.template.timeout_s == DEFAULT_TIMEOUT_S
    assert m.template.queue_depth == DEFAULT_QUEUE_DEPTH
    assert m.template.runtime.container_port == 8080
    # The suspended tier is opt-in (torpor.spec.AutoscalingSpec.suspend_after_s says why).
    assert m.template.autoscaling.suspend_after_s == 0.0
    assert m.template.runtime.served_model_name is None
    assert m.template.runtime.engine_args == ("--max-model-len=512",)
    assert m.source == "test.yaml"


@pytest.mark.parametrize(
    ("args", "model", "served", "engine"),
    [
        (["--model=/m"], "/m", None, ()),
        (["--model", "/m"], "/m", None, ()),
        (
            ["--dtype", "bfloat16", "--model", "file:///m", "--enforce-eager"],
            "file:///m",
            None,
            ("--dtype", "bfloat16", "--enforce-eager"),
        ),
        (["--served-model-name", "chat", "--model=/m"], "/m", "chat", ()),
        (
            ["--model=/m", "--served-model-name=chat", "--max-num-seqs", "8"],
            "/m",
            "chat",
            ("--max-num-seqs", "8"),
        ),
        (["--model=$(TORPOR_HOME)/models/x"], "$(TORPOR_HOME)/models/x", None, ()),
    ],
)
def test_model_flags_are_the_runtimes_and_the_rest_go_to_vllm(
    args: list[str], model: str, served: str | None, engine: tuple[str, ...]
) -> None:
    doc = base()
    container(doc)["args"] = args
    rt = parse(doc).template.runtime
    assert (rt.model, rt.served_model_name, rt.engine_args) == (model, served, engine)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        # Unique prefixes, which vLLM's argparse parser would take for the platform's flag.
        (["--hos=0.0.0.0"], "--hos abbreviates --host"),
        (["--ho", "0.0.0.0"], "--ho abbreviates --host"),
        (["--por=8080"], "--por abbreviates --port"),
        (["--po", "1"], "--po abbreviates --port"),
        (["--ud=/tmp/s"], "--ud abbreviates --uds"),
        (["--cache-d=/c"], "--cache-d abbreviates --cache-dir"),
        (["--replica=r"], "--replica abbreviates --replica-id"),
        (["--launched", "1"], "--launched abbreviates --launched-at"),
        # The runtime's own flags: spelled in full, or vLLM could read them as a second value.
        (["--mod=/other"], "--mod abbreviates --model"),
        (["--served=x"], "--served abbreviates --served-model-name"),
        (["--served_model=x"], "--served_model abbreviates --served-model-name"),
        # Exact names, in every spelling vLLM accepts: =, space, underscores, dotted fields.
        (["--uds=/tmp/s"], "--uds is set by the platform"),
        (["--uds", "/tmp/s"], "--uds is set by the platform"),
        (["--host=0.0.0.0"], "--host is set by the platform"),
        (["--replica_id", "r"], "--replica_id is set by the platform"),
        (["--cache_dir=/c"], "--cache_dir is set by the platform"),
        (["--host.x=1"], "--host.x is set by the platform"),
        (["--model.x=1"], "--model takes a plain value"),
        (["--"], "a bare --"),
    ],
)
def test_platform_flags_are_refused_in_any_spelling(args: list[str], message: str) -> None:
    doc = base()
    container(doc)["args"] = ["--model=/m", *args]
    error = rejects(doc, "spec.template.spec.containers[0].args[1]")
    assert message in str(error)


def test_underscore_spellings_of_the_runtimes_flags_are_those_flags() -> None:
    doc = base()
    container(doc)["args"] = ["--model=/m", "--served_model_name=chat", "--max_model_len=512",
                              "--model-impl=vllm"]  # fmt: skip
    rt = parse(doc).template.runtime
    assert rt.served_model_name == "chat"
    assert rt.engine_args == ("--max_model_len=512", "--model-impl=vllm")  # vLLM's, unchanged


def test_env_ports_concurrency_timeout() -> None:
    doc = base()
    container(doc)["env"] = [
        {"name": "APP_B", "value": "2"},
        {"name": "APP_A", "value": "1"},
        {"name": "APP_EMPTY"},
    ]
    container(doc)["ports"] = [{"containerPort": 9000, "name": "http1"}]
    doc["spec"]["template"]["spec"]["containerConcurrency"] = 4
    doc["spec"]["template"]["spec"]["timeoutSeconds"] = 600
    t = parse(doc).template
    # order kept for $(VAR)
    assert t.runtime.env == (("APP_B", "2"), ("APP_A", "1"), ("APP_EMPTY", ""))
    assert t.runtime.container_port == 9000
    assert t.container_concurrency == 4
    assert t.timeout_s == 600.0


def test_namespace_labels_and_unknown_fields_are_accepted() -> None:
    doc = base()
    doc["metadata"].update(namespace="team-a", labels={"app": "chat"}, uid="ignored")
    doc["metadata"]["annotations"] = {"example.com/owner": "me"}
    doc["spec"]["template"]["spec"]["containers"][0]["resources"] = {"limits": {"cpu": "2"}}
    doc["status"] = {"url": "http://x"}
    m = parse(doc)
    assert m.namespace == "team-a"


def test_timeout_limit_is_a_parameter() -> None:
    doc = base()
    doc["spec"]["template"]["spec"]["timeoutSeconds"] = 3600
    rejects(doc, "spec.template.spec.timeoutSeconds")
    m = parse_service(yaml.safe_dump(doc), max_timeout_s=3600)
    assert m.template.timeout_s == 3600.0


# --- annotations ---------------------------------------------------------------------------


def test_every_annotation_lands_in_the_spec() -> None:
    doc = with_annotations(
        base(),
        **{
            "autoscaling.knative.dev/class": DEFAULT_AUTOSCALER_CLASS,
            "autoscaling.knative.dev/metric": "concurrency",
            "autoscaling.knative.dev/target": "8.5",
            "autoscaling.knative.dev/target-utilization-percentage": "80",
            "autoscaling.knative.dev/min-scale": "1",
            "autoscaling.knative.dev/max-scale": "5",
            "autoscaling.knative.dev/initial-scale": "2",
            "autoscaling.knative.dev/activation-scale": "2",
            "autoscaling.knative.dev/window": "1m30s",
            "autoscaling.knative.dev/panic-window-percentage": "20",
            "autoscaling.knative.dev/panic-threshold-percentage": "150.5",
            "autoscaling.knative.dev/scale-down-delay": "15s",
            "autoscaling.knative.dev/scale-to-zero-pod-retention-period": "1m",
            "autoscaling.knative.dev/target-burst-capacity": "-1",
            "torpor.dev/scale-to-zero-grace-period": "45s",
            "torpor.dev/max-scale-up-rate": "10",
            "torpor.dev/max-scale-down-rate": "4",
            "torpor.dev/kv-cache-target": "0.9",
            "torpor.dev/queue-depth": "32",
            "torpor.dev/api-keys-secret": "chat-keys",
            "torpor.dev/suspend-after": "20s",
            "torpor.dev/stop-suspended-after": "10m",
            "example.com/unrelated": "ignored",
        },
    )
    t = parse(doc).template
    assert t.autoscaling == AutoscalingSpec(
        autoscaler_class=DEFAULT_AUTOSCALER_CLASS,
        metric="concurrency",
        target=8.5,
        target_utilization=0.8,
        min_scale=1,
        max_scale=5,
        initial_scale=2,
        activation_scale=2,
        window_s=90.0,
        panic_window_percentage=20.0,
        panic_threshold_percentage=150.5,
        scale_down_delay_s=15.0,
        scale_to_zero_grace_s=45.0,
        scale_to_zero_retention_s=60.0,
        max_scale_up_rate=10.0,
        max_scale_down_rate=4.0,
        kv_cache_target=0.9,
        suspend_after_s=20.0,
        stop_suspended_after_s=600.0,
    )
    assert t.queue_depth == 32
    assert t.api_keys_secret == "chat-keys"


def test_camel_case_spellings_knative_still_reads() -> None:
    doc = with_annotations(
        base(),
        **{
            "autoscaling.knative.dev/minScale": "2",
            "autoscaling.knative.dev/maxScale": "3",
            "autoscaling.knative.dev/initialScale": "3",
            "autoscaling.knative.dev/scaleDownDelay": "5s",
        },
    )
    a = parse(doc).template.autoscaling
    assert (a.min_scale, a.max_scale, a.initial_scale, a.scale_down_delay_s) == (2, 3, 3, 5.0)


@pytest.mark.parametrize(
    ("cls", "metric", "expected_metric"),
    [
        (None, None, "llm"),
        ("kpa.autoscaling.knative.dev", None, "concurrency"),
        ("kpa.autoscaling.knative.dev", "rps", "rps"),
        ("hpa.autoscaling.knative.dev", "memory", "memory"),
        ("hpa.autoscaling.knative.dev", None, "cpu"),
        ("keda.example.com", "whatever", "whatever"),  # classes torpor does not run: left alone
    ],
)
def test_autoscaler_class_and_metric(
    cls: str | None, metric: str | None, expected_metric: str
) -> None:
    annotations = {}
    if cls:
        annotations["autoscaling.knative.dev/class"] = cls
    if metric:
        annotations["autoscaling.knative.dev/metric"] = metric
    a = parse(with_annotations(base(), **annotations)).template.autoscaling
    assert a.autoscaler_class == (cls or DEFAULT_AUTOSCALER_CLASS)
    assert a.metric == expected_metric


def test_min_scale_above_unbounded_max_is_fine() -> None:
    doc = with_annotations(
        base(),
        **{"autoscaling.knative.dev/min-scale": "7", "autoscaling.knative.dev/max-scale": "0"},
    )
    a = parse(doc).template.autoscaling
    assert (a.min_scale, a.max_scale) == (7, DEFAULT_MAX_SCALE_PER_REVISION)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("autoscaling.knative.dev/min-scale", "-1"),
        ("autoscaling.knative.dev/min-scale", "1.0"),
        ("autoscaling.knative.dev/min-scale", " 1"),
        ("autoscaling.knative.dev/min-scale", "1_000"),
        ("autoscaling.knative.dev/max-scale", "2147483648"),
        ("autoscaling.knative.dev/target", "inf"),
        ("autoscaling.knative.dev/target", "0.001"),
        ("autoscaling.knative.dev/target-utilization-percentage", "0.5"),
        ("autoscaling.knative.dev/window", "5s"),
        ("autoscaling.knative.dev/window", "61m"),
        ("autoscaling.knative.dev/window", "1.5s"),
        ("autoscaling.knative.dev/panic-window-percentage", "101"),
        ("autoscaling.knative.dev/panic-threshold-percentage", "1001"),
        ("autoscaling.knative.dev/scale-down-delay", "2h"),
        ("autoscaling.knative.dev/scale-down-delay", "100ms"),
        ("autoscaling.knative.dev/scale-to-zero-pod-retention-period", "-1s"),
        ("autoscaling.knative.dev/target-burst-capacity", "-2"),
        ("autoscaling.knative.dev/activation-scale", "0"),
        ("autoscaling.knative.dev/class", "custom.knative.dev"),
        ("autoscaling.knative.dev/class", ""),
        ("autoscaling.knative.dev/metric", "rps"),  # the torpor class scales on llm/concurrency
        ("torpor.dev/max-scale-down-rate", "0.5"),
        ("torpor.dev/kv-cache-target", "0"),
        ("torpor.dev/queue-depth", "100001"),
        ("torpor.dev/scale-to-zero-grace-period", "2h"),
        ("torpor.dev/api-keys-secret", "Not_A_Name"),
        ("torpor.dev/suspend-after", "-1s"),
        ("torpor.dev/suspend-after", "2h"),
        ("torpor.dev/suspend-after", "10"),
        ("torpor.dev/stop-suspended-after", "0s"),
        ("torpor.dev/stop-suspended-after", "25h"),
        ("torpor.dev/min-scale", "1"),
    ],
)
def test_bad_annotation_values_name_their_key(key: str, value: str) -> None:
    err = rejects(with_annotations(base(), **{key: value}), ann(key))
    assert err.reason


def test_activation_scale_above_max_scale() -> None:
    doc = with_annotations(
        base(),
        **{
            "autoscaling.knative.dev/max-scale": "2",
            "autoscaling.knative.dev/activation-scale": "3",
        },
    )
    rejects(doc, ann("autoscaling.knative.dev/activation-scale"))


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("0", 0.0),
        ("30s", 30.0),
        ("1m30s", 90.0),
        ("1h", 3600.0),
        ("1.5h", 5400.0),
        ("500ms", 0.5),
        ("+2m", 120.0),
        ("-5s", -5.0),
        ("1h1m1s", 3661.0),
        ("2us", 2e-6),
        ("3\u00b5s", 3e-6),
        (".5s", 0.5),
    ],
)
def test_go_durations(text: str, seconds: float) -> None:
    assert parse_go_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "10", "s", "1d", "1 s", "1s ", "--1s", "1.s.5", "x" * 100])
def test_not_go_durations(text: str) -> None:
    with pytest.raises(ValueError):
        parse_go_duration(text)


# --- other rules ---------------------------------------------------------------------------


def test_template_name_must_carry_the_service_prefix() -> None:
    doc = base()
    doc["spec"]["template"]["metadata"] = {"name": "chat-v1"}
    assert parse(doc).template.name == "chat-v1"
    doc["spec"]["template"]["metadata"] = {"name": "v1"}
    rejects(doc, "spec.template.metadata.name")


def test_service_name_leaves_room_for_the_revision_suffix() -> None:
    doc = base()
    doc["metadata"]["name"] = "a" * 57
    parse(doc)
    doc["metadata"]["name"] = "a" * 58
    rejects(doc, "metadata.name")


def test_tag_and_service_make_one_host_label() -> None:
    doc = base()
    doc["metadata"]["name"] = "a" * 50
    doc["spec"]["traffic"] = [{"latestRevision": True, "percent": 100, "tag": "b" * 12}]
    parse(doc)
    doc["spec"]["traffic"][0]["tag"] = "b" * 13  # 13 + 1 + 50 = 64 > 63
    rejects(doc, "spec.traffic[0].tag")


def test_error_text_names_source_field_and_reason() -> None:
    doc = with_annotations(base(), **{"autoscaling.knative.dev/min-scale": "-1"})
    err = rejects(doc, ann("autoscaling.knative.dev/min-scale"))
    assert isinstance(err, ValueError)
    assert str(err) == f"test.yaml: {err.field}: {err.reason}"
    assert str(ManifestError("kind", "must be Service")) == "kind: must be Service"
    again = pickle.loads(pickle.dumps(err))
    assert (again.field, again.reason, again.source) == (err.field, err.reason, err.source)


def test_bytes_and_text_and_bom_and_json_are_all_read() -> None:
    text = yaml.safe_dump(base())
    assert parse_service(text) == parse_service(text.encode())
    assert parse_service("\ufeff" + text) == parse_service(text)
    assert parse_service(codec.dumps(base())) == parse_service(text)


def test_size_limit_is_exactly_one_mib() -> None:
    text = yaml.safe_dump(base()).encode()
    padding = MAX_MANIFEST_BYTES - len(text) - 1
    at_limit = text + b"#" + b"x" * padding
    assert len(at_limit) == MAX_MANIFEST_BYTES
    parse_service(at_limit)
    rejects(at_limit + b"x", "document")
    rejects(at_limit.decode() + "x", "document")
    rejects(at_limit.decode().replace("#x", "#\u00e9", 1), "document")  # 2 bytes in UTF-8


def test_lone_surrogate_in_text_is_rejected() -> None:
    rejects(yaml.safe_dump(base()) + "# \ud800\n", "document")


# --- digests -------------------------------------------------------------------------------


def test_digest_ignores_formatting_and_fields_torpor_does_not_read() -> None:
    a = parse(base())
    doc = base()
    doc["metadata"]["labels"] = {"x": "y"}
    container(doc)["resources"] = {"limits": {"cpu": "1"}}
    flow = yaml.safe_dump(doc, default_flow_style=True)
    b = parse_service(flow)
    assert a.template_digest == b.template_digest
    assert len(a.template_digest) == 64


@pytest.mark.parametrize(
    "change",
    [
        lambda d: container(d)["args"].append("--enforce-eager"),
        lambda d: container(d).update(image="other:1"),
        lambda d: container(d).update(env=[{"name": "APP_A", "value": "1"}]),
        lambda d: d["spec"]["template"]["spec"].update(timeoutSeconds=30),
        lambda d: d["spec"]["template"].update(metadata={"name": "chat-x"}),
        lambda d: d["spec"]["template"].update(
            metadata={"annotations": {"autoscaling.knative.dev/max-scale": "3"}}
        ),
    ],
)
def test_digest_changes_with_the_template(change: Any) -> None:
    doc = base()
    change(doc)
    assert parse(doc).template_digest != parse(base()).template_digest


def test_traffic_is_not_part_of_the_template() -> None:
    doc = base()
    doc["spec"]["traffic"] = [{"latestRevision": True, "percent": 100, "tag": "x"}]
    assert parse(doc).template_digest == parse(base()).template_digest


# --- apply: revisions ----------------------------------------------------------------------


def apply_doc(doc: dict[str, Any], previous: ServiceSpec | None = None) -> ServiceSpec:
    return apply_manifest(parse(doc), previous)


def names(spec: ServiceSpec) -> list[str]:
    return [r.ref.name for r in spec.revisions]


def test_first_apply_makes_revision_one_with_all_traffic() -> None:
    spec = apply_manifest(parse(base()), None, domain="torpor.local")
    assert spec.key == "default/chat"
    assert spec.domain == "torpor.local"
    assert spec.generation == 1
    rev = spec.latest_revision
    assert rev.ref == RevisionRef("default", "chat-00001")
    assert (rev.service, rev.generation) == ("chat", 1)
    assert rev.template_digest == parse(base()).template_digest
    assert rev.runtime.model == "/models/tiny"
    assert spec.traffic == (TrafficTarget("chat-00001", 100, None, latest_revision=True),)


def test_unchanged_template_makes_no_new_revision() -> None:
    first = apply_doc(base())
    assert apply_doc(base(), first) == first


def test_each_template_change_makes_the_next_revision_and_keeps_the_old() -> None:
    spec = apply_doc(base())
    for n in range(2, 5):
        doc = base()
        container(doc)["args"].append(f"--max-num-seqs={n}")
        spec = apply_doc(doc, spec)
        assert spec.generation == n
        assert spec.latest_revision.ref.name == f"chat-{n:05d}"
    assert names(spec) == ["chat-00001", "chat-00002", "chat-00003", "chat-00004"]
    assert spec.traffic == (TrafficTarget("chat-00004", 100, None, latest_revision=True),)
    # Going back to an earlier template is a change too: Knative makes a new revision for it.
    spec = apply_doc(base(), spec)
    assert spec.latest_revision.ref.name == "chat-00005"


def test_traffic_only_change_keeps_the_revisions() -> None:
    first = apply_doc(base())
    doc = base()
    doc["spec"]["traffic"] = [{"latestRevision": True, "percent": 100, "tag": "current"}]
    spec = apply_doc(doc, first)
    assert spec.revisions == first.revisions
    assert spec.generation == first.generation
    assert spec.traffic == (TrafficTarget("chat-00001", 100, "current", latest_revision=True),)


def test_named_template() -> None:
    doc = base()
    doc["spec"]["template"]["metadata"] = {"name": "chat-blue"}
    spec = apply_doc(doc)
    assert names(spec) == ["chat-blue"]
    assert spec.latest_revision.generation == 1
    assert apply_doc(doc, spec) == spec  # same name, same template: nothing to do

    changed = copy.deepcopy(doc)
    container(changed)["args"].append("--enforce-eager")
    with pytest.raises(ManifestError) as info:
        apply_doc(changed, spec)  # same name, different template: Knative refuses
    assert info.value.field == "spec.template.metadata.name"
    assert "chat-blue" in info.value.reason

    changed["spec"]["template"]["metadata"]["name"] = "chat-green"
    spec = apply_doc(changed, spec)
    assert names(spec) == ["chat-blue", "chat-green"]
    # Dropping the name is a template change; the generated name follows the generation.
    spec = apply_doc(base(), spec)
    assert names(spec) == ["chat-blue", "chat-green", "chat-00003"]


def test_reusing_an_old_revision_name_is_refused() -> None:
    doc = base()
    doc["spec"]["template"]["metadata"] = {"name": "chat-blue"}
    spec = apply_doc(base(), apply_doc(doc))
    with pytest.raises(ManifestError) as info:
        apply_doc(doc, spec)
    assert info.value.field == "spec.template.metadata.name"


def test_generated_name_taken_by_an_earlier_named_revision() -> None:
    doc = base()
    doc["spec"]["template"]["metadata"] = {"name": "chat-00002"}
    spec = apply_doc(doc)  # generation 1, named like generation 2
    changed = base()
    with pytest.raises(ManifestError) as info:
        apply_doc(changed, spec)
    assert info.value.field == "spec.template.metadata.name"
    assert str(info.value).startswith("test.yaml: ")


def test_apply_to_another_service_is_a_programming_error() -> None:
    spec = apply_doc(base())
    doc = base()
    doc["metadata"]["name"] = "other"
    with pytest.raises(ValueError, match="default/other"):
        apply_doc(doc, spec)


def test_applied_spec_round_trips_through_the_codec() -> None:
    spec = apply_manifest(
        parse_service((EXAMPLES / "tiny-chat.yaml").read_bytes()), None, domain="example.com"
    )
    assert codec.loads(ServiceSpec, codec.dumps(spec)) == spec


# --- apply: traffic ------------------------------------------------------------------------


def two_revisions() -> ServiceSpec:
    doc = base()
    container(doc)["args"].append("--enforce-eager")
    return apply_doc(doc, apply_doc(base()))


def test_split_between_a_pinned_revision_and_latest_with_tags() -> None:
    doc = base()
    container(doc)["args"].append("--max-num-seqs=4")
    doc["spec"]["traffic"] = [
        {"revisionName": "chat-00001", "percent": 80, "tag": "stable"},
        {"latestRevision": True, "percent": 20, "tag": "canary"},
        {"revisionName": "chat-00002", "tag": "old"},  # a tag alone: its own URL, no share
    ]
    spec = apply_doc(doc, two_revisions())
    assert spec.latest_revision.ref.name == "chat-00003"
    assert spec.traffic == (
        TrafficTarget("chat-00001", 80, "stable", latest_revision=False),
        TrafficTarget("chat-00003", 20, "canary", latest_revision=True),
        TrafficTarget("chat-00002", 0, "old", latest_revision=False),
    )
    assert [r.ref.name for r in spec.routed_revisions()] == names(spec)


def test_latest_follows_new_revisions_and_pins_stay() -> None:
    doc = base()
    doc["spec"]["traffic"] = [
        {"revisionName": "chat-00001", "percent": 50},
        {"percent": 50},  # neither name nor latestRevision: Knative defaults it to latest
    ]
    spec = apply_doc(doc)
    assert [(t.revision, t.latest_revision) for t in spec.traffic] == [
        ("chat-00001", False),
        ("chat-00001", True),
    ]
    container(doc)["args"].append("--enforce-eager")
    spec = apply_doc(doc, spec)
    assert [t.revision for t in spec.traffic] == ["chat-00001", "chat-00002"]


def test_traffic_may_name_the_revision_this_apply_creates() -> None:
    doc = base()
    doc["spec"]["template"]["metadata"] = {"name": "chat-blue"}
    doc["spec"]["traffic"] = [{"revisionName": "chat-blue", "percent": 100}]
    assert apply_doc(doc).traffic == (TrafficTarget("chat-blue", 100),)


def test_unknown_revision_in_traffic_names_the_entry_and_changes_nothing() -> None:
    previous = two_revisions()
    doc = base()
    doc["spec"]["traffic"] = [
        {"revisionName": "chat-00002", "percent": 50},
        {"revisionName": "chat-00009", "percent": 50},
    ]
    with pytest.raises(ManifestError) as info:
        apply_doc(doc, previous)
    assert info.value.field == "spec.traffic[1].revisionName"
    assert "chat-00009" in info.value.reason
    assert previous == two_revisions()


@pytest.mark.parametrize(
    ("traffic", "field"),
    [
        ([{"latestRevision": True, "percent": 50}], "spec.traffic"),
        (
            [
                {"latestRevision": True, "percent": 60},
                {"revisionName": "chat-00001", "percent": 60},
            ],
            "spec.traffic",
        ),
        ([{"latestRevision": True, "tag": "a"}], "spec.traffic"),
        (
            [
                {"latestRevision": True, "percent": 100, "tag": "a"},
                {"revisionName": "chat-00001", "tag": "a"},
            ],
            "spec.traffic[1].tag",
        ),
        ([{"latestRevision": True, "percent": 100, "tag": "-a"}], "spec.traffic[0].tag"),
        ([{"latestRevision": True, "percent": 100, "tag": "a" * 64}], "spec.traffic[0].tag"),
        ([{"revisionName": "Chat", "percent": 100}], "spec.traffic[0].revisionName"),
        ([{"latestRevision": True, "percent": 100.0}], "spec.traffic[0].percent"),
        (["chat-00001"], "spec.traffic[0]"),
    ],
)
def test_bad_traffic(traffic: list[Any], field: str) -> None:
    doc = base()
    doc["spec"]["traffic"] = traffic
    rejects(doc, field)


def test_empty_traffic_list_means_all_to_latest() -> None:
    doc = base()
    doc["spec"]["traffic"] = []
    assert apply_doc(doc).traffic == (TrafficTarget("chat-00001", 100, latest_revision=True),)


# --- hostile manifests (issue 13 item 8): replica caps, the env deny list, $(VAR) ---------------


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("autoscaling.knative.dev/min-scale", "1000000000"),
        ("autoscaling.knative.dev/minScale", "17"),
        ("autoscaling.knative.dev/max-scale", "17"),
        ("autoscaling.knative.dev/maxScale", "2147483647"),
        ("autoscaling.knative.dev/initial-scale", "17"),
        ("autoscaling.knative.dev/activation-scale", "17"),
    ],
)
def test_scale_above_the_platform_cap_is_refused_naming_the_annotation(
    key: str, value: str
) -> None:
    err = rejects(with_annotations(base(), **{key: value}), ann(key))
    assert f"limit of {DEFAULT_MAX_SCALE_PER_REVISION} replicas per revision" in err.reason


def test_the_cap_is_the_platforms_to_set() -> None:
    doc = with_annotations(base(), **{"autoscaling.knative.dev/min-scale": "5"})
    text = yaml.safe_dump(doc)
    with pytest.raises(ManifestError) as info:
        parse_service(text, max_scale_limit=4)
    assert info.value.field == ann("autoscaling.knative.dev/min-scale")
    a = parse_service(text, max_scale_limit=5).template.autoscaling
    assert (a.min_scale, a.max_scale) == (5, 5)  # unbounded max-scale is the cap
    bounded = with_annotations(doc, **{"autoscaling.knative.dev/max-scale": "8"})
    assert parse(bounded).template.autoscaling.max_scale == 8  # under the cap: as written


@pytest.mark.parametrize(
    "name",
    [
        "LD_PRELOAD",
        "LD_LIBRARY_PATH",
        "LD_AUDIT",
        "DYLD_INSERT_LIBRARIES",
        "GLIBC_TUNABLES",
        "GCONV_PATH",
        "MALLOC_CHECK_",
        "PYTHONPATH",
        "PYTHONHOME",
        "PYTHONSTARTUP",
        "PYTHONUNBUFFERED",
        "PATH",
        "BASH_ENV",
        "TORPOR_HOME",
        "TORPOR_CACHE_DIR",
        "TORPOR_MAX_MODEL_BYTES",
        "PORT",
        "K_REVISION",
        "K_SINK",
    ],
)
def test_env_may_not_override_loader_interpreter_or_platform_variables(name: str) -> None:
    doc = base()
    container(doc)["env"] = [{"name": "APP_OK", "value": "1"}, {"name": name, "value": "/tmp/x"}]
    err = rejects(doc, "spec.template.spec.containers[0].env[1].name")
    assert err.reason.startswith(f"{name} ")
    assert "may not set it" in err.reason or "set by the platform" in err.reason


@pytest.mark.parametrize(
    "name",
    ["SAGEMAKER_MODEL_PATH", "VLLM_SERVER_DEV_MODE", "VLLM_PLUGINS", "SOMETHING_ELSE", "app_x",
     "VLLM_USE_V2_HOOK", "HF_HOME"],
)
def test_env_outside_the_allow_list_is_refused_with_its_field_named(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Issue 23: SAGEMAKER_MODEL_PATH made vLLM execute <dir>/model.py; dev mode opened endpoints.
    doc = base()
    container(doc)["env"] = [{"name": "APP_OK", "value": "1"}, {"name": name, "value": "/tmp/x"}]
    err = rejects(doc, "spec.template.spec.containers[0].env[1].name")
    assert err.reason.startswith(f"{name} ") and "may not set it" in err.reason
    # The operator's extension opens other names, never the forbidden ones.
    monkeypatch.setenv("TORPOR_REPLICA_ENV_ALLOW", "SOMETHING_ELSE, app_*,HF_HOME,SAGEMAKER_*")
    if name in ("SOMETHING_ELSE", "app_x", "HF_HOME"):
        assert parse(doc).template.runtime.env[1] == (name, "/tmp/x")
    elif name != "VLLM_USE_V2_HOOK":
        rejects(doc, "spec.template.spec.containers[0].env[1].name")


@pytest.mark.parametrize("arg", ["--config=/tmp/x.yaml", "--config", "--conf=x.yaml",
                                 "--config.port=1"])
def test_a_config_file_flag_is_refused(arg: str) -> None:
    # Issue 23: vLLM's --config FILE (YAML) can set any flag, --uds included.
    doc = base()
    container(doc)["args"] = ["--model=/m", arg, "/tmp/x.yaml"]
    rejects(doc, "spec.template.spec.containers[0].args[1]")


@pytest.mark.parametrize(
    "name", ["VLLM_LOGGING_LEVEL", "HF_HUB_OFFLINE", "CUDA_VISIBLE_DEVICES", "APP_MODE", "TZ"]
)
def test_model_settings_in_env_pass(name: str) -> None:
    doc = base()
    container(doc)["env"] = [{"name": name, "value": "1"}]
    assert parse(doc).template.runtime.env == ((name, "1"),)


@pytest.mark.parametrize(
    ("text", "want"),
    [
        # The cases of Kubernetes' own expansion tests (third_party/forked/golang/expansion).
        ("$(VAR_A)", "A"),
        ("___$(VAR_B)___", "___B___"),
        ("$(VAR_A)-$(VAR_A)", "A-A"),
        ("$(VAR_A)$(VAR_B)", "AB"),
        ("$(VAR_EMPTY)", ""),
        ("$(UNKNOWN)", "$(UNKNOWN)"),
        ("$$(VAR_A)", "$(VAR_A)"),
        ("$$$(VAR_A)", "$A"),
        ("$$$$(VAR_A)", "$$(VAR_A)"),
        ("$$", "$"),
        ("$", "$"),
        ("$VAR_A", "$VAR_A"),
        ("${VAR_A}", "${VAR_A}"),
        ("$(VAR_A", "$(VAR_A"),
        ("$()", "$()"),
        ("f000-$$VAR_A", "f000-$VAR_A"),
        ("$(VAR_A)$", "A$"),
        ("$(dotted.name)", "dot"),
    ],
)
def test_expansion_is_kubernetes(text: str, want: str) -> None:
    env = {"VAR_A": "A", "VAR_B": "B", "VAR_EMPTY": "", "dotted.name": "dot"}
    assert expand(text, env) == want


def test_env_expands_from_earlier_entries_and_the_platforms_variables_only(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SECRET_OF_THE_HOST", "leaked")
    declared = (
        ("CACHE", "$(TORPOR_HOME)/cache"),
        ("LATER_FIRST", "$(LATE)"),  # defined after it: stays literal, as in Kubernetes
        ("LATE", "late"),
        ("BOTH", "$(CACHE):$(LATE)"),
        ("HOST", "$(SECRET_OF_THE_HOST)$(HOME)$(PATH)"),  # the host's env is never a source
        ("ESCAPED", "$$(CACHE)"),
    )
    env = container_env(declared, {"TORPOR_HOME": "/srv/torpor"})
    assert env == {
        "CACHE": "/srv/torpor/cache",
        "LATER_FIRST": "$(LATE)",
        "LATE": "late",
        "BOTH": "/srv/torpor/cache:late",
        "HOST": "$(SECRET_OF_THE_HOST)$(HOME)$(PATH)",
        "ESCAPED": "$(CACHE)",
        "TORPOR_HOME": "/srv/torpor",
    }


def _service(name: str, min_scale: int, *, routed: bool = True) -> ServiceSpec:
    doc = with_annotations(base(), **{"autoscaling.knative.dev/min-scale": str(min_scale)})
    doc["metadata"]["name"] = name
    service = apply_manifest(parse(doc), None)
    if not routed:
        service = replace(service, traffic=())
    return service


def test_total_counts_replicas_held_at_rest_by_routed_revisions() -> None:
    services = [_service("a", 16), _service("b", 3), _service("c", 16, routed=False)]
    assert floor_replicas(services) == 19


def test_a_deploy_raising_the_total_above_the_cap_is_refused() -> None:
    limits = ScaleLimits(per_revision=16, total=20)
    before = [_service("a", 16)]
    check_total(before, [*before, _service("b", 4)], limits)  # 20: at the cap is fine
    with pytest.raises(ManifestError) as info:
        check_total(before, [*before, _service("b", 5)], limits)
    assert info.value.field == ann("autoscaling.knative.dev/min-scale")
    assert "21 replicas" in info.value.reason and "total of 20" in info.value.reason
    # Over the cap already (a lower cap after a restart): a deploy that does not raise it passes.
    over = [_service("a", 16), _service("b", 16)]
    check_total(over, [_service("a", 10), over[1]], limits)


def test_limits_are_consistent() -> None:
    assert ScaleLimits() == ScaleLimits(DEFAULT_MAX_SCALE_PER_REVISION, DEFAULT_MAX_REPLICAS_TOTAL)
    with pytest.raises(ValueError, match="at least 1"):
        ScaleLimits(per_revision=0)
    with pytest.raises(ValueError, match="at least the per-revision cap"):
        ScaleLimits(per_revision=8, total=4)


def test_a_revision_kept_from_before_a_lower_cap_is_clamped() -> None:
    revision = _service("a", 12).latest_revision
    unbounded = replace(revision, autoscaling=replace(revision.autoscaling, max_scale=0))
    clamped = clamp_revision(unbounded, ScaleLimits(per_revision=4, total=8)).autoscaling
    assert (clamped.min_scale, clamped.max_scale, clamped.initial_scale) == (4, 4, 1)
    assert clamp_revision(revision, ScaleLimits()) is revision  # within the caps: untouched
