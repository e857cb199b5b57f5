#!/usr/bin/env python3
"""A BBS writing its SQLite database as fast as it can, for the tests.

    sqlite_writer.py DB MODE PROGRESS [ROWS_PER_TXN]

MODE is a journal mode (wal, delete). Each transaction inserts ROWS_PER_TXN
(default 10) rows that carry its number `txn` (1, 2, 3, ...) and their
index `n` in it; the rows of a committed transaction are all there or none
are. After each commit the number of the last committed transaction is
written to PROGRESS (through a rename, so a reader never sees half a
number). Runs until killed.
"""
import os
import sqlite3
import sys

db, mode, progress = sys.argv[1], sys.argv[2], sys.argv[3]
per_txn = int(sys.argv[4]) if len(sys.argv) > 4 else 10
c = sqlite3.connect(db, timeout=60, isolation_level=None)
c.execute(f"PRAGMA journal_mode={mode}")
c.execute(
    "CREATE TABLE IF NOT EXISTS posts("
    "id INTEGER PRIMARY KEY, txn INTEGER NOT NULL, n INTEGER NOT NULL, body TEXT NOT NULL)"
)
txn = (c.execute("SELECT max(txn) FROM posts").fetchone()[0] or 0) + 1
body = "x" * 300
while True:
    c.execute("BEGIN IMMEDIATE")
    for n in range(per_txn):
        c.execute("INSERT INTO posts(txn, n, body) VALUES (?, ?, ?)", (txn, n, body))
    c.execute("COMMIT")
    tmp = progress + ".tmp"
    with open(tmp, "w") as f:
        f.write(str(txn))
    os.replace(tmp, progress)
    txn += 1
