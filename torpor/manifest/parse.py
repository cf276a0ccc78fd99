"""Knative Service text -> ``ServiceManifest``: every rule, each error naming its field."""

from __future__ import annotations

import dataclasses
from typing import Any

from torpor.manifest.annotations import parse_template_annotations, reject_autoscaling_keys
from torpor.manifest.container import parse_container
from torpor.manifest.digest import template_digest
from torpor.manifest.errors import DOCUMENT, ManifestError
from torpor.manifest.fields import (
    child,
    expect_mapping,
    get_int,
    get_list,
    get_mapping,
    get_str,
    item,
    string_map,
)
from torpor.manifest.limits import DEFAULT_MAX_SCALE_PER_REVISION
from torpor.manifest.lora import parse_lora
from torpor.manifest.model import RevisionTemplate, ServiceManifest
from torpor.manifest.names import LABEL_MAX, check_dns1035_label, check_dns1123_label
from torpor.manifest.traffic import parse_traffic
from torpor.manifest.yaml_load import load_document
from torpor.spec import DEFAULT_TIMEOUT_S

API_VERSION = "serving.knative.dev/v1"
KIND = "Service"
DEFAULT_NAMESPACE = "default"
MAX_REVISION_TIMEOUT_S = 600
"""Knative's default ``max-revision-timeout-seconds`` (config-defaults)."""
MAX_CONTAINER_CONCURRENCY = 1000
"""Knative's default ``container-concurrency-max-limit`` (config-defaults)."""
# Revision names are <service>-00001: the service name leaves room for the suffix.
MAX_SERVICE_NAME = LABEL_MAX - len("-00001")


def parse_service(
    text: str | bytes,
    *,
    source: str = "<manifest>",
    max_timeout_s: int = MAX_REVISION_TIMEOUT_S,
    max_scale_limit: int = DEFAULT_MAX_SCALE_PER_REVISION,
) -> ServiceManifest:
    """Parse and validate one Knative Service manifest; raise ``ManifestError`` on anything bad.

    ``source`` (a file name) prefixes the error message. ``max_scale_limit`` is the platform's
    cap on replicas per revision (``torpor.manifest.limits``). Pure: no I/O, no clock.
    """
    try:
        doc = load_document(text)
        return dataclasses.replace(_service(doc, max_timeout_s, max_scale_limit), source=source)
    except ManifestError as e:
        raise e.with_source(source) from None


def _service(doc: Any, max_timeout_s: int, max_scale_limit: int) -> ServiceManifest:
    root = expect_mapping(doc, DOCUMENT)
    api_version = get_str(root, "apiVersion", "", required=True)
    if api_version != API_VERSION:
        raise ManifestError("apiVersion", f"must be {API_VERSION}, got {api_version!r}")
    kind = get_str(root, "kind", "", required=True)
    if kind != KIND:
        raise ManifestError("kind", f"must be {KIND} (a Knative Service), got {kind!r}")

    meta = get_mapping(root, "metadata", "", required=True)
    name = get_str(meta, "name", "metadata", required=True)
    assert name is not None
    check_dns1035_label(name, "metadata.name", max_len=MAX_SERVICE_NAME)
    namespace = get_str(meta, "namespace", "metadata") or DEFAULT_NAMESPACE
    check_dns1123_label(namespace, "metadata.namespace")
    string_map(meta.get("labels"), "metadata.labels")
    reject_autoscaling_keys(
        string_map(meta.get("annotations"), "metadata.annotations"), "metadata.annotations"
    )

    spec = get_mapping(root, "spec", "", required=True)
    template = _template(
        get_mapping(spec, "template", "spec", required=True), name, max_timeout_s, max_scale_limit
    )
    traffic = parse_traffic(get_list(spec, "traffic", "spec"), "spec.traffic", name)
    return ServiceManifest(namespace=namespace, name=name, template=template, traffic=traffic)


def _template(t: Any, service: str, max_timeout_s: int, max_scale_limit: int) -> RevisionTemplate:
    path = "spec.template"
    meta = get_mapping(t, "metadata", path)
    meta_path = child(path, "metadata")
    revision_name = get_str(meta, "name", meta_path)
    if revision_name is not None:
        field = child(meta_path, "name")
        check_dns1035_label(revision_name, field)
        # Knative's rule: a named revision carries its service's name as a prefix.
        if not revision_name.startswith(f"{service}-"):
            raise ManifestError(field, f"{revision_name!r} must start with {service + '-'!r}")
    string_map(meta.get("labels"), child(meta_path, "labels"))
    annotations_path = child(meta_path, "annotations")
    annotations = parse_template_annotations(
        string_map(meta.get("annotations"), annotations_path),
        annotations_path,
        max_scale_limit=max_scale_limit,
    )

    pod_path = child(path, "spec")
    pod = get_mapping(t, "spec", path, required=True)
    containers_path = child(pod_path, "containers")
    runtime = parse_container(get_list(pod, "containers", pod_path, required=True), containers_path)
    lora, engine_args = parse_lora(
        string_map(meta.get("annotations"), annotations_path),
        annotations_path,
        runtime.engine_args,
        child(item(containers_path, 0), "args"),
    )
    runtime = dataclasses.replace(runtime, engine_args=engine_args)
    concurrency = get_int(
        pod, "containerConcurrency", pod_path, low=0, high=MAX_CONTAINER_CONCURRENCY
    )
    timeout = get_int(pod, "timeoutSeconds", pod_path, low=1, high=max_timeout_s)
    refuse_unhonoured_timeouts(pod, pod_path)

    template = RevisionTemplate(
        runtime=runtime,
        autoscaling=annotations.autoscaling,
        name=revision_name,
        container_concurrency=concurrency or 0,
        timeout_s=DEFAULT_TIMEOUT_S if timeout is None else float(timeout),
        queue_depth=annotations.queue_depth,
        api_keys_secret=annotations.api_keys_secret,
        lora=lora,
    )
    return dataclasses.replace(template, digest=template_digest(template))


# Knative's other two request timeouts (serving.knative.dev/v1 RevisionSpec). torpor's activator
# bounds a request by timeoutSeconds alone, so these would be accepted and silently not
# honoured: refused instead, naming the field (issue 22, item 4).
UNHONOURED_TIMEOUTS = ("responseStartTimeoutSeconds", "idleTimeoutSeconds")


def refuse_unhonoured_timeouts(pod: Any, pod_path: str) -> None:
    for name in UNHONOURED_TIMEOUTS:
        if name in pod:
            raise ManifestError(
                child(pod_path, name),
                "is not supported: torpor's activator bounds a request by timeoutSeconds alone"
                " (remove it, or express the bound as timeoutSeconds)",
            )
