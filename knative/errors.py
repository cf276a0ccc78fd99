"""Errors from the Kubernetes API, as the controller sees them (no client types leak out)."""

from __future__ import annotations

CONFLICT = 409
GONE = 410
NOT_FOUND = 404
ALREADY_EXISTS = 409


class KubeError(Exception):
    """A non-2xx answer from the API server (``status`` 0: the request never got one)."""

    def __init__(self, status: int, reason: str = "", body: str = "") -> None:
        super().__init__(f"{status} {reason}: {body[:300]}")
        self.status = status
        self.reason = reason
        self.body = body


class WatchExpired(Exception):
    """The watch's resourceVersion is too old (410 Gone): relist, then watch again."""


class NotLeader(Exception):
    """This autoscaler replica does not hold the Lease, so it must not write: the standby refuses
    to act rather than acting silently or silently doing nothing."""
