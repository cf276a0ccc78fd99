"""The Knative platform: ``python -m knative``, the autoscaler and PodAutoscaler controller on
Kubernetes (the controller, the Knative actuator, the demand poller, the Lease, the one client
module that imports ``kubernetes``). It wires the autoscaler's loop to the cluster; the embedded
platform (``embedded/``) never imports it, nor it the embedded platform (``docs/architecture.md``).
"""
