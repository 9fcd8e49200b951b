#!/bin/bash
# The integration suite on the newer Ceph releases, each in a Debian root made with
# debootstrap on this bookworm machine (whose own Ceph 16.2 `make test` covers):
#
#   trixie  Ceph 18.2 (reef),     Python 3.13   lab ports 24000+, lab /tmp/matrix-trixie/lab
#   forky   Ceph 20.2 (tentacle), Python 3.14   lab ports 26000+, lab /tmp/matrix-forky/lab
#
# Proxmox VE 9 runs Ceph 19.2 (squid), which lies between the two.
#
#   bash .ci/ceph-matrix.sh [trixie|forky|all]   (as root; default all)
#   bash .ci/ceph-matrix.sh exec SUITE COMMAND... (COMMAND in the repo inside the
#        prepared root instead of the suite, e.g. `sh -c '$VENV/bin/python -m tests.lab demo'`)
#
# Per release: the minbase root (a tarball cached in $PVE_MIRROR_CI_CACHE/ceph-matrix,
# default /var/cache/pve-mirror-ci, for $CACHE_MAX_AGE_DAYS days; .debs and pip
# downloads are cached there too), /proc /sys /dev /dev/pts mounted, resolv.conf and hosts copied,
# the repo and ../shared bind-mounted read-only at their own absolute paths; then in
# the root, with its own Python and Ceph bindings: tests/deps.sh (virtualenv outside
# the repo), pmxcfs built, the two-site lab up, `pytest tests/integration`, lab down.
# At exit, whatever happened: every process running in the root is ended (by PID),
# everything mounted under it is unmounted, and the root is deleted once nothing is
# mounted there. Logs stay in /tmp/matrix-<suite>/ (the lab's under lab/).
#
# Environment:
#   MATRIX_PARALLEL=1  run the releases of `all` side by side (default: one after
#                      the other; see docs/ceph-releases.md for the timings)
#   KEEP=1             keep the roots (unmounted) for a post-mortem
#   PYTEST_ARGS        more pytest arguments (e.g. "-k failover -x")
#   CI=true            a skipped test fails the run (CI runs the whole suite)
# One summary line per release at the end; exit status 0 only if every release passed.
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd -P)
# ../shared as the code finds it (relative to the repo), and what it really is.
SHARED_AT=$(dirname "$REPO")/shared
SHARED=""
[ -d "$SHARED_AT" ] && SHARED=$(cd "$SHARED_AT" && pwd -P)
SELF="$REPO/.ci/ceph-matrix.sh"
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
export LC_ALL=C.UTF-8 DEBIAN_FRONTEND=noninteractive
unset PYTHONPATH VIRTUAL_ENV

# A directory of its own in the CI cache: other CI scripts clean up after themselves there.
CACHE=${PVE_MIRROR_CI_CACHE:-/var/cache/pve-mirror-ci}/ceph-matrix
CACHE_MAX_AGE_DAYS=${CACHE_MAX_AGE_DAYS:-7}
VENV_IN_ROOT=/opt/pve-mirror-venv # outside the repo: never the host's .venv
SUITES=(trixie forky)

die() {
    echo "ceph-matrix: $*" >&2
    exit 1
}

port_base() {
    case $1 in
    trixie) echo 24000 ;;
    forky) echo 26000 ;;
    *) return 1 ;;
    esac
}

usage() {
    echo "usage: $0 [trixie|forky|all] | exec trixie|forky COMMAND..." >&2
    exit 2
}

# ============================================================================
# One release (run as `ceph-matrix.sh --one SUITE`, so that each has its own trap)
# ============================================================================
one_suite() { # one_suite SUITE [COMMAND...]
    SUITE=$1
    shift
    PORT_BASE=$(port_base "$SUITE") || usage
    WORK=/tmp/matrix-$SUITE
    ROOT=$WORK/root
    LAB=$WORK/lab
    SUMMARY=$WORK/summary
    declare -g -a TIMES=()
    declare -g STATUS=FAIL DETAIL="" CEPH="?" PYVER="?" T_START=$SECONDS

    mkdir -p "$WORK" "$LAB"
    # One run per release at a time: the cleanup below ends every process in the root.
    exec 9>"$WORK/.lock"
    flock -n 9 || die "another run for $SUITE holds $WORK/.lock"
    rm -f "$SUMMARY"
    trap one_cleanup EXIT
    trap 'exit 130' INT TERM

    # A crashed earlier run may have left processes and mounts behind.
    if [ -d "$ROOT" ]; then
        echo "cleaning up a previous run's root"
        KEEP=0 teardown_root || die "cannot clean up the previous root $ROOT"
    fi
    rm -rf "${LAB:?}"/* 2>/dev/null || true

    timed root make_root
    timed mounts mount_root
    timed deps install_deps
    CEPH=$(in_root ceph-mon --version | awk '{print $3}')
    PYVER=$(in_root /usr/bin/python3 -c 'import platform; print(platform.python_version())')
    if [ $# -gt 0 ]; then
        timed exec in_root_repo "$@"
        DETAIL="exec $*"
    else
        timed lab-up in_root_repo "$VENV_IN_ROOT/bin/python" -m tests.lab up
        timed suite run_suite
        timed lab-down in_root_repo timeout 300 "$VENV_IN_ROOT/bin/python" -m tests.lab down
    fi
    STATUS=PASS
}

timed() { # timed NAME COMMAND...: run a step, record its time
    local name=$1 t0=$SECONDS
    shift
    printf '\n=== %s: %s\n' "$SUITE" "$name"
    "$@"
    TIMES+=("$name $((SECONDS - t0))s")
}

one_cleanup() {
    local rc=$?
    set +e
    [ $rc -ne 0 ] && STATUS=FAIL
    # The lab stops its own daemons cleanly (pmxcfs unmounts too); whatever survives
    # is ended by teardown_root.
    if [ -x "$ROOT$VENV_IN_ROOT/bin/python" ] && [ -d "$ROOT/proc/self" ]; then
        in_root_repo timeout 300 "$VENV_IN_ROOT/bin/python" -m tests.lab down >/dev/null 2>&1
    fi
    teardown_root
    local line
    line=$(printf '%-7s %s  Ceph %s, Python %s  %s  [%s; total %ss]' "$SUITE" "$STATUS" \
        "$CEPH" "$PYVER" "${DETAIL:-no test result}" "${TIMES[*]:-}" $((SECONDS - T_START)))
    echo "$line" >"$SUMMARY"
    printf '\n%s\n' "$line"
    [ "$STATUS" = PASS ] || echo "ceph-matrix: $SUITE failed; logs in $WORK and $LAB" >&2
    exit $rc
}

# --- the root ----------------------------------------------------------------
# The Debian mirror the host uses (whatever its sources format), else deb.debian.org.
host_mirror() {
    local site
    # shellcheck disable=SC2016 # apt's own $(FIELD) syntax, not the shell's
    site=$(apt-get indextargets --format '$(SITE) $(RELEASE)' 'Identifier: Packages' 2>/dev/null |
        awk '$2 !~ /security|updates|backports/ && $1 ~ /debian$/ { print $1; exit }')
    echo "${site:-http://deb.debian.org/debian}"
}

make_root() {
    command -v debootstrap >/dev/null || {
        apt-get update -qq
        apt-get install -y -qq --no-install-recommends debootstrap >/dev/null
    }
    MIRROR=$(host_mirror)
    local script=$SUITE key tarball extra=()
    # bookworm's debootstrap knows no forky; forky bootstraps like sid.
    if [ ! -e "/usr/share/debootstrap/scripts/$SUITE" ]; then
        script=/usr/share/debootstrap/scripts/sid
        extra=("$script")
    fi
    key=$(printf '%s %s %s' "$SUITE" "$MIRROR" "$script" | md5sum | cut -c1-8)
    tarball="$CACHE/$SUITE-minbase-$key.tar.gz"
    mkdir -p "$CACHE"
    if [ -f "$tarball" ] && [ -n "$(find "$tarball" -mtime -"$CACHE_MAX_AGE_DAYS")" ]; then
        echo "using the cached root $tarball"
    else
        echo "debootstrap $SUITE from $MIRROR"
        local fresh="$WORK/bootstrap"
        rm -rf "$fresh"
        debootstrap --variant=minbase "$SUITE" "$fresh" "$MIRROR" "${extra[@]}" \
            >"$WORK/debootstrap.log" 2>&1 || {
            tail -30 "$WORK/debootstrap.log"
            die "debootstrap $SUITE failed (log: $WORK/debootstrap.log)"
        }
        rm -f "$CACHE/$SUITE"-minbase-*.tar.gz
        tar -C "$fresh" --numeric-owner -czf "$tarball.tmp" . && mv "$tarball.tmp" "$tarball"
        rm -rf "$fresh"
    fi
    mkdir -p "$ROOT"
    tar -C "$ROOT" --numeric-owner -xzf "$tarball"

    # Nothing may start inside the root by itself.
    printf '#!/bin/sh\nexit 101\n' >"$ROOT/usr/sbin/policy-rc.d"
    chmod 755 "$ROOT/usr/sbin/policy-rc.d"
    cp /etc/resolv.conf "$ROOT/etc/resolv.conf"
    cp /etc/hosts "$ROOT/etc/hosts"
    echo "deb $MIRROR $SUITE main" >"$ROOT/etc/apt/sources.list"
    # The host's CA bundle: it holds whatever CA the way to PyPI needs here.
    mkdir -p "$ROOT/etc/pve-mirror-ci"
    cp /etc/ssl/certs/ca-certificates.crt "$ROOT/etc/pve-mirror-ci/ca-certificates.crt"
    if [ "$SUITE" = forky ]; then
        # forky's Release file in the archive is expired.
        echo 'Acquire::Check-Valid-Until "false";' >"$ROOT/etc/apt/apt.conf.d/99pve-mirror-ci"
        # forky has dropped fuse 2's libfuse-dev, which pmxcfs builds on: trixie's
        # (2.9.9) is taken for the packages forky lacks, never for the others.
        echo "deb $MIRROR trixie main" >"$ROOT/etc/apt/sources.list.d/trixie-fuse2.list"
        printf 'Package: *\nPin: release n=trixie\nPin-Priority: 100\n' \
            >"$ROOT/etc/apt/preferences.d/trixie-fuse2"
    fi
}

bind() { # bind SRC DEST [ro]
    mkdir -p "$2"
    mount --bind "$1" "$2"
    [ "${3:-}" != ro ] || mount -o remount,bind,ro "$2"
}

mount_root() {
    # The root is a mount point of its own, so that `unshare --propagation private`
    # (the lab's other nodes) can change the propagation of / inside the root.
    mount --bind "$ROOT" "$ROOT"
    mount -t proc proc "$ROOT/proc"
    bind /sys "$ROOT/sys"
    bind /dev "$ROOT/dev"
    bind /dev/pts "$ROOT/dev/pts"
    mkdir -p "$CACHE/archives-$SUITE/partial" "$CACHE/pip-$SUITE"
    bind "$CACHE/archives-$SUITE" "$ROOT/var/cache/apt/archives"
    bind "$CACHE/pip-$SUITE" "$ROOT/root/.cache/pip"
    # Read-only: nothing in the root may write to the work tree (nor delete the
    # host's .venv); ../shared is read-only in CI anyway.
    bind "$REPO" "$ROOT$REPO" ro
    [ -z "$SHARED" ] || bind "$SHARED" "$ROOT$SHARED_AT" ro
    bind "$LAB" "$ROOT$LAB"
}

# Processes whose root directory is ours: started by this run, in the root.
root_pids() {
    find /proc -mindepth 2 -maxdepth 2 -name root -lname "$ROOT" 2>/dev/null |
        awk -F/ '$3 ~ /^[0-9]+$/ { print $3 }'
}

mounts_under_root() { # deepest first
    awk -v r="$ROOT" '$5 == r || index($5, r "/") == 1 { print $5 }' /proc/self/mountinfo |
        awk '{ print length($0) " " $0 }' | sort -rn | cut -d' ' -f2-
}

wait_no_root_pids() { # wait_no_root_pids SECONDS: until no process runs in the root
    local end=$((SECONDS + $1))
    while [ -n "$(root_pids)" ]; do
        [ $SECONDS -lt $end ] || return 1
        sleep 0.2
    done
}

teardown_root() {
    local pids=() i m
    mapfile -t pids < <(root_pids)
    if [ ${#pids[@]} -gt 0 ]; then
        echo "ending processes left in the root: ${pids[*]}"
        kill -TERM "${pids[@]}" 2>/dev/null
        if ! wait_no_root_pids 10; then
            mapfile -t pids < <(root_pids)
            echo "still running after SIGTERM, sending SIGKILL: ${pids[*]}"
            kill -KILL "${pids[@]}" 2>/dev/null
            wait_no_root_pids 10 || echo "ceph-matrix: processes survive SIGKILL: $(root_pids)" >&2
        fi
    fi
    for ((i = 0; i < 3; i++)); do
        for m in $(mounts_under_root); do
            umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null
        done
        [ -n "$(mounts_under_root)" ] || break
    done
    if [ -n "$(mounts_under_root)" ]; then
        echo "ceph-matrix: still mounted, $ROOT kept: $(mounts_under_root | tr '\n' ' ')" >&2
        return 1
    fi
    if [ "${KEEP:-0}" = 1 ]; then
        echo "root kept: $ROOT"
    else
        rm -rf --one-file-system "$ROOT"
    fi
}

# --- inside the root -----------------------------------------------------------
in_root() {
    chroot "$ROOT" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root \
        LC_ALL=C.UTF-8 DEBIAN_FRONTEND=noninteractive TERM=dumb CI="${CI:-}" \
        PIP_CERT=/etc/pve-mirror-ci/ca-certificates.crt PIP_DISABLE_PIP_VERSION_CHECK=1 \
        VENV="$VENV_IN_ROOT" PYTHONDONTWRITEBYTECODE=1 \
        PVE_MIRROR_LAB_PORT_BASE="$PORT_BASE" PVE_MIRROR_LAB_DIR="$LAB" "$@"
}

in_root_repo() { # in_root_repo COMMAND...: in the root, in the repo
    # shellcheck disable=SC2016 # expanded by the shell in the root
    in_root /bin/sh -c 'cd "$0" && exec "$@"' "$REPO" "$@"
}

install_deps() {
    local log=$WORK/deps.log
    {
        in_root_repo bash tests/deps.sh &&
            if [ -n "$SHARED" ] && [ -f "$SHARED/third-party/pmxcfs/build.sh" ]; then
                in_root bash "$SHARED_AT/third-party/pmxcfs/build.sh"
            fi &&
            in_root apt-get autoclean -qq
    } >"$log" 2>&1 || {
        tail -30 "$log"
        die "installing the test dependencies failed (log: $log)"
    }
    grep -E '^deps: installing|build.sh: (installing|built)' "$log" | cut -c1-200 || true
}

run_suite() {
    local log=$WORK/pytest.log rc=0
    # No cache provider: the work tree is read-only in the root.
    # shellcheck disable=SC2086
    in_root_repo "$VENV_IN_ROOT/bin/python" -m pytest -p no:cacheprovider -q -rfEs \
        tests/integration ${PYTEST_ARGS:-} 2>&1 | tee "$log" || rc=$?
    DETAIL=$(grep -E '^=*.*(passed|failed|error|no tests ran).* in [0-9.]+s' "$log" | tail -1 |
        sed -E 's/^=+ //; s/ =+$//')
    [ $rc -eq 0 ] || die "pytest failed (exit $rc)"
    if [ "${CI:-}" = true ] && grep -qE '[0-9]+ skipped' <<<"$DETAIL"; then
        die "tests were skipped; CI runs the whole suite"
    fi
}

# ============================================================================
# The matrix
# ============================================================================
main() {
    local which=${1:-all} suites=() pids=() rc=0 s t0=$SECONDS
    case $which in
    all) suites=("${SUITES[@]}") ;;
    trixie | forky) suites=("$which") ;;
    *) usage ;;
    esac
    [ "$(id -u)" = 0 ] || die "run as root (debootstrap, chroot, mount)"
    [ -c /dev/fuse ] || echo "ceph-matrix: warning: no /dev/fuse; pmxcfs cannot mount" >&2

    if [ "${MATRIX_PARALLEL:-0}" = 1 ] && [ ${#suites[@]} -gt 1 ]; then
        trap 'kill -TERM "${pids[@]}" 2>/dev/null; exit 130' INT TERM
        for s in "${suites[@]}"; do
            mkdir -p "/tmp/matrix-$s"
            bash "$SELF" --one "$s" >"/tmp/matrix-$s/run.log" 2>&1 &
            pids+=($!)
            echo "ceph-matrix: $s started (log: /tmp/matrix-$s/run.log)"
        done
        for i in "${!pids[@]}"; do
            wait "${pids[$i]}" || {
                rc=1
                echo "--- last lines of /tmp/matrix-${suites[$i]}/run.log"
                tail -40 "/tmp/matrix-${suites[$i]}/run.log"
            }
        done
    else
        for s in "${suites[@]}"; do
            bash "$SELF" --one "$s" || rc=1
        done
    fi

    printf '\n=== Ceph matrix (%s, %ss)\n' "$([ "${MATRIX_PARALLEL:-0}" = 1 ] &&
        echo parallel || echo sequential)" $((SECONDS - t0))
    for s in "${suites[@]}"; do
        cat "/tmp/matrix-$s/summary" 2>/dev/null || echo "$s FAIL  (no summary)"
    done
    return $rc
}

if [ "${1:-}" = --one ]; then
    [ $# -eq 2 ] || usage
    one_suite "$2"
elif [ "${1:-}" = exec ]; then
    [ $# -ge 3 ] || usage
    port_base "$2" >/dev/null || usage
    [ "$(id -u)" = 0 ] || die "run as root (debootstrap, chroot, mount)"
    one_suite "${@:2}"
else
    [ $# -le 1 ] || usage
    main "${1:-all}"
fi
