# shellcheck shell=bash
# Helpers of the fresh-machine tests (fresh_root.sh, fresh_deb.sh): sourced, not run.
# The caller sets NAME (its messages' prefix) before sourcing, then calls, in this order:
# check_prerequisites, remove_stale_copies, start_work, unpack_bare_root, enter_root,
# in_root (as often as needed) and keep_apt_archives.
#
# The bare root (debootstrap --variant=minbase plus the standard bookworm, -updates and
# -security sources) is cached as a tarball under $AMANUENSIS_FRESH_CACHE (default
# /var/cache/amanuensis-fresh-root), keyed by the ISO week, so it is rebuilt weekly and
# otherwise only unpacked. Every run unpacks a new copy from it, so nothing a previous run
# installed can hide a missing step. The .deb files apt downloaded in any copy are kept in
# $CACHE/apt-archives and copied into the next copy's /var/cache/apt/archives: they spare
# the download only; apt must still install every package itself.

SUITE=bookworm
MIRROR=${AMANUENSIS_FRESH_MIRROR:-http://deb.debian.org/debian}
SECURITY_MIRROR=${AMANUENSIS_FRESH_SECURITY_MIRROR:-http://deb.debian.org/debian-security}
CACHE=${AMANUENSIS_FRESH_CACHE:-/var/cache/amanuensis-fresh-root}
# Bump when the recipe of the bare root below changes, so cached tarballs are not reused.
RECIPE=1

START=$(date +%s)
say() { echo "$NAME: [$(( $(date +%s) - START ))s] $*"; }
fail() { echo "$NAME: FAILED: $*" >&2; exit 1; }

# A missing prerequisite: skipped normally (exit 77, CTest's SKIP_RETURN_CODE), a failure
# in CI.
unavailable() {
  if [ "${CI:-}" = "true" ]; then
    echo "$NAME: FAILED: $* (CI=true: a missing prerequisite is a failure, not a skip)" >&2
    exit 1
  fi
  echo "$NAME: SKIPPED: $*"
  exit 77
}

# Root, the tools every fresh test uses plus those named, and the Debian archive.
check_prerequisites() {
  local tool
  [ "$(id -u)" -eq 0 ] || unavailable "needs root (debootstrap, chroot and mounts); run the suite as root"
  for tool in debootstrap chroot mount umount tar flock curl findmnt "$@"; do
    command -v "$tool" >/dev/null 2>&1 || unavailable "'$tool' is not installed (scripts/setup.sh installs debootstrap)"
  done
  curl -fsS --max-time 30 -o /dev/null "$MIRROR/dists/$SUITE/Release" ||
    unavailable "the Debian archive $MIRROR cannot be reached"
}

# Unmounts everything mounted at or below $1, deepest first.
unmount_below() {
  local base=$1 target
  findmnt -rn -o TARGET | awk -v b="$base" '$0 == b || index($0, b "/") == 1' | sort -r | while read -r target; do
    umount "$target" 2>/dev/null || umount -l "$target"
  done
}
still_mounted() { findmnt -rn -o TARGET | awk -v b="$1" 'index($0, b "/") == 1 { found = 1 } END { exit !found }'; }
remove_tree() {
  unmount_below "$1"
  if still_mounted "$1"; then
    echo "$NAME: something is still mounted below $1; NOT removing it (remove it by hand)" >&2
    return 1
  fi
  rm -rf --one-file-system "$1"
}

# A run killed outright (CTest's timeout sends SIGKILL, so no trap runs) leaves its copy
# behind, mounts included: remove every copy whose run is gone.
remove_stale_copies() {
  local stale pid
  for stale in /var/tmp/amanuensis-fresh.*; do
    [ -d "$stale" ] || continue
    pid=$(cat "$stale/pid" 2>/dev/null || echo 0)
    if [ "$pid" -gt 0 ]; then
      ! kill -0 "$pid" 2>/dev/null || continue
    elif [ -n "$(find "$stale" -maxdepth 0 -mmin -10)" ]; then
      continue  # being created this moment (its run writes the pid file first thing)
    fi
    echo "$NAME: removing $stale, left by a run that was killed"
    remove_tree "$stale" || true
  done
}

# WORK: this run's folder, removed (mounts first) on exit.
cleanup() {
  local rc=$? dir
  for dir in "$WORK" ${STAGE:+"$STAGE"}; do
    remove_tree "$dir" || rc=1
  done
  exit "$rc"
}
start_work() {
  WORK=$(mktemp -d /var/tmp/amanuensis-fresh.XXXXXX)
  echo $$ >"$WORK/pid"
  STAGE=""
  trap cleanup EXIT
  trap 'exit 130' INT TERM
}

# Unpacks a new copy of the bare root at $1 (debootstrapping it first when this week's is
# not cached; its output goes to $LOG) and puts the cached .deb files in its apt archive.
unpack_bare_root() {
  local root=$1 key tarball stale
  mkdir -p "$CACHE"
  key=$SUITE-minbase-$(dpkg --print-architecture)-$(date -u +%G-W%V)-r$RECIPE
  tarball=$CACHE/$key.tar
  exec 9>"$CACHE/lock"
  flock 9
  for stale in "$CACHE"/stage.*; do  # holding the lock: no other run is staging
    [ ! -d "$stale" ] || remove_tree "$stale" || true
  done
  if [ -f "$tarball" ]; then
    say "bare root: cached $tarball"
  else
    say "bare root: debootstrap --variant=minbase $SUITE (not cached for $key)"
    STAGE=$(mktemp -d "$CACHE/stage.XXXXXX")
    if ! debootstrap --variant=minbase "$SUITE" "$STAGE" "$MIRROR" >>"$LOG" 2>&1; then
      tail -n 30 "$LOG" >&2
      unavailable "debootstrap failed (see above; the archive may be unreachable)"
    fi
    # What a fresh install has: the release, its updates and the security archive.
    cat >"$STAGE/etc/apt/sources.list" <<EOF
deb $MIRROR $SUITE main
deb $MIRROR $SUITE-updates main
deb $SECURITY_MIRROR $SUITE-security main
EOF
    rm -rf "$STAGE/var/cache/apt/archives/"*.deb "$STAGE/var/lib/apt/lists/"*_* 2>/dev/null || true
    unmount_below "$STAGE"
    chmod 755 "$STAGE"  # mktemp made it 0700; it becomes the root's /
    tar --numeric-owner -C "$STAGE" -cf "$tarball.partial" .
    mv "$tarball.partial" "$tarball"
    rm -rf --one-file-system "$STAGE"
    STAGE=""
    find "$CACHE" -maxdepth 1 -name "$SUITE-minbase-*.tar" ! -name "$key.tar" -delete
    say "bare root: cached as $tarball ($(du -h "$tarball" | cut -f1))"
  fi
  mkdir -p "$root"
  tar --numeric-owner -C "$root" -xf "$tarball"
  chmod 755 "$root"
  mkdir -p "$CACHE/apt-archives"
  find "$CACHE/apt-archives" -maxdepth 1 -name '*.deb' -exec cp -l -t "$root/var/cache/apt/archives" {} + 2>/dev/null ||
    find "$CACHE/apt-archives" -maxdepth 1 -name '*.deb' -exec cp -t "$root/var/cache/apt/archives" {} +
  flock -u 9
  say "root unpacked in $root ($(find "$root/var/cache/apt/archives" -maxdepth 1 -name '*.deb' | wc -l) cached .deb files)"
}

# This machine's network configuration, not the project's: its resolver, and the local CA
# certificates it trusts (an intercepting proxy's), which the ca-certificates package adds
# to the root's store when it is installed there. Then the kernel's file systems.
enter_root() {
  local root=$1
  cp /etc/resolv.conf "$root/etc/resolv.conf"
  if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
    mkdir -p "$root/usr/local/share/ca-certificates"
    cp /usr/local/share/ca-certificates/*.crt "$root/usr/local/share/ca-certificates/"
  fi
  mount -t proc proc "$root/proc"
  mount -t sysfs sysfs "$root/sys"
  mount --bind /dev "$root/dev"
  mount --bind /dev/pts "$root/dev/pts"
}

# Runs bash -c "$2" in the root $1 with a login's environment, nothing inherited from this
# one (the variables named after it, NAME=VALUE, aside).
in_root() {
  local root=$1 command=$2
  shift 2
  chroot "$root" /usr/bin/env -i HOME=/root TERM=dumb PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    "$@" /bin/bash -c "$command"
}

# Adds the packages apt downloaded in the root $1 to the cache, for the next run (download
# time only). Adds, never replaces: each test's root fetches some packages the other's
# does not.
keep_apt_archives() {
  local root=$1 deb kept
  flock 9
  for deb in "$root"/var/cache/apt/archives/*.deb; do
    [ -f "$deb" ] || continue
    kept=$CACHE/apt-archives/${deb##*/}
    [ -e "$kept" ] || ln "$deb" "$kept" 2>/dev/null || cp "$deb" "$kept"
  done
  flock -u 9
}
