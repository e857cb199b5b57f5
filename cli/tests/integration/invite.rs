//! Invites between real `bbsync` processes on 127.0.0.1 (issue 15): a
//! source runs `serve` and makes invites through its control socket; fresh,
//! uninitialized nodes redeem them with `clone INVITE` or `serve --follow
//! INVITE`. Every refused redemption gets its exact error and adds no
//! trust on the source; the invite string never reaches a log.
//! (Replayed redemption messages and rate limits are driven at the
//! protocol level in `node/tests/invite.rs`; the Tor case is in `tor.rs`.)

#![allow(clippy::unwrap_used)]

use std::{
    io::BufRead as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use crate::common::*;
use bbsync_protocol::{Invite, invite::text_of_payload};
use serde_json::Value;

/// A source holding the mini BBS, serving on a free loopback port with
/// its log (`-vv`) in `<tmp>/src.log`.
fn source(tmp: &Path) -> (PathBuf, PathBuf, Server) {
    let tree = tmp.join("tree");
    mini_bbs(&tree);
    let src = tmp.join("src");
    init(&src, "source");
    ok(&src, &["import-bbs", tree.to_str().unwrap()]);
    let server = serve_logged(&src, &tmp.join("src.log"), &[]);
    (tree, src, server)
}

/// `bbsync -vv serve --listen 127.0.0.1:0 EXTRA...` with stderr into `log`;
/// waits for its first address.
fn serve_logged(data: &Path, log: &Path, extra: &[&str]) -> Server {
    let mut child = Command::new(env!("CARGO_BIN_EXE_bbsync"))
        .arg("--no-progress")
        .arg("--data-dir")
        .arg(data)
        .args(["-vv", "serve", "--listen", "/ip4/127.0.0.1/tcp/0"])
        .args(extra)
        .env_remove("BBSYNC_DATA")
        .env_remove("BBSYNC_LOG")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let addr = lines.next().map(Result::unwrap).unwrap_or_default();
    assert!(addr.contains("/p2p/12D3"), "serve printed {addr:?}");
    std::thread::spawn(move || for _ in lines {});
    Server { child, addr }
}

/// The PeerId a serving node printed.
fn peer_of(server: &Server) -> String {
    server.addr.rsplit('/').next().unwrap().to_string()
}

/// `invite create ARGS...` on `src`; the invite string (the last line).
fn invite(src: &Path, args: &[&str]) -> String {
    let mut all = vec!["invite", "create"];
    all.extend_from_slice(args);
    let out = ok(src, &all);
    out.lines().last().unwrap().to_string()
}

/// The invite string with its payload changed by `edit` (and a checksum
/// that fits again, as anyone can compute).
fn edited(text: &str, edit: impl FnOnce(&mut Vec<u8>)) -> String {
    let mut p = Invite::parse(text).unwrap().payload().to_vec();
    edit(&mut p);
    text_of_payload(&p).to_string()
}

/// Offset of the secret in an invite payload: format (1), source (32), id (16).
const SECRET_AT: usize = 1 + 32 + 16;
/// Offset of the address list.
const ADDRESSES_AT: usize = SECRET_AT + 32;

/// `invite list --json` row of an invite.
fn invite_row(src: &Path, text: &str) -> Value {
    let id = Invite::parse(text).unwrap().id.to_hex();
    json(src, &["invite", "list"])
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == id.as_str())
        .cloned()
        .unwrap()
}

/// `clone INVITE` into the new data dir `dir`, which must fail with
/// exactly `expected` and leave no data dir behind.
fn refused(dir: &Path, text: &str, expected: &str) {
    let o = run(dir, &["clone", text, "--name", "intruder"]);
    let line = assert_one_line_error(&o, expected);
    assert_eq!(line, expected);
    assert!(
        !dir.exists(),
        "a refused invite left a data dir behind: {}",
        dir.display()
    );
}

#[test]
fn a_fresh_node_clones_by_invite_and_the_use_is_spent() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let (tree, src, server) = source(tmp.path());
    // Through the control socket: the invite carries the serving address.
    let v = json(&src, &["invite", "create", "--name", "mirror one"]);
    let text = v["invite"].as_str().unwrap().to_string();
    assert!(text.starts_with("bbsyncinvite1"), "{v}");
    assert_eq!(v["role"], "full");
    assert_eq!((v["uses"].as_u64(), v["used"].as_u64()), (Some(1), Some(0)));
    let (base, _) = server.addr.rsplit_once("/p2p/").unwrap();
    assert_eq!(v["addresses"], serde_json::json!([base]));
    // The text form ends with the string alone on its last line.
    let out = ok(&src, &["invite", "create", "--role", "blind"]);
    let last = out.lines().last().unwrap();
    assert!(
        last.starts_with("bbsyncinvite1") && !last.contains(' '),
        "{out}"
    );

    // A data dir that does not exist yet.
    let dst = tmp.path().join("new").join("mirror");
    let log = tmp.path().join("clone.log");
    let o = Command::new(env!("CARGO_BIN_EXE_bbsync"))
        .args(["--no-progress", "-vv", "--json", "--data-dir"])
        .arg(&dst)
        .args(["clone", &text, "--name", "mirror"])
        .env_remove("BBSYNC_DATA")
        .env_remove("BBSYNC_LOG")
        .stderr(std::fs::File::create(&log)?)
        .output()?;
    assert!(
        o.status.success(),
        "clone INVITE failed: {}",
        std::fs::read_to_string(&log)?
    );
    let report: Value = serde_json::from_slice(&o.stdout)?;
    assert_eq!(report["complete"], true, "{report}");
    assert_eq!(report["invite_role"], "full", "{report}");
    let (code, v) = verify(&dst, &["--read-data"]);
    assert_eq!(code, 0, "{v}");
    let out = tmp.path().join("out");
    ok(&dst, &["export-bbs", out.to_str().unwrap()]);
    assert_same_tree(&tree, &out);

    // The source trusts the new node with the invite's role, and the use
    // is spent, with who spent it.
    let dst_id = json(&dst, &["id"])["instance_id"]
        .as_str()
        .unwrap()
        .to_string();
    let trusted = json(&src, &["trust", "list"]);
    assert_eq!(trusted.as_array().unwrap().len(), 1, "{trusted}");
    assert_eq!(trusted[0]["instance_id"], dst_id.as_str());
    assert_eq!(trusted[0]["role"], "full");
    assert_eq!(trusted[0]["name"], "mirror");
    let row = invite_row(&src, &text);
    assert_eq!(
        (row["used"].as_u64(), row["uses"].as_u64()),
        (Some(1), Some(1))
    );
    assert_eq!(row["state"], "used-up", "{row}");
    assert_eq!(row["name"], "mirror one");
    assert_eq!(row["redeemed_by"][0]["instance_id"], dst_id.as_str());
    let listed = ok(&src, &["invite", "list"]);
    assert!(
        listed.contains("1/1") && listed.contains("used-up"),
        "{listed}"
    );
    // The new node trusts its source (pinned by the invite's PeerId).
    let back = json(&dst, &["trust", "list"]);
    assert_eq!(back[0]["role"], "full", "{back}");

    // Running the same clone again (an interrupted clone resumed) spends
    // nothing and trusts nothing new.
    let again = json(&dst, &["clone", &text]);
    assert_eq!(again["complete"], true, "{again}");
    assert_eq!(again["chunks_fetched"], 0);
    assert_eq!(json(&src, &["trust", "list"]), trusted);
    assert_eq!(invite_row(&src, &text)["used"], 1);

    // The invite string is in no log, at -vv, on either side.
    drop(server);
    let secret_part = &text["bbsyncinvite1".len()..];
    for f in [tmp.path().join("src.log"), log] {
        let l = std::fs::read_to_string(&f)?;
        assert!(!l.is_empty(), "{} is empty", f.display());
        assert!(
            !l.contains(&secret_part[secret_part.len() - 40..]),
            "{} holds the invite string",
            f.display()
        );
    }
    Ok(())
}

#[test]
fn refused_invites_say_why_and_add_no_trust() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let (_tree, src, server) = source(tmp.path());
    let peer = peer_of(&server);
    let new = |n: &str| tmp.path().join("new").join(n);

    // A second use of a one-use invite.
    let once = invite(&src, &[]);
    let first = new("first");
    ok(&first, &["clone", &once, "--name", "first"]);
    let trusted = json(&src, &["trust", "list"]);
    assert_eq!(trusted.as_array().unwrap().len(), 1);
    refused(
        &new("second"),
        &once,
        &format!("error: {peer} refused the invite: the invite has no uses left"),
    );

    // Expired (waited for by condition, not by a fixed sleep).
    let short = invite(&src, &["--expires", "1s"]);
    wait_for(30, "the invite to expire", || {
        invite_row(&src, &short)["state"] == "expired"
    });
    refused(
        &new("late"),
        &short,
        &format!("error: {peer} refused the invite: the invite has expired"),
    );

    // Revoked.
    let revoked = invite(&src, &[]);
    let id = Invite::parse(&revoked).unwrap().id.to_hex();
    let out = ok(&src, &["invite", "revoke", &id[..8]]);
    assert!(out.contains("revoked invite"), "{out}");
    refused(
        &new("revoked"),
        &revoked,
        &format!("error: {peer} refused the invite: the invite was revoked"),
    );

    // A wrong secret: the string edited (its checksum made to fit).
    let good = invite(&src, &[]);
    let forged = edited(&good, |p| p[SECRET_AT + 5] ^= 0x40);
    refused(
        &new("forged"),
        &forged,
        &format!(
            "error: {peer} refused the invite: no such invite, or the secret does not match (was the invite string changed?)"
        ),
    );
    // A character changed in copying: caught here, nothing dialed.
    let mut typo: Vec<char> = good.chars().collect();
    let k = typo.len() - 10;
    typo[k] = if typo[k] == 'a' { 'b' } else { 'a' };
    refused(
        &new("typo"),
        &typo.into_iter().collect::<String>(),
        "error: malformed invite string: checksum mismatch (a character was changed or lost in copying)",
    );

    // A role edited into the string: there is no role in it, so anything
    // added is refused before the source is asked; and the blind invite,
    // unedited, gives exactly blind.
    let blind = invite(&src, &["--role", "blind"]);
    refused(
        &new("upgraded"),
        &edited(&blind, |p| p.push(0)),
        "error: malformed invite string: 1 trailing bytes",
    );
    refused(
        &new("format2"),
        &edited(&blind, |p| p[0] = 2),
        "error: unsupported invite string format 2 (this version understands 1)",
    );
    assert_eq!(json(&src, &["trust", "list"]), trusted);
    let b = new("blind");
    ok(&b, &["clone", &blind, "--name", "blind-one"]);
    let t = json(&src, &["trust", "list"]);
    let row = t
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "blind-one")
        .unwrap();
    assert_eq!(row["role"], "blind");

    // A man in the middle: the invite's PeerId, another node's address.
    // Noise proves the other identity; nothing is sent to it, and the
    // invite stays unspent.
    let other = tmp.path().join("other");
    init(&other, "other");
    let other_server = serve_logged(&other, &tmp.path().join("other.log"), &[]);
    let other_peer = peer_of(&other_server);
    let (other_base, _) = other_server.addr.rsplit_once("/p2p/").unwrap();
    let target = invite(&src, &[]);
    let mitm = edited(&target, |p| {
        p.truncate(ADDRESSES_AT);
        p.push(1);
        p.push(u8::try_from(other_base.len()).unwrap());
        p.extend_from_slice(other_base.as_bytes());
    });
    let o = run(&new("mitm"), &["clone", &mitm, "--name", "victim"]);
    let line = assert_one_line_error(&o, "man in the middle");
    assert!(
        line.starts_with(&format!(
            "error: cannot reach {peer}: the node at {other_base}"
        )) && line.ends_with(&format!(
            "proved another identity ({other_peer}); nothing was sent to it"
        )),
        "{line}"
    );
    assert!(!new("mitm").exists());
    assert_eq!(json(&other, &["trust", "list"]), serde_json::json!([]));
    assert_eq!(json(&other, &["invite", "list"]), serde_json::json!([]));
    assert_eq!(invite_row(&src, &target)["used"], 0);
    // The same invite, dialed where it says, still works.
    let real = new("real");
    ok(&real, &["clone", &target, "--name", "real"]);

    // Bad combinations fail before anything is made.
    let o = run(&new("x"), &["clone", &server.addr, "--name", "x"]);
    assert_mentions(
        &assert_one_line_error(&o, "--name with an address"),
        &["invite"],
    );
    assert!(!new("x").exists());
    let o = run(&first, &["clone", &target, "--name", "again"]);
    assert_eq!(
        assert_one_line_error(&o, "another --name on an initialized dir"),
        format!(
            "error: --name again: {} is initialized already, as first",
            first.display()
        )
    );

    // Through every case, the source trusts exactly the three that
    // redeemed a valid invite.
    let names: Vec<String> = json(&src, &["trust", "list"])
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap().to_string())
        .collect();
    let mut names = names;
    names.sort();
    assert_eq!(names, ["blind-one", "first", "real"]);
    // And no invite was spent by a refused attempt.
    assert_eq!(invite_row(&src, &once)["used"], 1);
    assert_eq!(invite_row(&src, &short)["used"], 0);
    assert_eq!(invite_row(&src, &revoked)["used"], 0);
    assert_eq!(invite_row(&src, &good)["used"], 0);
    Ok(())
}

#[test]
fn invite_create_needs_an_address_and_checks_its_arguments() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let src = tmp.path().join("src");
    init(&src, "source");
    // Not serving: no address to put in.
    let line = fail(&src, &["invite", "create"]);
    assert_mentions(&line, &["no address", "--address"]);
    for (args, needle) in [
        (&["--expires", "45d"][..], "--expires"),
        (&["--expires", "1y"][..], "unknown unit"),
        (&["--uses", "0"][..], "--uses"),
        (
            &[
                "--address",
                "/ip4/1.2.3.4/tcp/1/p2p/12D3KooWD3eckifWpRn9wQpMG9R9hX3sD158z7EqHWmweQAJU5SA",
            ][..],
            "another peer",
        ),
        (&["--address", "not an address"][..], "malformed address"),
    ] {
        let mut all = vec!["invite", "create", "--address", "/ip4/192.0.2.1/tcp/4040"];
        all.extend_from_slice(args);
        let o = run(&src, &all);
        assert_ne!(o.code, 0, "{args:?}");
        assert!(o.stderr.contains(needle), "{args:?}: {}", o.stderr);
    }
    assert_eq!(json(&src, &["invite", "list"]), serde_json::json!([]));
    // With --address, an invite is made while nothing serves.
    let text = invite(&src, &["--address", "/dns4/bbs.example.org/tcp/4040"]);
    let inv = Invite::parse(&text).unwrap();
    assert_eq!(inv.addresses, ["/dns4/bbs.example.org/tcp/4040"]);
    let line = fail(&src, &["invite", "revoke", "0000000000"]);
    assert_eq!(line, "error: no invite 0000000000");
    Ok(())
}

#[test]
fn a_standby_follows_by_invite_and_a_restart_does_not_redeem_again() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let (tree, src, _server) = source(tmp.path());
    let text = invite(&src, &["--name", "standby"]);
    let standby = tmp.path().join("standby");
    let start = || {
        let mut child = Command::new(env!("CARGO_BIN_EXE_bbsync"))
            .arg("--no-progress")
            .arg("--data-dir")
            .arg(&standby)
            .args([
                "serve",
                "--listen",
                "/ip4/127.0.0.1/tcp/0",
                "--follow",
                &text,
                "--name",
                "standby",
            ])
            .env_remove("BBSYNC_DATA")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // Its first address means it serves (the control socket is up):
        // a `status` before that would open the store itself and hold its
        // lock while the standby opens it.
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(child.stdout.take().unwrap()),
            &mut line,
        )
        .unwrap();
        assert!(!line.is_empty(), "the standby exited before it served");
        child
    };
    let following = || {
        // Through the control socket of the running standby: its live
        // follower state.
        let o = run(&standby, &["--json", "status"]);
        o.code == 0 && o.stdout.contains("\"state\": \"following\"")
    };
    let mut child = start();
    wait_for(60, "the standby to follow", following);
    wait_for(60, "the standby to catch up", || {
        ls_row(&standby, "message", "general/2").is_some()
    });
    let standby_id = json(&standby, &["id"])["instance_id"]
        .as_str()
        .unwrap()
        .to_string();
    let t = json(&src, &["trust", "list"]);
    assert_eq!(t[0]["instance_id"], standby_id.as_str(), "{t}");
    assert_eq!(invite_row(&src, &text)["used"], 1);
    // A post on the source arrives.
    write(&tree.join("boards/general/7.json"), "{\"id\":7}");
    ok(&src, &["import-bbs", tree.to_str().unwrap()]);
    wait_for(60, "the new post", || {
        ls_row(&standby, "message", "general/7").is_some()
    });
    let _ = child.kill();
    let _ = child.wait();
    // A restart with the same command line: the upstream is followed
    // again without a second redemption (the invite is used up).
    let mut child = start();
    wait_for(60, "the restarted standby to follow", following);
    write(&tree.join("boards/general/8.json"), "{\"id\":8}");
    ok(&src, &["import-bbs", tree.to_str().unwrap()]);
    wait_for(60, "a post after the restart", || {
        ls_row(&standby, "message", "general/8").is_some()
    });
    assert_eq!(invite_row(&src, &text)["used"], 1);
    let _ = child.kill();
    let _ = child.wait();
    Ok(())
}
