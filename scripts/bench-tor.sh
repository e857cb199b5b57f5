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
#   (c) the same clone over loopback TCP, for comparison;
#   (d) restarts (RESTARTS, default 3), with a standby following the source
#       (`serve --follow`) and, over Tor, a client dial that began while the
#       source was down (`fetch-missing --from`, started after the source
#       stopped; the source restarts once that dial has failed once):
#         restart -> published   new `serve` started -> address printed;
#         restart -> reachable   new `serve` started -> the waiting client's
#                                connection (its log's `connected` line;
#                                can come before the address is printed:
#                                streams are accepted from the start);
#         standby catch-up       address printed -> a post made right then is
#                                applied on the standby (its `applied` log
#                                line);
#       the same over loopback TCP on a fixed port, side by side (a TCP dial
#       does not retry, so only the standby is measured there), against the
#       goals (30 s each).
# Each clone is verified (verify --read-data, export-bbs, diff -r against
# the tree). Prints seconds, MB/s (stored bytes transferred / wall time)
# and the Tor/TCP ratio.
#
# Environment:
#   BBSYNC_BIN=PATH   use this binary, do not build (else a release build)
#   PROFILE=NAME      gen-bbs.py profile: small (default) or large
#   RESTARTS=N        restarts in (d), default 3
#   WORK=DIR          put the work dir under DIR
#   KEEP=1            keep the work dir
set -euo pipefail

PROG=bench-tor.sh
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

PROFILE="${PROFILE:-small}"
RESTARTS="${RESTARTS:-3}"
[[ "$RESTARTS" =~ ^[1-9][0-9]*$ ]] || die "RESTARTS must be a positive number, not '$RESTARTS'"
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
  for _ in $(seq 1 3600); do
    SERVE_ADDR="$(head -n 1 "$LOGS/$name.out" 2>/dev/null || true)"
    [ -n "$SERVE_ADDR" ] && break
    kill -0 "$SERVER_PID" 2>/dev/null || die "serve --onion exited (log: $LOGS/$name.log)"
    sleep 0.05
  done
  t1="$(now)"
  [ -n "$SERVE_ADDR" ] || die "serve --onion printed no address in 180 s (log: $LOGS/$name.log)"
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
for who in tor tcp standby-tor standby-tcp; do
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
log "== (d) restarts: restart -> published, -> reachable, standby catch-up"
TCP_PORT="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
python3 - "$BBSYNC" "$SRC" "$ARTI" "$WORKDIR" "$RESTARTS" "$TCP_PORT" >"$LOGS/restarts.txt" <<'PY' ||
import datetime, json, os, re, signal, subprocess, sys, time

bbsync, src, arti, work, restarts, tcp_port = sys.argv[1:7]
restarts = int(restarts)
logs = os.path.join(work, "logs")


children = []


def fail(msg):
    print(f"bench-tor.sh: error: {msg}", file=sys.stderr)
    for c in children:
        if c.poll() is None:
            c.kill()
            c.wait()
    sys.exit(1)


def wait(what, deadline_s, ok, poll=0.05):
    end = time.time() + deadline_s
    while time.time() < end:
        v = ok()
        if v:
            return v
        time.sleep(poll)
    fail(f"timed out after {deadline_s} s waiting for {what}")


def bb(data, *args, tor=False):
    cmd = [bbsync, "--data-dir", data, "--no-progress"]
    if tor:
        cmd += ["--tor-config", arti]
    return cmd + list(args)


def read(path):
    try:
        with open(path, errors="replace") as f:
            return f.read()
    except FileNotFoundError:
        return ""


def log_time(path, pattern):
    """Epoch seconds of the first log line matching pattern (UTC stamps)."""
    for line in read(path).splitlines():
        if re.search(pattern, line):
            stamp = line.split()[0].rstrip("Z")
            return datetime.datetime.fromisoformat(stamp).replace(
                tzinfo=datetime.timezone.utc).timestamp()
    return None


def start_primary(kind, name):
    out, err = os.path.join(logs, name + ".out"), os.path.join(logs, name + ".log")
    if kind == "onion":
        args = bb(src, "-v", "serve", "--onion", tor=True)
    else:
        args = bb(src, "-v", "serve", "--listen", f"/ip4/127.0.0.1/tcp/{tcp_port}")
    t0 = time.time()
    p = subprocess.Popen(args, stdout=open(out, "w"), stderr=open(err, "w"))
    children.append(p)

    def addr():
        text = read(out)
        if "\n" in text:
            return text.split("\n")[0]
        if p.poll() is not None:
            fail(f"{name} exited (log: {err})")
        return None
    a = wait(f"{name} to print its address", 180, addr)
    return p, a, t0, time.time()


def stop(p):
    p.send_signal(signal.SIGTERM)
    p.wait()


def lag_zero(standby):
    r = subprocess.run(bb(standby, "--json", "status"), capture_output=True, text=True)
    if r.returncode != 0:
        return False
    ups = json.loads(r.stdout).get("upstreams", [])
    return bool(ups) and all(u.get("state") == "following" and u.get("lag_changes") == 0
                             and u.get("cursor", 0) > 0 for u in ups)


results = {}
for kind in ["onion", "tcp"]:
    standby = os.path.join(work, "clone-standby-tor" if kind == "onion" else "clone-standby-tcp")
    client = os.path.join(work, "clone-tor")
    p, addr, _, _ = start_primary(kind, f"{kind}-start")
    slog = os.path.join(logs, f"standby-{kind}.log")
    env = dict(os.environ, BBSYNC_LOG="warn,bbsync::follow=info")
    sp = subprocess.Popen(bb(standby, "serve", "--listen", "/ip4/127.0.0.1/tcp/0", "--follow", addr,
                             tor=(kind == "onion")),
                          stdout=subprocess.DEVNULL, stderr=open(slog, "w"), env=env)
    children.append(sp)
    # Commands reach a serving node through its control socket; one run
    # before the socket exists would hold the data dir itself.
    def alive_and(cond):
        def check():
            if sp.poll() is not None:
                fail(f"the {kind} standby exited (log: {slog})")
            return cond()
        return check
    wait(f"the {kind} standby's control socket", 60,
         alive_and(lambda: os.path.exists(os.path.join(standby, "control.sock"))))
    wait(f"the {kind} standby to catch up", 600, alive_and(lambda: lag_zero(standby)), poll=0.5)
    rows = []
    for r in range(1, restarts + 1):
        stop(p)
        waiting = None
        if kind == "onion":
            clog = os.path.join(logs, f"reach-{r}.log")
            waiting = subprocess.Popen(bb(client, "-v", "fetch-missing", "--from", addr, tor=True),
                                       stdout=subprocess.DEVNULL, stderr=open(clog, "w"))
            children.append(waiting)
            wait("the waiting client's first failed attempt", 180,
                 lambda: "retrying in" in read(clog))
        p, addr2, t_restart, t_printed = start_primary(kind, f"{kind}-restart-{r}")
        if addr2 != addr:
            fail(f"the address changed across a restart: {addr} -> {addr2}")
        post = os.path.join(work, f"restart-{kind}-{r}.json")
        with open(post, "w") as f:
            json.dump({"id": r, "from": "bench", "body": f"after restart {r} over {kind}"}, f)
        name = f"restart-{kind}/{r}"
        subprocess.run(bb(src, "-q", "import", post, "--kind", "message", "--name", name), check=True)
        rows_ls = json.loads(subprocess.run(bb(src, "--json", "ls", "--kind", "message"),
                                            check=True, capture_output=True, text=True).stdout)
        oid = next(x["id"] for x in rows_ls if x["name"] == name)
        pat = re.compile(r"applied object=" + oid + r" created_at_ms=\d+ applied_at_ms=(\d+)")

        def applied():
            m = pat.search(read(slog))
            return int(m.group(1)) / 1000 if m else None
        t_applied = wait(f"post {name} on the standby", 180, alive_and(applied))
        reach = None
        if waiting is not None:
            if waiting.wait(timeout=180) != 0:
                fail(f"the waiting client failed (log: {clog})")
            t_conn = log_time(clog, r"connected peer=")
            if t_conn is None:
                fail(f"no `connected` line in {clog}")
            reach = t_conn - t_restart
        rows.append((t_printed - t_restart, reach, t_applied - t_printed))
        rr = "n/a" if reach is None else f"{reach:5.2f} s"
        print(f"  {kind:5} restart {r}: published {t_printed - t_restart:5.2f} s, "
              f"reachable {rr}, standby catch-up {t_applied - t_printed:5.2f} s", flush=True)
    stop(p)
    stop(sp)
    results[kind] = rows


def summary(rows, i):
    v = [x[i] for x in rows if x[i] is not None]
    if not v:
        return "n/a"
    v.sort()
    return f"{v[len(v) // 2]:.2f} s (max {v[-1]:.2f} s)"


print("RESULT")
labels = ["restart -> published (serve started -> address)",
          "restart -> reachable (serve started -> waiting client in)",
          "standby catch-up (address -> post applied)"]
for i, label in enumerate(labels):
    print(f"{label:54} {summary(results['onion'], i):>26} {summary(results['tcp'], i):>26}   goal 30 s")
PY
  die "the restart measurements failed (log: $LOGS/restarts.txt)"
sed -n '/^RESULT$/q;p' "$LOGS/restarts.txt"

log ""
log "== results (profile $PROFILE, $(nproc) CPUs, private Tor network on 127.0.0.1)"
printf '%-44s %10s\n' "serve --onion -> address, cold" "${COLD} s"
printf '%-44s %10s\n' "serve --onion -> address, warm (restart)" "${WARM} s"
printf '%-44s %10s %9s MB/s  (%s bytes, peak RSS %s MB)\n' "clone over Tor" "${TOR_SECS} s" \
  "$(fcalc '%.1f' 'b / 1e6 / s' "b=$TOR_BYTES" "s=$TOR_SECS")" "$TOR_BYTES" "$TOR_RSS"
printf '%-44s %10s %9s MB/s  (%s bytes)\n' "clone over loopback TCP" "${TCP_SECS} s" \
  "$(fcalc '%.1f' 'b / 1e6 / s' "b=$TCP_BYTES" "s=$TCP_SECS")" "$TCP_BYTES"
printf '%-44s %10s\n' "ratio Tor/TCP (wall time)" "$(fcalc '%.1f' 'a / b' "a=$TOR_SECS" "b=$TCP_SECS")x"
printf '\n%-54s %26s %26s\n' "restarts ($RESTARTS each; median, max)" "over Tor" "over loopback TCP"
sed -n '/^RESULT$/,$p' "$LOGS/restarts.txt" | tail -n +2
