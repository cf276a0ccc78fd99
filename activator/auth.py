"""Per-service API keys, checked by the activator before a request is held or forwarded.

A revision opts in with the annotation ``torpor.dev/api-keys-secret: NAME``; its keys live in the
secret ``NAME`` of the revision's namespace, one key per line (blank lines and ``#`` comments are
skipped). Clients send ``Authorization: Bearer <key>``, which every OpenAI client does with its
``api_key``. The key is checked against sha256 digests in constant time, then removed from the
forwarded request, so it never reaches the replica; it is never logged or echoed in an error.

Where keys come from is a narrow seam (``KeyStore``). ``FileKeyStore`` reads
``<root>/<namespace>/<NAME>``: a file of keys (the embedded platform, under the state directory)
or a directory of files, which is how Kubernetes mounts a Secret (one file per data key; the
``..data`` links it swaps on update are skipped). It re-reads a secret when it changes on disk,
so keys rotate without a restart.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from activator.errors import ActivatorError
from torpor.credentials import is_credential_name, strip_credential_params
from torpor.spec import RevisionSpec

Headers = list[tuple[bytes, bytes]]

# Namespaces and secret names are Kubernetes names; anything else could walk out of the root.
_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")
_MAX_SECRET_BYTES = 1024 * 1024


class Unauthorized(ActivatorError):
    """No key, or not one of the service's keys. OpenAI answers the same case with this code."""

    status = 401
    type = "invalid_request_error"
    code = "invalid_api_key"

    def headers(self) -> list[tuple[bytes, bytes]]:
        return [(b"www-authenticate", b'Bearer realm="torpor"')]


class KeysUnavailable(ActivatorError):
    """The service requires keys but they cannot be read: fail closed, and say so."""

    status = 503
    type = "server_error"
    code = "api_keys_unavailable"


class KeyStoreError(Exception):
    """A secret is missing or unreadable; the message names it, never its contents."""


class KeyStore(Protocol):
    """sha256 digests of the keys in one secret."""

    def digests(self, namespace: str, name: str) -> frozenset[bytes]:
        """Raises ``KeyStoreError`` when the secret cannot be read."""
        ...


def digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8")).digest()


def parse_keys(text: str) -> frozenset[bytes]:
    keys = (line.strip() for line in text.splitlines())
    return frozenset(digest(k) for k in keys if k and not k.startswith("#"))


@dataclass(frozen=True, slots=True)
class _Cached:
    signature: tuple[tuple[str, int, int, int], ...]
    digests: frozenset[bytes]


class FileKeyStore:
    """Secrets as files under ``root``: ``<root>/<namespace>/<name>`` (a file or a directory).

    Each lookup stats the secret (a few syscalls on a small local file) and re-reads it only when
    its inode, size or modification time changed.
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._cache: dict[tuple[str, str], _Cached] = {}

    def digests(self, namespace: str, name: str) -> frozenset[bytes]:
        if not _NAME.match(namespace) or not _NAME.match(name):
            raise KeyStoreError(f"invalid secret reference {namespace}/{name}"[:300])
        path = self.root / namespace / name
        try:
            files = self._files(path)
            signature = tuple(_signature(f) for f in files)
        except OSError as e:
            raise KeyStoreError(f"secret {namespace}/{name} cannot be read: {e.strerror}") from e
        cached = self._cache.get((namespace, name))
        if cached is not None and cached.signature == signature:
            return cached.digests
        digests: frozenset[bytes] = frozenset()
        try:
            for f in files:
                with f.open("rb") as handle:
                    data = handle.read(_MAX_SECRET_BYTES + 1)
                if len(data) > _MAX_SECRET_BYTES:
                    raise KeyStoreError(f"secret {namespace}/{name} is larger than 1 MiB")
                digests |= parse_keys(data.decode("utf-8", "replace"))
        except OSError as e:
            raise KeyStoreError(f"secret {namespace}/{name} cannot be read: {e.strerror}") from e
        self._cache[(namespace, name)] = _Cached(signature, digests)
        return digests

    @staticmethod
    def _files(path: Path) -> list[Path]:
        mode = os.stat(path).st_mode
        if not stat.S_ISDIR(mode):
            return [path]
        return sorted(p for p in path.iterdir() if not p.name.startswith(".") and p.is_file())


def _signature(path: Path) -> tuple[str, int, int, int]:
    st = os.stat(path)  # follows links: a swapped Kubernetes ..data link shows as a new inode
    return (path.name, st.st_ino, st.st_size, st.st_mtime_ns)


def bearer(headers: Headers) -> str | None:
    """The token of the one ``Authorization: Bearer`` header; None if absent or ambiguous."""
    values = [v for n, v in headers if n == b"authorization"]
    if len(values) != 1:
        return None
    scheme, _, token = values[0].decode("latin-1").strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return None
    return token


def matches(token: str, digests: frozenset[bytes]) -> bool:
    """Constant time in the token: every digest is compared, with no early exit."""
    presented = digest(token)
    found = False
    for d in digests:
        found |= hmac.compare_digest(presented, d)
    return found


def authorize(store: KeyStore | None, revision: RevisionSpec, headers: Headers) -> Headers:
    """The request's headers to forward, or ``Unauthorized``/``KeysUnavailable``.

    A revision without ``api_keys_secret`` is open: its headers pass unchanged. Otherwise the
    ``Authorization`` header must carry one of the secret's keys, and it is removed.
    """
    secret = revision.api_keys_secret
    if not secret:
        return strip_credential_headers(headers, keep_authorization=True)
    namespace = revision.ref.namespace
    if store is None:
        raise KeysUnavailable(
            f"service {revision.service!r} requires API keys, but this activator has no key store"
        )
    try:
        digests = store.digests(namespace, secret)
    except KeyStoreError as e:
        raise KeysUnavailable(
            f"service {revision.service!r} requires API keys, but they cannot be read: {e}"
        ) from None
    token = bearer(headers)
    if token is None:
        raise Unauthorized(
            f"service {revision.service!r} requires an API key: "
            "send it as 'Authorization: Bearer <key>'"
        )
    if not matches(token, digests):
        raise Unauthorized(f"the API key is not valid for service {revision.service!r}")
    return strip_credential_headers(headers, keep_authorization=False)


# Query parameters and headers that carry credentials are dropped before forwarding, by the rule of
# ``torpor.credentials`` (a name containing key, token, secret, auth, pass, credential, signature,
# session or cookie, case-insensitively, after percent-decoding), not by a list of spellings:
# forwarded, a replica would log them with the request line (vLLM's access log does) or pass
# them on. Documented in README's Reliability section.


def strip_credentials(query: bytes) -> bytes:
    """``query`` without its credential parameters; the rest byte-exact."""
    return strip_credential_params(query)


def strip_credential_headers(headers: Headers, *, keep_authorization: bool) -> Headers:
    """``headers`` without those whose names carry credentials (``X-Api-Key``, ``Cookie``,
    ``Proxy-Authorization``, ``X-Torpor-Platform-Token``...). ``Authorization`` stays only for a
    service without torpor's keys, whose replica may check its own (vLLM's ``--api-key``)."""
    return [
        (n, v) for n, v in headers
        if not is_credential_name(n.decode("latin-1"))
        or (keep_authorization and n.lower() == b"authorization")
    ]
