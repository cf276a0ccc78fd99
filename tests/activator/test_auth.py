"""Per-service API keys: the file-backed store, the header check, and the activator over HTTP."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import httpx
import pytest

from activator.auth import (
    FileKeyStore,
    KeyStoreError,
    Unauthorized,
    authorize,
    bearer,
    digest,
    matches,
    parse_keys,
)
from tests.activator.conftest import ActivatorFactory, Upstream, endpoints, revision, serve, service

KEY = "sk-torpor-0123456789abcdef"
OTHER_KEY = "sk-torpor-rotated-fedcba9876543210"
LOCKED = revision("locked-00001", "locked", api_keys_secret="locked-keys")
OPEN = revision("open-00001", "open")


def write_secret(
    root: Path, text: str, namespace: str = "default", name: str = "locked-keys"
) -> Path:
    path = root / namespace / name
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    tmp.replace(path)  # as a secret is updated: a new inode, never a half-written file
    return path


# ---- the store ----------------------------------------------------------------------------


def test_keys_are_lines_with_blanks_and_comments_skipped() -> None:
    assert parse_keys(f"# keys for chat\n\n  {KEY}  \n{OTHER_KEY}\n") == {
        digest(KEY),
        digest(OTHER_KEY),
    }


def test_file_store_reads_and_follows_rotation(tmp_path: Path) -> None:
    store = FileKeyStore(tmp_path)
    write_secret(tmp_path, KEY + "\n")
    assert store.digests("default", "locked-keys") == {digest(KEY)}
    write_secret(tmp_path, OTHER_KEY + "\n")
    assert store.digests("default", "locked-keys") == {digest(OTHER_KEY)}


def test_file_store_reads_a_kubernetes_style_secret_directory(tmp_path: Path) -> None:
    # kubelet mounts each data key as a file, through ..data links it swaps on update.
    secret = tmp_path / "default" / "locked-keys"
    data = tmp_path / "default" / "..2026_11_28"
    data.mkdir(parents=True)
    (data / "primary").write_text(KEY)
    (data / "secondary").write_text(OTHER_KEY + "\n")
    secret.mkdir()
    os.symlink(data, secret / "..data")
    for name in ("primary", "secondary"):
        os.symlink(Path("..data") / name, secret / name)
    assert FileKeyStore(tmp_path).digests("default", "locked-keys") == {
        digest(KEY),
        digest(OTHER_KEY),
    }


@pytest.mark.parametrize(
    ("namespace", "name"),
    [("default", "missing"), ("default", ".."), ("..", "etc"), ("default", "a/b"), ("", "x")],
)
def test_file_store_refuses_missing_and_escaping_names(
    tmp_path: Path, namespace: str, name: str
) -> None:
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "x").write_text(KEY)
    with pytest.raises(KeyStoreError):
        FileKeyStore(tmp_path / "default").digests(namespace, name)


def test_bearer_takes_exactly_one_bearer_header() -> None:
    assert bearer([(b"authorization", f"Bearer {KEY}".encode())]) == KEY
    assert bearer([(b"authorization", f"bearer   {KEY} ".encode())]) == KEY
    assert bearer([]) is None
    assert bearer([(b"authorization", KEY.encode())]) is None
    assert bearer([(b"authorization", b"Basic dXNlcjpwYXNz")]) is None
    assert bearer([(b"authorization", b"Bearer ")]) is None
    two = [(b"authorization", f"Bearer {KEY}".encode()), (b"authorization", b"Bearer x")]
    assert bearer(two) is None


def test_matches_any_key_and_nothing_else() -> None:
    digests = parse_keys(f"{KEY}\n{OTHER_KEY}\n")
    assert matches(KEY, digests) and matches(OTHER_KEY, digests)
    assert not matches(KEY[:-1], digests)
    assert not matches("", digests)
    assert not matches(KEY, frozenset())


def test_authorize_strips_the_key_and_leaves_open_services_alone(tmp_path: Path) -> None:
    write_secret(tmp_path, KEY)
    store = FileKeyStore(tmp_path)
    headers = [(b"authorization", f"Bearer {KEY}".encode()), (b"x-keep", b"1")]
    assert authorize(store, LOCKED, headers) == [(b"x-keep", b"1")]
    assert authorize(store, OPEN, headers) == headers
    assert authorize(None, OPEN, headers) == headers
    with pytest.raises(Unauthorized) as refused:
        authorize(store, LOCKED, [(b"authorization", b"Bearer wrong")])
    assert "wrong" not in refused.value.message


# ---- over HTTP ------------------------------------------------------------------------------


async def test_activator_checks_keys_and_never_forwards_them(
    running_activator: ActivatorFactory, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    write_secret(tmp_path, KEY + "\n")
    locked_up, open_up = Upstream("locked"), Upstream("open")
    services = (service("locked", revisions=(LOCKED,)), service("open", revisions=(OPEN,)))
    async with (
        serve(locked_up) as locked_url,
        serve(open_up) as open_url,
        running_activator(services, key_store=FileKeyStore(tmp_path)) as running,
        httpx.AsyncClient(base_url=running.url, timeout=10) as c,
    ):
        await running.bus.publish_endpoints(endpoints(LOCKED.ref.key, locked_url))
        await running.bus.publish_endpoints(endpoints(OPEN.ref.key, open_url))
        url = "/default/locked/v1/completions"
        body = {"prompt": "hi"}
        missing = await c.post(url, json=body)
        wrong = await c.post(url, json=body, headers={"Authorization": "Bearer sk-wrong-key"})
        basic = await c.post(url, json=body, headers={"Authorization": f"Basic {KEY}"})
        right = await c.post(url, json=body, headers={"Authorization": f"Bearer {KEY}"})
        by_host = await c.post(
            "/v1/completions",
            json=body,
            headers={"Host": "locked.default.example.com", "Authorization": f"Bearer {KEY}"},
        )
        # Rotation: the old key stops working as soon as the secret changes.
        write_secret(tmp_path, OTHER_KEY + "\n")
        old = await c.post(url, json=body, headers={"Authorization": f"Bearer {KEY}"})
        new = await c.post(url, json=body, headers={"Authorization": f"Bearer {OTHER_KEY}"})
        # A service without keys is unchanged: whatever Authorization it gets goes through.
        opened = await c.post(
            "/default/open/v1/completions", json=body, headers={"Authorization": "Bearer any"}
        )

    for refused in (missing, wrong, basic, old):
        assert refused.status_code == 401
        assert refused.headers["www-authenticate"].startswith("Bearer")
        error = refused.json()["error"]
        assert error["code"] == "invalid_api_key" and error["type"] == "invalid_request_error"
        assert "locked" in error["message"]
        assert KEY not in refused.text and "sk-wrong-key" not in refused.text
    assert "Authorization: Bearer" in missing.json()["error"]["message"]
    assert [r.status_code for r in (right, by_host, new, opened)] == [200] * 4

    # Only the three accepted requests reached the replica, none carrying any key.
    assert len(locked_up.seen) == 3
    for seen in locked_up.seen:
        assert "authorization" not in seen.headers
        assert KEY not in repr(seen) and OTHER_KEY not in repr(seen)
    assert open_up.seen[0].headers["authorization"] == "Bearer any"
    for secret in (KEY, OTHER_KEY, "sk-wrong-key"):
        assert secret not in caplog.text


async def test_a_service_whose_keys_cannot_be_read_fails_closed(
    running_activator: ActivatorFactory, tmp_path: Path
) -> None:
    upstream = Upstream()
    services = (service("locked", revisions=(LOCKED,)),)
    for store in (FileKeyStore(tmp_path), None):  # the secret is missing; no store at all
        async with (
            serve(upstream) as up,
            running_activator(services, key_store=store) as running,
            httpx.AsyncClient(base_url=running.url, timeout=10) as c,
        ):
            await running.bus.publish_endpoints(endpoints(LOCKED.ref.key, up))
            r = await c.post(
                "/default/locked/v1/completions",
                json={},
                headers={"Authorization": f"Bearer {KEY}"},
            )
        assert r.status_code == 503
        error = r.json()["error"]
        assert error["code"] == "api_keys_unavailable"
        assert "locked" in error["message"]
    assert upstream.seen == []
