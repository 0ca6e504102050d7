"""Application, ports and .tap files: pickling, atomic saves, refusing bad or unsafe files."""

from __future__ import annotations

import os
import pathlib
import pickle
import socket
import sys
import textwrap

import pytest

from forkd import tapfile
from forkd.app import Application
from forkd.ports import PortError, TCPPort, UNIXPort
from forkd.tapfile import TapError
from workers.echo import EchoFactory


def make_app(tmp_path, name: str = "echo") -> Application:
    app = Application(name)
    app.listenTCP(9001, EchoFactory())
    app.listenUNIX(str(tmp_path / "echo.sock"), EchoFactory())
    app.tapfile = str(tmp_path / f"{name}.tap")
    return app


def test_ports_repr_is_the_seeds(tmp_path) -> None:
    app = make_app(tmp_path)
    assert repr(app.ports[0]) == "<workers.echo.EchoFactory on 9001>"
    assert repr(app.ports[1]) == f"<workers.echo.EchoFactory on {tmp_path / 'echo.sock'}>"
    ipv6 = TCPPort(8443, EchoFactory(), interface="::1")
    assert ipv6.key == "tcp:[::1]:8443"


def test_save_and_load_round_trip(tmp_path) -> None:
    app = make_app(tmp_path)
    path = app.save()
    assert path == str(tmp_path / "echo.tap")
    loaded = tapfile.load(path)
    assert [p.key for p in loaded.ports] == [p.key for p in app.ports]
    assert loaded.tapfile == path and loaded.runtime is None
    assert oct(os.stat(path).st_mode & 0o777) == oct(0o644)


def test_save_with_tag_writes_beside_the_original(tmp_path) -> None:
    app = make_app(tmp_path)
    app.save()
    assert app.save("known-good") == str(tmp_path / "echo-known-good.tap")
    assert tapfile.load(str(tmp_path / "echo-known-good.tap")).name == "echo"
    with pytest.raises(ValueError):
        app.save("../escape")


def test_pickle_drops_os_resources(tmp_path) -> None:
    app = make_app(tmp_path)
    port = TCPPort(0, EchoFactory(), interface="127.0.0.1")
    port.startListening()
    try:
        app.addPort(port)
        app.runtime = object()  # type: ignore[assignment]
        clone = pickle.loads(pickle.dumps(app))
        assert clone.ports[-1].socket is None and clone.runtime is None
        assert clone.ports[-1].port == port.port  # the port the kernel chose is kept
    finally:
        port.stopListening()


def test_duplicate_port_and_remove_by_key(tmp_path) -> None:
    app = make_app(tmp_path)
    with pytest.raises(ValueError, match="tcp:9001 is already a port"):
        app.listenTCP(9001, EchoFactory())
    removed = app.removePort(9001)
    assert removed.key == "tcp:9001" and [p.key for p in app.ports] == [
        f"unix:{tmp_path / 'echo.sock'}"
    ]
    with pytest.raises(KeyError):
        app.removePort("tcp:1")


def test_runtime_hooks_see_live_changes(tmp_path) -> None:
    calls: list[tuple[str, str]] = []

    class Runtime:
        def portAdded(self, port) -> None:
            if port.port == 1:
                raise PortError("cannot listen on tcp:1: Permission denied")
            calls.append(("added", port.key))

        def portRemoved(self, port) -> None:
            calls.append(("removed", port.key))

    app = make_app(tmp_path)
    app.runtime = Runtime()
    app.listenTCP(8443, EchoFactory())
    with pytest.raises(PortError):
        app.listenTCP(1, EchoFactory())
    assert [p.key for p in app.ports][-1] == "tcp:8443"  # the refused port was not added
    app.removePort("tcp:8443")
    assert calls == [("added", "tcp:8443"), ("removed", "tcp:8443")]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "not a forkd tap file"),
        (b"GIF89a....", "not a forkd tap file"),
        (b"FORKDTAP x forkd=0\n", "bad header"),
        (b"FORKDTAP 99 forkd=9.0\n", "tap format 99 is newer"),
        (b"FORKDTAP 1 forkd=0.1.0\n\x80\x05garbage", "truncated or corrupt"),
        (tapfile.header() + pickle.dumps({"not": "an app"}), "holds a dict, not an Application"),
    ],
)
def test_bad_files_are_refused_with_one_line(tmp_path, content: bytes, message: str) -> None:
    path = tmp_path / "bad.tap"
    path.write_bytes(content)
    with pytest.raises(TapError, match=message) as info:
        tapfile.load(str(path))
    assert "\n" not in str(info.value) and str(path) in str(info.value)


def test_truncated_at_every_length_is_refused_cleanly(tmp_path) -> None:
    data = tapfile.dumps(make_app(tmp_path))
    for cut in range(0, len(data), max(1, len(data) // 60)):
        with pytest.raises(TapError):
            tapfile.loads(data[:cut], "cut.tap")


def test_module_that_no_longer_imports(tmp_path, monkeypatch) -> None:
    module = tmp_path / "vanishing_tap.py"
    module.write_text(
        textwrap.dedent("""
        from forkd.protocol import Factory
        class Gone(Factory):
            pass
    """)
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    import vanishing_tap  # noqa: PLC0415

    app = Application("gone")
    app.listenTCP(9005, vanishing_tap.Gone())
    data = tapfile.dumps(app)
    module.unlink()
    del sys.modules["vanishing_tap"]
    with pytest.raises(TapError, match="does not import.*vanishing_tap"):
        tapfile.loads(data, "gone.tap")


def test_world_or_group_writable_tap_is_refused(tmp_path) -> None:
    path = make_app(tmp_path).save()
    for mode in (0o666, 0o664, 0o646):
        os.chmod(path, mode)
        with pytest.raises(TapError, match="group- or world-writable"):
            tapfile.load(path)
    os.chmod(path, 0o600)
    assert tapfile.load(path).name == "echo"


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to chown")
def test_tap_owned_by_another_user_is_refused(tmp_path) -> None:
    path = make_app(tmp_path).save()
    os.chown(path, 65534, 65534)
    with pytest.raises(TapError, match="owned by uid 65534"):
        tapfile.load(path)


def test_save_is_atomic_when_pickling_fails(tmp_path) -> None:
    app = make_app(tmp_path)
    path = app.save()
    before = pathlib.Path(path).read_bytes()
    app.ports[0].factory.unpicklable = socket.socket()  # sockets do not pickle
    try:
        with pytest.raises(TypeError):
            app.save()
    finally:
        app.ports[0].factory.unpicklable.close()
    assert pathlib.Path(path).read_bytes() == before
    assert [n for n in os.listdir(tmp_path) if n.endswith(".tmp")] == []


def test_port_in_use_names_the_address() -> None:
    first = TCPPort(0, EchoFactory(), interface="127.0.0.1")
    first.startListening()
    try:
        second = TCPPort(first.port, EchoFactory(), interface="127.0.0.1")
        with pytest.raises(PortError, match=f"cannot listen on tcp:127.0.0.1:{first.port}: "):
            second.startListening()
    finally:
        first.stopListening()


def test_unix_port_replaces_a_stale_socket_but_not_a_live_one(tmp_path) -> None:
    path = str(tmp_path / "s.sock")
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(path)
    stale.close()  # the file stays, nobody listens: a crashed server's leftover
    port = UNIXPort(path, EchoFactory(), mode=0o600)
    port.startListening()
    try:
        assert oct(os.stat(path).st_mode & 0o777) == oct(0o600)
        with pytest.raises(PortError, match="another process serves it"):
            UNIXPort(path, EchoFactory()).startListening()
    finally:
        port.stopListening()
    assert not os.path.exists(path)


@pytest.mark.parametrize(
    "payload",
    [
        b"cos\nsystem\n(S'touch {marker}'\ntR.",  # the classic
        b"cposix\nsystem\n(S'touch {marker}'\ntR.",
        b'c__builtin__\neval\n(S\'open("{marker}", "w")\'\ntR.',
        b'cbuiltins\nexec\n(S\'open("{marker}", "w")\'\ntR.',
        b"csubprocess\ncall\n((S'touch'\nS'{marker}'\nltR.",
        # what the old denylist let through (issue 9, item 10)
        b'ctimeit\ntimeit\n(S\'open("{marker}", "w")\'\ntR.',
        b"cpydoc\npipepager\n(S'x'\nS'touch {marker}'\ntR.",
        b"cio\nopen\n(S'{marker}'\nS'w'\ntR.",
        # forkd's own functions are not classes: tapfile.save would write a file
        b"cforkd.tapfile\nsave\n(NS'{marker}'\ntR.",
        # a package a hostile header declares may not be the standard library
        b"modules=os\ncos\nsystem\n(S'touch {marker}'\ntR.",
    ],
)
def test_a_hostile_pickle_is_refused_before_it_runs(tmp_path, payload: bytes) -> None:
    marker = tmp_path / "pwned"
    payload = payload.replace(b"{marker}", str(marker).encode())
    if payload.startswith(b"modules="):  # goes in the header line
        declared, payload = payload.split(b"\n", 1)
        data = tapfile.header().rstrip(b"\n") + b" " + declared + b"\n" + payload
    else:
        data = tapfile.header() + payload
    path = tmp_path / "hostile.tap"
    path.write_bytes(data)
    with pytest.raises(TapError, match="refusing to load: it names") as info:
        tapfile.load(str(path))
    assert "\n" not in str(info.value)
    assert not marker.exists()


def test_a_save_removes_what_interrupted_saves_left_and_nothing_else(
    tmp_path: pathlib.Path,
) -> None:
    """Killed between write and rename, a save leaves its temporary file (issue 9, item 7)."""
    import subprocess
    import sys
    import time

    finished = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    dead = int(finished.stdout)
    path = tmp_path / "app.tap"
    leftover = tmp_path / f".app.tap.{dead}.abc123.tap.tmp"
    in_progress = tmp_path / f".app.tap.{os.getpid()}.def456.tap.tmp"
    older_forkd = tmp_path / ".k3j4h5g6.tap.tmp"
    fresh_unowned = tmp_path / ".z9y8x7w6.tap.tmp"
    unrelated = tmp_path / ".other.tap.1.aaa.tap.tmp"
    for each in (leftover, in_progress, older_forkd, fresh_unowned, unrelated):
        each.write_bytes(b"x" * 1000)
    hour_ago = time.time() - 3600
    os.utime(older_forkd, (hour_ago, hour_ago))
    tapfile.save(Application("app"), str(path))
    assert not leftover.exists() and not older_forkd.exists()
    assert in_progress.exists() and fresh_unowned.exists()
    assert unrelated.exists(), "another tap's save is not this one's to clean"
    assert tapfile.load(str(path)).name == "app"


def test_saving_over_a_tap_changed_on_disk_is_refused(tmp_path: pathlib.Path) -> None:
    """The seed's order: load, edit in the shell, `mktap --append` the file, then save: the
    save used to drop the appended port without a word (issue 9, item 11)."""
    from forkd.control.commands import _tapedit
    from forkd.ports import TCPPort
    from forkd.protocol import Factory

    path = str(tmp_path / "app.tap")
    tapfile.save(Application("app"), path)
    running = tapfile.load(path)
    running.name = "edited in the shell"
    elsewhere = tapfile.load(path)  # what mktap --append does: load, add, save
    elsewhere.ports.append(TCPPort(8123, Factory(), interface="127.0.0.1"))
    tapfile.save(elsewhere, path)
    with pytest.raises(tapfile.TapChanged, match="changed on disk since it was loaded"):
        running.save()
    assert [p.port for p in tapfile.load(path).ports] == [8123], "the appended port stays"
    assert running.save("mine").endswith("app-mine.tap"), "a tagged save is still possible"
    # forkctl append edits the file as the running application changes: still in step
    in_step = tapfile.load(path)
    _tapedit.add_ports(in_step, path, [TCPPort(8124, Factory(), interface="127.0.0.1")])
    in_step.save()


def test_a_taps_own_package_is_recorded_and_allowed(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """mktap records the packages a tap names beyond forkd's; only those are let in."""
    package = tmp_path / "mysite"
    package.mkdir()
    (package / "__init__.py").write_text(
        "from forkd.protocol import Factory\n\n\ndef greeting():\n    return 'hi'\n\n\n"
        "class SiteFactory(Factory):\n    make = greeting\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    from mysite import SiteFactory  # type: ignore[import-not-found]

    from forkd.ports import TCPPort

    application = Application("site")
    factory = SiteFactory()
    factory.hello = SiteFactory.make  # a function of its own package, by reference
    application.ports.append(TCPPort(8125, factory, interface="127.0.0.1"))
    path = str(tmp_path / "site.tap")
    tapfile.save(application, path)
    assert pathlib.Path(path).read_bytes().split(b"\n", 1)[0].endswith(b" modules=mysite")
    loaded = tapfile.load(path)
    assert loaded.ports[0].factory.hello() == "hi"
    # the same pickle with the declaration stripped is refused, naming how to allow it
    head, body = pathlib.Path(path).read_bytes().split(b"\n", 1)
    pathlib.Path(path).write_bytes(tapfile.header() + body)
    with pytest.raises(TapError, match="allow it with FORKD_TAP_MODULES=mysite"):
        tapfile.load(path)
    monkeypatch.setenv("FORKD_TAP_MODULES", "mysite")
    assert tapfile.load(path).name == "site"
