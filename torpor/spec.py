"""The validated, frozen model of what users deploy.

Built once at the edge (``torpor.manifest`` parses a Knative Service into these); the rest of the
code never sees raw manifest dicts. Everything here is plain data: serialisable with
``torpor.codec`` so the same objects travel over the bus and persist in the state directory.
"""

from __future__ import annotations

from dataclasses import dataclass, field

DEFAULT_AUTOSCALER_CLASS = "llm.torpor.dev"
"""torpor's PodAutoscaler class. A class ending in ``.knative.dev`` is rejected by Knative."""

DEFAULT_TIMEOUT_S = 300.0
"""Knative's default ``timeoutSeconds`` for a revision."""

DEFAULT_QUEUE_DEPTH = 256
"""Requests held per revision while no replica has room (``torpor.dev/queue-depth``)."""


@dataclass(frozen=True, slots=True, order=True)
class RevisionRef:
    """A revision's identity. Revision names are unique within a namespace."""

    namespace: str
    name: str

    @property
    def key(self) -> str:
        """The string form used as a key on the bus and in metrics: ``namespace/name``."""
        return f"{self.namespace}/{self.name}"

    @classmethod
    def parse(cls, key: str) -> RevisionRef:
        namespace, sep, name = key.partition("/")
        if not sep or not namespace or not name:
            raise ValueError(f"revision key must be 'namespace/name', got {key!r}")
        return cls(namespace, name)

    def __str__(self) -> str:
        return self.key


@dataclass(frozen=True, slots=True)
class AutoscalingSpec:
    """Per-revision autoscaling settings.

    The ``autoscaling.knative.dev/*`` annotations keep their Knative meaning; settings Knative does
    not have come from ``torpor.dev/*``. Defaults follow Knative's KPA where they fit an LLM
    replica and say so where they differ.
    """

    autoscaler_class: str = DEFAULT_AUTOSCALER_CLASS
    # What a replica's load is measured in: "concurrency" (in-flight requests, Knative's KPA) or
    # "llm" (vLLM's running + waiting, guarded by KV-cache usage).
    metric: str = "llm"
    # Requests in flight per replica the autoscaler aims for: Knative's 100. vLLM batches every
    # running sequence into each step (up to max_num_seqs, 256 by default), so a request count
    # is rarely what fills an LLM replica; its KV cache is, and for metric "llm" the KV-cache
    # guard lowers the effective target to what the cache holds (autoscaler/decide.py). A lower
    # default made the measured replica cost 3x the replica-seconds of Knative's KPA.
    target: float = 100.0
    target_utilization: float = 0.7
    min_scale: int = 0
    # 0 means no upper bound, as in Knative; a manifest torpor parses carries the platform's cap
    # per revision instead (torpor.manifest.limits), so the autoscaler never runs more.
    max_scale: int = 0
    initial_scale: int = 1
    activation_scale: int = 1
    window_s: float = 60.0
    panic_window_percentage: float = 10.0
    panic_threshold_percentage: float = 200.0
    scale_down_delay_s: float = 0.0
    scale_to_zero_grace_s: float = 30.0
    scale_to_zero_retention_s: float = 0.0
    max_scale_up_rate: float = 1000.0
    max_scale_down_rate: float = 2.0
    # KV-cache pressure guard: average vLLM kv_cache_usage_perc above this counts as a full replica.
    kv_cache_target: float = 0.8
    # The suspended tier (issue 17): a ready replica that has had no work for ``suspend_after_s``
    # is frozen in place (it keeps its memory, its model loaded, and on Kubernetes its GPU), and
    # a frozen one is stopped after ``stop_suspended_after_s``; a request wakes it in
    # milliseconds instead of a cold start. 0 turns suspension off, the default: a frozen
    # replica saves CPU (or a GPU's compute), never memory, so parking every idle revision on a
    # node would fill its memory with models nobody calls; a revision opts in where its memory is
    # cheaper than its cold start. Suspended replicas leave only by their own window, not by the
    # scale-to-zero of ``decide`` (which counts them as idle capacity).
    suspend_after_s: float = 0.0
    stop_suspended_after_s: float = 300.0
    # The learned keep-alive (issue 24, autoscaler/keepalive.py): once a revision has
    # ``keepalive_min_gaps`` idle gaps in its history, how long its last replica stays (and
    # whether it is pre-warmed before a predicted request) follows them instead of the window
    # and grace rule; until then, and with ``keepalive="fixed"``, Knative's rule as above.
    # ``keepalive_wait_value_s``: what an over-target wait is worth in accelerator-seconds;
    # ``keepalive_cold_start_s``: the revision's cold start as the policy prices it.
    keepalive: str = "learned"
    keepalive_wait_value_s: float = 60.0
    keepalive_cold_start_s: float = 17.0
    keepalive_prewarm: bool = True
    keepalive_min_gaps: int = 8


@dataclass(frozen=True, slots=True)
class LivenessProbe:
    """The container's ``livenessProbe``: what the embedded platform checks on a ready replica.

    Kubernetes' defaults. ``path`` None is a ``tcpSocket`` probe (the port accepts a connection);
    otherwise an HTTP GET of ``path`` that must answer 2xx or 3xx. After ``failure_threshold``
    failures in a row the replica is FAILED and replaced, as the kubelet restarts the container.
    """

    path: str | None = "/"
    period_s: float = 10.0
    timeout_s: float = 1.0
    failure_threshold: int = 3
    initial_delay_s: float = 0.0


@dataclass(frozen=True, slots=True)
class RuntimeSpec:
    """What a replica runs: a model source resolved through the weight cache, and vLLM's flags.

    Taken from the revision's single container: ``--model`` (and ``--served-model-name``) are the
    runtime's own; every other argument passes to vLLM unchanged.
    """

    image: str
    model: str
    served_model_name: str | None = None
    engine_args: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    container_port: int = 8080
    liveness: LivenessProbe | None = None  # none declared: nothing probes a ready replica


DEFAULT_LORA_IDLE_WINDOW_S = 60.0
"""How long a LoRA adapter stays loaded on a replica with no request for it
(``torpor.dev/lora-idle-window``)."""


@dataclass(frozen=True, slots=True)
class AdapterSpec:
    """One LoRA adapter served on its base revision's replicas, called by its own model name.

    ``source`` is the adapter's directory as the manifest wrote it (``/models/<name>`` on the
    models volume, or a ``file://`` URI); the runtime copies it through the weight cache."""

    name: str
    source: str


@dataclass(frozen=True, slots=True)
class LoraSpec:
    """The adapters of a revision (``torpor.dev/lora-adapters``) and vLLM's LoRA limits."""

    adapters: tuple[AdapterSpec, ...]
    idle_window_s: float = DEFAULT_LORA_IDLE_WINDOW_S
    max_loras: int = 1  # vLLM's --max-loras: adapters one replica holds at once
    max_lora_rank: int = 16  # vLLM's --max-lora-rank

    def adapter(self, name: str) -> AdapterSpec | None:
        return next((a for a in self.adapters if a.name == name), None)


@dataclass(frozen=True, slots=True)
class RevisionSpec:
    """One immutable revision of a service: a snapshot of ``spec.template``."""

    ref: RevisionRef
    service: str
    generation: int
    runtime: RuntimeSpec
    autoscaling: AutoscalingSpec = field(default_factory=AutoscalingSpec)
    container_concurrency: int = 0  # 0 means no hard per-replica limit, as in Knative
    timeout_s: float = DEFAULT_TIMEOUT_S
    queue_depth: int = DEFAULT_QUEUE_DEPTH
    template_digest: str = ""  # sha256 of the normalised template; same digest, same revision
    api_keys_secret: str | None = None  # reserved for per-service API keys
    lora: LoraSpec | None = None  # LoRA adapters served on this revision's replicas


@dataclass(frozen=True, slots=True)
class TrafficTarget:
    """One resolved entry of ``spec.traffic``: always names a concrete revision."""

    revision: str
    percent: int
    tag: str | None = None
    latest_revision: bool = False


@dataclass(frozen=True, slots=True)
class ServiceSpec:
    """A deployed service: every revision it has made and how traffic splits across them."""

    namespace: str
    name: str
    generation: int
    revisions: tuple[RevisionSpec, ...]
    traffic: tuple[TrafficTarget, ...]
    domain: str = "example.com"

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def latest_revision(self) -> RevisionSpec:
        return max(self.revisions, key=lambda r: r.generation)

    def revision(self, name: str) -> RevisionSpec | None:
        return next((r for r in self.revisions if r.ref.name == name), None)

    def routed_revisions(self) -> tuple[RevisionSpec, ...]:
        """Revisions that some traffic entry (by percent or by tag) can reach."""
        names = {t.revision for t in self.traffic}
        return tuple(r for r in self.revisions if r.ref.name in names)
