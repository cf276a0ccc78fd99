import json
import os
import socket
import threading
from pathlib import Path

import pytest

from runtime.contract import ContractError, StandbyReply
from runtime.standby import listen, parse_assignment, wait_for_assignment


def test_parse_assignment_validates() -> None:
    a = parse_assignment(b'{"argv": ["--model", "m"], "env": {"A": 1}}', [], 5.0)
    assert a.argv == ("--model", "m") and a.env == {"A": "1"} and a.received_at == 5.0
    with pytest.raises(ValueError, match="argv"):
        parse_assignment(b'{"argv": "--model m"}', [], 0)
    with pytest.raises(ValueError, match="file descriptors"):
        parse_assignment(b'{"argv": []}', [3], 0)


def test_socket_protocol_passes_argv_and_log_fds(tmp_path: Path) -> None:
    path = tmp_path / "s.sock"
    sock = listen(path)
    assert path.exists()
    log = tmp_path / "replica.log"
    result: dict[str, object] = {}

    def client() -> None:
        with socket.socket(socket.AF_UNIX) as c, log.open("ab") as f:
            c.connect(str(path))
            payload = json.dumps({"argv": ["--port", "1"], "env": {"X": "y"}}).encode() + b"\n"
            socket.send_fds(c, [payload], [f.fileno(), f.fileno()])
            result["reply"] = c.recv(1024)

    t = threading.Thread(target=client)
    t.start()
    got = wait_for_assignment(sock, path)
    assert got is not None
    conn, assignment = got
    assert not path.exists()  # one assignment per standby
    assert assignment.argv == ("--port", "1") and assignment.env == {"X": "y"}
    os.write(assignment.fds[0], b"hello from the replica\n")
    for fd in assignment.fds:
        os.close(fd)
    conn.sendall(b'{"accepted": true, "pid": 1}\n')
    conn.close()
    t.join(5)
    assert result["reply"] == b'{"accepted": true, "pid": 1}\n'
    assert log.read_text() == "hello from the replica\n"


def test_eof_without_assignment_means_stop(tmp_path: Path) -> None:
    path = tmp_path / "s.sock"
    sock = listen(path)

    def client() -> None:
        with socket.socket(socket.AF_UNIX) as c:
            c.connect(str(path))

    t = threading.Thread(target=client)
    t.start()
    assert wait_for_assignment(sock, path) is None
    t.join(5)


def test_a_bad_assignment_is_refused_with_the_reason(tmp_path: Path) -> None:
    path = tmp_path / "s.sock"
    sock = listen(path)
    result: dict[str, bytes] = {}

    def client() -> None:
        with socket.socket(socket.AF_UNIX) as c:
            c.connect(str(path))
            c.sendall(b'{"argv": "--model m"}\n')
            result["reply"] = c.recv(1024)

    t = threading.Thread(target=client)
    t.start()
    with pytest.raises(ContractError, match="argv"):
        wait_for_assignment(sock, path)
    t.join(5)
    reply = StandbyReply.parse(result["reply"])
    assert not reply.accepted and "argv" in (reply.error or "")
