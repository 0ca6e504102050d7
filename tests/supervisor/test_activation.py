"""Socket activation: which passed socket a tap port adopts, and whose variables they are."""

from __future__ import annotations

import os
import socket
from typing import Any

from forkd.ports import TCPPort, UNIXPort
from forkd.supervisor import activation


def test_variables_for_another_process_are_ignored_and_removed() -> None:
    env = {"LISTEN_FDS": "2", "LISTEN_PID": str(os.getpid() + 1), "LISTEN_FDNAMES": "a:b"}
    assert activation.passed_sockets(env) == []
    assert env == {}, "sd_listen_fds(1) unsets them: workers and a re-exec must not see them"


def test_ports_adopt_the_socket_of_their_address_and_the_rest_is_closed(tmp_path: Any) -> None:
    tcp = socket.socket()
    tcp.bind(("127.0.0.1", 0))
    tcp.listen()
    unix = socket.socket(socket.AF_UNIX)
    unix.bind(str(tmp_path / "s.sock"))
    unix.listen()
    stray = socket.socket()
    stray.bind(("127.0.0.1", 0))
    stray.listen()
    port = TCPPort(tcp.getsockname()[1], None, interface="127.0.0.1")
    elsewhere = TCPPort(tcp.getsockname()[1], None, interface="127.0.0.2")
    path = UNIXPort(str(tmp_path / "s.sock"), None)
    adopted = activation.adopt([elsewhere, port, path], [tcp, unix, stray])
    assert adopted == [port.key, path.key]
    assert port.socket is not None and elsewhere.socket is None and path.socket is not None
    assert stray.fileno() == -1, "a socket no port wants is closed"
    port.stopListening()
    path.stopListening()
