//! Backup repository format 2 through the commands (issue 13): the default
//! for a new repository; backup, `backups list|show|verify|stats|export|
//! migrate`, restore (into another store, `--to-tree`, disaster recovery
//! with the escrow), `clone --from-backup`, an export file read in place,
//! locks, and the mutilation table on packs, index and snapshot files, one
//! scenario, one exact message.

#![allow(clippy::unwrap_used)]

use std::{
    fs,
    path::{Path, PathBuf},
};

use crate::common::*;
use bbsync_store::backup::Repo;
use serde_json::Value;

const PASS: &str = "correct horse battery staple";
const MSG: &str = "message:general/1";

/// A store `a` with the mini BBS, `b` trusted `full` by `a`, and a backup
/// of `a` (with its escrow) in a new repository of the default format.
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
        let o = run_env(
            &a,
            &[
                "--json",
                "backup",
                "--repo",
                repo.to_str().unwrap(),
                "--include-identity",
                "--description",
                "nightly",
            ],
            &[("BBSYNC_PASSPHRASE", PASS)],
        );
        assert_eq!(o.code, 0, "{}", o.stderr);
        let r: Value = serde_json::from_str(&o.stdout).unwrap();
        Fixture {
            _t: t,
            root,
            a,
            b,
            tree,
            repo,
            snap: r["snapshot"].as_str().unwrap().to_string(),
        }
    }

    fn r(&self) -> &str {
        self.repo.to_str().unwrap()
    }

    /// The data pack and offset of the first chunk of `spec`, from the index.
    fn chunk_at(&self, spec: &str) -> (String, u64, bbsync_protocol::ChunkId) {
        let s = bbsync_store::Store::open(&self.a).unwrap();
        let id = s.resolve(spec).unwrap();
        let m = s.dangerously_manifest_unverified(&id).unwrap();
        drop(s);
        wait_unlocked(&self.a);
        let c = m.chunks[0].id;
        let repo = Repo::open_dir(&self.repo).unwrap();
        let reader = repo.reader().unwrap();
        let at = reader.index().unwrap().chunks[&c];
        (reader.chunk_path(&c), u64::from(at.offset), c)
    }

    fn verify_fails(&self, extra: &[&str]) -> Vec<String> {
        let mut args = vec!["backups", "verify", "--repo", self.r()];
        args.extend_from_slice(extra);
        let o = run(&self.a, &args);
        assert_eq!(o.code, 1, "{}\n{}", o.stdout, o.stderr);
        o.stdout.lines().map(str::to_string).collect()
    }

    /// A restore into `b` that must be refused with exactly `expected`,
    /// leaving `b` as it was.
    fn restore_refused(&self, expected: &str) {
        let before = snapshot(&self.b);
        let o = run(
            &self.b,
            &[
                "restore",
                "--repo",
                self.r(),
                "--trust-host",
                &card(&self.a),
            ],
        );
        assert_eq!(
            assert_one_line_error(&o, "restore of a damaged repository"),
            expected
        );
        assert_eq!(
            snapshot(&self.b),
            before,
            "a refused restore changed the store"
        );
    }
}

#[test]
fn format_2_is_the_default_and_every_command_works_on_it() -> TestResult {
    let f = Fixture::new();
    assert!(f.repo.join("config").is_file());
    assert!(!f.repo.join("repo.json").exists());
    assert!(!f.repo.join("chunks").exists());
    assert_eq!(
        files(&f.repo, "snapshots"),
        vec![format!("snapshots/{}", f.snap)]
    );
    let keys = files(&f.repo, "keys");
    assert_eq!(keys.len(), 1, "{keys:?}");
    assert!(
        keys[0].starts_with(&format!("keys/{}-", instance_hex(&f.a))),
        "{keys:?}"
    );
    assert!(files(&f.repo, "locks").is_empty(), "a lock stayed behind");
    let out = ok(&f.a, &["backups", "verify", "--repo", f.r(), "--read-data"]);
    assert!(out.contains(": OK"), "{out}");
    let one = ok(
        &f.a,
        &[
            "backups",
            "verify",
            "--repo",
            f.r(),
            "latest",
            "--read-data",
        ],
    );
    assert!(one.contains("1 snapshots") && one.contains(": OK"), "{one}");
    let l = json(&f.a, &["backups", "list", "--repo", f.r()]);
    assert_eq!(l[0]["id"], f.snap.as_str());
    assert_eq!(l[0]["objects"], 8);
    let s = json(&f.a, &["backups", "show", "--repo", f.r(), "latest"]);
    assert_eq!(s["signature"], "verified");
    assert_eq!(s["description"], "nightly");
    let st = json(&f.a, &["backups", "stats", "--repo", f.r()]);
    assert_eq!(st["format"], 2, "{st}");
    assert_eq!(st["snapshots"], 1, "{st}");
    assert_eq!(st["manifests"], 8, "{st}");
    assert_eq!(st["index_files"], 1, "{st}");

    // Nothing new: no pack, no index file; one new post: one pack, one
    // manifest pack, one index file.
    let again = json(&f.a, &["backup", "--repo", f.r()]);
    assert_eq!(
        (
            again["chunks_new"].as_u64(),
            again["manifests_new"].as_u64()
        ),
        (Some(0), Some(0)),
        "{again}"
    );
    assert_eq!(files(&f.repo, "index").len(), 1);
    let data_before = files(&f.repo, "data").len();
    write(
        &f.tree.join("boards/general/3.json"),
        "{\"id\":3,\"from\":\"carol\",\"subject\":\"new\",\"body\":\"a new post\"}\n",
    );
    ok(&f.a, &["import-bbs", f.tree.to_str().unwrap()]);
    let inc = json(&f.a, &["backup", "--repo", f.r()]);
    let full = inc["snapshot"].as_str().unwrap().to_string();
    assert_eq!(
        (inc["chunks_new"].as_u64(), inc["manifests_new"].as_u64()),
        (Some(1), Some(1)),
        "{inc}"
    );
    assert_eq!(files(&f.repo, "index").len(), 2);
    assert_eq!(files(&f.repo, "data").len(), data_before + 1);
    // --only takes a part and writes nothing new.
    let part = json(&f.a, &["backup", "--repo", f.r(), "--only", "message"]);
    assert_eq!(
        (part["objects"].as_u64(), part["chunks_new"].as_u64()),
        (Some(3), Some(0)),
        "{part}"
    );
    ok(&f.a, &["backups", "verify", "--repo", f.r(), "--read-data"]);

    // Restore into another store, naming the host; --to-tree.
    let r = json(
        &f.b,
        &[
            "restore",
            "--repo",
            f.r(),
            "--trust-host",
            &card(&f.a),
            &full,
        ],
    );
    assert_eq!(r["restored"], 9, "{r}");
    let (code, v) = verify(&f.b, &["--read-data"]);
    assert_eq!(code, 0, "{v}");
    let exp = f.root.join("exp");
    ok(&f.b, &["export-bbs", exp.to_str().unwrap()]);
    assert_same_tree(&f.tree, &exp);
    let out = f.root.join("tree-out");
    ok(
        &f.a,
        &[
            "restore",
            "--repo",
            f.r(),
            "--to-tree",
            out.to_str().unwrap(),
            &full,
        ],
    );
    assert_same_tree(&f.tree, &out);

    // Disaster recovery: an empty data dir, the escrow of the first backup
    // (the later ones named none).
    let lost = f.root.join("lost");
    let out = run_env(
        &lost,
        &["restore", "--repo", f.r(), &full],
        &[("BBSYNC_PASSPHRASE", PASS)],
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stdout.contains("restored identity alpha"),
        "{}",
        out.stdout
    );
    assert_eq!(ok(&lost, &["id"]), ok(&f.a, &["id"]));
    let exp = f.root.join("exp-lost");
    ok(&lost, &["export-bbs", exp.to_str().unwrap()]);
    assert_same_tree(&f.tree, &exp);
    // A new repository of format 1 on request; the flag does not convert
    // an existing one.
    let old = f.root.join("old");
    ok(
        &f.a,
        &[
            "backup",
            "--repo-format",
            "1",
            "--repo",
            old.to_str().unwrap(),
        ],
    );
    assert!(old.join("repo.json").is_file() && !old.join("config").exists());
    assert_eq!(
        fail(&f.a, &["backup", "--repo-format", "1", "--repo", f.r()]),
        format!(
            "error: --repo-format 1: {} is a repository of format 2 already (a repository keeps its format; nothing was backed up)",
            f.r()
        )
    );
    Ok(())
}

#[test]
fn export_is_read_in_place_by_restore_and_clone_and_a_damaged_one_is_refused() -> TestResult {
    let f = Fixture::new();
    let file = f.root.join("bbs.tar");
    let e = json(
        &f.a,
        &[
            "backups",
            "export",
            "latest",
            file.to_str().unwrap(),
            "--repo",
            f.r(),
        ],
    );
    assert_eq!(e["snapshot"], f.snap.as_str(), "{e}");
    assert_eq!(e["identity_escrow"], true, "{e}");
    let fp = file.to_str().unwrap();
    ok(&f.a, &["backups", "verify", "--repo", fp, "--read-data"]);
    let l = json(&f.a, &["backups", "list", "--repo", fp]);
    assert_eq!(l[0]["id"], f.snap.as_str());
    // Disaster recovery from the file alone.
    let lost = f.root.join("lost");
    let o = run_env(
        &lost,
        &["restore", "--repo", fp],
        &[("BBSYNC_PASSPHRASE", PASS)],
    );
    assert_eq!(o.code, 0, "{}", o.stderr);
    let exp = f.root.join("exp");
    ok(&lost, &["export-bbs", exp.to_str().unwrap()]);
    assert_same_tree(&f.tree, &exp);
    // An export is read only: no backup into it.
    assert_eq!(
        fail(&f.a, &["backup", "--repo", fp]),
        format!(
            "error: {fp} is a file (an export file is read only); a backup writes into a repository directory"
        )
    );
    // Cut short: refused by the scan, nothing restored.
    let bytes = fs::read(&file)?;
    let cut = f.root.join("cut.tar");
    fs::write(&cut, &bytes[..bytes.len() / 2])?;
    let before = snapshot(&f.b);
    let o = run(
        &f.b,
        &[
            "restore",
            "--repo",
            cut.to_str().unwrap(),
            "--trust-host",
            &card(&f.a),
        ],
    );
    let line = assert_one_line_error(&o, "a cut export");
    assert!(
        line.starts_with(&format!(
            "error: {} is not a valid bbsync export file: ",
            cut.display()
        )),
        "{line}"
    );
    assert_eq!(snapshot(&f.b), before);
    // A flipped byte inside a chunk: the classified message.
    let (pack, offset, c) = f.chunk_at(MSG);
    let at = find(&bytes, pack.as_bytes()).expect("pack member in the tar");
    // The member's data starts at the next 512-byte block after its header.
    let data_start = (at / 512 + 1) * 512;
    let mut flipped = bytes.clone();
    flipped[data_start + offset as usize] ^= 0x01;
    let bad = f.root.join("flipped.tar");
    fs::write(&bad, &flipped)?;
    let o = run(
        &f.b,
        &[
            "restore",
            "--repo",
            bad.to_str().unwrap(),
            "--trust-host",
            &card(&f.a),
        ],
    );
    assert_eq!(
        assert_one_line_error(&o, "a flipped chunk in an export"),
        format!(
            "error: backup repository {} is damaged: {pack}: chunk {}: content does not hash to its id; nothing was restored",
            bad.display(),
            c.short()
        )
    );
    assert_eq!(snapshot(&f.b), before);
    // clone --from-backup FILE (b is trusted by a): everything from the
    // file, nothing from the network.
    let server = serve(&f.a);
    let out = ok(&f.b, &["clone", &server.addr, "--from-backup", fp]);
    let last = out.lines().last().unwrap();
    assert!(
        last.starts_with("clone --from-backup: ") && last.ends_with(", 0 from the network"),
        "{out}"
    );
    let exp = f.root.join("cloned");
    ok(&f.b, &["export-bbs", exp.to_str().unwrap()]);
    assert_same_tree(&f.tree, &exp);
    drop(server);
    Ok(())
}

fn instance_hex(data: &Path) -> String {
    json(data, &["status"])["instance_id"]
        .as_str()
        .unwrap()
        .to_string()
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

// ---- the mutilation table: one scenario, one exact message ----

#[test]
fn missing_pack() -> TestResult {
    let f = Fixture::new();
    let (pack, _, c) = f.chunk_at(MSG);
    fs::remove_file(f.repo.join(&pack))?;
    let lines = f.verify_fails(&[]);
    let l = lines
        .iter()
        .find(|l| l.starts_with("missing-pack"))
        .unwrap();
    assert!(
        l.starts_with(&format!(
            "missing-pack       {pack}: missing, holds chunks of "
        )),
        "{lines:?}"
    );
    let s = json(&f.a, &["backups", "show", "--repo", f.r(), "latest"]);
    assert!(s["objects"].as_array().unwrap().len() == 8);
    let o = run(
        &f.b,
        &["restore", "--repo", f.r(), "--trust-host", &card(&f.a)],
    );
    let line = assert_one_line_error(&o, "missing pack");
    assert!(
        line.starts_with(&format!(
            "error: backup repository {} is damaged: {pack}: missing, holds chunk ",
            f.r()
        )) && line.ends_with("; nothing was restored"),
        "{line} ({})",
        c.short()
    );
    Ok(())
}

#[test]
fn truncated_pack() -> TestResult {
    let f = Fixture::new();
    let (pack, _, _) = f.chunk_at(MSG);
    let p = f.repo.join(&pack);
    let len = fs::metadata(&p)?.len();
    fs::OpenOptions::new()
        .write(true)
        .open(&p)?
        .set_len(len / 2)?;
    let lines = f.verify_fails(&[]);
    let l = lines
        .iter()
        .find(|l| l.starts_with("truncated-pack"))
        .unwrap();
    assert!(
        l.starts_with(&format!(
            "truncated-pack     {pack}: has {} bytes, the index says {len}, holds chunks of ",
            len / 2
        )),
        "{lines:?}"
    );
    let o = run(
        &f.b,
        &["restore", "--repo", f.r(), "--trust-host", &card(&f.a)],
    );
    let line = assert_one_line_error(&o, "truncated pack");
    assert!(
        line.starts_with(&format!(
            "error: backup repository {} is damaged: {pack}: has {} bytes, chunk ",
            f.r(),
            len / 2
        )) && line.ends_with("; nothing was restored"),
        "{line}"
    );
    Ok(())
}

#[test]
fn corrupt_chunk_in_a_pack() -> TestResult {
    let f = Fixture::new();
    let (pack, offset, c) = f.chunk_at(MSG);
    let p = f.repo.join(&pack);
    let mut bytes = fs::read(&p)?;
    bytes[offset as usize] ^= 0x01;
    fs::write(&p, &bytes)?;
    // Presence and sizes are fine; the data is not.
    ok(&f.a, &["backups", "verify", "--repo", f.r()]);
    let lines = f.verify_fails(&["--read-data"]);
    assert_eq!(
        lines[0],
        format!(
            "corrupt-chunk      {pack}: entry {} at offset {offset} does not hash to its id",
            &c.to_hex()[..16]
        )
    );
    f.restore_refused(&format!(
        "error: backup repository {} is damaged: {pack}: chunk {}: content does not hash to its id; nothing was restored",
        f.r(),
        c.short()
    ));
    Ok(())
}

#[test]
fn missing_index_file() -> TestResult {
    let f = Fixture::new();
    let ix = files(&f.repo, "index");
    fs::remove_file(f.repo.join(&ix[0]))?;
    let lines = f.verify_fails(&[]);
    assert!(
        lines.iter().any(|l| l.starts_with("missing-manifest")),
        "{lines:?}"
    );
    assert!(
        lines.iter().any(|l| l.starts_with("unindexed-pack")),
        "{lines:?}"
    );
    let s = json(&f.a, &["backups", "show", "--repo", f.r(), "latest"]);
    let first = s["objects"][0]["manifest_id"].as_str().unwrap().to_string();
    f.restore_refused(&format!(
        "error: backup repository {} is damaged: manifest {first}: in no index file (an index file is missing or damaged); nothing was restored",
        f.r()
    ));
    Ok(())
}

#[test]
fn changed_index_file() -> TestResult {
    let f = Fixture::new();
    let ix = files(&f.repo, "index");
    let p = f.repo.join(&ix[0]);
    let mut bytes = fs::read(&p)?;
    let n = bytes.len();
    bytes[n - 1] ^= 0x01;
    fs::write(&p, &bytes)?;
    let lines = f.verify_fails(&[]);
    assert_eq!(
        lines[0],
        format!(
            "bad-index          {}: {}: its content does not hash to its name (changed or damaged)",
            ix[0], ix[0]
        )
    );
    f.restore_refused(&format!(
        "error: backup repository {} is damaged: {}: its content does not hash to its name (changed or damaged)",
        f.r(),
        ix[0]
    ));
    Ok(())
}

#[test]
fn bad_snapshot_signature() -> TestResult {
    let f = Fixture::new();
    let rel = format!("snapshots/{}", f.snap);
    let p = f.repo.join(&rel);
    let bytes = fs::read(&p)?;
    let at = find(&bytes, b"nightly").unwrap();
    let mut changed = bytes.clone();
    changed[at] = b'N';
    fs::write(&p, &changed)?;
    let lines = f.verify_fails(&[]);
    assert_eq!(
        lines[0],
        format!(
            "bad-snapshot-signature {rel}: snapshot {}: bad signature: {rel} was changed after its host signed it",
            f.snap
        )
    );
    f.restore_refused(&format!(
        "error: snapshot {}: bad signature: {rel} was changed after its host signed it",
        f.snap
    ));
    Ok(())
}

// ---- locks ----

#[test]
fn a_live_lock_refuses_with_its_holder_and_lock_wait_waits_for_it() -> TestResult {
    let f = Fixture::new();
    let lock = f.repo.join("locks/00112233445566778899aabbccddeeff");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis() as u64;
    let rec = serde_json::json!({
        "host": "ab".repeat(32), "hostname": "elsewhere", "pid": 4242,
        "exclusive": true, "operation": "prune", "created_ms": now, "refreshed_ms": now,
    });
    write(&lock, serde_json::to_vec(&rec)?);
    let since = bbsync_store::backup::rfc3339(now);
    let refusal = |what: &str| {
        format!(
            "error: backup repository {} is locked by elsewhere (instance abababababababab, pid 4242, since {since}) for a prune; nothing was {what} (retry later, or remove locks/00112233445566778899aabbccddeeff if that process is gone)",
            f.r()
        )
    };
    assert_eq!(
        fail(&f.a, &["backup", "--repo", f.r()]),
        refusal("backed up")
    );
    assert_eq!(
        fail(&f.a, &["backups", "verify", "--repo", f.r()]),
        refusal("verified")
    );
    let before = snapshot(&f.b);
    let o = run(
        &f.b,
        &["restore", "--repo", f.r(), "--trust-host", &card(&f.a)],
    );
    assert_eq!(assert_one_line_error(&o, "locked"), refusal("restored"));
    assert_eq!(snapshot(&f.b), before);
    // --lock-wait: waits, then refuses the same way; the lock going away
    // meanwhile lets the backup through.
    let o = run(&f.a, &["backup", "--repo", f.r(), "--lock-wait", "1s"]);
    assert_eq!(o.code, 1);
    let lines: Vec<&str> = o.stderr.lines().collect();
    assert_eq!(lines.len(), 2, "{}", o.stderr);
    assert!(
        lines[0].contains("waiting up to 1s (--lock-wait) for the lock: backup repository"),
        "{}",
        o.stderr
    );
    assert_eq!(lines[1], refusal("backed up"));
    // This backup starts while the lock is there; once it says it waits,
    // the lock goes, and it succeeds by looking again.
    let mut child = std::process::Command::new(assert_cmd::cargo::cargo_bin("bbsync"))
        .args(["--no-progress", "--data-dir", f.a.to_str().unwrap()])
        .args(["--json", "backup", "--repo", f.r(), "--lock-wait", "2m"])
        .env_remove("BBSYNC_DATA")
        .env_remove("FAILPOINTS")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    let mut err = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut first = String::new();
    std::io::BufRead::read_line(&mut err, &mut first)?;
    assert!(
        first.contains("waiting up to 120s (--lock-wait) for the lock: backup repository"),
        "{first}"
    );
    assert_eq!(files(&f.repo, "snapshots").len(), 1);
    fs::remove_file(&lock)?;
    let o = child.wait_with_output()?;
    assert!(o.status.success(), "{first}");
    assert_eq!(files(&f.repo, "snapshots").len(), 2);
    // A stale lock (a dead process of this machine) is removed and reported.
    let host = fs::read_to_string("/proc/sys/kernel/hostname")?
        .trim()
        .to_string();
    let stale = serde_json::json!({
        "host": "ab".repeat(32), "hostname": host, "pid": u32::MAX - 1,
        "exclusive": true, "operation": "prune", "created_ms": now, "refreshed_ms": now,
    });
    write(&lock, serde_json::to_vec(&stale)?);
    ok(&f.a, &["backup", "--repo", f.r()]);
    assert!(files(&f.repo, "locks").is_empty());
    Ok(())
}

// ---- migrate ----

#[test]
fn migrate_converts_a_format_1_repository_resumably() -> TestResult {
    let f = Fixture::new();
    let old = f.root.join("old");
    let o = old.to_str().unwrap();
    let b1 = run_env(
        &f.a,
        &[
            "--json",
            "backup",
            "--repo-format",
            "1",
            "--repo",
            o,
            "--include-identity",
        ],
        &[("BBSYNC_PASSPHRASE", PASS)],
    );
    assert_eq!(b1.code, 0, "{}", b1.stderr);
    write(
        &f.tree.join("boards/general/3.json"),
        "{\"id\":3,\"from\":\"carol\",\"subject\":\"new\",\"body\":\"a new post\"}\n",
    );
    ok(&f.a, &["import-bbs", f.tree.to_str().unwrap()]);
    let s2 = json(&f.a, &["backup", "--repo", o])["snapshot"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(old.join("repo.json").is_file());
    let listed = json(&f.a, &["backups", "list", "--repo", o]);
    // Stopped after the first index file: still format 1, every command works.
    let stop = run_env(
        &f.a,
        &["backups", "migrate", "--repo", o],
        &[("FAILPOINTS", "repo_migrate.snapshot=return(abort)")],
    );
    assert_eq!(stop.code, -1, "{}", stop.stderr);
    assert!(old.join("repo.json").is_file() && !old.join("config").exists());
    assert_eq!(json(&f.a, &["backups", "list", "--repo", o]), listed);
    // Stopped after the switch: commands refuse and say what to do.
    let stop = run_env(
        &f.a,
        &["backups", "migrate", "--repo", o],
        &[("FAILPOINTS", "repo_migrate.cleanup=return(abort)")],
    );
    assert_eq!(stop.code, -1, "{}", stop.stderr);
    assert_eq!(
        fail(&f.a, &["backups", "list", "--repo", o]),
        format!(
            "error: backup repository {o} holds both config (format 2) and repo.json (format 1): a migration to format 2 stopped before its end; run `bbsync backups migrate --repo {o}` to finish it"
        )
    );
    let done = json(&f.a, &["backups", "migrate", "--repo", o]);
    assert_eq!(done["finished_earlier_run"], true, "{done}");
    assert!(!old.join("repo.json").exists() && !old.join("chunks").exists());
    assert!(
        files(&old, "manifests")
            .iter()
            .all(|m| m.ends_with(".pack"))
    );
    assert_eq!(json(&f.a, &["backups", "list", "--repo", o]), listed);
    assert_eq!(json(&f.a, &["backups", "stats", "--repo", o])["format"], 2);
    let out = ok(&f.a, &["backups", "verify", "--repo", o, "--read-data"]);
    assert!(out.contains(": OK"), "{out}");
    let again = json(&f.a, &["backups", "migrate", "--repo", o]);
    assert_eq!(again["already"], true);
    // Restores from it: the latest to a tree, the disaster recovery with
    // the migrated escrow.
    let t = f.root.join("t");
    ok(
        &f.a,
        &[
            "restore",
            "--repo",
            o,
            "--to-tree",
            t.to_str().unwrap(),
            &s2,
        ],
    );
    assert_same_tree(&f.tree, &t);
    let lost = f.root.join("lost");
    let r = run_env(
        &lost,
        &["restore", "--repo", o],
        &[("BBSYNC_PASSPHRASE", PASS)],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(ok(&lost, &["id"]), ok(&f.a, &["id"]));
    // The next backup is format 2 and incremental.
    let inc = json(&f.a, &["backup", "--repo", o]);
    assert_eq!(
        (inc["chunks_new"].as_u64(), inc["manifests_new"].as_u64()),
        (Some(0), Some(0)),
        "{inc}"
    );
    Ok(())
}

#[test]
fn migrate_refuses_an_unsigned_snapshot_and_changes_nothing() -> TestResult {
    let f = Fixture::new();
    let old = f.root.join("old");
    let o = old.to_str().unwrap();
    let snap = json(&f.a, &["backup", "--repo-format", "1", "--repo", o])["snapshot"]
        .as_str()
        .unwrap()
        .to_string();
    // Rewritten as an unsigned format-1 file (as bbsync wrote them before).
    let mut v = json(&f.a, &["backups", "show", "--repo", o, &snap]);
    let obj = v.as_object_mut().unwrap();
    obj.remove("signature");
    obj.remove("host_id");
    obj.insert("format".into(), 1.into());
    fs::write(
        old.join(format!("snapshots/{snap}.json")),
        serde_json::to_vec(&v)?,
    )?;
    let before = files(&old, "");
    assert_eq!(
        fail(&f.a, &["backups", "migrate", "--repo", o]),
        format!(
            "error: snapshot {snap} in {o} is unsigned (written before bbsync signed snapshots), and format 2 holds signed snapshots only; take a new backup, delete it (`bbsync backups delete {snap} --repo {o}`), then migrate (nothing was migrated)"
        )
    );
    assert_eq!(files(&old, ""), before);
    Ok(())
}

// ---- restore resumes ----

/// A restore that fails after its chunks were copied (disk full at
/// `restore.commit`, before the records) is run again: its own counters
/// show the chunks the first run copied are found in the store and not
/// copied again. (A killed one: `a_killed_restore_resumes_where_it_stopped`;
/// pins that expired: trust_boundaries.rs
/// `a_crash_before_the_restore_commit_leaves_no_orphan_chunks`.)
/// A restore killed (`kill -9`) after copying its chunks, into a store
/// that already held objects (so the first run took a safety snapshot,
/// now the latest): run again without a snapshot id, it resumes the
/// snapshot it was restoring, not the safety snapshot, and copies none of
/// the chunks the first run copied.
#[test]
fn a_killed_restore_resumes_where_it_stopped() -> TestResult {
    let f = Fixture::new();
    let host = card(&f.a);
    let other = f.root.join("other");
    fs::create_dir_all(other.join("boards/local"))?;
    fs::write(
        other.join("boards/local/hello.json"),
        r#"{"id":"hello","from":"b","subject":"local","body":"held before the restore"}"#,
    )?;
    ok(&f.b, &["import-bbs", other.to_str().unwrap()]);
    let o = run_env(
        &f.b,
        &["restore", "--repo", f.r(), &f.snap, "--trust-host", &host],
        &[("FAILPOINTS", "restore.commit=return(abort)")],
    );
    assert_ne!(o.code, 0, "{}", o.stderr);
    assert!(
        o.stderr.contains("failpoint restore.commit: abort"),
        "{}",
        o.stderr
    );
    let latest = json(&f.b, &["backups", "show", "--repo", f.r(), "latest"]);
    assert_ne!(
        latest["id"],
        f.snap.as_str(),
        "no safety snapshot was taken"
    );
    assert!(f.b.join("restore-pins").is_file());
    // The next open keeps the pinned copies; so does a collection.
    wait_unlocked(&f.b);
    ok(&f.b, &["gc"]);
    // `status` says what is pinned, and for which restore.
    let st = json(&f.b, &["status"]);
    assert_eq!(st["restore_pins"]["snapshot"], f.snap.as_str(), "{st}");
    assert!(st["restore_pins"]["chunks"].as_u64() > Some(0), "{st}");
    let text = ok(&f.b, &["status"]);
    assert!(
        text.contains(&format!("`bbsync restore {} --repo {}`", f.snap, f.r())),
        "{text}"
    );
    let again = json(&f.b, &["restore", "--repo", f.r(), "--trust-host", &host]);
    assert_eq!(again["snapshot"], f.snap.as_str(), "{again}");
    assert_eq!(again["resumed"], true, "{again}");
    assert_eq!(again["chunks_copied"], 0, "{again}");
    assert_eq!(again["restored"], 8, "{again}");
    assert!(!f.b.join("restore-pins").exists());
    assert!(json(&f.b, &["status"])["restore_pins"].is_null());
    let (code, v) = verify(&f.b, &["--read-data"]);
    assert_eq!(code, 0, "{v}");
    Ok(())
}

#[test]
fn an_interrupted_restore_resumes_without_copying_again() -> TestResult {
    let f = Fixture::new();
    let host = card(&f.a);
    // Every distinct chunk of the snapshot: what a restore into b copies.
    let total = json(&f.a, &["backups", "show", "--repo", f.r(), "latest"])["chunks"]
        .as_u64()
        .unwrap();
    assert!(total > 0);
    let o = run_env(
        &f.b,
        &["restore", "--repo", f.r(), "--trust-host", &host],
        &[("FAILPOINTS", "restore.commit=1*return(enospc)")],
    );
    assert_eq!(o.code, 1, "{}", o.stderr);
    assert!(o.stderr.contains("No space left on device"), "{}", o.stderr);
    assert!(f.b.join("restore-pins").is_file());
    // A collection in between keeps them.
    ok(&f.b, &["gc"]);
    // The rerun copies nothing the first run copied.
    let again = json(&f.b, &["restore", "--repo", f.r(), "--trust-host", &host]);
    assert_eq!(
        (
            again["chunks_copied"].as_u64(),
            again["chunks_present"].as_u64()
        ),
        (Some(0), Some(total)),
        "{again}"
    );
    assert_eq!(again["restored"], 8, "{again}");
    assert!(!f.b.join("restore-pins").exists());
    let (code, v) = verify(&f.b, &["--read-data"]);
    assert_eq!(code, 0, "{v}");
    let exp = f.root.join("exp");
    ok(&f.b, &["export-bbs", exp.to_str().unwrap()]);
    assert_same_tree(&f.tree, &exp);
    Ok(())
}

#[test]
fn prune_and_delete_on_format_2_remove_snapshots_and_their_packs() -> TestResult {
    let f = Fixture::new();
    // Three more snapshots, each after an edit of one post (each version in
    // a pack of its own backup; only the newest two stay live).
    let mut snaps = vec![f.snap.clone()];
    for i in 0..3 {
        write(
            &f.tree.join("boards/general/90.json"),
            format!(
                "{{\"id\":90,\"body\":\"{}\"}}\n",
                format!("edit {i} ").repeat(200)
            ),
        );
        ok(&f.a, &["import-bbs", f.tree.to_str().unwrap()]);
        let r = json(&f.a, &["backup", "--repo", f.r()]);
        snaps.push(r["snapshot"].as_str().unwrap().to_string());
    }
    let packs_before = files(&f.repo, "data");
    let before = files(&f.repo, "");

    // A dry run says what would go and changes nothing.
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
    assert_eq!(dry["dry_run"], true, "{dry}");
    assert_eq!(dry["removed"], serde_json::json!(snaps[..2]), "{dry}");
    assert_eq!(
        files(&f.repo, ""),
        before,
        "a dry run changed the repository"
    );

    // The real run: the two oldest snapshots go, the data only they need
    // goes, the rest verifies and restores.
    let p = json(
        &f.a,
        &["backups", "prune", "--repo", f.r(), "--keep-last", "2"],
    );
    assert_eq!(p["removed"], serde_json::json!(snaps[..2]), "{p}");
    assert_eq!(p["packs"]["remaining"], 2, "{p}");
    let l = json(&f.a, &["backups", "list", "--repo", f.r()]);
    let ids: Vec<&str> = l
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec![snaps[2].as_str(), snaps[3].as_str()]);
    assert_ne!(files(&f.repo, "data"), packs_before);
    let out = ok(&f.a, &["backups", "verify", "--repo", f.r(), "--read-data"]);
    assert!(out.contains(": OK"), "{out}");
    let to = f.root.join("restored");
    ok(
        &f.a,
        &[
            "restore",
            "--repo",
            f.r(),
            "--to-tree",
            to.to_str().unwrap(),
        ],
    );
    assert_same_tree(&f.tree, &to);
    // Text output names packs.
    let out = ok(&f.a, &["backups", "prune", "--repo", f.r()]);
    assert!(
        out.contains("0 snapshots removed") && out.contains("packs"),
        "{out}"
    );

    // Deleting the rest empties the repository of data.
    ok(&f.a, &["backups", "delete", "--repo", f.r(), &snaps[2]]);
    let out = ok(&f.a, &["backups", "delete", "--repo", f.r(), &snaps[3]]);
    assert!(
        out.starts_with(&format!("deleted snapshot {}", snaps[3])),
        "{out}"
    );
    assert!(files(&f.repo, "snapshots").is_empty());
    assert!(
        files(&f.repo, "data").is_empty(),
        "{:?}",
        files(&f.repo, "data")
    );
    assert!(files(&f.repo, "locks").is_empty(), "a lock stayed behind");
    let out = ok(&f.a, &["backups", "verify", "--repo", f.r(), "--read-data"]);
    assert!(out.contains(": OK"), "{out}");
    // An unknown id: one line, nothing removed.
    let o = run(
        &f.a,
        &["backups", "delete", "--repo", f.r(), "nosuchsnapshot"],
    );
    assert_one_line_error(&o, "delete of an unknown snapshot");
    Ok(())
}

/// A backup with `--include-identity` killed between its key file and its
/// snapshot leaves an escrow no snapshot names (and its sequence claim).
/// The next backup, under another passphrase, neither replaces that file
/// nor fails: it draws the next sequence and writes its own key file; its
/// snapshot opens with its own passphrase only. Prune then removes the
/// orphan and the claim.
#[test]
fn a_crashed_backups_escrow_is_never_replaced_and_prune_removes_it() -> TestResult {
    let f = Fixture::new();
    let inst = instance_hex(&f.a);
    let k1 = format!("keys/{inst}-000001");
    let claim2 = "seqs/000002";
    write(
        &f.tree.join("boards/general/91.json"),
        "{\"id\":91,\"body\":\"after the first backup\"}\n",
    );
    ok(&f.a, &["import-bbs", f.tree.to_str().unwrap()]);
    let args = ["--json", "backup", "--repo", f.r(), "--include-identity"];
    let o = run_env(
        &f.a,
        &args,
        &[
            ("BBSYNC_PASSPHRASE", "the first passphrase"),
            ("FAILPOINTS", "backup.snapshot=return(abort)"),
        ],
    );
    assert_eq!(o.code, -1, "{}", o.stderr);
    assert!(o.stderr.contains("failpoint backup.snapshot: abort"));
    let orphan = format!("keys/{inst}-000002");
    assert_eq!(files(&f.repo, "keys"), [k1.clone(), orphan.clone()]);
    assert_eq!(files(&f.repo, "seqs"), [claim2]);
    assert_eq!(files(&f.repo, "snapshots").len(), 1);
    let orphan_bytes = fs::read(f.repo.join(&orphan))?;

    // The rerun: sequence 3, its own key file, the orphan untouched.
    const OTHER: &str = "another passphrase";
    let o = run_env(&f.a, &args, &[("BBSYNC_PASSPHRASE", OTHER)]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    let r: Value = serde_json::from_str(&o.stdout)?;
    let snap = r["snapshot"].as_str().unwrap().to_string();
    assert!(snap.contains("-000003-"), "{snap}");
    let k3 = format!("keys/{inst}-000003");
    assert_eq!(r["identity_escrow"], k3.as_str(), "{r}");
    assert_eq!(fs::read(f.repo.join(&orphan))?, orphan_bytes);
    assert_eq!(
        files(&f.repo, "seqs"),
        [claim2],
        "the rerun released its own claim only"
    );
    let out = ok(&f.a, &["backups", "verify", "--repo", f.r(), "--read-data"]);
    assert!(out.contains(": OK"), "{out}");
    // Its escrow opens with its passphrase, not with the orphan's.
    let lost = f.root.join("lost");
    let o = run_env(
        &lost,
        &["restore", "--repo", f.r(), &snap],
        &[("BBSYNC_PASSPHRASE", "the first passphrase")],
    );
    assert_eq!(o.code, 1, "{}", o.stderr);
    let _ = fs::remove_dir_all(&lost);
    let o = run_env(
        &lost,
        &["restore", "--repo", f.r(), &snap],
        &[("BBSYNC_PASSPHRASE", OTHER)],
    );
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert_eq!(ok(&lost, &["id"]), ok(&f.a, &["id"]));
    let exp = f.root.join("exp-lost");
    ok(&lost, &["export-bbs", exp.to_str().unwrap()]);
    assert_same_tree(&f.tree, &exp);

    // Prune (no policy): the orphan escrow and the claim go; the first
    // snapshot keeps its escrow, the last its own.
    let p = json(&f.a, &["backups", "prune", "--repo", f.r()])["packs"].clone();
    assert_eq!(p["keys_removed"], serde_json::json!([orphan]), "{p}");
    assert_eq!(p["claims_removed"], 1, "{p}");
    assert_eq!(files(&f.repo, "keys"), [k1, k3]);
    assert!(files(&f.repo, "seqs").is_empty());
    let out = ok(&f.a, &["backups", "verify", "--repo", f.r(), "--read-data"]);
    assert!(out.contains(": OK"), "{out}");
    Ok(())
}

/// A large store's backup that would read every record has that read done
/// by `bbsync backup-cache` in a process of its own (`BBSYNC_LARGE_STORE_BYTES=0`
/// makes every store large): the backup is then served by the cache it
/// wrote, for the selection given, with a sealed identity whose
/// passphrase is in the environment too, and its snapshot holds what a
/// backup without it holds.
#[test]
fn a_large_stores_first_backup_reads_its_records_in_a_process_of_its_own() -> TestResult {
    let t = bbsync_tests::tempdir()?;
    let tree = t.path().join("bbs");
    mini_bbs(&tree);
    let tree_s = tree.to_str().unwrap();
    let backup = |data: &Path, repo: &str, extra: &[&str], env: &[(&str, &str)]| -> Value {
        let mut args = vec!["--json", "backup", "--repo", repo];
        args.extend_from_slice(extra);
        let o = run_env(data, &args, env);
        assert_eq!(o.code, 0, "{}", o.stderr);
        serde_json::from_str(&o.stdout).unwrap()
    };
    let large = [("BBSYNC_LARGE_STORE_BYTES", "0")];

    // Without: a store's first backup reads every record itself.
    let plain = t.path().join("plain");
    init(&plain, "plain");
    ok(&plain, &["import-bbs", tree_s]);
    let repo = t.path().join("repo-plain");
    let r0 = backup(&plain, repo.to_str().unwrap(), &[], &[]);
    assert_eq!(r0["from_cache"], false, "{r0}");

    // With: the cache is written first, and serves.
    let a = t.path().join("a");
    init(&a, "alpha");
    ok(&a, &["import-bbs", tree_s]);
    let repo = t.path().join("repo-a");
    let r = backup(&a, repo.to_str().unwrap(), &[], &large);
    assert_eq!(r["from_cache"], true, "{r}");
    for k in ["objects", "chunks", "bytes"] {
        assert_eq!(r[k], r0[k], "{k}: {r} against {r0}");
    }
    ok(&a, &["backups", "verify", "--repo", repo.to_str().unwrap()]);
    // A selection has its own cache, written the same way.
    let r = backup(&a, repo.to_str().unwrap(), &["--only", "message"], &large);
    assert_eq!(r["from_cache"], true, "{r}");
    assert!(r["objects"].as_u64() < r0["objects"].as_u64(), "{r}");

    // A sealed identity with its passphrase in the environment.
    let s = t.path().join("sealed");
    let o = run_env(
        &s,
        &["init", "--name", "sealed", "--encrypt-identity"],
        &[("BBSYNC_PASSPHRASE", PASS)],
    );
    assert_eq!(o.code, 0, "{}", o.stderr);
    let o = run_env(&s, &["import-bbs", tree_s], &[("BBSYNC_PASSPHRASE", PASS)]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    let repo = t.path().join("repo-sealed");
    let r = backup(
        &s,
        repo.to_str().unwrap(),
        &[],
        &[large[0], ("BBSYNC_PASSPHRASE", PASS)],
    );
    assert_eq!(r["from_cache"], true, "{r}");
    assert_eq!(r["objects"], r0["objects"], "{r}");
    Ok(())
}
