"""Every YAML under manifests/ is valid for the cluster it targets.

- Kubernetes kinds: ``kubernetes-validate`` in strict mode (unknown fields are errors) against the
  Kubernetes 1.30 OpenAPI schemas it bundles (``K8S_VERSION``).
- Knative kinds: the ``openAPIV3Schema`` of Knative Serving's own CRDs
  (tests/data/knative-crds/, source in SOURCE.txt), plus the check the API server makes on top of
  JSON Schema: a field the schema does not declare is an error unless the schema preserves
  unknown fields (Knative does so where a feature flag governs a field).
- Kustomizations: every listed resource exists and every YAML beside it is listed.

Nothing here talks to a cluster; it is what can be checked without one.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
MANIFESTS = ROOT / "manifests"
CRDS = ROOT / "tests" / "data" / "knative-crds"
K8S_VERSION = "1.30.0"
KNATIVE_GROUPS = {
    "serving.knative.dev",
    "autoscaling.internal.knative.dev",
    "networking.internal.knative.dev",
}
KUSTOMIZE_API = "kustomize.config.k8s.io/v1beta1"

Json = dict[str, Any]


def _crd_schemas() -> dict[tuple[str, str, str], Json]:
    """(group, version, kind) -> openAPIV3Schema, from Knative's CRDs."""
    out: dict[tuple[str, str, str], Json] = {}
    for path in sorted(CRDS.glob("*.yaml")):
        for crd in yaml.safe_load_all(path.read_text()):
            if not crd or crd.get("kind") != "CustomResourceDefinition":
                continue
            spec = crd["spec"]
            for version in spec["versions"]:
                key = (spec["group"], version["name"], spec["names"]["kind"])
                out[key] = version["schema"]["openAPIV3Schema"]
    return out


SCHEMAS = _crd_schemas()


def unknown_fields(schema: Json, value: Any, path: str = "") -> list[str]:
    """Fields the API server would reject as unknown (strict field validation)."""
    if schema.get("x-kubernetes-preserve-unknown-fields"):
        return []
    if isinstance(value, dict):
        props = schema.get("properties")
        extra = schema.get("additionalProperties")
        found: list[str] = []
        for key, item in value.items():
            here = f"{path}.{key}" if path else str(key)
            if props is not None and key in props:
                found += unknown_fields(props[key], item, here)
            elif isinstance(extra, dict):
                found += unknown_fields(extra, item, here)
            elif props is not None:
                found.append(here)
        return found
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        return [
            f
            for i, item in enumerate(value)
            for f in unknown_fields(schema["items"], item, f"{path}[{i}]")
        ]
    return []


def validate_knative(doc: Json) -> None:
    group, _, version = doc["apiVersion"].partition("/")
    schema = SCHEMAS.get((group, version, doc["kind"]))
    if schema is None:
        raise AssertionError(f"no Knative CRD for {doc['apiVersion']} {doc['kind']}")
    jsonschema.Draft7Validator(schema).validate(doc)
    unknown = unknown_fields(schema, doc)
    if unknown:
        raise jsonschema.ValidationError(f"unknown fields: {', '.join(unknown)}")


def validate_kubernetes(doc: Json) -> None:
    kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def validate_kustomization(doc: Json, directory: Path) -> None:
    listed = [str(r) for r in doc.get("resources") or ()]
    missing = [r for r in listed if not (directory / r).exists()]
    assert not missing, f"kustomization lists missing resources: {missing}"
    beside = {p.name for p in directory.glob("*.yaml") if p.name not in {"kustomization.yaml"}} | {
        p.name for p in directory.glob("*.yml")
    }
    unlisted = sorted(beside - set(listed))
    assert not unlisted, f"YAML files not in the kustomization: {unlisted}"


def validate_document(doc: Json, path: Path) -> None:
    api_version = str(doc.get("apiVersion", ""))
    if api_version == KUSTOMIZE_API:
        validate_kustomization(doc, path.parent)
    elif api_version.partition("/")[0] in KNATIVE_GROUPS:
        validate_knative(doc)
    else:
        validate_kubernetes(doc)


def manifest_documents() -> Iterator[tuple[Path, int, Json]]:
    for path in sorted(MANIFESTS.rglob("*.y*ml")):
        for i, doc in enumerate(yaml.safe_load_all(path.read_text())):
            if doc:
                yield path, i, doc


DOCUMENTS = list(manifest_documents())


def test_the_knative_crds_and_their_source_are_in_the_repo() -> None:
    assert (CRDS / "SOURCE.txt").read_text().strip()
    assert ("serving.knative.dev", "v1", "Service") in SCHEMAS
    assert ("autoscaling.internal.knative.dev", "v1alpha1", "PodAutoscaler") in SCHEMAS


def test_manifests_cover_the_platform_and_examples() -> None:
    kinds = {(p.parent.name, d["kind"]) for p, _, d in DOCUMENTS}
    assert ("platform", "Kustomization") in kinds
    assert ("platform", "DaemonSet") in kinds
    assert ("platform", "PodDisruptionBudget") in kinds
    assert ("examples", "Service") in kinds


@pytest.mark.parametrize(
    ("path", "index", "doc"),
    DOCUMENTS,
    ids=[f"{p.relative_to(MANIFESTS)}#{i}:{d.get('kind')}" for p, i, d in DOCUMENTS],
)
def test_manifest_validates(path: Path, index: int, doc: Json) -> None:
    validate_document(doc, path)


def _example(name: str) -> Json:
    doc = yaml.safe_load((MANIFESTS / "examples" / name).read_text())
    assert isinstance(doc, dict)
    return doc


def _platform(name: str, kind: str) -> Json:
    for doc in yaml.safe_load_all((MANIFESTS / "platform" / name).read_text()):
        if doc and doc["kind"] == kind:
            return copy.deepcopy(doc)
    raise AssertionError(f"no {kind} in {name}")


def test_a_misspelt_knative_field_fails() -> None:
    doc = _example("llama3-8b-gpu.yaml")
    container = doc["spec"]["template"]["spec"]["containers"][0]
    container["resourcez"] = container.pop("resources")
    with pytest.raises(jsonschema.ValidationError, match="resourcez"):
        validate_knative(doc)


def test_a_wrongly_typed_knative_field_fails() -> None:
    doc = _example("llama3-8b-gpu.yaml")
    doc["spec"]["traffic"][0]["percent"] = "90"
    with pytest.raises(jsonschema.ValidationError):
        validate_knative(doc)


def test_a_broken_kubernetes_manifest_fails() -> None:
    deployment = _platform("autoscaler.yaml", "Deployment")
    deployment["spec"]["replicas"] = "two"
    with pytest.raises(kubernetes_validate.ValidationError):
        validate_kubernetes(deployment)
    daemonset = _platform("cache-warmer.yaml", "DaemonSet")
    daemonset["spec"]["template"]["spec"]["nodeSelectr"] = {"a": "b"}
    with pytest.raises(kubernetes_validate.ValidationError):
        validate_kubernetes(daemonset)


def test_a_kustomization_listing_a_missing_file_fails(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("apiVersion: v1\nkind: Namespace\nmetadata: {name: a}\n")
    with pytest.raises(AssertionError, match=r"missing resources: \['b.yaml'\]"):
        validate_kustomization({"resources": ["a.yaml", "b.yaml"]}, tmp_path)
    (tmp_path / "c.yaml").write_text("")
    with pytest.raises(AssertionError, match="not in the kustomization"):
        validate_kustomization({"resources": ["a.yaml"]}, tmp_path)


def test_autoscaler_rbac_grants_only_what_the_controller_calls() -> None:
    role = _platform("rbac.yaml", "ClusterRole")
    granted = {
        (group, resource, verb)
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }
    assert ("", "pods", "delete") not in granted
    assert ("apps", "deployments", "update") not in granted
    assert ("apps", "deployments/scale", "patch") in granted
    assert ("autoscaling.internal.knative.dev", "podautoscalers/status", "update") in granted
    # The SKS's owner reference sets blockOwnerDeletion, which the OwnerReferencesPermission-
    # Enforcement admission plugin allows only with update on the owner's finalizers.
    from knative.status import sks_body

    pa = {"metadata": {"name": "r", "namespace": "n", "uid": "u"}, "spec": {"scaleTargetRef": {}}}
    [owner] = sks_body(pa, "Proxy")["metadata"]["ownerReferences"]
    if owner.get("blockOwnerDeletion"):
        group = owner["apiVersion"].split("/")[0]
        assert (group, "podautoscalers/finalizers", "update") in granted
    assert not any(verb in {"*", "delete", "deletecollection"} for _, _, verb in granted)


@pytest.mark.parametrize("name", sorted(p.name for p in (MANIFESTS / "examples").glob("*.yaml")))
def test_examples_are_also_valid_for_torpor_deploy(name: str) -> None:
    """One deploy format: the embedded platform's reader accepts every example as well."""
    from torpor.manifest.parse import parse_service

    manifest = parse_service((MANIFESTS / "examples" / name).read_text(), source=name)
    assert manifest.template.autoscaling.autoscaler_class.endswith(".torpor.dev")
