"""corral.probe --listening: the runner pod's postStart hook, which waits until the port
listens (read from the socket table, no connection made) and never fails a start."""

from __future__ import annotations

import argparse
import socket
from pathlib import Path

import pytest

from corral import probe


def test_sees_a_listening_socket_and_not_a_bound_one() -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        assert not probe.listening(port)  # bound, not yet listening
        sock.listen()
        assert probe.listening(port)
        assert probe.wait_listening(port, within=5)
        # It looked at the socket table: nobody connected.
        sock.setblocking(False)
        with pytest.raises(BlockingIOError):
            sock.accept()
    finally:
        sock.close()
    assert not probe.listening(port)


def test_reads_both_tables_and_only_listeners(tmp_path: Path) -> None:
    header = "  sl  local_address rem_address   st tx_queue rx_queue\n"
    tcp = tmp_path / "tcp"
    tcp.write_text(header + "   0: 0100007F:1F90 0100007F:D431 01 00000000:00000000\n")
    tcp6 = tmp_path / "tcp6"
    anywhere = "0" * 32
    tcp6.write_text(header + f"   0: {anywhere}:1F90 {anywhere}:0000 0A\n")
    assert not probe.listening(8080, (str(tcp),))  # established, not listening
    assert probe.listening(8080, (str(tcp), str(tcp6)))
    assert not probe.listening(8081, (str(tcp), str(tcp6)))
    assert not probe.listening(8080, (str(tmp_path / "missing"),))


def test_as_a_hook_it_never_fails_a_start() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound by us, so nobody listens on it meanwhile
        args = argparse.Namespace(
            port=port, listening=True, within=0.05, ready="/readyz", live="/healthz"
        )
        assert probe.run(args) == 0
