"""The routes a client may reach on a replica: an allow-list, shared by both doors (issue 23).

vLLM mounts far more than inference: adapter loading (``/v1/load_lora_adapter``, SageMaker's
``/adapters``), ``/invocations``, ``/metrics``, ``/load``, ``/version``, ``/docs``,
``/openapi.json``, sleep, profiling, weight updates, dev-mode RPC... and every release adds some.
So nothing is closed by name: a client reaches only the routes below, and every other route of a
replica is the platform's (the runtime's ``runtime.gate`` demands the replica's platform
credential for it; the activator refuses it with 403 ``platform_endpoint`` before any replica is
woken). A route vLLM adds tomorrow is closed until it is listed here.

The list is OpenAI's inference API (and the Anthropic/Cohere-style ones vLLM serves beside it) as
vLLM 0.32 mounts it, plus the replica's health (``/health``, SageMaker's ``/ping``) for probes.
The runtime opens only those of them that the replica actually mounts (``runtime.gate``).
"""

from __future__ import annotations

import re

# Health and readiness: answered by the replica without a credential (the kubelet's and Knative's
# probes, the embedded actuator's readiness wait). Not forwarded by the activator, which has its
# own ``/healthz``; a client never needs a replica's.
HEALTH_PATHS = frozenset({"/health", "/ping"})

# The inference routes a client may call, exactly as vLLM's router matches them.
INFERENCE_PATHS = frozenset(
    {
        "/v1/models",
        "/v1/completions",
        "/v1/chat/completions",
        "/v1/embeddings",
        "/v1/responses",
        "/v1/messages",
        "/v1/messages/count_tokens",
        "/v1/rerank",
        "/v2/rerank",
        "/v1/score",
        "/rerank",
        "/score",
        "/classify",
        "/pooling",
        "/tokenize",
        "/detokenize",
        "/v1/audio/transcriptions",
        "/v1/audio/translations",
    }
)
# Of those, the ones whose body is multipart (the model is a form field, not JSON).
MULTIPART_PATHS = frozenset({"/v1/audio/transcriptions", "/v1/audio/translations"})

# Routes with a path parameter, as vLLM's router writes them (``{response_id}``): a stored
# response's retrieval and cancellation; OpenAI's model retrieval (vLLM 0.32 does not mount it,
# so a replica answers it 403; the activator forwards it for a replica that does).
INFERENCE_TEMPLATES = frozenset(
    {
        "/v1/models/{model}",
        "/v1/responses/{response_id}",
        "/v1/responses/{response_id}/cancel",
    }
)

_PARAM = re.compile(r"\{[^/{}]+\}")


def template_pattern(template: str) -> re.Pattern[str]:
    """A router path with ``{name}`` parameters as a regex over one decoded path: a parameter
    is one non-empty segment (Starlette's default ``str`` convertor)."""
    parts = _PARAM.split(template)
    return re.compile("[^/]+".join(re.escape(p) for p in parts) + r"\Z")


_TEMPLATE_PATTERNS = tuple(template_pattern(t) for t in sorted(INFERENCE_TEMPLATES))


def normal_path(path: str) -> str:
    """``path`` with empty segments dropped, as a route check must read it (``//v1//models/``
    is ``/v1/models`` to a lenient router)."""
    return "/" + "/".join(s for s in path.split("/") if s)


def is_client_route(path: str) -> bool:
    """A decoded request path a client may have forwarded to a replica (health excluded)."""
    normal = normal_path(path)
    return normal in INFERENCE_PATHS or any(p.match(normal) for p in _TEMPLATE_PATTERNS)
