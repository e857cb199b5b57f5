#!/usr/bin/env python3
"""A private Tor network on 127.0.0.1 for tests and benchmarks.

    tor-testnet.py up DIR [--relays N] [--owner PID] [--timeout SECS]
    tor-testnet.py down DIR

`up` builds, from Debian's `tor` and `tor-gencert`, 3 directory authorities
and N (default 4) relays listening on free loopback ports chosen now; starts
them; waits until the authorities' consensus lists every relay with the
HSDir flag (so onion services work); writes DIR/arti.toml, the matching arti
client configuration (pass it to bbsync with --tor-config); and exits 0.
Every tor gets `__OwningControllerProcess PID` (default: the caller, i.e.
this script's parent): tor exits on its own when that process is gone, so
nothing outlives a test even if `down` never runs. `down` stops the tors
recorded in DIR/pids.

DIR/arti.toml has no `storage` section: bbsync puts arti's state under its
own data dir (`<data>/tor/`).
"""

import argparse
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

AUTHORITIES = 3
VOTING_INTERVAL = 20  # seconds (V3AuthVotingInterval)
CBT_MIN_TIMEOUT_MS = 2000  # floor of arti's learned circuit timeouts


def free_ports(n):
    """n distinct free TCP ports on 127.0.0.1 (held open until all are chosen)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


COMMON = """TestingTorNetwork 1
DataDirectory {d}
Nickname {nick}
Address 127.0.0.1
ORPort 127.0.0.1:{orport}
DirPort 127.0.0.1:{dirport}
SocksPort 0
ControlPort 0
RunAsDaemon 0
Sandbox 0
Log notice file {d}/notice.log
ShutdownWaitLength 0
__OwningControllerProcess {owner}
AssumeReachable 1
PathsNeededToBuildCircuits 0.67
TestingDirAuthVoteExit *
TestingDirAuthVoteHSDir *
TestingDirAuthVoteGuard *
TestingMinExitFlagThreshold 0
V3AuthNIntervalsValid 2
ExitRelay 0
ExitPolicy reject *:*
ServerDNSDetectHijacking 0
ServerDNSTestAddresses
ServerDNSResolvConfFile /dev/null
"""

AUTHORITY = """AuthoritativeDirectory 1
V3AuthoritativeDirectory 1
V3AuthVotingInterval {interval}
V3AuthVoteDelay 4
V3AuthDistDelay 4
TestingV3AuthInitialVotingInterval 10
TestingV3AuthInitialVoteDelay 2
TestingV3AuthInitialDistDelay 2
"""


def consensus_ready(dirport, relays):
    url = f"http://127.0.0.1:{dirport}/tor/status-vote/current/consensus-microdesc"
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            text = r.read().decode("utf-8", "replace")
    except Exception:
        return False
    hsdirs = sum(1 for line in text.splitlines() if line.startswith("s ") and "HSDir" in line)
    return hsdirs >= relays


def up(args):
    top = os.path.abspath(args.dir)
    if os.path.exists(os.path.join(top, "pids")):
        sys.exit(f"error: {top} already holds a network (run `down` first)")
    os.makedirs(top, mode=0o700, exist_ok=True)
    owner = args.owner or os.getppid()
    n = AUTHORITIES + args.relays
    ports = free_ports(2 * n)
    nodes = []
    for i in range(n):
        auth = i < AUTHORITIES
        nick = f"auth{i}" if auth else f"relay{i - AUTHORITIES}"
        d = os.path.join(top, nick)
        os.makedirs(d, mode=0o700, exist_ok=True)
        nodes.append({"nick": nick, "dir": d, "auth": auth,
                      "orport": ports[i], "dirport": ports[n + i]})

    # Keys: authority identity/signing keys, then every node's fingerprints
    # (each step in parallel: RSA key generation is slow on a busy machine).
    gencert = []
    for node in nodes:
        if node["auth"]:
            d = node["dir"]
            keys = os.path.join(d, "keys")
            os.makedirs(keys, mode=0o700, exist_ok=True)
            p = subprocess.Popen(
                ["tor-gencert", "--create-identity-key", "--passphrase-fd", "0", "-m", "12",
                 "-a", f"127.0.0.1:{node['dirport']}",
                 "-i", os.path.join(keys, "authority_identity_key"),
                 "-s", os.path.join(keys, "authority_signing_key"),
                 "-c", os.path.join(keys, "authority_certificate")],
                stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                text=True, cwd=d)
            gencert.append(p)
            p.stdin.write("\n")
            p.stdin.close()
    for p in gencert:
        if p.wait() != 0:
            sys.exit(f"error: tor-gencert failed: {p.stderr.read().strip()}")
    listers = []
    for node in nodes:
        d = node["dir"]
        listers.append(subprocess.Popen(
            ["tor", "--ignore-missing-torrc", "-f", "/dev/null", "--orport", "1",
             "--datadirectory", d, "--list-fingerprint"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    for node, p in zip(nodes, listers):
        out = p.communicate()[0]
        if p.returncode != 0:
            sys.exit(f"error: tor --list-fingerprint failed: {out.strip()}")
        d = node["dir"]
        with open(os.path.join(d, "fingerprint")) as f:
            node["rsa"] = f.read().split()[1]
        with open(os.path.join(d, "fingerprint-ed25519")) as f:
            node["ed"] = f.read().split()[1]
        if node["auth"]:
            with open(os.path.join(d, "keys", "authority_certificate")) as f:
                for line in f:
                    if line.startswith("fingerprint "):
                        node["v3ident"] = line.split()[1]

    dirauth = "".join(
        f"DirAuthority {a['nick']} orport={a['orport']} no-v2 v3ident={a['v3ident']} "
        f"127.0.0.1:{a['dirport']} {a['rsa']}\n"
        for a in nodes if a["auth"])

    pids = []
    for node in nodes:
        torrc = os.path.join(node["dir"], "torrc")
        with open(torrc, "w") as f:
            f.write(COMMON.format(d=node["dir"], nick=node["nick"], orport=node["orport"],
                                  dirport=node["dirport"], owner=owner))
            if node["auth"]:
                f.write(AUTHORITY.format(interval=VOTING_INTERVAL))
            f.write(dirauth)
        p = subprocess.Popen(["tor", "-f", torrc], stdout=subprocess.DEVNULL,
                             stderr=open(os.path.join(node["dir"], "stderr.log"), "w"),
                             start_new_session=True)
        pids.append(p.pid)
    with open(os.path.join(top, "pids"), "w") as f:
        f.write("".join(f"{p}\n" for p in pids))

    # arti's view of this network.
    fallbacks = ",\n".join(
        f'    {{ rsa_identity = "{a["rsa"]}", ed_identity = "{a["ed"]}", '
        f'orports = ["127.0.0.1:{a["orport"]}"] }}'
        for a in nodes if a["auth"])
    v3idents = ", ".join(f'"{a["v3ident"]}"' for a in nodes if a["auth"])
    with open(os.path.join(top, "arti.toml"), "w") as f:
        f.write(f"""# arti client configuration for the private Tor network in {top}
# (written by scripts/tor-testnet.py; use with bbsync --tor-config).

[tor_network]
fallback_caches = [
{fallbacks}
]

[tor_network.authorities]
v3idents = [{v3idents}]

[path_rules]
# Every relay is on 127.0.0.1: turn off the same-subnet family rule.
ipv4_subnet_family_prefix = 33
ipv6_subnet_family_prefix = 129

[address_filter]
allow_local_addrs = true

[override_net_params]
# C tor's test networks use a short HSDir period without announcing it
# (24 voting intervals, in minutes).
hsdir_interval = {24 * VOTING_INTERVAL // 60}
# arti learns its circuit timeouts from the circuits it builds; on loopback
# they build in milliseconds, so after 100 circuits (a node that
# restarts keeps them in its state dir) a descriptor fetch times out after
# ~100 ms, and a machine busy with other work misses that again and again
# (a restarted onion service then took 30-70 s to be found). The floor
# makes this network behave like a fast real one.
cbtmintimeout = {CBT_MIN_TIMEOUT_MS}

[storage.permissions]
# Test directories live under /tmp, often as root.
dangerously_trust_everyone = true
""")

    started = time.time()
    relays = len(nodes)
    while not consensus_ready(nodes[0]["dirport"], relays):
        for node, pid in zip(nodes, pids):
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                down_dir(top)
                log = os.path.join(node["dir"], "notice.log")
                sys.exit(f"error: tor {node['nick']} exited; see {log}")
        if time.time() - started > args.timeout:
            down_dir(top)
            sys.exit(f"error: no consensus with {relays} HSDirs after {args.timeout} s; see {top}/*/notice.log")
        time.sleep(0.5)
    print(f"tor test network up in {time.time() - started:.1f} s: {AUTHORITIES} authorities, "
          f"{args.relays} relays; arti config {top}/arti.toml", file=sys.stderr)
    print(os.path.join(top, "arti.toml"))


def down_dir(top):
    path = os.path.join(top, "pids")
    try:
        with open(path) as f:
            pids = [int(x) for x in f.read().split()]
    except FileNotFoundError:
        return
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.time() + 10
    for pid in pids:
        while time.time() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            # Reap it if it is our child (it is not after `up` exited).
            try:
                os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                pass
            time.sleep(0.1)
        else:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    os.remove(path)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    u = sub.add_parser("up", help="start a network in DIR")
    u.add_argument("dir")
    u.add_argument("--relays", type=int, default=4)
    u.add_argument("--owner", type=int, default=0,
                   help="tor exits when this process does (default: the caller)")
    u.add_argument("--timeout", type=int, default=120)
    d = sub.add_parser("down", help="stop the network in DIR")
    d.add_argument("dir")
    args = ap.parse_args()
    if args.cmd == "up":
        if args.relays < 4:
            sys.exit("error: at least 4 relays (onion services need HSDirs and paths)")
        up(args)
    else:
        down_dir(os.path.abspath(args.dir))


if __name__ == "__main__":
    main()
