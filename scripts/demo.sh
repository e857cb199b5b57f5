#!/usr/bin/env bash
# bbsync demo (the README's main job): build a sample BBS, serve it, clone it.
#
#   scripts/demo.sh
#
# On a fresh machine with Rust and Python 3: builds bbsync, generates the
# small sample BBS (scripts/gen-bbs.py, ~20 MB), imports it into a source
# node and verifies it, creates a second node, lets the source trust it,
# serves the source on 127.0.0.1 (libp2p over TCP), clones it into the
# second node (manifests re-keyed just in time for the clone, every chunk
# checked against its id, the root compared with the source's signed
# checkpoint), verifies the clone and checks with `diff -r` that the clone's
# export is identical to the generated tree.
#
# Environment:
#   BBSYNC_BIN=PATH   use this binary instead of `cargo build --release`
#   KEEP=1            keep the temp dirs (their location is printed)
#   SEED=N            gen-bbs.py seed (default 1)
set -euo pipefail

PROG=demo.sh
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

SEED="${SEED:-1}"

ensure_cmd python3 python3
ensure_cmd diff diffutils
find_bbsync
make_workdir bbsync-demo

TREE="$WORKDIR/bbs"
DATA="$WORKDIR/source"
CLONE="$WORKDIR/clone"
EXPORT="$WORKDIR/export"
SERVER_PID=""

stop_server() {
  if [ -n "$SERVER_PID" ]; then
    kill "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
    SERVER_PID=""
  fi
}
trap 'stop_server; cleanup_workdir' EXIT

# bb SUBCOMMAND ARGS...: show and run one bbsync command on the source node.
bb() {
  show_cmd bbsync --data-dir "$DATA" --no-progress "$@"
  "$BBSYNC" --data-dir "$DATA" --no-progress "$@" || die "bbsync $1 failed (exit $?)"
}

# bc SUBCOMMAND ARGS...: the same on the clone node.
bc() {
  show_cmd bbsync --data-dir "$CLONE" --no-progress "$@"
  "$BBSYNC" --data-dir "$CLONE" --no-progress "$@" || die "bbsync $1 failed (exit $?)"
}

log ""
log "== generate the small sample BBS"
show_cmd python3 scripts/gen-bbs.py --profile small --seed "$SEED" "$TREE"
python3 "$BBSYNC_SCRIPTS_DIR/gen-bbs.py" --profile small --seed "$SEED" "$TREE" ||
  die "gen-bbs.py failed"
FILES="$(tree_files "$TREE")"
BYTES="$(tree_bytes "$TREE")"

log ""
log "== create the source node and import the BBS"
bb init --name source
bb import-bbs "$TREE"
bb verify --read-data

log ""
log "== browse"
# ls goes to a file first: piping into head could kill bbsync with SIGPIPE.
printf '%s | head -n 20\n' "$(show_cmd bbsync --data-dir "$DATA" --no-progress ls)"
"$BBSYNC" --data-dir "$DATA" --no-progress ls >"$WORKDIR/ls.txt" || die "bbsync ls failed (exit $?)"
head -n 20 "$WORKDIR/ls.txt"
LINES="$(wc -l <"$WORKDIR/ls.txt" | tr -d ' ')"
if [ "$LINES" -gt 20 ]; then
  log "... ($((LINES - 20)) more lines)"
fi
bb status

log ""
log "== create the clone node; the source trusts it"
bc init --name clone
CARD="$("$BBSYNC" --data-dir "$CLONE" id)" || die "bbsync id failed"
bb trust add "$CARD"

log ""
log "== serve the source on 127.0.0.1 and clone it"
show_cmd bbsync --data-dir "$DATA" serve --listen /ip4/127.0.0.1/tcp/0 "&"
start_serve "$DATA" "$WORKDIR"
ADDR="$SERVE_ADDR"
log "source listening at $ADDR"
bc clone "$ADDR"
stop_server
bc verify --read-data

log ""
log "== export the clone and compare with the generated BBS"
mkdir -- "$EXPORT"
bc export-bbs "$EXPORT"
show_cmd diff -r "$TREE" "$EXPORT"
if ! diff -r "$TREE" "$EXPORT" >"$WORKDIR/diff.txt" 2>&1; then
  head -n 40 "$WORKDIR/diff.txt" >&2
  KEEP=1
  die "exported tree differs from the source (diff above; files kept in $WORKDIR)"
fi

log ""
log "demo OK: the clone's export is identical to the source BBS ($FILES files, $BYTES bytes)"
