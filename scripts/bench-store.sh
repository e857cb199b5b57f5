#!/usr/bin/env bash
# Store benchmark: bbsync import/verify/export on a generated BBS vs restic.
#
#   scripts/bench-store.sh            (run from anywhere inside the checkout)
#
# Builds bbsync (cargo build --release -p bbsync --locked), generates the
# sample BBS with scripts/gen-bbs.py (seed 1), reads it once so every tool
# starts with a warm page cache (nothing is dropped from the cache), then
# times with /usr/bin/time -v (wall clock and peak RSS), each step after a
# `sync` so that no tool pays for another's pending writes:
#   import-bbs into a fresh data dir, verify --read-data, a second import-bbs
#   of the unchanged tree, restic backup of the same tree into a fresh repo,
#   export-bbs into an empty dir (then diff -r against the tree).
# Prints a table against the goals (issue 12: import time <= 0.5x restic's,
# import peak RSS < 200 MB, verify >= 1 GB/s of store data; the second import
# < 20% of the first), with the load average before each step.  Exits 0 when
# goals are missed (it only reports), non-zero when a command fails or the
# export differs.
#
# Environment:
#   BBSYNC_BIN=PATH   use this binary, do not build
#   PROFILE=NAME      gen-bbs.py profile: large (default, ~1 GB), small, posts
#                     (20,000 small posts + one 400 MB binary) or scale
#   MESSAGES=N        gen-bbs.py --messages (profile scale; default its own)
#   WORK=DIR          put the work dir under DIR (default: a mktemp -d in
#                     $TMPDIR or /tmp); needs about 4x the tree size free
#   KEEP=1            keep the work dir (tree, data dir, restic repo, logs)
# Installs restic and GNU time with apt-get when missing and running as root.
set -euo pipefail

PROG=bench-store.sh
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
ensure_cmd restic restic
ensure_gnu_time
find_bbsync
make_workdir bbsync-bench "${WORK:-}"

TREE="$WORKDIR/tree"
DATA="$WORKDIR/data"
REPO="$WORKDIR/restic"
EXPORT="$WORKDIR/export"
LOGS="$WORKDIR/logs"
mkdir -- "$LOGS"

# restic: fixed test password, fresh repo and cache inside the work dir,
# and none of the caller's restic settings.
unset RESTIC_PASSWORD_FILE RESTIC_PASSWORD_COMMAND RESTIC_REPOSITORY_FILE \
  RESTIC_COMPRESSION RESTIC_PACK_SIZE RESTIC_READ_CONCURRENCY RESTIC_KEY_HINT
export RESTIC_PASSWORD="bbsync-bench-test-password"
export RESTIC_REPOSITORY="$REPO"
export RESTIC_CACHE_DIR="$WORKDIR/restic-cache"

log "== bbsync store benchmark, profile $PROFILE"
log "machine: $(nproc) CPUs, $(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo 2>/dev/null || true)," \
  "$(awk '/^MemTotal/ { printf "%.1f GB RAM", $2 * 1024 / 1e9 }' /proc/meminfo 2>/dev/null || true)"
log "bbsync: $BBSYNC"
log "restic: $(restic version)"
log "work dir: $WORKDIR"

log ""
log "== generate the tree"
show_cmd python3 scripts/gen-bbs.py "${GEN_ARGS[@]}" "$TREE"
python3 "$BBSYNC_SCRIPTS_DIR/gen-bbs.py" "${GEN_ARGS[@]}" "$TREE" || die "gen-bbs.py failed"
PLAIN_BYTES="$(tree_bytes "$TREE")"
PLAIN_FILES="$(tree_files "$TREE")"
log "plaintext: $PLAIN_BYTES bytes in $PLAIN_FILES files"

# Room for the store, the restic repo and the export (each at most ~ the tree).
AVAIL_KB="$(df -Pk "$WORKDIR" | awk 'NR == 2 { print $4 }')"
NEED_KB="$((PLAIN_BYTES * 3 / 1024 + 102400))"
if [ "$AVAIL_KB" -lt "$NEED_KB" ]; then
  die "only $((AVAIL_KB / 1024)) MiB free under $WORKDIR, need about $((NEED_KB / 1024)) MiB (set WORK=DIR)"
fi

log "warming the page cache: one 'cat' of the whole tree to /dev/null; nothing is dropped"
log "from the cache, so every tool below starts with the tree in memory (warm-cache numbers)"
find "$TREE" -type f -print0 | xargs -0 cat >/dev/null

log ""
log "== bbsync init (not timed)"
show_cmd "$BBSYNC" --data-dir "$DATA" --no-progress init --name bench
"$BBSYNC" --data-dir "$DATA" --no-progress init --name bench >"$LOGS/init.out" 2>&1 || {
  tail -n 20 "$LOGS/init.out" >&2
  die "bbsync init failed"
}

log ""
log "== (a) import-bbs into the fresh data dir"
timed import1 "$BBSYNC" --data-dir "$DATA" --no-progress import-bbs "$TREE"
IMPORT1_SECS="$SECS" IMPORT1_RSS="$RSS_MB"

if [ -d "$DATA/packs" ]; then
  CHUNK_DIR="$DATA/packs"
elif [ -d "$DATA/chunks" ]; then
  CHUNK_DIR="$DATA/chunks"
else
  warn "neither $DATA/packs nor $DATA/chunks exists: using the whole data dir as the store's data bytes"
  CHUNK_DIR="$DATA"
fi
CHUNK_BYTES="$(tree_bytes "$CHUNK_DIR")"
STORE_BYTES="$(tree_bytes "$DATA")"
STORE_FILES="$(tree_files "$DATA")"

log ""
log "== (b) verify --read-data"
timed verify "$BBSYNC" --data-dir "$DATA" --no-progress verify --read-data
VERIFY_SECS="$SECS" VERIFY_RSS="$RSS_MB"

log ""
log "== (c) second import-bbs of the unchanged tree"
timed import2 "$BBSYNC" --data-dir "$DATA" --no-progress import-bbs "$TREE"
IMPORT2_SECS="$SECS" IMPORT2_RSS="$RSS_MB"

log ""
log "== (d) restic init (not timed) + restic backup into a fresh repo"
show_cmd restic -q init
restic -q init >"$LOGS/restic-init.out" 2>&1 || {
  tail -n 20 "$LOGS/restic-init.out" >&2
  die "restic init failed"
}
timed restic restic -q backup "$TREE"
RESTIC_SECS="$SECS" RESTIC_RSS="$RSS_MB"
RESTIC_BYTES="$(tree_bytes "$REPO")"

log ""
log "== (e) export-bbs into an empty dir, then diff -r against the tree"
mkdir -- "$EXPORT"
timed export "$BBSYNC" --data-dir "$DATA" --no-progress export-bbs "$EXPORT"
EXPORT_SECS="$SECS" EXPORT_RSS="$RSS_MB"
show_cmd diff -r "$TREE" "$EXPORT"
if ! diff -r "$TREE" "$EXPORT" >"$LOGS/diff.txt" 2>&1; then
  head -n 40 "$LOGS/diff.txt" >&2
  KEEP=1
  die "export-bbs output differs from the source tree (first differences above)"
fi
log "    export is identical to the tree"

# ---- report ---------------------------------------------------------------

IMPORT1_MBPS="$(mbps "$PLAIN_BYTES" "$IMPORT1_SECS")"
VERIFY_MBPS="$(mbps "$CHUNK_BYTES" "$VERIFY_SECS")"
VERIFY_PLAIN_MBPS="$(mbps "$PLAIN_BYTES" "$VERIFY_SECS")"
IMPORT2_MBPS="$(mbps "$PLAIN_BYTES" "$IMPORT2_SECS")"
RESTIC_MBPS="$(mbps "$PLAIN_BYTES" "$RESTIC_SECS")"
EXPORT_MBPS="$(mbps "$PLAIN_BYTES" "$EXPORT_SECS")"
IMPORT2_LIMIT="$(fcalc '%.2f' 's * 0.2' "s=$IMPORT1_SECS")"
IMPORT_RATIO="$(fcalc '%.2f' 'a / (b > 0.01 ? b : 0.01)' "a=$IMPORT1_SECS" "b=$RESTIC_SECS")"

yesno() { if [ "$(fcalc '%d' "$1" "${@:2}")" = 1 ]; then echo yes; else echo no; fi; }
MET_IMPORT_SPEED="$(yesno 'r <= 0.5' "r=$IMPORT_RATIO")"
MET_IMPORT_RSS="$(yesno 'v < 200' "v=$IMPORT1_RSS")"
MET_VERIFY="$(yesno 'v >= 1000' "v=$VERIFY_MBPS")"
MET_IMPORT2="$(yesno 'a < b' "a=$IMPORT2_SECS" "b=$IMPORT2_LIMIT")"
case "$MET_IMPORT_SPEED/$MET_IMPORT_RSS" in
  yes/yes) MET_IMPORT=yes ;;
  no/yes) MET_IMPORT="no (speed)" ;;
  yes/no) MET_IMPORT="no (RSS)" ;;
  *) MET_IMPORT="no (speed, RSS)" ;;
esac
GOALS_MET=0
for m in "$MET_IMPORT_SPEED" "$MET_IMPORT_RSS" "$MET_VERIFY" "$MET_IMPORT2"; do
  if [ "$m" = yes ]; then GOALS_MET=$((GOALS_MET + 1)); fi
done

row() { printf '%-20s %9s %9s %12s  %-32s %s\n' "$@"; }
log ""
log "== results: profile $PROFILE, $PLAIN_BYTES plaintext bytes in $PLAIN_FILES files (MB = 10^6 B, warm page cache)"
row "step" "seconds" "MB/s" "peak RSS MB" "goal" "met"
row "import-bbs (1st)" "$IMPORT1_SECS" "$IMPORT1_MBPS" "$IMPORT1_RSS" "<= 0.5x restic, RSS < 200 MB" "$MET_IMPORT"
row "verify --read-data" "$VERIFY_SECS" "$VERIFY_MBPS" "$VERIFY_RSS" ">= 1000 MB/s of store data" "$MET_VERIFY"
row "import-bbs (2nd)" "$IMPORT2_SECS" "$IMPORT2_MBPS" "$IMPORT2_RSS" "< 20% of 1st (< $IMPORT2_LIMIT s)" "$MET_IMPORT2"
row "restic backup" "$RESTIC_SECS" "$RESTIC_MBPS" "$RESTIC_RSS" "- (reference)" "-"
row "export-bbs" "$EXPORT_SECS" "$EXPORT_MBPS" "$EXPORT_RSS" "identical tree (diff -r)" "yes"
log ""
log "import-bbs (1st) / restic backup time ratio: $IMPORT_RATIO (goal <= 0.5; below 1: bbsync faster)"
log "load average before each step (1 min): $LOADS"
log "store: $STORE_FILES files in the data dir for $CHUNK_BYTES bytes of pack data (goal < 100 + bytes / 8 MiB = $(fcalc '%d' '100 + b / 8388608' "b=$CHUNK_BYTES"))"
log "verify MB/s counts store data ($CHUNK_BYTES bytes in ${CHUNK_DIR#"$WORKDIR"/}); on plaintext bytes it is $VERIFY_PLAIN_MBPS MB/s"
log "sizes: plaintext $PLAIN_BYTES B; store chunks $CHUNK_BYTES B ($(fcalc '%.1f' 'c * 100 / p' "c=$CHUNK_BYTES" "p=$PLAIN_BYTES")%)," \
  "whole data dir $STORE_BYTES B; restic repo $RESTIC_BYTES B ($(fcalc '%.1f' 'r * 100 / p' "r=$RESTIC_BYTES" "p=$PLAIN_BYTES")%)"
log "restic: $(restic version)"
log "goals met: $GOALS_MET of 4 (import time vs restic, import RSS, verify speed, second import)"
