"""The Kubernetes and Knative resource kinds the controller lists, watches and writes."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Resource:
    """A listable, watchable resource kind. ``group`` is empty for the core API."""

    group: str
    version: str
    plural: str

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version


PODAUTOSCALERS = Resource("autoscaling.internal.knative.dev", "v1alpha1", "podautoscalers")
SERVERLESSSERVICES = Resource("networking.internal.knative.dev", "v1alpha1", "serverlessservices")
REVISIONS = Resource("serving.knative.dev", "v1", "revisions")
ROUTES = Resource("serving.knative.dev", "v1", "routes")
DEPLOYMENTS = Resource("apps", "v1", "deployments")
PODS = Resource("", "v1", "pods")
ENDPOINTSLICES = Resource("discovery.k8s.io", "v1", "endpointslices")
