"""`forkctl save` failures reach the user as one line naming the place or the attribute."""

from __future__ import annotations

from typing import Any

import pytest

from forkd.app import Application
from forkd.control.commands import save
from forkd.control.reply import CommandError
from forkd.protocol import Factory


class Master:
    def __init__(self, application: Application) -> None:
        self.application = application

    def save(self, tag: str | None = None) -> str:
        return self.application.save(tag)


def test_unpicklable_shell_edit_is_a_command_error_naming_it(tmp_path: Any) -> None:
    app = Application("web")
    app.tapfile = str(tmp_path / "web.tap")
    app.listenTCP(9000, Factory())
    app.ports[0].factory.hook = lambda: 0
    with pytest.raises(CommandError, match=r"cannot pickle application.ports\[0\].factory.hook"):
        save.execute(Master(app), {}, lambda error, result: None)  # type: ignore[arg-type]
    assert list(tmp_path.iterdir()) == []


def test_an_unwritable_place_names_the_directory(tmp_path: Any) -> None:
    app = Application("web")
    app.tapfile = str(tmp_path / "gone" / "web.tap")
    with pytest.raises(CommandError) as caught:
        save.execute(Master(app), {"tag": "good"}, lambda error, result: None)  # type: ignore[arg-type]
    assert str(caught.value) == f"cannot save in {tmp_path / 'gone'}: No such file or directory"
