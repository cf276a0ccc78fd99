"""The OpenAI error shape every torpor HTTP answer uses for errors, in one place."""

from __future__ import annotations

from typing import Any


def openai_error(message: str, kind: str, code: str | None = None) -> dict[str, Any]:
    """``{"error": {"message", "type", "param", "code"}}`` as OpenAI clients parse it."""
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}
