from collections.abc import MutableMapping
from typing import Any

from runtime.launch import FirstTokenMiddleware


def app_sending(status: int, chunks: list[bytes]) -> Any:
    async def app(scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": status, "headers": []})
        for c in chunks:
            await send({"type": "http.response.body", "body": c, "more_body": True})
        await send({"type": "http.response.body", "body": b""})

    return app


async def call(app: Any, path: str) -> list[dict[str, Any]]:
    sent: list[dict[str, Any]] = []

    async def send(m: dict[str, Any]) -> None:
        sent.append(m)

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b""}

    await app({"type": "http", "path": path}, receive, send)
    return sent


async def test_first_generated_body_fires_once_and_passes_everything_through() -> None:
    fired: list[int] = []
    mw = FirstTokenMiddleware(app_sending(200, [b"data: 1", b"data: 2"]), lambda: fired.append(1))
    sent = await call(mw, "/v1/health-like-but-not")  # not a generation path
    assert fired == [] and len(sent) == 4
    sent = await call(mw, "/v1/completions")
    assert fired == [1]
    assert [m.get("body") for m in sent[1:]] == [b"data: 1", b"data: 2", b""]
    await call(mw, "/v1/chat/completions")
    assert fired == [1]


async def test_errors_do_not_count_as_a_first_token() -> None:
    fired: list[int] = []
    mw = FirstTokenMiddleware(app_sending(400, [b'{"error": 1}']), lambda: fired.append(1))
    await call(mw, "/v1/chat/completions")
    assert fired == []
