"""`--reload`'s logic without a running server: the options, which changed files count,
the bytecode a changed module must not be imported from, and the master's handle on its
watcher process (started once it serves, kept across a re-exec, stopped when it stops).
The end-to-end tests are in test_e2e_devreload.py."""

from __future__ import annotations

import json
import logging
import os
import pathlib
import py_compile
import signal
import subprocess
import sys
from typing import Any

import pytest
import watchfiles

from forkd import tapfile
from forkd.cli import forkd as forkd_cli
from forkd.supervisor import reloader, resume
from forkd.supervisor.master import MasterConfig
from forkd.supervisor.reloader import ReloadSettings
from forkd.supervisor.watcher import (
    ParentGone,
    SourceFilter,
    describe,
    forget_bytecode,
    watched_roots,
)
from tests.supervising import make_master, start
from tests.supervisor.test_reexec_state import log_setup, through_exec

__all__ = ["log_setup"]  # the fixture, used by name below

MODIFIED = watchfiles.Change.modified


# -- the options ---------------------------------------------------------------------------
@pytest.mark.parametrize("command", ["serve", "start"])
def test_reload_without_watchfiles_is_one_line_naming_the_extra(
    command: str, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setitem(sys.modules, "watchfiles", None)  # `import watchfiles` fails
    target = "app:app" if command == "serve" else str(tmp_path / "app.tap")
    assert forkd_cli.main([command, target, "--reload"]) == forkd_cli.EXIT_FAILURE
    err = capsys.readouterr().err
    assert err == "forkd: --reload needs the watchfiles package: pip install 'forkd[reload]'\n"
    assert os.listdir(tmp_path) == [], "nothing imported, written or started before that"


@pytest.mark.parametrize("option", ["--reload-dir=.", "--reload-include=*.html"])
def test_reload_tuning_without_reload_is_refused(
    option: str, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    monkeypatch.chdir(tmp_path)
    assert forkd_cli.main(["serve", "app:app", option]) == forkd_cli.EXIT_FAILURE
    [line] = capsys.readouterr().err.splitlines()
    assert "need --reload" in line


def test_a_reload_dir_that_is_not_a_directory_is_named(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    monkeypatch.chdir(tmp_path)
    code = forkd_cli.main(["serve", "app:app", "--reload", "--reload-dir", "src"])
    assert code == forkd_cli.EXIT_FAILURE
    assert capsys.readouterr().err == f"forkd: --reload-dir {tmp_path / 'src'}: not a directory\n"


def test_serve_help_documents_reload(capsys: Any) -> None:
    with pytest.raises(SystemExit):
        forkd_cli.main(["serve", "--help"])
    out = capsys.readouterr().out
    for option in ("--reload ", "--reload-dir", "--reload-include", "--reload-exclude"):
        assert option in out
    assert "forkctl reload" in out and "forkd[reload]" in out


# -- which changes count -------------------------------------------------------------------
def test_source_filter_counts_python_files_under_the_roots_only(tmp_path: pathlib.Path) -> None:
    root, tap = str(tmp_path / "src"), str(tmp_path / "app.tap")
    counts = SourceFilter(ReloadSettings(paths=[root], files=[tap]))
    assert counts(MODIFIED, f"{root}/app.py")
    assert counts(MODIFIED, f"{root}/pkg/views.py")
    assert counts(MODIFIED, tap), "the tap counts, whatever the globs say"
    assert not counts(MODIFIED, f"{root}/README.md")
    assert not counts(MODIFIED, f"{root}/__pycache__/app.cpython-311.pyc")
    assert not counts(MODIFIED, f"{root}/.app.py.swp"), "an editor's swap file"
    assert not counts(MODIFIED, str(tmp_path / "other.py")), "beside the tap, not under src"
    assert not counts(MODIFIED, str(tmp_path / "app-shutdown.tap"))


def test_source_filter_include_and_exclude_globs(tmp_path: pathlib.Path) -> None:
    root = str(tmp_path)
    settings = ReloadSettings(
        paths=[root], include=["*.py", "templates/*.html"], exclude=["migrations", "*_test.py"]
    )
    counts = SourceFilter(settings)
    assert counts(MODIFIED, f"{root}/templates/index.html")
    assert not counts(MODIFIED, f"{root}/static/index.html")
    assert not counts(MODIFIED, f"{root}/app/migrations/0001.py"), "an excluded directory"
    assert not counts(MODIFIED, f"{root}/app/views_test.py")
    assert counts(MODIFIED, f"{root}/app/views.py")


def test_a_watched_file_outside_the_directories_is_watched_through_its_directory(
    tmp_path: pathlib.Path,
) -> None:
    settings = ReloadSettings(paths=[str(tmp_path / "src")], files=[str(tmp_path / "app.tap")])
    assert watched_roots(settings) == [str(tmp_path / "src"), str(tmp_path)]
    inside = ReloadSettings(paths=[str(tmp_path)], files=[str(tmp_path / "app.tap")])
    assert watched_roots(inside) == [str(tmp_path)]


def test_describe_names_the_first_change_relative_to_its_root() -> None:
    settings = ReloadSettings(paths=["/srv/app"])
    assert describe(["/srv/app/pkg/a.py"], settings) == "pkg/a.py"
    assert describe(["/srv/app/a.py", "/srv/app/b.py", "/x.tap"], settings) == "a.py and 2 more"


def test_parent_gone_is_set_once_the_parent_is_not_ours() -> None:
    assert not ParentGone(os.getppid()).is_set()
    assert ParentGone(os.getppid() + 1).is_set()


# -- bytecode ------------------------------------------------------------------------------
def reply_of(directory: pathlib.Path) -> str:
    """What `import mod; mod.REPLY` gives in a fresh interpreter (the new workers' view)."""
    done = subprocess.run(
        [sys.executable, "-c", "import mod; print(mod.REPLY)"],
        cwd=directory,
        env={k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"},
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout.strip()


def test_forget_bytecode_makes_a_same_second_same_size_edit_seen(tmp_path: pathlib.Path) -> None:
    source = tmp_path / "mod.py"
    source.write_text('REPLY = "one"\n')
    py_compile.compile(str(source))  # what the first import leaves in __pycache__
    assert reply_of(tmp_path) == "one"
    stamp = source.stat()
    source.write_text('REPLY = "two"\n')  # same length, and (below) the same second
    os.utime(source, ns=(stamp.st_atime_ns, stamp.st_mtime_ns))
    assert reply_of(tmp_path) == "one", "the cache is trusted: the edit goes unseen"
    forget_bytecode([str(source), str(tmp_path / "app.tap")])
    assert reply_of(tmp_path) == "two"


# -- the master's handle on the watcher ------------------------------------------------------
@pytest.fixture
def spawned(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """The watcher processes the master starts, as argv lists (pid 7000 + n)."""
    commands: list[list[str]] = []

    def posix_spawn(path: str, argv: list[str], env: dict[str, str], **how: Any) -> int:
        commands.append(list(argv))
        return 7000 + len(commands)

    monkeypatch.setattr(reloader.os, "posix_spawn", posix_spawn)
    return commands


def reloading_master(monkeypatch: pytest.MonkeyPatch, root: str) -> Any:
    settings = ReloadSettings(paths=[root], exclude=["build"], delay=0.3)
    return make_master(
        monkeypatch, workers=1, save_on_stop=False, control_path="/run/app.ctl", reload=settings
    )


def test_the_watcher_starts_once_the_master_serves_and_stops_with_it(
    monkeypatch: pytest.MonkeyPatch, spawned: list[list[str]], caplog: Any
) -> None:
    master = reloading_master(monkeypatch, "/srv/app")
    master.manage_workers()
    assert spawned == [], "not while the application is still starting"
    start(master)
    [command] = spawned
    assert command[1:3] == ["-m", "forkd.supervisor.watcher"]
    assert command[command.index("--control") + 1] == "/run/app.ctl"
    assert command[command.index("--parent") + 1] == str(os.getpid())
    assert ReloadSettings.from_json(command[-1]) == master.config.reload
    master.manage_workers()
    assert len(spawned) == 1
    master.stop()
    assert (7001, signal.SIGTERM) in master.killed
    with caplog.at_level(logging.INFO, logger="forkd"):
        master.pool.helpers.pop(7001)(0)
    assert master.reloader.pid is None
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], "it was asked to"
    master.loop.close()


def test_a_watcher_that_dies_by_itself_is_logged(
    monkeypatch: pytest.MonkeyPatch, spawned: list[list[str]], caplog: Any
) -> None:
    master = reloading_master(monkeypatch, "/srv/app")
    start(master)
    with caplog.at_level(logging.INFO, logger="forkd"):
        master.pool.helpers.pop(7001)(1 << 8)  # exit code 1
    [record] = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert "source watcher exited with code 1" in record.getMessage()
    master.loop.close()


def test_no_watcher_without_reload(
    monkeypatch: pytest.MonkeyPatch, spawned: list[list[str]]
) -> None:
    master = make_master(monkeypatch, workers=1, control_path="/run/app.ctl")
    start(master)
    assert master.reloader is None and spawned == []
    master.loop.close()


def test_the_watcher_is_adopted_across_the_reexec(
    tmp_path: pathlib.Path,
    monkeypatch: pytest.MonkeyPatch,
    spawned: list[list[str]],
    log_setup: Any,
) -> None:
    master = reloading_master(monkeypatch, str(tmp_path))
    master.application.tapfile = master.tapfile = str(tmp_path / "app.tap")
    tapfile.save(master.application, master.tapfile)
    start(master)
    state, _ = master.snapshot()
    assert state["reloader_pid"] == 7001
    assert MasterConfig.from_state(json.loads(json.dumps(state["config"]))) == master.config
    state["workers"] = []  # fakes without descriptors: test_reexec_state adopts real ones
    new = resume.resume(through_exec(state), log_setup)
    try:
        assert new.config.reload == master.config.reload
        assert new.reloader.pid == 7001 and 7001 in new.pool.helpers
        new.start_reloader()
        assert len(spawned) == 1, "the same watcher, not a second one"
    finally:
        new.loop.close()
        master.loop.close()


def test_close_kills_and_reaps_the_watcher(monkeypatch: pytest.MonkeyPatch) -> None:
    """The last thing a master does: no watcher outlives it, not even a zombie."""
    master = reloading_master(monkeypatch, "/srv/app")
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        master.reloader.adopt(sleeper.pid)
        monkeypatch.setattr(master.pool, "kill", lambda pid, sig: os.kill(pid, sig))
        master.reloader.close()
        with pytest.raises(ChildProcessError):
            os.waitpid(sleeper.pid, os.WNOHANG)  # already reaped
        assert master.reloader.pid is None and sleeper.pid not in master.pool.helpers
    finally:
        if sleeper.poll() is None:  # close() failed to end it (poll sees a reaped one gone)
            sleeper.kill()
            sleeper.wait()
        master.loop.close()


def test_a_syntax_error_at_boot_names_the_file_and_line() -> None:
    """What the reload failure's one line says (the worker's boot error)."""
    from forkd.supervisor.worker import last_line

    with pytest.raises(SyntaxError) as raised:
        compile("def app(:\n", "/srv/app/app.py", "exec")
    assert last_line(raised.value) == "SyntaxError: invalid syntax (app.py, line 1)"
    assert last_line(ValueError("boom")) == "ValueError: boom"
