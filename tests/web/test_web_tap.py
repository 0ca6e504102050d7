"""The web and hello tap modules: options, getPorts, pickling through a .tap, serving."""

from __future__ import annotations

import os
import pathlib
import pickle
from typing import Any

import pytest

from forkd import taps, usage
from forkd.app import Application
from forkd.ports import TCPPort
from forkd.web import server, static, vhost
from forkd.web.hello import Hello
from tests.webserving import get, serving
from workers import hello as hello_tap
from workers import web as web_tap


def parse(module: Any, *argv: str) -> Any:
    config = taps.options_for(module)
    config.parseOptions(list(argv))
    return config


def test_web_tap_defaults_to_port_8080_and_the_welcome_page(
    tmp_path: Any, monkeypatch: Any
) -> None:
    monkeypatch.chdir(tmp_path)
    config = parse(web_tap)
    [(port, site)] = web_tap.getPorts(Application("web"), config)
    assert isinstance(port, TCPPort) and port.factory is site
    assert config["port"] == 8080 and config["path"] == web_tap.WELCOME
    assert isinstance(site, server.Site) and isinstance(site.resource, static.File)
    assert site.resource.path == web_tap.WELCOME and os.path.isabs(site.resource.path)
    assert site.resource.listing is True and site.resource.indexNames == ["index.html"]
    assert site.logPath is None


def test_web_tap_options(tmp_path: Any) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    config = parse(
        web_tap,
        "--port",
        "9090",
        "--path",
        str(tmp_path / "a"),
        "--interface",
        "127.0.0.1",
        "--vhost",
        f"Example.com={tmp_path / 'b'}",
        "--index",
        "home.html",
        "--index",
        "index.htm",
        "--no-listing",
        "--access-log",
        "-",
    )
    [(port, site)] = web_tap.getPorts(Application("web"), config)
    assert port.interface == "127.0.0.1" and config["port"] == 9090
    root = site.resource
    assert isinstance(root, vhost.NamedVirtualHost)
    assert root.default.path == str(tmp_path / "a")
    example = root.hosts[b"example.com"]
    assert example.path == str(tmp_path / "b")
    assert example.indexNames == ["home.html", "index.htm"] and example.listing is False
    assert site.logPath == "-"


@pytest.mark.parametrize(
    "argv",
    [
        ["--port", "70000"],
        ["--port", "web"],
        ["--path", "/definitely/not/here"],
        ["--vhost", "no-equals-sign"],
        ["--vhost", "a=/definitely/not/here"],
        ["--index", "a/b"],
        ["stray"],
    ],
)
def test_web_tap_bad_options_are_usage_errors(argv: list[str]) -> None:
    with pytest.raises(usage.UsageError):
        parse(web_tap, *argv)


def test_usage_messages_are_multiline_help(capsys: Any) -> None:
    for module in (web_tap, hello_tap):
        assert len(module.usage_message.strip().splitlines()) >= 2
    with pytest.raises(SystemExit) as exit_info:
        parse(web_tap, "--help")
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "--vhost" in out and "--no-listing" in out and "document root" in out


def test_taps_are_found_by_name() -> None:
    assert taps.find("web") is web_tap
    assert taps.find("hello") is hello_tap


def test_web_tap_application_pickles_and_serves(tmp_path: Any) -> None:
    (tmp_path / "index.html").write_bytes(b"from the tap")
    app = Application("web")
    taps.apply(web_tap, app, parse(web_tap, "--path", str(tmp_path), "--port", "0"))
    loaded = pickle.loads(pickle.dumps(app))
    site = loaded.ports[0].factory
    with serving(site) as served:
        assert get(served.port, b"/").body == b"from the tap"


def test_hello_tap() -> None:
    config = parse(hello_tap, "--port", "8123")
    [(port, site)] = hello_tap.getPorts(Application("hello"), config)
    assert isinstance(site.resource, Hello) and config["port"] == 8123
    with serving(pickle.loads(pickle.dumps(site))) as served:
        response = get(served.port, b"/anything")
        assert response.body == b"Hello, world!\n"
        assert response.headers[b"content-type"] == b"text/plain"


def test_without_path_the_web_tap_serves_its_welcome_page_not_the_current_directory(
    tmp_path: Any, monkeypatch: Any
) -> None:
    """`mktap web` in a project folder used to publish it, /.git/config included."""
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git" / "config").write_text("[core]\n")
    monkeypatch.chdir(tmp_path)
    config = web_tap.Options()
    config.parseOptions(["--port", "0"])
    assert config["path"] == web_tap.WELCOME
    assert "forkd is serving" in (pathlib.Path(web_tap.WELCOME) / "index.html").read_text()
