"""Kubernetes name rules the manifest's names must follow (they become hostnames and URLs)."""

from __future__ import annotations

import re

from torpor.manifest.errors import ManifestError

_DNS1035 = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
_DNS1123_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_DNS1123_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
LABEL_MAX = 63
SUBDOMAIN_MAX = 253


def check_dns1035_label(value: str, field: str, *, max_len: int = LABEL_MAX) -> str:
    """A DNS-1035 label: lower-case letters, digits and '-', starting with a letter."""
    if not value:
        raise ManifestError(field, "must not be empty")
    if len(value) > max_len:
        raise ManifestError(field, f"must be at most {max_len} characters, got {len(value)}")
    if not _DNS1035.fullmatch(value):
        raise ManifestError(
            field,
            f"{value!r} is not a DNS-1035 label (lower-case letters, digits and '-', "
            "starting with a letter and ending with a letter or digit)",
        )
    return value


def check_dns1123_label(value: str, field: str) -> str:
    if not value:
        raise ManifestError(field, "must not be empty")
    if len(value) > LABEL_MAX:
        raise ManifestError(field, f"must be at most {LABEL_MAX} characters, got {len(value)}")
    if not _DNS1123_LABEL.fullmatch(value):
        raise ManifestError(
            field,
            f"{value!r} is not a DNS-1123 label (lower-case letters, digits and '-', "
            "starting and ending with a letter or digit)",
        )
    return value


def check_dns1123_subdomain(value: str, field: str) -> str:
    if not value:
        raise ManifestError(field, "must not be empty")
    if len(value) > SUBDOMAIN_MAX or not _DNS1123_SUBDOMAIN.fullmatch(value):
        raise ManifestError(field, f"{value!r} is not a DNS-1123 subdomain")
    return value
