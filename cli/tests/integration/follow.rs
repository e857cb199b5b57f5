//! Standby nodes between real `bbsync serve` processes on 127.0.0.1: a
//! follower applies the primary's changes as they happen, survives its own
//! restart (kill -9), the primary's restart and the cut connection that
//! comes with it, works in chains and fan-out, and two writers converge.
//! Each scenario ends with identical exports.

#![allow(clippy::unwrap_used)]

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use crate::common::*;

/// (kind, name) -> (version, manifest id) of the live objects.
fn versions(data: &Path) -> BTreeMap<(String, String), (u64, String)> {
    json(data, &["ls"])
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["state"] == "ok")
        .map(|r| {
            (
                (
                    r["kind"].as_str().unwrap().to_string(),
                    r["name"].as_str().unwrap().to_string(),
                ),
                (
                    r["version"].as_u64().unwrap(),
                    r["manifest_id"].as_str().unwrap().to_string(),
                ),
            )
        })
        .collect()
}

fn converged(a: &Path, b: &Path) -> bool {
    let va = versions(a);
    !va.is_empty() && va == versions(b)
}

fn export(data: &Path, to: PathBuf) -> PathBuf {
    ok(data, &["export-bbs", to.to_str().unwrap()]);
    to
}

fn node(tmp: &Path, name: &str) -> PathBuf {
    let d = tmp.join(name);
    init(&d, name);
    d
}

fn trust(on: &Path, whom: &Path) {
    ok(on, &["trust", "add", &card(whom), "--role", "full"]);
}

fn listen_on(port: u16) -> String {
    format!("/ip4/127.0.0.1/tcp/{port}")
}

#[test]
fn a_standby_follows_through_restarts_of_both_sides() -> TestResult {
    let tmp = bbsync_tests::tempdir()?;
    let tree = tmp.path().join("tree");
    mini_bbs(&tree);
    let a = node(tmp.path(), "primary");
    let b = node(tmp.path(), "standby");
    trust(&a, &b);
    let port = free_port();
    let primary = serve_with(&a, &["--listen", &listen_on(port)]);
    let standby = serve_with(
        &b,
        &[
            "--listen",
            "/ip4/127.0.0.1/tcp/0",
            "--follow",
            &primary.addr,
        ],
    );

    // Everything imported on the primary (while it serves) reaches the standby.
    ok(&a, &["import-bbs", tree.to_str().unwrap()]);
    wait_for(20, "the first import on the standby", || converged(&a, &b));
    let st = json(&b, &["status"]);
    let up = &st["upstreams"][0];
    assert_eq!(up["state"], "following", "{st}");
    assert!(up["cursor"].as_u64().unwrap() > 0, "{st}");

    // A new post arrives.
    write(
        &tree.join("boards/general/3.json"),
        "{\"id\":3,\"body\":\"live\"}\n",
    );
    ok(&a, &["import-bbs", tree.to_str().unwrap()]);
    wait_for(10, "a new post on the standby", || converged(&a, &b));

    // The standby is killed; posts written meanwhile arrive after its restart.
    let mut standby = standby;
    standby.child.kill()?;
    standby.child.wait()?;
    write(
        &tree.join("boards/general/4.json"),
        "{\"id\":4,\"body\":\"while down\"}\n",
    );
    std::fs::remove_file(tree.join("boards/general/1.json"))?;
    ok(&a, &["import-bbs", tree.to_str().unwrap()]);
    wait_unlocked(&b);
    let standby = serve_with(
        &b,
        &[
            "--listen",
            "/ip4/127.0.0.1/tcp/0",
            "--follow",
            &primary.addr,
        ],
    );
    wait_for(20, "catching up after a standby restart", || {
        converged(&a, &b)
    });

    // The primary restarts (the standby's connection is cut); the standby
    // reconnects by itself and goes on.
    assert!(primary.stop().success());
    write(
        &tree.join("boards/general/5.json"),
        "{\"id\":5,\"body\":\"offline\"}\n",
    );
    ok(&a, &["import-bbs", tree.to_str().unwrap()]);
    let primary = serve_with(&a, &["--listen", &listen_on(port)]);
    write(
        &tree.join("boards/general/6.json"),
        "{\"id\":6,\"body\":\"back\"}\n",
    );
    ok(&a, &["import-bbs", tree.to_str().unwrap()]);
    wait_for(40, "catching up after a primary restart", || {
        converged(&a, &b)
    });

    let (code, v) = verify(&b, &["--read-data"]);
    assert_eq!(code, 0, "{v}");
    let ea = export(&a, tmp.path().join("ea"));
    let eb = export(&b, tmp.path().join("eb"));
    assert_same_tree(&tree, &ea);
    assert_same_tree(&ea, &eb);
    drop(standby);
    drop(primary);
    Ok(())
}

#[test]
fn chains_and_fan_out() -> TestResult {
    let tmp = bbsync_tests::tempdir()?;
    let tree = tmp.path().join("tree");
    mini_bbs(&tree);
    let a = node(tmp.path(), "a");
    let b = node(tmp.path(), "b");
    let c = node(tmp.path(), "c");
    let d = node(tmp.path(), "d");
    trust(&a, &b);
    trust(&a, &d);
    trust(&b, &c);
    // C takes A's manifests through B: it knows the origin's card.
    trust(&c, &a);
    let sa = serve(&a);
    let sb = serve_with(
        &b,
        &["--listen", "/ip4/127.0.0.1/tcp/0", "--follow", &sa.addr],
    );
    let _sc = serve_with(
        &c,
        &["--listen", "/ip4/127.0.0.1/tcp/0", "--follow", &sb.addr],
    );
    let _sd = serve_with(
        &d,
        &["--listen", "/ip4/127.0.0.1/tcp/0", "--follow", &sa.addr],
    );
    ok(&a, &["import-bbs", tree.to_str().unwrap()]);
    wait_for(30, "A -> B -> C and A -> D", || {
        converged(&a, &b) && converged(&a, &c) && converged(&a, &d)
    });
    write(&tree.join("boards/general/7.json"), "{\"id\":7}\n");
    ok(&a, &["import-bbs", tree.to_str().unwrap()]);
    wait_for(20, "a new post down the chain", || {
        converged(&a, &c) && converged(&a, &d)
    });
    let ea = export(&a, tmp.path().join("ea"));
    for (n, data) in [("ec", &c), ("ed", &d)] {
        let e = export(data, tmp.path().join(n));
        assert_same_tree(&ea, &e);
    }
    Ok(())
}

#[test]
fn two_writers_converge() -> TestResult {
    let tmp = bbsync_tests::tempdir()?;
    let tree = tmp.path().join("tree");
    mini_bbs(&tree);
    let a = node(tmp.path(), "a");
    let b = node(tmp.path(), "b");
    trust(&a, &b);
    trust(&b, &a);
    let (pa, pb) = (free_port(), free_port());
    let sa = serve_with(&a, &["--listen", &listen_on(pa)]);
    let sb = serve_with(&b, &["--listen", &listen_on(pb), "--follow", &sa.addr]);
    // A follows B too (restart A with --follow now that B's address is known).
    assert!(sa.stop().success());
    let _sa = serve_with(&a, &["--listen", &listen_on(pa), "--follow", &sb.addr]);
    ok(&a, &["import-bbs", tree.to_str().unwrap()]);
    wait_for(20, "the first import on B", || converged(&a, &b));

    // Both change the same post at once, each from its own copy of the tree.
    let post = "boards/general/2.json";
    let tb = tmp.path().join("tree-b");
    export(&b, tb.clone());
    write(&tree.join(post), "{\"id\":2,\"body\":\"edited on A\"}\n");
    write(
        &tb.join(post),
        "{\"id\":2,\"body\":\"edited on B, longer\"}\n",
    );
    let ha = {
        let (a, tree) = (a.clone(), tree.clone());
        std::thread::spawn(move || ok(&a, &["import-bbs", tree.to_str().unwrap()]))
    };
    ok(&b, &["import-bbs", tb.to_str().unwrap()]);
    ha.join().unwrap();
    // Both wrote version 2 at once (a tie the version rules break the same
    // way on both nodes), or, when A's version 2 reached B before B's
    // import looked at the post, B's edit is version 3 on top of it: either
    // way both end with the same versions and one of the two edits.
    wait_for(60, "the two writers to converge", || {
        let (va, vb) = (versions(&a), versions(&b));
        va == vb
            && va
                .get(&("message".to_string(), "general/2".to_string()))
                .is_some_and(|v| v.0 >= 2)
    });
    let ea = export(&a, tmp.path().join("ea"));
    let eb = export(&b, tmp.path().join("eb"));
    assert_same_tree(&ea, &eb);
    let body = std::fs::read_to_string(ea.join(post))?;
    assert!(body.contains("edited on"), "{body}");
    Ok(())
}

#[test]
fn a_removed_follower_is_denied_at_once() -> TestResult {
    let tmp = bbsync_tests::tempdir()?;
    let tree = tmp.path().join("tree");
    mini_bbs(&tree);
    let a = node(tmp.path(), "primary");
    let b = node(tmp.path(), "standby");
    // A second standby that stays trusted: what reaches it has been
    // offered to every follower.
    let c = node(tmp.path(), "witness");
    trust(&a, &b);
    trust(&a, &c);
    let sa = serve(&a);
    let _sb = serve_with(
        &b,
        &["--listen", "/ip4/127.0.0.1/tcp/0", "--follow", &sa.addr],
    );
    let _sc = serve_with(
        &c,
        &["--listen", "/ip4/127.0.0.1/tcp/0", "--follow", &sa.addr],
    );
    ok(&a, &["import-bbs", tree.to_str().unwrap()]);
    wait_for(20, "the standbys to catch up", || {
        converged(&a, &b) && converged(&a, &c)
    });
    let held = versions(&b);
    // Removed while its subscription waits on the primary.
    let b_id = json(&b, &["status"])["instance_id"]
        .as_str()
        .unwrap()
        .to_string();
    ok(&a, &["trust", "remove", &b_id]);
    let upstream = |data: &Path| json(data, &["status"])["upstreams"][0].clone();
    wait_for(10, "the standby to be denied", || {
        upstream(&b)["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("denied"))
    });
    write(
        &tree.join("boards/general/8.json"),
        "{\"id\":8,\"body\":\"secret\"}\n",
    );
    ok(&a, &["import-bbs", tree.to_str().unwrap()]);
    // The post reached the trusted standby; the removed one has asked again
    // since (one more failed session, denied) and got nothing.
    wait_for(20, "the new post on the trusted standby", || {
        converged(&a, &c)
    });
    let failed = upstream(&b)["failed_sessions"].as_u64().unwrap();
    wait_for(40, "the removed standby to be denied again", || {
        let u = upstream(&b);
        u["failed_sessions"].as_u64().unwrap() > failed
            && u["last_error"]
                .as_str()
                .is_some_and(|e| e.contains("denied"))
    });
    assert_eq!(
        versions(&b),
        held,
        "a removed standby still received a change"
    );
    Ok(())
}

#[test]
fn rekey_and_rotation_reach_the_standby() -> TestResult {
    let tmp = bbsync_tests::tempdir()?;
    let tree = tmp.path().join("tree");
    mini_bbs(&tree);
    let a = node(tmp.path(), "primary");
    let b = node(tmp.path(), "standby");
    let gone = node(tmp.path(), "gone");
    trust(&a, &b);
    let sa = serve(&a);
    let _sb = serve_with(
        &b,
        &["--listen", "/ip4/127.0.0.1/tcp/0", "--follow", &sa.addr],
    );
    ok(&a, &["import-bbs", tree.to_str().unwrap()]);
    wait_for(20, "the standby to catch up", || converged(&a, &b));
    let objects = versions(&a).len();

    // A newly trusted instance: entries for it on every object, once.
    trust(&a, &gone);
    let dry = json(&a, &["rekey", "--dry-run"]);
    assert_eq!(
        dry["entries_added"].as_u64().unwrap() as usize,
        objects,
        "{dry}"
    );
    let r = json(&a, &["rekey"]);
    assert_eq!(r["entries_added"], dry["entries_added"]);
    assert_eq!(json(&a, &["rekey"])["changed"].as_array().unwrap().len(), 0);

    // Removed and rotated: every object gets version 2 under a fresh key,
    // the report names what it could read, and the standby follows.
    let gone_id = json(&gone, &["status"])["instance_id"]
        .as_str()
        .unwrap()
        .to_string();
    ok(&a, &["trust", "remove", &gone_id]);
    let text = ok(&a, &["rekey", "--rotate"]);
    assert!(text.contains(&format!("{objects} rotated")), "{text}");
    assert!(text.contains("still readable by"), "{text}");
    wait_for(20, "the rotated versions on the standby", || {
        converged(&a, &b) && versions(&b).values().all(|(v, _)| *v == 2)
    });
    let (code, v) = verify(&b, &["--read-data"]);
    assert_eq!(code, 0, "{v}");
    let eb = export(&b, tmp.path().join("eb"));
    assert_same_tree(&tree, &eb);

    // A bad object name changes nothing.
    let o = run(&a, &["rekey", "message:nope"]);
    assert_one_line_error(&o, "rekey of an unknown object");
    Ok(())
}

/// `bbsync serve ARGS...` with its log (stderr) in `log`; waits for its
/// first address.
fn serve_logged(data: &Path, args: &[&str], log: &Path) -> Server {
    use std::io::BufRead as _;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_bbsync"))
        .arg("--no-progress")
        .arg("--data-dir")
        .arg(data)
        .arg("serve")
        .args(args)
        .env_remove("BBSYNC_DATA")
        .env_remove("BBSYNC_LOG")
        .env_remove("RUST_LOG")
        .stdout(std::process::Stdio::piped())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line.trim().to_string();
    assert!(addr.contains("/p2p/12D3"), "serve printed {addr:?}");
    Server { child, addr }
}

fn upstream(data: &Path) -> serde_json::Value {
    json(data, &["status"])["upstreams"][0].clone()
}

/// Issue 10, item 3: only the first `serve --follow` of an upstream adds
/// trust. Removed (or made blind) on the standby, the upstream is not
/// trusted again by a reconnect after the primary's restart, nor by a
/// restart of the standby: the standby stops following it and says why in
/// `status` and in its log. Trusting it again is an explicit act.
#[test]
fn a_reconnect_never_trusts_the_upstream_again() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let tree = tmp.path().join("tree");
    mini_bbs(&tree);
    let a = node(tmp.path(), "primary");
    let b = node(tmp.path(), "standby");
    trust(&a, &b);
    let a_id = json(&a, &["status"])["instance_id"]
        .as_str()
        .unwrap()
        .to_string();
    let port = free_port();
    let primary = serve_with(&a, &["--listen", &listen_on(port)]);
    let primary_addr = primary.addr.clone();
    let follow = [
        "--listen",
        "/ip4/127.0.0.1/tcp/0",
        "--follow",
        &primary_addr,
    ];
    let log = tmp.path().join("standby.log");
    let standby = serve_logged(&b, &follow, &log);
    ok(&a, &["import-bbs", tree.to_str().unwrap()]);
    wait_for(20, "the first import on the standby", || converged(&a, &b));

    // The first follow trusted the primary, as full.
    let t = json(&b, &["trust", "list"]);
    assert_eq!(t.as_array().unwrap().len(), 1, "{t}");
    assert_eq!(t[0]["instance_id"], a_id.as_str(), "{t}");
    assert_eq!(t[0]["role"], "full", "{t}");

    // The standby's operator removes it; then the primary restarts with a
    // new post, and the standby reconnects.
    ok(&b, &["trust", "remove", &a_id]);
    assert!(primary.stop().success());
    write(
        &tree.join("boards/general/9.json"),
        "{\"id\":9,\"body\":\"after the removal\"}\n",
    );
    ok(&a, &["import-bbs", tree.to_str().unwrap()]);
    let primary = serve_with(&a, &["--listen", &listen_on(port)]);
    let refused = format!(
        "upstream {} is not in the trust table (removed after it was first followed; a reconnect does not trust it again): not following it; to follow it again: `bbsync trust add CARD --role full` with its card (`bbsync id` on it), then restart `bbsync serve`",
        &a_id[..16]
    );
    wait_for(30, "the standby to stop following", || {
        upstream(&b)["state"] == "stopped"
    });
    assert_eq!(upstream(&b)["last_error"], refused.as_str());
    assert_eq!(json(&b, &["trust", "list"]), serde_json::json!([]));
    assert!(
        !versions(&b).contains_key(&("message".to_string(), "general/9".to_string())),
        "the standby applied a change of an upstream it does not trust"
    );
    let logged = std::fs::read_to_string(&log)?;
    assert!(logged.contains(&refused), "{logged}");

    // A restart of the standby with the same --follow: still not trusted.
    drop(standby);
    wait_unlocked(&b);
    let standby = serve_logged(&b, &follow, &log);
    wait_for(30, "the restarted standby to refuse", || {
        upstream(&b)["state"] == "stopped"
    });
    assert_eq!(json(&b, &["trust", "list"]), serde_json::json!([]));

    // Made blind by the operator: a reconnect does not raise the role.
    ok(&b, &["trust", "add", &card(&a), "--role", "blind"]);
    drop(standby);
    wait_unlocked(&b);
    let standby = serve_logged(&b, &follow, &log);
    wait_for(30, "the standby to refuse a blind upstream", || {
        upstream(&b)["state"] == "stopped"
    });
    let why = upstream(&b)["last_error"].as_str().unwrap().to_string();
    assert!(why.contains("is trusted here as blind"), "{why}");
    assert_eq!(json(&b, &["trust", "list"])[0]["role"], "blind");

    // Trusting it again is the operator's act; then the standby follows.
    ok(&b, &["trust", "add", &card(&a), "--role", "full"]);
    drop(standby);
    wait_unlocked(&b);
    let _standby = serve_logged(&b, &follow, &log);
    wait_for(30, "the standby to follow again", || converged(&a, &b));
    drop(primary);
    Ok(())
}
