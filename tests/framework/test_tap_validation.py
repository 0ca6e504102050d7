"""What a tap module's getPorts may return, and what mktap says when it cannot be pickled.

A tap module is the user's code: a wrong return value or a factory holding a lambda, an
open file or a socket must be one clear line naming the problem, never a tap file that
fails later at `forkd start`, and never half the ports added."""

from __future__ import annotations

import socket
import types
from typing import Any

import pytest

from forkd import tapfile, taps
from forkd.app import Application
from forkd.ports import TCPPort
from forkd.protocol import Factory


def module_returning(result: Any) -> types.ModuleType:
    module = types.ModuleType("faketap")
    module.getPorts = lambda app, config: result  # type: ignore[attr-defined]
    return module


@pytest.mark.parametrize(
    ("result", "message"),
    [
        (42, "faketap.getPorts returned int, not a list of (port, factory) pairs"),
        (None, "faketap.getPorts returned NoneType"),
        ("8080", "faketap.getPorts returned str"),
        ([(1, 2, 3)], "item 0 is not a (port, factory) pair: 3 items"),
        ([8080], "item 0 is not a (port, factory) pair: 8080"),
        ([(8080, None)], "item 0: None is not a factory"),
        ([(8080, "factory")], "item 0: 'factory' is not a factory"),
        ([(3.5, Factory())], "item 0: port 3.5 is not a port number"),
        ([(True, Factory())], "item 0: port True is not a port number"),
        ([(object(), Factory())], "is not a port number, a UNIX socket path or a port object"),
    ],
)
def test_garbage_from_getPorts_is_refused_by_name(result: Any, message: str) -> None:
    app = Application("t")
    with pytest.raises(taps.BadTap) as caught:
        taps.apply(module_returning(result), app, None)
    assert message in str(caught.value)
    assert app.ports == []


def test_a_port_object_without_factory_takes_the_pairs_factory() -> None:
    factory = Factory()
    app = Application("t")
    taps.apply(module_returning([(TCPPort(9000, None), factory)]), app, None)
    assert app.ports[0].factory is factory


def test_a_port_object_and_no_factory_anywhere_is_refused() -> None:
    with pytest.raises(taps.BadTap, match="None is not a factory"):
        taps.apply(module_returning([(TCPPort(9000, None), None)]), Application("t"), None)


def test_a_failure_midway_adds_no_port() -> None:
    """All or nothing: the second pair's port is already taken."""
    app = Application("t")
    app.listenTCP(9001, Factory())
    result = [(9000, Factory()), (9001, Factory())]
    with pytest.raises(ValueError, match="already a port"):
        taps.apply(module_returning(result), app, None)
    assert [port.port for port in app.ports] == [9001]


@pytest.mark.parametrize("port", [-5, 65536, 99999, "http", True, 8.0])
def test_listenTCP_refuses_impossible_port_numbers(port: Any) -> None:
    app = Application("t")
    with pytest.raises(ValueError, match="bad TCP port"):
        app.listenTCP(port, Factory())
    assert app.ports == []


def test_listenTCP_still_takes_numbers_and_digit_strings() -> None:
    app = Application("t")
    assert app.listenTCP(0, Factory()).port == 0
    assert app.listenTCP("65535", Factory()).port == 65535


class Holder(Factory):
    def __init__(self, **attributes: Any) -> None:
        self.__dict__.update(attributes)


def test_unpicklable_lambda_is_named_by_its_attribute(tmp_path: Any) -> None:
    app = Application("t")
    app.listenTCP(9000, Factory())
    app.listenTCP(9001, Holder(name="ok", callback=lambda: 1))
    with pytest.raises(tapfile.UnpicklableError) as caught:
        tapfile.save(app, str(tmp_path / "t.tap"))
    assert "cannot pickle application.ports[1].factory.callback:" in str(caught.value)
    assert list(tmp_path.iterdir()) == []  # nothing written, no temporary file left


def test_unpicklable_socket_deep_in_containers_is_named() -> None:
    with socket.socket() as sock:
        app = Application("t")
        app.listenTCP(9000, Holder(pool={"db": [1, sock]}))
        where = tapfile.unpicklable_path(app)
    assert where is not None
    assert where[0] == "application.ports[0].factory.pool['db'][1]"
    assert "socket" in str(where[1])


def test_unpicklable_open_file_is_named(tmp_path: Any) -> None:
    with open(tmp_path / "log", "w") as handle:
        app = Application("t")
        app.listenTCP(9000, Holder(log=handle))
        with pytest.raises(tapfile.TapError, match=r"application.ports\[0\].factory.log:"):
            tapfile.dumps(app)


def test_a_picklable_application_has_no_unpicklable_path() -> None:
    app = Application("t")
    app.listenTCP(9000, Holder(name="fine"))
    assert tapfile.unpicklable_path(app) is None


def test_a_self_referencing_factory_still_pickles_or_is_named() -> None:
    factory = Holder()
    factory.me = factory
    factory.bad = lambda: 0
    app = Application("t")
    app.listenTCP(9000, factory)
    where = tapfile.unpicklable_path(app)
    assert where is not None and where[0] == "application.ports[0].factory.bad"
