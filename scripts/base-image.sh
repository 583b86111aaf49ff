#!/usr/bin/env bash
# Makes the local base image: Debian bookworm (minbase) with python3 3.11, from debootstrap,
# imported into buildah's store. No registry is reached; only Debian's mirror.
#   scripts/base-image.sh NAME   (buildah flags come in $BUILDAH_FLAGS)
set -euo pipefail
name=${1:?usage: base-image.sh NAME}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
read -r -a flags <<<"${BUILDAH_FLAGS:-}"
if buildah "${flags[@]}" inspect --type image "$name" >/dev/null 2>&1; then
  echo "base image $name exists"; exit 0
fi
rootfs=$(mktemp -d)
trap 'rm -rf "$rootfs"' EXIT
debootstrap --variant=minbase --include=python3,ca-certificates bookworm "$rootfs" "$mirror" \
  >"$rootfs.log" 2>&1 || { tail -20 "$rootfs.log"; exit 1; }
rm -f "$rootfs.log"
# Nothing a service needs at run time: package caches, docs, man pages, translations.
rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* \
  "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/* \
  "$rootfs"/usr/share/locale/*
ctr=$(buildah "${flags[@]}" from scratch)
mnt=$(buildah "${flags[@]}" mount "$ctr")
cp -a "$rootfs"/. "$mnt"/
buildah "${flags[@]}" umount "$ctr" >/dev/null
buildah "${flags[@]}" config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
  --env LANG=C.UTF-8 --cmd python3 \
  --label org.opencontainers.image.description="Debian bookworm minbase + python3 (debootstrap)" \
  "$ctr"
buildah "${flags[@]}" commit --quiet --rm "$ctr" "$name" >/dev/null
echo "base image $name: $(buildah "${flags[@]}" images --format '{{.Size}}' "$name")"
