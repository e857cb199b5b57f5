#!/usr/bin/env bash
# Tor benchmark on a private Tor network (scripts/tor-testnet.py), one run.
#
#   scripts/bench-tor.sh            (run from anywhere inside the checkout)
#
# Brings up a private Tor network on 127.0.0.1 (3 authorities, 4 relays),
# generates the sample BBS (seed 1, profile small by default), imports it
# into a source node (not timed) and measures:
#   (a) `serve --onion` start -> onion address printed (service published),
#       cold (fresh arti state: new keys) and warm (restart, same address);
#   (b) `bbsync clone` of the whole BBS over the onion address, into a fresh
#       node;
#   (c) the same clone over loopback TCP, for comparison.
# Each clone is verified (verify --read-data, export-bbs, diff -r against
# the tree). Prints seconds, MB/s (stored bytes transferred / wall time)
# and the Tor/TCP ratio.
#
# Environment:
#   BBSYNC_BIN=PATH   use this binary, do not build (else a release build)
#   PROFILE=NAME      gen-bbs.py profile: small (default) or large
#   WORK=DIR          put the work dir under DIR
#   KEEP=1            keep the work dir
set -euo pipefail

PROG=bench-tor.sh
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

PROFILE="${PROFILE:-small}"
case "$PROFILE" in
  small | large) ;;
  *) die "PROFILE must be small or large, not '$PROFILE'" ;;
esac

ensure_cmd python3 python3
ensure_cmd diff diffutils
ensure_cmd tor tor
ensure_cmd tor-gencert tor
ensure_gnu_time
find_bbsync
make_workdir bbsync-bench-tor "${WORK:-}"

TREE="$WORKDIR/tree"
SRC="$WORKDIR/source"
NET="$WORKDIR/tornet"
LOGS="$WORKDIR/logs"
mkdir -- "$LOGS"
SERVER_PID=""

stop_server() {
  if [ -n "$SERVER_PID" ]; then
    kill "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
  fi
  SERVER_PID=""
}
stop_all() {
  stop_server
  python3 "$BBSYNC_SCRIPTS_DIR/tor-testnet.py" down "$NET" 2>/dev/null || true
}
trap 'stop_all; cleanup_workdir' EXIT

now() { date +%s.%N; }

# serve_onion NAME: starts `serve --onion` on the source, waits for the
# address; sets SERVE_ADDR and ONION_SECS (start -> address printed).
serve_onion() {
  local name="$1" t0 t1
  t0="$(now)"
  "$BBSYNC" --data-dir "$SRC" --no-progress --tor-config "$ARTI" -v serve --onion \
    >"$LOGS/$name.out" 2>"$LOGS/$name.log" &
  SERVER_PID=$!
  SERVE_ADDR=""
  for _ in $(seq 1 1800); do
    SERVE_ADDR="$(head -n 1 "$LOGS/$name.out" 2>/dev/null || true)"
    [ -n "$SERVE_ADDR" ] && break
    kill -0 "$SERVER_PID" 2>/dev/null || die "serve --onion exited (log: $LOGS/$name.log)"
    sleep 0.05
  done
  t1="$(now)"
  [ -n "$SERVE_ADDR" ] || die "serve --onion printed no address in 90 s (log: $LOGS/$name.log)"
  ONION_SECS="$(fcalc '%.2f' 'b - a' "a=$t0" "b=$t1")"
  log "    $SERVE_ADDR"
  log "    -> address printed after ${ONION_SECS} s"
}

# check_clone DATA NAME: verify --read-data and compare the exported tree.
check_clone() {
  local data="$1" name="$2"
  "$BBSYNC" --data-dir "$data" --no-progress verify --read-data >"$LOGS/$name-verify.out" 2>&1 ||
    die "verify of the $name clone failed (see $LOGS/$name-verify.out)"
  "$BBSYNC" --data-dir "$data" --no-progress export-bbs "$WORKDIR/export-$name" >/dev/null
  diff -r "$TREE" "$WORKDIR/export-$name" >/dev/null || die "the $name clone differs from the tree"
  log "    verified: verify --read-data clean, export-bbs identical to the tree"
}

# bytes_of NAME: the bytes a clone transferred (from its --json summary).
bytes_of() {
  python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["bytes"])' "$LOGS/$1.out"
}

log "== bbsync over Tor benchmark, profile $PROFILE"
log "machine: $(nproc) CPUs; $(tor --version | head -n 1)"
log "bbsync: $BBSYNC"
log "work dir: $WORKDIR"

log ""
log "== private Tor network"
t0="$(now)"
show_cmd python3 scripts/tor-testnet.py up "$NET" --owner $$
ARTI="$(python3 "$BBSYNC_SCRIPTS_DIR/tor-testnet.py" up "$NET" --owner $$)" || die "tor-testnet.py up failed"
log "    -> up in $(fcalc '%.1f' 'b - a' "a=$t0" "b=$(now)") s; arti config $ARTI"

log ""
log "== generate the tree and the source node (not timed)"
python3 "$BBSYNC_SCRIPTS_DIR/gen-bbs.py" --profile "$PROFILE" --seed 1 "$TREE" >/dev/null || die "gen-bbs.py failed"
"$BBSYNC" --data-dir "$SRC" --no-progress init --name source >/dev/null
"$BBSYNC" --data-dir "$SRC" --no-progress import-bbs "$TREE" >/dev/null
for who in tor tcp; do
  "$BBSYNC" --data-dir "$WORKDIR/clone-$who" --no-progress init --name "clone-$who" >/dev/null
  "$BBSYNC" --data-dir "$SRC" --no-progress trust add \
    "$("$BBSYNC" --data-dir "$WORKDIR/clone-$who" id)" --role full >/dev/null
done
log "    $(tree_files "$TREE") files, $(tree_bytes "$TREE") bytes"

log ""
log "== (a) serve --onion: start -> address printed"
log "  cold (fresh keys, first publication):"
serve_onion onion-cold
COLD="$ONION_SECS"
FIRST_ADDR="$SERVE_ADDR"
stop_server
log "  warm (restart: same keys, same address):"
serve_onion onion-warm
WARM="$ONION_SECS"
[ "$SERVE_ADDR" = "$FIRST_ADDR" ] || die "the onion address changed across a restart"

log ""
log "== (b) clone over Tor"
timed clone-tor "$BBSYNC" --data-dir "$WORKDIR/clone-tor" --no-progress --json \
  --tor-config "$ARTI" clone "$SERVE_ADDR"
TOR_SECS="$SECS"
TOR_RSS="$RSS_MB"
TOR_BYTES="$(bytes_of clone-tor)"
check_clone "$WORKDIR/clone-tor" tor
stop_server

log ""
log "== (c) the same clone over loopback TCP"
start_serve "$SRC" "$LOGS"
timed clone-tcp "$BBSYNC" --data-dir "$WORKDIR/clone-tcp" --no-progress --json clone "$SERVE_ADDR"
TCP_SECS="$SECS"
TCP_BYTES="$(bytes_of clone-tcp)"
check_clone "$WORKDIR/clone-tcp" tcp
stop_server

log ""
log "== results (profile $PROFILE, $(nproc) CPUs, private Tor network on 127.0.0.1)"
printf '%-44s %10s\n' "serve --onion -> address, cold" "${COLD} s"
printf '%-44s %10s\n' "serve --onion -> address, warm (restart)" "${WARM} s"
printf '%-44s %10s %9s MB/s  (%s bytes, peak RSS %s MB)\n' "clone over Tor" "${TOR_SECS} s" \
  "$(fcalc '%.1f' 'b / 1e6 / s' "b=$TOR_BYTES" "s=$TOR_SECS")" "$TOR_BYTES" "$TOR_RSS"
printf '%-44s %10s %9s MB/s  (%s bytes)\n' "clone over loopback TCP" "${TCP_SECS} s" \
  "$(fcalc '%.1f' 'b / 1e6 / s' "b=$TCP_BYTES" "s=$TCP_SECS")" "$TCP_BYTES"
printf '%-44s %10s\n' "ratio Tor/TCP (wall time)" "$(fcalc '%.1f' 'a / b' "a=$TOR_SECS" "b=$TCP_SECS")x"
