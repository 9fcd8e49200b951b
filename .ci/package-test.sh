#!/bin/bash
# The Debian package, end to end, for each Debian release pve-mirror supports:
# trixie (Proxmox VE 9) and bookworm (Proxmox VE 8).
#
# For each release: build the .deb from a clean copy of the tree the way the README
# says (apt-get build-dep, dpkg-buildpackage; the unit tests run at build time) and
# lintian it with that release's lintian (no errors, no warnings). The machine's own
# release (bookworm here) builds on the machine; any other builds in a build root made
# with debootstrap. Then, in a clean root of that release (debootstrap minbase):
# install it as the README says (apt-get pulls the dependencies), check the command,
# man page, completion, units and hook; upgrade to a bumped version; remove; purge;
# and compare the root's file list to prove nothing of ours is left behind.
#
#   bash .ci/package-test.sh        (as root; installs the tools it needs with apt-get)
#   bash .ci/package-test.sh build  (only the machine's build + lintian: `make deb`)
#   PVE_MIRROR_PKG_SUITES=trixie bash .ci/package-test.sh   (one release only)
#
# The machine's .debs land in build/deb/, the others in build/deb/<release>/. Roots
# (plain and with the build tools) and downloaded .debs are cached in
# $PVE_MIRROR_CI_CACHE/package-test (default /var/cache/pve-mirror-ci, outside the
# repo) for up to 7 days; KEEP=1 keeps the work directory for a post-mortem.
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

read -r -a SUITES <<<"${PVE_MIRROR_PKG_SUITES:-trixie bookworm}"
HOST_SUITE=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
ARCH=$(dpkg --print-architecture)
# Our own corner of the CI cache: other CI scripts keep their roots there too.
CACHE=${PVE_MIRROR_CI_CACHE:-/var/cache/pve-mirror-ci}/package-test
CACHE_MAX_AGE_DAYS=7
OUT=$REPO/build/deb
WORK=$(mktemp -d /tmp/pve-mirror-pkg.XXXXXX)
BASE_INCLUDE=systemd,man-db
ROOT= # the root the in_root/apt_in_root/snapshot helpers work on

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
    TIMES+=("$(printf '%-34s %4ss' "$name" $((SECONDS - t0)))")
}

unmount_under() { # unmount_under DIR: every mount below DIR, deepest first
    local m
    findmnt -rn -o TARGET | grep "^$1/" | sort -r | while read -r m; do
        umount "$m" 2>/dev/null || umount -l "$m"
    done
}

cleanup() {
    local rc=$?
    set +e
    unmount_under "$WORK"
    if findmnt -rn -o TARGET | grep -q "^$WORK/"; then
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
    for p in dpkg-dev debhelper lintian debootstrap debian-archive-keyring git zstd; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" ||
            missing+=("$p")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        echo "installing ${missing[*]}"
        apt-get update -qq
        apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    fi
}

# --- clean copies of the tree ---------------------------------------------------
# What a fresh clone would hold: tracked files plus new files git does not ignore.
copy_tree() { # copy_tree DEST
    local dest=$1
    mkdir -p "$dest"
    (cd "$REPO" && git ls-files -z --cached --others --exclude-standard --deduplicate |
        while IFS= read -r -d '' f; do [ -e "$f" ] && printf '%s\0' "$f"; done |
        xargs -0 cp -P --parents -t "$dest")
}

# src: the package as it is; src-bumped: the same with a higher version (the upgrade).
prepare_sources() {
    copy_tree "$WORK/src"
    copy_tree "$WORK/src-bumped"
    VERSION=$(cd "$WORK/src" && dpkg-parsechangelog -S Version)
    UPSTREAM=${VERSION%-*}
    BUMPED_UPSTREAM="${UPSTREAM}+ci1"
    BUMPED_VERSION="${BUMPED_UPSTREAM}-1"
    (
        cd "$WORK/src-bumped"
        {
            printf 'pve-mirror (%s) unstable; urgency=medium\n\n' "$BUMPED_VERSION"
            printf '  * Upgrade test build.\n\n'
            printf ' -- pve-mirror developers <pve-mirror@example.org>  %s\n\n' "$(date -R)"
            cat debian/changelog
        } >debian/changelog.new
        mv debian/changelog.new debian/changelog
        sed -i "s/^__version__ = .*/__version__ = \"$BUMPED_UPSTREAM\"/" pve_mirror/__init__.py
    )
    # The source package too (an orig tarball of the tree without debian/), so that
    # lintian also checks debian/control, debian/rules and the rest of the source.
    local srcdir="$WORK/srcpkg/pve-mirror-$UPSTREAM"
    copy_tree "$srcdir"
    tar -C "$srcdir" --exclude=./debian --sort=name --owner=0 --group=0 \
        -cJf "$WORK/srcpkg/pve-mirror_$UPSTREAM.orig.tar.xz" .
    (cd "$srcdir" && dpkg-source -b .) >"$WORK/srcpkg.log" 2>&1 || {
        cat "$WORK/srcpkg.log"
        fail "dpkg-source -b failed"
    }
    DSC=pve-mirror_$VERSION.dsc
    (cd "$WORK/src" && find . -type f -print0 | sort -z | xargs -0 md5sum) >"$WORK/src.md5"
    (cd "$WORK/src" && find . ! -type d -print | sort) >"$WORK/src.before"
    echo "version $VERSION, upgrade to $BUMPED_VERSION"
}

# --- build and lintian on the machine -------------------------------------------
build_host() { # build_host SUITE
    local suite=$1
    if ! (cd "$WORK/src" && dpkg-checkbuilddeps) 2>/dev/null; then
        apt-get update -qq
        apt-get build-dep -y -qq "$WORK/src" >/dev/null
    fi
    (cd "$WORK/src" && dpkg-buildpackage -us -uc -b) >"$WORK/build-$suite.log" 2>&1 ||
        {
            tail -40 "$WORK/build-$suite.log"
            fail "dpkg-buildpackage failed (log: $WORK/build-$suite.log)"
        }
    build_tests_ran "$suite"

    # The build must not change tracked files nor leave files git would show.
    (cd "$WORK/src" && md5sum -c --quiet "$WORK/src.md5") || fail "the build changed source files"
    local dirt
    dirt=$(cd "$WORK/src" && find . ! -type d -print | sort | comm -13 "$WORK/src.before" - |
        sed 's|^\./||' | git -C "$REPO" check-ignore --no-index --stdin -n -v |
        sed -n 's/^::\t//p')
    if [ -n "$dirt" ]; then
        echo "$dirt" | sed 's/^/  not in .gitignore: /'
        fail "the build leaves files that make git status dirty"
    fi
    mkdir -p "$WORK/$suite"
    mv "$WORK"/pve-mirror_* "$WORK/$suite/"
    echo "built $(basename "$WORK/$suite"/pve-mirror_*_all.deb)"
}

# The unit tests at build time: each one ran, none was skipped (a skip there means a
# Build-Depends is missing, e.g. man-db, and the test proved nothing).
build_tests_ran() { # build_tests_ran SUITE
    local summary
    summary=$(grep -E '^[0-9]+ passed' "$WORK/build-$1.log" | tail -1)
    echo "build-time unit tests: ${summary:-none ran}"
    [ -n "$summary" ] || fail "no unit tests ran at build time ($1)"
    if grep -E '^SKIPPED|[0-9]+ skipped' "$WORK/build-$1.log"; then
        fail "unit tests skipped at build time ($1): Build-Depends incomplete?"
    fi
}

lintian_host() { # lintian_host SUITE
    # Root is fine here: lintian only unpacks into its own temporary directory.
    local rc=0
    lintian --display-info --pedantic --fail-on error,warning \
        "$WORK/$1/pve-mirror_${VERSION}_${ARCH}.changes" "$WORK/srcpkg/$DSC" \
        >"$WORK/lintian-$1.log" 2>&1 || rc=$?
    grep -v 'running with root privileges' "$WORK/lintian-$1.log" || true
    [ $rc -eq 0 ] || fail "lintian ($1) reported errors or warnings"
    echo "lintian $(lintian --print-version) ($1): no errors, no warnings"
}

build_bumped_host() { # build_bumped_host SUITE
    (cd "$WORK/src-bumped" && DEB_BUILD_OPTIONS=nocheck dpkg-buildpackage -us -uc -b) \
        >"$WORK/build-bumped-$1.log" 2>&1 || {
        tail -40 "$WORK/build-bumped-$1.log"
        fail "building the upgrade package failed"
    }
    mv "$WORK"/pve-mirror_"$BUMPED_VERSION"_* "$WORK/$1/"
    echo "built pve-mirror_${BUMPED_VERSION}_all.deb"
}

# --- roots made with debootstrap -------------------------------------------------
# The Debian mirror the machine uses (whatever its sources format): for a release the
# machine does not list, the same site as its own release; else deb.debian.org.
host_site() { # host_site RELEASE
    apt-get indextargets --format '$(SITE) $(RELEASE)' 'Identifier: Packages' 2>/dev/null |
        awk -v r="$1" '$2 == r { print $1; exit }'
}
mirror_for() { # mirror_for SUITE [-security]
    local site
    site=$(host_site "$1${2:-}")
    [ -n "$site" ] || site=$(host_site "$HOST_SUITE${2:-}")
    echo "${site:-http://deb.debian.org/debian${2:-}}"
}

pack() { # pack DIR TARBALL: a root into the cache (zstd: fast on two cores)
    tar -C "$1" --numeric-owner -I 'zstd -T0 -3 -q' -cf "$2.tmp" . && mv "$2.tmp" "$2"
}

fresh() { # fresh FILE: FILE exists and is younger than the cache's maximum age
    [ -f "$1" ] && [ -n "$(find "$1" -mtime -"$CACHE_MAX_AGE_DAYS")" ]
}

# minbase + systemd + man-db of SUITE, as a cached tarball; prints its path.
minbase_tarball() { # minbase_tarball SUITE
    local suite=$1 mirror key tarball
    mirror=$(mirror_for "$suite")
    key=$(printf '%s %s %s' "$suite" "$mirror" "$BASE_INCLUDE" | md5sum | cut -c1-8)
    tarball="$CACHE/$suite-minbase-$key.tar.zst"
    if fresh "$tarball"; then
        echo "using cached root $tarball" >&2
    else
        echo "debootstrap $suite from $mirror (minbase + $BASE_INCLUDE)" >&2
        local dir="$WORK/bootstrap-$suite"
        debootstrap --variant=minbase --include="$BASE_INCLUDE" "$suite" "$dir" "$mirror" \
            >"$WORK/debootstrap-$suite.log" 2>&1 || {
            tail -30 "$WORK/debootstrap-$suite.log" >&2
            fail "debootstrap $suite failed"
        }
        rm -f "$dir"/var/cache/apt/archives/*.deb # debootstrap's downloads: not part of a root
        mkdir -p "$CACHE"
        rm -f "$CACHE/$suite"-minbase-*.tar.*
        pack "$dir" "$tarball"
        rm -rf "$dir"
    fi
    echo "$tarball"
}

# Unpack TARBALL into DIR and make it usable: sources of SUITE, nothing may start
# inside, /proc, the cached .debs of SUITE; sets ROOT=DIR.
open_root() { # open_root SUITE TARBALL DIR
    local suite=$1 tarball=$2
    ROOT=$3
    mkdir -p "$ROOT" "$CACHE/$suite/archives/partial"
    tar -C "$ROOT" --numeric-owner -I zstd -xf "$tarball"
    printf '#!/bin/sh\nexit 101\n' >"$ROOT/usr/sbin/policy-rc.d"
    chmod 755 "$ROOT/usr/sbin/policy-rc.d"
    cp /etc/resolv.conf "$ROOT/etc/resolv.conf" 2>/dev/null || true
    rm -f "$ROOT"/etc/apt/sources.list.d/*
    cat >"$ROOT/etc/apt/sources.list" <<EOF
deb $(mirror_for "$suite") $suite main
deb $(mirror_for "$suite") $suite-updates main
deb $(mirror_for "$suite" -security) $suite-security main
EOF
    mount -t proc proc "$ROOT/proc"
    mount --bind "$CACHE/$suite/archives" "$ROOT/var/cache/apt/archives"
    in_root apt-get update -qq
}

close_root() { # close_root: unmount what open_root mounted
    unmount_under "$ROOT"
}

in_root() {
    chroot "$ROOT" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root \
        LC_ALL=C.UTF-8 DEBIAN_FRONTEND=noninteractive TERM=dumb ${CI:+CI="$CI"} "$@"
}

apt_in_root() { # apt_in_root ARGS...: apt-get in the root, quiet unless it fails
    local log="$WORK/apt.log"
    echo "apt-get $*"
    in_root apt-get -y -q "$@" >"$log" 2>&1 || {
        tail -30 "$log"
        fail "apt-get $* failed"
    }
}

# --- build and lintian in a root of another release ------------------------------
# The build root (minbase + Build-Depends + lintian) is cached too, keyed on
# debian/control, so that a second run only unpacks it.
build_in_root() { # build_in_root SUITE
    local suite=$1 base key tarball
    base=$(minbase_tarball "$suite")
    key=$(cat <(basename "$base") "$WORK/src/debian/control" <(echo lintian) | md5sum | cut -c1-8)
    tarball="$CACHE/$suite-build-$key.tar.zst"
    if fresh "$tarball" && [ "$tarball" -nt "$base" ]; then
        echo "using cached build root $tarball"
        open_root "$suite" "$tarball" "$WORK/$suite-build"
    else
        open_root "$suite" "$base" "$WORK/$suite-build"
        mkdir -p "$ROOT/build"
        cp -a "$WORK/src/debian" "$ROOT/build/"
        apt_in_root build-dep /build
        apt_in_root install --no-install-recommends lintian
        rm -rf "$ROOT/build"
        close_root
        rm -f "$CACHE/$suite"-build-*.tar.*
        pack "$ROOT" "$tarball"
        mount -t proc proc "$ROOT/proc"
        mount --bind "$CACHE/$suite/archives" "$ROOT/var/cache/apt/archives"
    fi
    mkdir -p "$ROOT/build"
    cp -a "$WORK/src" "$WORK/src-bumped" "$ROOT/build/"
    in_root sh -c 'cd /build/src && dpkg-checkbuilddeps' ||
        fail "the $suite build root lacks Build-Depends"
    in_root sh -c 'cd /build/src && dpkg-buildpackage -us -uc -b' \
        >"$WORK/build-$suite.log" 2>&1 || {
        tail -40 "$WORK/build-$suite.log"
        fail "dpkg-buildpackage in $suite failed (log: $WORK/build-$suite.log)"
    }
    build_tests_ran "$suite"
    in_root sh -c 'cd /build/src-bumped && DEB_BUILD_OPTIONS=nocheck dpkg-buildpackage -us -uc -b' \
        >"$WORK/build-bumped-$suite.log" 2>&1 || {
        tail -40 "$WORK/build-bumped-$suite.log"
        fail "building the upgrade package in $suite failed"
    }
    mkdir -p "$WORK/$suite"
    cp "$ROOT"/build/pve-mirror_* "$WORK/$suite/"
    echo "built $(cd "$WORK/$suite" && echo pve-mirror_*_all.deb)"
}

lintian_in_root() { # lintian_in_root SUITE (in the build root build_in_root left open)
    local rc=0
    cp "$WORK"/srcpkg/pve-mirror_* "$ROOT/build/"
    in_root lintian --display-info --pedantic --fail-on error,warning \
        "/build/pve-mirror_${VERSION}_${ARCH}.changes" "/build/$DSC" >"$WORK/lintian-$1.log" 2>&1 ||
        rc=$?
    grep -v 'running with root privileges' "$WORK/lintian-$1.log" || true
    [ $rc -eq 0 ] || fail "lintian ($1) reported errors or warnings"
    echo "lintian $(in_root lintian --print-version) ($1): no errors, no warnings"
    close_root
    rm -rf "$ROOT"
}

publish() { # publish SUITE: copy its .debs to build/deb[/SUITE]
    local dest=$OUT
    [ "$1" = "$HOST_SUITE" ] || dest=$OUT/$1
    mkdir -p "$dest"
    rm -f "$dest"/pve-mirror_*.deb
    cp "$WORK/$1/pve-mirror_${VERSION}_all.deb" "$dest/"
    echo "copied to ${dest#"$REPO"/}/pve-mirror_${VERSION}_all.deb"
}

# --- install, upgrade, purge in a clean root ---------------------------------------
# Every path in the root except apt's, dpkg's and man-db's own caches, logs and databases.
snapshot() { # snapshot FILE
    (cd "$ROOT" && find . \( -path ./proc -o -path ./sys -o -path ./dev -o -path ./run \
        -o -path ./tmp -o -path ./var/tmp -o -path ./var/cache/apt -o -path ./var/lib/apt \
        -o -path ./var/lib/dpkg -o -path ./var/log -o -path ./var/cache/man \
        -o -path ./var/cache/debconf -o -path ./etc/ld.so.cache \) -prune -o -print | sort) >"$1"
}

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

install_upgrade_purge() { # install_upgrade_purge SUITE
    local suite=$1 base deb bumped left
    base=$(minbase_tarball "$suite")
    open_root "$suite" "$base" "$WORK/$suite-test"
    deb=pve-mirror_${VERSION}_all.deb
    bumped=pve-mirror_${BUMPED_VERSION}_all.deb
    snapshot "$WORK/s0"
    cp "$WORK/$suite/$deb" "$WORK/$suite/$bumped" "$ROOT/tmp/"

    say "$suite: install (the README's command; apt-get pulls the dependencies from Debian)"
    apt_in_root install "/tmp/$deb"
    echo "python $(in_root python3 -c 'import platform; print(platform.python_version())')," \
        "proxmoxer $(in_root dpkg-query -W -f='${Version}' python3-proxmoxer)," \
        "rbd $(in_root dpkg-query -W -f='${Version}' python3-rbd)"
    check_installed "$VERSION" "$UPSTREAM"
    [ "$(timer_state pve-mirror-sync.timer)" = disabled ] || fail "sync timer enabled on install"
    [ "$(timer_state pve-mirror-reconcile.timer)" = disabled ] ||
        fail "reconcile timer enabled on install"
    [ ! -e "$ROOT/etc/pve" ] || fail "/etc/pve created"

    say "$suite: purge (first cycle)"
    apt_in_root purge pve-mirror
    snapshot "$WORK/s1"
    left=$(comm -13 "$WORK/s0" "$WORK/s1" | ours)
    [ -z "$left" ] || fail "purge left files of ours: $left"
    [ -z "$(find "$ROOT/usr/lib/python3/dist-packages" -path '*pve_mirror*' 2>/dev/null)" ] ||
        fail "python files left"

    say "$suite: install, configure like an admin, upgrade, remove, purge"
    apt_in_root install "/tmp/$deb"
    check_installed "$VERSION" "$UPSTREAM"
    # What an admin and the units do: enable a timer; the unit's StateDirectory appears.
    in_root systemctl enable pve-mirror-sync.timer >/dev/null 2>&1
    mkdir -p "$ROOT/var/lib/pve-mirror" && touch "$ROOT/var/lib/pve-mirror/state"
    apt_in_root install "/tmp/$bumped"
    check_installed "$BUMPED_VERSION" "$BUMPED_UPSTREAM"
    [ "$(timer_state pve-mirror-sync.timer)" = enabled ] || fail "upgrade disabled the timer"
    [ "$(timer_state pve-mirror-reconcile.timer)" = disabled ] || fail "upgrade enabled a timer"

    apt_in_root remove pve-mirror
    for f in usr/bin/pve-mirror usr/share/pve-mirror lib/systemd/system/pve-mirror-sync.timer \
        usr/lib/systemd/system/pve-mirror-sync.timer usr/lib/python3/dist-packages/pve_mirror; do
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
    echo "ok: after purge the $suite root holds exactly the files it held before"
    close_root
    rm -rf "$ROOT"
}

# --- main ----------------------------------------------------------------------
timed "host tools" host_tools
timed "copy tree" prepare_sources
if [ "$MODE" = build ]; then
    SUITES=("$HOST_SUITE")
fi
for suite in "${SUITES[@]}"; do
    if [ "$suite" = "$HOST_SUITE" ]; then
        timed "$suite: build (machine)" build_host "$suite"
        timed "$suite: lintian" lintian_host "$suite"
        timed "$suite: build upgrade package" build_bumped_host "$suite"
    else
        timed "$suite: build root + build" build_in_root "$suite"
        timed "$suite: lintian" lintian_in_root "$suite"
    fi
    publish "$suite"
done
if [ "$MODE" = build ]; then
    say "package-test: built ($((SECONDS - START))s)"
    printf '  %s\n' "${TIMES[@]}"
    exit 0
fi
for suite in "${SUITES[@]}"; do
    timed "$suite: install/upgrade/purge" install_upgrade_purge "$suite"
done

say "package-test: PASS (${SUITES[*]}: pve-mirror $VERSION, $((SECONDS - START))s)"
printf '  %s\n' "${TIMES[@]}"
