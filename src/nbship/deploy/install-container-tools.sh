#!/usr/bin/env bash
# Debian packages the container build needs: rootful podman with runc, and debootstrap
# for the base image. Idempotent; needs root. Shipped in the nbship package, so that
# `nbship container build` finds it in any project.
set -euo pipefail
missing=()
for tool in podman runc debootstrap; do command -v "$tool" >/dev/null || missing+=("$tool"); done
(( ${#missing[@]} == 0 )) && exit 0
if [[ $(id -u) != 0 ]]; then
  echo "need root to install: ${missing[*]} (apt-get install podman runc debootstrap)" >&2
  exit 1
fi
if ! command -v apt-get >/dev/null; then
  echo "missing ${missing[*]}, and no apt-get to install them: install podman, runc and debootstrap" >&2
  exit 1
fi
echo "installing podman runc debootstrap" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq podman runc debootstrap uidmap fuse-overlayfs >/dev/null
