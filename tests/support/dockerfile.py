"""A small Dockerfile reader for the image tests: instructions grouped into stages."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Instruction:
    keyword: str
    args: str

    def exec_form(self) -> list[str] | None:
        """The JSON-array form of RUN/ENTRYPOINT/CMD, or None for the shell form."""
        try:
            value = json.loads(self.args)
        except json.JSONDecodeError:
            return None
        return [str(v) for v in value] if isinstance(value, list) else None


@dataclass
class Stage:
    name: str
    base: str  # what FROM names: ${BASE_IMAGE} or an earlier stage
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]


@dataclass
class Dockerfile:
    preamble: list[Instruction]  # ARGs before the first FROM
    stages: dict[str, Stage]

    def lineage(self, name: str) -> list[Stage]:
        """The stage and every stage it is built FROM, nearest first."""
        chain = []
        while name in self.stages:
            chain.append(self.stages[name])
            name = self.stages[name].base
        return chain

    def effective(self, name: str, keyword: str) -> Instruction | None:
        """The last ``keyword`` instruction in effect for stage ``name`` (USER, ENTRYPOINT)."""
        for stage in self.lineage(name):
            found = stage.all(keyword)
            if found:
                return found[-1]
        return None

    def targets(self) -> list[str]:
        """Stages no other stage builds FROM or copies from: the images one builds."""
        used = {s.base for s in self.stages.values()}
        for s in self.stages.values():
            for i in s.all("COPY"):
                m = re.search(r"--from=(\S+)", i.args)
                if m:
                    used.add(m.group(1))
        return [n for n in self.stages if n not in used]


def parse(path: Path) -> Dockerfile:
    text = re.sub(r"\\\n", " ", path.read_text())
    preamble: list[Instruction] = []
    stages: dict[str, Stage] = {}
    current: Stage | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        keyword, _, args = line.partition(" ")
        inst = Instruction(keyword.upper(), re.sub(r"\s+", " ", args).strip())
        if inst.keyword == "FROM":
            m = re.fullmatch(r"(?:--\S+ )*(\S+) AS (\S+)", inst.args, re.IGNORECASE)
            if m is None:
                raise ValueError(f"{path}: FROM without a stage name: {inst.args}")
            current = stages[m.group(2)] = Stage(m.group(2), m.group(1))
        elif current is None:
            preamble.append(inst)
        else:
            current.instructions.append(inst)
    return Dockerfile(preamble, stages)
