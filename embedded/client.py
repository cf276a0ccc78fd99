"""A small client for the control API, used by the CLI and the tests."""

from __future__ import annotations

from typing import Any

import httpx

from embedded.state import StateDir


class ControlError(Exception):
    """The platform answered with an error; the message is the platform's own."""


class NotRunning(ControlError):
    pass


class ControlClient:
    def __init__(self, control_url: str, token: str, *, timeout_s: float = 30.0) -> None:
        self._http = httpx.Client(
            base_url=control_url,
            headers={"Authorization": f"Bearer {token}"},
            timeout=timeout_s,
        )

    @classmethod
    def from_state(cls, state: StateDir) -> ControlClient:
        address = state.read_address()
        token = state.read_token()
        if address is None or token is None:
            raise NotRunning(
                f"no running platform found in {state.root} (start one with: torpor up)"
            )
        return cls(address.control_url, token)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> ControlClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def deploy(self, manifest: bytes, *, source: str) -> dict[str, Any]:
        return self._call("POST", "/v1/services", content=manifest, params={"source": source})

    def delete(self, namespace: str, name: str) -> dict[str, Any]:
        return self._call("DELETE", f"/v1/services/{namespace}/{name}")

    def status(self) -> dict[str, Any]:
        return self._call("GET", "/v1/status")

    def _call(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.ConnectError as e:
            raise NotRunning(
                f"the platform at {self._http.base_url} does not answer (is `torpor up` running?)"
            ) from e
        body: dict[str, Any] = response.json()
        if response.status_code >= 400:
            message = body.get("error", {}).get("message", response.text)
            raise ControlError(message)
        return body
