#!/usr/bin/env bash
# Local bbsync demo (the README's main job until the network clone demo).
#
#   scripts/demo.sh
#
# On a fresh machine with Rust and Python 3: builds bbsync, generates the
# small sample BBS (scripts/gen-bbs.py, ~20 MB), imports it into a new node
# data dir, verifies every chunk, lists and shows status, exports the tree
# again and checks with `diff -r` that the export is identical to the source.
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
DATA="$WORKDIR/node"
EXPORT="$WORKDIR/export"

# bb SUBCOMMAND ARGS...: show and run one bbsync command on the demo node.
bb() {
  show_cmd bbsync --data-dir "$DATA" --no-progress "$@"
  "$BBSYNC" --data-dir "$DATA" --no-progress "$@" || die "bbsync $1 failed (exit $?)"
}

log ""
log "== generate the small sample BBS"
show_cmd python3 scripts/gen-bbs.py --profile small --seed "$SEED" "$TREE"
python3 "$BBSYNC_SCRIPTS_DIR/gen-bbs.py" --profile small --seed "$SEED" "$TREE" ||
  die "gen-bbs.py failed"
FILES="$(tree_files "$TREE")"
BYTES="$(tree_bytes "$TREE")"

log ""
log "== create a node and import the BBS"
bb init --name demo
bb import-bbs "$TREE"

log ""
log "== verify every chunk"
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
log "== export and compare"
mkdir -- "$EXPORT"
bb export-bbs "$EXPORT"
show_cmd diff -r "$TREE" "$EXPORT"
if ! diff -r "$TREE" "$EXPORT" >"$WORKDIR/diff.txt" 2>&1; then
  head -n 40 "$WORKDIR/diff.txt" >&2
  KEEP=1
  die "exported tree differs from the source (diff above; files kept in $WORKDIR)"
fi

log ""
log "demo OK: exported tree is identical to the source ($FILES files, $BYTES bytes)"
