"""Run `promtool test rules` over rules and tests given as data."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import yaml

from tests.support.tools import promtool


def promtool_test(tmp_path: Path, rules: dict[str, Any], tests: list[dict[str, Any]]) -> str:
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(rules))
    (tmp_path / "test.yaml").write_text(
        yaml.safe_dump({"rule_files": ["rules.yaml"], "evaluation_interval": "15s", "tests": tests})
    )
    out = subprocess.run(
        [str(promtool()), "test", "rules", "test.yaml"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    return out.stdout + out.stderr if out.returncode else ""
