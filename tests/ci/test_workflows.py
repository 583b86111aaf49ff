"""The GitHub Actions workflows cannot run here: they are validated against GitHub's workflow
schema (check-jsonschema's vendored copy) and checked for the jobs, triggers and steps the
delivery flow depends on: lint → test → build → scan → push → staging's overlay."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from ragmesh_lab import chart
from tests.support.dockerfile import parse

ROOT = Path(__file__).resolve().parents[2]
WORKFLOWS = sorted((ROOT / ".github" / "workflows").glob("*.yaml"))
CHECK_JSONSCHEMA = Path(sys.executable).parent / "check-jsonschema"


def load(name: str) -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((ROOT / ".github" / "workflows" / name).read_text())
    doc["on"] = doc.pop(True)  # YAML 1.1 reads the key `on` as a boolean
    return doc


def runs(job: dict[str, Any]) -> str:
    return "\n".join(step.get("run", "") for step in job["steps"])


def step_index(job: dict[str, Any], pattern: str) -> int:
    for i, step in enumerate(job["steps"]):
        text = f"{step.get('name', '')} {step.get('uses', '')} {step.get('run', '')}"
        if re.search(pattern, text):
            return i
    raise AssertionError(f"no step matching {pattern!r}")


def test_there_are_workflows() -> None:
    assert {p.name for p in WORKFLOWS} == {"ci.yaml", "promote.yaml"}


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_workflow_matches_githubs_schema(path: Path) -> None:
    done = subprocess.run(
        [str(CHECK_JSONSCHEMA), "--builtin-schema", "vendor.github-workflows", str(path)],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_schema_check_rejects_a_broken_workflow(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("on: push\njobs:\n  x:\n    runs-on: ubuntu-24.04\n    step:\n      - run: a\n")
    done = subprocess.run(
        [str(CHECK_JSONSCHEMA), "--builtin-schema", "vendor.github-workflows", str(bad)],
        capture_output=True,
        text=True,
    )
    assert done.returncode != 0


def test_ci_runs_on_pull_requests_and_main() -> None:
    on = load("ci.yaml")["on"]
    assert "pull_request" in on and on["push"]["branches"] == ["main"]


def test_lint_runs_ruff_mypy_buf_lint_and_buf_breaking_against_main() -> None:
    lint = load("ci.yaml")["jobs"]["lint"]
    script = runs(lint)
    for command in ("make lint", "make typecheck", "make buf-lint", "make check-proto"):
        assert command in script, command
    assert "make buf-breaking BUF_AGAINST=origin/main" in script
    checkout = lint["steps"][step_index(lint, "actions/checkout")]
    assert checkout["with"]["fetch-depth"] == 0  # origin/main must be there to compare


def test_test_job_runs_make_test_through_ci_run() -> None:
    test = load("ci.yaml")["jobs"]["test"]
    assert ".ci/run" in runs(test)
    assert "make test" in (ROOT / ".ci" / "run").read_text()
    assert test["timeout-minutes"] <= 90


def test_images_are_built_for_every_target_scanned_before_push_and_only_pushed_from_main() -> None:
    images = load("ci.yaml")["jobs"]["images"]
    assert set(images["needs"]) == {"lint", "test"}
    matrix = images["strategy"]["matrix"]["include"]
    built = {(m["file"], m["target"]) for m in matrix}
    for file in ("images/Dockerfile", "images/cuda.Dockerfile"):
        assert {t for f, t in built if f == file} == set(parse(ROOT / file).targets()), file
    names = {m["image"] for m in matrix}
    assert names == {m["target"] + ("-cuda" if "cuda" in m["file"] else "") for m in matrix}
    scan = images["steps"][step_index(images, "aquasecurity/trivy-action")]
    assert scan["with"]["severity"] == "HIGH,CRITICAL" and scan["with"]["exit-code"] == "1"
    build = step_index(images, "docker/build-push-action")
    assert images["steps"][build]["with"]["push"] is False
    push = step_index(images, "docker push")
    assert step_index(images, "wheelhouse") < build < step_index(images, "trivy") < push
    assert "refs/heads/main" in images["steps"][push]["if"]
    assert images["permissions"]["packages"] == "write"


def test_the_chart_is_packaged_with_the_images_tag_and_pushed_on_main() -> None:
    job = load("ci.yaml")["jobs"]["chart"]
    assert job["needs"] == "images"
    script = runs(job)
    assert "make chart CHART_VERSION=${{ needs.images.outputs.tag }}" in script
    push = job["steps"][step_index(job, "helm push")]
    assert "refs/heads/main" in push["if"] and "oci://" in push["run"]
    assert "ragmesh-${{ needs.images.outputs.tag }}.tgz" in push["run"]
    assert job["permissions"]["packages"] == "write"


def test_make_chart_lints_strictly_and_packages_a_version_that_installs_its_images(
    tmp_path: Path,
) -> None:
    """What the chart job runs, here: a package whose appVersion is the given tag, so the
    packaged chart (without a values file) runs the images of that tag."""
    out = subprocess.run(
        ["make", "-s", "chart", "CHART_VERSION=0.3.0-abc1234"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    package = ROOT / ".build" / "charts" / "ragmesh-0.3.0-abc1234.tgz"
    images = {
        c["image"]
        for d in chart_objects(package)
        if d["kind"] == "Deployment"
        for c in d["spec"]["template"]["spec"]["containers"]
        if c["image"].startswith("ghcr.io/ragmesh/")
    }
    assert images and all(i.endswith(":0.3.0-abc1234") for i in images), images


def chart_objects(package: Path) -> list[dict[str, Any]]:
    """``helm template`` of a packaged chart (.tgz)."""
    out = subprocess.run(
        [str(chart.helm(ROOT)), "template", "ragmesh", str(package), "-n", "rag-prod"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def test_main_updates_stagings_values_and_prod_is_promoted_by_pull_request() -> None:
    ci = load("ci.yaml")
    promote = ci["jobs"]["promote-staging"]
    assert promote["needs"] == "images" and "refs/heads/main" in promote["if"]
    assert "scripts/set_image_tag.py deploy/staging" in runs(promote)
    assert ci["permissions"] == {"contents": "read"}  # write only where a job needs it
    prod = load("promote.yaml")
    assert "workflow_dispatch" in prod["on"]
    script = runs(prod["jobs"]["prod"])
    assert "set_image_tag.py deploy/prod --from deploy/staging" in script
    assert "gh pr create" in script


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_actions_are_pinned_and_commands_exist(path: Path) -> None:
    text = path.read_text()
    for action in re.findall(r"uses: (\S+)", text):
        assert re.search(r"@(v\d+|\d+\.\d+\.\d+|[0-9a-f]{40})$", action), action
    makefile = (ROOT / "Makefile").read_text()
    for target in re.findall(r"\bmake ([a-z-]+)", text):
        assert re.search(rf"^{target}:", makefile, re.M), f"make {target}"
    for script in re.findall(r"\b(scripts/\S+\.(?:sh|py)|\.ci/run)\b", text):
        assert (ROOT / script).is_file(), script


def test_set_image_tag_retags_an_environment_and_promotes_one_to_another(tmp_path: Path) -> None:
    for env in ("staging", "prod"):
        (tmp_path / env).mkdir()
        source = ROOT / "deploy" / env / "values.yaml"
        (tmp_path / env / "values.yaml").write_text(source.read_text())
    script = [sys.executable, str(ROOT / "scripts" / "set_image_tag.py")]
    subprocess.run([*script, str(tmp_path / "staging"), "0.2.0-abc1234"], check=True)
    subprocess.run(
        [*script, str(tmp_path / "prod"), "--from", str(tmp_path / "staging")], check=True
    )
    for env in ("staging", "prod"):
        text = (tmp_path / env / "values.yaml").read_text()
        original = (ROOT / "deploy" / env / "values.yaml").read_text()
        # only the image tag's line changed, and the chart renders every ragmesh image with it
        changed = [
            (a, b) for a, b in zip(original.splitlines(), text.splitlines(), strict=True) if a != b
        ]
        assert changed == [(changed[0][0], "  tag: 0.2.0-abc1234")]
        docs = chart.objects(ROOT, "-f", str(tmp_path / env / "values.yaml"))
        images = {
            c["image"]
            for d in docs
            if d["kind"] == "Deployment"
            for c in d["spec"]["template"]["spec"]["containers"]
            if c["image"].startswith("ghcr.io/ragmesh/")
        }
        assert images and all(i.endswith(":0.2.0-abc1234") for i in images), images
    bad = subprocess.run([*script, str(tmp_path / "prod"), "not a tag"], capture_output=True)
    assert bad.returncode == 2
