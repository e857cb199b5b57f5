#!/usr/bin/env bash
# Scale benchmark (issue 12): does the cost per object stay flat from 20,000
# to 200,000 small posts?
#
#   scripts/bench-scale.sh            (run from anywhere inside the checkout)
#
# For each size in SIZES (default "20000 200000"), in one run: generates a
# BBS of that many small posts (gen-bbs.py --profile scale --messages N,
# seed 1), then times with /usr/bin/time -v (wall clock, peak RSS), each
# step after a `sync`:
#   import-bbs into a fresh data dir, verify --read-data, status, the store's
#   first backup into a new repository (format 2) and the next one,
#   backups verify --read-data, restore into a fresh data dir of the same
#   identity, clone of the store over loopback into a fresh node (the
#   serving node is timed too: its peak RSS counts), verify --read-data of
#   the clone, export-bbs of the clone (then diff -r against the tree).
# Prints per size the time per object and peak RSS of each step, the store's
# file count against 100 + bytes / 8 MiB, and then the ratios of the time per
# object at the largest size to the smallest (goal <= 1.5 for import, clone
# and verify), every peak RSS against 250 MB, and the load average before
# each step. The work dir of a size is removed before the next size starts
# (WORK needs room for about 3.5x the largest tree). Exits 0 when goals are
# missed (it reports), non-zero when a step fails or the export differs.
#
# Environment:
#   BBSYNC_BIN=PATH   use this binary, do not build
#   SIZES="N ..."     post counts (default "20000 200000"), smallest first
#   WORK=DIR          put the work dir under DIR
#   KEEP=1            keep the work dir of the last size
set -euo pipefail

PROG=bench-scale.sh
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

SIZES="${SIZES:-20000 200000}"
for n in $SIZES; do
  [[ "$n" =~ ^[0-9]+$ ]] && [ "$n" -ge 100 ] || die "SIZES must be numbers >= 100, not '$n'"
done

ensure_cmd python3 python3
ensure_cmd diff diffutils
ensure_gnu_time
find_bbsync

PARENT="${WORK:-${TMPDIR:-/tmp}}"
SERVER_PID=""
stop_server() {
  if [ -n "$SERVER_PID" ]; then
    # $SERVER_PID is /usr/bin/time; the node is its child, and time writes
    # its report (the node's peak RSS) once the node has exited.
    local node
    node="$(pgrep -P "$SERVER_PID" || true)"
    kill -TERM "${node:-$SERVER_PID}" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
    SERVER_PID=""
  fi
}

log "== bbsync scale benchmark, sizes: $SIZES"
log "machine: $(nproc) CPUs, $(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo 2>/dev/null || true)"
log "bbsync: $BBSYNC"

declare -A R # results: R[<size>,<key>]
RSS_MAX_STEP=""
RSS_MAX=0
note_rss() { # note_rss SIZE STEP
  R[$1,$2_rss]="$RSS_MB"
  if [ "$(fcalc '%d' 'a > b' "a=$RSS_MB" "b=$RSS_MAX")" = 1 ]; then
    RSS_MAX="$RSS_MB"
    RSS_MAX_STEP="$2 at $1"
  fi
}

for N in $SIZES; do
  make_workdir "bbsync-scale-$N" "$PARENT"
  trap 'stop_server; cleanup_workdir' EXIT
  TREE="$WORKDIR/tree"
  SRC="$WORKDIR/source"
  DST="$WORKDIR/clone"
  EXPORT="$WORKDIR/export"
  LOGS="$WORKDIR/logs"
  mkdir -- "$LOGS"
  LOADS=""
  log ""
  log "== $N posts: generate the tree (not timed)"
  show_cmd python3 scripts/gen-bbs.py --profile scale --messages "$N" --seed 1 "$TREE"
  python3 "$BBSYNC_SCRIPTS_DIR/gen-bbs.py" --profile scale --messages "$N" --seed 1 "$TREE" >/dev/null ||
    die "gen-bbs.py failed"
  PLAIN_BYTES="$(tree_bytes "$TREE")"
  AVAIL_KB="$(df -Pk "$WORKDIR" | awk 'NR == 2 { print $4 }')"
  NEED_KB="$((PLAIN_BYTES * 3 / 1024 + 204800))"
  if [ "$AVAIL_KB" -lt "$NEED_KB" ]; then
    die "only $((AVAIL_KB / 1024)) MiB free under $WORKDIR, need about $((NEED_KB / 1024)) MiB (set WORK=DIR)"
  fi
  find "$TREE" -type f -print0 | xargs -0 cat >/dev/null
  "$BBSYNC" --data-dir "$SRC" --no-progress init --name source >/dev/null
  "$BBSYNC" --data-dir "$DST" --no-progress init --name clone >/dev/null
  "$BBSYNC" --data-dir "$SRC" --no-progress trust add "$("$BBSYNC" --data-dir "$DST" id)" >/dev/null

  log "== $N posts: import-bbs"
  timed import "$BBSYNC" --data-dir "$SRC" --no-progress import-bbs "$TREE"
  R[$N,import]="$SECS" R[$N,import_load]="$LOAD"
  note_rss "$N" import
  OBJECTS="$("$BBSYNC" --data-dir "$SRC" --json status | python3 -c 'import json,sys; print(json.load(sys.stdin)["objects"])')"
  R[$N,objects]="$OBJECTS"
  PACK_BYTES="$(tree_bytes "$SRC/packs")"
  R[$N,files]="$(tree_files "$SRC")"
  R[$N,files_limit]="$(fcalc '%d' '100 + b / 8388608' "b=$PACK_BYTES")"
  R[$N,pack_bytes]="$PACK_BYTES"

  log "== $N posts: verify --read-data"
  timed verify "$BBSYNC" --data-dir "$SRC" --no-progress verify --read-data
  R[$N,verify]="$SECS"
  note_rss "$N" verify
  timed status "$BBSYNC" --data-dir "$SRC" --no-progress status
  note_rss "$N" status

  log "== $N posts: backup, an incremental backup, backups verify, restore"
  REPO="$WORKDIR/repo"
  RESTORED="$WORKDIR/restored"
  timed backup "$BBSYNC" --data-dir "$SRC" --no-progress backup --repo "$REPO"
  R[$N,backup]="$SECS"
  note_rss "$N" backup
  timed backup-incremental "$BBSYNC" --data-dir "$SRC" --no-progress backup --repo "$REPO"
  R[$N,backup_inc]="$SECS"
  note_rss "$N" backup-incremental
  timed backups-verify "$BBSYNC" --data-dir "$SRC" --no-progress backups verify --repo "$REPO" --read-data
  R[$N,backups_verify]="$SECS"
  note_rss "$N" backups-verify
  "$BBSYNC" --data-dir "$RESTORED" --no-progress init --name restored >/dev/null
  cp -- "$SRC/identity.key" "$RESTORED/identity.key"
  timed restore "$BBSYNC" --data-dir "$RESTORED" --no-progress restore --repo "$REPO"
  R[$N,restore]="$SECS"
  note_rss "$N" restore
  rm -rf -- "$RESTORED" "$REPO"

  log "== $N posts: clone over loopback"
  /usr/bin/time -v -o "$LOGS/serve.time" "$BBSYNC" --data-dir "$SRC" --no-progress serve \
    --listen /ip4/127.0.0.1/tcp/0 >"$LOGS/serve.out" 2>"$LOGS/serve.log" &
  SERVER_PID=$!
  ADDR=""
  for _ in $(seq 1 300); do
    ADDR="$(head -n 1 "$LOGS/serve.out" 2>/dev/null || true)"
    [ -n "$ADDR" ] && break
    sleep 0.1
  done
  [ -n "$ADDR" ] || die "serve printed no address (log: $LOGS/serve.log)"
  timed clone "$BBSYNC" --data-dir "$DST" --no-progress clone "$ADDR"
  R[$N,clone]="$SECS"
  note_rss "$N" clone
  stop_server
  RSS_MB="$(awk -F': ' '/Maximum resident set size/ { printf "%.0f", $NF * 1024 / 1e6 }' "$LOGS/serve.time")"
  log "    serving node: peak RSS ${RSS_MB} MB"
  note_rss "$N" serve

  log "== $N posts: the clone is whole"
  timed verify-clone "$BBSYNC" --data-dir "$DST" --no-progress verify --read-data
  note_rss "$N" verify-clone
  mkdir -- "$EXPORT"
  timed export "$BBSYNC" --data-dir "$DST" --no-progress export-bbs "$EXPORT"
  note_rss "$N" export
  if ! diff -r "$TREE" "$EXPORT" >"$LOGS/diff.txt" 2>&1; then
    head -n 20 "$LOGS/diff.txt" >&2
    KEEP=1
    die "the clone's export differs from the tree ($N posts)"
  fi
  log "    the clone's export is identical to the tree"
  R[$N,loads]="$LOADS"
  trap - EXIT
  LAST_WORKDIR="$WORKDIR"
  if [ "$N" != "${SIZES##* }" ] || [ "${KEEP:-0}" != 1 ]; then
    rm -rf -- "$WORKDIR"
  fi
done
if [ "${KEEP:-0}" = 1 ]; then log "KEEP=1: work files of the last size kept in $LAST_WORKDIR"; fi

# ---- report ---------------------------------------------------------------

us() { fcalc '%.1f' 's * 1e6 / n' "s=$1" "n=$2"; }
log ""
log "== results (time per object in microseconds; MB = 10^6 B)"
printf '%-9s %8s | %9s %7s %6s | %9s %7s %6s | %9s %7s %6s | %6s %6s | %7s %7s\n' \
  posts objects "import s" "us/obj" "RSS" "verify s" "us/obj" "RSS" "clone s" "us/obj" "RSS" \
  "serve" "export" files "limit"
for N in $SIZES; do
  o="${R[$N,objects]}"
  printf '%-9s %8s | %9s %7s %6s | %9s %7s %6s | %9s %7s %6s | %6s %6s | %7s %7s\n' \
    "$N" "$o" "${R[$N,import]}" "$(us "${R[$N,import]}" "$o")" "${R[$N,import_rss]}" \
    "${R[$N,verify]}" "$(us "${R[$N,verify]}" "$o")" "${R[$N,verify_rss]}" \
    "${R[$N,clone]}" "$(us "${R[$N,clone]}" "$o")" "${R[$N,clone_rss]}" \
    "${R[$N,serve_rss]}" "${R[$N,export_rss]}" "${R[$N,files]}" "${R[$N,files_limit]}"
done
SMALL="${SIZES%% *}"
BIG="${SIZES##* }"
met() { if [ "$(fcalc '%d' "$@")" = 1 ]; then echo yes; else echo no; fi; }
log ""
for step in import clone verify; do
  r="$(fcalc '%.2f' '(b / nb) / (s / ns)' "b=${R[$BIG,$step]}" "nb=${R[$BIG,objects]}" \
    "s=${R[$SMALL,$step]}" "ns=${R[$SMALL,objects]}")"
  log "$step: time per object at $BIG / at $SMALL = $r (goal <= 1.5: $(met 'r <= 1.5' "r=$r"))"
done
log "largest peak RSS of any command: $RSS_MAX MB ($RSS_MAX_STEP) (goal < 250 MB: $(met 'm < 250' "m=$RSS_MAX"))"
for N in $SIZES; do
  log "backup commands at $N: first backup ${R[$N,backup]} s, ${R[$N,backup_rss]} MB;" \
    "incremental ${R[$N,backup_inc]} s, ${R[$N,backup-incremental_rss]} MB;" \
    "backups verify --read-data ${R[$N,backups_verify]} s, ${R[$N,backups-verify_rss]} MB;" \
    "restore ${R[$N,restore]} s, ${R[$N,restore_rss]} MB"
done
for N in $SIZES; do
  log "store files at $N: ${R[$N,files]} for ${R[$N,pack_bytes]} bytes of packs (goal < ${R[$N,files_limit]}:" \
    "$(met 'f < l' "f=${R[$N,files]}" "l=${R[$N,files_limit]}"))"
  log "load average before each step at $N (1 min): ${R[$N,loads]}"
done
