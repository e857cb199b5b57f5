//! Pack files end to end, through the real binary:
//!
//! * data dirs of the one-file-per-chunk layout, made by the builds before
//!   packs (schema 1: `fixtures/schema1.tar.gz`; schema 2, the trust store:
//!   `fixtures/schema2.tar.gz`), are migrated in place, by their first
//!   open or by `bbsync migrate`;
//! * a crash (`abort` at a failpoint) at every step of pack append, seal,
//!   index commit, gc repack, index rebuild and migration leaves a store
//!   that opens and verifies (`verify --read-data`), on which the command
//!   then runs to completion, and whose export equals the tree;
//! * a missing index is rebuilt at open, a damaged one by `repair-index`;
//! * verify's pack classes: `truncated-pack`, `pack-trailer-mismatch`.
//!
//! The crash cases are rows of one table ([`CASES`]) so that they can join
//! a crash matrix.

#![allow(clippy::unwrap_used)]

use bbsync_store::test_hooks::Tamper;
use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
    sync::OnceLock,
};

use crate::common::*;

/// xorshift, so every tree is the same on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

/// Tree `A`: 1,500 posts (incompressible bodies of 0.3-3 KB) and five
/// random files of 4 MB, about 23 MB stored, so an import fills one pack,
/// seals it and starts a second. Tree `B`: `A` without three of the big
/// files and without every third post, so that a collection finds the
/// first pack mostly dead and repacks or deletes it.
fn gen_tree(root: &Path, b: bool) {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    for i in 0..1500u64 {
        let len = 300 + (rng.next() % 2700) as usize;
        let body = data_encoding::HEXLOWER.encode(&rng.bytes(len / 2));
        if b && i % 3 == 0 {
            continue;
        }
        write(
            &root.join(format!("boards/b{}/{i}.json", i % 6)),
            format!("{{\"id\":{i},\"body\":\"{body}\"}}\n"),
        );
    }
    for i in 0..5 {
        let data = rng.bytes(4_000_000);
        if b && i < 3 {
            continue;
        }
        write(&root.join(format!("files/big-{i}.bin")), data);
    }
    write(&root.join("config/bbs.toml"), "name = \"packs\"\n");
}

/// Copies a directory tree.
fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for e in fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dest = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &dest);
        } else {
            fs::copy(e.path(), &dest).unwrap();
        }
    }
}

/// What the cases start from, built once per test run: the two trees, an
/// initialized empty store, a store with `A` imported, and the same store
/// turned back into the schema-1 layout (chunk files, no index, schema 1).
struct Base {
    _tmp: tempfile::TempDir,
    a: PathBuf,
    b: PathBuf,
    empty: PathBuf,
    imported: PathBuf,
    schema1: PathBuf,
}

fn base() -> &'static Base {
    static BASE: OnceLock<Base> = OnceLock::new();
    BASE.get_or_init(|| {
        let tmp = tempfile::tempdir().unwrap();
        let a = tmp.path().join("tree-a");
        let b = tmp.path().join("tree-b");
        gen_tree(&a, false);
        gen_tree(&b, true);
        let empty = tmp.path().join("empty");
        init(&empty, "packs");
        let imported = tmp.path().join("imported");
        copy_dir(&empty, &imported);
        ok(&imported, &["import-bbs", a.to_str().unwrap()]);
        let schema1 = tmp.path().join("schema1");
        copy_dir(&imported, &schema1);
        to_schema1(&schema1);
        Base {
            a,
            b,
            empty,
            imported,
            schema1,
            _tmp: tmp,
        }
    })
}

/// Turns a store back into the layout of schema 1: one file per chunk
/// under `chunks/<hh>/<hex>`, no pack, no index. (The other records are
/// the same in both schemas.)
fn to_schema1(data: &Path) {
    {
        let s = bbsync_store::Store::open(data).unwrap();
        for (id, _) in s.packs().list().unwrap() {
            let h = id.to_hex();
            write(
                &data.join("chunks").join(&h[..2]).join(&h),
                s.packs().read(&id).unwrap(),
            );
        }
        s.raw_db().clear_index().unwrap();
        s.raw_db()
            .apply_index(
                bbsync_store::test_hooks::IndexChange {
                    open_packs: Some(Vec::new()),
                    collect: Some(false),
                    doomed: Some(Vec::new()),
                    ..Default::default()
                },
                true,
            )
            .unwrap();
        s.raw_db().set_index_complete(false).unwrap();
        s.dangerously_set_schema_version(1).unwrap();
    }
    fs::remove_dir_all(data.join("packs")).unwrap();
}

/// Where a case starts.
#[derive(Debug, Clone, Copy)]
enum Start {
    /// An initialized, empty store.
    Empty,
    /// Tree `A` imported.
    Imported,
    /// Tree `A` in the schema-1 layout.
    Schema1,
}

/// One crash case: from `start`, `command` runs with `failpoints` set
/// (it must die at the point); then `verify --read-data` must be clean,
/// `command` (and `then`, if any) must complete, and the store's export
/// must equal tree `B` if `expect_b`, else tree `A`.
struct Case {
    failpoints: &'static str,
    start: Start,
    command: &'static [&'static str],
    then: &'static [&'static str],
    expect_b: bool,
}

/// `TREE_A` / `TREE_B` in a command stand for the trees.
const CASES: &[Case] = &[
    // Import: appends, packs filling up, publish, seal.
    Case {
        failpoints: "pack.stage=3*off->return(abort)",
        start: Start::Empty,
        command: &["import-bbs", "TREE_A"],
        then: &[],
        expect_b: false,
    },
    Case {
        failpoints: "pack.create=1*off->return(abort)",
        start: Start::Empty,
        command: &["import-bbs", "TREE_A"],
        then: &[],
        expect_b: false,
    },
    Case {
        failpoints: "pack.write=5*off->return(abort)",
        start: Start::Empty,
        command: &["import-bbs", "TREE_A"],
        then: &[],
        expect_b: false,
    },
    Case {
        failpoints: "pack.sync=return(abort)",
        start: Start::Empty,
        command: &["import-bbs", "TREE_A"],
        then: &[],
        expect_b: false,
    },
    Case {
        failpoints: "index.commit=return(abort)",
        start: Start::Empty,
        command: &["import-bbs", "TREE_A"],
        then: &[],
        expect_b: false,
    },
    Case {
        failpoints: "index.committed=return(abort)",
        start: Start::Empty,
        command: &["import-bbs", "TREE_A"],
        then: &[],
        expect_b: false,
    },
    Case {
        failpoints: "pack.seal=return(abort)",
        start: Start::Empty,
        command: &["import-bbs", "TREE_A"],
        then: &[],
        expect_b: false,
    },
    Case {
        failpoints: "pack.sealed=return(abort)",
        start: Start::Empty,
        command: &["import-bbs", "TREE_A"],
        then: &[],
        expect_b: false,
    },
    // The collection after an import that drops most of the first pack.
    Case {
        failpoints: "gc.drop=return(abort)",
        start: Start::Imported,
        command: &["import-bbs", "TREE_B"],
        then: &["gc"],
        expect_b: true,
    },
    Case {
        failpoints: "gc.repack=return(abort)",
        start: Start::Imported,
        command: &["import-bbs", "TREE_B"],
        then: &["gc"],
        expect_b: true,
    },
    Case {
        failpoints: "gc.delete=return(abort)",
        start: Start::Imported,
        command: &["import-bbs", "TREE_B"],
        then: &["gc"],
        expect_b: true,
    },
    // (Tree B adds no chunk: the only publish is the repack's.)
    Case {
        failpoints: "pack.sync=return(abort)",
        start: Start::Imported,
        command: &["import-bbs", "TREE_B"],
        then: &["gc"],
        expect_b: true,
    },
    // Rebuilding the index.
    Case {
        failpoints: "index.rebuild=1*off->return(abort)",
        start: Start::Imported,
        command: &["repair-index"],
        then: &[],
        expect_b: false,
    },
    // Migration from one file per chunk.
    Case {
        failpoints: "migrate.group=return(abort)",
        start: Start::Schema1,
        command: &["migrate"],
        then: &[],
        expect_b: false,
    },
    Case {
        failpoints: "pack.write=3*off->return(abort)",
        start: Start::Schema1,
        command: &["migrate"],
        then: &[],
        expect_b: false,
    },
    Case {
        failpoints: "index.commit=1*off->return(abort)",
        start: Start::Schema1,
        command: &["migrate"],
        then: &[],
        expect_b: false,
    },
    Case {
        failpoints: "migrate.schema=return(abort)",
        start: Start::Schema1,
        command: &["migrate"],
        then: &[],
        expect_b: false,
    },
    Case {
        failpoints: "migrate.cleanup=return(abort)",
        start: Start::Schema1,
        command: &["migrate"],
        then: &[],
        expect_b: false,
    },
];

fn args_for<'a>(b: &'a Base, command: &'a [&'a str]) -> Vec<&'a str> {
    command
        .iter()
        .map(|a| match *a {
            "TREE_A" => b.a.to_str().unwrap(),
            "TREE_B" => b.b.to_str().unwrap(),
            other => other,
        })
        .collect()
}

fn run_case(case: &Case, dir: &Path) {
    let b = base();
    let data = dir.join("data");
    copy_dir(
        match case.start {
            Start::Empty => &b.empty,
            Start::Imported => &b.imported,
            Start::Schema1 => &b.schema1,
        },
        &data,
    );
    let args = args_for(b, case.command);
    let what = format!("{} with {}", case.command.join(" "), case.failpoints);
    // 1. The crash.
    let o = Command::new(env!("CARGO_BIN_EXE_bbsync"))
        .arg("--no-progress")
        .arg("--data-dir")
        .arg(&data)
        .args(&args)
        .env_remove("BBSYNC_DATA")
        .env("FAILPOINTS", case.failpoints)
        .output()
        .unwrap();
    assert!(
        o.status.code().is_none(),
        "{what}: expected the process to die at the failpoint, got {:?}\nstderr: {}",
        o.status,
        String::from_utf8_lossy(&o.stderr)
    );
    // 2. It opens and verifies (an interrupted migration is resumed by
    //    the open).
    let (code, v) = verify(&data, &["--read-data"]);
    assert_eq!(code, 0, "{what}: verify after the crash: {v}");
    assert_eq!(
        chunk_temp_files(&data),
        Vec::<PathBuf>::new(),
        "{what}: leftovers after the crash and an open"
    );
    // 3. The command completes, then the store is whole and equals the tree.
    ok(&data, &args);
    if !case.then.is_empty() {
        ok(&data, case.then);
    }
    let (code, v) = verify(&data, &["--read-data"]);
    assert_eq!(code, 0, "{what}: verify after the rerun: {v}");
    assert_eq!(chunk_temp_files(&data), Vec::<PathBuf>::new(), "{what}");
    let out = dir.join("out");
    ok(&data, &["export-bbs", out.to_str().unwrap()]);
    assert_same_tree(if case.expect_b { &b.b } else { &b.a }, &out);
    let st = json(&data, &["status"]);
    assert_eq!(st["schema_version"], bbsync_store::SCHEMA_VERSION, "{what}");
    assert!(!data.join("chunks").exists(), "{what}: chunks/ left");
}

#[test]
fn a_crash_at_every_pack_step_leaves_a_store_that_verifies_and_finishes() -> TestResult {
    let names: Vec<&str> = bbsync_store::failpoint::POINTS
        .iter()
        .map(|(n, _)| *n)
        .collect();
    for case in CASES {
        let point = case.failpoints.split('=').next().unwrap();
        assert!(
            names.contains(&point),
            "{point} is not in failpoint::POINTS"
        );
    }
    // Every pack point is crashed at least once (the others belong to
    // other crash tests).
    let pack_point = |n: &&&str| {
        ["pack.", "index.", "gc.", "migrate."]
            .iter()
            .any(|p| n.starts_with(p))
            && **n != "migrate.batch"
    };
    for n in names.iter().filter(pack_point) {
        assert!(
            CASES
                .iter()
                .any(|c| c.failpoints.starts_with(&format!("{n}="))),
            "no crash case for {n}"
        );
    }
    for (i, case) in CASES.iter().enumerate() {
        let t = tempfile::tempdir()?;
        eprintln!(
            "case {i}: {} with {}",
            case.command.join(" "),
            case.failpoints
        );
        run_case(case, t.path());
    }
    Ok(())
}

#[test]
fn collection_repacks_a_mostly_dead_pack_and_deletes_it() -> TestResult {
    let b = base();
    let t = tempfile::tempdir()?;
    let data = t.path().join("data");
    copy_dir(&b.imported, &data);
    let before = json(&data, &["status"]);
    assert!(before["packs"].as_u64().unwrap() >= 2, "{before}");
    let s = json(&data, &["import-bbs", b.b.to_str().unwrap()]);
    assert!(s["chunks_collected"].as_u64().unwrap() > 500, "{s}");
    // The collection ran within the import; a second one finds nothing.
    let g = json(&data, &["gc"]);
    assert_eq!(g["removed_chunks"], 0, "{g}");
    assert_eq!(g["packs_repacked"], 0, "{g}");
    let after = json(&data, &["status"]);
    assert!(
        after["pack_bytes"].as_u64().unwrap() < before["pack_bytes"].as_u64().unwrap() * 3 / 4,
        "dead bytes were not freed: {before} -> {after}"
    );
    assert_eq!(verify(&data, &["--read-data"]).0, 0);
    let out = t.path().join("out");
    ok(&data, &["export-bbs", out.to_str().unwrap()]);
    assert_same_tree(&b.b, &out);
    Ok(())
}

#[test]
fn a_missing_index_is_rebuilt_at_open_and_a_damaged_one_by_repair_index() -> TestResult {
    let b = base();
    let t = tempfile::tempdir()?;
    let data = t.path().join("data");
    copy_dir(&b.imported, &data);
    let chunks = chunk_files(&data);
    // Missing: the index records gone (and marked incomplete).
    {
        let s = bbsync_store::Store::open(&data)?;
        s.raw_db().clear_index()?;
        s.raw_db().set_index_complete(false)?;
    }
    assert!(real_chunks(&data).is_empty());
    // Any command rebuilds it first.
    let st = json(&data, &["status"]);
    assert_eq!(st["chunks"], chunks.len() as u64, "{st}");
    assert_eq!(chunk_files(&data), chunks);
    assert_eq!(verify(&data, &["--read-data"]).0, 0);

    // Damaged: one record points elsewhere (at a chunk of the sealed pack,
    // whose trailer lists that place under the other chunk's id), another
    // does not decode.
    {
        let s = bbsync_store::Store::open(&data)?;
        let open: Vec<_> = s.packs().open_packs().into_iter().map(|(p, _)| p).collect();
        let all = s.packs().list()?;
        let (other, _) = *all
            .iter()
            .find(|(id, _)| !open.contains(&s.packs().location(id).unwrap().unwrap().pack))
            .expect("a chunk in the sealed pack");
        let (id, _) = *all.iter().find(|(id, _)| *id != other).unwrap();
        let loc = s.packs().location(&other)?.unwrap();
        s.raw_db().dangerously_put_index_raw(&id, &loc.encode())?;
        s.raw_db().dangerously_put_index_raw(&other, b"garbage")?;
    }
    let (code, v) = verify(&data, &["--read-data"]);
    assert_eq!(code, 1, "{v}");
    let mut classes = problem_classes(&v);
    classes.sort();
    classes.dedup();
    // One record points at another chunk's bytes (and its pack's trailer
    // lists no such entry there); the other cannot be read at all.
    assert_eq!(
        classes,
        ["corrupt-chunk", "missing-chunk", "pack-trailer-mismatch"],
        "{v}"
    );
    assert!(v.to_string().contains("repair-index"), "{v}");
    let r = json(&data, &["repair-index"]);
    assert_eq!(r["rebuild"]["chunks"], chunks.len() as u64, "{r}");
    assert_eq!(r["rebuild"]["skipped"], serde_json::json!([]), "{r}");
    assert_eq!(verify(&data, &["--read-data"]).0, 0);
    assert_eq!(chunk_files(&data), chunks);
    let out = t.path().join("out");
    ok(&data, &["export-bbs", out.to_str().unwrap()]);
    assert_same_tree(&b.a, &out);
    Ok(())
}

/// The sealed pack of a store with tree `A` (the one with a trailer).
fn sealed_pack(data: &Path) -> PathBuf {
    let i = bbsync_store::inspect::inspect(data).unwrap();
    let open: Vec<_> = i.open_packs.iter().map(|(p, _)| *p).collect();
    let (p, _) = i
        .pack_files
        .iter()
        .flatten()
        .find(|(p, _)| !open.contains(p))
        .expect("a sealed pack");
    data.join("packs").join(p.rel_path())
}

#[test]
fn verify_reports_cut_packs_and_trailers_that_do_not_match() -> TestResult {
    let b = base();
    let t = tempfile::tempdir()?;
    let data = t.path().join("data");
    copy_dir(&b.imported, &data);
    let pack = sealed_pack(&data);
    let good = fs::read(&pack)?;
    let classes_of = |v: &serde_json::Value| {
        let mut c = problem_classes(v);
        c.sort();
        c.dedup();
        c
    };

    // Cut short by a few bytes: its trailer is gone.
    fs::write(&pack, &good[..good.len() - 10])?;
    let (code, v) = verify(&data, &[]);
    assert_eq!(code, 1, "{v}");
    assert_eq!(classes_of(&v), ["truncated-pack"], "{v}");
    // Cut in the middle: the chunks beyond the cut are damaged too.
    fs::write(&pack, &good[..good.len() / 2])?;
    let (code, v) = verify(&data, &["--read-data"]);
    assert_eq!(code, 1, "{v}");
    assert_eq!(classes_of(&v), ["corrupt-chunk", "truncated-pack"], "{v}");

    // One byte of the trailer flipped: the checksum catches it.
    let mut bad = good.clone();
    let n = bad.len();
    bad[n - 60] ^= 0x01;
    fs::write(&pack, &bad)?;
    let (code, v) = verify(&data, &[]);
    assert_eq!(code, 1, "{v}");
    assert_eq!(classes_of(&v), ["pack-trailer-mismatch"], "{v}");
    // The index still finds every chunk: the content is fine.
    let out = t.path().join("out1");
    ok(&data, &["export-bbs", out.to_str().unwrap()]);
    assert_same_tree(&b.a, &out);

    // An entry header under a listed chunk damaged: the trailer no longer
    // matches the pack's content (and that chunk's record points at
    // something else).
    let first = u32::from_be_bytes(good[32 + 32..32 + 36].try_into()?);
    assert!(first > 0);
    let mut bad = good.clone();
    bad[32] ^= 0x01; // first entry's chunk id
    fs::write(&pack, &bad)?;
    let (code, v) = verify(&data, &["--read-data"]);
    assert_eq!(code, 1, "{v}");
    let c = classes_of(&v);
    assert!(c.contains(&"pack-trailer-mismatch".to_string()), "{v}");

    fs::write(&pack, &good)?;
    assert_eq!(verify(&data, &["--read-data"]).0, 0);
    Ok(())
}

/// Extracts a committed fixture (`schema1` or `schema2`) into `dir`:
/// `dir/data` (the data dir, made by a build before packs from `dir/tree`
/// and an earlier version of it, see `fixtures/README.md`) and `dir/tree`.
fn fixture(name: &str, dir: &Path) -> (PathBuf, PathBuf) {
    let tar = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(format!("{name}.tar.gz"));
    let st = Command::new("tar")
        .arg("-xzf")
        .arg(&tar)
        .arg("-C")
        .arg(dir)
        .status()
        .unwrap();
    assert!(st.success(), "tar -xzf {}", tar.display());
    (dir.join("data"), dir.join("tree"))
}

/// Checks a migrated fixture: everything in packs, verifies, exports the
/// tree, works as before.
fn check_migrated(data: &Path, tree: &Path, out: &Path) {
    assert!(!data.join("chunks").exists());
    let (code, v) = verify(data, &["--read-data"]);
    assert_eq!(code, 0, "{v}");
    ok(data, &["export-bbs", out.to_str().unwrap()]);
    assert_same_tree(tree, out);
    let st = json(data, &["status"]);
    assert_eq!(st["schema_version"], bbsync_store::SCHEMA_VERSION);
    assert_eq!(st["trusted"], 1, "{st}");
    assert_eq!(st["deleted"], 1, "{st}");
    // The store works as before: an unchanged tree writes nothing.
    let s = json(data, &["import-bbs", tree.to_str().unwrap()]);
    assert_eq!(
        (s["new"].as_u64(), s["changed"].as_u64()),
        (Some(0), Some(0)),
        "{s}"
    );
    // Migrating again does nothing.
    let again = ok(data, &["migrate"]);
    assert!(again.contains("nothing to do"), "{again}");
}

#[test]
fn a_schema_1_data_dir_is_migrated_in_place_by_bbsync_migrate() -> TestResult {
    let t = tempfile::tempdir()?;
    let (data, tree) = fixture("schema1", t.path());
    assert!(fs::read_dir(data.join("chunks"))?.count() > 0);
    let r = json(&data, &["migrate"]);
    assert_eq!(r["from_schema"], 1, "{r}");
    assert_eq!(r["to_schema"], bbsync_store::SCHEMA_VERSION, "{r}");
    assert!(r["chunks_moved"].as_u64().unwrap() > 100, "{r}");
    assert_eq!(r["chunks_damaged"], serde_json::json!([]), "{r}");
    assert_eq!(r["chunks_missing"], 0, "{r}");
    assert_eq!(r["removed_chunk_dir"], true, "{r}");
    check_migrated(&data, &tree, &t.path().join("out"));
    Ok(())
}

#[test]
fn a_schema_2_data_dir_is_migrated_in_place_by_its_first_open() -> TestResult {
    let t = tempfile::tempdir()?;
    let (data, tree) = fixture("schema2", t.path());
    let chunk_files = walk(&data.join("chunks")).len();
    assert!(chunk_files > 100, "{chunk_files}");
    // Any command migrates first (here `ls`), then runs.
    let listed = ok(&data, &["ls"]);
    assert!(listed.contains("message"), "{listed}");
    assert!(!data.join("chunks").exists());
    // The store's file count no longer grows with its chunks.
    let packs = walk(&data.join("packs")).len();
    assert!(packs <= 2, "{packs} pack files for {chunk_files} chunks");
    check_migrated(&data, &tree, &t.path().join("out"));
    Ok(())
}

/// Every file under `d` with its size.
fn walk(d: &Path) -> Vec<(PathBuf, u64)> {
    let mut out = Vec::new();
    for e in fs::read_dir(d).unwrap().flatten() {
        if e.file_type().unwrap().is_dir() {
            out.extend(walk(&e.path()));
        } else {
            out.push((e.path(), e.metadata().unwrap().len()));
        }
    }
    out
}
