#!/usr/bin/env bash
# SQLite benchmark (issue 17): a BBS whose largest object is a 100 MB live
# database, one run.
#
#   scripts/bench-sqlite.sh            (run from anywhere inside the checkout)
#
# Builds bbsync (or uses BBSYNC_BIN), generates the `small` sample BBS plus
# files/bbs.sqlite3 (WAL mode, posts of ~300 bytes, SIZE_MB, default 100),
# then measures, each step after a `sync`:
#   1. snapshot under a concurrent writer: a Python process commits
#      transactions of 10 posts as fast as it can while `import-bbs` runs;
#      bbsync's snapshot time (backup API + integrity_check, from the
#      import's report) beside, in the same run and under the same writer,
#      Python's sqlite3 backup() (the same API, no check), VACUUM INTO, and a
#      plain cp (torn, for scale);
#   2. new bytes written by a re-import after 1% of the rows change:
#      clustered (a contiguous range of posts), scattered (random posts),
#      appended (1% new posts); goal < 10% of the database; plus what fixed
#      chunks of 4, 16, 64 and 256 KiB would have written for the same
#      scattered change (why database chunks are one page);
#   3. clone of that BBS over loopback against an rsync daemon serving the
#      same tree (the writer stopped), both timed with /usr/bin/time -v; the
#      clone's database is exported and must pass its integrity check.
# Prints the figures with their comparisons. Exits 0 when a goal is missed
# (it reports), non-zero when a step fails.
#
# Environment:
#   BBSYNC_BIN=PATH   use this binary, do not build
#   SIZE_MB=N         database size (default 100)
#   WORK=DIR          put the work dir under DIR
#   KEEP=1            keep the work dir
set -euo pipefail

PROG=bench-sqlite.sh
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

SIZE_MB="${SIZE_MB:-100}"
[[ "$SIZE_MB" =~ ^[0-9]+$ ]] && [ "$SIZE_MB" -ge 1 ] || die "SIZE_MB must be a positive integer"

ensure_cmd python3 python3
ensure_cmd rsync rsync
ensure_gnu_time
find_bbsync
make_workdir bbsync-bench-sqlite "${WORK:-}"

TREE="$WORKDIR/tree"
DB="$TREE/files/bbs.sqlite3"
SRC="$WORKDIR/source"
DST="$WORKDIR/clone"
LOGS="$WORKDIR/logs"
mkdir -- "$LOGS"
SERVER_PID=""
RSYNCD_PID=""
WRITER_PID=""

stop_pid() {
  if [ -n "$1" ]; then
    kill "$1" 2>/dev/null || true
    wait "$1" 2>/dev/null || true
  fi
}
stop_all() {
  stop_pid "$WRITER_PID"
  stop_pid "$SERVER_PID"
  stop_pid "$RSYNCD_PID"
  WRITER_PID=""
  SERVER_PID=""
  RSYNCD_PID=""
}
trap 'stop_all; cleanup_workdir' EXIT

bb() { "$BBSYNC" --no-progress "$@"; }
jget() { python3 -c 'import json,sys; v=json.load(sys.stdin)
for k in sys.argv[1:]: v=v[k]
print(v)' "$@"; }
free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

log "== bbsync SQLite benchmark: a ${SIZE_MB} MB live database"
log "machine: $(nproc) CPUs; python sqlite3 $(python3 -c 'import sqlite3; print(sqlite3.sqlite_version)'); $(rsync --version | head -n 1)"
log "bbsync: $BBSYNC"
log "work dir: $WORKDIR"

log ""
log "== generate the BBS and its database (not timed)"
python3 "$BBSYNC_SCRIPTS_DIR/gen-bbs.py" --profile small --seed 1 "$TREE" >/dev/null || die "gen-bbs.py failed"
python3 - "$DB" "$SIZE_MB" <<'PY' || die "generating the database failed"
import os, random, sqlite3, sys
db, size = sys.argv[1], int(sys.argv[2]) * 1_000_000
random.seed(7)
c = sqlite3.connect(db, isolation_level=None)
c.execute("PRAGMA journal_mode=WAL")
c.execute("CREATE TABLE posts(id INTEGER PRIMARY KEY, board TEXT NOT NULL, author TEXT NOT NULL, "
          "created INTEGER NOT NULL, txn INTEGER NOT NULL DEFAULT 0, body TEXT NOT NULL)")
c.execute("CREATE INDEX posts_board ON posts(board, created)")
n = 0
while os.path.getsize(db) < size:
    c.execute("BEGIN")
    c.executemany("INSERT INTO posts(board, author, created, body) VALUES (?, ?, ?, ?)",
                  [(f"board{random.randrange(20)}", f"user{random.randrange(1000)}", n + i,
                    os.urandom(150).hex()) for i in range(10_000)])
    c.execute("COMMIT")
    c.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    n += 10_000
print(f"{n} posts")
PY
DB_BYTES="$(stat -c %s "$DB")"
log "tree: $(tree_bytes "$TREE") bytes in $(tree_files "$TREE") files; database $DB_BYTES bytes"
bb --data-dir "$SRC" init --name source >/dev/null
bb --data-dir "$DST" init --name clone >/dev/null
bb --data-dir "$SRC" trust add "$(bb --data-dir "$DST" id)" >/dev/null

cat >"$WORKDIR/writer.py" <<'PY'
import os, sqlite3, sys
c = sqlite3.connect(sys.argv[1], timeout=60, isolation_level=None)
txn = 1
while True:
    c.execute("BEGIN IMMEDIATE")
    for i in range(10):
        c.execute("INSERT INTO posts(board, author, created, txn, body) VALUES ('live', 'writer', 0, ?, ?)",
                  (txn, os.urandom(150).hex()))
    c.execute("COMMIT")
    with open(sys.argv[2] + ".tmp", "w") as f:
        f.write(str(txn))
    os.replace(sys.argv[2] + ".tmp", sys.argv[2])
    txn += 1
PY
start_writer() {
  python3 "$WORKDIR/writer.py" "$DB" "$WORKDIR/writer.progress" &
  WRITER_PID=$!
  for _ in $(seq 1 200); do
    [ -s "$WORKDIR/writer.progress" ] && return 0
    sleep 0.05
  done
  die "the writer did not start"
}
writer_txns() { cat "$WORKDIR/writer.progress" 2>/dev/null || echo 0; }

log ""
log "== 1. snapshot of the ${SIZE_MB} MB database while a writer commits"
start_writer
T0="$(writer_txns)"
timed import "$BBSYNC" --no-progress --data-dir "$SRC" --json import-bbs "$TREE"
IMPORT_S="$SECS"
SNAP_S="$(jget snapshot_time <"$LOGS/import.out" | xargs printf '%.2f')"
python3 - "$DB" "$WORKDIR" >"$LOGS/peers.out" <<'PY' || die "the comparison snapshots failed"
import os, shutil, sqlite3, sys, time
db, work = sys.argv[1], sys.argv[2]
def t(f):
    s = time.monotonic(); f(); return time.monotonic() - s
src = sqlite3.connect(db, timeout=60)
out = os.path.join(work, "peer-backup.db")
dst = sqlite3.connect(out)
# As bbsync's snapshot file: no journal, no fsync.
dst.execute("PRAGMA journal_mode=OFF")
dst.execute("PRAGMA synchronous=OFF")
b = t(lambda: src.backup(dst))
dst.close()
chk = t(lambda: sqlite3.connect(out).execute("PRAGMA integrity_check").fetchall())
v = os.path.join(work, "peer-vacuum.db")
vac = t(lambda: src.execute("VACUUM INTO ?", (v,)))
cp = t(lambda: shutil.copyfile(db, os.path.join(work, "peer-cp.db")))
print(f"{b:.2f} {chk:.2f} {vac:.2f} {cp:.2f}")
for f in ("peer-backup.db", "peer-vacuum.db", "peer-cp.db"):
    os.remove(os.path.join(work, f))
PY
read -r PY_BACKUP_S PY_CHECK_S VACUUM_S CP_S <"$LOGS/peers.out"
T1="$(writer_txns)"
stop_pid "$WRITER_PID"
WRITER_PID=""
log "writer committed $((T1 - T0)) transactions meanwhile"
log "bbsync snapshot (backup API + integrity_check): ${SNAP_S} s (whole import-bbs: ${IMPORT_S} s)"
log "same run, same writer: sqlite3 backup() ${PY_BACKUP_S} s + integrity_check ${PY_CHECK_S} s; VACUUM INTO ${VACUUM_S} s; cp (torn) ${CP_S} s"

log ""
log "== 2. new bytes after 1% of the rows change (goal < 10% of the database)"
bb --data-dir "$SRC" import-bbs "$TREE" >/dev/null
bb --data-dir "$SRC" export file:bbs.sqlite3 "$WORKDIR/before.db" >/dev/null
change() {
  python3 - "$DB" "$1" <<'PY'
import os, random, sqlite3, sys
db, how = sys.argv[1], sys.argv[2]
random.seed(11)
c = sqlite3.connect(db, isolation_level=None)
n = c.execute("SELECT count(*) FROM posts").fetchone()[0]
k = n // 100
c.execute("BEGIN")
if how == "clustered":
    start = random.randrange(1, n - k)
    c.execute("UPDATE posts SET body = upper(body) WHERE id BETWEEN ? AND ?", (start, start + k - 1))
elif how == "scattered":
    for i in random.sample(range(1, n + 1), k):
        c.execute("UPDATE posts SET body = ? WHERE id = ?", (os.urandom(150).hex(), i))
else:
    c.executemany("INSERT INTO posts(board, author, created, body) VALUES ('new', 'u', 0, ?)",
                  [(os.urandom(150).hex(),) for _ in range(k)])
c.execute("COMMIT")
c.execute("PRAGMA wal_checkpoint(TRUNCATE)")
PY
}
declare -A NEW_PCT
for how in clustered scattered appended; do
  change "$how" || die "changing the database ($how) failed"
  timed "reimport-$how" "$BBSYNC" --no-progress --data-dir "$SRC" --json import-bbs "$TREE"
  written="$(jget bytes_written <"$LOGS/reimport-$how.out")"
  size="$(stat -c %s "$DB")"
  NEW_PCT[$how]="$(fcalc '%.1f' '100 * w / s' "w=$written" "s=$size")"
  log "    $how: $written new bytes of $size = ${NEW_PCT[$how]}%"
  if [ "$how" = scattered ]; then
    bb --data-dir "$SRC" export file:bbs.sqlite3 "$WORKDIR/after.db" >/dev/null
    cp -- "$WORKDIR/before.db" "$WORKDIR/scatter-before.db"
  fi
  rm -f -- "$WORKDIR/before.db"
  bb --data-dir "$SRC" export file:bbs.sqlite3 "$WORKDIR/before.db" >/dev/null
done
python3 - "$WORKDIR/scatter-before.db" "$WORKDIR/after.db" >"$LOGS/chunks.out" <<'PY'
import hashlib, sys
a, b = (open(p, "rb").read() for p in sys.argv[1:3])
for size in (4096, 16384, 65536, 262144):
    old = {hashlib.sha256(a[i:i + size]).digest() for i in range(0, len(a), size)}
    new = sum(min(size, len(b) - i) for i in range(0, len(b), size)
              if hashlib.sha256(b[i:i + size]).digest() not in old)
    print(f"{size // 1024} KiB: {100 * new / len(b):.1f}%")
PY
log "    plaintext in new chunks for the scattered change, by fixed chunk size (4 KiB is bbsync's cut here; zstd not counted):"
sed 's/^/      /' "$LOGS/chunks.out"

log ""
log "== 3. clone over loopback vs an rsync daemon (same tree, same run)"
start_serve "$SRC" "$LOGS"
start_rsyncd "$TREE" "$LOGS"
timed clone "$BBSYNC" --no-progress --data-dir "$DST" clone "$SERVE_ADDR"
CLONE_S="$SECS"
CLONE_RSS="$RSS_MB"
mkdir -- "$WORKDIR/rsync-copy"
timed rsync rsync -a "rsync://127.0.0.1:$PORT/bbs/" "$WORKDIR/rsync-copy/"
RSYNC_S="$SECS"
stop_all
bb --data-dir "$DST" export file:bbs.sqlite3 "$WORKDIR/clone.db" >/dev/null
CHECK="$(python3 -c 'import sqlite3,sys; print(sqlite3.connect(sys.argv[1]).execute("PRAGMA integrity_check").fetchone()[0])' "$WORKDIR/clone.db")"
[ "$CHECK" = ok ] || die "the clone's database fails its integrity check: $CHECK"
TREE_BYTES="$(tree_bytes "$TREE")"

met() { if [ "$(fcalc '%d' "$@")" = 1 ]; then echo yes; else echo no; fi; }
log ""
log "== results (${SIZE_MB} MB database, MB = 10^6 B)"
printf '%-44s %10s\n' "snapshot under a writer (bbsync, checked)" "${SNAP_S} s"
printf '%-44s %10s\n' "  sqlite3 backup() + integrity_check" "$(fcalc '%.2f' 'a + b' "a=$PY_BACKUP_S" "b=$PY_CHECK_S") s"
printf '%-44s %10s\n' "  VACUUM INTO" "${VACUUM_S} s"
printf '%-44s %10s\n' "  cp (torn copy, for scale)" "${CP_S} s"
for how in clustered scattered appended; do
  printf '%-44s %10s  (goal < 10%%: %s)\n' "new bytes written after 1% $how" "${NEW_PCT[$how]}%" \
    "$(met "p < 10" "p=${NEW_PCT[$how]}")"
done
printf '%-44s %10s\n' "  (scattered, plaintext of the new chunks)" "$(head -n 1 "$LOGS/chunks.out" | sed 's/.*: //')"
printf '%-44s %10s  %s MB/s, peak RSS %s MB\n' "bbsync clone" "${CLONE_S} s" \
  "$(mbps "$TREE_BYTES" "$CLONE_S")" "$CLONE_RSS"
printf '%-44s %10s  %s MB/s\n' "rsync daemon" "${RSYNC_S} s" "$(mbps "$TREE_BYTES" "$RSYNC_S")"
log "ratio clone/rsync: $(fcalc '%.2f' 'c / (r > 0.01 ? r : 0.01)' "c=$CLONE_S" "r=$RSYNC_S")"
log "the clone's database passes its integrity check"
