#!/usr/bin/env bash
# Follow benchmark: how far behind its primary a standby stays.
#
#   scripts/bench-follow.sh            (run from anywhere inside the checkout)
#
# Builds bbsync (or uses BBSYNC_BIN), starts a primary (`serve`) and a
# standby (`serve --follow PRIMARY`) on 127.0.0.1, then imports POSTS small
# posts (default 500) on the primary at RATE per second (default 50), each
# with its own `bbsync import` through the primary's control socket, while
# the standby follows. Per post it takes, from the nodes' own records:
#   created  the primary's time stamp of the new version (its manifest's
#            created_at_ms, set by the primary's import),
#   applied  the standby's time stamp after the post is durably applied
#            (chunks published with syncfs, metadata flushed; its log line
#            `applied object=... created_at_ms=... applied_at_ms=...`),
# and prints the distribution of applied - created (p50/p90/p99/max)
# against the goals (p50 <= 100 ms, p99 <= 500 ms, nothing lost), plus the
# same from the moment the driver started each `bbsync import` process
# (which includes process start-up and queueing behind other imports).
# Exits non-zero when a post is lost or a step fails; missed goals are
# reported, not failed.
#
# Environment: BBSYNC_BIN=PATH, POSTS=N, RATE=N, WORK=DIR, KEEP=1.
set -euo pipefail

PROG=bench-follow.sh
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

POSTS="${POSTS:-500}"
RATE="${RATE:-50}"
ensure_cmd python3 python3
find_bbsync
make_workdir bbsync-bench-follow "${WORK:-}"

P="$WORKDIR/primary"
S="$WORKDIR/standby"
LOGS="$WORKDIR/logs"
mkdir -- "$LOGS" "$WORKDIR/posts"
PIDS=()
stop_all() {
  for pid in "${PIDS[@]}"; do
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  PIDS=()
}
trap 'stop_all; cleanup_workdir' EXIT

"$BBSYNC" --data-dir "$P" -q init --name primary
"$BBSYNC" --data-dir "$S" -q init --name standby
"$BBSYNC" --data-dir "$P" -q trust add "$("$BBSYNC" --data-dir "$S" id)" --role full

BBSYNC_LOG=info "$BBSYNC" --data-dir "$P" --no-progress serve --listen /ip4/127.0.0.1/tcp/0 \
  >"$LOGS/primary.out" 2>"$LOGS/primary.log" &
PIDS+=($!)
ADDR=""
for _ in $(seq 1 100); do
  ADDR="$(head -n 1 "$LOGS/primary.out" 2>/dev/null || true)"
  [ -n "$ADDR" ] && break
  sleep 0.1
done
[ -n "$ADDR" ] || die "the primary printed no address (log: $LOGS/primary.log)"
BBSYNC_LOG='warn,bbsync::follow=info' "$BBSYNC" --data-dir "$S" --no-progress serve \
  --listen /ip4/127.0.0.1/tcp/0 --follow "$ADDR" \
  >"$LOGS/standby.out" 2>"$LOGS/standby.log" &
PIDS+=($!)
for _ in $(seq 1 100); do
  grep -q '"following"' <("$BBSYNC" --data-dir "$S" --json status 2>/dev/null) && break
  sleep 0.1
done

log "== $POSTS posts at $RATE/s on the primary, the standby following on loopback"
python3 - "$BBSYNC" "$P" "$S" "$WORKDIR" "$POSTS" "$RATE" <<'PY'
import json, os, re, subprocess, sys, time

bbsync, primary, standby, work, posts, rate = sys.argv[1:7]
posts, rate = int(posts), float(rate)
launched = {}
procs = []
t0 = time.time() + 0.2
for i in range(posts):
    path = os.path.join(work, "posts", f"{i}.json")
    with open(path, "w") as f:
        json.dump({"id": i, "from": "bench", "subject": f"post {i}",
                   "body": "x" * (200 + i % 300)}, f)
    delay = t0 + i / rate - time.time()
    if delay > 0:
        time.sleep(delay)
    launched[f"bench/{i}"] = int(time.time() * 1000)
    procs.append(subprocess.Popen(
        [bbsync, "--data-dir", primary, "-q", "import", path,
         "--kind", "message", "--name", f"bench/{i}"]))
failed = sum(1 for p in procs if p.wait() != 0)
span = (max(launched.values()) - min(launched.values())) / 1000
print(f"driver: {posts} imports started over {span:.1f} s "
      f"({posts / max(span, 1e-3):.1f}/s), {failed} failed")

def ls(data):
    out = subprocess.run([bbsync, "--data-dir", data, "--json", "ls", "--kind", "message"],
                         check=True, capture_output=True, text=True).stdout
    return {r["id"]: r for r in json.loads(out)}

deadline = time.time() + 120
while True:
    held = ls(standby)
    n = sum(1 for r in held.values() if r["name"].startswith("bench/") and r["state"] == "ok")
    if n >= posts or time.time() > deadline:
        break
    time.sleep(0.2)
names = {i: r["name"] for i, r in ls(primary).items()}
pat = re.compile(r"applied object=(\w+) created_at_ms=(\d+) applied_at_ms=(\d+)")
lat, lat_launch = {}, {}
with open(os.path.join(work, "logs", "standby.log")) as f:
    for line in f:
        m = pat.search(line)
        if not m:
            continue
        name = names.get(m.group(1))
        if name is None or not name.startswith("bench/"):
            continue
        created, applied = int(m.group(2)), int(m.group(3))
        lat[name] = applied - created
        lat_launch[name] = applied - launched[name]
lost = posts - len(lat)

def dist(xs):
    xs = sorted(xs)
    if not xs:
        return "none"
    q = lambda p: xs[min(len(xs) - 1, int(round(p * (len(xs) - 1))))]
    return (f"p50 {q(0.5)} ms, p90 {q(0.9)} ms, p99 {q(0.99)} ms, max {xs[-1]} ms, "
            f"min {xs[0]} ms (n={len(xs)})")

print(f"applied on the standby - created on the primary: {dist(lat.values())}")
print(f"applied on the standby - import process started: {dist(lat_launch.values())}")
xs = sorted(lat.values())
if xs:
    p50, p99 = xs[len(xs) // 2], xs[min(len(xs) - 1, int(round(0.99 * (len(xs) - 1))))]
    print(f"goal p50 <= 100 ms: {'yes' if p50 <= 100 else 'no'} ({p50} ms)")
    print(f"goal p99 <= 500 ms: {'yes' if p99 <= 500 else 'no'} ({p99} ms)")
print(f"lost: {lost} of {posts} ({'goal met' if lost == 0 else 'GOAL MISSED'})")
sys.exit(1 if lost or failed else 0)
PY
