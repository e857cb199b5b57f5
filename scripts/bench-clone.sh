#!/usr/bin/env bash
# Clone benchmark: bbsync clone over loopback vs an rsync daemon, one run.
#
#   scripts/bench-clone.sh            (run from anywhere inside the checkout)
#
# Builds bbsync (or uses BBSYNC_BIN), generates the sample BBS (seed 1),
# imports it into a source node (not timed), serves it on 127.0.0.1, and
# times with /usr/bin/time -v, each after a `sync`:
#   (a) `bbsync clone` into a fresh node (which the source trusts),
#   (b) `rsync -a` from an rsync daemon on 127.0.0.1 serving the same
#       plaintext tree, into an empty directory.
# Then checks the clone (verify --read-data, export-bbs, diff -r against the
# tree) and prints wall times, the ratio clone/rsync, MB/s, objects/s and
# the clone's peak RSS against the goals (ratio <= 1.0, RSS < 200 MB; on the
# small profile >= 5,000 objects/s). Exits 0 when goals are missed (it
# reports), non-zero when a step fails or the clone differs.
#
# Environment:
#   BBSYNC_BIN=PATH   use this binary, do not build
#   PROFILE=NAME      gen-bbs.py profile: large (default), small, posts (20,000
#                     small posts + one 400 MB binary) or scale
#   MESSAGES=N        gen-bbs.py --messages (profile scale)
#   WORK=DIR          put the work dir under DIR
#   KEEP=1            keep the work dir
set -euo pipefail

PROG=bench-clone.sh
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

PROFILE="${PROFILE:-large}"
case "$PROFILE" in
  small | large | posts | scale) ;;
  *) die "PROFILE must be small, large, posts or scale, not '$PROFILE'" ;;
esac
GEN_ARGS=(--profile "$PROFILE" --seed 1)
if [ -n "${MESSAGES:-}" ]; then GEN_ARGS+=(--messages "$MESSAGES"); fi

ensure_cmd python3 python3
ensure_cmd diff diffutils
ensure_cmd rsync rsync
ensure_gnu_time
find_bbsync
make_workdir bbsync-bench-clone "${WORK:-}"

TREE="$WORKDIR/tree"
SRC="$WORKDIR/source"
DST="$WORKDIR/clone"
RSYNC_DEST="$WORKDIR/rsync-copy"
EXPORT="$WORKDIR/export"
LOGS="$WORKDIR/logs"
mkdir -- "$LOGS"
SERVER_PID=""
RSYNCD_PID=""

stop_all() {
  for pid in "$SERVER_PID" "$RSYNCD_PID"; do
    if [ -n "$pid" ]; then
      kill "$pid" 2>/dev/null || true
      wait "$pid" 2>/dev/null || true
    fi
  done
  SERVER_PID=""
  RSYNCD_PID=""
}
trap 'stop_all; cleanup_workdir' EXIT

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

log "== bbsync clone benchmark, profile $PROFILE"
log "machine: $(nproc) CPUs; $(rsync --version | head -n 1)"
log "bbsync: $BBSYNC"
log "work dir: $WORKDIR"

log ""
log "== generate the tree and the source node (not timed)"
show_cmd python3 scripts/gen-bbs.py "${GEN_ARGS[@]}" "$TREE"
python3 "$BBSYNC_SCRIPTS_DIR/gen-bbs.py" "${GEN_ARGS[@]}" "$TREE" || die "gen-bbs.py failed"
PLAIN_BYTES="$(tree_bytes "$TREE")"
PLAIN_FILES="$(tree_files "$TREE")"
"$BBSYNC" --data-dir "$SRC" --no-progress init --name source >/dev/null
"$BBSYNC" --data-dir "$SRC" --no-progress import-bbs "$TREE"
"$BBSYNC" --data-dir "$DST" --no-progress init --name clone >/dev/null
"$BBSYNC" --data-dir "$SRC" --no-progress trust add "$("$BBSYNC" --data-dir "$DST" id)" >/dev/null
OBJECTS="$("$BBSYNC" --data-dir "$SRC" --json status | python3 -c 'import json,sys; print(json.load(sys.stdin)["objects"])')"
log "plaintext: $PLAIN_BYTES bytes in $PLAIN_FILES files, $OBJECTS objects"

log ""
log "== start the source node and an rsync daemon on 127.0.0.1"
start_serve "$SRC" "$LOGS"
ADDR="$SERVE_ADDR"
start_rsyncd "$TREE" "$LOGS"
log "source: $ADDR; rsync daemon: rsync://127.0.0.1:$PORT/bbs/"

log ""
log "== (a) bbsync clone"
timed clone "$BBSYNC" --data-dir "$DST" --no-progress clone "$ADDR"
CLONE_S="$SECS"
CLONE_RSS="$RSS_MB"

log ""
log "== (b) rsync -a from the rsync daemon into an empty directory"
mkdir -- "$RSYNC_DEST"
timed rsync rsync -a "rsync://127.0.0.1:$PORT/bbs/" "$RSYNC_DEST/"
RSYNC_S="$SECS"
stop_all

log ""
log "== check the clone (not timed)"
"$BBSYNC" --data-dir "$DST" --no-progress verify --read-data
mkdir -- "$EXPORT"
"$BBSYNC" --data-dir "$DST" --no-progress export-bbs "$EXPORT" >/dev/null
if ! diff -r "$TREE" "$EXPORT" >"$LOGS/diff.txt" 2>&1; then
  head -n 20 "$LOGS/diff.txt" >&2
  die "the clone's export differs from the tree"
fi
log "the clone's export is identical to the tree"

RATIO="$(fcalc '%.2f' 'c / (r > 0.01 ? r : 0.01)' "c=$CLONE_S" "r=$RSYNC_S")"
OPS="$(fcalc '%.0f' 'o / (s > 0.01 ? s : 0.01)' "o=$OBJECTS" "s=$CLONE_S")"
met() { if [ "$(fcalc '%d' "$@")" = 1 ]; then echo yes; else echo no; fi; }
log ""
log "== results: profile $PROFILE, $PLAIN_BYTES plaintext bytes, $OBJECTS objects (MB = 10^6 B)"
printf '%-18s %8s %9s %12s %12s\n' step seconds MB/s objects/s "peak RSS MB"
printf '%-18s %8s %9s %12s %12s\n' "bbsync clone" "$CLONE_S" "$(mbps "$PLAIN_BYTES" "$CLONE_S")" "$OPS" "$CLONE_RSS"
printf '%-18s %8s %9s %12s %12s\n' "rsync daemon" "$RSYNC_S" "$(mbps "$PLAIN_BYTES" "$RSYNC_S")" "-" "-"
log ""
log "ratio clone/rsync: $RATIO (goal <= 1.0: $(met "r <= 1.0" "r=$RATIO"))"
log "load average before each step (1 min): $LOADS"
log "clone's store: $(tree_files "$DST") files, $(tree_bytes "$DST") bytes"
log "clone peak RSS: $CLONE_RSS MB (goal < 200 MB: $(met "m < 200" "m=$CLONE_RSS"))"
if [ "$PROFILE" = small ]; then
  log "objects/s: $OPS (goal >= 5000: $(met "o >= 5000" "o=$OPS"))"
fi
