//! `identity.key` at rest (issue 15): `init --encrypt-identity`, `identity
//! encrypt | decrypt`, the passphrase sources (BBSYNC_PASSPHRASE,
//! --passphrase-file, systemd's $CREDENTIALS_DIRECTORY), a wrong
//! passphrase refused without any change, and `serve` reading its
//! passphrase from a `LoadCredential=`-style file.
//!
//! Every process runs without a controlling terminal (`setsid`), so a
//! missing passphrase is an error, never a prompt.

#![allow(clippy::unwrap_used)]

use std::{
    io::BufRead as _,
    os::unix::fs::PermissionsExt as _,
    path::Path,
    process::{Command, Stdio},
};

use crate::common::*;
use serde_json::Value;

const PASS: &str = "correct horse battery";

/// `bbsync --no-progress --data-dir DATA ARGS...` without a terminal, with
/// `BBSYNC_PASSPHRASE` set to `pass` if given.
fn cmd(data: &Path, pass: Option<&str>, args: &[&str]) -> Command {
    let mut c = Command::new("setsid");
    c.arg("-w")
        .arg(env!("CARGO_BIN_EXE_bbsync"))
        .arg("--no-progress")
        .arg("--data-dir")
        .arg(data)
        .args(args)
        .env_remove("BBSYNC_DATA")
        .env_remove("BBSYNC_LOG")
        .env_remove("BBSYNC_PASSPHRASE")
        .env_remove("BBSYNC_PASSPHRASE_FILE")
        .env_remove("CREDENTIALS_DIRECTORY")
        .stdin(Stdio::null());
    if let Some(p) = pass {
        c.env("BBSYNC_PASSPHRASE", p);
    }
    c
}

fn run_with(data: &Path, pass: Option<&str>, args: &[&str]) -> Out {
    cmd(data, pass, args).output().unwrap().into()
}

fn ok_with(data: &Path, pass: Option<&str>, args: &[&str]) -> String {
    let o = run_with(data, pass, args);
    assert_eq!(o.code, 0, "{args:?}: {}{}", o.stdout, o.stderr);
    o.stdout
}

fn json_with(data: &Path, pass: Option<&str>, args: &[&str]) -> Value {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    serde_json::from_str(&ok_with(data, pass, &all)).unwrap()
}

fn key(data: &Path) -> Vec<u8> {
    std::fs::read(data.join("identity.key")).unwrap()
}

fn secret_file(dir: &Path, name: &str, text: &str, mode: u32) -> std::path::PathBuf {
    let f = dir.join(name);
    std::fs::write(&f, text).unwrap();
    std::fs::set_permissions(&f, std::fs::Permissions::from_mode(mode)).unwrap();
    f
}

#[test]
fn an_encrypted_identity_needs_its_passphrase_and_a_wrong_one_changes_nothing() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let d = tmp.path().join("node");
    let shown = d.join("identity.key").display().to_string();
    let v = json_with(
        &d,
        Some(PASS),
        &["init", "--name", "alpha", "--encrypt-identity"],
    );
    assert_eq!(v["identity_encrypted"], true, "{v}");
    let card = v["card"].as_str().unwrap().to_string();
    let sealed = key(&d);
    assert!(sealed.starts_with(b"bbsync-idsealed\n"));
    assert_eq!(
        std::fs::metadata(d.join("identity.key"))?
            .permissions()
            .mode()
            & 0o777,
        0o600
    );
    assert_eq!(ok_with(&d, Some(PASS), &["id"]).trim(), card);

    // No passphrase and no terminal.
    let o = run_with(&d, None, &["id"]);
    let line = assert_one_line_error(&o, "no passphrase");
    assert!(
        line.starts_with(&format!(
            "error: opening data dir {}: {shown} needs a passphrase: set BBSYNC_PASSPHRASE, give --passphrase-file, or run on a terminal",
            d.display()
        )),
        "{line}"
    );
    // A wrong one, for a read and for each identity command.
    let wrong = format!(
        "error: opening data dir {}: wrong passphrase for {shown}",
        d.display()
    );
    for args in [
        &["status"][..],
        &["identity", "decrypt"],
        &["identity", "encrypt"],
    ] {
        let o = run_with(&d, Some("not the passphrase"), args);
        assert_eq!(assert_one_line_error(&o, "wrong passphrase"), wrong);
        assert_eq!(key(&d), sealed, "{args:?} changed identity.key");
    }
    // Encrypting twice is refused, unchanged.
    let o = run_with(&d, Some(PASS), &["identity", "encrypt"]);
    assert_mentions(
        &assert_one_line_error(&o, "encrypt twice"),
        &["encrypted already"],
    );
    assert_eq!(key(&d), sealed);

    // --passphrase-file: refused while every user can read it, then used.
    let open = secret_file(tmp.path(), "open.txt", &format!("{PASS}\n"), 0o644);
    let o = run_with(
        &d,
        None,
        &["--passphrase-file", open.to_str().unwrap(), "id"],
    );
    assert_mentions(
        &assert_one_line_error(&o, "world-readable passphrase file"),
        &["readable by every user", "chmod o-r"],
    );
    let file = secret_file(tmp.path(), "pass.txt", &format!("{PASS}\n"), 0o600);
    let f = file.to_str().unwrap();
    assert_eq!(
        ok_with(&d, None, &["--passphrase-file", f, "id"]).trim(),
        card
    );
    // The environment's file works too.
    let o = cmd(&d, None, &["id"])
        .env("BBSYNC_PASSPHRASE_FILE", &file)
        .output()?;
    assert!(o.status.success());

    // Decrypt: the plain file, the same instance; no passphrase needed after.
    let out = ok_with(&d, None, &["--passphrase-file", f, "identity", "decrypt"]);
    assert!(out.contains("no longer encrypted"), "{out}");
    assert!(key(&d).starts_with(b"bbsync-identity\n"));
    assert_eq!(ok_with(&d, None, &["id"]).trim(), card);
    let plain = key(&d);
    // A short passphrase is refused, nothing changed.
    let o = run_with(&d, Some("short"), &["identity", "encrypt"]);
    assert_mentions(
        &assert_one_line_error(&o, "short passphrase"),
        &["at least 8 characters"],
    );
    assert_eq!(key(&d), plain);
    // Encrypt again from a file; the card stays the same.
    ok_with(&d, None, &["--passphrase-file", f, "identity", "encrypt"]);
    assert!(key(&d).starts_with(b"bbsync-idsealed\n"));
    assert_eq!(ok_with(&d, Some(PASS), &["id"]).trim(), card);
    let o = run_with(&d, None, &["identity", "decrypt"]);
    assert_eq!(o.code, 1);
    Ok(())
}

#[test]
fn serve_reads_its_passphrase_from_a_systemd_credential() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let tree = tmp.path().join("tree");
    mini_bbs(&tree);
    let src = tmp.path().join("src");
    let dst = tmp.path().join("dst");
    json_with(
        &src,
        Some(PASS),
        &["init", "--name", "src", "--encrypt-identity"],
    );
    init(&dst, "dst");
    ok_with(&src, Some(PASS), &["import-bbs", tree.to_str().unwrap()]);
    ok_with(&src, Some(PASS), &["trust", "add", &card(&dst)]);
    // What systemd makes of LoadCredential=passphrase:FILE.
    let creds = tmp.path().join("creds");
    std::fs::create_dir(&creds)?;
    secret_file(&creds, "passphrase", &format!("{PASS}\n"), 0o400);

    let mut child = cmd(&src, None, &["serve", "--listen", "/ip4/127.0.0.1/tcp/0"])
        .env("CREDENTIALS_DIRECTORY", &creds)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap()).read_line(&mut line)?;
    let addr = line.trim().to_string();
    assert!(addr.contains("/p2p/12D3"), "serve printed {addr:?}");
    let server = Server { child, addr };
    // Commands handed to the running node need no passphrase.
    wait_for(10, "the control socket", || {
        src.join("control.sock").exists()
    });
    let status = json_with(&src, None, &["status"]);
    assert!(status["objects"].as_u64().unwrap_or(0) > 0, "{status}");
    // The identity it opened is the right one: a clone gets its content.
    let report = json(&dst, &["clone", &server.addr]);
    assert_eq!(report["complete"], true, "{report}");
    server.stop();

    // A wrong credential: serve stops at once with one line.
    secret_file(&creds, "wrong", "not the passphrase\n", 0o400);
    std::fs::remove_file(creds.join("passphrase"))?;
    std::fs::rename(creds.join("wrong"), creds.join("passphrase"))?;
    let o = cmd(&src, None, &["serve", "--listen", "/ip4/127.0.0.1/tcp/0"])
        .env("CREDENTIALS_DIRECTORY", &creds)
        .output()?;
    let o = Out::from(o);
    assert_mentions(
        &assert_one_line_error(&o, "serve with a wrong credential"),
        &["wrong passphrase"],
    );
    Ok(())
}
