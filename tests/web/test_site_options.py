"""The proxy and request-limit options on the web, wsgi and asgi taps and `forkd serve`:
gunicorn's and uvicorn's names, their environment variables, and one line for a bad value."""

from __future__ import annotations

from typing import Any

import pytest

from forkd import taps, usage
from forkd.app import Application
from forkd.cli import forkd as forkd_cli
from forkd.web.proxy import TrustedProxies
from workers import asgi as asgi_tap
from workers import site_options
from workers import web as web_tap
from workers import wsgi as wsgi_tap

APP = "def app(environ, start_response):\n    return []\n"


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: Any) -> None:
    monkeypatch.delenv("FORWARDED_ALLOW_IPS", raising=False)
    monkeypatch.delenv("SCRIPT_NAME", raising=False)


@pytest.fixture
def app_dir(tmp_path: Any, monkeypatch: Any) -> Any:
    (tmp_path / "optionsapp.py").write_text(APP)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def site_of(module: Any, *argv: str) -> Any:
    config = taps.options_for(module)
    config.parseOptions(list(argv))
    [(_, site)] = module.getPorts(Application("t"), config)
    return site


EVERY = (
    "--forwarded-allow-ips",
    "10.0.0.0/8, 2001:db8::1",
    "--limit-request-line",
    "8190",
    "--limit-request-fields",
    "32768",
    "--limit-request-field_size",
    "0",
    "--limit-concurrency",
    "200",
)


@pytest.mark.parametrize("module", [wsgi_tap, asgi_tap])
def test_the_hosting_taps_set_every_option_on_the_site(module: Any, app_dir: Any) -> None:
    site = site_of(module, "--app", "optionsapp:app", *EVERY, "--root-path", "/api/")
    assert site.trustedProxies.spec == "10.0.0.0/8, 2001:db8::1"
    assert site.trustedProxies.trustsPeer(("INET", "10.1.2.3", 1))
    assert (site.limitRequestLine, site.limitRequestFields) == (8190, 32768)
    assert (site.limitRequestFieldSize, site.limitConcurrency) == (0, 200)
    assert site.rootPath == "/api"


def test_the_web_tap_takes_the_request_options_but_not_root_path(tmp_path: Any) -> None:
    site = site_of(web_tap, "--path", str(tmp_path), *EVERY)
    assert site.limitConcurrency == 200 and site.limitRequestFieldSize == 0
    with pytest.raises(usage.UsageError, match="--root-path not recognized"):
        site_of(web_tap, "--path", str(tmp_path), "--root-path", "/api")


def test_defaults_are_left_to_the_site(app_dir: Any, tmp_path: Any) -> None:
    for site in (site_of(wsgi_tap, "--app", "optionsapp:app"), site_of(web_tap)):
        for name in ("trustedProxies", "limitRequestLine", "limitConcurrency", "rootPath"):
            assert name not in vars(site), name
    hosted = site_of(wsgi_tap, "--app", "optionsapp:app")
    assert hosted.trustedProxies.spec == "127.0.0.1" and hosted.limitRequestLine == 4094
    assert hosted.limitRequestFields == 100 and hosted.limitRequestFieldSize == 8190
    assert hosted.limitConcurrency == 0 and hosted.rootPath == ""


def test_gunicorns_underscore_and_the_dashed_spelling(app_dir: Any) -> None:
    dashed = site_of(wsgi_tap, "--app", "optionsapp:app", "--limit-request-field-size", "100")
    assert dashed.limitRequestFieldSize == 100
    args = forkd_cli.parser().parse_args(["serve", "x:y", "--limit-request-field-size", "7"])
    assert site_options.site_settings(vars(args))["limitRequestFieldSize"] == 7
    args = forkd_cli.parser().parse_args(["serve", "x:y", "--limit-request-field_size", "8"])
    assert site_options.site_settings(vars(args))["limitRequestFieldSize"] == 8


def test_the_environment_gives_defaults_as_gunicorn_reads_it(
    app_dir: Any, monkeypatch: Any
) -> None:
    monkeypatch.setenv("FORWARDED_ALLOW_IPS", "*")
    monkeypatch.setenv("SCRIPT_NAME", "/mounted")
    site = site_of(wsgi_tap, "--app", "optionsapp:app")
    assert site.trustedProxies.anyone and site.rootPath == "/mounted"
    given = site_of(
        wsgi_tap, "--app", "optionsapp:app", "--forwarded-allow-ips", "", "--root-path", ""
    )
    assert not given.trustedProxies.trustsPeer(("INET", "127.0.0.1", 1))
    assert given.rootPath == ""
    assert site_of(web_tap).trustedProxies.anyone
    args = forkd_cli.parser().parse_args(["serve", "x:y"])
    settings = site_options.site_settings(vars(args))
    assert settings["trustedProxies"].anyone and settings["rootPath"] == "/mounted"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (("--limit-request-line", "-1"), "not a whole number: '-1'"),
        (("--limit-request-line", "4k"), "not a whole number: '4k'"),
        (("--limit-request-fields", "32769"), "at most 32768 .gunicorn's maximum., not 32769"),
        (("--limit-concurrency", "lots"), "not a whole number: 'lots'"),
        (("--forwarded-allow-ips", "localhost"), "not an IP address or network: 'localhost'"),
        (("--forwarded-allow-ips", "10.0.0.0/40"), "not an IP network: '10.0.0.0/40'"),
        (("--root-path", "api"), "a root path begins with /: 'api'"),
        (("--root-path", "/a b"), "not a plain URL path"),
        (("--root-path", "/a?b"), "not a plain URL path"),
    ],
)
def test_bad_values_are_one_line(argv: tuple[str, str], message: str, app_dir: Any) -> None:
    with pytest.raises(usage.UsageError, match=message) as raised:
        site_of(wsgi_tap, "--app", "optionsapp:app", *argv)
    assert "\n" not in str(raised.value)


def test_a_bad_environment_value_names_the_variable(app_dir: Any, monkeypatch: Any) -> None:
    monkeypatch.setenv("FORWARDED_ALLOW_IPS", "10.0.0.1, proxy.internal")
    with pytest.raises(usage.UsageError, match=r"^\$FORWARDED_ALLOW_IPS: not an IP address"):
        site_of(wsgi_tap, "--app", "optionsapp:app")
    monkeypatch.delenv("FORWARDED_ALLOW_IPS")
    monkeypatch.setenv("SCRIPT_NAME", "api")
    with pytest.raises(usage.UsageError, match=r"^\$SCRIPT_NAME: a root path begins with /"):
        site_of(wsgi_tap, "--app", "optionsapp:app")


def test_forkd_serve_says_what_is_wrong_on_one_line(
    app_dir: Any, monkeypatch: Any, capsys: Any
) -> None:
    with pytest.raises(SystemExit) as exited:
        forkd_cli.main(["serve", "optionsapp:app", "--limit-request-line", "x"])
    assert exited.value.code == 2
    assert "argument --limit-request-line: not a whole number: 'x'" in capsys.readouterr().err
    monkeypatch.setenv("SCRIPT_NAME", "nope")
    assert forkd_cli.main(["serve", "optionsapp:app"]) == 2
    assert capsys.readouterr().err == (
        "forkd serve: $SCRIPT_NAME: a root path begins with /: 'nope'\n"
    )
    assert not (app_dir / "optionsapp.tap").exists(), "nothing written, nothing started"


def test_the_help_shows_the_peers_defaults() -> None:
    help_text = {option.name: option.describe() for option in site_options.SITE_OPTIONS}
    assert help_text["forwarded-allow-ips"].endswith(
        "[default: $FORWARDED_ALLOW_IPS, else 127.0.0.1]"
    )
    assert help_text["root-path"].endswith("[default: $SCRIPT_NAME, else none]")
    assert help_text["limit-request-line"].endswith("[default: 4094]")
    assert help_text["limit-request-fields"].endswith("[default: 100]")
    assert help_text["limit-request-field_size"].endswith("[default: 8190]")
    assert help_text["limit-concurrency"].endswith("[default: 0]")
    assert TrustedProxies.parse("127.0.0.1").spec == "127.0.0.1"
