#!/bin/bash
# Installs what pve-mirror's tests and demo need on a fresh Debian machine (bookworm, or
# the trixie and forky roots of .ci/ceph-matrix.sh):
# the Debian packages (apt-get, only those missing) and a virtualenv in .venv that
# sees the system's rados/rbd/proxmoxer (--system-site-packages) plus the test tools.
# VENV=DIR puts the virtualenv elsewhere (.ci/ceph-matrix.sh: one per Debian root, so
# that a root's Python never meets the host's .venv in the shared work tree).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}

PACKAGES=(
    ceph-mon ceph-osd ceph-mgr rbd-mirror ceph-common python3-rados python3-rbd
    qemu-utils qemu-block-extra
    python3-proxmoxer python3-requests python3-venv python3-pip
    rsync openssh-client openssh-server make
)
missing=()
for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "deps: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c 'import rbd, rados' 2>/dev/null; then
    rm -rf "$VENV"
    /usr/bin/python3 -m venv --system-site-packages "$VENV"
fi
if ! "$VENV/bin/python" -c 'import pytest, ruff, mypy' 2>/dev/null; then
    "$VENV/bin/pip" install -q --disable-pip-version-check -r tests/requirements.txt
fi
