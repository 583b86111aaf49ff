"""The Helm chart as users install it: `helm lint --strict` with each environment's values,
a values schema that refuses bad values with a message naming the key, a render that is
byte-for-byte deterministic, the notes `helm install` prints, and the chart as the one source
of the install (no Kubernetes object is kept anywhere else)."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from ragmesh_lab import chart
from tests.support.contract import ROOT

ENVIRONMENTS = ("prod", "staging", "dev")
CHART = ROOT / chart.CHART


def helm(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(chart.helm(ROOT)), *args], capture_output=True, text=True, cwd=ROOT, check=False
    )


def values_file(environment: str) -> str:
    return str(ROOT / "deploy" / environment / "values.yaml")


@pytest.mark.parametrize("environment", [*ENVIRONMENTS, "defaults"])
def test_helm_lint_strict_passes(environment: str) -> None:
    args = [] if environment == "defaults" else ["-f", values_file(environment)]
    done = helm("lint", "--strict", str(CHART), *args)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 chart(s) failed" in done.stdout


@pytest.mark.parametrize("environment", ENVIRONMENTS)
def test_the_render_is_deterministic(environment: str) -> None:
    args = ["template", "ragmesh", str(CHART), "-n", f"rag-{environment}"]
    first = helm(*args, "-f", values_file(environment))
    second = helm(*args, "-f", values_file(environment))
    assert first.returncode == 0, first.stderr
    assert first.stdout == second.stdout


#: bad values, and what helm's refusal must say (the key, and why)
BAD_VALUES: list[tuple[str, dict[str, Any], list[str]]] = [
    ("a wrong type", {"gpu": {"enabled": "yes"}}, ["/gpu/enabled", "want boolean"]),
    ("an unknown key", {"querry": {"autoscaling": {}}}, ["'querry' not allowed"]),
    (
        "an unknown nested key",
        {"query": {"autoscaling": {"minReplica": 1}}},
        ["/query/autoscaling", "'minReplica' not allowed"],
    ),
    ("an unknown environment", {"environment": "qa"}, ["/environment", "'prod', 'staging', 'dev'"]),
    (
        "the in-process vLLM engine without a GPU",
        {"gpu": {"enabled": False}, "generation": {"engine": "vllm"}},
        ["/generation/engine", "'extractive', 'openai'"],
    ),
    (
        "the openai engine without a server",
        {"generation": {"engine": "openai"}},
        ["/generation/openai/url", "minLength"],
    ),
    (
        "a model server URL that is not HTTP",
        {"generation": {"engine": "openai", "openai": {"url": "grpc://llm:50051"}}},
        ["/generation/openai/url", "does not match pattern"],
    ),
    (
        "the chart's vLLM server without its client",
        {"vllmServer": {"enabled": True}},
        ["/generation/engine", "must be 'openai'"],
    ),
    (
        "external Redis without its addresses",
        {"redis": {"external": {"enabled": True}}},
        ["/redis/external/queue/host", "/redis/external/cache/host"],
    ),
    (
        "a retrieval backend this release does not have",
        {"retrieval": {"backend": "qdrant"}},
        ["/retrieval/backend", "'faiss'"],
    ),
    (
        "an image tag that is no tag",
        {"image": {"tag": "v1 beta"}},
        ["/image/tag", "does not match pattern"],
    ),
    (
        "an autoscaler whose minimum is above its maximum",
        {"query": {"autoscaling": {"minReplicas": 30, "maxReplicas": 20}}},
        ["query.autoscaling: minReplicas 30 is above maxReplicas 20"],
    ),
]


@pytest.mark.parametrize(
    ("values", "messages"), [(v, m) for _, v, m in BAD_VALUES], ids=[i for i, _, _ in BAD_VALUES]
)
def test_the_schema_refuses_bad_values_naming_the_key(
    tmp_path: Path, values: dict[str, Any], messages: list[str]
) -> None:
    bad = tmp_path / "values.yaml"
    bad.write_text(yaml.safe_dump(values))
    done = helm("template", "ragmesh", str(CHART), "-f", values_file("prod"), "-f", str(bad))
    assert done.returncode != 0, f"accepted: {values}"
    for message in messages:
        assert message in done.stderr, done.stderr


def test_install_prints_what_to_do_next() -> None:
    """NOTES.txt, as `helm install` prints it (a client-side dry run needs no cluster)."""
    done = helm(
        "install", "ragmesh", str(CHART), "-n", "rag-dev", "-f", values_file("dev"),
        "--dry-run=client",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    notes = done.stdout.split("NOTES:", 1)[1]
    assert "https://rag.dev.example.com" in notes
    assert "ragmesh keys create" in notes and "secret generic ragmesh-api-keys" in notes
    assert "/v1/chat/completions" in notes  # a first question
    assert "kubectl -n rag-dev get canaries" in notes  # watching a canary
    assert "ragmesh-api-keys-dev" in notes  # istiod's provider for this environment


def test_no_object_is_kept_outside_the_chart() -> None:
    """One source: the Kubernetes objects of the install are the chart's templates; the
    repository's other YAML is values, Argo CD's Applications, istiod's values and data."""
    tracked = subprocess.run(
        ["git", "ls-files", "*.yaml", "*.yml"], capture_output=True, text=True, cwd=ROOT, check=True
    ).stdout.split()
    elsewhere = [
        p for p in tracked if not p.startswith(("charts/", "tests/", ".github/", "deploy/argocd/"))
    ]
    assert "deploy/prod/values.yaml" in elsewhere
    for path in elsewhere:
        for doc in yaml.safe_load_all((ROOT / path).read_text()):
            assert not (isinstance(doc, dict) and {"apiVersion", "kind"} <= doc.keys()), path


#: values read only when another is set: the values that switch them on
CONTEXT = {
    "generation.engine": {"generation.openai.url": "https://llm.example.com/v1"},
    "gpu.nodeSelector": {"gpu.enabled": True},
    "generation.openai": {
        "generation.engine": "openai",
        "generation.openai.url": "https://llm.example.com/v1",
    },
    "vllmServer": {"vllmServer.enabled": True, "generation.engine": "openai"},
    "redis.external": {
        "redis.external.enabled": True,
        "redis.external.queue.host": "q.example.com",
        "redis.external.cache.host": "c.example.com",
    },
    "models": {"gpu.enabled": True, "generation.engine": "vllm"},
    "retrieval.milvus": {"retrieval.backend": "milvus"},
    "retrieval.backup.schedule": {"retrieval.backup.enabled": True},
    "retrieval.backup.keep": {"retrieval.backup.enabled": True},
    "retrieval.backup.storage": {"retrieval.backup.enabled": True},
}
#: a different valid value, where changing the type's way would not be valid (None: skip)
OTHER = {
    "environment": "dev",
    "generation.engine": "openai",
    "image.pullPolicy": "Always",
    "image.tag": "9.9.9",
    "generation.openai.url": "https://other.example.com/v1",
    "retrieval.backend": "milvus",
    "retrieval.milvus.uri": "https://milvus.example.com:19530",
    "retrieval.milvus.consistency": "session",
    "retrieval.milvus.indexKind": "ivf",
    "retrieval.backup.schedule": "@hourly",
    "gate.minRecall": 0.8,
    "gate.minFact": 0.7,
    "gate.golden": '{"question": "Q?", "document": "d.md", "fact": "f"}\n',
    # switches that need others changed with them: test_deploy.py renders them (VARIANTS)
    "vllmServer.enabled": None,
    "redis.external.enabled": None,
}


def _leaves(node: dict[str, Any], path: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
    """Every leaf of the values, by its path (keys may hold dots: nvidia.com/gpu.present)."""
    out: dict[tuple[str, ...], Any] = {}
    for key, value in node.items():
        here = (*path, key)
        if isinstance(value, dict) and value:
            out.update(_leaves(value, here))
        else:
            out[here] = value
    return out


def _other(leaf: str, value: Any) -> Any:
    if leaf in OTHER:
        return OTHER[leaf]
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value + 1
    if isinstance(value, list):
        return [*value, "other"]
    if isinstance(value, dict):  # an empty map: give it an entry
        return {"tag": "9.9.9"} if leaf.endswith(".image") else {"ragmesh.io/pool": "x"}
    text = str(value)
    for unit in ("Gi", "Mi", "m", "s"):
        if text.endswith(unit) and text[: -len(unit)].isdigit():
            return f"{int(text[: -len(unit)]) + 1}{unit}"
    return text + "x" if text else "x"


def _render(values: dict[tuple[str, ...], Any], tmp: Path) -> str:
    file = tmp / "values.yaml"
    doc: dict[str, Any] = {}
    for path, value in values.items():
        node = doc
        *parents, last = path
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    text = yaml.safe_dump(doc)
    if text not in _RENDERED:
        file.write_text(text)
        done = helm("template", "ragmesh", str(CHART), "-f", str(file))
        assert done.returncode == 0, (values, done.stderr)
        _RENDERED[text] = done.stdout
    return _RENDERED[text]


_RENDERED: dict[str, str] = {}


def test_every_value_changes_the_render(tmp_path: Path) -> None:
    """No value drifts from the templates: setting any value of values.yaml to another valid
    one changes what the chart renders (with the values that switch it on, where it has any)."""
    leaves = _leaves(yaml.safe_load((CHART / "values.yaml").read_text()))
    unused = []
    for path, value in leaves.items():
        leaf = ".".join(path)
        other = _other(leaf, value)
        if other is None:
            continue
        switches = next((c for prefix, c in CONTEXT.items() if leaf.startswith(prefix)), {})
        context = {tuple(k.split(".")): v for k, v in switches.items()}
        if _render(context, tmp_path) == _render({**context, path: other}, tmp_path):
            unused.append(leaf)
    assert len(leaves) > 60 and not unused, unused
