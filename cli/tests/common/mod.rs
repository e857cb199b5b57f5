//! Shared helpers of the CLI integration tests: running the real `bbsync`
//! binary against a private data dir, building small BBS trees by hand,
//! comparing directory trees and taking before/after snapshots of a store.

#![allow(dead_code, clippy::unwrap_used)]

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::{Path, PathBuf},
};

use std::io::BufRead as _;

use assert_cmd::Command;
use serde_json::Value;

/// Result type of the tests.
pub type TestResult<T = ()> = anyhow::Result<T>;

/// `bbsync --no-progress --data-dir DATA`, with no leaking environment.
pub fn bbsync(data: &Path) -> Command {
    let mut c = bare();
    c.arg("--no-progress").arg("--data-dir").arg(data);
    c
}

/// `bbsync` with a clean environment but no `--data-dir`.
pub fn bare() -> Command {
    let mut c = Command::cargo_bin("bbsync").unwrap();
    c.env_remove("BBSYNC_DATA")
        .env_remove("BBSYNC_LOG")
        .env_remove("RUST_LOG")
        .env_remove("FAILPOINTS");
    c
}

/// What one run printed.
pub struct Out {
    /// Exit code.
    pub code: i32,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

impl From<std::process::Output> for Out {
    fn from(o: std::process::Output) -> Out {
        Out {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

/// Runs `bbsync --data-dir DATA ARGS...` and returns what it printed.
pub fn run(data: &Path, args: &[&str]) -> Out {
    bbsync(data).args(args).output().unwrap().into()
}

/// [`run`] with extra environment variables, and none of the invoking
/// process's `BBSYNC_PASSPHRASE` or `BBSYNC_REPO`.
pub fn run_env(data: &Path, args: &[&str], env: &[(&str, &str)]) -> Out {
    let mut c = bbsync(data);
    c.env_remove("BBSYNC_PASSPHRASE").env_remove("BBSYNC_REPO");
    for (k, v) in env {
        c.env(k, v);
    }
    c.args(args).output().unwrap().into()
}

/// Runs a command that must succeed; returns its stdout.
pub fn ok(data: &Path, args: &[&str]) -> String {
    let o = run(data, args);
    assert_eq!(
        o.code, 0,
        "bbsync {args:?} failed with {}\nstdout: {}\nstderr: {}",
        o.code, o.stdout, o.stderr
    );
    o.stdout
}

/// Runs a command with `--json` that must succeed; returns the parsed output.
pub fn json(data: &Path, args: &[&str]) -> Value {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    let out = ok(data, &all);
    serde_json::from_str(&out)
        .unwrap_or_else(|e| panic!("bbsync {args:?}: stdout is not JSON ({e}): {out}"))
}

/// Asserts the contract for failures: exit 1 and exactly one line on
/// stderr, starting with `error: `. Returns that line.
pub fn assert_one_line_error(o: &Out, what: &str) -> String {
    assert_eq!(
        o.code, 1,
        "{what}: expected exit 1, got {}\nstdout: {}\nstderr: {}",
        o.code, o.stdout, o.stderr
    );
    let lines: Vec<&str> = o.stderr.lines().collect();
    assert_eq!(
        lines.len(),
        1,
        "{what}: stderr must be exactly one line, got:\n{}",
        o.stderr
    );
    assert!(
        lines[0].starts_with("error: "),
        "{what}: stderr must start with `error: `: {}",
        lines[0]
    );
    lines[0].to_string()
}

/// Runs a command that must fail cleanly (exit 1, one `error: ` line);
/// returns the error line.
pub fn fail(data: &Path, args: &[&str]) -> String {
    let o = run(data, args);
    assert_one_line_error(&o, &format!("bbsync {args:?}"))
}

/// Asserts that `line` contains every one of `needles` (case-insensitive).
pub fn assert_mentions(line: &str, needles: &[&str]) {
    let l = line.to_lowercase();
    for n in needles {
        assert!(
            l.contains(&n.to_lowercase()),
            "error line should mention {n:?}: {line}"
        );
    }
}

/// `bbsync init --json --name NAME`; returns the JSON.
pub fn init(data: &Path, name: &str) -> Value {
    json(data, &["init", "--name", name])
}

/// The card string of the store in `data`.
pub fn card(data: &Path) -> String {
    ok(data, &["id"]).trim().to_string()
}

/// Writes a file, creating its parent directories.
pub fn write(path: &Path, bytes: impl AsRef<[u8]>) {
    if let Some(p) = path.parent() {
        fs::create_dir_all(p).unwrap();
    }
    fs::write(path, bytes).unwrap();
}

/// Builds the hand-made mini BBS tree under `root`; returns the number of
/// objects `import-bbs` makes of it.
pub fn mini_bbs(root: &Path) -> u64 {
    write(
        &root.join("config/bbs.toml"),
        "name = \"Mini BBS\"\nsysop = \"root\"\n",
    );
    // CP437-ish bytes that are not UTF-8.
    write(
        &root.join("config/menus/main.ans"),
        b"\x1b[1;33m\xc9\xcd\xcd\xbb MAIN \xb0\xb1\xb2\x1b[0m\r\n\x1a",
    );
    let lord = root.join("applets/lord");
    write(
        &lord.join("main.lua"),
        "print('Legend of the Red Dragon')\n",
    );
    let blob: Vec<u8> = (0..70_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    write(&lord.join("assets/x.bin"), blob);
    fs::create_dir_all(lord.join("cache")).unwrap();
    write(&lord.join("name with space ü.txt"), "spaces and umlauts\n");
    write(&lord.join("empty.txt"), "");
    write(
        &root.join("data/lord/alice/save.json"),
        "{\"level\": 3, \"gold\": 120}\n",
    );
    fs::create_dir_all(root.join("data/lord/alice/tmp")).unwrap();
    write(
        &root.join("boards/general/1.json"),
        "{\"id\":1,\"from\":\"alice\",\"subject\":\"hello\",\"body\":\"first post\"}\n",
    );
    write(
        &root.join("boards/general/2.json"),
        "{\"id\":2,\"from\":\"bob\",\"subject\":\"re: hello\",\"body\":\"> first post\\nwelcome\"}\n",
    );
    write(&root.join("files/日本語/読んで.txt"), "読んでください\n");
    write(&root.join("files/empty.txt"), "");
    8
}

/// A directory tree: relative path -> `None` for a directory, the bytes for a file.
pub type Tree = BTreeMap<String, Option<Vec<u8>>>;

/// Reads a whole tree (directories included, empty ones too).
pub fn read_tree(root: &Path) -> Tree {
    try_read_tree(root).unwrap()
}

/// Reads a whole tree, or fails on the first I/O error: for a tree that
/// another process changes while it is read (a live standby tree, where
/// a file listed can be gone by the time it is read).
pub fn try_read_tree(root: &Path) -> std::io::Result<Tree> {
    fn walk(root: &Path, dir: &Path, out: &mut Tree) -> std::io::Result<()> {
        for e in fs::read_dir(dir)? {
            let p = e?.path();
            let rel = p
                .strip_prefix(root)
                .unwrap()
                .to_str()
                .expect("test trees have UTF-8 names")
                .to_string();
            let ft = fs::symlink_metadata(&p)?.file_type();
            if ft.is_dir() {
                out.insert(rel, None);
                walk(root, &p, out)?;
            } else if ft.is_file() {
                out.insert(rel, Some(fs::read(&p)?));
            } else {
                panic!("unexpected special file {}", p.display());
            }
        }
        Ok(())
    }
    let mut t = Tree::new();
    walk(root, root, &mut t)?;
    Ok(t)
}

/// Asserts that two trees hold the same directories and the same files
/// with the same bytes.
pub fn assert_same_tree(expected: &Path, actual: &Path) {
    let a = read_tree(expected);
    let b = read_tree(actual);
    if a == b {
        return;
    }
    let mut msg = format!(
        "trees differ: {} vs {}\n",
        expected.display(),
        actual.display()
    );
    for (k, v) in &a {
        match b.get(k) {
            None => msg.push_str(&format!("  missing in export: {k}\n")),
            Some(w) if w != v => msg.push_str(&format!("  differs: {k}\n")),
            _ => {}
        }
    }
    for k in b.keys().filter(|k| !a.contains_key(*k)) {
        msg.push_str(&format!("  extra in export: {k}\n"));
    }
    panic!("{msg}");
}

/// What a store holds, seen from outside (its database and pack files,
/// without opening it as a store, so nothing is recovered or repaired on
/// the way): every indexed chunk as `<hh>/<64 hex>`, and every leftover an
/// interrupted or failed command could leave, so that a snapshot sees it:
/// `stray:<path>` (a file in `packs/` that is not a pack), `tail:<pack>`
/// (bytes beyond an open pack's committed length), `collect` (the marker:
/// chunks published and maybe never recorded, or a collection pending), `doomed:<pack>` (a pack a repack
/// left to delete) and `unknown:<pack>` (a pack the database does not know).
pub fn chunk_files(data: &Path) -> BTreeSet<PathBuf> {
    let mut out = BTreeSet::new();
    if !data.join("db").is_dir() {
        return out;
    }
    // sled lets go of its lock a moment after the last handle is dropped
    // (its flusher thread): a handle this process just closed may still
    // hold it.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let i = loop {
        match bbsync_store::inspect::inspect(data) {
            Err(bbsync_store::StoreError::InUse(_)) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            r => break r.unwrap(),
        }
    };
    let mut known: BTreeSet<String> = BTreeSet::new();
    for (id, loc) in &i.index {
        let h = id.to_hex();
        out.insert(Path::new(&h[..2]).join(&h));
        known.insert(loc.pack.to_hex());
    }
    let open: BTreeMap<String, u64> = i.open_packs.iter().map(|(p, c)| (p.to_hex(), *c)).collect();
    for f in &i.pack_files {
        match f {
            Ok((p, len)) => {
                let h = p.to_hex();
                if let Some(c) = open.get(&h) {
                    if len > c {
                        out.insert(PathBuf::from(format!("tail:{h}")));
                    }
                } else if !known.contains(&h) {
                    out.insert(PathBuf::from(format!("unknown:{h}")));
                }
            }
            Err(path) => {
                let rel = path.strip_prefix(data.join("packs")).unwrap_or(path);
                out.insert(PathBuf::from(format!("stray:{}", rel.display())));
            }
        }
    }
    if i.collect {
        out.insert(PathBuf::from("collect"));
    }
    for p in &i.doomed {
        out.insert(PathBuf::from(format!("doomed:{}", p.to_hex())));
    }
    out
}

/// The indexed chunks of a store (`<xx>/<64 hex>`), sorted.
pub fn real_chunks(data: &Path) -> Vec<PathBuf> {
    chunk_files(data)
        .into_iter()
        .filter(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            p.components().count() == 2
                && name.len() == 64
                && name.bytes().all(|b| b.is_ascii_hexdigit())
        })
        .collect()
}

/// Leftovers of an interrupted write (see [`chunk_files`]): there should be
/// none after any command ends.
pub fn chunk_temp_files(data: &Path) -> Vec<PathBuf> {
    chunk_files(data)
        .into_iter()
        .filter(|p| {
            let name = p.to_string_lossy().into_owned();
            ["tail:", "collect", "doomed:", "unknown:", "stray:"]
                .iter()
                .any(|k| name.starts_with(k))
        })
        .collect()
}

/// Where an indexed chunk (given by its hex id, or by a `<xx>/<hex>` path
/// of [`real_chunks`]) lives: the pack file, the offset and the length.
pub fn chunk_location(data: &Path, chunk: impl AsRef<Path>) -> (PathBuf, u64, u64) {
    let hex = chunk
        .as_ref()
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    let i = bbsync_store::inspect::inspect(data).unwrap();
    let (_, loc) = i
        .index
        .iter()
        .find(|(id, _)| id.to_hex() == hex)
        .unwrap_or_else(|| panic!("chunk {hex} is not indexed"));
    (
        data.join("packs").join(loc.pack.rel_path()),
        u64::from(loc.offset),
        u64::from(loc.len),
    )
}

/// The stored bytes of an indexed chunk, read from its pack.
pub fn read_chunk(data: &Path, chunk: impl AsRef<Path>) -> Vec<u8> {
    let (pack, off, len) = chunk_location(data, chunk);
    let b = fs::read(pack).unwrap();
    b[off as usize..(off + len) as usize].to_vec()
}

/// Overwrites an indexed chunk's bytes in its pack (same length).
pub fn write_chunk(data: &Path, chunk: impl AsRef<Path>, bytes: &[u8]) {
    let (pack, off, len) = chunk_location(data, chunk);
    assert_eq!(bytes.len() as u64, len, "write_chunk keeps the length");
    let mut b = fs::read(&pack).unwrap();
    b[off as usize..(off + len) as usize].copy_from_slice(bytes);
    fs::write(pack, b).unwrap();
}

/// Drops chunks from a store's index, as if their bytes were lost (the
/// store is opened and closed again).
pub fn lose_chunks(data: &Path, chunks: &[PathBuf]) {
    let ids: Vec<bbsync_protocol::ChunkId> = chunks
        .iter()
        .map(|c| c.file_name().unwrap().to_str().unwrap().parse().unwrap())
        .collect();
    let s = bbsync_store::Store::open(data).unwrap();
    s.packs().remove_many(&ids).unwrap();
}

/// Puts a chunk nobody references into a store (through the store, so it
/// is appended to a pack and indexed like any chunk); returns its hex id.
pub fn add_orphan(data: &Path, bytes: &[u8]) -> String {
    let id = bbsync_protocol::ChunkId::of(bytes);
    let s = bbsync_store::Store::open(data).unwrap();
    s.packs().put(id, bytes).unwrap();
    id.to_hex()
}

/// Entries appended to the pack files of a store so far, counted by
/// walking each pack's entry headers (positioned reads of the headers
/// only; works while another process writes: an entry cut short ends the
/// walk of its pack).
pub fn pack_entries(data: &Path) -> usize {
    use std::os::unix::fs::FileExt;
    let mut n = 0;
    let Ok(rd) = fs::read_dir(data.join("packs")) else {
        return 0;
    };
    for d in rd.flatten() {
        let Ok(files) = fs::read_dir(d.path()) else {
            continue;
        };
        for f in files.flatten() {
            let Ok(file) = fs::File::open(f.path()) else {
                continue;
            };
            let size = file.metadata().map(|m| m.len()).unwrap_or(0);
            let mut pos = 32u64;
            let mut h = [0u8; 36];
            while pos + 36 <= size && file.read_exact_at(&mut h, pos).is_ok() {
                let len = u64::from(u32::from_be_bytes(h[32..36].try_into().unwrap()));
                if !(30..=1_048_606).contains(&len) || pos + 36 + len > size {
                    break;
                }
                n += 1;
                pos += 36 + len;
            }
        }
    }
    n
}

/// Everything a failed command must leave alone.
#[derive(Debug, PartialEq)]
pub struct Snapshot {
    /// Chunk files present.
    pub chunks: BTreeSet<PathBuf>,
    /// `ls --all --json`.
    pub ls: Value,
    /// `trust list --json` without the insertion times.
    pub trust: Value,
    /// `status --json` without the timing-free but path-dependent fields.
    pub status: Value,
}

/// A snapshot of a store that a running node holds (its chunk index
/// cannot be read beside it): objects, trust table and status (with the
/// chunk and pack counts) through the node's control socket.
pub fn served_snapshot(data: &Path) -> Snapshot {
    Snapshot {
        chunks: BTreeSet::new(),
        ls: json(data, &["ls", "--all"]),
        trust: json(data, &["trust", "list"]),
        status: json(data, &["status"]),
    }
}

/// Takes a snapshot of a store through the CLI (chunk files first, so
/// that the commands run here cannot hide anything).
pub fn snapshot(data: &Path) -> Snapshot {
    let chunks = chunk_files(data);
    let ls = json(data, &["ls", "--all"]);
    let trust = json(data, &["trust", "list"]);
    let status = json(data, &["status"]);
    Snapshot {
        chunks,
        ls,
        trust,
        status,
    }
}

/// The `ls --all --json` row of `kind:name`.
pub fn ls_row(data: &Path, kind: &str, name: &str) -> Option<Value> {
    let v = json(data, &["ls", "--all"]);
    v.as_array()
        .unwrap()
        .iter()
        .find(|r| r["kind"] == kind && r["name"] == name)
        .cloned()
}

/// The `(kind, name)` pairs `ls --json` (optionally with more args) shows.
pub fn ls_names(data: &Path, extra: &[&str]) -> BTreeSet<(String, String)> {
    let mut args = vec!["ls"];
    args.extend_from_slice(extra);
    json(data, &args)
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["kind"].as_str().unwrap().to_string(),
                r["name"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// The problem classes in a `verify --json` report.
pub fn problem_classes(report: &Value) -> Vec<String> {
    report["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["class"].as_str().unwrap().to_string())
        .collect()
}

/// Runs `verify --json [extra]` and returns (exit code, report).
pub fn verify(data: &Path, extra: &[&str]) -> (i32, Value) {
    let mut args = vec!["--json", "verify"];
    args.extend_from_slice(extra);
    let o = run(data, &args);
    let v: Value = serde_json::from_str(&o.stdout).unwrap_or_else(|e| {
        panic!(
            "verify --json: stdout is not JSON ({e}): {}\nstderr: {}",
            o.stdout, o.stderr
        )
    });
    (o.code, v)
}

/// Waits (up to 5 s) until no process holds the store's lock any more,
/// e.g. after the test itself opened it with the store crate.
pub fn wait_unlocked(data: &Path) {
    for _ in 0..50 {
        if !run(data, &["status"]).stderr.contains("in use") {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    panic!("{} stays locked", data.display());
}

/// Waits until no one holds the lock of `data`'s database (sled's lock,
/// an exclusive `flock` of `db/db`), without opening the store: a store
/// dropped in this process lets go of it once sled's threads are done.
pub fn wait_released(data: &Path) {
    use rustix::fs::{FlockOperation, flock};
    let file = std::fs::File::open(data.join("db/db")).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while flock(&file, FlockOperation::NonBlockingLockExclusive).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "{}: the database is still locked",
            data.display()
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    flock(&file, FlockOperation::Unlock).unwrap();
}

/// Whether this process can still read a file it has just made mode 000
/// (true when running as root or with CAP_DAC_OVERRIDE).
pub fn can_bypass_permissions(path: &Path) -> bool {
    if path.is_dir() {
        fs::read_dir(path).is_ok()
    } else {
        fs::File::open(path).is_ok()
    }
}

/// A running `bbsync serve` that is killed when dropped.
pub struct Server {
    /// The process.
    pub child: std::process::Child,
    /// The first address it printed.
    pub addr: String,
}

impl Server {
    /// Stops the node with SIGTERM (its clean shutdown) and waits for it.
    pub fn stop(mut self) -> std::process::ExitStatus {
        let st = std::process::Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(st.success());
        self.child.wait().unwrap()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `bbsync serve` on a free loopback port and waits for its address.
pub fn serve(data: &Path) -> Server {
    serve_with(data, &["--listen", "/ip4/127.0.0.1/tcp/0"])
}

/// A free TCP port on 127.0.0.1 (free when this returns).
///
/// Never the same port twice in one test binary: the kernel may hand out a
/// port again once its probe socket is closed, and `bbsync serve` binds with
/// `SO_REUSEPORT`, so two nodes given one port would both listen on it and
/// each would reach itself half of the time.
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<BTreeSet<u16>> = std::sync::Mutex::new(BTreeSet::new());
    let mut given = GIVEN
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    loop {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        if given.insert(port) {
            return port;
        }
    }
}

/// Waits up to `secs` for `ok`, polling; panics with `what` if it never holds.
pub fn wait_for(secs: u64, what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    while std::time::Instant::now() < deadline {
        if ok() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    panic!("timed out after {secs} s waiting for {what}");
}

/// Starts `bbsync serve ARGS...` and waits for its first address.
pub fn serve_with(data: &Path, args: &[&str]) -> Server {
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_bbsync"))
        .arg("--no-progress")
        .arg("--data-dir")
        .arg(data)
        .arg("serve")
        .args(args)
        .env_remove("BBSYNC_DATA")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line.trim().to_string();
    assert!(
        addr.starts_with("/ip4/127.0.0.1/tcp/") && addr.contains("/p2p/12D3"),
        "serve printed {addr:?}"
    );
    Server { child, addr }
}

/// Generates a sample BBS tree of `profile` with `seed` into `dir`
/// (`scripts/gen-bbs.py`).
pub fn gen_bbs(dir: &Path, profile: &str, seed: u32) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/gen-bbs.py");
    let out = std::process::Command::new("python3")
        .arg(&script)
        .args(["--profile", profile, "--seed", &seed.to_string()])
        .arg(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "gen-bbs.py failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A small deterministic generator (xorshift), so a failing run can be
/// repeated.
pub struct Rng(pub u64);

impl Rng {
    /// The next value.
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// Writes `n` posts of 2-18 KB (one chunk each) over 8 boards under `root`,
/// different for each `seed`: a tree with many chunk files that imports in
/// a second or two, for tests that need a command to take a while.
pub fn message_tree(root: &Path, n: u64, seed: u64) {
    let mut rng = Rng(seed | 1);
    for i in 0..n {
        let len = 1000 + (rng.next() % 8000) as usize;
        let body: String = (0..len)
            .map(|_| format!("{:02x}", rng.next() as u8))
            .collect();
        write(
            &root.join(format!("boards/b{}/{i}.json", i % 8)),
            format!("{{\"id\":{i},\"body\":\"{body}\"}}\n"),
        );
    }
}

/// Runs `bbsync --data-dir DATA ARGS` and kills it with SIGKILL as soon as
/// `progress()` reaches `target` (progress seen on disk, not a timer).
/// `slow` names a failpoint that sleeps a millisecond at each hit (the
/// `fail` crate's `sleep` action: nothing fails), so that on a fast disk
/// (or in memory) the command is still running when the target is seen.
/// Returns whether the kill landed (the process was still running).
pub fn kill_at(
    data: &Path,
    args: &[&str],
    slow: &str,
    target: usize,
    progress: impl Fn() -> usize,
) -> bool {
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_bbsync"))
        .arg("--no-progress")
        .arg("--data-dir")
        .arg(data)
        .args(args)
        .env_remove("BBSYNC_DATA")
        .env("FAILPOINTS", format!("{slow}=sleep(1)"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    loop {
        if child.try_wait().unwrap().is_some() {
            return false;
        }
        if progress() >= target || std::time::Instant::now() > deadline {
            let _ = child.kill(); // SIGKILL
            let st = child.wait().unwrap();
            return st.code().is_none();
        }
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
}

/// `bbsync serve --listen /ip4/127.0.0.1/tcp/0 --http 127.0.0.1:0` on
/// `data` (stdout piped for [`read_serve_http_base`], stderr dropped, no
/// `BBSYNC_DATA` from the test's environment).
pub fn serve_http_command(data: &Path) -> std::process::Command {
    let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_bbsync"));
    c.args(["--no-progress", "--data-dir"])
        .arg(data)
        .args([
            "serve",
            "--listen",
            "/ip4/127.0.0.1/tcp/0",
            "--http",
            "127.0.0.1:0",
        ])
        .env_remove("BBSYNC_DATA")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null());
    c
}

/// Reads the two lines a `serve --http` prints (its peer address, then
/// `http: URL`) and returns the URL without a trailing slash.
pub fn read_serve_http_base(child: &mut std::process::Child) -> String {
    let mut r = std::io::BufReader::new(child.stdout.take().unwrap());
    let (mut addr, mut http) = (String::new(), String::new());
    r.read_line(&mut addr).unwrap();
    assert!(addr.contains("/p2p/12D3"), "serve printed {addr:?}");
    r.read_line(&mut http).unwrap();
    http.trim()
        .strip_prefix("http: ")
        .unwrap_or_else(|| panic!("serve printed {http:?}"))
        .trim_end_matches('/')
        .to_string()
}

/// Files below `dir` of `root` (recursively), relative to `root`, sorted.
pub fn files(root: &Path, dir: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![root.join(dir)];
    while let Some(d) = stack.pop() {
        let Ok(rd) = fs::read_dir(&d) else { continue };
        for e in rd {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p.strip_prefix(root).unwrap().display().to_string());
            }
        }
    }
    out.sort();
    out
}
