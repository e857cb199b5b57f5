//! Backups (issue 5): backup, `backups ...`, restore, identity escrow,
//! `--rekey`, `--to-tree`, `clone --from-backup`, and every bad input of
//! the issue, pg_verifybackup style: one scenario, one exact message, and
//! a refused restore leaves the store as it was.

#![allow(clippy::unwrap_used)]

use std::{
    fs,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    process::Command as StdCommand,
};

use crate::common::*;
use bbsync_store::Store;
use serde_json::Value;

const PASS: &str = "correct horse battery staple";

fn ok_env(data: &Path, args: &[&str], env: &[(&str, &str)]) -> String {
    let o = run_env(data, args, env);
    assert_eq!(o.code, 0, "{args:?}: {}\n{}", o.stdout, o.stderr);
    o.stdout
}

fn js(s: &str) -> Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("not JSON ({e}): {s}"))
}

fn gen_small(dir: &Path, seed: u32) {
    gen_bbs(dir, "small", seed);
}

/// A store `a` with the mini BBS, a second instance `b` trusted `full` by
/// `a` (so envelopes carry entries for both), and a backup of `a` in `repo`.
struct Fixture {
    _t: tempfile::TempDir,
    root: PathBuf,
    a: PathBuf,
    b: PathBuf,
    tree: PathBuf,
    repo: PathBuf,
    snap: String,
}

impl Fixture {
    fn new() -> Fixture {
        let t = bbsync_tests::tempdir().unwrap();
        let root = t.path().to_path_buf();
        let a = root.join("a");
        let b = root.join("b");
        init(&a, "alpha");
        init(&b, "beta");
        ok(&a, &["trust", "add", "--role", "full", &card(&b)]);
        let tree = root.join("bbs");
        mini_bbs(&tree);
        ok(&a, &["import-bbs", tree.to_str().unwrap()]);
        let repo = root.join("repo");
        // Format 1 (these tests mutilate its chunk and manifest files;
        // backup_v2.rs has the format-2 equivalents).
        let r = json(
            &a,
            &[
                "backup",
                "--repo-format",
                "1",
                "--repo",
                repo.to_str().unwrap(),
            ],
        );
        let snap = r["snapshot"].as_str().unwrap().to_string();
        Fixture {
            _t: t,
            root,
            a,
            b,
            tree,
            repo,
            snap,
        }
    }

    fn r(&self) -> &str {
        self.repo.to_str().unwrap()
    }

    /// The chunks of `kind:name` and the object's manifest id (from the store).
    fn object(&self, spec: &str) -> (Vec<(bbsync_protocol::ChunkId, u32)>, String) {
        let s = Store::open(&self.a).unwrap();
        let id = s.resolve(spec).unwrap();
        let m = s.dangerously_manifest_unverified(&id).unwrap();
        let st = s.state(&id).unwrap();
        (
            m.chunks.iter().map(|c| (c.id, c.len)).collect(),
            st.manifest_id.to_hex(),
        )
    }

    fn chunk_rel(&self, spec: &str) -> (String, u32) {
        let (chunks, _) = self.object(spec);
        let (id, len) = chunks[0];
        let h = id.to_hex();
        (format!("chunks/{}/{h}", &h[..2]), len)
    }

    /// `backups verify` that must fail: (stdout problem lines, summary).
    fn verify_fails(&self, extra: &[&str]) -> Vec<String> {
        let mut args = vec!["backups", "verify", "--repo", self.r()];
        args.extend_from_slice(extra);
        let o = run(&self.a, &args);
        assert_eq!(o.code, 1, "{}\n{}", o.stdout, o.stderr);
        o.stdout.lines().map(str::to_string).collect()
    }

    /// `a`'s card: what `b` names with `--trust-host` to restore `a`'s
    /// snapshots (it does not trust `a` itself).
    fn host(&self) -> String {
        card(&self.a)
    }

    /// Rewrites snapshot `id` as an unsigned format-1 file (as bbsync wrote
    /// them before snapshots were signed), from what `backups show` reads.
    fn make_legacy(&self, id: &str) -> PathBuf {
        let mut v = json(&self.a, &["backups", "show", "--repo", self.r(), id]);
        let o = v.as_object_mut().unwrap();
        o.remove("signature");
        o.remove("host_id");
        o.insert("format".into(), 1.into());
        let p = self.repo.join(format!("snapshots/{id}.json"));
        fs::write(&p, serde_json::to_vec(&v).unwrap()).unwrap();
        p
    }

    /// A restore into `b` that must be refused with exactly `expected`,
    /// leaving `b` as it was.
    fn restore_refused(&self, expected: &str) {
        let before = snapshot(&self.b);
        let host = self.host();
        let o = run(
            &self.b,
            &["restore", "--repo", self.r(), "--trust-host", &host],
        );
        let line = assert_one_line_error(&o, "restore of a damaged repository");
        assert_eq!(line, expected);
        assert_eq!(
            snapshot(&self.b),
            before,
            "a refused restore changed the store"
        );
    }
}

const MSG: &str = "message:general/1";
const APPLET: &str = "applet:lord";

#[test]
fn backup_verify_list_show() -> TestResult {
    let f = Fixture::new();
    let out = ok(&f.a, &["backups", "verify", "--repo", f.r(), "--read-data"]);
    assert!(out.contains(": OK"), "{out}");
    let l = json(&f.a, &["backups", "list", "--repo", f.r()]);
    assert_eq!(l.as_array().unwrap().len(), 1);
    assert_eq!(l[0]["id"], f.snap.as_str());
    assert_eq!(l[0]["objects"], 8);
    let s = json(&f.a, &["backups", "show", "--repo", f.r(), "latest"]);
    assert_eq!(s["id"], f.snap.as_str());
    assert_eq!(s["counts"]["message"], 2);
    assert_eq!(s["counts"]["config"], 2);
    assert_eq!(s["objects"].as_array().unwrap().len(), 8);
    assert_eq!(s["host_name"], "alpha");
    assert_eq!(s["schema_version"], bbsync_store::SCHEMA_VERSION);
    assert_eq!(s["signature"], "verified");
    // The default repository lives under the data dir.
    let r = json(
        &f.a,
        &[
            "backup",
            "--repo-format",
            "1",
            "--description",
            "nightly",
            "--tag",
            "x",
        ],
    );
    assert!(f.a.join("backup/repo.json").is_file(), "{r}");
    let s = json(&f.a, &["backups", "show", r["snapshot"].as_str().unwrap()]);
    assert_eq!(s["description"], "nightly");
    assert_eq!(s["tags"], serde_json::json!(["x"]));
    // Chunks live in the store's packs: a repository of format 1 gets
    // copies of them (no chunk file to link), with or without --copy.
    assert_eq!(r["chunks_linked"], 0);
    let c = json(
        &f.a,
        &[
            "backup",
            "--repo-format",
            "1",
            "--repo",
            f.root.join("copied").to_str().unwrap(),
            "--copy",
        ],
    );
    assert_eq!(c["chunks_linked"], 0);
    assert_eq!(c["chunks_new"], r["chunks_new"]);
    let (rel, _) = f.chunk_rel(MSG);
    assert_eq!(fs::metadata(f.root.join("copied").join(&rel))?.nlink(), 1);
    assert_eq!(fs::metadata(f.a.join("backup").join(&rel))?.nlink(), 1);
    let st = json(&f.a, &["backups", "stats", "--repo", f.r()]);
    assert_eq!(st["snapshots"], 1);
    Ok(())
}

#[test]
fn incremental_backup_copies_only_new_chunks() -> TestResult {
    let f = Fixture::new();
    let again = json(&f.a, &["backup", "--repo", f.r()]);
    assert_eq!(again["chunks_new"], 0, "{again}");
    assert_eq!(again["manifests_new"], 0, "{again}");
    write(
        &f.tree.join("boards/general/3.json"),
        "{\"id\":3,\"from\":\"carol\",\"subject\":\"new\",\"body\":\"a new post\"}\n",
    );
    ok(&f.a, &["import-bbs", f.tree.to_str().unwrap()]);
    let inc = json(&f.a, &["backup", "--repo", f.r()]);
    assert_eq!(inc["chunks_new"], 1, "{inc}");
    assert_eq!(inc["manifests_new"], 1, "{inc}");
    assert_eq!(inc["objects"], 9, "{inc}");
    // --only takes a part.
    let part = json(&f.a, &["backup", "--repo", f.r(), "--only", "message"]);
    assert_eq!(part["objects"], 3, "{part}");
    assert_eq!(part["chunks_new"], 0, "{part}");
    ok(&f.a, &["backups", "verify", "--repo", f.r(), "--read-data"]);
    Ok(())
}

#[test]
fn disaster_recovery_restores_identity_and_content() -> TestResult {
    let t = bbsync_tests::tempdir()?;
    let tree = t.path().join("gen");
    gen_small(&tree, 3);
    let a = t.path().join("a");
    init(&a, "primary");
    ok(&a, &["import-bbs", tree.to_str().unwrap()]);
    let repo = t.path().join("repo");
    let r = repo.to_str().unwrap();
    let out = ok_env(
        &a,
        &[
            "--json",
            "backup",
            "--repo-format",
            "1",
            "--repo",
            r,
            "--include-identity",
        ],
        &[("BBSYNC_PASSPHRASE", PASS)],
    );
    let b = js(&out);
    let id = ok(&a, &["id"]);
    assert!(
        b["identity_escrow"]
            .as_str()
            .unwrap()
            .starts_with("keys/identity."),
        "{b}"
    );
    ok(&a, &["backups", "verify", "--repo", r, "--read-data"]);

    // Wrong passphrase: named, nothing created.
    let lost = t.path().join("lost");
    let o = run_env(
        &lost,
        &["restore", "--repo", r],
        &[("BBSYNC_PASSPHRASE", "wrong passphrase")],
    );
    let line = assert_one_line_error(&o, "wrong passphrase");
    assert_eq!(
        line,
        format!(
            "error: wrong passphrase for the identity escrow {}",
            b["identity_escrow"].as_str().unwrap()
        )
    );
    assert!(!lost.exists());
    // No passphrase and no terminal: said so.
    let o = run_env(&lost, &["restore", "--repo", r], &[]);
    let line = assert_one_line_error(&o, "no passphrase");
    assert!(line.contains("needs a passphrase"), "{line}");

    // The right one: one command brings the node back.
    let out = ok_env(
        &lost,
        &["restore", "--repo", r],
        &[("BBSYNC_PASSPHRASE", PASS)],
    );
    assert!(out.contains("restored identity primary"), "{out}");
    assert_eq!(ok(&lost, &["id"]), id);
    let (code, v) = verify(&lost, &["--read-data"]);
    assert_eq!(code, 0, "{v}");
    let exp = t.path().join("exp");
    ok(&lost, &["export-bbs", exp.to_str().unwrap()]);
    assert_same_tree(&tree, &exp);
    // Restoring again changes nothing and takes no safety snapshot.
    let again = json(&lost, &["restore", "--repo", r]);
    assert_eq!(again["restored"], 0, "{again}");
    assert_eq!(again["safety_snapshot"], Value::Null);
    Ok(())
}

/// A snapshot that names two live objects of one name (only a crafted one
/// can: here an unsigned format-1 snapshot of `a` with an object of `b`,
/// the same instance, added after its own): the first takes the name, the
/// second is refused by name, and only the first's chunks are copied.
#[test]
fn of_two_objects_a_snapshot_gives_one_name_the_first_is_restored() -> TestResult {
    let t = bbsync_tests::tempdir()?;
    let (a, b, c) = (t.path().join("a"), t.path().join("b"), t.path().join("c"));
    init(&a, "alpha");
    // b and c are a, in data dirs of their own.
    for d in [&b, &c] {
        init(d, "alpha");
        fs::copy(a.join("identity.key"), d.join("identity.key"))?;
    }
    let repo = t.path().join("repo");
    let r = repo.to_str().unwrap();
    let mut snaps = Vec::new();
    for (d, who) in [(&a, "a"), (&b, "b")] {
        let tree = t.path().join(format!("tree-{who}"));
        write(
            &tree.join("boards/general/1.json"),
            format!("{{\"id\":1,\"from\":\"{who}\",\"body\":\"written by {who}\"}}\n"),
        );
        ok(d, &["import-bbs", tree.to_str().unwrap()]);
        let s = json(d, &["backup", "--repo-format", "1", "--repo", r]);
        snaps.push(s["snapshot"].as_str().unwrap().to_string());
    }
    let mut v = json(&a, &["backups", "show", "--repo", r, &snaps[0]]);
    let theirs = json(&a, &["backups", "show", "--repo", r, &snaps[1]]);
    let o = v.as_object_mut().unwrap();
    o.remove("signature");
    o.remove("host_id");
    o.insert("format".into(), 1.into());
    let objects = o["objects"].as_array_mut().unwrap();
    assert_eq!(objects.len(), 1);
    objects.push(theirs["objects"][0].clone());
    assert_ne!(objects[0]["object_id"], objects[1]["object_id"]);
    let list: Vec<bbsync_store::backup::repofile::SnapObject> =
        serde_json::from_value(o["objects"].clone())?;
    o.insert(
        "objects_sha256".into(),
        bbsync_store::backup::repofile::objects_sha256(&list).into(),
    );
    fs::write(
        repo.join(format!("snapshots/{}.json", snaps[0])),
        serde_json::to_vec(&v)?,
    )?;
    let r = json(
        &c,
        &["restore", "--repo", r, &snaps[0], "--trust-host", &card(&a)],
    );
    assert_eq!(r["restored"], 1, "{r}");
    assert_eq!(r["chunks_copied"], 1, "{r}");
    assert_eq!(
        r["refused"],
        serde_json::json!([[
            MSG,
            format!("another object already has the name {MSG} here")
        ]]),
        "{r}"
    );
    let dest = t.path().join("restored.json");
    ok(&c, &["export", MSG, dest.to_str().unwrap()]);
    assert!(fs::read_to_string(&dest)?.contains("written by a"));
    let (code, out) = verify(&c, &["--read-data"]);
    assert_eq!(code, 0, "{out}");
    Ok(())
}

/// An object whose name another live object of the restoring store holds
/// is refused by name (the name stays with the holder) and the rest are
/// restored; restoring the same snapshot twice changes nothing more.
#[test]
fn a_restored_object_whose_name_this_store_gives_another_object_is_refused() -> TestResult {
    let f = Fixture::new();
    // b has its own message:general/1 (its own object id).
    let own = f.root.join("own");
    write(
        &own.join("boards/general/1.json"),
        "{\"id\":1,\"from\":\"bob\",\"subject\":\"mine\",\"body\":\"b's own\"}\n",
    );
    ok(&f.b, &["import-bbs", own.to_str().unwrap()]);
    let ls = json(&f.b, &["ls"]);
    let holder = ls
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["kind"] == "message" && o["name"] == "general/1")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let r = json(
        &f.b,
        &["restore", "--repo", f.r(), "--trust-host", &f.host()],
    );
    assert_eq!(r["restored"], 7, "{r}");
    assert_eq!(
        r["refused"],
        serde_json::json!([[
            MSG,
            format!(
                "another object already has the name {MSG} here (object {}); the name stays with it",
                &holder[..16]
            )
        ]]),
        "{r}"
    );
    // b's own message is untouched, the others are a's.
    let dest = f.root.join("mine.json");
    ok(&f.b, &["export", MSG, dest.to_str().unwrap()]);
    let shown = fs::read_to_string(&dest).unwrap();
    assert!(shown.contains("b's own"), "{shown}");
    let (code, v) = verify(&f.b, &["--read-data"]);
    assert_eq!(code, 0, "{v}");
    // (The latest snapshot is now the safety snapshot of b's own.)
    assert!(r["safety_snapshot"].is_string(), "{r}");
    let again = json(&f.b, &["restore", "--repo", f.r(), &f.snap]);
    assert_eq!(again["restored"], 0, "{again}");
    assert_eq!(again["skipped_existing"], 7, "{again}");
    assert_eq!(again["refused"].as_array().unwrap().len(), 1, "{again}");
    Ok(())
}

#[test]
fn restore_into_another_identity_rekey_and_overwrite() -> TestResult {
    let f = Fixture::new();
    // b has entries in every envelope: it restores everything, trusting
    // the snapshot's host because the operator names it.
    let r = json(
        &f.b,
        &["restore", "--repo", f.r(), "--trust-host", &f.host()],
    );
    assert_eq!(r["restored"], 8, "{r}");
    assert_eq!(r["undecryptable"], serde_json::json!([]));
    assert_eq!(
        r["safety_snapshot"],
        Value::Null,
        "an empty store needs no safety snapshot"
    );
    assert_eq!(r["trusted"].as_array().unwrap().len(), 1, "{r}");
    let (code, v) = verify(&f.b, &["--read-data"]);
    assert_eq!(code, 0, "{v}");
    let out = f.root.join("out-b");
    ok(&f.b, &["export-bbs", out.to_str().unwrap()]);
    assert_same_tree(&f.tree, &out);
    // A third instance without entries restores nothing it cannot read.
    let c = f.root.join("c");
    init(&c, "gamma");
    let r = json(&c, &["restore", "--repo", f.r(), "--trust-host", &f.host()]);
    assert_eq!(r["restored"], 0, "{r}");
    assert_eq!(r["undecryptable"].as_array().unwrap().len(), 8, "{r}");
    // Same versions are skipped; --overwrite replaces them, after a
    // safety snapshot of the non-empty store.
    let r = json(&f.b, &["restore", "--repo", f.r()]);
    assert_eq!(r["restored"], 0);
    assert_eq!(r["skipped_existing"], 8);
    ok(&f.b, &["trust", "add", "--role", "full", &card(&c)]);
    let r = json(
        &f.b,
        &["restore", "--repo", f.r(), "--overwrite", "--rekey"],
    );
    assert_eq!(r["restored"], 8, "{r}");
    assert_eq!(r["replaced"], 8, "{r}");
    assert!(r["safety_snapshot"].is_string(), "{r}");
    // --rekey gave c (trusted full by b) an entry in every live envelope.
    assert_eq!(r["rekey"]["entries_added"], 8, "{r}");
    let (code, v) = verify(&f.b, &["--read-data"]);
    assert_eq!(code, 0, "{v}");
    Ok(())
}

#[test]
fn restore_to_tree_writes_plaintext_without_touching_the_store() -> TestResult {
    let f = Fixture::new();
    let before = snapshot(&f.a);
    let out = f.root.join("tree-out");
    let r = json(
        &f.a,
        &[
            "restore",
            "--repo",
            f.r(),
            "--to-tree",
            out.to_str().unwrap(),
            &f.snap,
        ],
    );
    assert_eq!(r["objects"], 8, "{r}");
    assert_same_tree(&f.tree, &out);
    assert_eq!(snapshot(&f.a), before);
    // --only.
    let out2 = f.root.join("tree-only");
    let r = json(
        &f.a,
        &[
            "restore",
            "--repo",
            f.r(),
            "--to-tree",
            out2.to_str().unwrap(),
            "--only",
            "message",
        ],
    );
    assert_eq!(r["objects"], 2, "{r}");
    assert!(out2.join("boards/general/1.json").is_file());
    assert!(!out2.join("config").exists());
    Ok(())
}

#[test]
fn prune_by_policy_and_delete() -> TestResult {
    let f = Fixture::new();
    for i in 3..6 {
        write(
            &f.tree.join(format!("boards/general/{i}.json")),
            format!("{{\"id\":{i}}}\n"),
        );
        ok(&f.a, &["import-bbs", f.tree.to_str().unwrap()]);
        json(&f.a, &["backup", "--repo", f.r()]);
    }
    let dry = json(
        &f.a,
        &[
            "backups",
            "prune",
            "--repo",
            f.r(),
            "--keep-last",
            "2",
            "--dry-run",
        ],
    );
    assert_eq!(dry["removed"].as_array().unwrap().len(), 2, "{dry}");
    assert_eq!(
        json(&f.a, &["backups", "list", "--repo", f.r()])
            .as_array()
            .unwrap()
            .len(),
        4
    );
    // Each snapshot adds a message that the later ones keep: removing the
    // two oldest frees no chunk.
    let p = json(
        &f.a,
        &["backups", "prune", "--repo", f.r(), "--keep-last", "2"],
    );
    assert_eq!(p["removed"].as_array().unwrap().len(), 2, "{p}");
    assert_eq!(p["kept"].as_object().unwrap().len(), 2, "{p}");
    assert!(
        p["removed"]
            .as_array()
            .unwrap()
            .contains(&Value::from(f.snap.clone())),
        "{p}"
    );
    let l = json(&f.a, &["backups", "list", "--repo", f.r()]);
    assert_eq!(l.as_array().unwrap().len(), 2);
    ok(&f.a, &["backups", "verify", "--repo", f.r(), "--read-data"]);
    // A message deleted from the BBS: its chunk goes once no snapshot has it.
    fs::remove_file(f.tree.join("boards/general/5.json"))?;
    ok(&f.a, &["import-bbs", f.tree.to_str().unwrap()]);
    let last = json(&f.a, &["backup", "--repo", f.r()]);
    let p = json(
        &f.a,
        &["backups", "prune", "--repo", f.r(), "--keep-last", "1"],
    );
    assert_eq!(p["removed"].as_array().unwrap().len(), 2, "{p}");
    assert!(p["chunks_removed"].as_u64().unwrap() >= 1, "{p}");
    assert!(p["manifests_removed"].as_u64().unwrap() >= 1, "{p}");
    ok(&f.a, &["backups", "verify", "--repo", f.r(), "--read-data"]);
    // delete the last one: nothing left.
    let d = json(
        &f.a,
        &[
            "backups",
            "delete",
            "--repo",
            f.r(),
            last["snapshot"].as_str().unwrap(),
        ],
    );
    assert!(d["chunks_removed"].as_u64().unwrap() > 0, "{d}");
    let st = json(&f.a, &["backups", "stats", "--repo", f.r()]);
    assert_eq!(
        (
            st["snapshots"].as_u64(),
            st["chunks"].as_u64(),
            st["manifests"].as_u64()
        ),
        (Some(0), Some(0), Some(0))
    );
    Ok(())
}

// ---- bad input: one scenario, one exact message ----

#[test]
fn missing_chunk() -> TestResult {
    let f = Fixture::new();
    let (rel, _) = f.chunk_rel(MSG);
    fs::remove_file(f.repo.join(&rel))?;
    let lines = f.verify_fails(&[]);
    assert_eq!(
        lines[0],
        format!(
            "missing-chunk      {rel}: missing, referenced by {MSG} in snapshot {}",
            f.snap
        )
    );
    assert!(
        lines[1].ends_with(": 1 problem(s): 1 missing-chunk"),
        "{lines:?}"
    );
    f.restore_refused(&format!(
        "error: backup repository {} is damaged: {rel}: missing, referenced by {MSG}; nothing was restored",
        f.r()
    ));
    Ok(())
}

#[test]
fn extra_unreferenced_chunk() -> TestResult {
    let f = Fixture::new();
    let bytes = b"not referenced by anything";
    let id = bbsync_protocol::ChunkId::of(bytes).to_hex();
    let rel = format!("chunks/{}/{id}", &id[..2]);
    write(&f.repo.join(&rel), bytes);
    let lines = f.verify_fails(&[]);
    assert_eq!(
        lines[0],
        format!(
            "orphan-chunk       {rel}: referenced by no snapshot (`bbsync backups prune` removes it)"
        )
    );
    assert!(
        lines[1].ends_with(": 1 problem(s): 1 orphan-chunk"),
        "{lines:?}"
    );
    // Checking one snapshot does not look at unreferenced files.
    ok(&f.a, &["backups", "verify", "--repo", f.r(), &f.snap]);
    // prune without a policy removes just that.
    let p = json(&f.a, &["backups", "prune", "--repo", f.r()]);
    assert_eq!(p["chunks_removed"], 1, "{p}");
    assert_eq!(p["removed"], serde_json::json!([]));
    ok(&f.a, &["backups", "verify", "--repo", f.r()]);
    Ok(())
}

#[test]
fn truncated_chunk() -> TestResult {
    let f = Fixture::new();
    let (rel, len) = f.chunk_rel(APPLET);
    let p = f.repo.join(&rel);
    let bytes = fs::read(&p)?;
    fs::remove_file(&p)?; // a hard link: never write through it into the store
    fs::write(&p, &bytes[..bytes.len() / 2])?;
    let half = bytes.len() / 2;
    let lines = f.verify_fails(&[]);
    assert_eq!(
        lines[0],
        format!(
            "truncated-chunk    {rel}: has {half} bytes, the manifest says {len} ({APPLET} in snapshot {})",
            f.snap
        )
    );
    f.restore_refused(&format!(
        "error: backup repository {} is damaged: {rel}: has {half} bytes, the manifest of {APPLET} says {len}; nothing was restored",
        f.r()
    ));
    // The store's own chunk was not touched.
    let (code, v) = verify(&f.a, &["--read-data"]);
    assert_eq!(code, 0, "{v}");
    Ok(())
}

#[test]
fn same_length_replaced_chunk() -> TestResult {
    let f = Fixture::new();
    let (rel, len) = f.chunk_rel(APPLET);
    let p = f.repo.join(&rel);
    let mut bytes = fs::read(&p)?;
    fs::remove_file(&p)?;
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x5a;
    fs::write(&p, &bytes)?;
    assert_eq!(bytes.len() as u32, len);
    // Sizes are right: only --read-data sees it.
    ok(&f.a, &["backups", "verify", "--repo", f.r()]);
    let lines = f.verify_fails(&["--read-data"]);
    assert_eq!(
        lines[0],
        format!(
            "corrupt-chunk      {rel}: content does not hash to its name, referenced by {APPLET} in snapshot {}",
            f.snap
        )
    );
    assert!(
        lines[1].ends_with(": 1 problem(s): 1 corrupt-chunk"),
        "{lines:?}"
    );
    f.restore_refused(&format!(
        "error: backup repository {} is damaged: {rel}: content does not hash to its name; nothing was restored",
        f.r()
    ));
    Ok(())
}

#[test]
fn missing_manifest() -> TestResult {
    let f = Fixture::new();
    let (_, mid) = f.object(MSG);
    let rel = format!("manifests/{mid}");
    fs::remove_file(f.repo.join(&rel))?;
    let lines = f.verify_fails(&[]);
    assert_eq!(
        lines[0],
        format!("missing-manifest   {rel}: missing (snapshot {})", f.snap)
    );
    assert!(
        lines[1].ends_with(": 1 problem(s): 1 missing-manifest"),
        "{lines:?}"
    );
    f.restore_refused(&format!(
        "error: backup repository {} is damaged: {rel}: missing; nothing was restored",
        f.r()
    ));
    Ok(())
}

#[test]
fn corrupted_snapshot_file() -> TestResult {
    let f = Fixture::new();
    let rel = format!("snapshots/{}.json", f.snap);
    let p = f.repo.join(&rel);
    let text = fs::read_to_string(&p)?;
    fs::write(&p, &text[..text.len() / 2])?;
    let lines = f.verify_fails(&[]);
    let prefix = format!(
        "bad-snapshot       {rel}: snapshot {}: {rel} is not a valid snapshot file (EOF while parsing",
        f.snap
    );
    assert!(lines[0].starts_with(&prefix), "{lines:?}");
    let o = run(&f.b, &["restore", "--repo", f.r()]);
    let line = assert_one_line_error(&o, "corrupt snapshot");
    assert!(
        line.starts_with(&format!(
            "error: snapshot {}: {rel} is not a valid snapshot file (EOF while parsing",
            f.snap
        )),
        "{line}"
    );
    Ok(())
}

#[test]
fn snapshot_checksum_mismatch() -> TestResult {
    let f = Fixture::new();
    let rel = format!("snapshots/{}.json", f.snap);
    // Only the unsigned format-1 files carry a checksum (a signed snapshot
    // has its host's signature instead, see trust_boundaries.rs).
    let p = f.make_legacy(&f.snap);
    let mut v: Value = serde_json::from_slice(&fs::read(&p)?)?;
    let said = v["objects_sha256"].as_str().unwrap().to_string();
    // Drop one object from the list, as a careless edit or a truncation would.
    v["objects"].as_array_mut().unwrap().pop();
    fs::write(&p, serde_json::to_vec_pretty(&v)?)?;
    let lines = f.verify_fails(&[]);
    let prefix = format!(
        "snapshot-checksum  {rel}: snapshot {}: checksum mismatch: the file says {said}, its object list hashes to ",
        f.snap
    );
    assert!(lines[0].starts_with(&prefix), "{lines:?}");
    let before = snapshot(&f.b);
    let o = run(&f.b, &["restore", "--repo", f.r()]);
    let line = assert_one_line_error(&o, "checksum");
    assert!(
        line.starts_with(&format!(
            "error: snapshot {}: checksum mismatch: the file says {said}",
            f.snap
        )),
        "{line}"
    );
    assert_eq!(snapshot(&f.b), before);
    Ok(())
}

#[test]
fn missing_repo_json() -> TestResult {
    let f = Fixture::new();
    fs::remove_file(f.repo.join("repo.json"))?;
    let expected = format!(
        "error: {} is not a bbsync backup repository (no repo.json)",
        f.r()
    );
    for args in [
        vec!["backups", "verify", "--repo", f.r()],
        vec!["backups", "list", "--repo", f.r()],
        vec!["backup", "--repo", f.r()],
    ] {
        assert_eq!(fail(&f.a, &args), expected, "{args:?}");
    }
    f.restore_refused(&expected);
    Ok(())
}

#[test]
fn newer_repo_format() -> TestResult {
    let f = Fixture::new();
    let p = f.repo.join("repo.json");
    let mut v: Value = serde_json::from_slice(&fs::read(&p)?)?;
    v["format"] = 2.into();
    fs::write(&p, serde_json::to_vec(&v)?)?;
    let expected = format!(
        "error: backup repository {} has format 2; this bbsync reads format 1 (upgrade bbsync)",
        f.r()
    );
    assert_eq!(
        fail(&f.a, &["backups", "verify", "--repo", f.r()]),
        expected
    );
    assert_eq!(fail(&f.a, &["backup", "--repo", f.r()]), expected);
    f.restore_refused(&expected);
    Ok(())
}

#[test]
fn nonexistent_snapshot() -> TestResult {
    let f = Fixture::new();
    let expected = format!("error: no snapshot 20990101T000000Z-deadbeef in {}", f.r());
    for args in [
        vec![
            "backups",
            "show",
            "--repo",
            f.r(),
            "20990101T000000Z-deadbeef",
        ],
        vec![
            "backups",
            "verify",
            "--repo",
            f.r(),
            "20990101T000000Z-deadbeef",
        ],
        vec![
            "backups",
            "delete",
            "--repo",
            f.r(),
            "20990101T000000Z-deadbeef",
        ],
    ] {
        assert_eq!(fail(&f.a, &args), expected, "{args:?}");
    }
    let before = snapshot(&f.b);
    let o = run(
        &f.b,
        &["restore", "--repo", f.r(), "20990101T000000Z-deadbeef"],
    );
    assert_eq!(assert_one_line_error(&o, "no such snapshot"), expected);
    assert_eq!(snapshot(&f.b), before);
    Ok(())
}

#[test]
fn bad_cron_expression_stops_serve_before_it_starts() -> TestResult {
    let t = bbsync_tests::tempdir()?;
    let a = t.path().join("a");
    init(&a, "cron");
    let cfg = a.join("config.toml");
    let mut text = fs::read_to_string(&cfg)?;
    text.push_str("\n[[backup]]\ncron = \"61 * * * *\"\n");
    fs::write(&cfg, text)?;
    let e = fail(&a, &["serve", "--listen", "/ip4/127.0.0.1/tcp/0"]);
    assert_eq!(
        e,
        "error: cron expression \"61 * * * *\": \"61\" is not a minute (0-59)"
    );
    Ok(())
}

#[test]
fn clone_from_backup_fetches_only_what_the_backup_lacks() -> TestResult {
    let f = Fixture::new();
    // After the backup, one more post on the source.
    write(
        &f.tree.join("boards/general/9.json"),
        "{\"id\":9,\"body\":\"after the backup\"}\n",
    );
    ok(&f.a, &["import-bbs", f.tree.to_str().unwrap()]);
    let server = serve(&f.a);
    // The repository's host is the source pinned by ADDR: the clone
    // accepts its signed snapshot without a separate `trust add`.
    let out = ok(&f.b, &["clone", &server.addr, "--from-backup", f.r()]);
    let last = out.lines().last().unwrap();
    assert!(
        last.starts_with("clone --from-backup: ") && last.ends_with(", 1 from the network"),
        "{out}"
    );
    let o = f.root.join("cloned");
    ok(&f.b, &["export-bbs", o.to_str().unwrap()]);
    assert_same_tree(&f.tree, &o);
    drop(server);
    Ok(())
}

/// `clone ADDR --from-backup REPO` accepts only a snapshot written by the
/// source that ADDR pins: a backup by anyone else is refused before
/// anything is written, and the clone's source is not what decides it.
#[test]
fn clone_from_backup_refuses_a_snapshot_of_another_host() -> TestResult {
    let f = Fixture::new();
    let c = f.root.join("c");
    init(&c, "carol");
    let other = f.root.join("other-bbs");
    mini_bbs(&other);
    ok(&c, &["import-bbs", other.to_str().unwrap()]);
    let repo = f.root.join("carols-repo");
    ok(&c, &["backup", "--repo", repo.to_str().unwrap()]);
    let server = serve(&f.a);
    let err = fail(
        &f.b,
        &[
            "clone",
            &server.addr,
            "--from-backup",
            repo.to_str().unwrap(),
        ],
    );
    assert_mentions(
        &err,
        &["carol", "does not trust as full", "nothing was restored"],
    );
    assert_eq!(json(&f.b, &["status"])["objects"], 0, "{err}");
    assert_eq!(json(&f.b, &["trust", "list"]), serde_json::json!([]));
    drop(server);
    Ok(())
}

#[test]
fn scheduled_backups_run_in_serve_and_a_failing_one_does_not_stop_it() -> TestResult {
    let t = bbsync_tests::tempdir()?;
    let a = t.path().join("a");
    init(&a, "cron");
    let tree = t.path().join("bbs");
    mini_bbs(&tree);
    ok(&a, &["import-bbs", tree.to_str().unwrap()]);
    let good = t.path().join("good");
    let bad = t.path().join("not-a-dir");
    fs::write(&bad, "a file where a repository should be")?;
    let cfg = a.join("config.toml");
    let mut text = fs::read_to_string(&cfg)?;
    text.push_str(&format!(
        "\n[[backup]]\ncron = \"* * * * *\"\nrepo = {:?}\ntags = [\"cron\"]\nkeep_last = 2\n\n[[backup]]\ncron = \"* * * * *\"\nrepo = {:?}\n",
        good.to_str().unwrap(),
        bad.to_str().unwrap()
    ));
    fs::write(&cfg, text)?;
    let log = t.path().join("serve.log");
    let out = t.path().join("serve.out");
    let token = ok(&a, &["http", "token"]).trim().to_string();
    let mut child = StdCommand::new(env!("CARGO_BIN_EXE_bbsync"))
        .args(["--no-progress", "-v", "--data-dir"])
        .arg(&a)
        .args([
            "serve",
            "--listen",
            "/ip4/127.0.0.1/tcp/0",
            "--http",
            "127.0.0.1:0",
        ])
        .env_remove("BBSYNC_DATA")
        .env_remove("BBSYNC_LOG")
        .stdout(fs::File::create(&out)?)
        .stderr(fs::File::create(&log)?)
        .spawn()?;
    // Cron ticks once a minute: the first run comes within 60 s.
    wait_for(75, "a scheduled snapshot", || {
        fs::read_dir(good.join("snapshots"))
            .map(|d| d.count())
            .unwrap_or(0)
            >= 1
    });
    wait_for(10, "the failed run in the log", || {
        fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("failed (tried again at the next tick)")
    });
    assert!(child.try_wait()?.is_none(), "serve stopped");
    let text = fs::read_to_string(&log)?;
    assert!(text.contains("scheduled backup "), "{text}");
    // The node still answers (through its control socket).
    let s = json(&a, &["backups", "list", "--repo", good.to_str().unwrap()]);
    assert_eq!(s[0]["tags"], serde_json::json!(["cron"]));
    assert_eq!(s[0]["objects"], 8);
    // The scheduled runs count in /metrics like the API's: the good
    // repository's last success, and one failed backup job.
    let base = fs::read_to_string(&out)?
        .lines()
        .find_map(|l| l.strip_prefix("http: ").map(str::to_string))
        .expect("serve printed its http address");
    let mut reply = ureq::get(&format!("{base}metrics"))
        .header("Authorization", &format!("Bearer {token}"))
        .call()?;
    let metrics = reply.body_mut().read_to_string()?;
    let repo = good.to_str().unwrap();
    let last = crate::http::sample(
        &metrics,
        "bbsync_backup_last_success_timestamp_seconds",
        &[("repository", repo)],
    );
    assert!(last.is_some_and(|t| t > 1.7e9), "{metrics}");
    let failed = crate::http::sample(
        &metrics,
        "bbsync_job_duration_seconds_count",
        &[("kind", "backup"), ("outcome", "failure")],
    );
    assert!(failed.is_some_and(|n| n >= 1.0), "{metrics}");
    child.kill()?;
    child.wait()?;
    Ok(())
}

#[test]
fn restore_skip_chunks_then_fetch_missing_from_a_peer() -> TestResult {
    let f = Fixture::new();
    let r = json(
        &f.b,
        &[
            "restore",
            "--repo",
            f.r(),
            "--skip-chunks",
            "--trust-host",
            &f.host(),
        ],
    );
    assert_eq!(r["restored"], 8, "{r}");
    assert_eq!(r["chunks_copied"], 0, "{r}");
    let incomplete = r["incomplete"].as_u64().unwrap();
    assert!(incomplete >= 5, "{r}");
    assert!(chunk_files(&f.b).is_empty());
    let server = serve(&f.a);
    ok(&f.b, &["fetch-missing", "--from", &server.addr]);
    let (code, v) = verify(&f.b, &["--read-data"]);
    assert_eq!(code, 0, "{v}");
    let out = f.root.join("fetched");
    ok(&f.b, &["export-bbs", out.to_str().unwrap()]);
    assert_same_tree(&f.tree, &out);
    drop(server);
    Ok(())
}

/// Issue 13: eight backups in a row (most within one second), each after a
/// change; `backups list` shows them in the order they were taken, and
/// `latest` is the last one, not whichever sorts last by its random part.
#[test]
fn latest_is_the_last_of_several_backups_within_one_second() -> TestResult {
    let f = Fixture::new();
    let msg = f.tree.join("boards/general/1.json");
    let original = fs::read_to_string(&msg)?;
    let mut taken = vec![f.snap.clone()];
    for i in 0..8 {
        fs::write(&msg, original.replace("}", &format!(",\"edit\":{i}}}")))?;
        ok(&f.a, &["import-bbs", f.tree.to_str().unwrap()]);
        let r = json(
            &f.a,
            &["backup", "--repo", f.r(), "--description", &format!("n{i}")],
        );
        taken.push(r["snapshot"].as_str().unwrap().to_string());
    }
    let l = json(&f.a, &["backups", "list", "--repo", f.r()]);
    let listed: Vec<String> = l
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(listed, taken, "backups list is not in the order taken");
    let s = json(&f.a, &["backups", "show", "--repo", f.r(), "latest"]);
    assert_eq!(s["id"], taken[8].as_str());
    assert_eq!(s["description"], "n7");
    let out = f.root.join("latest-tree");
    ok(
        &f.a,
        &[
            "restore",
            "--repo",
            f.r(),
            "--to-tree",
            out.to_str().unwrap(),
            "latest",
        ],
    );
    assert_same_tree(&f.tree, &out);
    Ok(())
}
