"""The bundled tap modules listen on loopback unless told otherwise (issue 9, item 15), as
gunicorn and uvicorn do: a tap made with no --interface is not on the network."""

from __future__ import annotations

import pytest

from forkd import taps
from forkd.app import Application


@pytest.mark.parametrize("name", ["echo", "daytime", "hello", "web"])
def test_a_bundled_tap_binds_loopback_by_default(name: str) -> None:
    module = taps.load(name)
    config = taps.make_options(module, name)
    config.parseOptions(["--port", "0"])
    [port] = taps.apply(module, Application(name), config)
    assert port.interface == "127.0.0.1"


@pytest.mark.parametrize("name", ["echo", "daytime", "hello", "web"])
def test_every_address_is_one_option_away(name: str) -> None:
    module = taps.load(name)
    config = taps.make_options(module, name)
    config.parseOptions(["--port", "0", "--interface", "0.0.0.0"])
    [port] = taps.apply(module, Application(name), config)
    assert port.interface == "0.0.0.0"
