from __future__ import annotations

import stat
from pathlib import Path

from embedded.state import ControlAddress, StateDir
from torpor.spec import RevisionRef, RevisionSpec, RuntimeSpec, ServiceSpec, TrafficTarget


def _service() -> ServiceSpec:
    rev = RevisionSpec(
        ref=RevisionRef("default", "svc-00001"),
        service="svc",
        generation=1,
        runtime=RuntimeSpec(image="img", model="/m", engine_args=("--enforce-eager",)),
    )
    return ServiceSpec("default", "svc", 1, (rev,), (TrafficTarget("svc-00001", 100),))


def test_directory_and_token_are_owner_only(tmp_path: Path) -> None:
    state = StateDir(tmp_path / "home").ensure()
    token = state.token()
    assert len(token) >= 32
    assert state.token() == token, "the token is stable once made"
    assert stat.S_IMODE(state.root.stat().st_mode) == 0o700
    assert stat.S_IMODE((state.root / "control.token").stat().st_mode) == 0o600


def test_services_round_trip(tmp_path: Path) -> None:
    state = StateDir(tmp_path).ensure()
    assert state.load_services() == ()
    state.save_services((_service(),))
    assert StateDir(tmp_path).load_services() == (_service(),)
    assert stat.S_IMODE((tmp_path / "services.json").stat().st_mode) == 0o600


def test_address_written_and_cleared(tmp_path: Path) -> None:
    state = StateDir(tmp_path).ensure()
    assert state.read_address() is None
    address = ControlAddress("http://127.0.0.1:1", "http://127.0.0.1:2", 42)
    state.write_address(address)
    assert state.read_address() == address
    state.clear_address()
    assert state.read_address() is None
