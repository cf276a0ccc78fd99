"""Which header and query-parameter names carry credentials: a rule, not a list of spellings.

A name carries a credential when, lower-cased and with ``-``/``_``/``.`` dropped, it contains one
of ``CREDENTIAL_WORDS`` (``X-Api-Key``, ``apiKey``, ``access_token``, ``x-goog-api-key``,
``client_secret``, ``Proxy-Authorization``, ``passwd``, ``X-Amz-Security-Token``, ``sig``-less
``signature``...), or is ``cookie``. The activator drops such query parameters and headers before
forwarding (``activator.auth``), and the runtime drops such query parameters before vLLM or its
access log sees them (``runtime.gate``). A false positive costs an odd parameter name a client
never needed on an inference route; a miss leaks a key into a replica's log.
"""

from __future__ import annotations

from urllib.parse import unquote_to_bytes

# The header the platform's own calls to a replica carry its credential in (``runtime.gate``).
# Its name carries a credential by the rule below, so the activator never forwards a client's.
PLATFORM_HEADER = "X-Torpor-Platform-Token"

CREDENTIAL_WORDS = (
    "key",
    "token",
    "secret",
    "auth",
    "pass",
    "pwd",
    "credential",
    "signature",
    "session",
    "cookie",
)


def is_credential_name(name: str) -> bool:
    squashed = name.strip().lower().replace("-", "").replace("_", "").replace(".", "")
    return any(word in squashed for word in CREDENTIAL_WORDS)


def _param_name(part: bytes) -> str:
    name = part.split(b"=", 1)[0]
    if b"%" in name or b"+" in name:
        # Twice: a replica's framework may decode once more (``%2561pi_key``).
        name = unquote_to_bytes(unquote_to_bytes(name.replace(b"+", b" ")))
    return name.decode("latin-1")


def strip_credential_params(query: bytes) -> bytes:
    """``query`` without the parameters whose names carry credentials; the rest byte-exact."""
    if not query:
        return query
    return b"&".join(p for p in query.split(b"&") if not is_credential_name(_param_name(p)))
