"""The docs a newcomer walks: a short README that links everything, and no dead link."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PAGES = [
    ROOT / "README.md",
    *sorted((ROOT / "docs").glob("*.md")),
    *(ROOT / d / "README.md" for d in ("mesh", "charts/ragmesh", "deploy", "images", "bench")),
]
LINK = re.compile(r"\]\(([^)#\s]+)(#[^)\s]*)?\)")


def test_every_relative_link_resolves() -> None:
    dead = []
    for page in PAGES:
        for target, _ in LINK.findall(page.read_text()):
            if target.startswith(("http://", "https://", "mailto:")):
                continue
            if not (page.parent / target).exists():
                dead.append(f"{page.relative_to(ROOT)} → {target}")
    assert not dead, dead


def test_the_readme_is_a_front_door() -> None:
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 200
    for page in [p for p in PAGES if p.parent.name == "docs"]:
        assert f"docs/{page.name}" in readme, page.name
    for heading in ("## The two commands", "## Services", "## Layout"):
        assert heading in readme
