"""Go's ``time.ParseDuration`` format, which Knative's duration annotations use ("30s", "1m30s")."""

from __future__ import annotations

import re

_UNITS = {
    "ns": 1e-9,
    "us": 1e-6,
    "\u00b5s": 1e-6,  # micro sign
    "\u03bcs": 1e-6,  # Greek mu
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}
_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|\u00b5s|\u03bcs|ms|s|m|h)")
_MAX_LEN = 64  # a longer "duration" is noise, not a setting


def parse_go_duration(text: str) -> float:
    """Seconds in ``text``; raises ValueError with Go's wording on anything Go would reject."""
    if len(text) > _MAX_LEN:
        raise ValueError("too long to be a duration")
    s = text
    sign = 1.0
    if s[:1] in ("+", "-"):
        sign = -1.0 if s[0] == "-" else 1.0
        s = s[1:]
    if s == "0":
        return 0.0
    if not s:
        raise ValueError(f"invalid duration {text!r}")
    total = 0.0
    pos = 0
    while pos < len(s):
        m = _PART.match(s, pos)
        if m is None:
            if re.match(r"(\d+(?:\.\d*)?|\.\d+)", s[pos:]):
                raise ValueError(
                    f"missing or unknown unit in duration {text!r} (use ns, us, ms, s, m, h)"
                )
            raise ValueError(f"invalid duration {text!r}")
        total += float(m.group(1)) * _UNITS[m.group(2)]
        pos = m.end()
    return sign * total
