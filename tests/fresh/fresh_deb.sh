#!/usr/bin/env bash
# The package test (issue #9): installs the .deb with apt in a new copy of the bare
# bookworm root (debootstrap --variant=minbase: no compiler, no -dev package, no FFmpeg, no
# oneDNN), so apt must pull every runtime library through the package's Depends, then runs
# the installed command from /usr/bin: `amanuensis --help` and a transcription of the kit's
# jfk.wav with its micro model, which must print text (this machine's build's text, when
# AMANUENSIS_BINARY is given). Recommends are not installed: the package must work on a
# machine that turns them off, so they cannot stand in for a missing Depends.
#
# It also fails when a library the binary links directly (its ELF NEEDED entries) belongs
# to a package the Depends do not name, even if that package came in through another one
# (zlib1g is in the bare root anyway; libgomp1 comes with libdnnl): such a dependency breaks
# as soon as the other package stops bringing it.
#
# usage: tests/fresh/fresh_deb.sh PACKAGE SHARED_DIR [AMANUENSIS_BINARY] [LOG_DIR]
#   PACKAGE            the .deb: the one fresh_root.sh built in its fresh root (CTest), or
#                      this machine's (`cmake --build build --target package`)
#   SHARED_DIR         the kit: the folder holding conformance/
#   AMANUENSIS_BINARY  this machine's build, whose transcript the installed command must print
#   LOG_DIR            where the full log of the last run is kept (default: a temporary
#                      folder that is removed)
#
# Same root, cache and prerequisites as fresh_root.sh (tests/fresh/fresh_lib.sh); a missing
# PACKAGE (fresh_root skipped) is a missing prerequisite too: skipped, or failed when CI=true.
set -euo pipefail

# One compound command, read before it runs (see fresh_root.sh).
{
USAGE="usage: fresh_deb.sh PACKAGE SHARED_DIR [AMANUENSIS_BINARY] [LOG_DIR]"
PACKAGE=${1:?$USAGE}
SHARED=${2:?$USAGE}
HOST_CLI=${3:-}
LOG_DIR=${4:-}
NAME=fresh-deb  # the helpers' messages start with it
# shellcheck source=tests/fresh/fresh_lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/fresh_lib.sh"

check_prerequisites dpkg-deb readelf
[ -f "$PACKAGE" ] || unavailable "no package at $PACKAGE (fresh_root builds it there: was it skipped?)"
MODEL=$SHARED/conformance/models/micro.en-f16.bin
AUDIO=$SHARED/conformance/audio/jfk.wav
{ [ -f "$MODEL" ] && [ -f "$AUDIO" ]; } || unavailable "the kit is not at $SHARED"
PACKAGE=$(realpath "$PACKAGE")
[ -z "$HOST_CLI" ] || HOST_CLI=$(realpath "$HOST_CLI")
DEB=${PACKAGE##*/}

remove_stale_copies
start_work
ROOT=$WORK/root
if [ -n "$LOG_DIR" ]; then mkdir -p "$LOG_DIR"; LOG=$LOG_DIR/fresh-deb.log; else LOG=$WORK/fresh-deb.log; fi
: >"$LOG"

# ---- the package itself -------------------------------------------------------------------
DEPENDS=$(dpkg-deb -f "$PACKAGE" Depends)
say "$DEB: $(dpkg-deb -f "$PACKAGE" Package) $(dpkg-deb -f "$PACKAGE" Version)," \
  "section $(dpkg-deb -f "$PACKAGE" Section), maintainer $(dpkg-deb -f "$PACKAGE" Maintainer)"
say "Depends: $DEPENDS"
for field in Maintainer Section Description Depends; do
  [ -n "$(dpkg-deb -f "$PACKAGE" "$field")" ] || fail "$DEB has no $field field"
done
# What it installs: the command and nothing else (no libraries, headers or test programs).
FILES=$(dpkg-deb -c "$PACKAGE" | awk '$1 !~ /^d/ { print $NF }')
[ "$FILES" = "./usr/bin/amanuensis" ] || fail "$DEB should hold ./usr/bin/amanuensis alone; it holds: $FILES"
# The libraries the binary names (NEEDED), read from the package's copy.
dpkg-deb -x "$PACKAGE" "$WORK/unpacked"
NEEDED=$(readelf -d "$WORK/unpacked/usr/bin/amanuensis" | sed -n 's/.*(NEEDED).*\[\(.*\)\]$/\1/p')
[ -n "$NEEDED" ] || fail "readelf found no NEEDED library in $DEB's /usr/bin/amanuensis"

# ---- a clean root and the user's commands ----------------------------------------------------
unpack_bare_root "$ROOT"
cp "$PACKAGE" "$ROOT/root/$DEB"
mkdir -p "$ROOT/work/shared/conformance/models" "$ROOT/work/shared/conformance/audio"
cp "$MODEL" "$ROOT/work/shared/conformance/models/"
cp "$AUDIO" "$ROOT/work/shared/conformance/audio/"
enter_root "$ROOT"

# Runs a command in the root, saying so unless QUIET=1: its output goes to $WORK/stdout and
# $WORK/stderr, and to the log; the status is in RC.
run() {
  [ "${QUIET:-}" = 1 ] || say "\$ $1"
  { echo "---- \$ $1"; } >>"$LOG"
  set +e
  in_root "$ROOT" "cd /root && $1" DEBIAN_FRONTEND=noninteractive >"$WORK/stdout" 2>"$WORK/stderr"
  RC=$?
  set -e
  cat "$WORK/stderr" "$WORK/stdout" >>"$LOG"
  echo "---- exit $RC" >>"$LOG"
}
fail_run() {
  echo "$NAME: FAILED: $* (exit $RC; full log: $LOG)" >&2
  echo "---- standard error, last lines:" >&2; tail -n 30 "$WORK/stderr" >&2
  echo "---- standard output, last lines:" >&2; tail -n 10 "$WORK/stdout" >&2
  exit 1
}

run "apt-get update -q"
[ "$RC" -eq 0 ] || fail_run "apt-get update failed in the fresh root"
# The README's install command, as root, answering yes, without Recommends (see above).
run "apt install -y --no-install-recommends ./$DEB"
INSTALLED=$(grep -c '^Setting up ' "$WORK/stdout" || true)
keep_apt_archives "$ROOT"
[ "$RC" -eq 0 ] || fail_run "apt could not install $DEB"
say "apt installed $INSTALLED packages"

# Every library the binary needs resolves: no "not found" from the dynamic loader.
run "ldd /usr/bin/amanuensis"
[ "$RC" -eq 0 ] || fail_run "ldd /usr/bin/amanuensis failed"
if grep -q 'not found' "$WORK/stdout"; then
  fail "libraries not found after installing $DEB (a dependency missing from its Depends):" \
    "$(grep 'not found' "$WORK/stdout" | awk '{ print $1 }' | tr '\n' ' ')(ldd's output: $LOG)"
fi

# Every directly linked library's package is named in Depends.
DEPENDED=$(echo "$DEPENDS" | tr ',|' '\n' | sed 's/(.*//; s/:.*//; s/[[:space:]]//g' | grep -v '^$' | sort -u)
missing=()
for soname in $NEEDED; do
  QUIET=1 run "dpkg -S '*/$soname'"
  [ "$RC" -eq 0 ] || fail_run "no installed package holds $soname"
  owners=$(sed 's/: .*//' "$WORK/stdout" | tr ',' '\n' | sed 's/:.*//; s/[[:space:]]//g' | sort -u)
  grep -qxF -f <(echo "$owners") <<<"$DEPENDED" || missing+=("$soname ($(echo "$owners" | paste -sd' '))")
done
[ ${#missing[@]} -eq 0 ] || fail "$DEB links libraries whose packages its Depends do not name: ${missing[*]}"
say "Depends names the package of each of the $(echo "$NEEDED" | wc -w) libraries the binary links"

run "command -v amanuensis"
{ [ "$RC" -eq 0 ] && [ "$(cat "$WORK/stdout")" = /usr/bin/amanuensis ]; } || fail_run "amanuensis is not /usr/bin/amanuensis on PATH"

run "amanuensis --help"
[ "$RC" -eq 0 ] || fail_run "amanuensis --help failed"
grep -q transcribe "$WORK/stdout" || fail_run "amanuensis --help does not mention transcribe"

TRANSCRIBE="amanuensis transcribe --model /work/shared/conformance/models/micro.en-f16.bin /work/shared/conformance/audio/jfk.wav"
run "$TRANSCRIBE"
[ "$RC" -eq 0 ] || fail_run "the transcription failed"
[ -n "$(tr -d '[:space:]' <"$WORK/stdout")" ] || fail_run "the transcription printed no text"
cp "$WORK/stdout" "$WORK/transcript"
if [ -n "$HOST_CLI" ]; then
  "$HOST_CLI" transcribe --model "$MODEL" "$AUDIO" >"$WORK/expected"
  if ! cmp -s "$WORK/transcript" "$WORK/expected"; then
    echo "$NAME: FAILED: the installed command's transcript differs from this machine's build's" >&2
    echo "--- expected (this build):" >&2; cat "$WORK/expected" >&2
    echo "--- printed by /usr/bin/amanuensis:" >&2; cat "$WORK/transcript" >&2
    exit 1
  fi
  say "transcript (identical to this build's):"
else
  say "transcript:"
fi
sed 's/^/    /' "$WORK/transcript"
say "PASSED in $(( $(date +%s) - START ))s"
exit 0
}
