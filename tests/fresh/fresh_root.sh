#!/usr/bin/env bash
# The fresh-machine test (issue #9): runs the README's first command, exactly as written
# there, inside a minimal Debian bookworm root (debootstrap --variant=minbase) that holds
# nothing but the checkout and the conformance kit. It passes when the command exits 0 and
# prints the transcript; a package that setup forgets to install fails it. Given PACKAGE,
# it then builds the .deb there too (fresh_deb.sh installs that in a clean root).
#
# usage: tests/fresh/fresh_root.sh SOURCE_DIR SHARED_DIR [AMANUENSIS_BINARY] [LOG_DIR] [PACKAGE]
#   SOURCE_DIR         the checkout (a git work tree)
#   SHARED_DIR         the kit: the folder holding conformance/ and tools/
#   AMANUENSIS_BINARY  this machine's build; when given, the transcript printed in the fresh
#                      root must equal the one this build prints for the same command
#   LOG_DIR            where the full log of the last run is kept (default: a temporary
#                      folder that is removed)
#   PACKAGE            when given, the .deb is then built in the root as the README says
#                      (`cmake --build build --target package`); it must appear in build/
#                      there under this path's file name (amanuensis_VERSION_ARCH.deb) and
#                      is copied to this path. Removed first, so a run that fails or is
#                      skipped leaves none behind.
#
# What is copied: the working-tree contents of every file git tracks (`git ls-files`), so
# edits to tracked files are tested before they are committed, while untracked files are
# not copied (a new file never `git add`ed fails here as it would on a clean clone). Files
# deleted in the work tree but still in the index are left out too. The kit's conformance/
# and tools/ go beside the checkout (../shared, as the README expects).
#
# Cache: the bare root and the downloaded packages are cached (tests/fresh/fresh_lib.sh);
# every run unpacks a new copy of the bare root, so setup must install every package itself.
#
# Needs root (chroot, mounts), debootstrap and the Debian archive. Without them the test is
# skipped (exit 77, CTest's SKIP_RETURN_CODE) with the reason printed, except when CI=true:
# then a missing prerequisite fails the test.
set -euo pipefail

# The whole script is one compound command, read before it runs: editing this file while a
# run is under way cannot change what that run does.
{
USAGE="usage: fresh_root.sh SOURCE_DIR SHARED_DIR [AMANUENSIS_BINARY] [LOG_DIR] [PACKAGE]"
SRC=${1:?$USAGE}
SHARED=${2:?$USAGE}
HOST_CLI=${3:-}
LOG_DIR=${4:-}
PACKAGE=${5:-}
NAME=fresh-root  # the helpers' messages start with it
# shellcheck source=tests/fresh/fresh_lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/fresh_lib.sh"
[ -z "$PACKAGE" ] || rm -f "$PACKAGE"

check_prerequisites git
git -C "$SRC" rev-parse --is-inside-work-tree >/dev/null 2>&1 || unavailable "$SRC is not a git work tree"
[ -f "$SHARED/conformance/models/micro.en-f16.bin" ] || unavailable "the kit is not at $SHARED"

SRC=$(realpath "$SRC")
SHARED=$(realpath "$SHARED")
[ -z "$HOST_CLI" ] || HOST_CLI=$(realpath "$HOST_CLI")

remove_stale_copies
start_work
ROOT=$WORK/root
if [ -n "$LOG_DIR" ]; then mkdir -p "$LOG_DIR"; LOG=$LOG_DIR/fresh-root.log; else LOG=$WORK/fresh-root.log; fi
: >"$LOG"

# ---- the bare root, from the cache or debootstrapped now -------------------------------
unpack_bare_root "$ROOT"

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
# Node.js is pointed at the root's CA store as here (enter_root copies this machine's CAs).
NODE_CA=()
[ -z "${NODE_EXTRA_CA_CERTS:-}" ] || NODE_CA=("NODE_EXTRA_CA_CERTS=$NODE_EXTRA_CA_CERTS")
enter_root "$ROOT"

OUT=$WORK/stdout
ERR=$WORK/stderr
set +e
in_root "$ROOT" "cd /work/amanuensis && $COMMAND" "${NODE_CA[@]}" >"$OUT" 2>"$ERR"
RC=$?
set -e
{ echo "---- standard error:"; cat "$ERR"; echo "---- standard output:"; cat "$OUT"; } >>"$LOG"
say "the command exited with $RC (full log: $LOG)"

# Keep the downloaded packages for the next run (download time only).
keep_apt_archives "$ROOT"

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

# ---- the .deb, built as the README's Install section says ------------------------------
if [ -n "$PACKAGE" ]; then
  PACKAGE_COMMAND="cmake --build build --target package"
  say "the package: $PACKAGE_COMMAND"
  set +e
  in_root "$ROOT" "cd /work/amanuensis && $PACKAGE_COMMAND" >>"$LOG" 2>&1
  RC=$?
  set -e
  BUILT=$ROOT/work/amanuensis/build/${PACKAGE##*/}
  if [ "$RC" -ne 0 ] || [ ! -f "$BUILT" ]; then
    echo "fresh-root: FAILED: '$PACKAGE_COMMAND' exited with $RC and made" \
      "[$(cd "$ROOT/work/amanuensis/build" && ls -- *.deb 2>/dev/null | tr '\n' ' ')], not ${PACKAGE##*/}" >&2
    tail -n 30 "$LOG" >&2
    exit 1
  fi
  mkdir -p "$(dirname "$PACKAGE")"
  cp "$BUILT" "$PACKAGE.partial"
  mv "$PACKAGE.partial" "$PACKAGE"
  say "package: $PACKAGE ($(du -h "$PACKAGE" | cut -f1)), Depends: $(dpkg-deb -f "$PACKAGE" Depends)"
fi
say "PASSED in $(( $(date +%s) - START ))s"
exit 0
}
