# shellcheck shell=bash
# Shared helpers for scripts/demo.sh and scripts/bench-store.sh.
# Source it (after `set -euo pipefail` and setting PROG); do not run it.
#
# Provides:
#   log / warn / die         messages (die: one line to stderr, exit 1)
#   show_cmd CMD...          prints "+ CMD ..." with shell quoting
#   ROOT                     repository root (the directory above scripts/)
#   ensure_cmd CMD PKG       installs PKG with apt-get if CMD is missing (root only)
#   ensure_gnu_time          makes sure /usr/bin/time -v works (package "time")
#   find_bbsync              sets BBSYNC: $BBSYNC_BIN, or builds the release binary
#   make_workdir PREFIX      sets WORKDIR to a fresh temp dir, removed at exit unless KEEP=1
#   tree_files DIR / tree_bytes DIR   regular-file count / sum of file sizes under DIR

BBSYNC_SCRIPTS_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PROG="${PROG:-$(basename "$0")}"

log() { printf '%s\n' "$*"; }
warn() { printf '%s: warning: %s\n' "$PROG" "$*" >&2; }
die() {
  printf '%s: error: %s\n' "$PROG" "$*" >&2
  exit 1
}

show_cmd() {
  local out="+" arg
  for arg in "$@"; do
    # Plain words as they are, anything else shell-quoted.
    if [[ "$arg" =~ ^[A-Za-z0-9_./:=@%+,-]+$ ]]; then
      out+=" $arg"
    else
      out+=" $(printf '%q' "$arg")"
    fi
  done
  printf '%s\n' "$out"
}

# Repository root: the parent of scripts/, or git's idea of it.
repo_root() {
  local dir
  dir="$(cd "$BBSYNC_SCRIPTS_DIR/.." && pwd)"
  if [ -f "$dir/Cargo.toml" ]; then
    printf '%s\n' "$dir"
  elif dir="$(git -C "$BBSYNC_SCRIPTS_DIR" rev-parse --show-toplevel 2>/dev/null)"; then
    printf '%s\n' "$dir"
  else
    return 1
  fi
}
ROOT="$(repo_root)" || die "cannot find the repository root above $BBSYNC_SCRIPTS_DIR"

APT_UPDATED=0
apt_install() {
  [ "$(id -u)" -eq 0 ] || die "missing packages: $* (not root: install them with apt-get first)"
  command -v apt-get >/dev/null 2>&1 || die "missing packages: $* (and no apt-get to install them)"
  if [ "$APT_UPDATED" -eq 0 ]; then
    show_cmd apt-get update
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null || die "apt-get update failed"
    APT_UPDATED=1
  fi
  show_cmd apt-get install -y "$@"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null ||
    die "apt-get install $* failed"
}

# ensure_cmd CMD PKG: install PKG if CMD is not on PATH.
ensure_cmd() {
  command -v "$1" >/dev/null 2>&1 && return 0
  apt_install "$2"
  command -v "$1" >/dev/null 2>&1 || die "$1 still missing after installing $2"
}

# GNU time with -v (busybox or the shell keyword do not report peak RSS).
ensure_gnu_time() {
  if ! { [ -x /usr/bin/time ] && /usr/bin/time -v true >/dev/null 2>&1; }; then
    apt_install time
    /usr/bin/time -v true >/dev/null 2>&1 || die "/usr/bin/time -v does not work after installing time"
  fi
}

# Sets BBSYNC to the bbsync binary: $BBSYNC_BIN if set, else a release build
# of this checkout (cargo build --release -p bbsync --locked).
find_bbsync() {
  if [ -n "${BBSYNC_BIN:-}" ]; then
    BBSYNC="$BBSYNC_BIN"
    if [[ "$BBSYNC" != */* ]]; then
      BBSYNC="$(command -v "$BBSYNC")" || die "BBSYNC_BIN=$BBSYNC_BIN: not found on PATH"
    fi
    if [ ! -f "$BBSYNC" ] || [ ! -x "$BBSYNC" ]; then
      die "BBSYNC_BIN=$BBSYNC_BIN is not an executable file"
    fi
    log "using BBSYNC_BIN=$BBSYNC (not building)"
    return 0
  fi
  command -v cargo >/dev/null 2>&1 || die "cargo not found: install Rust (rustup), or set BBSYNC_BIN"
  show_cmd cargo build --release -p bbsync --locked
  (cd "$ROOT" && cargo build --release -p bbsync --locked) || die "cargo build failed"
  local target="${CARGO_TARGET_DIR:-$ROOT/target}"
  case "$target" in
    /*) ;;
    *) target="$ROOT/$target" ;;
  esac
  BBSYNC="$target/release/bbsync"
  [ -x "$BBSYNC" ] || die "build succeeded but $BBSYNC is missing"
}

# make_workdir PREFIX [PARENT]: sets WORKDIR to a new empty directory
# (PARENT defaults to $TMPDIR or /tmp), removed at exit unless KEEP=1.
make_workdir() {
  local parent="${2:-${TMPDIR:-/tmp}}"
  mkdir -p -- "$parent" || die "cannot create $parent"
  WORKDIR="$(mktemp -d "$parent/$1.XXXXXX")" || die "mktemp in $parent failed"
  trap cleanup_workdir EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
}

cleanup_workdir() {
  [ -n "${WORKDIR:-}" ] && [ -d "$WORKDIR" ] || return 0
  if [ "${KEEP:-0}" = 1 ]; then
    log "KEEP=1: work files kept in $WORKDIR"
  else
    rm -rf -- "$WORKDIR"
  fi
}

tree_files() { find "$1" -type f -printf . | wc -c | tr -d ' '; }
tree_bytes() { find "$1" -type f -printf '%s\n' | awk '{ s += $1 } END { printf "%d\n", s }'; }

# fcalc FORMAT EXPR [VAR=VALUE...]: floating-point arithmetic with awk.
fcalc() {
  local fmt="$1" expr="$2"
  shift 2
  local args=() kv
  for kv in "$@"; do args+=(-v "$kv"); done
  awk "${args[@]}" "BEGIN { printf \"$fmt\", ($expr) }"
}

# mbps BYTES SECONDS: MB/s with MB = 10^6 bytes.
mbps() { fcalc '%.0f' 'b / 1e6 / (s > 0.01 ? s : 0.01)' "b=$1" "s=$2"; }

# timed NAME CMD...: runs CMD under /usr/bin/time -v with output in $LOGS
# (which the caller sets);
# sets SECS (wall clock), RSS_MB (peak resident set, MB = 10^6 bytes), LOAD
# (1-minute load average as the step started) and appends "NAME LOAD" to LOADS.
timed() {
  # Start every step with nothing left to write back from the step before
  # (bbsync's syncfs would otherwise wait for the generator's or restic's
  # dirty pages), then drop nothing: the tree stays in the page cache.
  sync
  local name="$1"
  shift
  # The 1-minute load average as the step starts (other work on the machine).
  LOAD="$(cut -d' ' -f1 /proc/loadavg 2>/dev/null || echo '?')"
  LOADS="${LOADS:+$LOADS, }$name $LOAD"
  show_cmd "$@"
  # shellcheck disable=SC2153 # LOGS is set by the calling script
  if ! /usr/bin/time -v -o "$LOGS/$name.time" "$@" >"$LOGS/$name.out" 2>"$LOGS/$name.err"; then
    tail -n 20 "$LOGS/$name.err" >&2
    grep -E 'exited|terminated' "$LOGS/$name.time" >&2 || true
    die "step '$name' failed (logs: $LOGS/$name.*; run with KEEP=1 to keep them)"
  fi
  SECS="$(awk -F': ' '/Elapsed \(wall clock\)/ {
      n = split($NF, a, ":"); s = 0; for (i = 1; i <= n; i++) s = s * 60 + a[i]; printf "%.2f", s }' \
    "$LOGS/$name.time")"
  local rss_kb
  rss_kb="$(awk -F': ' '/Maximum resident set size/ { print $NF }' "$LOGS/$name.time")"
  if [ -z "$SECS" ] || [ -z "$rss_kb" ]; then die "cannot parse $LOGS/$name.time"; fi
  RSS_MB="$(fcalc '%.0f' 'k * 1024 / 1e6' "k=$rss_kb")"
  if [ -s "$LOGS/$name.out" ]; then
    tail -n 5 "$LOGS/$name.out" | sed 's/^/    | /'
  fi
  log "    -> ${SECS} s, peak RSS ${RSS_MB} MB (load average ${LOAD} at the start)"
}

# start_serve DATA LOGDIR: starts `bbsync serve` for DATA on 127.0.0.1 (a
# free port) in the background and waits for the address it prints; sets
# SERVER_PID and SERVE_ADDR. The caller stops it (kill "$SERVER_PID").
start_serve() {
  local data="$1" logs="$2"
  "$BBSYNC" --data-dir "$data" --no-progress serve --listen /ip4/127.0.0.1/tcp/0 \
    >"$logs/serve.out" 2>"$logs/serve.log" &
  # shellcheck disable=SC2034 # read by the calling script
  SERVER_PID=$!
  SERVE_ADDR=""
  for _ in $(seq 1 100); do
    SERVE_ADDR="$(head -n 1 "$logs/serve.out" 2>/dev/null || true)"
    [ -n "$SERVE_ADDR" ] && break
    sleep 0.1
  done
  [ -n "$SERVE_ADDR" ] || die "serve printed no address (log: $logs/serve.log)"
}

# start_rsyncd TREE LOGDIR: starts an rsync daemon on 127.0.0.1 (a free
# port) serving TREE read-only as module `bbs`, in the background; sets
# RSYNCD_PID and PORT. The daemon reads the tree as the user running the
# script: started by root, rsync would otherwise switch to `nobody`, who
# cannot read the tree in an owner-only work dir. The caller stops it.
start_rsyncd() {
  local tree="$1" logs="$2"
  PORT="$(free_port)"
  cat >"$WORKDIR/rsyncd.conf" <<CONF
use chroot = no
uid = $(id -u)
gid = $(id -g)
[bbs]
    path = $tree
    read only = yes
CONF
  rsync --daemon --no-detach --address=127.0.0.1 --port="$PORT" --config="$WORKDIR/rsyncd.conf" \
    --log-file="$logs/rsyncd.log" &
  # shellcheck disable=SC2034 # read by the calling script
  RSYNCD_PID=$!
  sleep 0.5
}
