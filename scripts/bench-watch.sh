#!/usr/bin/env bash
# Cost of one watch batch on a large BBS: what the primary's watcher
# (`serve --watch`) spends on a batch of one new post in a tree of 200,000
# posts, side by side in one run with what a batch cost before it looked
# only at the paths its events name, and the CPU of the idle watching node.
#
#   scripts/bench-watch.sh            (run from anywhere inside the checkout)
#
# Generates the tree (gen-bbs.py --profile scale, MESSAGES posts, default
# 200,000), starts `serve --watch` on it once (the first import), stops it
# and starts it again: the start-up batch then scans the whole unchanged
# tree and reads every `lt/` record, which is exactly what every batch did
# before (the "whole tree" figure). Then writes POSTS new posts (default
# 20), one at a time, each waiting for its batch ("focused" figures, from
# the watcher's debug line `watch: batch ... elapsed_us=N`, which times the
# import of the batch: scan, read, seal, commit), and checks that each one
# was imported. Last, the CPU the idle watching node uses over IDLE seconds
# (default 20; goal < 1% of a core). Prints both batch figures and their
# ratio.
#
# Environment: BBSYNC_BIN=PATH (default: cargo build --release), MESSAGES=N,
# POSTS=N, IDLE=SECONDS, WORK=DIR, KEEP=1, TREE=DIR (an existing tree of
# that profile, reused and not modified but for the posts written).
set -euo pipefail

PROG=bench-watch.sh
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

MESSAGES="${MESSAGES:-200000}"
POSTS="${POSTS:-20}"
IDLE="${IDLE:-20}"
ensure_cmd python3 python3
find_bbsync
make_workdir bbsync-bench-watch "${WORK:-}"

TREE="${TREE:-$WORKDIR/tree}"
DATA="$WORKDIR/data"
LOG="$WORKDIR/serve.log"
PID=""
stop_serve() {
  if [ -n "$PID" ]; then
    kill "$PID" 2>/dev/null || true
    wait "$PID" 2>/dev/null || true
    PID=""
  fi
}
trap 'stop_serve; cleanup_workdir' EXIT

if [ ! -d "$TREE" ]; then
  show_cmd python3 scripts/gen-bbs.py --profile scale --messages "$MESSAGES" --seed 1 "$TREE"
  python3 "$BBSYNC_SCRIPTS_DIR/gen-bbs.py" --profile scale --messages "$MESSAGES" --seed 1 "$TREE" >/dev/null ||
    die "gen-bbs.py failed"
fi
files="$(tree_files "$TREE")"
"$BBSYNC" --data-dir "$DATA" --no-progress init --name bench >/dev/null

# start_watch: serve --watch the tree; returns once the start-up batch is
# done (the watcher says "watching the BBS tree").
start_watch() {
  : >"$LOG"
  BBSYNC_LOG="info,bbsync=debug" "$BBSYNC" --data-dir "$DATA" --no-progress serve \
    --listen /ip4/127.0.0.1/tcp/0 --watch "$TREE" >/dev/null 2>>"$LOG" &
  PID=$!
  local deadline=$((SECONDS + 3600))
  until grep -q "watching the BBS tree" "$LOG"; do
    kill -0 "$PID" 2>/dev/null || die "serve --watch exited (log: $LOG)"
    [ "$SECONDS" -lt "$deadline" ] || die "no start-up after an hour (log: $LOG)"
    sleep 0.2
  done
}

# batches WHOLE [WRITTEN]: the elapsed_us of the batch lines so far, of the
# whole tree (true) or focused (false), that wrote WRITTEN objects (any).
batches() {
  grep "watch: batch" "$LOG" | grep "whole_tree=$1" | grep "written=${2:-[0-9]*} " |
    sed 's/.*elapsed_us=\([0-9]*\).*/\1/'
}

log "== tree: $files files ($MESSAGES posts); bbsync: $BBSYNC"
t0=$SECONDS
start_watch
log "first start (imports the tree): $((SECONDS - t0)) s"
stop_serve
start_watch
whole_us="$(batches true | tail -n 1)"
[ -n "$whole_us" ] || die "no start-up batch line (log: $LOG)"

board="$(find "$TREE/boards" -mindepth 1 -maxdepth 1 -type d | sort | head -n 1)"
# Each post written in place (open, write, close), as a BBS writes one.
for i in $(seq 1 "$POSTS"); do
  f="$board/$((900000000 + i)).json"
  printf '{"id":%d,"from":"bench","subject":"post %d","body":"one new post"}\n' "$i" "$i" >"$f"
  deadline=$((SECONDS + 60))
  until [ "$(batches false 1 | wc -l)" -ge "$i" ]; do
    [ "$SECONDS" -lt "$deadline" ] || die "post $i not imported within 60 s (log: $LOG)"
    sleep 0.02
  done
done
mapfile -t focused < <(batches false 1)
[ "${#focused[@]}" -ge "$POSTS" ] || die "fewer batch lines than posts (log: $LOG)"
stats="$(printf '%s\n' "${focused[@]}" | sort -n | awk '
  { v[NR] = $1 }
  END { printf "%.1f %.1f %.1f", v[int((NR + 1) / 2)] / 1000, v[int(NR * 0.9 + 0.5)] / 1000, v[NR] / 1000 }')"
read -r p50 p90 max <<<"$stats"

# Idle CPU: utime + stime of the serving process over IDLE seconds.
ticks() { awk '{ print $14 + $15 }' "/proc/$PID/stat"; }
hz="$(getconf CLK_TCK)"
a="$(ticks)"
sleep "$IDLE"
b="$(ticks)"
idle_pct="$(fcalc '%.2f' '100 * (b - a) / hz / s' "a=$a" "b=$b" "hz=$hz" "s=$IDLE")"
stop_serve

whole_ms="$(fcalc '%.1f' 'u / 1000' "u=$whole_us")"
ratio="$(fcalc '%.0f' 'w / (f > 0.001 ? f : 0.001)' "w=$whole_ms" "f=$p50")"
log ""
log "== one watch batch, $MESSAGES posts ($files files)"
printf '%-44s %10s\n' "batch" "ms"
printf '%-44s %10s\n' "whole tree (every batch before; start-up now)" "$whole_ms"
printf '%-44s %10s\n' "one new post, focused: p50" "$p50"
printf '%-44s %10s\n' "one new post, focused: p90" "$p90"
printf '%-44s %10s\n' "one new post, focused: max" "$max"
log "focused batch: ${ratio}x cheaper than a whole-tree batch"
log "idle watching node: ${idle_pct}% of a core over ${IDLE} s (goal < 1%)"
