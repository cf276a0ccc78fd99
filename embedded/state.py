"""The embedded platform's state directory: deployed services, the control token, the address.

Everything is owner-only (0700 directory, 0600 files) because the token grants control of the
platform. Writes are atomic (temp file + rename) so a crash never leaves half a file.
"""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from torpor import codec
from torpor.spec import ServiceSpec

_SERVICES_FILE = "services.json"
_TOKEN_FILE = "control.token"
_ADDRESS_FILE = "control.json"


def default_home() -> Path:
    return Path(os.environ.get("TORPOR_HOME", Path.home() / ".torpor")).expanduser()


@dataclass(frozen=True, slots=True)
class ControlAddress:
    """Where a running ``torpor up`` listens; written at start-up for the CLI to find."""

    control_url: str
    activator_url: str
    pid: int


class StateDir:
    def __init__(self, root: Path) -> None:
        self.root = root

    def ensure(self) -> StateDir:
        self.root.mkdir(parents=True, exist_ok=True)
        os.chmod(self.root, 0o700)
        return self

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def models(self) -> Path:
        return self.root / "models"

    def token(self) -> str:
        """The control API token, created on first use."""
        path = self.root / _TOKEN_FILE
        if path.exists():
            return path.read_text().strip()
        token = secrets.token_urlsafe(32)
        self._write(path, token + "\n")
        return token

    def read_token(self) -> str | None:
        path = self.root / _TOKEN_FILE
        return path.read_text().strip() if path.exists() else None

    def load_services(self) -> tuple[ServiceSpec, ...]:
        path = self.root / _SERVICES_FILE
        if not path.exists():
            return ()
        return codec.loads(tuple[ServiceSpec, ...], path.read_text())

    def save_services(self, services: tuple[ServiceSpec, ...]) -> None:
        self._write(self.root / _SERVICES_FILE, codec.dumps(services) + "\n")

    def write_address(self, address: ControlAddress) -> None:
        self._write(self.root / _ADDRESS_FILE, codec.dumps(address) + "\n")

    def read_address(self) -> ControlAddress | None:
        path = self.root / _ADDRESS_FILE
        if not path.exists():
            return None
        return codec.from_jsonable(ControlAddress, json.loads(path.read_text()))

    def clear_address(self) -> None:
        (self.root / _ADDRESS_FILE).unlink(missing_ok=True)

    def _write(self, path: Path, text: str) -> None:
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
