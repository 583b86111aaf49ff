"""deploy/argocd: the Argo CD project and Applications that install the chart.

Argo CD cannot run here; its objects are held to a closed schema of Argo CD's documented
API and checked against what they deploy: each Application's chart renders with its values
files, everything it renders may go where the project allows, and the fields Flagger
rewrites during a canary are ones Argo CD ignores (or a sync would undo every promotion).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from ragmesh_lab import chart
from tests.support.tools import kustomize

ROOT = Path(__file__).resolve().parents[2]
SCHEMAS = yaml.safe_load((Path(__file__).parent / "schemas" / "argocd.yaml").read_text())
ENVIRONMENTS = ("staging", "prod")


def argocd(kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in kustomize("deploy/argocd") if d["kind"] == kind}


def application(environment: str) -> dict[str, Any]:
    return argocd("Application")[f"ragmesh-{environment}"]


def deployed(app: dict[str, Any]) -> tuple[dict[str, Any], ...]:
    """What the Application installs: its chart rendered as Argo CD renders it (helm template
    with its values files, relative to the chart, in the destination namespace)."""
    source = app["source"]
    chart_dir = ROOT / source["path"]
    values = [a for f in source["helm"]["valueFiles"] for a in ("-f", str(chart_dir / f))]
    assert source["path"] == str(chart.CHART)
    return chart.objects(ROOT, *values, namespace=app["destination"]["namespace"])


def test_every_object_matches_the_closed_schema() -> None:
    docs = kustomize("deploy/argocd")
    assert sorted(d["kind"] for d in docs) == ["AppProject", "Application", "Application"]
    docs += kustomize("deploy/argocd/milvus")
    for doc in docs:
        jsonschema.validate(doc, {"$defs": SCHEMAS["$defs"], **SCHEMAS[doc["kind"]]})


def test_the_schema_rejects_a_misspelled_field() -> None:
    doc = dict(application("staging"))
    doc["spec"] = {**doc["spec"], "syncPolicy": {"automated": {"selfheal": True}}}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(doc, {"$defs": SCHEMAS["$defs"], **SCHEMAS["Application"]})


@pytest.mark.parametrize("environment", ENVIRONMENTS)
def test_the_application_installs_the_chart_where_the_project_allows(environment: str) -> None:
    app = application(environment)["spec"]
    project = argocd("AppProject")[app["project"]]["spec"]
    assert app["source"]["repoURL"] in project["sourceRepos"]
    assert app["source"]["helm"]["valueFiles"] == [f"../../deploy/{environment}/values.yaml"]
    assert app["source"]["helm"]["releaseName"] == "ragmesh"
    assert "CreateNamespace=true" in app["syncPolicy"]["syncOptions"]  # the chart does not
    assert app["source"]["targetRevision"] == "main"  # what CI's promotion commits to
    cluster = app["destination"]["name"]
    allowed = {d["namespace"] for d in project["destinations"] if d["name"] == cluster}
    assert app["destination"]["namespace"] == f"rag-{environment}"
    cluster_kinds = {(c["group"], c["kind"]) for c in project["clusterResourceWhitelist"]}
    for doc in deployed(app):
        namespace = doc["metadata"].get("namespace")
        if namespace is None:
            group = doc["apiVersion"].rpartition("/")[0]
            assert (group, doc["kind"]) in cluster_kinds, doc["kind"]
        else:
            assert namespace in allowed, (doc["kind"], doc["metadata"]["name"], namespace)
    others = {d["name"] for d in project["destinations"]} - {cluster}
    assert others, "staging and prod must be different clusters: both render rag-infra"


@pytest.mark.parametrize("environment", ENVIRONMENTS)
def test_sync_is_automated_and_ignores_what_flagger_rewrites(environment: str) -> None:
    spec = application(environment)["spec"]
    policy = spec["syncPolicy"]
    assert policy["automated"] == {"prune": True, "selfHeal": True}
    assert "RespectIgnoreDifferences=true" in policy["syncOptions"]
    ignored = {
        (d.get("group", ""), d["kind"], pointer)
        for d in spec["ignoreDifferences"]
        for pointer in d["jsonPointers"]
    }
    canaries = [d for d in deployed(spec) if d["kind"] == "Canary"]
    assert canaries
    for canary in canaries:
        target = canary["spec"]["targetRef"]
        assert ("apps", target["kind"], "/spec/replicas") in ignored
        assert ("", "Service", "/spec/selector") in ignored
        scaler = canary["spec"].get("autoscalerRef")
        if scaler:
            group = scaler["apiVersion"].rpartition("/")[0]
            assert (group, scaler["kind"], "/spec/scaleTargetRef") in ignored, scaler


def milvus_applications() -> dict[str, dict[str, Any]]:
    return {
        d["metadata"]["name"]: d
        for d in kustomize("deploy/argocd/milvus")
        if d["kind"] == "Application"
    }


@pytest.mark.parametrize("environment", ENVIRONMENTS)
def test_milvus_is_milvus_chart_at_a_pinned_version_with_this_repositorys_values(
    environment: str,
) -> None:
    """deploy/argocd/milvus: Milvus's own chart, referenced (never vendored) at an exact
    version, with values files that exist here, as release "milvus" in the namespace the
    ragmesh chart's retrieval expects and guards, where the project allows."""
    doc = milvus_applications()[f"ragmesh-milvus-{environment}"]
    jsonschema.validate(doc, {"$defs": SCHEMAS["$defs"], **SCHEMAS["Application"]})
    app = doc["spec"]
    project = argocd("AppProject")[app["project"]]["spec"]
    (milvus,) = [s for s in app["sources"] if "chart" in s]
    (values,) = [s for s in app["sources"] if "ref" in s]
    assert milvus["chart"] == "milvus" and milvus["repoURL"] in project["sourceRepos"]
    assert re.fullmatch(r"[0-9]+\.[0-9]+\.[0-9]+", milvus["targetRevision"])
    assert values["repoURL"] == application(environment)["spec"]["source"]["repoURL"]
    files = milvus["helm"]["valueFiles"]
    assert files[0] == "$values/deploy/milvus/values.yaml"
    for f in files:
        assert (ROOT / f.removeprefix(f"${values['ref']}/")).is_file(), f
    defaults = yaml.safe_load((ROOT / chart.CHART / "values.yaml").read_text())
    namespace = defaults["retrieval"]["milvus"]["namespace"]
    assert milvus["helm"]["releaseName"] == "milvus"  # the Service retrieval dials
    assert app["destination"]["namespace"] == namespace
    cluster = app["destination"]["name"]
    assert cluster == application(environment)["spec"]["destination"]["name"]
    allowed = {d["namespace"] for d in project["destinations"] if d["name"] == cluster}
    assert namespace in allowed
    # what the ragmesh chart renders with backend milvus may go where the project allows
    source = application(environment)["spec"]["source"]
    chart_dir = ROOT / source["path"]
    args = [a for f in source["helm"]["valueFiles"] for a in ("-f", str(chart_dir / f))]
    rendered = chart.objects(
        ROOT, *args, "--set", "retrieval.backend=milvus", namespace=f"rag-{environment}"
    )
    assert {d["metadata"].get("namespace") for d in rendered} - {None} <= allowed
