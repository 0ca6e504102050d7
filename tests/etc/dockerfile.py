"""etc/container/Dockerfile read as its instructions (continuation lines joined, comments
dropped), so the tests can check what the image runs without building it."""

from __future__ import annotations

import json
import pathlib
from dataclasses import dataclass

from tests.etc.installed import repo_file

DOCKERFILE = repo_file("etc/container/Dockerfile")


@dataclass(frozen=True)
class Instruction:
    keyword: str  # upper case: FROM, RUN, USER, ...
    arguments: str

    def exec_form(self) -> list[str]:
        """The JSON array of an exec-form CMD/ENTRYPOINT (or of HEALTHCHECK's CMD)."""
        text = self.arguments
        if self.keyword == "HEALTHCHECK":
            text = text[text.index("CMD") + len("CMD") :]
        value = json.loads(text)
        assert isinstance(value, list) and all(isinstance(item, str) for item in value)
        return value


def instructions(path: pathlib.Path = DOCKERFILE) -> list[Instruction]:
    found: list[Instruction] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if line.startswith("#") or (not line and not pending):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        whole = (pending + line).strip()
        pending = ""
        if whole:
            keyword, _, arguments = whole.partition(" ")
            found.append(Instruction(keyword.upper(), arguments.strip()))
    return found


def only(keyword: str, path: pathlib.Path = DOCKERFILE) -> Instruction:
    """The last `keyword` instruction (the one that counts for the final image)."""
    matching = [i for i in instructions(path) if i.keyword == keyword]
    assert matching, f"{path} has no {keyword}"
    return matching[-1]
