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
#   (b) one new message imported, then an incremental bbsync backup, five
#       times (timed in microseconds; the median is the figure); then the
#       same while `bbsync serve` runs on the data dir (the commands go to
#       the serving node over its control socket);
#   (c) bbsync restore into a fresh data dir of the same identity, and
#       bbsync restore --to-tree (plaintext, like restic); restic restore;
#   (d) bbsync backups verify --read-data.
#   (e) on a real S3 server (moto_server on 127.0.0.1, when installed):
#       bbsync backup to s3://, restic backup to s3:, one more new message
#       and an incremental bbsync backup (its PUT requests counted in the
#       server's request log), bbsync restore and restic restore from S3,
#       bbsync backups verify --read-data on S3.
# Checks that the restored node exports a tree identical to the source and
# that --to-tree wrote the same tree. Prints the figures against the goals;
# exits 0 when goals are missed (it only reports), non-zero on failure.
#
# Environment: BBSYNC_BIN=PATH (no build), PROFILE=large|small|posts
# (default large), REPO_FORMAT=2|1 (the repository format, default 2),
# S3=0 (skip the S3 part), BBSYNC_MOTO_SERVER=PATH (moto_server; else
# PATH, /opt/moto/bin), WORK=DIR (parent of the work dir), KEEP=1 (keep
# the work dir).
set -euo pipefail

PROG=bench-backup.sh
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

PROFILE="${PROFILE:-large}"
case "$PROFILE" in
  small | large | posts) ;;
  *) die "PROFILE must be small, large or posts, not '$PROFILE'" ;;
esac
REPO_FORMAT="${REPO_FORMAT:-2}"
case "$REPO_FORMAT" in
  1 | 2) ;;
  *) die "REPO_FORMAT must be 1 or 2, not '$REPO_FORMAT'" ;;
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
timed full "$BBSYNC" --no-progress --data-dir "$DATA" backup --repo "$REPO" --repo-format "$REPO_FORMAT"
FULL_SECS="$SECS"
timed fullcopy "$BBSYNC" --no-progress --data-dir "$DATA" backup --repo "$REPO_COPY" --repo-format "$REPO_FORMAT" --copy
COPY_SECS="$SECS"
restic -q init >"$LOGS/restic-init.out" 2>&1 || die "restic init failed"
timed restic_backup restic -q backup "$TREE"
RESTIC_BACKUP_SECS="$SECS"

log ""
log "== (b) one new message, then an incremental backup; five times"
# Timed in microseconds around the command (an incremental takes tens of
# milliseconds: /usr/bin/time's 10 ms would be a quarter of it); the figure
# is the median of the five.
BOARD="$(find "$TREE/boards" -mindepth 1 -maxdepth 1 -type d | sort | head -n 1)"
INC_US=()
for n in 1 2 3 4 5; do
  printf '{"id":"bench-new-%s","from":"bench","subject":"new","body":"one new message"}\n' "$n" >"$BOARD/bench-new-$n.json"
  b --data-dir "$DATA" import-bbs "$TREE" >>"$LOGS/import2.out" 2>&1 || die "import of new message $n failed"
  sync
  show_cmd "$BBSYNC" --no-progress --data-dir "$DATA" backup --repo "$REPO"
  T0="$(date +%s%N)"
  "$BBSYNC" --no-progress --data-dir "$DATA" backup --repo "$REPO" >"$LOGS/incremental-$n.out" 2>&1 ||
    die "incremental backup $n failed (logs: $LOGS/incremental-$n.out; KEEP=1 keeps them)"
  T1="$(date +%s%N)"
  INC_US+=("$(((T1 - T0) / 1000))")
  sed 's/^/    | /' "$LOGS/incremental-$n.out"
done
INC_MEDIAN_US="$(printf '%s\n' "${INC_US[@]}" | sort -n | sed -n 3p)"
INC_SECS="$(fcalc '%.3f' 'u / 1e6' "u=$INC_MEDIAN_US")"
log "    -> $(printf '%s\n' "${INC_US[@]}" | awk '{ printf "%s%.1f", (NR > 1 ? ", " : ""), $1 / 1000 }') ms; median $INC_SECS s"

log ""
log "== (b2) the same, five times, while a node serves the data dir"
# The commands go to the serving node over its control socket and run on
# its open store (what a scheduled backup in `serve` does too): no process
# start beyond the client's, no database open.
"$BBSYNC" --no-progress --data-dir "$DATA" serve --listen /ip4/127.0.0.1/tcp/0 \
  >"$LOGS/serve.out" 2>"$LOGS/serve.log" &
SERVE_PID=$!
stop_serve() { kill "$SERVE_PID" 2>/dev/null || true; wait "$SERVE_PID" 2>/dev/null || true; }
for _ in $(seq 1 100); do
  [ -S "$DATA/control.sock" ] && [ -s "$LOGS/serve.out" ] && break
  kill -0 "$SERVE_PID" 2>/dev/null || die "serve exited: $(tail -n 5 "$LOGS/serve.log")"
  sleep 0.1
done
[ -S "$DATA/control.sock" ] || { stop_serve; die "serve made no control socket (log: $LOGS/serve.log)"; }
NODE_US=()
for n in 1 2 3 4 5; do
  printf '{"id":"bench-node-%s","from":"bench","subject":"new","body":"one new message"}\n' "$n" >"$BOARD/bench-node-$n.json"
  b --data-dir "$DATA" import-bbs "$TREE" >>"$LOGS/import2.out" 2>&1 || { stop_serve; die "import of new message $n through the node failed"; }
  sync
  T0="$(date +%s%N)"
  "$BBSYNC" --no-progress --data-dir "$DATA" backup --repo "$REPO" >"$LOGS/node-incremental-$n.out" 2>&1 ||
    { stop_serve; die "incremental backup $n through the node failed (logs: $LOGS/node-incremental-$n.out)"; }
  T1="$(date +%s%N)"
  NODE_US+=("$(((T1 - T0) / 1000))")
  sed 's/^/    | /' "$LOGS/node-incremental-$n.out"
done
stop_serve
# Back to the two snapshots the later steps were measured with (the full
# one and the latest): `backups verify` checks every snapshot's object
# list, so eight more 1.25 MB lists would be measured as well.
KEEP_IDS="$(b --json --data-dir "$DATA" backups list --repo "$REPO" |
  python3 -c 'import json, sys; s = json.load(sys.stdin); print(s[0]["id"], s[-1]["id"])')"
for id in $(b --json --data-dir "$DATA" backups list --repo "$REPO" |
  python3 -c 'import json, sys; print("\n".join(x["id"] for x in json.load(sys.stdin)[1:-1]))'); do
  b --data-dir "$DATA" backups delete --repo "$REPO" "$id" >>"$LOGS/delete.out" 2>&1 || die "backups delete $id failed (see $LOGS/delete.out)"
done
log "    kept snapshots $KEEP_IDS (the other incrementals deleted)"
NODE_INC_SECS="$(fcalc '%.3f' 'u / 1e6' "u=$(printf '%s\n' "${NODE_US[@]}" | sort -n | sed -n 3p)")"
log "    -> $(printf '%s\n' "${NODE_US[@]}" | awk '{ printf "%s%.1f", (NR > 1 ? ", " : ""), $1 / 1000 }') ms; median $NODE_INC_SECS s"

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
REPO_BYTES="$(tree_bytes "$REPO")"
timed verify "$BBSYNC" --no-progress --data-dir "$DATA" backups verify --repo "$REPO" --read-data
VERIFY_SECS="$SECS"

# ---------------------------------------------------------------- (e) S3
# moto_server: $BBSYNC_MOTO_SERVER, else PATH, else /opt/moto/bin (.ci/run).
find_moto() {
  if [ -n "${BBSYNC_MOTO_SERVER:-}" ]; then
    MOTO="$BBSYNC_MOTO_SERVER"
  elif command -v moto_server >/dev/null 2>&1; then
    MOTO="$(command -v moto_server)"
  elif [ -x /opt/moto/bin/moto_server ]; then
    MOTO=/opt/moto/bin/moto_server
  else
    MOTO=""
  fi
}
S3_DONE=0
find_moto
if [ "${S3:-1}" = 0 ]; then
  log ""
  log "== (e) S3: skipped (S3=0)"
elif [ -z "$MOTO" ]; then
  log ""
  log "== (e) S3: skipped (moto_server not found: pip install 'moto[server]', or set BBSYNC_MOTO_SERVER)"
else
  ensure_cmd curl curl
  MOTO_PORT="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
  MOTO_LOG="$LOGS/moto.log"
  "$MOTO" -H 127.0.0.1 -p "$MOTO_PORT" >"$MOTO_LOG" 2>&1 &
  MOTO_PID=$!
  stop_moto() { kill "$MOTO_PID" 2>/dev/null || true; wait "$MOTO_PID" 2>/dev/null || true; cleanup_workdir; }
  trap stop_moto EXIT
  for _ in $(seq 1 300); do
    curl -fsS -o /dev/null "http://127.0.0.1:$MOTO_PORT/" 2>/dev/null && break
    kill -0 "$MOTO_PID" 2>/dev/null || die "moto_server exited: $(tail -n 5 "$MOTO_LOG")"
    sleep 0.2
  done
  curl -fsS -o /dev/null "http://127.0.0.1:$MOTO_PORT/" || die "moto_server did not answer on port $MOTO_PORT"
  # Its version, from the Python it runs on (a venv's shebang, else python3).
  MOTO_PY="$(head -n 1 "$MOTO" | sed -n 's/^#! *\([^ ]*python[0-9.]*\).*/\1/p')"
  MOTO_VERSION="$("${MOTO_PY:-python3}" -c 'import moto; print(moto.__version__)' 2>/dev/null || true)"
  log ""
  log "== (e) S3: moto_server ${MOTO_VERSION:-?} on 127.0.0.1:$MOTO_PORT ($MOTO)"
  # moto checks no signature: the buckets are made with plain requests.
  curl -fsS -o /dev/null -X PUT -H 'Content-Length: 0' "http://127.0.0.1:$MOTO_PORT/bbsync-bench" || die "cannot create the bucket"
  export AWS_ENDPOINT_URL="http://127.0.0.1:$MOTO_PORT" AWS_REGION=us-east-1 \
    AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench-secret-key
  S3_REPO="s3://bbsync-bench/repo"
  RS3="s3:http://127.0.0.1:$MOTO_PORT/restic-bench"
  # Requests of one method on one bucket in the server's request log.
  s3_requests() { grep -c "\"$1 /$2[/? ]" "$MOTO_LOG" || true; }

  timed s3_full "$BBSYNC" --no-progress --data-dir "$DATA" backup --repo "$S3_REPO"
  S3_FULL_SECS="$SECS"
  S3_FULL_PUTS="$(s3_requests PUT bbsync-bench)"
  restic -r "$RS3" -q init >"$LOGS/restic-s3-init.out" 2>&1 || die "restic init on S3 failed (see $LOGS/restic-s3-init.out)"
  timed s3_restic_backup restic -r "$RS3" -q backup "$TREE"
  S3_RESTIC_BACKUP_SECS="$SECS"

  printf '{"id":"bench-new2","from":"bench","subject":"new","body":"one more new message"}\n' >"$BOARD/bench-new2.json"
  b --data-dir "$DATA" import-bbs "$TREE" >"$LOGS/import3.out" 2>&1 || die "third import failed"
  PUTS_BEFORE="$(s3_requests PUT bbsync-bench)"
  REQS_BEFORE="$(grep -c '"[A-Z]* /bbsync-bench' "$MOTO_LOG" || true)"
  timed s3_incremental "$BBSYNC" --no-progress --data-dir "$DATA" backup --repo "$S3_REPO"
  S3_INC_SECS="$SECS"
  S3_INC_PUTS="$(($(s3_requests PUT bbsync-bench) - PUTS_BEFORE))"
  S3_INC_REQS="$(($(grep -c '"[A-Z]* /bbsync-bench' "$MOTO_LOG" || true) - REQS_BEFORE))"
  log "    the incremental backup made $S3_INC_PUTS PUT requests ($S3_INC_REQS requests in all; the full one: $S3_FULL_PUTS PUTs)"

  DATA3="$WORKDIR/data3"
  b --data-dir "$DATA3" init --name bench >"$LOGS/init3.out" 2>&1 || die "init failed"
  cp -- "$DATA/identity.key" "$DATA3/identity.key"
  timed s3_restore "$BBSYNC" --no-progress --data-dir "$DATA3" restore --repo "$S3_REPO"
  S3_RESTORE_SECS="$SECS"
  timed s3_restic_restore restic -r "$RS3" -q restore latest --target "$WORKDIR/restic-s3-out"
  S3_RESTIC_RESTORE_SECS="$SECS"
  b --data-dir "$DATA3" export-bbs "$WORKDIR/export3" >"$LOGS/export3.out" 2>&1 || die "export-bbs failed"
  diff -r "$TREE" "$WORKDIR/export3" >"$LOGS/diff3.txt" 2>&1 || die "the node restored from S3 exports a tree that differs (see $LOGS/diff3.txt, KEEP=1)"
  log "    the node restored from S3 exports a tree identical to the source"
  timed s3_verify "$BBSYNC" --no-progress --data-dir "$DATA" backups verify --repo "$S3_REPO" --read-data
  S3_VERIFY_SECS="$SECS"
  S3_DONE=1
fi

ratio() { fcalc '%.2f' 'a / (b > 0.01 ? b : 0.01)' "a=$1" "b=$2"; }
yesno() { if [ "$(fcalc '%d' "$1" "${@:2}")" = 1 ]; then echo yes; else echo no; fi; }
R_FULL="$(ratio "$FULL_SECS" "$RESTIC_BACKUP_SECS")"
R_COPY="$(ratio "$COPY_SECS" "$RESTIC_BACKUP_SECS")"
R_NODE_INC="$(fcalc '%.1f' 'a * 100 / (b > 0.01 ? b : 0.01)' "a=$NODE_INC_SECS" "b=$FULL_SECS")"
R_INC="$(fcalc '%.1f' 'a * 100 / (b > 0.01 ? b : 0.01)' "a=$INC_SECS" "b=$FULL_SECS")"
R_REST="$(ratio "$RESTORE_SECS" "$RESTIC_RESTORE_SECS")"
R_TREE="$(ratio "$TOTREE_SECS" "$RESTIC_RESTORE_SECS")"
V_MBPS="$(mbps "$REPO_BYTES" "$VERIFY_SECS")"

row() { printf '%-34s %9s %14s  %-22s %s\n' "$@"; }
log ""
log "== results: profile $PROFILE, $PLAIN_BYTES plaintext bytes, repository format $REPO_FORMAT, $REPO_BYTES bytes (MB = 10^6 B, warm page cache)"
row "step" "seconds" "ratio" "goal" "met"
row "bbsync backup (full, hard links)" "$FULL_SECS" "$R_FULL x restic" "<= 0.5x restic" "$(yesno 'a <= 0.5' "a=$R_FULL")"
row "bbsync backup --copy (full)" "$COPY_SECS" "$R_COPY x restic" "(for reference)" "-"
row "restic backup" "$RESTIC_BACKUP_SECS" "-" "reference" "-"
row "bbsync backup (1 new message)" "$INC_SECS" "$R_INC% of full" "<= 5% of full" "$(yesno 'a <= 5' "a=$R_INC")"
row "  the same, through a serving node" "$NODE_INC_SECS" "$R_NODE_INC% of full" "<= 5% of full" "$(yesno 'a <= 5' "a=$R_NODE_INC")"
row "bbsync restore (into a node)" "$RESTORE_SECS" "$R_REST x restic" "<= 1.0x restic" "$(yesno 'a <= 1.0' "a=$R_REST")"
row "bbsync restore --to-tree" "$TOTREE_SECS" "$R_TREE x restic" "(plaintext, reference)" "-"
row "restic restore" "$RESTIC_RESTORE_SECS" "-" "reference" "-"
row "bbsync backups verify --read-data" "$VERIFY_SECS" "$V_MBPS MB/s" ">= 1000 MB/s" "$(yesno 'a >= 1000' "a=$V_MBPS")"
if [ "$S3_DONE" = 1 ]; then
  R_S3_FULL="$(ratio "$S3_FULL_SECS" "$S3_RESTIC_BACKUP_SECS")"
  R_S3_INC="$(fcalc '%.1f' 'a * 100 / (b > 0.01 ? b : 0.01)' "a=$S3_INC_SECS" "b=$S3_FULL_SECS")"
  R_S3_REST="$(ratio "$S3_RESTORE_SECS" "$S3_RESTIC_RESTORE_SECS")"
  log ""
  log "== results on S3: moto_server ${MOTO_VERSION:-?} on 127.0.0.1 (in-memory; both tools talk to the same server)"
  row "step" "seconds" "ratio" "goal" "met"
  row "bbsync backup to S3 (full)" "$S3_FULL_SECS" "$R_S3_FULL x restic" "<= 0.5x restic" "$(yesno 'a <= 0.5' "a=$R_S3_FULL")"
  row "restic backup to S3" "$S3_RESTIC_BACKUP_SECS" "-" "reference" "-"
  row "bbsync backup to S3 (1 new message)" "$S3_INC_SECS" "$R_S3_INC% of full" "<= 5% of full" "$(yesno 'a <= 5' "a=$R_S3_INC")"
  row "  its PUT requests" "-" "$S3_INC_PUTS PUTs" "<= 10 PUTs" "$(yesno 'a <= 10' "a=$S3_INC_PUTS")"
  row "bbsync restore from S3" "$S3_RESTORE_SECS" "$R_S3_REST x restic" "<= 1.0x restic" "$(yesno 'a <= 1.0' "a=$R_S3_REST")"
  row "restic restore from S3" "$S3_RESTIC_RESTORE_SECS" "-" "reference" "-"
  row "bbsync backups verify --read-data" "$S3_VERIFY_SECS" "-" "(for reference)" "-"
fi
log ""
log "load average at the start of each step: $LOADS"
