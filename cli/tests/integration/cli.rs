//! CLI contract tests (DESIGN §2, §8): `init`, `id`, `trust`, `status`,
//! global flags and exit codes, run against the real binary.

#![allow(clippy::unwrap_used)]

use std::fs;

use crate::common::*;
use predicates::prelude::*;

fn is_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit())
}

#[test]
fn init_prints_id_and_card_and_id_repeats_the_card() -> TestResult {
    let t = bbsync_tests::tempdir()?;
    let data = t.path().join("node");

    // Text output.
    let out = ok(&data, &["init", "--name", "alpha"]);
    let id_line = out.lines().next().unwrap();
    assert!(id_line.starts_with("initialized "), "{out}");
    assert!(id_line.contains("(alpha)"), "{out}");
    let card_line = out
        .lines()
        .find_map(|l| l.strip_prefix("card: "))
        .expect("init prints the card");
    assert!(card_line.starts_with("bbsync1"), "{card_line}");
    assert!(data.join("identity.key").is_file());

    // `id` prints exactly that card, and again the same one later.
    let card1 = card(&data);
    assert_eq!(card1, card_line);
    assert_eq!(card(&data), card1, "the card is stable");

    // The instance id printed by init is the one `id --json` gives.
    let id = json(&data, &["id"]);
    let iid = id["instance_id"].as_str().unwrap();
    assert!(is_hex(iid, 64), "{iid}");
    assert!(id_line.contains(iid), "{id_line} vs {iid}");
    assert_eq!(id["name"], "alpha");
    assert_eq!(id["card"], card1);
    assert!(is_hex(id["x25519"].as_str().unwrap(), 64), "{id}");

    // init --json in a second dir.
    let data2 = t.path().join("node2");
    let v = init(&data2, "beta");
    assert_eq!(v["name"], "beta");
    assert!(is_hex(v["instance_id"].as_str().unwrap(), 64), "{v}");
    assert!(v["card"].as_str().unwrap().starts_with("bbsync1"), "{v}");
    assert_eq!(v["data_dir"].as_str().unwrap(), data2.to_str().unwrap());
    assert_eq!(v["card"].as_str().unwrap(), card(&data2));
    assert_ne!(v["instance_id"], id["instance_id"], "fresh identities");

    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(data.join("identity.key"))?
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "identity.key is owner-only");
    }
    Ok(())
}

#[test]
fn status_json_of_a_fresh_store() -> TestResult {
    let t = bbsync_tests::tempdir()?;
    let data = t.path().join("d");
    let v = init(&data, "fresh");
    let s = json(&data, &["status"]);
    assert_eq!(s["instance_id"], v["instance_id"]);
    assert_eq!(s["name"], "fresh");
    assert_eq!(s["objects"], 0);
    assert_eq!(s["deleted"], 0);
    assert_eq!(s["incomplete"], 0);
    assert_eq!(s["chunks"], 0);
    assert_eq!(s["packs"], 0);
    assert_eq!(s["trusted"], 0);
    assert!(s["schema_version"].as_u64().unwrap() >= 1, "{s}");
    assert!(s["objects_by_kind"].as_object().unwrap().is_empty(), "{s}");
    let text = ok(&data, &["status"]);
    assert!(text.contains(v["instance_id"].as_str().unwrap()), "{text}");
    assert!(text.contains("0 live"), "{text}");
    Ok(())
}

#[test]
fn trust_add_update_remove_list() -> TestResult {
    let t = bbsync_tests::tempdir()?;
    let a = t.path().join("a");
    let b = t.path().join("b");
    init(&a, "node-a");
    let bj = init(&b, "node-b");
    let b_id = bj["instance_id"].as_str().unwrap().to_string();
    let b_card = bj["card"].as_str().unwrap().to_string();

    assert_eq!(json(&a, &["trust", "list"]), serde_json::json!([]));
    assert!(ok(&a, &["trust", "list"]).contains("no trusted instances"));

    // Add (default role full).
    let out = ok(&a, &["trust", "add", &b_card]);
    assert!(out.starts_with("trusted node-b"), "{out}");
    assert!(out.contains(&b_id) && out.contains("as full"), "{out}");
    let list = json(&a, &["trust", "list"]);
    let rows = list.as_array().unwrap();
    assert_eq!(rows.len(), 1, "{list}");
    assert_eq!(rows[0]["instance_id"], b_id.as_str());
    assert_eq!(rows[0]["name"], "node-b");
    assert_eq!(rows[0]["role"], "full");
    assert!(rows[0]["added_at_ms"].as_u64().unwrap() > 0);
    let text = ok(&a, &["trust", "list"]);
    assert!(text.contains(&b_id) && text.contains("full"), "{text}");
    assert_eq!(json(&a, &["status"])["trusted"], 1);

    // Update the role; whitespace around a pasted card is fine.
    let out = ok(
        &a,
        &["trust", "add", "--role", "blind", &format!("  {b_card}\n")],
    );
    assert!(out.starts_with("updated node-b"), "{out}");
    assert!(out.contains("as blind"), "{out}");
    let list = json(&a, &["trust", "list"]);
    assert_eq!(list.as_array().unwrap().len(), 1, "{list}");
    assert_eq!(list[0]["role"], "blind");
    let upd = json(&a, &["trust", "add", "--role", "full", &b_card]);
    assert_eq!(upd["updated"], true);
    assert_eq!(upd["role"], "full");
    assert_eq!(upd["instance_id"], b_id.as_str());
    assert_eq!(json(&a, &["trust", "list"])[0]["role"], "full");

    // B is not changed by A trusting it.
    assert_eq!(json(&b, &["trust", "list"]), serde_json::json!([]));

    // Remove by a 10-digit prefix, in upper case.
    let prefix = b_id[..10].to_ascii_uppercase();
    let out = ok(&a, &["trust", "remove", &prefix]);
    assert!(out.contains("removed") && out.contains(&b_id), "{out}");
    assert_eq!(json(&a, &["trust", "list"]), serde_json::json!([]));
    assert_eq!(json(&a, &["status"])["trusted"], 0);

    // Re-add and remove with --json and the full id.
    let added = json(&a, &["trust", "add", "--role", "blind", &b_card]);
    assert_eq!(added["updated"], false);
    assert_eq!(added["role"], "blind");
    let removed = json(&a, &["trust", "remove", &b_id]);
    assert_eq!(removed["removed"], b_id.as_str());
    assert_eq!(json(&a, &["trust", "list"]), serde_json::json!([]));
    Ok(())
}

#[test]
fn trust_refusals_change_nothing() -> TestResult {
    let t = bbsync_tests::tempdir()?;
    let a = t.path().join("a");
    let b = t.path().join("b");
    let aj = init(&a, "node-a");
    let bj = init(&b, "node-b");
    let b_id = bj["instance_id"].as_str().unwrap();
    ok(&a, &["trust", "add", bj["card"].as_str().unwrap()]);
    let before = snapshot(&a);

    // Its own card.
    let e = fail(&a, &["trust", "add", aj["card"].as_str().unwrap()]);
    assert_mentions(&e, &["own"]);
    // Removing something not trusted, or an id that is too short.
    let e = fail(&a, &["trust", "remove", "0123456789abcdef"]);
    assert_mentions(&e, &["no trusted instance"]);
    let e = fail(&a, &["trust", "remove", &b_id[..6]]);
    assert_mentions(&e, &["8 hex"]);
    let e = fail(&a, &["trust", "remove", "not-hex-at-all"]);
    assert_mentions(&e, &["instance id"]);
    assert_eq!(snapshot(&a), before);
    Ok(())
}

#[test]
fn usage_errors_exit_2() -> TestResult {
    let t = bbsync_tests::tempdir()?;
    let data = t.path().join("d");
    init(&data, "u");
    let before = snapshot(&data);
    let cases: &[&[&str]] = &[
        &["frobnicate"],
        &[],
        &["import", "/etc/hostname", "--name", "x"],
        &["import", "/etc/hostname", "--kind", "file"],
        &["import", "--kind", "file", "--name", "x"],
        &["export", "file:x"],
        &["import-bbs"],
        &["export-bbs"],
        &["trust", "add"],
        &["trust", "add", "bbsync1aaaa", "--role", "admin"],
        &["trust", "remove"],
        &["trust", "bogus"],
        &["verify", "--no-such-flag"],
        &["ls", "--kind"],
        &["-v", "-q", "status"],
    ];
    for args in cases {
        let o = run(&data, args);
        assert_eq!(
            o.code, 2,
            "bbsync {args:?}: expected exit 2, got {}\nstdout: {}\nstderr: {}",
            o.code, o.stdout, o.stderr
        );
        assert!(
            !o.stderr.is_empty(),
            "bbsync {args:?}: usage error on stderr"
        );
        assert!(o.stdout.is_empty(), "bbsync {args:?}: nothing on stdout");
    }
    let o = run(&data, &["trust", "add", "bbsync1aaaa", "--role", "admin"]);
    assert!(o.stderr.contains("admin"), "{}", o.stderr);
    assert_eq!(snapshot(&data), before);

    // --help and --version are not errors.
    bare()
        .arg("--help")
        .assert()
        .success()
        .stdout(predicate::str::contains("import-bbs"));
    bare()
        .arg("--version")
        .assert()
        .success()
        .stdout(predicate::str::starts_with("bbsync "));
    Ok(())
}

#[test]
fn bbsync_data_env_is_the_default_data_dir_and_flag_wins() -> TestResult {
    let t = bbsync_tests::tempdir()?;
    let env_dir = t.path().join("from-env");
    let flag_dir = t.path().join("from-flag");
    bare()
        .env("BBSYNC_DATA", &env_dir)
        .args(["--no-progress", "init", "--name", "env"])
        .assert()
        .success();
    assert!(env_dir.join("identity.key").is_file());
    // --data-dir overrides the environment.
    bare()
        .env("BBSYNC_DATA", &env_dir)
        .arg("--data-dir")
        .arg(&flag_dir)
        .args(["--no-progress", "init", "--name", "flag"])
        .assert()
        .success();
    assert_eq!(json(&flag_dir, &["id"])["name"], "flag");
    assert_eq!(json(&env_dir, &["id"])["name"], "env");
    Ok(())
}

#[test]
fn global_flags_work_after_the_subcommand() -> TestResult {
    let t = bbsync_tests::tempdir()?;
    let data = t.path().join("d");
    init(&data, "g");
    let o = bare()
        .arg("status")
        .arg("--json")
        .arg("--data-dir")
        .arg(&data)
        .arg("--no-progress")
        .output()?;
    assert!(o.status.success());
    let v: serde_json::Value = serde_json::from_slice(&o.stdout)?;
    assert_eq!(v["name"], "g");
    // -q silences the normal output of a successful command.
    let o = run(&data, &["-q", "gc"]);
    assert_eq!(o.code, 0);
    assert!(o.stdout.is_empty(), "{}", o.stdout);
    Ok(())
}

/// The failpoint mechanism itself (store/src/failpoint.rs) works in the
/// real binary: an injected ENOSPC is a one-line error, an injected abort
/// kills the process at that point, as `kill -9` would.
#[test]
fn failpoints_reach_the_real_binary() -> TestResult {
    let t = bbsync_tests::tempdir()?;
    let data = t.path().join("d");
    let o = bbsync(&data)
        // (The first write is config.toml, the second identity.key.)
        .env("FAILPOINTS", "file.rename=1*off->return(enospc)")
        .args(["init", "--name", "f"])
        .output()?;
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert_mentions(
        &err,
        &["error: ", "identity.key", "no space left on device"],
    );

    let data = t.path().join("e");
    let o = bbsync(&data)
        .env("FAILPOINTS", "file.rename=return(abort)")
        .args(["init", "--name", "f"])
        .output()?;
    assert_eq!(o.status.code(), None, "killed by a signal");
    assert!(String::from_utf8_lossy(&o.stderr).contains("failpoint file.rename: abort"));
    Ok(())
}

/// The commands whose memory grows with the store (here `serve`) execute
/// themselves once more with glibc's malloc arenas limited to two: the same
/// process (its id) ends up with `MALLOC_ARENA_MAX=2` in its environment.
/// A value the operator set, even glibc's default `0`, is kept.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[test]
fn commands_that_grow_with_the_store_run_with_two_malloc_arenas() -> TestResult {
    use std::io::BufRead;
    let t = bbsync_tests::tempdir()?;
    let data = t.path().join("d");
    init(&data, "arenas");
    let arenas_of = |preset: Option<&str>| -> std::io::Result<Vec<String>> {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_bbsync"));
        cmd.arg("--no-progress")
            .arg("--data-dir")
            .arg(&data)
            .args(["serve", "--listen", "/ip4/127.0.0.1/tcp/0"])
            .env_remove("BBSYNC_DATA")
            .env_remove("MALLOC_ARENA_MAX")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null());
        if let Some(v) = preset {
            cmd.env("MALLOC_ARENA_MAX", v);
        }
        let mut child = cmd.spawn()?;
        // Serving (its address printed): whatever it executed is in place.
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap()).read_line(&mut line)?;
        let environ = fs::read(format!("/proc/{}/environ", child.id()));
        let _ = child.kill();
        let _ = child.wait();
        assert!(line.contains("/p2p/12D3"), "serve printed {line:?}");
        Ok(environ?
            .split(|b| *b == 0)
            .filter(|v| v.starts_with(b"MALLOC_ARENA_MAX="))
            .map(|v| String::from_utf8_lossy(v).into_owned())
            .collect())
    };
    assert_eq!(arenas_of(None)?, ["MALLOC_ARENA_MAX=2"]);
    assert_eq!(arenas_of(Some("0"))?, ["MALLOC_ARENA_MAX=0"]);
    Ok(())
}
