"""A test harness imitating Knative Serving's own controllers for one Service, over the emulator.

``apply_service`` writes what Knative's configuration, revision and route reconcilers would
create for a ``serving.knative.dev/v1`` Service manifest: the Revision (``<name>-00001``), its
PodAutoscaler (the template's annotations, so the class decides who scales it), the Deployment
(at the initial scale, with the pod template a ReplicaSet copies) and the Route with its resolved
traffic and URL. It is not Knative: no Configuration object, one revision, no webhook defaults
beyond the ones torpor reads. What it writes is what torpor's controller lists and watches.
"""

from __future__ import annotations

from typing import Any

import yaml

from harness.kube_emulator import KubeEmulator

Json = dict[str, Any]
PA = "apis/autoscaling.internal.knative.dev/v1alpha1"
SERVING = "apis/serving.knative.dev/v1"
APPS = "apis/apps/v1"


def apply_service(emulator: KubeEmulator, manifest: str, *, domain: str = "example.com") -> str:
    """Create the objects for the manifest's first revision; returns the revision's name."""
    service = yaml.safe_load(manifest)
    name = service["metadata"]["name"]
    namespace = service["metadata"].get("namespace", "default")
    template = service["spec"]["template"]
    annotations = dict((template.get("metadata") or {}).get("annotations") or {})
    annotations.setdefault("autoscaling.knative.dev/class", "kpa.autoscaling.knative.dev")
    spec = template["spec"]
    revision = f"{name}-00001"
    labels = {
        "serving.knative.dev/service": name,
        "serving.knative.dev/configuration": name,
        "serving.knative.dev/revision": revision,
        "serving.knative.dev/configurationGeneration": "1",
    }
    containers = [dict(c) | {"name": c.get("name") or "user-container"} for c in spec["containers"]]

    def meta(object_name: str) -> Json:
        return {
            "name": object_name,
            "namespace": namespace,
            "labels": dict(labels),
            "annotations": dict(annotations),
        }

    emulator.put(
        SERVING,
        "revisions",
        {
            "apiVersion": "serving.knative.dev/v1",
            "kind": "Revision",
            "metadata": meta(revision),
            "spec": {
                "containerConcurrency": int(spec.get("containerConcurrency") or 0),
                "timeoutSeconds": int(spec.get("timeoutSeconds") or 300),
                "containers": containers,
            },
        },
    )
    emulator.put(
        PA,
        "podautoscalers",
        {
            "apiVersion": "autoscaling.internal.knative.dev/v1alpha1",
            "kind": "PodAutoscaler",
            "metadata": meta(revision),
            "spec": {
                "protocolType": "http1",
                "reachability": "Reachable",
                "scaleTargetRef": {
                    "apiVersion": "apps/v1",
                    "kind": "Deployment",
                    "name": f"{revision}-deployment",
                },
            },
        },
    )
    initial = int(annotations.get("autoscaling.knative.dev/initial-scale", "1"))
    emulator.put(
        APPS,
        "deployments",
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": meta(f"{revision}-deployment"),
            "spec": {
                "replicas": initial,
                "template": {
                    "metadata": {"labels": dict(labels)},
                    "spec": {"containers": containers},
                },
            },
        },
    )
    emulator.put(
        SERVING,
        "routes",
        {
            "apiVersion": "serving.knative.dev/v1",
            "kind": "Route",
            "metadata": {
                "name": name,
                "namespace": namespace,
                "labels": {"serving.knative.dev/service": name},
            },
            "spec": {
                "traffic": [{"configurationName": name, "latestRevision": True, "percent": 100}]
            },
            "status": {
                "url": f"http://{name}.{namespace}.{domain}",
                "traffic": [{"revisionName": revision, "latestRevision": True, "percent": 100}],
            },
        },
    )
    return revision
