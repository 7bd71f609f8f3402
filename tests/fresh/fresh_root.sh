#!/usr/bin/env bash
# The fresh-machine test (issue #9): runs the README's first command, exactly as written
# there, inside a minimal Debian bookworm root (debootstrap --variant=minbase) that holds
# nothing but the checkout and the conformance kit. It passes when the command exits 0 and
# prints the transcript; a package that setup forgets to install fails it.
#
# usage: tests/fresh/fresh_root.sh SOURCE_DIR SHARED_DIR [AMANUENSIS_BINARY] [LOG_DIR]
#   SOURCE_DIR         the checkout (a git work tree)
#   SHARED_DIR         the kit: the folder holding conformance/ and tools/
#   AMANUENSIS_BINARY  this machine's build; when given, the transcript printed in the fresh
#                      root must equal the one this build prints for the same command
#   LOG_DIR            where the full log of the last run is kept (default: a temporary
#                      folder that is removed)
#
# What is copied: the working-tree contents of every file git tracks (`git ls-files`), so
# edits to tracked files are tested before they are committed, while untracked files are
# not copied (a new file never `git add`ed fails here as it would on a clean clone). Files
# deleted in the work tree but still in the index are left out too. The kit's conformance/
# and tools/ go beside the checkout (../shared, as the README expects).
#
# Cache: the bare root (debootstrap's output plus the standard bookworm, -updates and
# -security sources) is kept as a tarball under $AMANUENSIS_FRESH_CACHE (default
# /var/cache/amanuensis-fresh-root), keyed by the ISO week, so it is rebuilt weekly and
# otherwise only unpacked. Every run unpacks a new copy from that bare tarball, so nothing a
# previous run installed can hide a missing step. The .deb files apt downloaded are kept
# there as well and copied into the next copy's /var/cache/apt/archives: they spare the
# download only; setup must still install every package itself.
#
# Needs root (chroot, mounts), debootstrap and the Debian archive. Without them the test is
# skipped (exit 77, CTest's SKIP_RETURN_CODE) with the reason printed, except when CI=true:
# then a missing prerequisite fails the test.
set -euo pipefail

# The whole script is one compound command, read before it runs: editing this file while a
# run is under way cannot change what that run does.
{
SRC=${1:?usage: fresh_root.sh SOURCE_DIR SHARED_DIR [AMANUENSIS_BINARY] [LOG_DIR]}
SHARED=${2:?usage: fresh_root.sh SOURCE_DIR SHARED_DIR [AMANUENSIS_BINARY] [LOG_DIR]}
HOST_CLI=${3:-}
LOG_DIR=${4:-}
SUITE=bookworm
MIRROR=${AMANUENSIS_FRESH_MIRROR:-http://deb.debian.org/debian}
SECURITY_MIRROR=${AMANUENSIS_FRESH_SECURITY_MIRROR:-http://deb.debian.org/debian-security}
CACHE=${AMANUENSIS_FRESH_CACHE:-/var/cache/amanuensis-fresh-root}
# Bump when the recipe of the bare root below changes, so cached tarballs are not reused.
RECIPE=1

START=$(date +%s)
say() { echo "fresh-root: [$(( $(date +%s) - START ))s] $*"; }

# A missing prerequisite: skipped normally, a failure in CI.
unavailable() {
  if [ "${CI:-}" = "true" ]; then
    echo "fresh-root: FAILED: $* (CI=true: a missing prerequisite is a failure, not a skip)" >&2
    exit 1
  fi
  echo "fresh-root: SKIPPED: $*"
  exit 77
}

[ "$(id -u)" -eq 0 ] || unavailable "needs root (debootstrap, chroot and mounts); run the suite as root"
for tool in debootstrap chroot mount umount tar git flock curl findmnt; do
  command -v "$tool" >/dev/null 2>&1 || unavailable "'$tool' is not installed (scripts/setup.sh installs debootstrap)"
done
git -C "$SRC" rev-parse --is-inside-work-tree >/dev/null 2>&1 || unavailable "$SRC is not a git work tree"
[ -f "$SHARED/conformance/models/micro.en-f16.bin" ] || unavailable "the kit is not at $SHARED"
curl -fsS --max-time 30 -o /dev/null "$MIRROR/dists/$SUITE/Release" ||
  unavailable "the Debian archive $MIRROR cannot be reached"

SRC=$(realpath "$SRC")
SHARED=$(realpath "$SHARED")
[ -z "$HOST_CLI" ] || HOST_CLI=$(realpath "$HOST_CLI")

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
    echo "fresh-root: something is still mounted below $1; NOT removing it (remove it by hand)" >&2
    return 1
  fi
  rm -rf --one-file-system "$1"
}

# A run killed outright (CTest's timeout sends SIGKILL, so no trap runs) leaves its copy
# behind, mounts included: remove every copy whose run is gone.
for stale in /var/tmp/amanuensis-fresh.*; do
  [ -d "$stale" ] || continue
  pid=$(cat "$stale/pid" 2>/dev/null || echo 0)
  if [ "$pid" -gt 0 ]; then
    ! kill -0 "$pid" 2>/dev/null || continue
  elif [ -n "$(find "$stale" -maxdepth 0 -mmin -10)" ]; then
    continue  # being created this moment (its run writes the pid file first thing)
  fi
  echo "fresh-root: removing $stale, left by a run that was killed"
  remove_tree "$stale" || true
done

WORK=$(mktemp -d /var/tmp/amanuensis-fresh.XXXXXX)
echo $$ >"$WORK/pid"
ROOT=$WORK/root
STAGE=""
if [ -n "$LOG_DIR" ]; then mkdir -p "$LOG_DIR"; LOG=$LOG_DIR/fresh-root.log; else LOG=$WORK/fresh-root.log; fi
: >"$LOG"

cleanup() {
  local rc=$?
  for dir in "$WORK" ${STAGE:+"$STAGE"}; do
    remove_tree "$dir" || rc=1
  done
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---- the bare root, from the cache or debootstrapped now -------------------------------
mkdir -p "$CACHE"
KEY=$SUITE-minbase-$(dpkg --print-architecture)-$(date -u +%G-W%V)-r$RECIPE
TARBALL=$CACHE/$KEY.tar
exec 9>"$CACHE/lock"
flock 9
for stale in "$CACHE"/stage.*; do  # holding the lock: no other run is staging
  [ ! -d "$stale" ] || remove_tree "$stale" || true
done
if [ -f "$TARBALL" ]; then
  say "bare root: cached $TARBALL"
else
  say "bare root: debootstrap --variant=minbase $SUITE (not cached for $KEY)"
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
  tar --numeric-owner -C "$STAGE" -cf "$TARBALL.partial" .
  mv "$TARBALL.partial" "$TARBALL"
  rm -rf --one-file-system "$STAGE"
  STAGE=""
  find "$CACHE" -maxdepth 1 -name "$SUITE-minbase-*.tar" ! -name "$KEY.tar" -delete
  say "bare root: cached as $TARBALL ($(du -h "$TARBALL" | cut -f1))"
fi
mkdir -p "$ROOT"
tar --numeric-owner -C "$ROOT" -xf "$TARBALL"
chmod 755 "$ROOT"
mkdir -p "$CACHE/apt-archives"
find "$CACHE/apt-archives" -maxdepth 1 -name '*.deb' -exec cp -l -t "$ROOT/var/cache/apt/archives" {} + 2>/dev/null ||
  find "$CACHE/apt-archives" -maxdepth 1 -name '*.deb' -exec cp -t "$ROOT/var/cache/apt/archives" {} +
flock -u 9
say "root unpacked in $ROOT ($(find "$ROOT/var/cache/apt/archives" -maxdepth 1 -name '*.deb' | wc -l) cached .deb files)"

# ---- the checkout and the kit ----------------------------------------------------------
mkdir -p "$ROOT/work/amanuensis" "$ROOT/work/shared"
(cd "$SRC" && git ls-files -z | while IFS= read -r -d '' f; do
  if [ -e "$f" ] || [ -L "$f" ]; then printf '%s\0' "$f"; fi
done | tar --null -T - -cf -) | tar -C "$ROOT/work/amanuensis" -xf -
cp -a "$SHARED/conformance" "$SHARED/tools" "$ROOT/work/shared/"
say "copied $(cd "$SRC" && git ls-files | wc -l) tracked files and the kit"

# The README's first command: the first ```sh block, verbatim.
COMMAND=$(awk '/^```sh$/ && !seen { inside = 1; seen = 1; next } inside && /^```/ { exit } inside { print }' \
  "$ROOT/work/amanuensis/README.md")
[ -n "$COMMAND" ] || { echo "fresh-root: FAILED: README.md has no \`\`\`sh block" >&2; exit 1; }
say "README's first command:"
printf '    %s\n' "$COMMAND"

# ---- run it ------------------------------------------------------------------------------
# This machine's network configuration, not the project's: its resolver, and the local CA
# certificates it trusts (an intercepting proxy's), which the ca-certificates package adds
# to the root's store when setup installs it; Node.js is pointed at that store as here.
cp /etc/resolv.conf "$ROOT/etc/resolv.conf"
if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
  mkdir -p "$ROOT/usr/local/share/ca-certificates"
  cp /usr/local/share/ca-certificates/*.crt "$ROOT/usr/local/share/ca-certificates/"
fi
NODE_CA=()
[ -z "${NODE_EXTRA_CA_CERTS:-}" ] || NODE_CA=("NODE_EXTRA_CA_CERTS=$NODE_EXTRA_CA_CERTS")
mount -t proc proc "$ROOT/proc"
mount -t sysfs sysfs "$ROOT/sys"
mount --bind /dev "$ROOT/dev"
mount --bind /dev/pts "$ROOT/dev/pts"

# A login's environment, nothing inherited from this one.
OUT=$WORK/stdout
ERR=$WORK/stderr
set +e
chroot "$ROOT" /usr/bin/env -i HOME=/root TERM=dumb PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
  "${NODE_CA[@]}" /bin/bash -c "cd /work/amanuensis && $COMMAND" >"$OUT" 2>"$ERR"
RC=$?
set -e
{ echo "---- standard error:"; cat "$ERR"; echo "---- standard output:"; cat "$OUT"; } >>"$LOG"
say "the command exited with $RC (full log: $LOG)"

# Keep the downloaded packages for the next run (download time only).
flock 9
find "$CACHE/apt-archives" -maxdepth 1 -name '*.deb' -delete
find "$ROOT/var/cache/apt/archives" -maxdepth 1 -name '*.deb' -exec cp -l -t "$CACHE/apt-archives" {} + 2>/dev/null ||
  find "$ROOT/var/cache/apt/archives" -maxdepth 1 -name '*.deb' -exec cp -t "$CACHE/apt-archives" {} +
flock -u 9

if [ "$RC" -ne 0 ]; then
  echo "fresh-root: FAILED: the README's first command exited with $RC in a fresh $SUITE root" >&2
  echo "---- its standard error, last lines:" >&2
  tail -n 40 "$ERR" >&2
  echo "---- its standard output, last lines:" >&2
  tail -n 15 "$OUT" >&2
  exit 1
fi

# The transcript: what the last step of the command (after the last '&&') prints. When it
# runs build/src/cli/amanuensis, this machine's build must print the same text for it.
LAST_STEP=${COMMAND##*&& }
if [ -n "$HOST_CLI" ] && [[ $LAST_STEP == build/src/cli/amanuensis\ * ]]; then
  EXPECTED=$WORK/expected
  # Run beside a ../shared that is the kit given, as in the fresh root.
  mkdir -p "$WORK/host/amanuensis"
  ln -s "$SHARED" "$WORK/host/shared"
  (cd "$WORK/host/amanuensis" && eval "\"\$HOST_CLI\" ${LAST_STEP#build/src/cli/amanuensis }") >"$EXPECTED"
  [ -s "$EXPECTED" ] || { echo "fresh-root: FAILED: this machine's build printed no transcript for: $LAST_STEP" >&2; exit 1; }
  lines=$(wc -l <"$EXPECTED")
  if ! tail -n "$lines" "$OUT" | cmp -s - "$EXPECTED"; then
    echo "fresh-root: FAILED: the command's output does not end with the transcript this machine's build prints" >&2
    echo "--- expected (this build):" >&2; cat "$EXPECTED" >&2
    echo "--- last lines printed in the fresh root:" >&2; tail -n "$lines" "$OUT" >&2
    exit 1
  fi
  say "transcript ($lines lines, identical to this build's):"
  sed 's/^/    /' "$EXPECTED"
else
  [ -n "$(tail -n 1 "$OUT")" ] || { echo "fresh-root: FAILED: the command printed no transcript" >&2; exit 1; }
  say "output's last lines:"
  tail -n 5 "$OUT" | sed 's/^/    /'
fi
say "PASSED in $(( $(date +%s) - START ))s"
exit 0
}
