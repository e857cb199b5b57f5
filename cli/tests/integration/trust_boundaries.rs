//! Issue 10 through the real `bbsync` binary: a backup repository never
//! grants trust (item 1, both ways the issue reproduced it), a forged
//! envelope entry never becomes this node's key (item 2, and the schema
//! migration that cleans stores written before), owner-only repository
//! files and bounded escrow parameters (9), nothing from outside acts on
//! the terminal (11), a crashed restore leaves no orphans (12), a backup
//! sees envelope changes of the same size (13). Each case asserts the exact
//! line the operator sees.

#![allow(clippy::unwrap_used)]

use bbsync_store::test_hooks::Tamper;
use std::{
    fs,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
};

use crate::common::*;
use bbsync_protocol::{
    ContentKey, EnvelopeEntry, Identity, Manifest, Role, Snapshot, SnapshotTrust, Unverified,
    encoding, wrap_content_key,
};
use bbsync_store::{Store, backup::repofile::ManifestFile};
use serde_json::Value;

const PASS: &str = "correct horse battery staple";
const MSG: &str = "message:general/1";

/// The wire bytes of `body` under `sig` (the postcard wrapper by hand).
fn wire(body: &[u8], sig: &[u8]) -> Vec<u8> {
    let mut out = encoding::encode(&1u16);
    out.extend(encoding::encode(&(body.len() as u64)));
    out.extend_from_slice(body);
    out.push(64);
    out.extend_from_slice(sig);
    out
}

fn snapshot_file(repo: &Path, id: &str) -> PathBuf {
    repo.join(format!("snapshots/{id}.json"))
}

fn trusted_ids(data: &Path) -> Vec<String> {
    json(data, &["trust", "list"])
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["instance_id"].as_str().unwrap().to_string())
        .collect()
}

fn instance_hex(data: &Path) -> String {
    json(data, &["status"])["instance_id"]
        .as_str()
        .unwrap()
        .to_string()
}

/// The victim: a store with the mini BBS, a peer `w` it trusts, and a
/// backup with an identity escrow in `repo`.
struct Victim {
    t: tempfile::TempDir,
    v: PathBuf,
    w: PathBuf,
    tree: PathBuf,
    repo: PathBuf,
    snap: String,
}

impl Victim {
    fn new() -> Victim {
        let t = tempfile::tempdir().unwrap();
        let v = t.path().join("victim");
        let w = t.path().join("witness");
        init(&v, "victim");
        init(&w, "witness");
        ok(&v, &["trust", "add", "--role", "full", &card(&w)]);
        let tree = t.path().join("bbs");
        mini_bbs(&tree);
        ok(&v, &["import-bbs", tree.to_str().unwrap()]);
        let repo = t.path().join("repo");
        let out = run_env(
            &v,
            &[
                "--json",
                "backup",
                "--repo-format",
                "1",
                "--repo",
                repo.to_str().unwrap(),
                "--include-identity",
            ],
            &[("BBSYNC_PASSPHRASE", PASS)],
        );
        assert_eq!(out.code, 0, "{}", out.stderr);
        let snap = serde_json::from_str::<Value>(&out.stdout).unwrap()["snapshot"]
            .as_str()
            .unwrap()
            .to_string();
        Victim {
            t,
            v,
            w,
            tree,
            repo,
            snap,
        }
    }

    fn r(&self) -> &str {
        self.repo.to_str().unwrap()
    }

    fn path(&self, name: &str) -> PathBuf {
        self.t.path().join(name)
    }
}

// ---- item 1: a backup repository grants no trust ----

#[test]
fn mallorys_snapshot_in_the_victims_repository_grants_nothing() -> TestResult {
    let x = Victim::new();
    // mallory trusts the victim's card, imports one object and backs up
    // into the victim's repository.
    let m = x.path("mallory");
    init(&m, "mallory");
    ok(&m, &["trust", "add", "--role", "full", &card(&x.v)]);
    let f = x.path("note.txt");
    write(&f, "hello from mallory\n");
    ok(
        &m,
        &[
            "import",
            f.to_str().unwrap(),
            "--kind",
            "file",
            "--name",
            "note.txt",
        ],
    );
    let snap = json(&m, &["backup", "--repo", x.r()])["snapshot"]
        .as_str()
        .unwrap()
        .to_string();
    // The victim restores it: refused, naming mallory's card and
    // fingerprint; nothing changes.
    let before = snapshot(&x.v);
    let o = run(&x.v, &["restore", "--repo", x.r(), &snap]);
    let line = assert_one_line_error(&o, "restore of mallory's snapshot");
    assert_eq!(
        line,
        format!(
            "error: snapshot {snap} was written by mallory (instance {}), which this node does not trust as full; nothing was restored. If that is the instance you expect, compare its fingerprint out of band and run again with --trust-host {}",
            instance_hex(&m),
            card(&m)
        )
    );
    assert_eq!(
        snapshot(&x.v),
        before,
        "a refused restore changed the store"
    );
    assert!(!trusted_ids(&x.v).contains(&instance_hex(&m)));
    // Also through --to-tree (reads only): the same refusal.
    let o = run(
        &x.v,
        &[
            "restore",
            "--repo",
            x.r(),
            &snap,
            "--to-tree",
            x.path("peek").to_str().unwrap(),
        ],
    );
    assert!(
        assert_one_line_error(&o, "to-tree").contains("which this node does not trust as full"),
        "{}",
        o.stderr
    );
    // The explicit act: --trust-host with mallory's card. mallory becomes
    // full (named by the operator), its trust table (the victim) is not
    // imported, and its object is restored.
    let r = json(
        &x.v,
        &["restore", "--repo", x.r(), &snap, "--trust-host", &card(&m)],
    );
    assert_eq!(r["restored"], 1, "{r}");
    assert_eq!(r["host_accepted"], "--trust-host");
    assert_eq!(
        r["trust_table"],
        "not restored: a snapshot's trust table is restored only into its own host"
    );
    // A card of another instance is refused by name.
    let o = run(
        &x.v,
        &[
            "restore",
            "--repo",
            x.r(),
            &snap,
            "--trust-host",
            &card(&x.w),
        ],
    );
    assert_eq!(
        assert_one_line_error(&o, "wrong --trust-host"),
        format!(
            "error: --trust-host names witness (instance {}), but snapshot {snap} was written by mallory (instance {}); nothing was restored",
            instance_hex(&x.w),
            instance_hex(&m)
        )
    );
    Ok(())
}

/// Appends `{card: mallory, role: full}` to the trust list of snapshot
/// `id`, keeping everything else (and the signature) as it was: the
/// attack of issue 10, item 1(b), on either snapshot file format.
fn append_trust(repo: &Path, id: &str, mallory_card: &str) {
    let p = snapshot_file(repo, id);
    let mut v: Value = serde_json::from_slice(&fs::read(&p).unwrap()).unwrap();
    if let Some(b64) = v["snapshot"].as_str() {
        let wire_bytes = data_encoding::BASE64.decode(b64.as_bytes()).unwrap();
        let mut snap: Snapshot = Unverified::<Snapshot>::decode(&wire_bytes)
            .unwrap()
            .claimed()
            .clone();
        let card = bbsync_protocol::card_from_str(mallory_card).unwrap();
        snap.trust.push(SnapshotTrust {
            card: card.bytes().to_vec(),
            role: Role::Full,
        });
        let sig = &wire_bytes[wire_bytes.len() - 64..];
        // The body as the host encodes it (format 3 ends with the manifest
        // files' digest, after the fields serde writes).
        let forged = wire(&bbsync_protocol::SignedBody::encode_body(&snap), sig);
        v["snapshot"] = data_encoding::BASE64.encode(&forged).into();
    } else {
        v["trust"]
            .as_array_mut()
            .unwrap()
            .push(serde_json::json!({"card": mallory_card, "role": "full"}));
    }
    fs::write(&p, serde_json::to_vec(&v).unwrap()).unwrap();
}

#[test]
fn a_trust_entry_appended_to_ones_own_snapshot_is_refused() -> TestResult {
    let x = Victim::new();
    let m = x.path("mallory");
    init(&m, "mallory");
    append_trust(&x.repo, &x.snap, &card(&m));
    let rel = format!("snapshots/{}.json", x.snap);
    // backups verify names it.
    let o = run(&x.v, &["backups", "verify", "--repo", x.r()]);
    assert_eq!(o.code, 1, "{}", o.stdout);
    let first = o.stdout.lines().next().unwrap();
    assert_eq!(
        first,
        format!(
            "bad-snapshot-signature {rel}: snapshot {}: bad signature: {rel} was changed after its host signed it",
            x.snap
        )
    );
    // The victim's disaster recovery refuses it before creating anything.
    let lost = x.path("lost");
    let o = run_env(
        &lost,
        &["restore", "--repo", x.r()],
        &[("BBSYNC_PASSPHRASE", PASS)],
    );
    assert_eq!(
        assert_one_line_error(&o, "tampered snapshot"),
        format!(
            "error: snapshot {}: bad signature: {rel} was changed after its host signed it",
            x.snap
        )
    );
    assert!(!lost.exists(), "a refused restore created the data dir");
    Ok(())
}

#[test]
fn disaster_recovery_brings_the_own_trust_table_back_in_one_command() -> TestResult {
    let x = Victim::new();
    let lost = x.path("lost");
    let out = run_env(
        &lost,
        &["--json", "restore", "--repo", x.r()],
        &[("BBSYNC_PASSPHRASE", PASS)],
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    let r: Value = serde_json::from_str(&out.stdout)?;
    assert_eq!(r["host_accepted"], "this instance", "{r}");
    assert_eq!(r["trust_table"], "restored (this instance's own snapshot)");
    assert_eq!(trusted_ids(&lost), vec![instance_hex(&x.w)]);
    let exp = x.path("exp");
    ok(&lost, &["export-bbs", exp.to_str().unwrap()]);
    assert_same_tree(&x.tree, &exp);
    Ok(())
}

#[test]
fn unsigned_snapshots_need_trust_host() -> TestResult {
    let x = Victim::new();
    // The snapshot as bbsync wrote it before snapshots were signed.
    let mut v = json(&x.v, &["backups", "show", "--repo", x.r(), &x.snap]);
    let o = v.as_object_mut().unwrap();
    o.remove("signature");
    o.remove("host_id");
    o.insert("format".into(), 1.into());
    fs::write(snapshot_file(&x.repo, &x.snap), serde_json::to_vec(&v)?)?;
    let rel = format!("snapshots/{}.json", x.snap);
    let o = run(&x.v, &["backups", "verify", "--repo", x.r()]);
    assert_eq!(o.code, 1);
    assert_eq!(
        o.stdout.lines().next().unwrap(),
        format!(
            "unsigned-snapshot  {rel}: written before snapshots were signed: anyone who can write the repository could have changed it; restore needs --trust-host (take a new backup, then delete it)"
        )
    );
    let list = ok(&x.v, &["backups", "list", "--repo", x.r()]);
    assert!(list.contains("(unsigned)"), "{list}");
    let b = x.path("b");
    init(&b, "b");
    let o = run(&b, &["restore", "--repo", x.r()]);
    assert_eq!(
        assert_one_line_error(&o, "unsigned"),
        format!(
            "error: snapshot {} is unsigned (written before bbsync signed snapshots): who wrote it and its trust table cannot be checked; nothing was restored. If you expect its host to be victim (instance {}), compare that fingerprint out of band and run again with --trust-host {} (its trust table is not restored)",
            x.snap,
            instance_hex(&x.v),
            card(&x.v)
        )
    );
    // Its own host too needs the explicit act, and gets objects, not trust.
    let lost = x.path("lost");
    let o = run_env(
        &lost,
        &["restore", "--repo", x.r()],
        &[("BBSYNC_PASSPHRASE", PASS)],
    );
    assert!(assert_one_line_error(&o, "unsigned DR").contains("is unsigned"));
    assert!(!lost.exists());
    let out = run_env(
        &lost,
        &["restore", "--repo", x.r(), "--trust-host", &card(&x.v)],
        &[("BBSYNC_PASSPHRASE", PASS)],
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        trusted_ids(&lost).is_empty(),
        "an unsigned trust table was imported"
    );
    let exp = x.path("exp");
    ok(&lost, &["export-bbs", exp.to_str().unwrap()]);
    assert_same_tree(&x.tree, &exp);
    Ok(())
}

// ---- item 2: a forged envelope entry never becomes this node's key ----

/// An entry for `to` wrapping `key`, claiming `claimed` as its wrapper,
/// with a signature by nobody who could make it: what a writer of a backup
/// directory can build from public cards alone.
fn forged_entry(
    m: &Manifest,
    to: (bbsync_protocol::InstanceId, [u8; 32]),
    claimed: bbsync_protocol::InstanceId,
    key: &ContentKey,
) -> Vec<u8> {
    let mallory = Identity::generate("mallory", 0).unwrap();
    let e = wrap_content_key(&mallory, m.object_id, m.version, to.0, &to.1, key).unwrap();
    let mut v: EnvelopeEntry = e.value().clone();
    v.wrapped_by = claimed;
    wire(&encoding::encode(&v), &e.bytes()[e.bytes().len() - 64..])
}

/// Can `key` open any chunk of the repository?
fn key_opens_any_chunk(repo: &Path, key: &ContentKey) -> bool {
    let cipher = bbsync_protocol::ChunkCipher::new(key);
    walk(&repo.join("chunks")).iter().any(|p| {
        let bytes = fs::read(p).unwrap();
        cipher.open_verified(&bytes).is_ok()
    })
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[test]
fn a_forged_envelope_entry_never_becomes_this_nodes_key() -> TestResult {
    let x = Victim::new();
    let (id, mid, me, me_x, author) = {
        let s = Store::open(&x.v)?;
        let id = s.resolve(MSG)?;
        (
            id,
            s.state(&id)?.manifest_id,
            s.instance_id(),
            s.identity().x25519_public(),
            s.dangerously_manifest_unverified(&id)?.author,
        )
    };
    // The attacker puts an unsigned entry first in the manifest file:
    // wrapped_by = the author, wrapping a key of its own choosing.
    let chosen = ContentKey::generate();
    let mpath = x.repo.join(format!("manifests/{}", mid.to_hex()));
    let mut mf = ManifestFile::decode(&fs::read(&mpath)?)?;
    let m = Unverified::<Manifest>::decode(&mf.manifest)?
        .dangerously_assume_verified()
        .into_value();
    let forged = forged_entry(&m, (me, me_x), author, &chosen);
    mf.envelope.insert(0, serde_bytes::ByteBuf::from(forged));
    fs::write(&mpath, mf.encode())?;
    // The victim's disaster recovery: the forged entry is left out, named.
    let lost = x.path("lost");
    let out = run_env(
        &lost,
        &["restore", "--repo", x.r()],
        &[("BBSYNC_PASSPHRASE", PASS)],
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stderr.lines().any(|l| l
            == "1 envelope entries left out: their signatures do not verify (or their wrapper is not trusted)"),
        "{}",
        out.stderr
    );
    // The next unchanged import and backup: nothing is sealed under the
    // attacker's key, and the content is intact.
    ok(&lost, &["import-bbs", x.tree.to_str().unwrap()]);
    ok(&lost, &["backup", "--repo", x.r()]);
    assert!(
        !key_opens_any_chunk(&x.repo, &chosen),
        "content was sealed under the attacker's key"
    );
    let s = Store::open(&lost)?;
    let rec = s.raw_db().record(&id)?.unwrap();
    assert_eq!(
        rec.envelope.len(),
        2,
        "only the two signed entries are kept"
    );
    drop(s);
    let (code, v) = verify(&lost, &["--read-data"]);
    assert_eq!(code, 0, "{v}");
    let exp = x.path("exp");
    ok(&lost, &["export-bbs", exp.to_str().unwrap()]);
    assert_same_tree(&x.tree, &exp);
    Ok(())
}

/// Builds a schema-1 store as a schema-1 restore left it: an unsigned entry
/// (wrapping `chosen`) first in the envelope of `MSG`, covered by the
/// record MAC.
fn schema_1_store_with_forged_entry(x: &Victim, chosen: &ContentKey) {
    let s = Store::open(&x.v).unwrap();
    let id = s.resolve(MSG).unwrap();
    let m = s.manifest(&id).unwrap().into_value();
    let forged = forged_entry(
        &m,
        (s.instance_id(), s.identity().x25519_public()),
        m.author,
        chosen,
    );
    s.dangerously_edit_record(&id, |r| {
        r.envelope.insert(0, serde_bytes::ByteBuf::from(forged))
    })
    .unwrap();
    s.dangerously_remac_record(&id).unwrap();
    s.dangerously_set_schema_version(1).unwrap();
}

#[test]
fn schema_1_stores_are_migrated_and_their_forged_entries_dropped() -> TestResult {
    let x = Victim::new();
    let chosen = ContentKey::generate();
    // (The store was closed in this process: no wait_unlocked here, which
    // would open it and so migrate it.)
    schema_1_store_with_forged_entry(&x, &chosen);
    wait_released(&x.v);
    // A crash in the middle of the migration (after a batch is flushed,
    // before the schema number moves) ...
    let o = run_env(
        &x.v,
        &["ls"],
        &[("FAILPOINTS", "migrate.batch=return(abort)")],
    );
    assert_ne!(
        o.code, 0,
        "the failpoint did not stop the migration: {}\n{}",
        o.stdout, o.stderr
    );
    assert!(
        o.stderr.contains("failpoint migrate.batch: abort"),
        "{}",
        o.stderr
    );
    // ... and the next command finishes it.
    let st = json(&x.v, &["status"]);
    assert_eq!(st["schema_version"], bbsync_store::SCHEMA_VERSION, "{st}");
    let out = x.path("one.json");
    ok(&x.v, &["export", MSG, out.to_str().unwrap()]);
    assert_eq!(
        fs::read(&out)?,
        fs::read(x.tree.join("boards/general/1.json"))?
    );
    let s = Store::open(&x.v)?;
    let id = s.resolve(MSG)?;
    assert_eq!(s.raw_db().record(&id)?.unwrap().envelope.len(), 2);
    let m = s.manifest(&id)?;
    assert_ne!(s.content_key(&m)?.as_bytes(), chosen.as_bytes());
    drop(s);
    let (code, v) = verify(&x.v, &["--read-data"]);
    assert_eq!(code, 0, "{v}");
    Ok(())
}

// ---- item 9: owner-only repository, bounded escrow parameters ----

#[test]
fn repository_files_are_owner_only_whatever_the_umask() -> TestResult {
    let t = tempfile::tempdir()?;
    let a = t.path().join("a");
    init(&a, "alpha");
    let tree = t.path().join("bbs");
    mini_bbs(&tree);
    ok(&a, &["import-bbs", tree.to_str().unwrap()]);
    let repo = t.path().join("srv/repo");
    for copy in [false, true] {
        let dest = if copy {
            repo.join("copy")
        } else {
            repo.clone()
        };
        let o = std::process::Command::new("sh")
            .arg("-c")
            .arg("umask 022 && exec \"$0\" \"$@\"")
            .arg(env!("CARGO_BIN_EXE_bbsync"))
            .args(["--no-progress", "--data-dir"])
            .arg(&a)
            .args(["backup", "--include-identity", "--repo"])
            .arg(&dest)
            .args(if copy { vec!["--copy"] } else { vec![] })
            .env("BBSYNC_PASSPHRASE", PASS)
            .env_remove("BBSYNC_DATA")
            .output()?;
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let mut seen = 0;
        for p in walk(&dest).into_iter().chain(dirs(&dest)) {
            if !copy && p.starts_with(repo.join("copy")) {
                continue;
            }
            let mode = fs::metadata(&p)?.permissions().mode() & 0o777;
            let want = if p.is_dir() { 0o700 } else { 0o600 };
            assert_eq!(mode, want, "{} has mode {mode:o}", p.display());
            seen += 1;
        }
        assert!(seen > 10);
        assert_eq!(
            fs::metadata(&dest)?.permissions().mode() & 0o777,
            0o700,
            "the repository root"
        );
    }
    Ok(())
}

fn dirs(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.push(p.clone());
            out.extend(dirs(&p));
        }
    }
    out
}

#[test]
fn escrow_argon2_parameters_are_bounded() -> TestResult {
    let x = Victim::new();
    let keys = x.repo.join("keys");
    let path = fs::read_dir(&keys)?.next().unwrap()?.path();
    let mut k: Value = serde_json::from_slice(&fs::read(&path)?)?;
    // 2 GiB of memory for one hash: a restore must not even start it.
    k["m_cost"] = (2 * 1024 * 1024).into();
    k["t_cost"] = 1.into();
    fs::write(&path, serde_json::to_vec(&k)?)?;
    let rel = format!("keys/{}", path.file_name().unwrap().to_string_lossy());
    let lost = x.path("lost");
    let o = run_env(
        &lost,
        &["restore", "--repo", x.r()],
        &[("BBSYNC_PASSPHRASE", PASS)],
    );
    assert_eq!(
        assert_one_line_error(&o, "unbounded escrow"),
        format!(
            "error: {rel} is damaged: argon2 parameters out of range (m_cost 2097152 KiB, t_cost 1, p_cost 1; at most 1048576 KiB, 16 passes, 8 lanes, 4194304 KiB x passes)"
        )
    );
    assert!(!lost.exists());
    Ok(())
}

// ---- item 11: nothing from outside acts on the terminal ----

#[test]
fn control_and_bidi_characters_never_reach_the_terminal() -> TestResult {
    let x = Victim::new();
    // A description with a terminal escape is refused at backup ...
    let o = run(
        &x.v,
        &["backup", "--repo", x.r(), "--description", "a\x1b[2Jb"],
    );
    assert_eq!(
        assert_one_line_error(&o, "escape in a description"),
        "error: --description: invalid snapshot description: contains the control character U+001B"
    );
    // ... and one that a writer of the repository put into an (unsigned)
    // snapshot file is shown escaped, as are its host name and tags.
    let p = snapshot_file(&x.repo, &x.snap);
    let mut v = json(&x.v, &["backups", "show", "--repo", x.r(), &x.snap]);
    let o = v.as_object_mut().unwrap();
    o.remove("signature");
    o.remove("host_id");
    o.insert("format".into(), 1.into());
    o.insert(
        "description".into(),
        "\x1b[2J\u{202e}gnp.exe\r\nfake line".into(),
    );
    o.insert("host_name".into(), "host\x1b]0;title\x07".into());
    o.insert("tags".into(), serde_json::json!(["t\u{9b}1m"]));
    fs::write(&p, serde_json::to_vec(&v)?)?;
    let list = ok(&x.v, &["backups", "list", "--repo", x.r()]);
    let row = list.lines().next().unwrap();
    assert!(
        row.ends_with(
            "(unsigned) [t\\u{009B}1m] \\u{001B}[2J\\u{202E}gnp.exe\\u{000D}\\u{000A}fake line"
        ),
        "{row}"
    );
    assert!(row.contains("  host\\u{001B}]0;title\\u{0007}  "), "{row}");
    assert!(
        !list.contains('\x1b') && !list.contains('\u{202e}') && !list.contains('\u{9b}'),
        "{list:?}"
    );
    let show = ok(&x.v, &["backups", "show", "--repo", x.r(), &x.snap]);
    assert!(!show.contains('\x1b') && !show.contains('\r'), "{show:?}");
    // JSON keeps the value, escaped as JSON.
    let raw = run(&x.v, &["--json", "backups", "list", "--repo", x.r()]).stdout;
    assert!(
        !raw.contains('\u{202e}') && !raw.contains('\u{9b}'),
        "{raw:?}"
    );
    let back: Value = serde_json::from_str(&raw)?;
    assert_eq!(
        back[0]["description"],
        "\x1b[2J\u{202e}gnp.exe\r\nfake line"
    );
    // Object names with bidi or invisible characters are refused at import.
    let t = x.path("evil");
    write(&t.join("files/invoice\u{202e}fdp.exe"), "x");
    let o = run(&x.v, &["import-bbs", t.to_str().unwrap()]);
    let line = assert_one_line_error(&o, "bidi name");
    assert!(
        line.ends_with(
            "invalid object name: contains U+202E, a control or invisible formatting character (names may hold neither)"
        ),
        "{line}"
    );
    assert!(!line.contains('\u{202e}'), "{line:?}");
    Ok(())
}

// ---- item 12: a crash before the restore's commit leaves no orphans ----
//
// (Since the restore resumes, its copies are pinned for its rerun, a day at
// most: orphans they are not. Past the day, the next collection takes them.)

#[test]
fn a_crash_before_the_restore_commit_leaves_no_orphan_chunks() -> TestResult {
    let x = Victim::new();
    // The witness has an entry in every envelope (the victim trusts it).
    let b = &x.w;
    let crash = || {
        let o = run_env(
            b,
            &["restore", "--repo", x.r(), "--trust-host", &card(&x.v)],
            &[("FAILPOINTS", "restore.commit=return(abort)")],
        );
        assert_ne!(o.code, 0);
        assert!(
            o.stderr.contains("failpoint restore.commit: abort"),
            "{}",
            o.stderr
        );
    };
    crash();
    // The chunks were published, not recorded: the marker says so.
    let files = chunk_files(b);
    let marker = std::path::Path::new("collect");
    assert!(files.contains(marker), "the dirty marker went early");
    let copied: Vec<_> = files.iter().filter(|f| *f != marker).cloned().collect();
    assert!(!copied.is_empty(), "no chunk was copied before the crash");
    let pins = b.join("restore-pins");
    assert!(pins.is_file());
    // The next open collects what no record names, except the pinned
    // copies of the restore (for its rerun).
    wait_unlocked(b);
    let (code, v) = verify(b, &[]);
    assert_eq!(code, 0, "{v}");
    let kept: Vec<_> = chunk_files(b).into_iter().collect();
    assert_eq!(kept, copied, "the marker stayed, or the pinned copies went");
    // The operator gives the restore up: the copies go now.
    let g = json(b, &["gc", "--drop-restore-pins"]);
    assert_eq!(
        g["restore_pins_dropped"].as_u64(),
        Some(copied.len() as u64),
        "{g}"
    );
    assert!(!pins.exists(), "the pins were kept");
    assert!(chunk_files(b).is_empty(), "orphan chunks were left");
    // Pins older than a day pin nothing: the next open (after another
    // crash) or collection takes the copies, and no orphan is left.
    crash();
    std::fs::File::options()
        .write(true)
        .open(&pins)?
        .set_modified(std::time::SystemTime::now() - std::time::Duration::from_secs(25 * 3600))?;
    wait_unlocked(b);
    let (code, v) = verify(b, &[]);
    assert_eq!(code, 0, "{v}");
    // (Empty: no chunk and no marker left.)
    assert!(chunk_files(b).is_empty(), "orphan chunks were left");
    // And the restore, run again, completes.
    let r = json(
        b,
        &["restore", "--repo", x.r(), "--trust-host", &card(&x.v)],
    );
    assert_eq!(r["restored"], 8, "{r}");
    assert_eq!(r["resumed"], false, "{r}");
    assert!(!pins.exists());
    Ok(())
}

// ---- item 13: a backup sees envelope changes of the same size ----

#[test]
fn a_backup_sees_envelope_changes_of_the_same_size() -> TestResult {
    let t = tempfile::tempdir()?;
    let h = t.path().join("host");
    let a = t.path().join("a");
    let b = t.path().join("b");
    init(&h, "host");
    init(&a, "a");
    init(&b, "b");
    ok(&h, &["trust", "add", "--role", "full", &card(&a)]);
    let tree = t.path().join("bbs");
    mini_bbs(&tree);
    ok(&h, &["import-bbs", tree.to_str().unwrap()]);
    let repo = t.path().join("repo");
    let r = repo.to_str().unwrap();
    ok(&h, &["backup", "--repo", r]);
    // A out, B in: every envelope swaps one entry for another of the same size.
    let a_id = instance_hex(&a);
    ok(&h, &["trust", "remove", &a_id]);
    ok(&h, &["trust", "add", "--role", "full", &card(&b)]);
    let k = json(&h, &["rekey"]);
    assert!(k["entries_added"].as_u64().unwrap() >= 7, "{k}");
    let snap = json(&h, &["backup", "--repo", r]);
    assert!(snap["manifests_new"].as_u64().unwrap() >= 7, "{snap}");
    let snap = snap["snapshot"].as_str().unwrap().to_string();
    // B reads that snapshot, A does not.
    ok(&b, &["trust", "add", "--role", "full", &card(&h)]);
    ok(&a, &["trust", "add", "--role", "full", &card(&h)]);
    let out_b = t.path().join("tree-b");
    let rb = json(
        &b,
        &[
            "restore",
            "--repo",
            r,
            &snap,
            "--to-tree",
            out_b.to_str().unwrap(),
        ],
    );
    assert_eq!(rb["failed"], serde_json::json!([]), "{rb}");
    assert_same_tree(&tree, &out_b);
    let out_a = t.path().join("tree-a");
    let o = run(
        &a,
        &[
            "--json",
            "restore",
            "--repo",
            r,
            &snap,
            "--to-tree",
            out_a.to_str().unwrap(),
        ],
    );
    assert_eq!(o.code, 1);
    let ra: Value = serde_json::from_str(&o.stdout)?;
    assert_eq!(ra["objects"], 0, "{ra}");
    assert_eq!(ra["failed"].as_array().unwrap().len(), 8, "{ra}");
    Ok(())
}
