#!/bin/bash
# The Debian package, end to end: build the .deb from a clean copy of the tree,
# lintian it (no errors, no warnings), then, in a clean Debian bookworm root made
# with debootstrap: install it as the README says (apt-get pulls the dependencies),
# check the command, man page, completion, units and hook; upgrade to a bumped
# version; remove; purge; and compare the root's file list to prove nothing of
# ours is left behind.
#
#   bash .ci/package-test.sh        (as root; installs the tools it needs with apt-get)
#   bash .ci/package-test.sh build  (only build + lintian: `make deb`)
#
# The .debs land in build/deb/. The bootstrapped root and the downloaded .debs are
# cached in $PVE_MIRROR_CI_CACHE (default /var/cache/pve-mirror-ci, outside the repo);
# KEEP=1 keeps the work directory for a post-mortem.
set -euo pipefail

MODE=${1:-all}
case $MODE in all | build) ;; *)
    echo "usage: $0 [build]" >&2
    exit 2
    ;;
esac
REPO=$(cd "$(dirname "$0")/.." && pwd)
# Debian's own python3 and tools, never a pyenv shim or a venv that may be on PATH.
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
export LC_ALL=C.UTF-8 DEBIAN_FRONTEND=noninteractive
unset PYTHONPATH VIRTUAL_ENV

SUITE=bookworm
CACHE=${PVE_MIRROR_CI_CACHE:-/var/cache/pve-mirror-ci}
CACHE_MAX_AGE_DAYS=7
OUT=$REPO/build/deb
WORK=$(mktemp -d /tmp/pve-mirror-pkg.XXXXXX)
ROOT=$WORK/root
BASE_INCLUDE=systemd,man-db

declare -a TIMES=()
START=$SECONDS

say() { printf '\n=== %s\n' "$*"; }
fail() {
    echo "package-test: FAIL: $*" >&2
    exit 1
}
timed() { # timed NAME COMMAND...: run COMMAND and record how long it took
    local name=$1 t0=$SECONDS
    shift
    say "$name"
    "$@"
    TIMES+=("$(printf '%-28s %4ss' "$name" $((SECONDS - t0)))")
}

cleanup() {
    local rc=$?
    set +e
    for m in "$ROOT/var/cache/apt/archives" "$ROOT/proc"; do
        mountpoint -q "$m" 2>/dev/null && { umount "$m" || umount -l "$m"; }
    done
    if findmnt -rn -o TARGET | grep -q "^$WORK"; then
        echo "package-test: mounts left under $WORK; not deleting it" >&2
    elif [ "${KEEP:-0}" = 1 ] || [ $rc -ne 0 ]; then
        echo "package-test: work directory kept: $WORK" >&2
    else
        rm -rf "$WORK"
    fi
    exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

[ "$(id -u)" = 0 ] || fail "run as root (debootstrap, chroot, apt-get)"

# --- host tools -------------------------------------------------------------
host_tools() {
    local missing=() p
    for p in dpkg-dev debhelper lintian debootstrap git; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" ||
            missing+=("$p")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        echo "installing ${missing[*]}"
        apt-get update -qq
        apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    fi
}

# --- a clean copy of the tree --------------------------------------------------
# What a fresh clone would hold: tracked files plus new files git does not ignore.
copy_tree() { # copy_tree DEST
    local dest=$1
    mkdir -p "$dest"
    (cd "$REPO" && git ls-files -z --cached --others --exclude-standard --deduplicate |
        while IFS= read -r -d '' f; do [ -e "$f" ] && printf '%s\0' "$f"; done |
        xargs -0 cp -P --parents -t "$dest")
}

prepare_sources() {
    copy_tree "$WORK/src"
    copy_tree "$WORK/src-bumped"
    # The unit tests read the Proxmox fixtures from <repo>/../shared/fixtures.
    if [ -d "$REPO/../shared" ]; then
        ln -s "$(cd "$REPO/../shared" && pwd)" "$WORK/shared"
    fi
    (cd "$WORK/src" && find . -type f -print0 | sort -z | xargs -0 md5sum) >"$WORK/src.md5"
    (cd "$WORK/src" && find . ! -type d -print | sort) >"$WORK/src.before"
    if ! (cd "$WORK/src" && dpkg-checkbuilddeps) 2>/dev/null; then
        apt-get update -qq
        apt-get build-dep -y -qq "$WORK/src" >/dev/null
    fi
}

# --- build ------------------------------------------------------------------
build() {
    (cd "$WORK/src" && dpkg-buildpackage -us -uc -b) >"$WORK/build.log" 2>&1 ||
        {
            tail -40 "$WORK/build.log"
            fail "dpkg-buildpackage failed (log: $WORK/build.log)"
        }
    grep -E '^[0-9]+ passed|passed in' "$WORK/build.log" | tail -1 || true
    DEB=$(ls "$WORK"/pve-mirror_*_all.deb)
    VERSION=$(dpkg-deb -f "$DEB" Version)
    UPSTREAM=${VERSION%-*}
    echo "built $(basename "$DEB")"

    # The build must not change tracked files nor leave files git would show.
    (cd "$WORK/src" && md5sum -c --quiet "$WORK/src.md5") || fail "the build changed source files"
    local dirt
    dirt=$(cd "$WORK/src" && find . ! -type d -print | sort | comm -13 "$WORK/src.before" - | sed 's|^\./||' |
        git -C "$REPO" check-ignore --no-index --stdin -n -v | sed -n 's/^::\t//p')
    if [ -n "$dirt" ]; then
        echo "$dirt" | sed 's/^/  not in .gitignore: /'
        fail "the build leaves files that make git status dirty"
    fi

    mkdir -p "$OUT"
    rm -f "$OUT"/pve-mirror_*.deb
    cp "$DEB" "$OUT/"
    echo "copied to ${OUT#"$REPO"/}/$(basename "$DEB")"
}

run_lintian() {
    # Root is fine here: lintian only unpacks into its own temporary directory.
    local rc=0
    lintian --info --display-info --pedantic --fail-on error,warning \
        "$WORK"/pve-mirror_*.changes >"$WORK/lintian.log" 2>&1 || rc=$?
    grep -v 'running with root privileges' "$WORK/lintian.log" || true
    [ $rc -eq 0 ] || fail "lintian reported errors or warnings"
    echo "lintian: no errors, no warnings"
}

# A second package with a higher version, built from its own copy (never the real tree).
build_bumped() {
    local new_upstream="${UPSTREAM}+ci1"
    BUMPED_VERSION="${new_upstream}-1"
    (
        cd "$WORK/src-bumped"
        {
            printf 'pve-mirror (%s) unstable; urgency=medium\n\n' "$BUMPED_VERSION"
            printf '  * Upgrade test build.\n\n'
            printf ' -- pve-mirror developers <pve-mirror@example.org>  %s\n\n' "$(date -R)"
            cat debian/changelog
        } >debian/changelog.new
        mv debian/changelog.new debian/changelog
        sed -i "s/^__version__ = .*/__version__ = \"$new_upstream\"/" pve_mirror/__init__.py
        DEB_BUILD_OPTIONS=nocheck dpkg-buildpackage -us -uc -b
    ) >"$WORK/build-bumped.log" 2>&1 || {
        tail -40 "$WORK/build-bumped.log"
        fail "building the upgrade package failed"
    }
    BUMPED_DEB=$(ls "$WORK"/pve-mirror_"${BUMPED_VERSION}"_all.deb)
    BUMPED_UPSTREAM=$new_upstream
    echo "built $(basename "$BUMPED_DEB")"
}

# --- the clean bookworm root -----------------------------------------------------
# The same Debian mirror the host uses (whatever its sources format), else deb.debian.org.
host_site() { # host_site RELEASE
    apt-get indextargets --format '$(SITE) $(RELEASE)' 'Identifier: Packages' 2>/dev/null |
        awk -v r="$1" '$2 == r { print $1; exit }'
}

bootstrap_root() {
    MIRROR=$(host_site "$SUITE")
    MIRROR=${MIRROR:-http://deb.debian.org/debian}
    SECURITY=$(host_site "$SUITE-security")
    SECURITY=${SECURITY:-http://deb.debian.org/debian-security}
    echo "mirror $MIRROR, security $SECURITY"
    local key tarball
    key=$(printf '%s %s %s' "$SUITE" "$MIRROR" "$BASE_INCLUDE" | md5sum | cut -c1-8)
    tarball="$CACHE/$SUITE-minbase-$key.tar.gz"
    mkdir -p "$CACHE/archives/partial"
    if [ -f "$tarball" ] && [ -n "$(find "$tarball" -mtime -"$CACHE_MAX_AGE_DAYS")" ]; then
        echo "using cached root $tarball"
    else
        echo "debootstrap $SUITE (minbase + $BASE_INCLUDE)"
        local fresh="$WORK/bootstrap"
        debootstrap --variant=minbase --include="$BASE_INCLUDE" "$SUITE" "$fresh" "$MIRROR" \
            >"$WORK/debootstrap.log" 2>&1 || {
            tail -30 "$WORK/debootstrap.log"
            fail "debootstrap failed"
        }
        rm -f "$CACHE/$SUITE"-minbase-*.tar.gz
        tar -C "$fresh" --numeric-owner -czf "$tarball.tmp" . && mv "$tarball.tmp" "$tarball"
        rm -rf "$fresh"
    fi
    mkdir -p "$ROOT"
    tar -C "$ROOT" --numeric-owner -xzf "$tarball"

    # Nothing may start inside the chroot.
    printf '#!/bin/sh\nexit 101\n' >"$ROOT/usr/sbin/policy-rc.d"
    chmod 755 "$ROOT/usr/sbin/policy-rc.d"
    cp /etc/resolv.conf "$ROOT/etc/resolv.conf" 2>/dev/null || true
    rm -f "$ROOT"/etc/apt/sources.list.d/*
    cat >"$ROOT/etc/apt/sources.list" <<EOF
deb $MIRROR $SUITE main
deb $MIRROR $SUITE-updates main
deb $SECURITY $SUITE-security main
EOF
    mount -t proc proc "$ROOT/proc"
    mount --bind "$CACHE/archives" "$ROOT/var/cache/apt/archives"
    in_root apt-get update -qq
}

in_root() {
    chroot "$ROOT" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root \
        LC_ALL=C.UTF-8 DEBIAN_FRONTEND=noninteractive TERM=dumb "$@"
}

# Every path in the root except apt's, dpkg's and man-db's own caches, logs and databases.
snapshot() { # snapshot FILE
    (cd "$ROOT" && find . \( -path ./proc -o -path ./sys -o -path ./dev -o -path ./run \
        -o -path ./tmp -o -path ./var/tmp -o -path ./var/cache/apt -o -path ./var/lib/apt \
        -o -path ./var/lib/dpkg -o -path ./var/log -o -path ./var/cache/man \
        -o -path ./var/cache/debconf -o -path ./etc/ld.so.cache \) -prune -o -print | sort) >"$1"
}

apt_in_root() { # apt_in_root ARGS...: apt-get in the root, quiet unless it fails
    local log="$WORK/apt.log"
    echo "apt-get $*"
    in_root apt-get -y -q "$@" >"$log" 2>&1 || {
        tail -30 "$log"
        fail "apt-get $* failed"
    }
}

# --- checks on the installed package -------------------------------------------
check_installed() { # check_installed DEB_VERSION UPSTREAM_VERSION
    local want=$1 upstream=$2 out
    [ "$(in_root dpkg-query -W -f='${Version}' pve-mirror)" = "$want" ] ||
        fail "installed version is not $want"
    out=$(in_root pve-mirror --help) || fail "pve-mirror --help failed"
    grep -q '^usage: pve-mirror' <<<"$out" || fail "pve-mirror --help: no usage line"
    out=$(in_root pve-mirror --version)
    [ "$out" = "pve-mirror $upstream" ] || fail "pve-mirror --version gave '$out'"
    out=$(in_root man -P cat pve-mirror 2>"$WORK/man.err") || fail "man pve-mirror failed"
    grep -q 'pve-mirror guests' <<<"$out" || fail "man pve-mirror: no COMMANDS section"
    [ ! -s "$WORK/man.err" ] || fail "man pve-mirror warned: $(cat "$WORK/man.err")"
    for unit in pve-mirror-sync pve-mirror-reconcile; do
        # `systemctl cat` needs a running systemd; without one, read the unit files.
        out=$(in_root systemctl cat "$unit.timer" "$unit.service" 2>/dev/null ||
            in_root cat "/lib/systemd/system/$unit.timer" "/lib/systemd/system/$unit.service") ||
            fail "unit files of $unit missing"
        grep -q "ExecStart=/usr/bin/pve-mirror" <<<"$out" || fail "$unit.service: no ExecStart"
        grep -q "ConditionPathExists=/etc/pve/pve-mirror.cfg" <<<"$out" ||
            fail "$unit.service: does not wait for the site configuration"
    done
    in_root systemd-analyze verify pve-mirror-sync.timer pve-mirror-reconcile.timer \
        >"$WORK/verify.log" 2>&1 || {
        cat "$WORK/verify.log"
        fail "systemd-analyze verify failed"
    }
    [ -x "$ROOT/usr/share/pve-mirror/hooks/pve-mirror-hook" ] || fail "hookscript missing"
    out=$(in_root bash -c '. /usr/share/bash-completion/completions/pve-mirror &&
        COMP_WORDS=(pve-mirror --output-format json gue) COMP_CWORD=3 && _pve_mirror &&
        echo "${COMPREPLY[*]}"')
    [ "$out" = guests ] || fail "bash completion of 'gue' gave '$out'"
    for doc in admin-guide.md commands.md copyright; do
        ls "$ROOT/usr/share/doc/pve-mirror/$doc"* >/dev/null 2>&1 || fail "doc $doc missing"
    done
    echo "ok: $want installed; --help, --version, man, units, hook, completion, docs"
}

timer_state() { # timer_state UNIT: enabled|disabled
    systemctl --root="$ROOT" is-enabled "$1" 2>/dev/null || true
}

ours() { grep -E 'pve-mirror|pve_mirror' || true; }

install_upgrade_purge() {
    snapshot "$WORK/s0"
    cp "$DEB" "$BUMPED_DEB" "$ROOT/tmp/"

    say "install (the README's command; apt-get pulls the dependencies from Debian)"
    apt_in_root install "/tmp/$(basename "$DEB")"
    check_installed "$VERSION" "$UPSTREAM"
    [ "$(timer_state pve-mirror-sync.timer)" = disabled ] || fail "sync timer enabled on install"
    [ "$(timer_state pve-mirror-reconcile.timer)" = disabled ] ||
        fail "reconcile timer enabled on install"
    [ ! -e "$ROOT/etc/pve" ] || fail "/etc/pve created"

    say "purge (first cycle)"
    apt_in_root purge pve-mirror
    snapshot "$WORK/s1"
    local left
    left=$(comm -13 "$WORK/s0" "$WORK/s1" | ours)
    [ -z "$left" ] || fail "purge left files of ours: $left"
    [ -z "$(find "$ROOT/usr/lib/python3/dist-packages" -path '*pve_mirror*' 2>/dev/null)" ] ||
        fail "python files left"

    say "install, configure like an admin, upgrade, remove, purge"
    apt_in_root install "/tmp/$(basename "$DEB")"
    check_installed "$VERSION" "$UPSTREAM"
    # What an admin and the units do: enable a timer; the unit's StateDirectory appears.
    in_root systemctl enable pve-mirror-sync.timer >/dev/null 2>&1
    mkdir -p "$ROOT/var/lib/pve-mirror" && touch "$ROOT/var/lib/pve-mirror/state"
    apt_in_root install "/tmp/$(basename "$BUMPED_DEB")"
    check_installed "$BUMPED_VERSION" "$BUMPED_UPSTREAM"
    [ "$(timer_state pve-mirror-sync.timer)" = enabled ] || fail "upgrade disabled the timer"
    [ "$(timer_state pve-mirror-reconcile.timer)" = disabled ] || fail "upgrade enabled a timer"

    apt_in_root remove pve-mirror
    for f in usr/bin/pve-mirror usr/share/pve-mirror lib/systemd/system/pve-mirror-sync.timer \
        usr/lib/python3/dist-packages/pve_mirror; do
        [ ! -e "$ROOT/$f" ] || fail "/$f still there after remove"
    done
    in_root dpkg-query -W -f='${Status}\n' pve-mirror | grep -q config-files ||
        fail "not in config-files state after remove"

    apt_in_root purge pve-mirror
    snapshot "$WORK/s2"
    if ! diff -u "$WORK/s1" "$WORK/s2" >"$WORK/purge.diff"; then
        cat "$WORK/purge.diff"
        fail "the root after install/upgrade/remove/purge differs from before"
    fi
    in_root dpkg-query -W pve-mirror >/dev/null 2>&1 && fail "pve-mirror still known to dpkg"
    [ ! -e "$ROOT/etc/pve" ] || fail "/etc/pve created"
    echo "ok: after purge the root holds exactly the files it held before"
}

timed "host tools" host_tools
timed "copy tree + build deps" prepare_sources
timed "build (dpkg-buildpackage)" build
timed "lintian" run_lintian
if [ "$MODE" = build ]; then
    say "package-test: built ${OUT#"$REPO"/}/$(basename "$DEB") ($((SECONDS - START))s)"
    printf '  %s\n' "${TIMES[@]}"
    exit 0
fi
timed "build upgrade package" build_bumped
timed "bookworm root" bootstrap_root
timed "install/upgrade/purge" install_upgrade_purge

say "package-test: PASS ($(basename "$DEB"), $((SECONDS - START))s)"
printf '  %s\n' "${TIMES[@]}"
