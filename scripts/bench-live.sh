#!/usr/bin/env bash
# Live mirroring benchmark: from a post written into the primary's BBS tree
# to the same bytes renamed into place in the standby's tree, bbsync
# (`serve --watch` -> `serve --follow --tree`) and Syncthing side by side,
# in one run, over loopback.
#
#   scripts/bench-live.sh            (run from anywhere inside the checkout)
#
# Builds bbsync (or uses BBSYNC_BIN), then for each system in turn:
#   bbsync     a primary `serve --watch A` and a standby
#              `serve --follow PRIMARY --tree B` on 127.0.0.1;
#   Syncthing  Debian's `syncthing` (installed with apt-get if missing), two
#              instances on 127.0.0.1 sharing one folder (send-receive),
#              global and local discovery, relays, NAT, usage reporting and
#              crash reporting off, its file watcher at its fastest
#              (fsWatcherDelayS=1);
# writes POSTS posts (default 500) into the first tree at RATE per second
# (default 50), each as a new file written in place (open, write, close),
# and takes per post the time from just before its open() to the moment
# the same file is renamed into place (IN_MOVED_TO, or IN_CLOSE_WRITE for a
# file written in place) in the second tree, seen through inotify. At the
# end every post must be in the second tree with the same bytes. Prints
# p50/p90/p99/max for both, the goals (p50 <= 100 ms, p99 <= 500 ms,
# nothing lost, worst case at most half of Syncthing's), then the CPU an
# idle watching bbsync node uses over IDLE seconds (default 30; goal < 1%
# of a core). Exits non-zero when a post is lost or a step fails; missed
# goals are reported, not failed.
#
# Then the same bbsync pair over a private Tor network (scripts/tor-testnet.py:
# the primary serves only as an onion service, the standby follows its onion
# address), reported beside (no goal; TOR=0 leaves it out).
#
# Environment: BBSYNC_BIN=PATH, POSTS=N, RATE=N, IDLE=SECONDS, WORK=DIR,
# KEEP=1, SKIP_SYNCTHING=1, TOR=0.
set -euo pipefail

PROG=bench-live.sh
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

POSTS="${POSTS:-500}"
RATE="${RATE:-50}"
IDLE="${IDLE:-30}"
ensure_cmd python3 python3
if [ "${SKIP_SYNCTHING:-0}" != 1 ]; then
  ensure_cmd syncthing syncthing
fi
find_bbsync
make_workdir bbsync-bench-live "${WORK:-}"

LOGS="$WORKDIR/logs"
mkdir -- "$LOGS"
PIDS=()
stop_all() {
  for pid in "${PIDS[@]}"; do
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  PIDS=()
}
trap 'stop_all; cleanup_workdir' EXIT

# The driver: writes the posts into $1, watches $2 with inotify, prints the
# latencies as JSON into $3.
cat >"$WORKDIR/drive.py" <<'PY'
import ctypes, json, os, select, struct, sys, time

src, dst, out, posts, rate = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), float(sys.argv[5])
board = "boards/bench"
libc = ctypes.CDLL("libc.so.6", use_errno=True)
IN_CLOSE_WRITE, IN_MOVED_TO, IN_CREATE, IN_ISDIR = 0x8, 0x80, 0x100, 0x40000000
fd = libc.inotify_init1(os.O_NONBLOCK)
wds = {}
def watch(d):
    wd = libc.inotify_add_watch(fd, d.encode(), IN_CLOSE_WRITE | IN_MOVED_TO | IN_CREATE)
    if wd >= 0:
        wds[wd] = d
for root, dirs, _ in os.walk(dst):
    if ".bbsync" in root or ".stfolder" in root:
        continue
    watch(root)
body = {i: json.dumps({"id": i, "from": "bench", "subject": f"post {i}",
                       "body": "x" * (200 + i % 300)}).encode() + b"\n" for i in range(posts)}
written, arrived = {}, {}
def drain():
    try:
        buf = os.read(fd, 1 << 16)
    except BlockingIOError:
        return
    now = time.time()
    i = 0
    while i < len(buf):
        wd, mask, _, ln = struct.unpack_from("iIII", buf, i)
        name = buf[i + 16:i + 16 + ln].rstrip(b"\0").decode()
        i += 16 + ln
        d = wds.get(wd)
        if d is None:
            continue
        p = os.path.join(d, name)
        if mask & IN_ISDIR and mask & (IN_CREATE | IN_MOVED_TO):
            watch(p)
            for root, _, files in os.walk(p):
                watch(root)
                for f in files:
                    rel = os.path.relpath(os.path.join(root, f), dst)
                    arrived.setdefault(rel, now)
            continue
        if mask & (IN_MOVED_TO | IN_CLOSE_WRITE):
            rel = os.path.relpath(p, dst)
            if rel.startswith(board + "/") and rel.endswith(".json"):
                arrived.setdefault(rel, now)
os.makedirs(os.path.join(src, board), exist_ok=True)
time.sleep(2.0)  # the new board directory reaches the other side first
drain()
t0 = time.time() + 0.1
for i in range(posts):
    while True:
        delay = t0 + i / rate - time.time()
        if delay <= 0:
            break
        r, _, _ = select.select([fd], [], [], delay)
        if r:
            drain()
    rel = f"{board}/{i}.json"
    written[rel] = time.time()
    with open(os.path.join(src, rel), "wb") as f:
        f.write(body[i])
    drain()
deadline = time.time() + 60
while len([r for r in written if r in arrived]) < posts and time.time() < deadline:
    r, _, _ = select.select([fd], [], [], 0.2)
    if r:
        drain()
lost, bad = [], []
lat = []
for i in range(posts):
    rel = f"{board}/{i}.json"
    if rel not in arrived:
        lost.append(rel)
        continue
    try:
        with open(os.path.join(dst, rel), "rb") as f:
            if f.read() != body[i]:
                bad.append(rel)
    except FileNotFoundError:
        lost.append(rel)
    lat.append((arrived[rel] - written[rel]) * 1000)
lat.sort()
def pct(p):
    return lat[min(len(lat) - 1, int(round(p / 100 * (len(lat) - 1))))] if lat else float("nan")
json.dump({"posts": posts, "arrived": len(lat), "lost": lost[:10], "n_lost": len(lost),
           "bad": bad[:10], "n_bad": len(bad), "p50": pct(50), "p90": pct(90),
           "p99": pct(99), "max": lat[-1] if lat else float("nan"),
           "span_s": max(written.values()) - min(written.values())}, open(out, "w"))
PY

wait_addr() { # FILE: the first line of FILE once there
  local a=""
  for _ in $(seq 1 200); do
    a="$(head -n 1 "$1" 2>/dev/null || true)"
    [ -n "$a" ] && break
    sleep 0.1
  done
  [ -n "$a" ] || die "no address in $1"
  printf '%s\n' "$a"
}

cpu_ticks() { # PID: utime + stime in clock ticks
  awk '{ print $14 + $15 }' "/proc/$1/stat"
}

# bbsync_phase NAME TOR: a primary watching its tree and a standby keeping
# its own, over loopback TCP (TOR=0) or the private Tor network (TOR=1:
# the primary serves only as an onion service); results in $WORKDIR/NAME.json.
bbsync_phase() {
  local name="$1" tor="$2"
  local P="$WORKDIR/$name/primary" S="$WORKDIR/$name/standby"
  local TA="$WORKDIR/$name/tree-a" TB="$WORKDIR/$name/tree-b"
  local targs=() listen=(--listen /ip4/127.0.0.1/tcp/0) wait=200
  if [ "$tor" = 1 ]; then
    targs=(--tor-config "$ARTI")
    listen=(--onion)
    wait=3600
  fi
  mkdir -p -- "$TA/boards/general" "$TB"
  printf '{"id":1,"body":"first"}\n' >"$TA/boards/general/1.json"
  "$BBSYNC" --data-dir "$P" -q init --name primary
  "$BBSYNC" --data-dir "$S" -q init --name standby
  "$BBSYNC" --data-dir "$P" -q trust add "$("$BBSYNC" --data-dir "$S" id)" --role full
  BBSYNC_LOG=info "$BBSYNC" --data-dir "$P" --no-progress "${targs[@]}" serve "${listen[@]}" \
    --watch "$TA" >"$LOGS/$name-primary.out" 2>"$LOGS/$name-primary.log" &
  PIDS+=($!)
  PRIMARY_PID=$!
  local addr=""
  for _ in $(seq 1 "$wait"); do
    addr="$(head -n 1 "$LOGS/$name-primary.out" 2>/dev/null || true)"
    [ -n "$addr" ] && break
    sleep 0.1
  done
  [ -n "$addr" ] || die "the primary printed no address (log: $LOGS/$name-primary.log)"
  log "    primary at $addr"
  BBSYNC_LOG=info "$BBSYNC" --data-dir "$S" --no-progress "${targs[@]}" serve \
    --listen /ip4/127.0.0.1/tcp/0 --follow "$addr" --tree "$TB" \
    >"$LOGS/$name-standby.out" 2>"$LOGS/$name-standby.log" &
  PIDS+=($!)
  for _ in $(seq 1 "$wait"); do
    [ -f "$TB/boards/general/1.json" ] && break
    sleep 0.1
  done
  [ -f "$TB/boards/general/1.json" ] || die "the standby's tree did not fill (logs in $LOGS)"
  python3 "$WORKDIR/drive.py" "$TA" "$TB" "$WORKDIR/$name.json" "$POSTS" "$RATE"
}

log "== bbsync: $POSTS posts at $RATE/s into the primary's watched tree, standby tree on loopback"
bbsync_phase bbsync 0
log "== bbsync: CPU of the idle watching primary over ${IDLE}s"
sleep 2
T0="$(cpu_ticks "$PRIMARY_PID")"
sleep "$IDLE"
T1="$(cpu_ticks "$PRIMARY_PID")"
HZ="$(getconf CLK_TCK)"
IDLE_CPU="$(fcalc '%.2f' '(t1 - t0) / hz / s * 100' "t1=$T1" "t0=$T0" "hz=$HZ" "s=$IDLE")"
stop_all

# ---------------------------------------------------------------- over Tor
if [ "${TOR:-1}" = 1 ]; then
  ensure_cmd tor tor
  NET="$WORKDIR/tornet"
  trap 'stop_all; python3 "$BBSYNC_SCRIPTS_DIR/tor-testnet.py" down "$NET" 2>/dev/null || true; cleanup_workdir' EXIT
  log "== private Tor network (scripts/tor-testnet.py)"
  ARTI="$(python3 "$BBSYNC_SCRIPTS_DIR/tor-testnet.py" up "$NET" --owner $$)" || die "tor-testnet.py up failed"
  log "== bbsync over Tor: the same posts, the standby following the primary's onion address"
  bbsync_phase bbsync-tor 1
  stop_all
  python3 "$BBSYNC_SCRIPTS_DIR/tor-testnet.py" down "$NET" 2>/dev/null || true
fi

# ---------------------------------------------------------------- Syncthing
if [ "${SKIP_SYNCTHING:-0}" != 1 ]; then
  log "== Syncthing $(syncthing --version | awk '{print $2}'): the same posts, two instances on loopback, watcher delay 1 s"
  SA="$WORKDIR/syncthing/tree-a" SB="$WORKDIR/syncthing/tree-b"
  mkdir -p -- "$SA/boards/general" "$SB"
  printf '{"id":1,"body":"first"}\n' >"$SA/boards/general/1.json"
  for n in 1 2; do
    syncthing generate --home="$WORKDIR/syncthing/home$n" --no-default-folder --skip-port-probing \
      >"$LOGS/syncthing-generate$n.log" 2>&1
  done
  python3 - "$WORKDIR/syncthing" "$SA" "$SB" <<'PY'
import socket, sys, xml.etree.ElementTree as ET
base, sa, sb = sys.argv[1:4]
def free():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close(); return p
homes = [f"{base}/home1", f"{base}/home2"]
trees = [sa, sb]
ports = [free(), free()]
guis = [free(), free()]
docs = [ET.parse(f"{h}/config.xml") for h in homes]
ids = [d.getroot().find("device").get("id") for d in docs]
for n, d in enumerate(docs):
    root = d.getroot()
    o = root.find("options")
    for tag, val in [("listenAddress", f"tcp://127.0.0.1:{ports[n]}"),
                     ("globalAnnounceEnabled", "false"), ("localAnnounceEnabled", "false"),
                     ("relaysEnabled", "false"), ("natEnabled", "false"),
                     ("urAccepted", "-1"), ("crashReportingEnabled", "false"),
                     ("startBrowser", "false"), ("autoUpgradeIntervalH", "0"),
                     ("setLowPriority", "false")]:
        o.find(tag).text = val
    root.find("gui").find("address").text = f"127.0.0.1:{guis[n]}"
    other = 1 - n
    dev = ET.SubElement(root, "device", id=ids[other], name=f"peer{other}", compression="metadata",
                        introducer="false")
    ET.SubElement(dev, "address").text = f"tcp://127.0.0.1:{ports[other]}"
    f = ET.SubElement(root, "folder", id="bbs", label="bbs", path=trees[n], type="sendreceive",
                      rescanIntervalS="3600", fsWatcherEnabled="true", fsWatcherDelayS="1",
                      ignorePerms="false", autoNormalize="true")
    ET.SubElement(f, "device", id=ids[0])
    ET.SubElement(f, "device", id=ids[1])
    d.write(f"{homes[n]}/config.xml")
PY
  for n in 1 2; do
    STNOUPGRADE=1 syncthing serve --home="$WORKDIR/syncthing/home$n" --no-browser --no-restart \
      >"$LOGS/syncthing$n.log" 2>&1 &
    PIDS+=($!)
  done
  for _ in $(seq 1 600); do
    [ -f "$SB/boards/general/1.json" ] && break
    sleep 0.1
  done
  [ -f "$SB/boards/general/1.json" ] || die "Syncthing did not sync the first file within 60 s (logs in $LOGS)"
  python3 "$WORKDIR/drive.py" "$SA" "$SB" "$WORKDIR/syncthing.json" "$POSTS" "$RATE"
  stop_all
fi

# ---------------------------------------------------------------- report
python3 - "$WORKDIR" "$IDLE_CPU" "${SKIP_SYNCTHING:-0}" <<'PY'
import json, os, sys
work, idle_cpu, skip = sys.argv[1], float(sys.argv[2]), sys.argv[3] == "1"
b = json.load(open(os.path.join(work, "bbsync.json")))
tor_file = os.path.join(work, "bbsync-tor.json")
t = json.load(open(tor_file)) if os.path.exists(tor_file) else None
s = None if skip else json.load(open(os.path.join(work, "syncthing.json")))
def row(name, r):
    return (f"{name:<10} {r['arrived']:>5}/{r['posts']:<5} lost {r['n_lost']:>3}  bad {r['n_bad']:>3}"
            f"  p50 {r['p50']:8.1f}  p90 {r['p90']:8.1f}  p99 {r['p99']:8.1f}  max {r['max']:8.1f} ms"
            f"  (written over {r['span_s']:.1f} s)")
print("write on the first tree -> same bytes renamed into place on the second, loopback:")
print(row("bbsync", b))
if s:
    print(row("Syncthing", s))
if t:
    print(row("bbsync/Tor", t) + "  (private Tor network, onion service)")
ok = lambda c: "met" if c else "MISSED"
print(f"goal p50 <= 100 ms: {ok(b['p50'] <= 100)} ({b['p50']:.1f} ms)")
print(f"goal p99 <= 500 ms: {ok(b['p99'] <= 500)} ({b['p99']:.1f} ms)")
print(f"goal nothing lost:  {ok(b['n_lost'] == 0 and b['n_bad'] == 0)}")
if s:
    print(f"goal worst case <= half of Syncthing's: {ok(b['max'] <= s['max'] / 2)}"
          f" ({b['max']:.1f} ms vs {s['max']:.1f} ms)")
print(f"idle watching node: {idle_cpu:.2f}% of a core (goal < 1%: {ok(idle_cpu < 1)})")
for name, r in [("bbsync", b), ("bbsync over Tor", t)]:
    if r and (r["n_lost"] or r["n_bad"]):
        print(f"{name} lost {r['lost']} / wrong bytes {r['bad']}")
        sys.exit(1)
PY
