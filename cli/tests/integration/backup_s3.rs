//! Backup repositories on S3 through the commands (issue 13), against a
//! real S3 server (moto) on 127.0.0.1: `backup --repo s3://...` (full,
//! incremental, with the identity escrow), `backups list|verify|stats|
//! prune`, `restore --to-tree`, disaster recovery into an empty data dir,
//! `clone --from-backup s3://...`, `backup_repo` in config.toml, and the
//! refusals (a malformed location, missing keys, format 1 on S3). Skipped
//! with a message when moto_server is not installed, unless
//! `BBSYNC_REQUIRE_S3=1` (which `.ci/run` sets).

#![allow(clippy::unwrap_used)]

use std::path::Path;

use crate::common::*;
use bbsync_tests::s3::{ACCESS_KEY_ID, MotoServer, REGION, SECRET_ACCESS_KEY};
use serde_json::Value;

const PASS: &str = "correct horse battery staple";

/// `bbsync ARGS` with the test server's S3 settings (`extra` on top).
fn s3(data: &Path, moto: &MotoServer, args: &[&str], extra: &[(&str, &str)]) -> Out {
    let endpoint = moto.endpoint();
    let mut env = vec![
        ("AWS_ENDPOINT_URL", endpoint.as_str()),
        ("AWS_REGION", REGION),
        ("AWS_ACCESS_KEY_ID", ACCESS_KEY_ID),
        ("AWS_SECRET_ACCESS_KEY", SECRET_ACCESS_KEY),
    ];
    env.extend_from_slice(extra);
    run_env(data, args, &env)
}

fn s3_ok(data: &Path, moto: &MotoServer, args: &[&str], extra: &[(&str, &str)]) -> String {
    let o = s3(data, moto, args, extra);
    assert_eq!(o.code, 0, "bbsync {args:?}: {}\n{}", o.stdout, o.stderr);
    o.stdout
}

fn s3_json(data: &Path, moto: &MotoServer, args: &[&str]) -> Value {
    let mut a = vec!["--json"];
    a.extend_from_slice(args);
    serde_json::from_str(&s3_ok(data, moto, &a, &[])).unwrap()
}

#[test]
fn every_backup_command_works_on_an_s3_repository() -> TestResult {
    let Some(moto) = MotoServer::start() else {
        return Ok(());
    };
    moto.create_bucket("bbs-cli");
    let t = bbsync_tests::tempdir()?;
    let root = t.path();
    let (a, b) = (root.join("a"), root.join("b"));
    init(&a, "alpha");
    init(&b, "beta");
    ok(&a, &["trust", "add", "--role", "full", &card(&b)]);
    let tree = root.join("bbs");
    mini_bbs(&tree);
    ok(&a, &["import-bbs", tree.to_str().unwrap()]);
    let repo = "s3://bbs-cli/sites/alpha";

    // Full backup with the escrow, then an incremental one after an edit.
    let full: Value = serde_json::from_str(&s3_ok(
        &a,
        &moto,
        &["--json", "backup", "--repo", repo, "--include-identity"],
        &[("BBSYNC_PASSPHRASE", PASS)],
    ))?;
    let full = full["snapshot"].as_str().unwrap().to_string();
    write(
        &tree.join("boards/general/3.json"),
        "{\"id\":3,\"from\":\"carol\",\"body\":\"a third post\"}\n",
    );
    ok(&a, &["import-bbs", tree.to_str().unwrap()]);
    let inc = s3_json(&a, &moto, &["backup", "--repo", repo]);
    let inc = inc["snapshot"].as_str().unwrap().to_string();
    let l = s3_json(&a, &moto, &["backups", "list", "--repo", repo]);
    let ids: Vec<&str> = l
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec![full.as_str(), inc.as_str()]);
    let st = s3_json(&a, &moto, &["backups", "stats", "--repo", repo]);
    assert_eq!(st["format"], 2, "{st}");
    assert_eq!(st["repo"], repo, "{st}");
    let out = s3_ok(
        &a,
        &moto,
        &["backups", "verify", "--repo", repo, "--read-data"],
        &[],
    );
    assert!(out.contains(": OK"), "{out}");

    // The plaintext tree of the latest snapshot.
    let to = root.join("restored");
    s3_ok(
        &a,
        &moto,
        &["restore", "--repo", repo, "--to-tree", to.to_str().unwrap()],
        &[],
    );
    assert_same_tree(&tree, &to);

    // Disaster recovery: an empty data dir, the escrow of the full backup.
    let lost = root.join("lost");
    let out = s3_ok(
        &lost,
        &moto,
        &["restore", "--repo", repo, &full],
        &[("BBSYNC_PASSPHRASE", PASS)],
    );
    assert!(out.contains("restored identity alpha"), "{out}");
    assert_eq!(ok(&lost, &["id"]), ok(&a, &["id"]));

    // clone --from-backup s3://... : b (trusted by a) takes every chunk from
    // the bucket, none from the network.
    let server = serve(&a);
    let out = s3_ok(
        &b,
        &moto,
        &["clone", &server.addr, "--from-backup", repo],
        &[],
    );
    let last = out.lines().last().unwrap();
    assert!(
        last.starts_with("clone --from-backup: ") && last.ends_with(", 0 from the network"),
        "{out}"
    );
    drop(server);
    let exp = root.join("cloned");
    ok(&b, &["export-bbs", exp.to_str().unwrap()]);
    assert_same_tree(&tree, &exp);

    // Prune to the latest snapshot; what stays verifies.
    let p = s3_json(
        &a,
        &moto,
        &["backups", "prune", "--repo", repo, "--keep-last", "1"],
    );
    assert_eq!(p["removed"], serde_json::json!([full]), "{p}");
    let out = s3_ok(
        &a,
        &moto,
        &["backups", "verify", "--repo", repo, "--read-data"],
        &[],
    );
    assert!(out.contains("1 snapshots") || out.contains(": OK"), "{out}");

    // backup_repo in config.toml names the bucket: no --repo needed.
    let cfg = a.join("config.toml");
    let text = std::fs::read_to_string(&cfg)?;
    std::fs::write(&cfg, format!("backup_repo = \"{repo}\"\n{text}"))?;
    let again = s3_json(&a, &moto, &["backup"]);
    assert_eq!(again["repo"], repo, "{again}");
    let l = s3_json(&a, &moto, &["backups", "list"]);
    assert_eq!(l.as_array().unwrap().len(), 2, "{l}");
    Ok(())
}

#[test]
fn s3_locations_and_settings_are_checked_with_one_line() -> TestResult {
    let Some(moto) = MotoServer::start() else {
        return Ok(());
    };
    moto.create_bucket("bbs-refused");
    let t = bbsync_tests::tempdir()?;
    let a = t.path().join("a");
    init(&a, "alpha");
    let line = assert_one_line_error(
        &s3(&a, &moto, &["backup", "--repo", "s3://Bad_Bucket/x"], &[]),
        "a malformed bucket",
    );
    assert!(line.contains("bad repository location"), "{line}");
    let line = assert_one_line_error(
        &s3(
            &a,
            &moto,
            &["backups", "list", "--repo", "ftp://host/x"],
            &[],
        ),
        "an unknown scheme",
    );
    assert!(line.contains("unsupported scheme"), "{line}");
    // No keys anywhere: refused before anything is sent.
    let mut c = bbsync(&a);
    let o = c
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .env("AWS_ENDPOINT_URL", moto.endpoint())
        .args(["backup", "--repo", "s3://bbs-refused/x"])
        .output()?;
    let o = Out {
        code: o.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
    };
    let line = assert_one_line_error(&o, "no S3 keys");
    assert!(line.contains("no S3 keys"), "{line}");
    // Format 1 lives in local directories only.
    let line = assert_one_line_error(
        &s3(
            &a,
            &moto,
            &[
                "backup",
                "--repo-format",
                "1",
                "--repo",
                "s3://bbs-refused/y",
            ],
            &[],
        ),
        "format 1 on S3",
    );
    assert!(line.contains("only format 2"), "{line}");
    // Nothing was created by any of the refusals.
    let l = s3(
        &a,
        &moto,
        &["backups", "list", "--repo", "s3://bbs-refused/x"],
        &[],
    );
    assert_ne!(
        l.code, 0,
        "a refused backup created a repository: {}",
        l.stdout
    );
    Ok(())
}
