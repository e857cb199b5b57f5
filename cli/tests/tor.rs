//! Tor end to end, on a private Tor network on 127.0.0.1
//! (`scripts/tor-testnet.py`, brought up once for this test binary): a
//! source that serves only as an onion service is cloned by its onion
//! address; an untrusted node is denied; a dial that starts while the
//! service is down succeeds after retries; the onion address survives a
//! restart; fetch-missing and follow work over the onion address; a
//! standby follows an onion-only primary through three restarts, with a
//! post after each; an invite made by an onion-only node is redeemed over
//! Tor by a new node. Also the address errors, which need no network.
//!
//! Without `tor` installed these tests skip (with a message), unless
//! `BBSYNC_REQUIRE_TOR=1`.

#![allow(clippy::unwrap_used)]

mod common;

use std::{
    io::BufRead as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use bbsync_tests::tor_net;
use common::*;

/// A valid onion v3 address that no one serves on the private network.
const NOBODY: &str = "2gzyxa5ihm7nsggfxnu52rck2vv4rvmdlkiu3zzui5du4xyclen53wid";
const PEER: &str = "12D3KooWD3eckifWpRn9wQpMG9R9hX3sD158z7EqHWmweQAJU5SA";

fn gen_small(dir: &Path, seed: u32) {
    gen_bbs(dir, "small", seed);
}

/// `bbsync --json --tor-config ARTI ARGS...` that must succeed.
fn tor_json(data: &Path, arti: &Path, args: &[&str]) -> serde_json::Value {
    let mut all = vec!["--json", "--tor-config", arti.to_str().unwrap()];
    all.extend_from_slice(args);
    let out = ok(data, &all);
    serde_json::from_str(&out).unwrap()
}

/// Starts `bbsync serve --onion` (no TCP listener) and waits for the onion
/// address it prints once its service is published. Its log goes to
/// `<data>.serve.log`.
fn serve_onion(data: &Path, arti: &Path, extra: &[&str]) -> (Server, Duration) {
    let log = std::fs::File::create(data.with_extension("serve.log")).unwrap();
    let started = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_bbsync"))
        .arg("--no-progress")
        .arg("--data-dir")
        .arg(data)
        .arg("--tor-config")
        .arg(arti)
        .args(["-v", "serve", "--onion"])
        .args(extra)
        .env_remove("BBSYNC_DATA")
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let addr = lines.next().map(Result::unwrap).unwrap_or_default();
    let took = started.elapsed();
    assert!(
        addr.starts_with("/onion3/") && addr.contains("/p2p/12D3"),
        "serve --onion printed {addr:?}; log: {}",
        std::fs::read_to_string(data.with_extension("serve.log")).unwrap_or_default()
    );
    // Keep reading stdout in the background so that the pipe never fills.
    std::thread::spawn(move || for _ in lines {});
    (Server { child, addr }, took)
}

/// The TCP ports process `pid` listens on (from /proc: its socket inodes
/// against the LISTEN rows of /proc/net/tcp and tcp6).
fn listening_tcp_ports(pid: u32) -> Vec<u16> {
    let inodes: std::collections::BTreeSet<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .filter_map(|l| {
            let l = l.to_string_lossy().into_owned();
            l.strip_prefix("socket:[")?
                .strip_suffix(']')
                .map(String::from)
        })
        .collect();
    let mut ports = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for row in text.lines().skip(1) {
            let f: Vec<&str> = row.split_whitespace().collect();
            if f.len() > 9 && f[3] == "0A" && inodes.contains(f[9]) {
                let port = f[1].rsplit(':').next().unwrap();
                ports.push(u16::from_str_radix(port, 16).unwrap());
            }
        }
    }
    ports
}

fn net() -> Option<&'static tor_net::TorNet> {
    tor_net::shared()
}

fn node(tmp: &Path, name: &str) -> PathBuf {
    let d = tmp.join(name);
    init(&d, name);
    d
}

#[test]
fn an_onion_only_source_is_cloned_by_its_onion_address() -> TestResult {
    let Some(net) = net() else { return Ok(()) };
    let arti = net.arti_toml();
    let tmp = tempfile::tempdir()?;
    let tree = tmp.path().join("tree");
    gen_small(&tree, 7);
    let src = node(tmp.path(), "src");
    let dst = node(tmp.path(), "dst");
    ok(&src, &["import-bbs", tree.to_str().unwrap()]);
    ok(&src, &["trust", "add", &card(&dst), "--role", "full"]);
    let (server, took) = serve_onion(&src, arti, &["--onion-port", "4321"]);
    eprintln!("serve --onion printed its address after {took:?}");
    assert!(server.addr.contains(":4321/p2p/"), "{}", server.addr);
    // Only the onion service: the node listens on no TCP port.
    assert_eq!(listening_tcp_ports(server.child.id()), Vec::<u16>::new());
    // arti keeps its state (the service keys) in the data dir.
    assert!(src.join("tor/state").is_dir());

    let started = Instant::now();
    let report = tor_json(&dst, arti, &["clone", &server.addr]);
    eprintln!("clone over Tor took {:?}: {report}", started.elapsed());
    assert_eq!(report["complete"], true, "{report}");
    assert!(report["chunks_fetched"].as_u64().unwrap() > 0);
    let out = tmp.path().join("out");
    ok(&dst, &["export-bbs", out.to_str().unwrap()]);
    assert_same_tree(&tree, &out);

    // fetch-missing over the onion address brings lost chunks back
    // (the tor config from the environment this time).
    let lost: Vec<PathBuf> = real_chunks(&dst).into_iter().take(5).collect();
    assert_eq!(lost.len(), 5);
    lose_chunks(&dst, &lost);
    let o = bbsync(&dst)
        .env("BBSYNC_TOR_CONFIG", arti)
        .args(["--json", "fetch-missing", "--from", &server.addr])
        .output()?;
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let fetched: serde_json::Value = serde_json::from_slice(&o.stdout)?;
    assert_eq!(fetched["chunks_fetched"], 5, "{fetched}");
    assert_eq!(fetched["still_missing"], 0, "{fetched}");
    let (code, v) = verify(&dst, &["--read-data"]);
    assert_eq!(code, 0, "{v}");
    server.stop();
    Ok(())
}

#[test]
fn an_untrusted_node_dialing_the_onion_is_denied_and_holds_nothing() -> TestResult {
    let Some(net) = net() else { return Ok(()) };
    let arti = net.arti_toml();
    let tmp = tempfile::tempdir()?;
    let tree = tmp.path().join("tree");
    mini_bbs(&tree);
    let src = node(tmp.path(), "src");
    let stranger = node(tmp.path(), "stranger");
    ok(&src, &["import-bbs", tree.to_str().unwrap()]);
    let (server, _) = serve_onion(&src, arti, &[]);
    let o = run(
        &stranger,
        &[
            "--tor-config",
            arti.to_str().unwrap(),
            "clone",
            &server.addr,
        ],
    );
    let line = assert_one_line_error(&o, "untrusted clone over Tor");
    assert_mentions(&line, &["denied"]);
    assert!(real_chunks(&stranger).is_empty());
    assert_eq!(json(&stranger, &["ls", "--all"]), serde_json::json!([]));
    server.stop();
    Ok(())
}

#[test]
fn the_onion_address_is_stable_and_a_dial_before_publication_retries() -> TestResult {
    let Some(net) = net() else { return Ok(()) };
    let arti = net.arti_toml();
    let tmp = tempfile::tempdir()?;
    let tree = tmp.path().join("tree");
    mini_bbs(&tree);
    let src = node(tmp.path(), "src");
    let dst = node(tmp.path(), "dst");
    ok(&src, &["import-bbs", tree.to_str().unwrap()]);
    ok(&src, &["trust", "add", &card(&dst), "--role", "full"]);
    let (first, _) = serve_onion(&src, arti, &[]);
    let addr = first.addr.clone();
    first.stop();

    // The clone starts while no service is running: its dials fail until
    // the restarted service has published a new descriptor.
    let clone_log = tmp.path().join("clone.log");
    let clone = Command::new(env!("CARGO_BIN_EXE_bbsync"))
        .arg("--no-progress")
        .arg("--data-dir")
        .arg(&dst)
        .arg("--tor-config")
        .arg(arti)
        .args(["-v", "--json", "clone", &addr])
        .env_remove("BBSYNC_DATA")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&clone_log)?)
        .spawn()?;
    // Restart the service only once the clone's first attempt has failed
    // (or hung long enough for a fresh attempt beside it): the dial really
    // began while nothing was serving.
    wait_for(120, "the clone's first attempt to fail", || {
        std::fs::read_to_string(&clone_log).is_ok_and(|l| l.contains("retrying in"))
    });
    let (second, took) = serve_onion(&src, arti, &[]);
    let published = Instant::now();
    eprintln!("restarted serve --onion printed its address after {took:?}");
    assert!(
        took < Duration::from_secs(60),
        "the restarted service printed its address after {took:?}; log: {}",
        std::fs::read_to_string(src.with_extension("serve.log")).unwrap_or_default()
    );
    assert_eq!(second.addr, addr, "the onion address changed on restart");
    let out = clone.wait_with_output()?;
    eprintln!(
        "the waiting clone finished {:?} after the restarted service printed its address",
        published.elapsed()
    );
    let log = std::fs::read_to_string(&clone_log)?;
    assert!(out.status.success(), "clone failed: {log}");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(report["complete"], true, "{report}");
    assert!(
        log.contains("retrying in"),
        "the first dial should have failed and been retried: {log}"
    );
    let out_dir = tmp.path().join("out");
    ok(&dst, &["export-bbs", out_dir.to_str().unwrap()]);
    assert_same_tree(&tree, &out_dir);
    second.stop();
    Ok(())
}

#[test]
fn a_standby_follows_an_onion_upstream() -> TestResult {
    let Some(net) = net() else { return Ok(()) };
    let arti = net.arti_toml();
    let tmp = tempfile::tempdir()?;
    let tree = tmp.path().join("tree");
    mini_bbs(&tree);
    let src = node(tmp.path(), "src");
    let standby = node(tmp.path(), "standby");
    ok(&src, &["import-bbs", tree.to_str().unwrap()]);
    ok(&src, &["trust", "add", &card(&standby), "--role", "full"]);
    let (server, _) = serve_onion(&src, arti, &[]);
    // The standby listens on TCP only and follows over Tor (the tor
    // config from the environment).
    let mut child = Command::new(env!("CARGO_BIN_EXE_bbsync"))
        .arg("--no-progress")
        .arg("--data-dir")
        .arg(&standby)
        .args([
            "serve",
            "--listen",
            "/ip4/127.0.0.1/tcp/0",
            "--follow",
            &server.addr,
        ])
        .env("BBSYNC_TOR_CONFIG", arti)
        .env_remove("BBSYNC_DATA")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    // Commands reach the running node through its control socket.
    wait_for(30, "the standby's control socket", || {
        standby.join("control.sock").exists()
    });
    let has = |name: &str| ls_row(&standby, "message", name).is_some();
    wait_for(120, "the standby to catch up over Tor", || has("general/2"));
    // A post written on the source while the standby follows arrives.
    write(
        &tree.join("boards/general/77.json"),
        "{\"id\":77,\"body\":\"over tor\"}",
    );
    ok(&src, &["import-bbs", tree.to_str().unwrap()]);
    wait_for(60, "the new post to reach the standby", || {
        has("general/77")
    });
    let _ = child.kill();
    let _ = child.wait();
    server.stop();
    Ok(())
}

/// The operator's drill: a standby follows a primary that serves only as
/// an onion service; the primary restarts three times and a post is made
/// after each restart; every post reaches the standby. The standby notices
/// each restart by its connection closing and dials while the primary is
/// down, so each round also covers a dial that began before publication.
/// Each round prints restart -> address printed and address -> post on
/// the standby (goals: 30 s each; the deadlines here are twice that).
#[test]
fn a_standby_follows_an_onion_only_primary_through_three_restarts() -> TestResult {
    let Some(net) = net() else { return Ok(()) };
    let arti = net.arti_toml();
    let tmp = tempfile::tempdir()?;
    let tree = tmp.path().join("tree");
    mini_bbs(&tree);
    let primary = node(tmp.path(), "primary");
    let standby = node(tmp.path(), "standby");
    ok(&primary, &["import-bbs", tree.to_str().unwrap()]);
    ok(
        &primary,
        &["trust", "add", &card(&standby), "--role", "full"],
    );
    let (mut server, _) = serve_onion(&primary, arti, &[]);
    let addr = server.addr.clone();
    let standby_log = tmp.path().join("standby.log");
    // In a `Server`, so that a failing test does not leave it running.
    let follower = Server {
        child: Command::new(env!("CARGO_BIN_EXE_bbsync"))
            .arg("--no-progress")
            .arg("--data-dir")
            .arg(&standby)
            .arg("--tor-config")
            .arg(arti)
            .args([
                "-v",
                "serve",
                "--listen",
                "/ip4/127.0.0.1/tcp/0",
                "--follow",
                &addr,
            ])
            .env_remove("BBSYNC_DATA")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&standby_log)?)
            .spawn()?,
        addr: String::new(),
    };
    // Applied: the manifest recorded and every chunk fetched.
    let has = |name: &str| ls_row(&standby, "message", name).is_some_and(|r| r["state"] == "ok");
    let log = || std::fs::read_to_string(&standby_log).unwrap_or_default();
    wait_for(30, "the standby's control socket", || {
        standby.join("control.sock").exists()
    });
    wait_for(120, "the standby to catch up over Tor", || has("general/2"));
    for round in 1..=3u32 {
        let restarted = Instant::now();
        server.stop();
        let (next, _) = serve_onion(&primary, arti, &[]);
        let took = restarted.elapsed();
        server = next;
        assert_eq!(server.addr, addr, "the onion address changed on restart");
        assert!(
            took < Duration::from_secs(60),
            "round {round}: the restarted primary printed its address after {took:?}"
        );
        let published = Instant::now();
        let id = 1000 + round;
        write(
            &tree.join(format!("boards/general/{id}.json")),
            format!("{{\"id\":{id},\"body\":\"after restart {round}\"}}"),
        );
        ok(&primary, &["import-bbs", tree.to_str().unwrap()]);
        let post = format!("general/{id}");
        let deadline = published + Duration::from_secs(60);
        while !has(&post) {
            assert!(
                Instant::now() < deadline,
                "round {round}: post {post} not on the standby 60 s after the primary \
                 printed its address; standby log:\n{}",
                log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        eprintln!(
            "restart {round}: address printed {:.1} s after the restart began, \
             post on the standby {:.1} s after that",
            took.as_secs_f64(),
            published.elapsed().as_secs_f64()
        );
    }
    // A clean stop (SIGTERM) like an operator's: `ls` above reads the live
    // database, which may hold the last completion a moment before it is
    // flushed; a kill -9 then leaves that page to be fetched again on the
    // next start (its cursor was not advanced either).
    follower.stop();
    server.stop();
    // Nothing was lost on the way: the standby holds the whole tree.
    let out = tmp.path().join("out");
    ok(&standby, &["export-bbs", out.to_str().unwrap()]);
    assert_same_tree(&tree, &out);
    Ok(())
}

#[test]
fn an_unreachable_onion_fails_after_the_retry_budget() -> TestResult {
    let Some(net) = net() else { return Ok(()) };
    let arti = net.arti_toml();
    let tmp = tempfile::tempdir()?;
    let dst = node(tmp.path(), "dst");
    let before = snapshot(&dst);
    let started = Instant::now();
    let o = run(
        &dst,
        &[
            "--tor-config",
            arti.to_str().unwrap(),
            "--tor-dial-budget",
            "6",
            "clone",
            &format!("/onion3/{NOBODY}:4040/p2p/{PEER}"),
        ],
    );
    let line = assert_one_line_error(&o, "clone of an onion no one serves");
    assert_mentions(&line, &[NOBODY, "unreachable after", "attempt"]);
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(snapshot(&dst), before);
    Ok(())
}

/// Malformed onion addresses: one clear line, nothing written, and no
/// Tor network needed to tell.
#[test]
fn malformed_onion_addresses_are_refused_with_a_reason() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let dst = node(tmp.path(), "dst");
    let before = snapshot(&dst);
    let mut typo: Vec<char> = NOBODY.chars().collect();
    typo[5] = if typo[5] == 'a' { 'b' } else { 'a' };
    let typo: String = typo.into_iter().collect();
    let cases = [
        (
            format!("/onion3/{}:4040/p2p/{PEER}", &NOBODY[..50]),
            "56 characters",
        ),
        (format!("/onion3/{typo}:4040/p2p/{PEER}"), "checksum"),
        (format!("/onion3/{NOBODY}/p2p/{PEER}"), "port"),
        (format!("/onion3/{NOBODY}:0/p2p/{PEER}"), "port"),
        (format!("/onion/aaimaq4ygg2iegci:80/p2p/{PEER}"), "v2"),
        (format!("/onion3/{NOBODY}:4040"), "/p2p/"),
    ];
    for (addr, why) in &cases {
        let line = fail(&dst, &["clone", addr]);
        assert_mentions(&line, &[why]);
        let line = fail(&dst, &["fetch-missing", "--from", addr]);
        assert_mentions(&line, &[why]);
    }
    // A version byte other than 3, with a checksum that fits it.
    let line = fail(
        &dst,
        &["clone", &format!("/onion3/{}:80/p2p/{PEER}", v4_address())],
    );
    assert_mentions(&line, &["version 4"]);
    // serve does not take an onion address for --listen.
    let o = run(
        &dst,
        &["serve", "--listen", &format!("/onion3/{NOBODY}:80")],
    );
    assert_mentions(
        &assert_one_line_error(&o, "serve --listen onion"),
        &["--onion"],
    );
    assert_eq!(snapshot(&dst), before);
    Ok(())
}

/// An onion address whose version byte is 4 (the version is checked
/// before the checksum).
fn v4_address() -> String {
    let mut bytes = data_encoding::BASE32_NOPAD
        .decode(NOBODY.to_ascii_uppercase().as_bytes())
        .unwrap();
    bytes[34] = 4;
    data_encoding::BASE32_NOPAD
        .encode(&bytes)
        .to_ascii_lowercase()
}

#[test]
fn an_invite_is_redeemed_over_the_onion_service() -> TestResult {
    let Some(net) = net() else { return Ok(()) };
    let arti = net.arti_toml();
    let tmp = tempfile::tempdir()?;
    let tree = tmp.path().join("tree");
    mini_bbs(&tree);
    let src = node(tmp.path(), "src");
    ok(&src, &["import-bbs", tree.to_str().unwrap()]);
    let (server, _) = serve_onion(&src, arti, &[]);
    // Made through the control socket: the invite names the onion address
    // (the node serves nothing else).
    let v = json(&src, &["invite", "create", "--name", "tor mirror"]);
    let (onion, _) = server.addr.rsplit_once("/p2p/").unwrap();
    assert_eq!(v["addresses"], serde_json::json!([onion]), "{v}");
    let invite = v["invite"].as_str().unwrap();
    // A node that does not exist yet redeems it over Tor and clones.
    let dst = tmp.path().join("dst");
    let report = tor_json(&dst, arti, &["clone", invite, "--name", "dst"]);
    assert_eq!(report["complete"], true, "{report}");
    assert_eq!(report["invite_role"], "full", "{report}");
    let out = tmp.path().join("out");
    ok(&dst, &["export-bbs", out.to_str().unwrap()]);
    assert_same_tree(&tree, &out);
    let trusted = json(&src, &["trust", "list"]);
    assert_eq!(trusted.as_array().unwrap().len(), 1, "{trusted}");
    assert_eq!(trusted[0]["name"], "dst");
    assert_eq!(trusted[0]["role"], "full");
    assert_eq!(json(&src, &["invite", "list"])[0]["used"], 1);
    server.stop();
    Ok(())
}
