#!/usr/bin/env bash
# Backup benchmark: bbsync backup / restore / backups verify on a generated
# BBS, against Debian's restic on the same plaintext tree, in one run.
#
#   scripts/bench-backup.sh            (run from anywhere inside the checkout)
#
# Generates the sample BBS (gen-bbs.py, seed 1), imports it into a fresh
# node (not timed), reads the tree once so every tool starts with a warm
# page cache, then times each step with /usr/bin/time -v after a `sync`:
#   (a) bbsync backup into a fresh repository (default: hard links when on
#       the same file system), and bbsync backup --copy into another one;
#       restic backup of the tree into a fresh restic repository;
#   (b) one new message imported, then an incremental bbsync backup;
#   (c) bbsync restore into a fresh data dir of the same identity, and
#       bbsync restore --to-tree (plaintext, like restic); restic restore;
#   (d) bbsync backups verify --read-data.
# Checks that the restored node exports a tree identical to the source and
# that --to-tree wrote the same tree. Prints the figures against the goals;
# exits 0 when goals are missed (it only reports), non-zero on failure.
#
# Environment: BBSYNC_BIN=PATH (no build), PROFILE=large|small (default
# large), WORK=DIR (parent of the work dir), KEEP=1 (keep the work dir).
set -euo pipefail

PROG=bench-backup.sh
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

PROFILE="${PROFILE:-large}"
case "$PROFILE" in
  small | large) ;;
  *) die "PROFILE must be small or large, not '$PROFILE'" ;;
esac

ensure_cmd python3 python3
ensure_cmd diff diffutils
ensure_cmd restic restic
ensure_gnu_time
find_bbsync
make_workdir bbsync-bench-backup "${WORK:-}"

TREE="$WORKDIR/tree"
DATA="$WORKDIR/data"
DATA2="$WORKDIR/data2"
REPO="$WORKDIR/repo"
REPO_COPY="$WORKDIR/repo-copy"
RREPO="$WORKDIR/restic"
LOGS="$WORKDIR/logs"
mkdir -- "$LOGS"

unset RESTIC_PASSWORD_FILE RESTIC_PASSWORD_COMMAND RESTIC_REPOSITORY_FILE \
  RESTIC_COMPRESSION RESTIC_PACK_SIZE RESTIC_READ_CONCURRENCY RESTIC_KEY_HINT
export RESTIC_PASSWORD="bbsync-bench-test-password"
export RESTIC_REPOSITORY="$RREPO"
export RESTIC_CACHE_DIR="$WORKDIR/restic-cache"

b() { "$BBSYNC" --no-progress "$@"; }

log "== bbsync backup benchmark, profile $PROFILE"
log "machine: $(nproc) CPUs; bbsync: $BBSYNC; restic: $(restic version)"
log "work dir: $WORKDIR"

log ""
log "== generate the tree, import it (not timed)"
python3 "$BBSYNC_SCRIPTS_DIR/gen-bbs.py" --profile "$PROFILE" --seed 1 "$TREE" >/dev/null || die "gen-bbs.py failed"
PLAIN_BYTES="$(tree_bytes "$TREE")"
log "plaintext: $PLAIN_BYTES bytes in $(tree_files "$TREE") files"
b --data-dir "$DATA" init --name bench >"$LOGS/init.out" 2>&1 || die "init failed"
b --data-dir "$DATA" import-bbs "$TREE" >"$LOGS/import.out" 2>&1 || die "import-bbs failed"
find "$TREE" -type f -print0 | xargs -0 cat >/dev/null

log ""
log "== (a) full backups"
timed full "$BBSYNC" --no-progress --data-dir "$DATA" backup --repo "$REPO"
FULL_SECS="$SECS"
timed fullcopy "$BBSYNC" --no-progress --data-dir "$DATA" backup --repo "$REPO_COPY" --copy
COPY_SECS="$SECS"
restic -q init >"$LOGS/restic-init.out" 2>&1 || die "restic init failed"
timed restic_backup restic -q backup "$TREE"
RESTIC_BACKUP_SECS="$SECS"
REPO_CHUNK_BYTES="$(tree_bytes "$REPO/chunks")"

log ""
log "== (b) one new message, then an incremental backup"
BOARD="$(find "$TREE/boards" -mindepth 1 -maxdepth 1 -type d | sort | head -n 1)"
printf '{"id":"bench-new","from":"bench","subject":"new","body":"one new message"}\n' >"$BOARD/bench-new.json"
b --data-dir "$DATA" import-bbs "$TREE" >"$LOGS/import2.out" 2>&1 || die "second import failed"
timed incremental "$BBSYNC" --no-progress --data-dir "$DATA" backup --repo "$REPO"
INC_SECS="$SECS"

log ""
log "== (c) restores"
b --data-dir "$DATA2" init --name bench >"$LOGS/init2.out" 2>&1 || die "init failed"
cp -- "$DATA/identity.key" "$DATA2/identity.key"
timed restore "$BBSYNC" --no-progress --data-dir "$DATA2" restore --repo "$REPO"
RESTORE_SECS="$SECS"
timed totree "$BBSYNC" --no-progress --data-dir "$DATA" restore --repo "$REPO" --to-tree "$WORKDIR/to-tree"
TOTREE_SECS="$SECS"
timed restic_restore restic -q restore latest --target "$WORKDIR/restic-out"
RESTIC_RESTORE_SECS="$SECS"
b --data-dir "$DATA2" export-bbs "$WORKDIR/export" >"$LOGS/export.out" 2>&1 || die "export-bbs failed"
diff -r "$TREE" "$WORKDIR/export" >"$LOGS/diff.txt" 2>&1 || die "the restored node's export differs from the tree (see $LOGS/diff.txt, KEEP=1)"
diff -r "$TREE" "$WORKDIR/to-tree" >"$LOGS/diff2.txt" 2>&1 || die "restore --to-tree differs from the tree (see $LOGS/diff2.txt, KEEP=1)"
log "    the restored node's export and the --to-tree output are identical to the tree"

log ""
log "== (d) backups verify --read-data"
timed verify "$BBSYNC" --no-progress --data-dir "$DATA" backups verify --repo "$REPO" --read-data
VERIFY_SECS="$SECS"

ratio() { fcalc '%.2f' 'a / (b > 0.01 ? b : 0.01)' "a=$1" "b=$2"; }
yesno() { if [ "$(fcalc '%d' "$1" "${@:2}")" = 1 ]; then echo yes; else echo no; fi; }
R_FULL="$(ratio "$FULL_SECS" "$RESTIC_BACKUP_SECS")"
R_COPY="$(ratio "$COPY_SECS" "$RESTIC_BACKUP_SECS")"
R_INC="$(fcalc '%.1f' 'a * 100 / (b > 0.01 ? b : 0.01)' "a=$INC_SECS" "b=$FULL_SECS")"
R_REST="$(ratio "$RESTORE_SECS" "$RESTIC_RESTORE_SECS")"
R_TREE="$(ratio "$TOTREE_SECS" "$RESTIC_RESTORE_SECS")"
V_MBPS="$(mbps "$REPO_CHUNK_BYTES" "$VERIFY_SECS")"

row() { printf '%-34s %9s %14s  %-22s %s\n' "$@"; }
log ""
log "== results: profile $PROFILE, $PLAIN_BYTES plaintext bytes, repository chunks $REPO_CHUNK_BYTES bytes (MB = 10^6 B, warm page cache)"
row "step" "seconds" "ratio" "goal" "met"
row "bbsync backup (full, hard links)" "$FULL_SECS" "$R_FULL x restic" "<= 0.5x restic" "$(yesno 'a <= 0.5' "a=$R_FULL")"
row "bbsync backup --copy (full)" "$COPY_SECS" "$R_COPY x restic" "(for reference)" "-"
row "restic backup" "$RESTIC_BACKUP_SECS" "-" "reference" "-"
row "bbsync backup (1 new message)" "$INC_SECS" "$R_INC% of full" "<= 5% of full" "$(yesno 'a <= 5' "a=$R_INC")"
row "bbsync restore (into a node)" "$RESTORE_SECS" "$R_REST x restic" "<= 1.0x restic" "$(yesno 'a <= 1.0' "a=$R_REST")"
row "bbsync restore --to-tree" "$TOTREE_SECS" "$R_TREE x restic" "(plaintext, reference)" "-"
row "restic restore" "$RESTIC_RESTORE_SECS" "-" "reference" "-"
row "bbsync backups verify --read-data" "$VERIFY_SECS" "$V_MBPS MB/s" ">= 1000 MB/s" "$(yesno 'a >= 1000' "a=$V_MBPS")"
